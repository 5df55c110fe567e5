"""Heat-map visualisation: colour maps, overlays, thumbnails and atomic PNG output.

Only numpy and Pillow are used (no matplotlib). Every image here is an ``(H, W, 3)`` uint8
RGB array; anomaly maps are ``(H, W)`` float arrays, higher = more anomalous.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..atomic_io import atomic_write_bytes
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "INFERNO_LUT",
    "CONTOUR_COLOR",
    "colormap",
    "overlay",
    "save_png",
    "thumbnail",
    "side_by_side",
    "atomic_write_bytes",
]

PathLike = Union[str, os.PathLike]

# Anchors of an inferno-like perceptual colour map (black -> purple -> red -> orange ->
# pale yellow) at t = 0, 0.1, ..., 1. Luminance rises monotonically along the map, so it
# stays readable in greyscale and has no false "bands" like jet.
_ANCHORS = np.array(
    [
        (0, 0, 4),
        (22, 11, 57),
        (66, 10, 104),
        (106, 23, 110),
        (147, 38, 103),
        (188, 55, 84),
        (221, 81, 58),
        (243, 120, 25),
        (252, 165, 10),
        (246, 215, 70),
        (252, 255, 164),
    ],
    dtype=np.float64,
)


def _build_lut(anchors: np.ndarray, n: int = 256) -> np.ndarray:
    x = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    lut = np.stack([np.interp(t, x, anchors[:, c]) for c in range(3)], axis=1)
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8)


#: ``(256, 3)`` uint8 lookup table used by :func:`colormap` (index 0 = low, 255 = high).
INFERNO_LUT: np.ndarray = _build_lut(_ANCHORS)
INFERNO_LUT.setflags(write=False)

#: RGB colour of ground-truth mask contours drawn by :func:`overlay` (cyan: absent from
#: the colour map, so it stays visible on any heat value).
CONTOUR_COLOR = (0, 255, 255)


# ----------------------------------------------------------------------------- helpers


def _as_rgb(image: np.ndarray, func: str, argument: str = "image") -> np.ndarray:
    """Check an ``(H, W, 3)`` / ``(H, W)`` / ``(H, W, 1|4)`` uint8 array, return ``(H, W, 3)``."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"{func}: {argument} must be uint8, got dtype {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        if image.shape[2] == 1:
            return np.repeat(image, 3, axis=2)
        return image[:, :, :3]
    raise ValueError(f"{func}: {argument} must have shape (H, W, 3) or (H, W), got {image.shape}")


def _as_map(values: np.ndarray, func: str, argument: str = "anomaly_map") -> np.ndarray:
    values = np.asarray(values)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise ValueError(f"{func}: {argument} must have shape (H, W), got {values.shape}")
    if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"{func}: {argument} must be a numeric array, got dtype {values.dtype}")
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"{func}: {argument} must not be empty, got shape {values.shape}")
    return values.astype(np.float32, copy=False)


def _value_range(values: np.ndarray, vmin: Optional[float], vmax: Optional[float], func: str):
    finite = values[np.isfinite(values)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 1.0
    vmin, vmax = float(vmin), float(vmax)
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ValueError(f"{func}: vmin and vmax must be finite, got vmin={vmin}, vmax={vmax}")
    if vmin > vmax:
        raise ValueError(f"{func}: vmin must be <= vmax, got vmin={vmin}, vmax={vmax}")
    return vmin, vmax


def _resize_map(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float map to ``(height, width)`` (NaN/Inf replaced first)."""
    if values.shape == (height, width):
        return values
    finite = np.isfinite(values)
    if not finite.all():
        fill = float(values[finite].min()) if finite.any() else 0.0
        values = np.where(finite, values, fill).astype(np.float32)
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.float32)


def _contour(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Inner boundary of a bool mask (4-neighbourhood), grown to ``thickness`` pixels."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    interior = (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )
    edge = mask & ~interior
    for _ in range(max(0, thickness - 1)):
        p = np.pad(edge, 1, mode="constant", constant_values=False)
        edge = edge | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return edge


# ----------------------------------------------------------------------------- public API


def colormap(values: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None) -> np.ndarray:
    """Colourise a float map with an inferno-like perceptual colour map.

    Args:
        values: ``(H, W)`` float map (any shape works; the output gets a trailing 3).
        vmin: Value mapped to the darkest colour; default: the finite minimum of ``values``.
        vmax: Value mapped to the brightest colour; default: the finite maximum.
            Values outside ``[vmin, vmax]`` are clipped; NaN maps to the darkest colour.
            If ``vmin == vmax``, values above it are brightest and the rest darkest.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: ``vmin > vmax`` or either is not finite.
    """
    values = np.asarray(values, dtype=np.float64)
    vmin, vmax = _value_range(values, vmin, vmax, "colormap")
    span = vmax - vmin
    with np.errstate(invalid="ignore"):
        if span > 0:
            t = (values - vmin) / span
        else:
            t = (values > vmax).astype(np.float64)
    t = np.nan_to_num(t, nan=0.0, posinf=1.0, neginf=0.0)
    idx = np.rint(np.clip(t, 0.0, 1.0) * (len(INFERNO_LUT) - 1)).astype(np.intp)
    return INFERNO_LUT[idx]


def overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    alpha: float = 0.5,
    mask: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Blend a colourised anomaly map over an image, optionally outlining a ground-truth mask.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (``(H, W)`` grey is accepted).
        anomaly_map: ``(H', W')`` float map; resized bilinearly to ``(H, W)``.
        vmin: Colour-scale minimum (see :func:`colormap`); default: the map's minimum.
            Pass the same ``vmin``/``vmax`` for several images to make them comparable.
        vmax: Colour-scale maximum; default: the map's maximum.
        alpha: Weight of the heat map, in ``[0, 1]`` (0 = image only, 1 = heat map only).
        mask: Optional ``(H, W)`` ground-truth mask (bool, or nonzero = defect); its
            contour is drawn in :data:`CONTOUR_COLOR`. Another size is resized (nearest).

    Returns:
        ``(H, W, 3)`` uint8.

    Raises:
        TypeError: ``image`` is not uint8.
        ValueError: Bad shapes, ``alpha`` outside ``[0, 1]``, or ``vmin > vmax``.
    """
    img = _as_rgb(image, "overlay")
    amap = _as_map(anomaly_map, "overlay")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"overlay: image must not be empty, got shape {img.shape}")
    vmin, vmax = _value_range(amap, vmin, vmax, "overlay")
    heat = colormap(_resize_map(amap, h, w), vmin, vmax)
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * heat.astype(np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.ndim != 2:
            raise ValueError(f"overlay: mask must have shape (H, W) = {(h, w)}, got {m.shape}")
        m = m.astype(bool) if m.dtype == bool else (m > 0)
        if m.shape != (h, w):
            pil = Image.fromarray(m.astype(np.uint8) * 255)
            m = np.asarray(pil.resize((w, h), Image.NEAREST)) > 127
        thickness = max(1, int(round(min(h, w) / 160)))
        out[_contour(m, thickness)] = CONTOUR_COLOR
    return out


def save_png(array: np.ndarray, path: PathLike) -> Path:
    """Save a uint8 ``(H, W, 3)`` / ``(H, W)`` array as PNG, atomically.

    Returns:
        The written path.

    Raises:
        TypeError: ``array`` is not uint8.
        ValueError: Bad shape.
    """
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"save_png: array must be uint8, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"save_png: array must have shape (H, W, 3), (H, W, 4) or (H, W), got {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return atomic_write_bytes(buf.getvalue(), path)


def thumbnail(image: np.ndarray, size: int = 160) -> np.ndarray:
    """Resize an image so that its longer side is ``size`` pixels, keeping the aspect ratio.

    Small images are enlarged too, so thumbnails line up in a report.

    Args:
        image: ``(H, W, 3)`` uint8 (``(H, W)`` grey is accepted).
        size: Length of the longer side of the result.

    Returns:
        ``(h, w, 3)`` uint8 with ``max(h, w) == size``.
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"thumbnail: size must be >= 1, got {size}")
    img = _as_rgb(image, "thumbnail")
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"thumbnail: image must not be empty, got shape {img.shape}")
    scale = size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return img.copy()
    resample = Image.LANCZOS if scale < 1 else Image.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), resample))


def side_by_side(
    panels: Sequence[np.ndarray],
    labels: Optional[Sequence[str]] = None,
    *,
    gap: int = 4,
    background: tuple = (32, 32, 32),
    text_color: tuple = (255, 255, 255),
) -> np.ndarray:
    """Place panels in a horizontal strip (e.g. image | heat map | overlay) with text labels.

    Panels of other heights are resized to the first panel's height, keeping aspect ratio.

    Args:
        panels: ``(H_i, W_i, 3)`` uint8 images (grey ``(H, W)`` accepted), at least one.
        labels: One short caption per panel, drawn above it with Pillow's default font;
            ``None`` for no captions.
        gap: Pixels between panels and around the strip.
        background: RGB of the gaps and the caption band.
        text_color: RGB of the captions.

    Returns:
        ``(H_total, W_total, 3)`` uint8.
    """
    if len(panels) == 0:
        raise ValueError("side_by_side: panels must hold at least one image, got 0")
    if labels is not None and len(labels) != len(panels):
        raise ValueError(f"side_by_side: labels must have one entry per panel ({len(panels)}), got {len(labels)}")
    gap = max(0, int(gap))
    imgs = [_as_rgb(p, "side_by_side", f"panels[{i}]") for i, p in enumerate(panels)]
    height = imgs[0].shape[0]
    resized = []
    for img in imgs:
        h, w = img.shape[:2]
        if h != height:
            nw = max(1, int(round(w * height / h)))
            img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((nw, height), Image.BILINEAR))
        resized.append(img)

    font = ImageFont.load_default()
    band = 0
    if labels is not None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        heights = [probe.textbbox((0, 0), str(t) or " ", font=font)[3] for t in labels]
        band = max(heights) + gap
    total_w = sum(im.shape[1] for im in resized) + gap * (len(resized) + 1)
    total_h = height + band + 2 * gap
    canvas = Image.new("RGB", (total_w, total_h), tuple(background))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for i, img in enumerate(resized):
        if labels is not None:
            draw.text((x, gap), str(labels[i]), fill=tuple(text_color), font=font)
        canvas.paste(Image.fromarray(np.ascontiguousarray(img)), (x, gap + band))
        x += img.shape[1] + gap
    return np.asarray(canvas)
