"""A person's corrections of a training set: which images are defective, which are good.

A labels file is a CSV with the header ``filename,label`` and ``label`` in
``defective|good`` (the audit page's "download labels.csv" writes one). ``filename`` names
a training image by a trailing part of its path, cut at ``/``: the base name (``007.png``),
or more of the path when base names repeat (``good/007.png``, ``crack/007.png``), up to the
full path. A name must match exactly one training image; one that matches none or several
is an error naming it. :func:`label_keys` gives each image the shortest such name that is
unique (what the audit page shows and writes).

In code, labels are one entry per training image: ``"defective"``, ``"good"`` or ``None``
(:func:`label_codes` turns them into ``int8`` codes 1 / 0 / -1).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["LABELS", "DEFECTIVE", "GOOD", "UNSET", "label_codes", "label_keys", "read_labels", "match_labels"]

LABELS = ("defective", "good")
DEFECTIVE, GOOD, UNSET = 1, 0, -1
_CODE = {"defective": DEFECTIVE, "good": GOOD, None: UNSET}


def label_codes(labels: Optional[Sequence[Optional[str]]], n: int, fn: str = "labels") -> Optional[np.ndarray]:
    """``(n,)`` int8 codes (1 defective, 0 good, -1 unset) of per-image labels.

    Returns ``None`` when ``labels`` is ``None`` or sets no image (so a fit without labels
    is the unlabelled fit, bit for bit).
    """
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise TypeError(f"{fn}: labels must be a sequence with one entry per image, got {type(labels).__name__}")
    if len(labels) != n:
        raise ValueError(f"{fn}: labels must have one entry per image ({n}), got {len(labels)}")
    codes = np.empty(n, dtype=np.int8)
    for i, label in enumerate(labels):
        if label not in _CODE:
            raise ValueError(f"{fn}: labels[{i}] must be 'defective', 'good' or None, got {label!r}")
        codes[i] = _CODE[label]
    return codes if (codes != UNSET).any() else None


def _parts(path: Union[str, os.PathLike]) -> tuple:
    return tuple(p for p in str(path).replace("\\", "/").split("/") if p)


def _tails(parts: Sequence[tuple]) -> dict:
    """Every trailing part of every path -> the indices of the paths that end with it."""
    index: dict = {}
    for i, mine in enumerate(parts):
        for depth in range(1, len(mine) + 1):
            index.setdefault(mine[-depth:], []).append(i)
    return index


def label_keys(paths: Sequence[Union[str, os.PathLike]]) -> list[str]:
    """The shortest trailing part of each path (whole components) that no other path ends with."""
    parts = [_parts(p) for p in paths]
    index = _tails(parts)
    keys = []
    for mine in parts:
        depth = next((d for d in range(1, len(mine) + 1) if len(index[mine[-d:]]) == 1), len(mine))
        keys.append("/".join(mine[-depth:]))
    return keys


def read_labels(path: Union[str, os.PathLike]) -> list[tuple[str, str]]:
    """``[(filename, label), ...]`` of a labels CSV, checked (errors name the file and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"--labels: file not found: {path}") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ValueError(f"--labels {path}: the first line must be 'filename,label'")
    out, seen = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2 or row[1].strip() not in LABELS or not row[0]:
            raise ValueError(f"--labels {path}: line {line} must be 'filename,defective|good', got {','.join(row)!r}")
        name, label = row[0], row[1].strip()
        if name in seen and seen[name] != label:
            raise ValueError(f"--labels {path}: {name!r} is labelled both {seen[name]} and {label}")
        seen[name] = label
        out.append((name, label))
    return out


def match_labels(entries: Sequence[tuple[str, str]], paths: Sequence[Union[str, os.PathLike]],
                 source: str = "--labels") -> list[Optional[str]]:
    """Per-image labels (``"defective"``, ``"good"`` or ``None``) of ``paths`` from ``entries``.

    Raises:
        ValueError: naming the first entry that matches no training image or several.
    """
    parts = [_parts(p) for p in paths]
    index = _tails(parts)
    labels: list[Optional[str]] = [None] * len(paths)
    for name, label in entries:
        tail = _parts(name)
        hits = index.get(tail, [])
        if len(hits) > 1:  # a whole path wins over the longer paths it is a tail of
            hits = [i for i in hits if parts[i] == tail] or hits
        if not hits:
            raise ValueError(f"{source}: {name!r} is not a training image of this data set")
        if len(hits) > 1:
            shown = ", ".join("/".join(parts[i][-len(tail) - 1:]) for i in hits[:3])
            raise ValueError(f"{source}: {name!r} matches {len(hits)} training images ({shown}); "
                             "give more of its path")
        if labels[hits[0]] not in (None, label):
            raise ValueError(f"{source}: training image {paths[hits[0]]} is labelled both {labels[hits[0]]} and {label}")
        labels[hits[0]] = label
    return labels
