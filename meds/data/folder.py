"""Plain image folders (your own data).

Three layouts are recognised (``<root>`` is the folder you pass; its name becomes the
category name). Image files: png, jpg, jpeg, bmp, tif, tiff, any case; hidden files
are ignored; order is natural-sorted (``img2`` before ``img10``).

1. **Split folders** - ``<root>/train/`` exists::

       <root>/train/*.png                training images (label unknown -> treated as good)
       <root>/train/good/*.png           same (good, normal, ok, nominal are all "good")
       <root>/train/<defect>/*.png       (optional) defects known to be in the training set;
                                         only used as evaluation ground truth (train_is_noise)
       <root>/test/good/*.png            good test images
       <root>/test/<defect>/*.png        defective test images; folder name = defect type

2. **Class folders** - ``<root>/good/`` exists, no ``train/``::

       <root>/good/*.png                 good images; a random ``test_good_ratio`` share
                                         (default 20 %, drawn with ``seed``) goes to the test
                                         split, the rest is the training set
       <root>/<defect>/*.png             every other folder is a defect type (e.g. ``bad/``,
                                         ``defect_scratch/``); all go to the test split

3. **Flat folder** - images directly in ``<root>`` and no ``good/`` or ``train/``: all are
   training images with unknown labels (``train_is_noise=None``) and the test split is
   empty. This is the "which of my images look suspicious?" use case.

Masks (optional, any layout): ``<root>/ground_truth/<defect>/<stem>_mask.png`` or
``<root>/masks/<defect>/<stem>*.png`` (per defect folder; then every defect image of
that type must have one), or flat ``<root>/masks/<stem>*.png`` (stems must be unique
across defect folders). ``<stem>_mask.png``, ``<stem>.png`` and ``<stem>_<anything>.png``
are accepted. Folders named ground_truth, gt, masks, mask, annotations are never
image classes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ._common import (
    MASK_DIR_NAMES,
    MaskIndex,
    _check_on_error,
    has_images,
    is_good_name,
    make_samples,
    subdirs,
)
from .images import DataWarning, list_images, natural_key
from .types import CategoryData, Sample

__all__ = ["load_folder", "folder_layout"]


def folder_layout(root: str | Path) -> str | None:
    """``"split"``, ``"classes"``, ``"flat"`` or ``None`` (not a folder dataset)."""
    r = Path(root)
    if not r.is_dir():
        return None
    if (r / "train").is_dir() and has_images(r / "train", recursive=True):
        return "split"
    if any(is_good_name(d.name) for d in subdirs(r)):
        return "classes"
    if has_images(r):
        return "flat"
    return None


def _mask_index(root: Path, defect: str) -> tuple[MaskIndex | None, bool]:
    per_defect = [root / m / defect for m in ("ground_truth", "groundtruth", "gt", "masks", "mask")]
    per_defect = [d for d in per_defect if d.is_dir()]
    if per_defect:
        idx = MaskIndex(per_defect)
        return idx, bool(idx)
    flat = [root / m for m in ("masks", "mask", "ground_truth", "gt") if (root / m).is_dir()]
    if flat:
        idx = MaskIndex(flat)
        return (idx if idx else None), False
    return None, False


def _class_dirs(d: Path) -> tuple[list[Path], list[Path]]:
    dirs = [x for x in subdirs(d) if x.name.lower() not in MASK_DIR_NAMES]
    return [x for x in dirs if is_good_name(x.name)], [x for x in dirs if not is_good_name(x.name)]


def load_folder(
    root: str | Path,
    *,
    test_good_ratio: float = 0.2,
    seed: int = 0,
    on_error: str = "raise",
    check_images: bool = True,
) -> CategoryData:
    """Load a plain image folder (layouts in the module docstring).

    Args:
        root: The folder.
        test_good_ratio: Class-folder layout only: share of ``good/`` images held out for
            testing, in ``[0, 1)``.
        seed: Class-folder layout only: seed of that hold-out draw.
        on_error: ``"raise"`` or ``"skip"`` (drop unreadable files / defects lacking a
            mask with a warning naming the file).
        check_images: Open each image's header while loading.

    Returns:
        :class:`CategoryData` named after the folder.
    """
    _check_on_error(on_error, "load_folder")
    if not 0.0 <= float(test_good_ratio) < 1.0:
        raise ValueError(f"load_folder: test_good_ratio must be in [0, 1), got {test_good_ratio!r}")
    r = Path(root)
    layout = folder_layout(r)
    if layout is None:
        raise FileNotFoundError(
            f"load_folder: no images found in {str(r)!r} (expected <root>/train/, <root>/good/ or image files)"
        )
    name = r.resolve().name
    kw = dict(category=name, on_error=on_error, check_images=check_images)

    def _good(paths) -> list[Sample]:
        return make_samples(paths, label=0, defect_type="good", masks=None, require_mask=False, **kw)

    def _bad(d: Path) -> list[Sample]:
        masks, req = _mask_index(r, d.name)
        return make_samples(list_images(d, recursive=True), label=1, defect_type=d.name, masks=masks,
                            require_mask=req, **kw)  # fmt: skip

    train: list[Sample] = []
    test: list[Sample] = []
    noise: list[bool] | None = []
    if layout == "split":
        train += _good(list_images(r / "train"))
        goods, bads = _class_dirs(r / "train")
        for d in goods:
            train += _good(list_images(d, recursive=True))
        n_good = len(train)
        for d in bads:
            train += _bad(d)
        noise = [i >= n_good for i in range(len(train))]
        goods, bads = _class_dirs(r / "test")
        loose = list_images(r / "test")
        if loose:
            warnings.warn(
                f"load_folder: {len(loose)} images lie directly in {str(r / 'test')!r} without a "
                f"good/ or <defect>/ folder; they are ignored (first: {loose[0].name!r})",
                DataWarning,
                stacklevel=2,
            )
        for d in goods:
            test += _good(list_images(d, recursive=True))
        for d in bads:
            test += _bad(d)
    elif layout == "classes":
        goods, bads = _class_dirs(r)
        loose = list_images(r)
        if loose:
            warnings.warn(
                f"load_folder: {len(loose)} images lie directly in {str(r)!r} beside the class "
                f"folders; they are ignored (first: {loose[0].name!r})",
                DataWarning,
                stacklevel=2,
            )
        good = []
        for d in goods:
            good += _good(list_images(d, recursive=True))
        n_test = int(round(float(test_good_ratio) * len(good)))
        if n_test >= len(good) and good:
            n_test = len(good) - 1
        perm = np.random.default_rng(seed).permutation(len(good))
        held = set(perm[:n_test].tolist())
        train = [s for i, s in enumerate(good) if i not in held]
        test = [s for i, s in enumerate(good) if i in held]
        for d in bads:
            test += _bad(d)
        noise = [False] * len(train)
    else:  # flat
        train = _good(list_images(r))
        noise = None
    train.sort(key=lambda s: (natural_key(s.path)))
    test.sort(key=lambda s: (s.label, s.defect_type, natural_key(s.path)))
    if noise is not None:  # re-derive after sorting
        noise = [s.label == 1 for s in train]
    if not train:
        raise FileNotFoundError(f"load_folder: no training images in {str(r)!r} ({layout} layout)")
    return CategoryData(
        name=name,
        train=train,
        test=test,
        train_is_noise=None if noise is None else np.asarray(noise, dtype=bool),
    )
