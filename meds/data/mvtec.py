"""MVTec AD layout (also MVTec-style copies of other datasets, e.g. VisA after the
official ``prepare_data.py`` and the synthetic set of :mod:`meds.data.synthetic`).

Layout::

    <root>/<category>/train/good/*.png                 normal training images
    <root>/<category>/train/<defect>/*.png             (optional) known-defective training images
    <root>/<category>/test/good/*.png                  normal test images
    <root>/<category>/test/<defect>/*.png              defective test images, one folder per type
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png    masks (``<stem>.png`` is accepted too)

``root`` may also be a single category folder (the one holding ``train/`` and
``test/``). A category without ``ground_truth/`` loads with ``mask_path=None``
(image-level evaluation only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import MASK_DIR_NAMES, MaskIndex, _check_on_error, is_good_name, list_images, make_samples, subdirs
from .types import CategoryData

__all__ = ["load_mvtec", "mvtec_categories", "is_mvtec_category_dir"]


def is_mvtec_category_dir(path: str | Path) -> bool:
    """Whether ``path`` looks like one MVTec category (has ``train/`` and ``test/`` folders)."""
    p = Path(path)
    return (p / "train").is_dir() and (p / "test").is_dir()


def mvtec_categories(root: str | Path) -> list[str]:
    """Sorted category names under an MVTec-style ``root``.

    If ``root`` is itself a category folder, returns ``[root.name]``.
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"mvtec_categories: root {str(r)!r} is not a directory")
    if is_mvtec_category_dir(r):
        return [r.name]
    return sorted(p.name for p in subdirs(r) if is_mvtec_category_dir(p))


def _category_dir(root: str | Path, category: str | None, func: str) -> Path:
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"{func}: root {str(r)!r} is not a directory")
    if category is None or (is_mvtec_category_dir(r) and r.name == category):
        if is_mvtec_category_dir(r):
            return r
        cats = mvtec_categories(r)
        if len(cats) == 1:
            return r / cats[0]
        raise ValueError(f"{func}: category is required; {str(r)!r} holds categories {cats}")
    d = r / category
    if not is_mvtec_category_dir(d):
        cats = mvtec_categories(r) if r.is_dir() else []
        raise FileNotFoundError(
            f"{func}: category {category!r} not found under {str(r)!r} (expected "
            f"{str(d / 'train')!r} and {str(d / 'test')!r}); available: {cats}"
        )
    return d


def load_mvtec(
    root: str | Path,
    category: str | None = None,
    *,
    on_error: str = "raise",
    check_images: bool = True,
) -> CategoryData:
    """Load one category of an MVTec AD-style tree.

    Args:
        root: Dataset root (holding category folders) or one category folder.
        category: Category name; may be omitted when ``root`` is a category folder or
            holds a single category.
        on_error: ``"raise"``: an unreadable image or a missing mask raises
            :class:`~meds.data.ImageReadError` naming the file; ``"skip"``: the sample is
            dropped with a :class:`~meds.data.DataWarning` naming the file.
        check_images: Open each image's header while loading (cheap) so that broken
            files are caught here rather than in the middle of training.

    Returns:
        :class:`CategoryData` with samples in sorted (natural) order: train good first,
        then test good, then defect folders alphabetically. ``train_is_noise`` is set
        (all False unless ``train/`` holds non-good folders).
    """
    _check_on_error(on_error, "load_mvtec")
    cdir = _category_dir(root, category, "load_mvtec")
    name = cdir.name
    gt_root = None
    for cand in ("ground_truth", "groundtruth", "gt", "masks"):
        if (cdir / cand).is_dir():
            gt_root = cdir / cand
            break

    def _masks(defect: str) -> tuple[MaskIndex | None, bool]:
        if gt_root is None:
            return None, False
        idx = MaskIndex([gt_root / defect])
        return idx, bool(idx)

    kw = dict(category=name, on_error=on_error, check_images=check_images)
    train, noise = [], []
    train_dir = cdir / "train"
    direct = list_images(train_dir)
    if direct:  # images lying directly in train/ are taken as (supposedly) good
        s = make_samples(direct, label=0, defect_type="good", masks=None, require_mask=False, **kw)
        train += s
        noise += [False] * len(s)
    for d in subdirs(train_dir):
        if d.name.lower() in MASK_DIR_NAMES:
            continue
        if is_good_name(d.name):
            s = make_samples(list_images(d), label=0, defect_type="good", masks=None, require_mask=False, **kw)
            noise += [False] * len(s)
        else:
            masks, req = _masks(d.name)
            s = make_samples(list_images(d), label=1, defect_type=d.name, masks=masks, require_mask=req, **kw)
            noise += [True] * len(s)
        train += s

    test = []
    test_dirs = subdirs(cdir / "test")
    goods = [d for d in test_dirs if is_good_name(d.name)]
    bads = [d for d in test_dirs if not is_good_name(d.name) and d.name.lower() not in MASK_DIR_NAMES]
    for d in goods:
        test += make_samples(list_images(d), label=0, defect_type="good", masks=None, require_mask=False, **kw)
    for d in bads:
        masks, req = _masks(d.name)
        test += make_samples(list_images(d), label=1, defect_type=d.name, masks=masks, require_mask=req, **kw)

    if not train:
        raise FileNotFoundError(f"load_mvtec: no training images found under {str(train_dir)!r}")
    return CategoryData(name=name, train=train, test=test, train_is_noise=np.asarray(noise, dtype=bool))
