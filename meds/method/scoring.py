"""Test-time post-processing shared by MeDS and the baselines (as in the MeDS paper, ICML 2026).

Patch scores on the feature grid -> bilinear upsampling to the input size -> Gaussian
blur (sigma = 4) -> pixel map; the image score is the mean of the top 1% of pixels.
The same top-fraction mean (``top_fraction_mean``) is the ``agg`` of progressive selection.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def top_fraction_mean(scores: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Mean of the largest ``fraction`` of the values in each row.

    Args:
        scores: ``(N, P)`` scores (patches or pixels) per image.
        fraction: Share of the values to average; at least one value is used.

    Returns:
        ``(N,)`` aggregated scores.
    """
    scores = scores.reshape(scores.shape[0], -1)
    k = max(1, int(math.ceil(fraction * scores.shape[1])))
    return scores.topk(k, dim=1).values.mean(dim=1)


def gaussian_kernel1d(sigma: float, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``ceil(4 sigma)`` (anomalib's kernel size)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, H, W)`` maps with reflect padding."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma, maps.device)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)
    pad_h = min(radius, maps.shape[1] - 1)
    pad_w = min(radius, maps.shape[2] - 1)
    if pad_w > 0:
        k = kernel[radius - pad_w : radius + pad_w + 1]
        x = F.conv2d(F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect"), (k / k.sum()).view(1, 1, 1, -1))
    if pad_h > 0:
        k = kernel[radius - pad_h : radius + pad_h + 1]
        x = F.conv2d(F.pad(x, (0, 0, pad_h, pad_h), mode="reflect"), (k / k.sum()).view(1, 1, -1, 1))
    return x.squeeze(1)


def anomaly_maps(
    patch_scores: torch.Tensor,
    grid: Sequence[int],
    size: Sequence[int],
    sigma: float = 4.0,
) -> torch.Tensor:
    """Turn patch scores into smooth pixel maps.

    Args:
        patch_scores: ``(N, h*w)`` scores on the feature grid.
        grid: ``(h, w)`` of the feature grid.
        size: ``(H, W)`` of the output maps (the model's input size).
        sigma: Standard deviation of the Gaussian blur, in output pixels.

    Returns:
        ``(N, H, W)`` float32 pixel maps.
    """
    h, w = int(grid[0]), int(grid[1])
    maps = patch_scores.float().reshape(-1, 1, h, w)
    maps = F.interpolate(maps, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
    return gaussian_blur(maps.squeeze(1), sigma)


def resize_map(pixel_map: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinearly resize one ``(H, W)`` map to ``size = (H', W')``."""
    if tuple(pixel_map.shape) == (int(size[0]), int(size[1])):
        return pixel_map
    t = torch.from_numpy(np.ascontiguousarray(pixel_map, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def robust_centre_scale(scores) -> tuple[float, float]:
    """``(median, 1.4826 * MAD)`` of ``scores``: a centre and standard deviation that a
    minority of outliers cannot move."""
    scores = np.asarray(scores.cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    median = float(np.median(scores))
    return median, 1.4826 * float(np.median(np.abs(scores - median)))


def robust_threshold(scores, k: float = 3.0) -> float:
    """``median + k * 1.4826 * MAD`` of ``scores``: an outlier cut needing no labels."""
    centre, scale = robust_centre_scale(scores)
    return centre + k * scale


#: Floor of each position's spread, as a share of the median spread over positions: a
#: position where every training image scores alike must not turn noise into anomalies.
POSITION_SCALE_FLOOR = 0.5


def position_stats(patch_scores: torch.Tensor, floor: float = POSITION_SCALE_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust centre and spread of every patch position over images.

    A reconstruction network's error varies with the place in an aligned object (edges and
    fine structure are harder to reconstruct than flat regions), so the same raw score is
    normal in one place and a defect in another. Standardising each position by the
    training images' median and MAD puts every position on one scale.

    Args:
        patch_scores: ``(N, L)`` scores of ``N`` training images.
        floor: The spread is at least this share of its median over positions.

    Returns:
        ``(centre, scale)``, each ``(L,)``: the median and the floored MAD per position.
    """
    if patch_scores.dim() != 2 or patch_scores.shape[0] < 1:
        raise ValueError(f"position_stats: patch_scores must be (N, L) with N >= 1, got {tuple(patch_scores.shape)}")
    centre = patch_scores.median(dim=0).values
    spread = (patch_scores - centre).abs().median(dim=0).values
    scale = spread.clamp_min(max(floor * float(spread.median()), 1e-12))
    return centre, scale


def standardise_positions(patch_scores: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(patch_scores - centre) / scale`` per position (see :func:`position_stats`)."""
    return (patch_scores - centre) / scale
