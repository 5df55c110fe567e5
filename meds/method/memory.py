"""Stage 1 of MeDS (ICML 2026, arXiv 2605.26676): the bootstrap memory ensemble.

Every training image's patches are scored against ``B`` partial memories, each the set of
all patches of ``ceil(rho * N)`` images drawn with replacement. Memories are unions of
whole images, so one pass of :func:`meds.kernels.ops.group_min_distance` (nearest distance from a
patch to every image) followed by a reduction over the banks gives the exact ensemble
score (:func:`meds.kernels.ops.ensemble_distance`). ``n_banks="exact"`` replaces the Monte Carlo
average by its B -> infinity limit (:func:`meds.kernels.ops.expected_min_distance`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..kernels import ops

BankCount = Union[int, str]
#: How ``memory_scores(workers=N)`` splits stage 1 across Ray actors.
SHARD_MODES = ("queries", "memory")


def check_bank_count(n_banks: BankCount, fn: str = "memory_scores") -> None:
    """Raise ``ValueError`` (naming ``fn``) unless ``n_banks`` is a positive int or ``"exact"``."""
    if isinstance(n_banks, str):
        if n_banks != "exact":
            raise ValueError(f"{fn}: n_banks must be a positive int or 'exact', got {n_banks!r}")
    elif int(n_banks) < 1:
        raise ValueError(f"{fn}: n_banks must be >= 1, got {n_banks}")


@dataclasses.dataclass(frozen=True)
class Stage1Plan:
    """What one stage-1 run computes, independent of where: the banks and the query chunks.

    The local loop and every Ray actor (:mod:`meds.distributed.stage1`) call
    :meth:`score_images` on the same chunks, so sharding the queries changes nothing.
    """

    n_images: int
    n_patches: int
    banks: Optional[np.ndarray]  # (B, m) image ids; None = the closed-form limit
    bank_size: int
    replace: bool
    exclude_self: bool
    metric: str
    images_per_chunk: int
    excluded: Optional[np.ndarray] = None  # (N,) bool: images no memory may hold (labelled defects)

    def chunks(self) -> list:
        """``[(start, stop), ...]`` image ranges of the query chunks."""
        step = self.images_per_chunk
        return [(s, min(s + step, self.n_images)) for s in range(0, self.n_images, step)]

    def memory_rows(self, features: torch.Tensor) -> tuple:
        """``(N * L, D)`` memory rows and their ``(N * L,)`` image ids."""
        memory = features.reshape(self.n_images * self.n_patches, features.shape[-1])
        groups = torch.arange(self.n_images, device=features.device).repeat_interleave(self.n_patches)
        return memory, groups

    def score_images(self, memory: torch.Tensor, groups: torch.Tensor, banks: Optional[torch.Tensor],
                     start: int, stop: int) -> torch.Tensor:
        """``(stop - start, L)`` scores of query images ``[start, stop)`` against the memory."""
        rows = slice(start * self.n_patches, stop * self.n_patches)
        queries, query_groups = memory[rows], groups[rows]
        if banks is None:
            nearest = ops.group_min_distance(
                queries, memory, groups, self.n_images, metric=self.metric,
                query_groups=query_groups, exclude_self=self.exclude_self,
            )
            chunk = self.reduce(nearest)
        else:
            chunk = ops.ensemble_distance(
                queries, memory, groups, banks, metric=self.metric,
                query_groups=query_groups, exclude_self=self.exclude_self,
            )
        return chunk.reshape(stop - start, self.n_patches)

    def reduce(self, nearest: torch.Tensor) -> torch.Tensor:
        """Scores ``(rows,)`` from the ``(rows, N)`` per-image minima of some query rows."""
        if self.banks is None:
            if self.excluded is not None:  # images no memory may hold leave the closed form (NaN)
                nearest[:, torch.as_tensor(self.excluded, device=nearest.device)] = float("nan")
            return ops.expected_min_distance(nearest, self.bank_size, replace=self.replace)
        return ops.reduce_banks(nearest, torch.as_tensor(self.banks, device=nearest.device))


def memory_scores(
    features: torch.Tensor,
    *,
    n_banks: BankCount = 100,
    bank_ratio: float = 0.1,
    replace: bool = True,
    exclude_self: bool = False,
    metric: str = "cosine",
    seed: int = 0,
    images_per_chunk: int = 16,
    progress: bool = True,
    allowed: Optional[torch.Tensor] = None,
    workers: Optional[int] = None,
    shard: str = "queries",
) -> torch.Tensor:
    """Memory-ensemble score of every training patch.

    Args:
        features: Training patch features ``(N, L, D)`` float32 (CPU or CUDA).
        n_banks: Number of memories ``B``, or ``"exact"`` for the closed-form limit.
        bank_ratio: Share ``rho`` of the images in each memory, in ``(0, 1]``.
        replace: Draw each memory's images with replacement (the official code does).
        exclude_self: Leave-one-out: a patch never matches its own image.
        metric: ``"cosine"``, ``"l2"`` or ``"sqeuclidean"``.
        seed: Seed of the bank draw.
        images_per_chunk: Query images scored per kernel call (bounds memory, drives the
            progress bar).
        progress: Show a progress bar.
        allowed: ``(N,)`` bool, the images a memory may hold (``None``: all). Banks of
            ``ceil(rho * n_allowed)`` images are drawn over the allowed ones only; every
            image is still scored.
        workers: Run on this many Ray actors (``pip install "meds[ray]"``; joins the
            running Ray instance, else ``ray.init()``), or on the actors of a
            :class:`~meds.distributed.stage1.Stage1Workers`; ``None`` or 0 runs here. See
            :func:`meds.distributed.stage1.sharded_memory_scores` for the two ``shard``
            modes, their memory per actor and how exactly they match the local result.
        shard: With ``workers``: ``"queries"`` (each actor scores some query images
            against the whole memory) or ``"memory"`` (each actor holds a share of the
            memory images).

    Returns:
        ``(N, L)`` float32 scores on the device of ``features``.
    """
    check_bank_count(n_banks)
    if features.dim() != 3:
        raise ValueError(f"memory_scores: features must be (N, L, D), got shape {tuple(features.shape)}")
    n_images, n_patches, dim = features.shape
    if n_images < 2:
        raise ValueError(f"memory_scores: need at least 2 training images, got {n_images}")
    if not 0.0 < bank_ratio <= 1.0:
        raise ValueError(f"memory_scores: bank_ratio must be in (0, 1], got {bank_ratio}")

    pool = None if allowed is None else torch.nonzero(torch.as_tensor(allowed, device="cpu")).flatten().numpy()
    if pool is not None and pool.size < 2:
        raise ValueError(f"memory_scores: need at least 2 allowed images for the memories, got {pool.size}")
    if isinstance(workers, bool) or isinstance(workers, int) and workers < 0:
        raise ValueError(f"memory_scores: workers must be None, an int >= 0 or a Stage1Workers, got {workers!r}")
    if shard not in SHARD_MODES:
        raise ValueError(f"memory_scores: shard must be one of {list(SHARD_MODES)}, got {shard!r}")

    banks = None
    if n_banks != "exact":
        banks = draw_banks(n_images, int(n_banks), bank_ratio, replace=replace, seed=seed, pool=pool)
    excluded = None if allowed is None else ~torch.as_tensor(allowed, device="cpu").bool().numpy()
    plan = Stage1Plan(n_images, n_patches, banks, ops.bank_size(n_images if pool is None else pool.size, bank_ratio),
                      replace, exclude_self, metric, images_per_chunk, excluded)
    if workers:
        from ..distributed.stage1 import sharded_memory_scores  # noqa: PLC0415 - Ray is optional

        scores = sharded_memory_scores(features, plan, workers=workers, shard=shard, progress=progress)
    else:
        scores = torch.empty(n_images, n_patches, dtype=torch.float32, device=features.device)
        memory, groups = plan.memory_rows(features)
        banks_t = None if banks is None else torch.as_tensor(banks, device=features.device)
        for start, stop in tqdm(plan.chunks(), desc="stage 1: memory ensemble", unit="chunk", disable=not progress):
            scores[start:stop] = plan.score_images(memory, groups, banks_t, start, stop)
    if torch.isnan(scores).any():
        # Only possible with exclude_self and tiny banks: a patch whose every memory held
        # only its own image. Fall back to the largest score seen (most suspicious).
        scores = torch.nan_to_num(scores, nan=float(np.nanmax(scores.cpu().numpy())))
    return scores


def draw_banks(n_images: int, n_banks: int, bank_ratio: float, *, replace: bool = True, seed: int = 0,
               pool: Optional[np.ndarray] = None) -> np.ndarray:
    """``(B, m)`` image ids of the memories: :func:`meds.kernels.ops.sample_banks` over all
    ``n_images`` images, or over the ids in ``pool`` only (the same draw, mapped onto it)."""
    if pool is None:
        return ops.sample_banks(n_images, n_banks=n_banks, ratio=bank_ratio, replace=replace, seed=seed)
    return np.asarray(pool, dtype=np.int64)[ops.sample_banks(len(pool), n_banks=n_banks, ratio=bank_ratio,
                                                              replace=replace, seed=seed)]


def nearest_neighbour_scores(
    queries: torch.Tensor,
    memory: torch.Tensor,
    *,
    metric: str = "cosine",
    rows_per_chunk: int = 16384,
) -> torch.Tensor:
    """Distance from each query patch to its nearest memory patch (full memory, k = 1).

    Args:
        queries: ``(Nq, D)`` patch features.
        memory: ``(Nm, D)`` patch features (the whole memory is one group).
        metric: Distance metric.
        rows_per_chunk: Queries per kernel call.

    Returns:
        ``(Nq,)`` float32 distances.
    """
    groups = torch.zeros(memory.shape[0], dtype=torch.int64, device=memory.device)
    out = torch.empty(queries.shape[0], dtype=torch.float32, device=queries.device)
    for start in range(0, queries.shape[0], rows_per_chunk):
        stop = min(start + rows_per_chunk, queries.shape[0])
        out[start:stop] = ops.group_min_distance(queries[start:stop], memory, groups, 1, metric=metric)[:, 0]
    return out
