"""Plain data records shared by all dataset loaders.

A loader returns one :class:`CategoryData` per category (one model is trained per
category). Labels travel with the samples for *evaluation only*: training code must
receive nothing but image paths (:meth:`CategoryData.train_paths`) or pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = ["Sample", "CategoryData", "NoiseSetting", "IMAGE_EXTENSIONS", "is_image_file"]

#: Accepted image file extensions (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes:
        path: Path of the image file.
        label: 0 for a good (normal) part, 1 for a defective one.
        mask_path: Path of the binary ground-truth mask (defects only; ``None`` for good
            images and for datasets without pixel annotations).
        category: Category (class) name, e.g. ``"bottle"``.
        defect_type: Defect type, ``"good"`` for normal images.
    """

    path: str
    label: int
    mask_path: str | None
    category: str
    defect_type: str

    @property
    def is_defective(self) -> bool:
        return self.label == 1


@dataclass(frozen=True)
class NoiseSetting:
    """Which noise protocol produced a training split (for result tables).

    ``str(setting)`` gives e.g. ``"noise=20% no-overlap seed=0"`` or
    ``"noise=split-list train_mvtec_nr10_seed_0.csv overlap"``.

    Attributes:
        ratio: Requested ``#defects / #normal training images`` (``None`` for a split list).
        seed: Seed of the draw (``None`` for a split list).
        overlap: Whether the injected defects also stay in the test split.
        n_injected: How many defective images were actually put into training.
        source: Name of the split list the training set was read from, if any.
    """

    ratio: float | None = 0.0
    seed: int | None = 0
    overlap: bool = False
    n_injected: int = 0
    source: str | None = None

    def __str__(self) -> str:
        mode = "overlap" if self.overlap else "no-overlap"
        if self.source is not None:
            return f"noise=split-list {self.source} {mode}"
        pct = f"{100.0 * float(self.ratio or 0.0):g}%"
        return f"noise={pct} {mode} seed={self.seed}"

    describe = __str__


@dataclass
class CategoryData:
    """The train/test split of one category.

    Attributes:
        name: Category name.
        train: Training samples. Normally all good; after :func:`meds.data.contaminate`
            (or with a noisy split list / Real-IAD FUIAD json) some are defective.
        test: Test samples (good and defective).
        train_is_noise: ``(len(train),)`` bool, evaluation-only ground truth of which
            training images are defective. ``None`` when unknown (e.g. an unlabeled folder).
            Never hand it (or ``train[i].label``) to training code.
        noise: The noise protocol that produced ``train``; ``None`` for a clean split.
    """

    name: str
    train: list[Sample]
    test: list[Sample]
    train_is_noise: np.ndarray | None = None
    noise: NoiseSetting | None = field(default=None)

    def __post_init__(self) -> None:
        if self.train_is_noise is not None:
            arr = np.asarray(self.train_is_noise, dtype=bool).reshape(-1)
            if arr.shape[0] != len(self.train):
                raise ValueError(
                    f"CategoryData({self.name!r}): train_is_noise has {arr.shape[0]} entries, "
                    f"expected {len(self.train)} (one per training sample)"
                )
            self.train_is_noise = arr

    # -- what training code may see -------------------------------------------------
    def train_paths(self) -> list[str]:
        """Paths of the training images, in order. The only thing training code needs."""
        return [s.path for s in self.train]

    # -- evaluation helpers ----------------------------------------------------------
    def test_paths(self) -> list[str]:
        return [s.path for s in self.test]

    def test_labels(self) -> np.ndarray:
        """``(len(test),)`` int64, 1 = defective."""
        return np.asarray([s.label for s in self.test], dtype=np.int64)

    def noise_labels(self) -> np.ndarray:
        """``(len(train),)`` bool ground truth of injected defects (all False if unknown)."""
        if self.train_is_noise is None:
            return np.zeros(len(self.train), dtype=bool)
        return self.train_is_noise.copy()

    @property
    def has_masks(self) -> bool:
        """True when every defective test sample has a pixel mask (pixel metrics possible)."""
        bad = [s for s in self.test if s.label == 1]
        return bool(bad) and all(s.mask_path is not None for s in bad)

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_noise(self) -> int:
        return int(self.train_is_noise.sum()) if self.train_is_noise is not None else 0

    def copy(self, **changes) -> CategoryData:
        """A shallow copy with new lists (samples are immutable and shared)."""
        kwargs = {"train": list(self.train), "test": list(self.test)}
        kwargs.update(changes)
        return replace(self, **kwargs)

    def summary(self) -> str:
        n_bad_test = sum(s.label for s in self.test)
        text = (
            f"{self.name}: train {len(self.train)} (noise {self.n_noise}), "
            f"test {len(self.test)} ({len(self.test) - n_bad_test} good, {n_bad_test} defective)"
        )
        if self.noise is not None:
            text += f" [{self.noise}]"
        return text

    def __repr__(self) -> str:  # the lists are long; keep the repr readable
        return f"CategoryData<{self.summary()}>"
