"""The result of a prediction, shared by the torch detectors and the torch-free runtime.

Kept free of torch so that :mod:`meds.deploy` can return the same type as ``MeDS.predict``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Prediction:
    """Output of :meth:`PatchDetector.predict` and :meth:`meds.deploy.Detector.predict`.

    Attributes:
        scores: ``(N,)`` image anomaly scores (higher = more anomalous).
        maps: ``N`` pixel maps, each ``(H_i, W_i)`` at its image's own size.
        labels: ``(N,)`` bool, ``scores > threshold``; a NaN score is labelled anomalous
            (never good).
        threshold: The image-score threshold used for ``labels``.
    """

    scores: np.ndarray
    maps: list
    labels: np.ndarray
    threshold: float
