"""Baselines MeDS is compared with, built on the same features and post-processing.

* :class:`NearestNeighbourDetector`: PatchCore without coreset (one memory of every
  training patch, ``B = 1, rho = 1``). Contamination hurts it directly: a defect seen in
  training is "normal" to it.
* :class:`MemoryEnsembleDetector`: MeDS stage 1 used at test time: a test patch's score is
  its mean nearest distance over the ``B`` random partial memories.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..kernels import ops
from .detector import ImageLike, PatchDetector
from .memory import BankCount, memory_scores, nearest_neighbour_scores
from .scoring import robust_threshold, top_fraction_mean


class _MemoryDetector(PatchDetector):
    """Keeps the training patches as the memory; subclasses define the patch score."""

    def __init__(self, backbone: str = "tf_efficientnet_lite0", *, metric: str = "cosine", **kwargs):
        super().__init__(backbone, **kwargs)
        self.metric = metric
        self.memory_: Optional[torch.Tensor] = None
        self.training_scores_: Optional[np.ndarray] = None

    def fit(self, images: Sequence[ImageLike]):
        """Fit on training images (paths, arrays or PIL images of one size)."""
        return self.fit_features(self.training_features(images))

    def fit_features(self, features: torch.Tensor, patch_scores: Optional[torch.Tensor] = None):
        """Fit on precomputed training features ``(N, L, D)``.

        Args:
            features: Training features.
            patch_scores: This detector's ``(N, L)`` training patch scores if already
                computed elsewhere (e.g. the stage-1 scores of a MeDS fit with the same
                banks), to avoid computing them twice.
        """
        features = features.to(self.device, torch.float32)
        self.memory_ = features
        if patch_scores is None:
            patch_scores = self._training_patch_scores(features)
        self.training_scores_ = top_fraction_mean(patch_scores, self.top_fraction).cpu().numpy().astype(np.float64)
        # The threshold comes from the training images' own (out-of-sample) scores.
        maps = self.maps_from_patch_scores(patch_scores)
        self.threshold_ = robust_threshold(self.image_scores_from_maps(maps).cpu().numpy(), self.threshold_k)
        return self

    def _training_patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class NearestNeighbourDetector(_MemoryDetector):
    """Full-memory nearest neighbour (PatchCore without coreset, k = 1).

    ``training_scores_`` are leave-one-out scores: each training image against all others.
    """

    def _training_patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        return memory_scores(features, n_banks=1, bank_ratio=1.0, replace=False, exclude_self=True,
                             metric=self.metric, progress=self.verbose)

    def _score_features(self, features: torch.Tensor) -> torch.Tensor:
        n, length, dim = features.shape
        flat_memory = self.memory_.reshape(-1, dim)
        return nearest_neighbour_scores(features.reshape(-1, dim), flat_memory, metric=self.metric).reshape(n, length)


class MemoryEnsembleDetector(_MemoryDetector):
    """MeDS stage 1 as a detector: mean nearest distance over ``B`` partial memories.

    Args:
        n_banks: Memories ``B`` (or ``"exact"`` at training time; test time then uses the
            closed form too).
        bank_ratio: Share ``rho`` of the training images per memory.
        seed: Seed of the bank draw.
    """

    def __init__(self, backbone: str = "tf_efficientnet_lite0", *, n_banks: BankCount = 100,
                 bank_ratio: float = 0.1, seed: int = 0, **kwargs):
        super().__init__(backbone, **kwargs)
        self.n_banks = n_banks
        self.bank_ratio = bank_ratio
        self.seed = seed

    def _training_patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        return memory_scores(features, n_banks=self.n_banks, bank_ratio=self.bank_ratio,
                             metric=self.metric, seed=self.seed, progress=self.verbose)

    def _score_features(self, features: torch.Tensor) -> torch.Tensor:
        n, length, dim = features.shape
        n_train = self.memory_.shape[0]
        memory = self.memory_.reshape(-1, dim)
        groups = torch.arange(n_train, device=memory.device).repeat_interleave(length)
        queries = features.reshape(-1, dim)
        if self.n_banks == "exact":
            nearest = ops.group_min_distance(queries, memory, groups, n_train, metric=self.metric)
            return ops.expected_min_distance(nearest, ops.bank_size(n_train, self.bank_ratio)).reshape(n, length)
        banks = torch.as_tensor(
            ops.sample_banks(n_train, n_banks=int(self.n_banks), ratio=self.bank_ratio, seed=self.seed),
            device=memory.device,
        )
        return ops.ensemble_distance(queries, memory, groups, banks, metric=self.metric).reshape(n, length)
