"""The trusted memory: which training images the final detector trusts, and its memory bank.

MeDS ranks the training images by suspicion (the memory ensemble, then the distilled and
fine-tuned network). A nearest-neighbour memory built from the images it trusts is a strong
final detector, but only if that set holds almost no defects: under the official "overlap"
protocol every defect left in the memory is an exact match for its test copy. The median +
k*MAD cut of stage 3 is too lenient for that at high noise (it lets about a fifth of the
defects through on real data), so the trusted set is chosen by a stricter rule that needs no
noise ratio:

1. **Core**: the lower half of the ranking. Contamination is a minority, so the core is
   nearly clean whatever the ratio.
2. **Re-score** every training image against a memory of the core's patches, leave-one-out
   (an image never matches its own patches). Defects find no match among clean images, so
   this separates them better than scores from memories that contain other defects.
3. **Trust** the images whose re-score lies below ``median + k * 1.4826 * MAD`` of the
   core's own re-scores: an outlier test against images believed clean, which admits the
   normal images the core left out.

Steps 2-3 can repeat with the trusted set as the next core (``rounds``).

The memory bank keeps a greedy k-center coreset of every trusted image's patches (per image,
so it is cheap and exact to compute; PatchCore's coreset is the same greedy rule over the
whole memory): it bounds the cost of prediction while keeping each image's rare patches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch

from ..data.labels import DEFECTIVE, GOOD
from ..kernels import ops
from .scoring import robust_threshold

#: ``(N, L) patch scores -> (N,) image scores`` (the detector's maps + top-fraction mean).
ImageAggregate = Callable[[torch.Tensor], torch.Tensor]


def image_coreset(features: torch.Tensor, ratio: float, *, images_per_chunk: int = 32) -> torch.Tensor:
    """Greedy k-center coreset of each image's patches (cosine distance).

    Starts from the patch farthest from the image's mean feature, then repeatedly adds the
    patch farthest from those chosen, so rare patches are kept before repeated ones.

    Args:
        features: ``(N, L, D)`` patch features.
        ratio: Share of each image's patches to keep, in ``(0, 1]``.
        images_per_chunk: Images whose ``(L, L)`` distance matrices are held at once.

    Returns:
        ``(N, k)`` int64 patch indices per image, ``k = ceil(ratio * L)``, in the order chosen.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"image_coreset: ratio must be in (0, 1], got {ratio}")
    n, length, _ = features.shape
    k = max(1, math.ceil(ratio * length))
    chosen = torch.empty(n, k, dtype=torch.int64, device=features.device)
    if k == length:
        chosen[:] = torch.arange(length, device=features.device)
        return chosen
    for start in range(0, n, images_per_chunk):
        x = torch.nn.functional.normalize(features[start : start + images_per_chunk].float(), dim=-1)
        m = x.shape[0]
        distance = 1.0 - x @ x.transpose(1, 2)  # (m, L, L)
        centre = torch.nn.functional.normalize(x.mean(dim=1, keepdim=True), dim=-1)
        current = (1.0 - (x * centre).sum(-1)).argmax(dim=1)
        nearest = torch.full((m, length), float("inf"), device=x.device)
        rows = torch.arange(m, device=x.device)
        for j in range(k):
            chosen[start : start + m, j] = current
            nearest = torch.minimum(nearest, distance[rows, current])
            nearest[rows, current] = -1.0  # never pick a chosen patch again (ties at 0)
            current = nearest.argmax(dim=1)
    return chosen


@dataclasses.dataclass
class PatchMemory:
    """Patch rows of some training images, with the image each row came from.

    Attributes:
        rows: ``(M, D)`` patch features.
        images: ``(M,)`` int64 index (in the training set) of each row's image.
    """

    rows: torch.Tensor
    images: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor, which: torch.Tensor, coreset: torch.Tensor) -> "PatchMemory":
        """The coreset rows of the images ``which`` (``coreset`` from :func:`image_coreset`)."""
        which = which.to(features.device)
        picked = coreset[which]  # (n, k)
        rows = features[which[:, None], picked].reshape(-1, features.shape[-1])
        return cls(rows, which.repeat_interleave(picked.shape[1]))


def leave_one_out_distance(
    features: torch.Tensor,
    memory: PatchMemory,
    *,
    metric: str = "cosine",
    images_per_chunk: int = 16,
) -> torch.Tensor:
    """Nearest distance from every patch to the memory rows of *other* images.

    Args:
        features: ``(N, L, D)`` patches of the training images (image ``i`` is index ``i``).
        memory: Rows and their image indices (in ``[0, N)``).
        metric: Distance metric.
        images_per_chunk: Query images per kernel call.

    Returns:
        ``(N, L)`` distances; an image whose only memory rows are its own gets the largest
        distance seen (it has nothing to be compared with).
    """
    n, length, dim = features.shape
    present = torch.zeros(1, n, dtype=torch.bool, device=features.device)
    present[0, memory.images.unique()] = True
    out = torch.empty(n, length, dtype=torch.float32, device=features.device)
    for start in range(0, n, images_per_chunk):
        stop = min(start + images_per_chunk, n)
        queries = features[start:stop].reshape(-1, dim)
        query_images = torch.arange(start, stop, device=features.device).repeat_interleave(length)
        out[start:stop] = ops.ensemble_distance(
            queries, memory.rows, memory.images, present, metric=metric,
            query_groups=query_images, exclude_self=True,
        ).reshape(stop - start, length)
    missing = torch.isnan(out)
    if missing.any():
        out[missing] = out[~missing].max()
    return out


@dataclasses.dataclass
class TrustedSet:
    """Outcome of :func:`select_trusted`.

    Attributes:
        trusted: ``(N,)`` bool, the images the final memory holds.
        scores: ``(N,)`` image re-scores against the last core (the suspicion score).
        patch_scores: ``(N, L)`` the patch re-scores behind ``scores``.
        core: ``(N,)`` bool, the last core the re-scores were measured against.
        cut: The re-score below which an image is trusted.
    """

    trusted: torch.Tensor
    scores: torch.Tensor
    patch_scores: torch.Tensor
    core: torch.Tensor
    cut: float


def select_trusted(
    features: torch.Tensor,
    ranking: torch.Tensor,
    coreset: torch.Tensor,
    aggregate: ImageAggregate,
    *,
    k: float = 3.0,
    rounds: int = 1,
    core_fraction: float = 0.5,
    metric: str = "cosine",
    labels: Optional[torch.Tensor] = None,
) -> TrustedSet:
    """The images to trust, from a suspicion ranking (see the module docstring).

    Args:
        features: ``(N, L, D)`` training features.
        ranking: ``(N,)`` suspicion scores (higher = more suspicious), e.g. stage 3's eta.
        coreset: ``(N, k)`` per-image coreset indices (:func:`image_coreset`).
        aggregate: Patch scores -> image scores.
        k: Width of the outlier cut in robust standard deviations.
        rounds: Re-score / cut rounds.
        core_fraction: Share of the ranking that forms the first core.
        metric: Distance metric.
        labels: ``(N,)`` int8 label codes (:func:`meds.data.labels.label_codes`): images
            labelled good head the core and are always trusted; images labelled defective
            are never in the core nor trusted (they are still re-scored). ``None``: no labels.
    """
    if rounds < 1:
        raise ValueError(f"select_trusted: rounds must be >= 1, got {rounds}")
    if not 0.0 < core_fraction <= 1.0:
        raise ValueError(f"select_trusted: core_fraction must be in (0, 1], got {core_fraction}")
    n = features.shape[0]
    ranking = ranking.to(features.device)
    n_allowed = n
    if labels is not None:
        labels = torch.as_tensor(labels, device=features.device)
        n_allowed = int((labels != DEFECTIVE).sum())
        ranking = torch.where(labels == GOOD, -math.inf, torch.where(labels == DEFECTIVE, math.inf, ranking))
    order = torch.argsort(ranking, stable=True)
    core = torch.zeros(n, dtype=torch.bool, device=features.device)
    core[order[: max(2, math.ceil(core_fraction * n_allowed))]] = True
    for _ in range(rounds):
        memory = PatchMemory.of(features, torch.nonzero(core).flatten(), coreset)
        patch = leave_one_out_distance(features, memory, metric=metric)
        scores = aggregate(patch)
        cut = robust_threshold(scores[core], k)
        trusted = scores < cut
        if labels is not None:
            trusted = (trusted | (labels == GOOD)) & (labels != DEFECTIVE)
        if int(trusted.sum()) < 2:  # degenerate scores: keep the core
            trusted = core.clone()
        last_core, core = core, trusted
    return TrustedSet(trusted=trusted, scores=scores, patch_scores=patch, core=last_core, cut=cut)
