"""Datasets: MVTec AD, VisA, Real-IAD, plain folders, a synthetic generator, and the
noisy-training protocol.

Typical use::

    from meds.data import load_dataset, contaminate
    data = load_dataset("/data/mvtec", "bottle")          # layout detected
    noisy = contaminate(data, ratio=0.2, seed=0)           # no-overlap by default
    model.fit(noisy.train_paths())                         # training sees paths only
    print(noisy.noise)                                     # noise=20% no-overlap seed=0

Every loader returns a :class:`CategoryData` of :class:`Sample` records, in a
deterministic (natural-sorted) order, and accepts ``on_error="raise"|"skip"``.
"""

from __future__ import annotations

from pathlib import Path

from .folder import folder_layout, load_folder
from .images import DataWarning, ImageReadError, decode_image, image_size, list_images, read_image, read_mask
from .mvtec import is_mvtec_category_dir, load_mvtec, mvtec_categories
from .noise import NoiseSetting, apply_split_list, contaminate, load_split_list, parse_split_list_name
from .realiad import REALIAD_DEFECT_NAMES, load_realiad, realiad_categories
from .synthetic import SYNTHETIC_CATEGORIES, generate_synthetic
from .types import IMAGE_EXTENSIONS, CategoryData, Sample
from .visa import find_visa_split_csv, load_visa, visa_categories

__all__ = [
    "Sample",
    "CategoryData",
    "NoiseSetting",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "DataWarning",
    "decode_image",
    "read_image",
    "read_mask",
    "image_size",
    "list_images",
    "load_mvtec",
    "mvtec_categories",
    "load_visa",
    "visa_categories",
    "load_realiad",
    "realiad_categories",
    "REALIAD_DEFECT_NAMES",
    "load_folder",
    "load_dataset",
    "list_categories",
    "detect_format",
    "FORMATS",
    "generate_synthetic",
    "SYNTHETIC_CATEGORIES",
    "contaminate",
    "load_split_list",
    "apply_split_list",
    "parse_split_list_name",
]

#: Layout names accepted by :func:`load_dataset` (besides ``"auto"``).
FORMATS = ("mvtec", "visa", "realiad", "folder")


def _is_realiad_root(r: Path) -> bool:
    if (r / "realiad_jsons").is_dir():
        return True
    return any(p.is_dir() and p.name.startswith("realiad_") for p in r.iterdir())


def _folder_categories(r: Path) -> list[str]:
    if folder_layout(r) is not None:
        return [r.resolve().name]
    return sorted(d.name for d in r.iterdir() if d.is_dir() and folder_layout(d) in ("split", "classes"))


def detect_format(root: str | Path) -> str:
    """Guess the layout of ``root``: ``"realiad"``, ``"visa"``, ``"mvtec"`` or ``"folder"``.

    Rules, in order: a ``realiad_jsons/`` or ``realiad_<res>/`` folder -> realiad;
    ``split_csv/1cls.csv`` -> visa; ``root`` or its sub-folders holding ``train/good/``
    and ``test/`` -> mvtec; ``good/``, ``train/`` or loose images -> folder; ADer-style
    ``<cat>.json`` files beside ``<cat>/`` folders -> realiad.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: No known layout.
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"detect_format: root {str(r)!r} is not a directory")
    if _is_realiad_root(r):
        return "realiad"
    if find_visa_split_csv(r) is not None:
        return "visa"
    if is_mvtec_category_dir(r) and (r / "train" / "good").is_dir():
        return "mvtec"
    if any((d / "train" / "good").is_dir() for d in r.iterdir() if d.is_dir() and is_mvtec_category_dir(d)):
        return "mvtec"
    if _folder_categories(r):
        return "folder"
    if realiad_categories(r) and any((r / c).is_dir() for c in realiad_categories(r)):
        return "realiad"
    raise ValueError(
        f"detect_format: cannot tell the layout of {str(r)!r}; expected MVTec (<cat>/train/good), "
        f"VisA (split_csv/1cls.csv), Real-IAD (realiad_jsons/) or a plain folder (good/, train/ or "
        f"images); name the layout with format= (--format on the command line)"
    )


def _resolve_format(root, format: str, func: str) -> str:
    if format == "auto":
        return detect_format(root)
    if format not in FORMATS:
        raise ValueError(f"{func}: format must be 'auto' or one of {FORMATS}, got {format!r}")
    return format


def list_categories(root: str | Path, format: str = "auto") -> list[str]:
    """Sorted category names of a dataset root (a single folder dataset -> its name)."""
    fmt = _resolve_format(root, format, "list_categories")
    r = Path(root)
    if fmt == "mvtec":
        return mvtec_categories(r)
    if fmt == "visa":
        return visa_categories(r)
    if fmt == "realiad":
        return realiad_categories(r)
    return _folder_categories(r)


def load_dataset(root: str | Path, category: str | None = None, format: str = "auto", **kwargs) -> CategoryData:
    """Load one category of any supported layout.

    Args:
        root: Dataset root (see :func:`detect_format`).
        category: Category name. May be omitted when the root holds a single category
            (a plain folder, one MVTec category folder, ...).
        format: ``"auto"`` or one of :data:`FORMATS`.
        **kwargs: Passed to the loader (``on_error``, ``check_images``, ``split_csv``,
            ``json_path``, ``resolution``, ``test_good_ratio``, ``seed``).

    Returns:
        :class:`CategoryData`.
    """
    fmt = _resolve_format(root, format, "load_dataset")
    r = Path(root)
    if category is None and fmt != "folder":
        cats = list_categories(r, fmt)
        if len(cats) != 1:
            raise ValueError(f"load_dataset: category is required; {str(r)!r} ({fmt}) holds {cats}")
        category = cats[0]
    if fmt == "mvtec":
        return load_mvtec(r, category, **kwargs)
    if fmt == "visa":
        return load_visa(r, category, **kwargs)
    if fmt == "realiad":
        return load_realiad(r, category, **kwargs)
    # folder
    if folder_layout(r) is not None:
        if category is not None and category != r.resolve().name and folder_layout(r / category) is not None:
            return load_folder(r / category, **kwargs)
        return load_folder(r, **kwargs)
    cats = _folder_categories(r)
    if category is None:
        if len(cats) != 1:
            raise ValueError(f"load_dataset: category is required; {str(r)!r} holds folder datasets {cats}")
        category = cats[0]
    if category not in cats:
        raise FileNotFoundError(f"load_dataset: category {category!r} not found under {str(r)!r}; available: {cats}")
    return load_folder(r / category, **kwargs)
