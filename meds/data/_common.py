"""Helpers shared by the layout loaders (not public API)."""

from __future__ import annotations

from pathlib import Path

from .images import _check_on_error, _problem, check_readable, list_images, natural_key
from .types import Sample, is_image_file

#: Folder names that mean "good / normal" (compared case-insensitively).
GOOD_NAMES = frozenset({"good", "normal", "ok", "ok_images", "nominal"})
#: Folder names that hold masks, never images to classify.
MASK_DIR_NAMES = frozenset({"ground_truth", "groundtruth", "gt", "masks", "mask", "annotations"})

MASK_SUFFIXES = ("_mask", "-mask", ".mask", "_gt", "_label", "")


def is_good_name(name: str) -> bool:
    return name.lower() in GOOD_NAMES


class MaskIndex:
    """Lists the mask files of one directory once and finds the mask of an image stem.

    Lookup order for stem ``s``: ``s_mask.*``, ``s-mask.*``, ``s.mask.*``, ``s_gt.*``,
    ``s_label.*``, ``s.*``, then any file whose name starts with ``s`` followed by
    ``_``, ``-`` or ``.`` (first in sorted order). ``.png`` is preferred over other
    image extensions.
    """

    def __init__(self, directories):
        self.by_stem: dict[str, list[Path]] = {}
        self.files: list[Path] = []
        for d in directories:
            for p in list_images(d):
                self.files.append(p)
                self.by_stem.setdefault(p.stem, []).append(p)
        for v in self.by_stem.values():
            v.sort(key=lambda p: (p.suffix.lower() != ".png", natural_key(p.name)))

    def __bool__(self) -> bool:
        return bool(self.files)

    def find(self, stem: str) -> Path | None:
        for suffix in MASK_SUFFIXES:
            hits = self.by_stem.get(stem + suffix)
            if hits:
                return hits[0]
        prefixed = [
            p for p in self.files if p.stem.startswith(stem) and p.stem[len(stem) : len(stem) + 1] in ("_", "-", ".")
        ]
        if prefixed:
            prefixed.sort(key=lambda p: (p.suffix.lower() != ".png", natural_key(p.name)))
            return prefixed[0]
        return None


def make_samples(
    images,
    *,
    label: int,
    category: str,
    defect_type: str,
    masks: MaskIndex | None,
    on_error: str,
    check_images: bool,
    require_mask: bool,
) -> list[Sample]:
    """Turn image paths into samples, looking up masks for defects.

    A defect without a mask is a problem (raise / skip-with-warning) only when
    ``require_mask`` (i.e. the dataset has masks for this defect type at all).
    """
    out = []
    for img in images:
        img = Path(img)
        if check_images and not check_readable(img, on_error):
            continue
        mask_path = None
        if label == 1 and masks is not None:
            m = masks.find(img.stem)
            if m is None and require_mask:
                _problem(
                    on_error,
                    f"no mask found for defective image {str(img)!r} (category {category!r}, "
                    f"defect {defect_type!r})",
                )
                continue
            mask_path = str(m) if m is not None else None
        out.append(Sample(str(img), int(label), mask_path, category, defect_type))
    return out


def subdirs(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(
        (p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def has_images(directory: Path, recursive: bool = False) -> bool:
    if not directory.is_dir():
        return False
    it = directory.rglob("*") if recursive else directory.iterdir()
    return any(p.is_file() and is_image_file(p) for p in it)


__all__ = [
    "GOOD_NAMES",
    "MASK_DIR_NAMES",
    "MaskIndex",
    "make_samples",
    "subdirs",
    "has_images",
    "is_good_name",
    "_check_on_error",
    "_problem",
]
