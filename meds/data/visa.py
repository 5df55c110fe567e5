"""VisA (Visual Anomaly) dataset.

Two layouts are accepted:

1. The original release (``VisA_20220922.tar``)::

       <root>/split_csv/1cls.csv          header: object,split,label,image,mask
       <root>/<object>/Data/Images/Normal/0000.JPG
       <root>/<object>/Data/Images/Anomaly/000.JPG
       <root>/<object>/Data/Masks/Anomaly/000.png
       <root>/<object>/image_anno.csv     (optional) per-image defect description

   ``split`` is ``train``/``test``, ``label`` is ``normal``/``anomaly``, paths are
   relative to ``root``. Another split file can be given with ``split_csv=``. When
   ``image_anno.csv`` exists, its description becomes the defect type (slugified,
   e.g. ``"chunk of wax missing"`` -> ``chunk_of_wax_missing``); otherwise ``"bad"``.

2. The MVTec-style copy written by VisA's ``prepare_data.py`` (``<root>/<object>/train/good``,
   ``test/good``, ``test/bad``, ``ground_truth/bad/<stem>.png``), loaded by
   :func:`meds.data.load_mvtec`. The MeDS split lists name files in this layout
   (``cashew/test/bad/089.JPG``); they also match layout 1 (see
   :func:`meds.data.apply_split_list`).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ._common import _check_on_error, _problem
from .images import check_readable, natural_key
from .mvtec import is_mvtec_category_dir, load_mvtec, mvtec_categories
from .types import CategoryData, Sample

__all__ = ["load_visa", "visa_categories", "find_visa_split_csv", "VISA_CATEGORIES"]

VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip

_REQUIRED = ("object", "split", "label", "image")


def find_visa_split_csv(root: str | Path, split_csv: str | Path | None = None) -> Path | None:
    """The split file to use: ``split_csv`` (absolute or relative to ``root``) or
    ``<root>/split_csv/1cls.csv``; ``None`` if there is none."""
    r = Path(root)
    if split_csv is not None:
        p = Path(split_csv)
        if not p.is_absolute() and not p.exists():
            p = r / p
        if not p.is_file():
            raise FileNotFoundError(f"load_visa: split_csv {str(split_csv)!r} not found (also tried {str(p)!r})")
        return p
    p = r / "split_csv" / "1cls.csv"
    return p if p.is_file() else None


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in _REQUIRED if c not in fields]
        if missing:
            raise ValueError(
                f"load_visa: split file {str(csv_path)!r} lacks columns {missing}; "
                f"expected header object,split,label,image,mask, got {reader.fieldnames}"
            )
        rows = []
        for raw in reader:
            rows.append({k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None})
    return rows


def visa_categories(root: str | Path, split_csv: str | Path | None = None) -> list[str]:
    """Sorted object names of a VisA root (from the split file, or the MVTec-style folders)."""
    csv_path = find_visa_split_csv(root, split_csv)
    if csv_path is None:
        return mvtec_categories(root)
    return sorted({row["object"] for row in _read_rows(csv_path) if row.get("object")})


def _slug(text: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z]+", "_", text.strip().lower()).strip("_")
    return s or "bad"


def _defect_names(root: Path, category: str) -> dict[str, str]:
    """image relative path -> defect type, from ``<root>/<category>/image_anno.csv`` if present."""
    anno = root / category / "image_anno.csv"
    if not anno.is_file():
        return {}
    out = {}
    with open(anno, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
            img, lab = row.get("image", ""), row.get("label", "")
            if img and lab and lab.lower() != "normal":
                out[img.replace("\\", "/")] = _slug(lab)
    return out


def load_visa(
    root: str | Path,
    category: str | None = None,
    split_csv: str | Path | None = None,
    *,
    on_error: str = "raise",
    check_images: bool = True,
) -> CategoryData:
    """Load one VisA object (category).

    Args:
        root: VisA root (original layout) or an MVTec-style copy.
        category: Object name, e.g. ``"pcb1"``.
        split_csv: Split file (default ``<root>/split_csv/1cls.csv``).
        on_error: ``"raise"`` or ``"skip"`` (drop missing/unreadable files with a warning).
        check_images: Open each image's header while loading.

    Returns:
        :class:`CategoryData`; train in natural path order, test sorted by (label,
        defect type, path).
    """
    _check_on_error(on_error, "load_visa")
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"load_visa: root {str(r)!r} is not a directory")
    csv_path = find_visa_split_csv(r, split_csv)
    if csv_path is None:
        if is_mvtec_category_dir(r) or (category is not None and is_mvtec_category_dir(r / category)):
            return load_mvtec(r, category, on_error=on_error, check_images=check_images)
        raise FileNotFoundError(
            f"load_visa: no split file {str(r / 'split_csv' / '1cls.csv')!r} and no MVTec-style "
            f"folder {str(r / str(category) / 'train')!r}"
        )
    rows = _read_rows(csv_path)
    cats = sorted({row["object"] for row in rows})
    if category is None:
        if len(cats) != 1:
            raise ValueError(f"load_visa: category is required; {str(csv_path)!r} lists {cats}")
        category = cats[0]
    if category not in cats:
        raise ValueError(f"load_visa: category {category!r} not in {str(csv_path)!r}; available: {cats}")
    defects = _defect_names(r, category)

    train: list[Sample] = []
    test: list[Sample] = []
    for row in rows:
        if row["object"] != category:
            continue
        split = row["split"].lower()
        if split not in ("train", "test"):
            continue
        label_txt = row["label"].lower()
        if label_txt in ("normal", "good", "ok", "0"):
            label = 0
        elif label_txt in ("anomaly", "abnormal", "bad", "defect", "1"):
            label = 1
        else:
            raise ValueError(f"load_visa: unknown label {row['label']!r} for {row['image']!r} in {str(csv_path)!r}")
        rel = row["image"].replace("\\", "/")
        img = r / rel
        if check_images:
            if not check_readable(img, on_error):
                continue
        elif not img.is_file():
            _problem(on_error, f"image {str(img)!r} listed in {str(csv_path)!r} not found")
            continue
        mask_path = None
        if label == 1:
            mrel = row.get("mask", "")
            if mrel:
                m = r / mrel.replace("\\", "/")
                if not m.is_file():
                    _problem(on_error, f"mask {str(m)!r} of defective image {str(img)!r} not found")
                    continue
                mask_path = str(m)
        defect_type = "good" if label == 0 else defects.get(rel, "bad")
        sample = Sample(str(img), label, mask_path, category, defect_type)
        (train if split == "train" else test).append(sample)
    train.sort(key=lambda s: natural_key(s.path))
    test.sort(key=lambda s: (s.label, s.defect_type, natural_key(s.path)))
    if not train:
        raise FileNotFoundError(f"load_visa: no training images for {category!r} in {str(csv_path)!r}")
    noise = np.asarray([s.label == 1 for s in train], dtype=bool)
    return CategoryData(name=category, train=train, test=test, train_is_noise=noise)
