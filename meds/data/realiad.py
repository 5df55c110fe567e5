"""Real-IAD dataset (30 objects, 5 camera views, JSON split files).

Layout of the release (as used by anomalib's ``RealIAD`` and the ADer benchmark code)::

    <root>/realiad_1024/<cat>/OK/S0001/<cat>_0001_OK_C1_<time>.jpg       (also realiad_256/512/raw)
    <root>/realiad_1024/<cat>/NG/<code>/S0123/<cat>_0123_NG_C1_<time>.jpg
    <root>/realiad_1024/<cat>/NG/<code>/S0123/<cat>_0123_NG_C1_<time>_mask.png
    <root>/realiad_jsons/realiad_jsons/<cat>.json          multi-view split
    <root>/realiad_jsons/realiad_jsons_sv/<cat>.json       single-view split
    <root>/realiad_jsons/realiad_jsons_fuiad_0.1/<cat>.json  FUIAD: noisy training splits

Each JSON holds ``{"meta": {"normal_class": "OK", ...}, "train": [...], "test": [...]}``;
an entry is ``{"category", "anomaly_class", "image_path", "mask_path"}`` with
``anomaly_class == "OK"`` for good parts (otherwise a defect code: AK pit, BX
deformation, CH abrasion, HS scratch, PS damage, QS missing parts, YW foreign objects,
ZW contamination, see :data:`REALIAD_DEFECT_NAMES`) and paths relative to the
category image folder ``<root>/realiad_<res>/<cat>``. Paths relative to
``realiad_<res>``, to ``root`` or to the JSON's folder are accepted too, as is the
flat ADer layout (``<root>/<cat>.json`` beside ``<root>/<cat>/``).

Defective entries inside ``"train"`` (FUIAD splits) become training samples with
``train_is_noise=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._common import _check_on_error, _problem
from .images import check_readable, natural_key
from .types import CategoryData, Sample

__all__ = ["load_realiad", "realiad_categories", "find_realiad_json", "REALIAD_DEFECT_NAMES", "REALIAD_RESOLUTIONS"]

REALIAD_DEFECT_NAMES = {
    "AK": "pit",
    "BX": "deformation",
    "CH": "abrasion",
    "HS": "scratch",
    "PS": "damage",
    "QS": "missing_parts",
    "YW": "foreign_objects",
    "ZW": "contamination",
}
REALIAD_RESOLUTIONS = ("1024", "512", "256", "raw")
_JSON_DIRS = ("realiad_jsons/realiad_jsons", "realiad_jsons", "jsons", ".")


def _json_dir(root: Path, json_path: str | Path | None) -> Path | None:
    """Folder holding ``<cat>.json`` files."""
    if json_path is not None:
        p = Path(str(json_path))
        if not p.is_absolute() and not p.exists():
            p = root / p
        return p if p.is_dir() else p.parent
    for rel in _JSON_DIRS:
        d = root / rel
        if d.is_dir() and any(_is_split_json(f) for f in d.glob("*.json")):
            return d
    return None


def _is_split_json(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return '"train"' in head or '"test"' in head or '"meta"' in head


def find_realiad_json(root: str | Path, category: str, json_path: str | Path | None = None) -> Path:
    """The split JSON of ``category``.

    Args:
        root: Real-IAD root.
        category: Object name.
        json_path: A JSON file (may contain ``{category}``), or a folder of ``<cat>.json``
            files (e.g. ``realiad_jsons/realiad_jsons_fuiad_0.4``); absolute or relative
            to ``root``. Default: ``realiad_jsons/realiad_jsons``, ``realiad_jsons``, ``root``.
    """
    r = Path(root)
    if json_path is not None:
        text = str(json_path).replace("{category}", category)
        p = Path(text)
        if not p.is_absolute() and not p.exists():
            p = r / p
        if p.is_dir():
            p = p / f"{category}.json"
        if not p.is_file():
            raise FileNotFoundError(f"load_realiad: split JSON {text!r} not found (tried {str(p)!r})")
        return p
    tried = []
    for rel in _JSON_DIRS:
        p = r / rel / f"{category}.json"
        tried.append(str(p))
        if p.is_file():
            return p
    raise FileNotFoundError(f"load_realiad: no split JSON for {category!r}; tried {tried}")


def realiad_categories(root: str | Path, json_path: str | Path | None = None) -> list[str]:
    """Sorted category names (the ``<cat>.json`` files of the split folder)."""
    r = Path(root)
    d = _json_dir(r, json_path)
    if d is None:
        return []
    return sorted(f.stem for f in d.glob("*.json") if _is_split_json(f))


def _image_roots(root: Path, resolution) -> list[Path]:
    if resolution is not None:
        res = str(resolution)
        d = root / f"realiad_{res}"
        if not d.is_dir():
            raise FileNotFoundError(f"load_realiad: resolution {res!r} requested but {str(d)!r} does not exist")
        return [d]
    return [root / f"realiad_{res}" for res in REALIAD_RESOLUTIONS if (root / f"realiad_{res}").is_dir()]


def _pick_base(entries, candidates: list[Path]) -> Path | None:
    """The first candidate base folder under which the first few listed images exist."""
    probe = [e["image_path"] for e in entries[:50] if e.get("image_path")]
    for base in candidates:
        if probe and any((base / p).is_file() for p in probe):
            return base
    return None


def load_realiad(
    root: str | Path,
    category: str,
    *,
    json_path: str | Path | None = None,
    resolution: int | str | None = None,
    on_error: str = "raise",
    check_images: bool = True,
) -> CategoryData:
    """Load one Real-IAD category from its split JSON.

    Args:
        root: Real-IAD root (holding ``realiad_<res>/`` and ``realiad_jsons/``).
        category: Object name, e.g. ``"audiojack"``.
        json_path: Split JSON file or folder (see :func:`find_realiad_json`), e.g.
            ``"realiad_jsons/realiad_jsons_sv"`` for the single-view protocol.
        resolution: ``1024``, ``512``, ``256`` or ``"raw"``; default: the first of those
            folders that exists.
        on_error: ``"raise"`` or ``"skip"`` (drop missing/unreadable files with a warning).
        check_images: Open each image's header while loading (150k images: a few
            seconds on a local disk; turn off on slow storage).

    Returns:
        :class:`CategoryData`; train in natural path order, test sorted by (label,
        defect code, path). Defect types are the Real-IAD codes (``"AK"``, ...).
    """
    _check_on_error(on_error, "load_realiad")
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"load_realiad: root {str(r)!r} is not a directory")
    jpath = find_realiad_json(r, category, json_path)
    try:
        with open(jpath, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"load_realiad: cannot parse split JSON {str(jpath)!r}: {exc}") from exc
    if not isinstance(doc, dict) or not any(k in doc for k in ("train", "test")):
        raise ValueError(f"load_realiad: {str(jpath)!r} must hold 'train' and/or 'test' lists")
    meta = doc.get("meta") or {}
    normal_class = str(meta.get("normal_class", "OK"))
    entries = {k: list(doc.get(k) or []) for k in ("train", "test")}
    for split, lst in entries.items():
        for e in lst:
            if not isinstance(e, dict) or "image_path" not in e or "anomaly_class" not in e:
                raise ValueError(
                    f"load_realiad: entry {e!r} of {split!r} in {str(jpath)!r} lacks image_path/anomaly_class"
                )

    candidates = []
    for d in _image_roots(r, resolution):
        candidates += [d / category, d]
    candidates += [r / category, r, jpath.parent / category, jpath.parent]
    prefix = str(meta.get("prefix") or "").strip("/")
    if prefix:
        candidates = [c / prefix for c in candidates] + candidates
    base = _pick_base(entries["train"] + entries["test"], candidates)
    if base is None:
        base = candidates[0]  # let the per-file check report the first missing image

    out: dict[str, list[Sample]] = {"train": [], "test": []}
    for split, lst in entries.items():
        for e in lst:
            img = base / str(e["image_path"])
            if check_images:
                if not check_readable(img, on_error):
                    continue
            elif not img.is_file():
                _problem(on_error, f"image {str(img)!r} listed in {str(jpath)!r} not found")
                continue
            cls = str(e["anomaly_class"])
            label = 0 if cls == normal_class else 1
            mask_path = None
            if label == 1 and e.get("mask_path"):
                m = base / str(e["mask_path"])
                if not m.is_file():
                    _problem(on_error, f"mask {str(m)!r} of defective image {str(img)!r} not found")
                    continue
                mask_path = str(m)
            out[split].append(Sample(str(img), label, mask_path, category, "good" if label == 0 else cls))
    train = sorted(out["train"], key=lambda s: natural_key(s.path))
    test = sorted(out["test"], key=lambda s: (s.label, s.defect_type, natural_key(s.path)))
    if not train:
        raise FileNotFoundError(f"load_realiad: no training images for {category!r} in {str(jpath)!r}")
    noise = np.asarray([s.label == 1 for s in train], dtype=bool)
    return CategoryData(name=category, train=train, test=test, train_is_noise=noise)
