"""Fingerprints of training sets: which files (or arrays) a model was fitted on, in order.

A model's per-image outputs (training scores, selection) are aligned with its training
images, so reusing them for another data set (``meds audit DATA --model M``) is only right
when DATA lists the same files in the same order. The fingerprint records, per image, its
name, size in bytes and the sha256 of its content (files are hashed in 1 MiB chunks).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..atomic_io import sha256_file


def _entry(image, index: int) -> list:
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return [path.name, path.stat().st_size, sha256_file(path)]
    array = np.ascontiguousarray(np.asarray(image))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return [f"<array {index}>", int(array.nbytes), digest.hexdigest()]


def training_fingerprint(images: Sequence) -> dict:
    """``{"count", "sha256", "files": [[name, size, sha256], ...]}`` of a training set.

    Args:
        images: Paths, arrays or PIL images (as given to ``fit``), in order.
    """
    files = [_entry(image, i) for i, image in enumerate(images)]
    digest = hashlib.sha256()
    for name, size, sha in files:
        digest.update(f"{name}\0{size}\0{sha}\n".encode())
    return {"count": len(files), "sha256": digest.hexdigest(), "files": files}


def fingerprint_mismatch(recorded: dict, current: dict) -> Optional[str]:
    """Why two fingerprints differ (first difference), or ``None`` when they match."""
    if recorded["sha256"] == current["sha256"]:
        return None
    if recorded["count"] != current["count"]:
        return f"it was trained on {recorded['count']} images, this data set has {current['count']}"
    for i, (old, new) in enumerate(zip(recorded["files"], current["files"])):
        if list(old) != list(new):
            if old[0] != new[0]:
                return f"training image {i} was {old[0]!r}, here it is {new[0]!r}"
            return f"training image {i} ({new[0]!r}) has other content (size or sha256 differs)"
    return "the file lists differ"
