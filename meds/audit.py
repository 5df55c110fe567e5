"""The audit of a training set: its images ranked by how suspicious the fitted model finds them.

This is the paper's "active label correction": the list a person inspects first to clean
their data. The page itself is drawn by :mod:`meds.report`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import CategoryData, read_image
from .report import AuditEntry, write_audit_report


def write_audit(model, data: CategoryData, out: Path, settings: dict, max_thumbnails: int = 200) -> dict:
    """Write the audit report of a fitted detector's training images into ``out``.

    Args:
        model: A fitted :class:`~meds.model.MeDS` (``training_scores_``, ``selected_``).
        data: The split it was fitted on (``train`` in the same order); known noise
            labels, if any, are shown as "known defect".
        out: Output folder.
        settings: Shown as a table at the top of the page.
        max_thumbnails: Heat-map thumbnails for this many of the most suspicious images.

    Returns:
        The paths written (see :func:`meds.report.write_audit_report`).
    """
    order = np.argsort(-model.training_scores_, kind="stable")
    paths = data.train_paths()
    shown = [paths[i] for i in order[:max_thumbnails]]
    maps = model.predict(shown).maps if shown else []
    labels = data.train_is_noise
    entries = []
    for rank, index in enumerate(order):
        entries.append(AuditEntry(
            rank=rank + 1,
            path=paths[index],
            score=float(model.training_scores_[index]),
            selected=bool(model.selected_[index]),
            image=read_image(paths[index]) if rank < len(shown) else None,
            anomaly_map=maps[rank] if rank < len(shown) else None,
            label=int(labels[index]) if labels is not None else None,
        ))
    # Selection keeps eta below a cut, so the lowest untrusted score marks where it fell.
    untrusted = model.training_scores_[~model.selected_]
    cut = float(untrusted.min()) if untrusted.size else None
    return write_audit_report(entries, out, title=f"meds audit: {data.name}", threshold=model.threshold_,
                              cut=cut, settings=settings, max_thumbnails=max_thumbnails)
