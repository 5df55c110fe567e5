"""A synthetic industrial-inspection dataset in the MVTec AD layout.

Seven categories - textures ``metal`` (brushed steel), ``fabric`` (woven cloth), ``wood``,
``tile`` (speckled ceramic) and objects ``nut`` (hex nut on a dark table), ``capsule``
(two-colour printed capsule), ``pcb`` (circuit board with a fixed layout) - each with
natural nuisance variation between good images (lighting gradient and gain, texture
phase, sensor noise, small rotation/translation of objects) and 4-5 defect types with
exact pixel masks: scratches (thin curved strokes), cracks (branching random walks),
holes, stains and colour blotches, dents, missing parts (chipped nut corner, squeezed
capsule, missing PCB pad, broken trace, missing print), extra parts (solder bridge,
foreign particle) and dirt.

Defects are mostly subtle: surface defects change the image by 4-20 grey levels and
most cover well under 1 % of it (median ~0.3 %); a raw-pixel patch matcher is weak on
the objects (image AUROC ~0.6-0.85), a pretrained-feature patch matcher is not (~0.94-1.0). Each defect type has a dataset-level style (size,
contrast, colour, orientation, favoured location) drawn once per ``(seed, category,
type)`` and jittered per instance, like a recurring production fault; so when several
instances of a type are in the training set, that type starts to look normal to a
nearest-neighbour detector (and in the "overlap" protocol the test copies become exact
matches).

A mask is exactly the region where the defect is blended in (weight >= 5 %): pixels
outside it are identical to the same image without the defect (same sensor noise), and
most pixels inside it differ. Generation is vectorised numpy + scipy.ndimage and
deterministic: each image has its own ``numpy.random.Generator`` seeded by
``(seed, category, split, index)``, so the same arguments give byte-identical files.

Layout written (``<defect>`` folders per category, see :data:`DEFECT_TYPES`)::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png      (0 / 255)
    <root>/synthetic.json                                      generation parameters
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["generate_synthetic", "SYNTHETIC_CATEGORIES", "DEFECT_TYPES", "render_synthetic"]

SYNTHETIC_CATEGORIES = ("metal", "fabric", "wood", "tile", "nut", "capsule", "pcb")

DEFECT_TYPES = {
    "metal": ("scratch", "dent", "stain", "pits"),
    "fabric": ("hole", "thread", "stain", "fiber"),
    "wood": ("scratch", "crack", "hole", "stain"),
    "tile": ("crack", "oil", "gray_stroke", "rough"),
    "nut": ("scratch", "chip", "rust", "contamination"),
    "capsule": ("crack", "squeeze", "faulty_imprint", "poke", "color"),
    "pcb": ("missing_pad", "solder_bridge", "broken_trace", "scratch", "contamination"),
}

_FORMAT_VERSION = 1
_ALPHA_MIN = 0.05  # blend weights below this are dropped, so mask == changed pixels
_F = np.float32


# ----------------------------------------------------------------------------- helpers
@lru_cache(maxsize=8)
def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in image units: u (1, S) along x, v (S, 1) along y, in [-0.5, 0.5]."""
    c = ((np.arange(S, dtype=_F) + _F(0.5)) / _F(S) - _F(0.5)).astype(_F)
    return c[None, :], c[:, None]


@lru_cache(maxsize=64)
def _bspline_taps(n_out: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline taps sampling ``cells`` spans evenly at ``n_out`` points: first
    control index ``(n_out,)`` and weights ``(4, n_out)``."""
    pos = 1.0 + (np.arange(n_out) + 0.5) * cells / n_out
    i0 = np.floor(pos).astype(np.intp)
    t = pos - i0
    w = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3]) / 6.0
    return i0 - 1, w.astype(_F)


def _smooth(rng: np.random.Generator, shape: tuple[int, int], cells) -> np.ndarray:
    """Smooth unit-variance noise with ``cells`` (cy, cx) features across ``shape``
    (separable cubic B-spline through Gaussian control points; no BLAS, so it scales
    across threads)."""
    H, W = shape
    cy, cx = (cells, cells) if np.isscalar(cells) else cells
    cy, cx = max(int(cy), 1), max(int(cx), 1)
    g = rng.standard_normal((cy + 3, cx + 3), dtype=_F)
    iy, wy = _bspline_taps(H, cy)
    rows = wy[0][:, None] * g[iy] + wy[1][:, None] * g[iy + 1] + wy[2][:, None] * g[iy + 2] + wy[3][:, None] * g[iy + 3]
    ix, wx = _bspline_taps(W, cx)
    z = wx[0] * rows[:, ix] + wx[1] * rows[:, ix + 1] + wx[2] * rows[:, ix + 2] + wx[3] * rows[:, ix + 3]
    s = z.std()
    return ((z - z.mean()) / (s if s > 0 else 1)).astype(_F)


def _cov(d: np.ndarray, S: int) -> np.ndarray:
    """Anti-aliased coverage of the region ``d < 0`` (``d`` a signed distance in image units)."""
    return np.clip(_F(0.5) - d * _F(S), 0, 1).astype(_F)


def _rot(u, v, cx, cy, theta):
    c, s = np.cos(theta), np.sin(theta)
    du, dv = u - _F(cx), v - _F(cy)
    return (c * du + s * dv).astype(_F), (-s * du + c * dv).astype(_F)


def _sensor_noise(rng, S, sigma) -> np.ndarray:
    return rng.standard_normal((S, S, 3), dtype=_F) * _F(sigma)


def _gradient(rng, S, amp) -> np.ndarray:
    u, v = _grid(S)
    th = rng.uniform(0, 2 * np.pi)
    return (_F(amp) * (np.cos(th) * u + np.sin(th) * v) * 2).astype(_F)


def _crop_box(cx, cy, rad, S):
    x0, x1 = max(int(np.floor(cx - rad)), 0), min(int(np.ceil(cx + rad)) + 1, S)
    y0, y1 = max(int(np.floor(cy - rad)), 0), min(int(np.ceil(cy + rad)) + 1, S)
    return x0, x1, y0, y1


def _stroke(S: int, pts: np.ndarray, width: float) -> np.ndarray:
    """Alpha of a polyline through densely sampled pixel points ``pts (N, 2)`` (x, y)."""
    out = np.zeros((S, S), _F)
    pts = pts[(pts[:, 0] >= -0.5) & (pts[:, 0] < S - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] < S - 0.5)]
    if len(pts) == 0:
        return out
    pad = int(np.ceil(width)) + 2
    xi = np.clip(np.rint(pts[:, 0]).astype(int), 0, S - 1)
    yi = np.clip(np.rint(pts[:, 1]).astype(int), 0, S - 1)
    x0, x1 = max(xi.min() - pad, 0), min(xi.max() + pad + 1, S)
    y0, y1 = max(yi.min() - pad, 0), min(yi.max() + pad + 1, S)
    canvas = np.ones((y1 - y0, x1 - x0), bool)
    canvas[yi - y0, xi - x0] = False
    dist = ndimage.distance_transform_edt(canvas).astype(_F)
    out[y0:y1, x0:x1] = np.clip(_F(width / 2 + 0.5) - dist, 0, 1)
    return out


def _curve_pts(rng, S, start, length_px, bend=0.25, ang=None):
    """Dense points of a random quadratic Bezier of the given length (pixels)."""
    ang = rng.uniform(0, 2 * np.pi) if ang is None else ang
    p0 = np.asarray(start, float)
    p2 = p0 + length_px * np.array([np.cos(ang), np.sin(ang)])
    mid = (p0 + p2) / 2
    perp = np.array([-np.sin(ang), np.cos(ang)])
    p1 = mid + perp * rng.uniform(-bend, bend) * length_px
    t = np.linspace(0, 1, int(np.ceil(length_px * 2)) + 2)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _crack_pts(rng, S, start, length_px, branch_p=0.05, depth=2, ang=None):
    """Dense points of a branching random walk (step 1 px)."""
    pts = []
    ang = rng.uniform(0, 2 * np.pi) if ang is None else ang
    stack = [(np.asarray(start, float), ang, length_px, depth)]
    while stack:
        p, a, n, d = stack.pop()
        n = int(n)
        if n <= 1:
            continue
        da = rng.normal(0, 0.28, n).cumsum() + a
        steps = np.stack([np.cos(da), np.sin(da)], 1)
        path = p + steps.cumsum(0)
        pts.append(path)
        if d > 0:
            for i in np.nonzero(rng.random(n) < branch_p)[0]:
                side = rng.choice([-1.0, 1.0])
                stack.append((path[i], da[i] + side * rng.uniform(0.5, 1.1), (n - i) * rng.uniform(0.25, 0.6), d - 1))
    return np.concatenate(pts, 0) if pts else np.zeros((0, 2))


def _blob(rng, S, cx, cy, r, irregular=0.35, edge=1.2) -> np.ndarray:
    """Alpha of an irregular blob of radius ``r`` pixels centred at pixel (cx, cy)."""
    out = np.zeros((S, S), _F)
    rad = r * (1 + irregular) * 1.3 + edge + 2
    x0, x1, y0, y1 = _crop_box(cx, cy, rad, S)
    if x1 <= x0 or y1 <= y0:
        return out
    ys = np.arange(y0, y1, dtype=_F)[:, None] - _F(cy)
    xs = np.arange(x0, x1, dtype=_F)[None, :] - _F(cx)
    n = _smooth(rng, (y1 - y0, x1 - x0), 3)
    val = np.sqrt(xs**2 + ys**2) / _F(r) + _F(irregular) * n * _F(0.6)
    out[y0:y1, x0:x1] = np.clip((1 - val) * _F(r / edge) + _F(0.5), 0, 1)
    return out


def _disk(S, cx, cy, r) -> np.ndarray:
    out = np.zeros((S, S), _F)
    x0, x1, y0, y1 = _crop_box(cx, cy, r + 2, S)
    if x1 <= x0 or y1 <= y0:
        return out
    ys = np.arange(y0, y1, dtype=_F)[:, None] - _F(cy)
    xs = np.arange(x0, x1, dtype=_F)[None, :] - _F(cx)
    out[y0:y1, x0:x1] = np.clip(_F(r + 0.5) - np.sqrt(xs**2 + ys**2), 0, 1)
    return out


def _seg_sdf_crop(S, a, b, half_w, pad=2):
    """Signed distance (pixels) to a segment a-b of half-width ``half_w`` (pixels), in a crop."""
    x0 = max(int(np.floor(min(a[0], b[0]) - half_w - pad)), 0)
    x1 = min(int(np.ceil(max(a[0], b[0]) + half_w + pad)) + 1, S)
    y0 = max(int(np.floor(min(a[1], b[1]) - half_w - pad)), 0)
    y1 = min(int(np.ceil(max(a[1], b[1]) + half_w + pad)) + 1, S)
    if x1 <= x0 or y1 <= y0:
        return None
    ys = np.arange(y0, y1, dtype=_F)[:, None]
    xs = np.arange(x0, x1, dtype=_F)[None, :]
    ab = np.asarray(b, _F) - np.asarray(a, _F)
    L2 = float(ab @ ab) or 1e-9
    t = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / _F(L2), 0, 1)
    dx, dy = xs - (a[0] + t * ab[0]), ys - (a[1] + t * ab[1])
    return (slice(y0, y1), slice(x0, x1)), np.sqrt(dx * dx + dy * dy) - _F(half_w)


def _paint_seg(cov, S, a, b, half_w):
    r = _seg_sdf_crop(S, a, b, half_w)
    if r is not None:
        sl, d = r
        np.maximum(cov[sl], np.clip(_F(0.5) - d, 0, 1), out=cov[sl])


def _pick_point(rng, region: np.ndarray, thr=0.95, margin=0):
    """A random pixel (x, y) where ``region > thr`` (optionally away from the border)."""
    sub = region
    if margin:
        sub = np.zeros_like(region)
        sub[margin:-margin, margin:-margin] = region[margin:-margin, margin:-margin]
    ys, xs = np.nonzero(sub > thr)
    if len(xs) == 0:
        ys, xs = np.nonzero(region > 0.5)
    i = rng.integers(len(xs))
    return float(xs[i]) + rng.uniform(-0.5, 0.5), float(ys[i]) + rng.uniform(-0.5, 0.5)


def _px(S, units, lo=1.0):
    return max(float(units) * S, lo)


# ----------------------------------------------------------------------------- categories
# Each renderer returns (image float32 (S, S, 3) in grey levels without sensor noise, ctx);
# ctx["face"] is where surface defects may go; ctx["noise_sigma"] the sensor noise.


def _render_metal(rng, S):
    u, v = _grid(S)
    gain = rng.uniform(0.95, 1.05)
    coarse = _smooth(rng, (S, S), (max(S // 2, 4), 3))
    fine = _smooth(rng, (S, S), (max(S // 1, 4), 10))
    streak = 5.0 * coarse + 3.0 * fine
    base = (158 * gain + streak + _gradient(rng, S, rng.uniform(4, 10)))[..., None]
    img = base * np.array([1.0, 1.01, 1.04], _F)
    return img.astype(_F), {"face": np.ones((S, S), _F), "noise_sigma": 2.2}


def _render_fabric(rng, S):
    u, v = _grid(S)
    T = max(4.0, S / 32.0) / S  # thread period in image units
    th = np.deg2rad(rng.uniform(-1.5, 1.5))
    x, y = _rot(u, v, rng.uniform(0, T), rng.uniform(0, T), th)
    fx, fy = x / _F(T), y / _F(T)
    cx, cy = np.floor(fx), np.floor(fy)
    checker = ((cx + cy) % 2) == 0
    px = np.sin(np.pi * (fx - cx)) ** 0.6  # across a vertical (warp) thread
    py = np.sin(np.pi * (fy - cy)) ** 0.6
    # per-thread brightness jitter (threads differ a little)
    nthreads = int(np.ceil(1.5 / T)) + 4
    jit_x = rng.normal(0, 0.035, nthreads).astype(_F)
    jit_y = rng.normal(0, 0.035, nthreads).astype(_F)
    ix = (cx.astype(int) % nthreads)
    iy = (cy.astype(int) % nthreads)
    warp = (0.62 + 0.38 * px) * (1 + jit_x[ix]) * (0.93 + 0.07 * np.cos(np.pi * (fy - cy - 0.5)))
    weft = (0.62 + 0.38 * py) * (1 + jit_y[iy]) * (0.93 + 0.07 * np.cos(np.pi * (fx - cx - 0.5)))
    inten = np.where(checker, warp, weft).astype(_F)
    inten = inten * _F(rng.uniform(0.95, 1.05)) + _F(0.02) * _smooth(rng, (S, S), 6) + _gradient(rng, S, 0.03)
    colour = np.array([72, 98, 150], _F) + rng.normal(0, 2, 3).astype(_F)
    img = inten[..., None] * colour
    return img.astype(_F), {"face": np.ones((S, S), _F), "noise_sigma": 2.0, "T": T}


def _render_wood(rng, S):
    u, v = _grid(S)
    warp = _smooth(rng, (S, S), (3, 5))
    freq = rng.uniform(9, 13)
    phase = freq * (u + 0.05 * warp + 0.02 * v) + rng.uniform(0, 1)
    stripe = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
    late = stripe**4  # thin dark late-wood lines
    fib = _smooth(rng, (S, S), (4, max(S // 2, 4)))
    light = np.array([206, 162, 112], _F) * _F(rng.uniform(0.96, 1.04))
    dark = np.array([168, 118, 74], _F)
    t = (0.25 * stripe + 0.6 * late + 0.04 * fib).astype(_F)[..., None]
    img = light * (1 - t) + dark * t + _gradient(rng, S, 5)[..., None]
    return img.astype(_F), {"face": np.ones((S, S), _F), "noise_sigma": 2.0}


def _render_tile(rng, S):
    mott = _smooth(rng, (S, S), 5) * 5 + _smooth(rng, (S, S), 14) * 2.5
    n_dots = int(S * S / 55)
    field = np.zeros((S, S), _F)
    ys, xs = rng.integers(0, S, n_dots), rng.integers(0, S, n_dots)
    field[ys, xs] = rng.choice(np.array([-1.0, -1.0, -1.0, 1.0], _F), n_dots) * rng.uniform(0.6, 1.0, n_dots).astype(_F)
    dots = ndimage.gaussian_filter(field, 0.7) * _F(90)
    base = _F(182 * rng.uniform(0.96, 1.04)) + mott + dots + _gradient(rng, S, 6)
    img = base[..., None] * np.array([1.0, 0.985, 0.95], _F)
    return img.astype(_F), {"face": np.ones((S, S), _F), "noise_sigma": 2.0}


def _render_nut(rng, S):
    u, v = _grid(S)
    bg = (44 + 4 * _smooth(rng, (S, S), 4) + _gradient(rng, S, 6))[..., None] * np.array([1.0, 1.02, 1.06], _F)
    cx, cy = rng.uniform(-0.02, 0.02, 2)
    th = np.deg2rad(rng.uniform(-6, 6))
    x, y = _rot(u, v, cx, cy, th)
    R = 0.30 * rng.uniform(0.99, 1.01)
    r_in = 0.13
    hexd = np.maximum(np.abs(x), np.maximum(np.abs(0.5 * x + 0.866 * y), np.abs(0.5 * x - 0.866 * y))) - _F(R)
    rad = np.sqrt(x * x + y * y)
    outer = _cov(hexd, S)
    inner = _cov(_F(r_in) - rad, S)  # 1 outside the hole
    body = outer * inner
    lt = rng.uniform(0, 2 * np.pi)
    shade = 150 + 28 * (np.cos(lt) * x + np.sin(lt) * y) / R
    chamfer = np.exp(-(((rad - (r_in + 0.025)) / 0.012) ** 2)) * 32
    thread = -np.exp(-(((rad - (r_in + 0.006)) / 0.005) ** 2)) * 40
    bevel = np.clip((hexd + 0.018) / 0.018, 0, 1) * -22
    grain = 2.5 * _smooth(rng, (S, S), (6, max(S // 2, 4)))
    metal = (shade + chamfer + thread + bevel + grain)[..., None] * np.array([1.0, 0.985, 0.94], _F)
    img = bg * (1 - body[..., None]) + metal * body[..., None]
    face = body * (1 - _cov(_F(r_in + 0.045) - rad, S)) * _cov(hexd + 0.02, S)
    ctx = {"face": face.astype(_F), "body": body, "bg": bg.astype(_F), "noise_sigma": 2.2,
           "geo": (cx, cy, th, R)}  # fmt: skip
    return img.astype(_F), ctx


def _render_capsule(rng, S):
    u, v = _grid(S)
    bgc = 214 + 3 * _smooth(rng, (S, S), 4) + _gradient(rng, S, 5)
    bg_plain = bgc[..., None] * np.array([1.0, 0.99, 0.955], _F)
    cx, cy = rng.uniform(-0.015, 0.015, 2)
    th = np.deg2rad(rng.uniform(-3, 3))
    x, y = _rot(u, v, cx, cy, th)
    L, r = 0.27, 0.11
    d = np.sqrt(np.maximum(np.abs(x) - _F(L), 0) ** 2 + y * y) - _F(r)
    body = _cov(d, S)
    # soft shadow on the table
    xs, ys = _rot(u, v, cx + 0.012, cy + 0.018, th)
    ds = np.sqrt(np.maximum(np.abs(xs) - _F(L), 0) ** 2 + ys * ys) - _F(r)
    shadow = ndimage.gaussian_filter(_cov(ds, S), max(S / 80, 0.8))
    bg = bg_plain * (1 - 0.22 * shadow[..., None])
    yn = np.clip(y / _F(r), -1, 1)
    cyl = np.sqrt(np.clip(1 - yn**2, 0, 1))
    spec = 38 * np.exp(-(((yn + 0.45) / 0.13) ** 2)) * (np.abs(x) < L + 0.06)
    red = np.array([188, 42, 40], _F) * _F(rng.uniform(0.97, 1.03))
    ivory = np.array([236, 226, 198], _F)
    halfc = _cov(x, S)[..., None]  # 1 on the left (red) half
    col = red * halfc + ivory * (1 - halfc)
    seam = np.exp(-((x / (1.2 / S)) ** 2))[..., None] * 0.35
    shade = (0.62 + 0.38 * cyl)[..., None]
    plain_body = col * shade * (1 - seam) + spec[..., None]
    # print: three short bars on the ivory half
    ink = np.zeros((S, S), _F)
    marks = []
    for k, px_ in enumerate((0.085, 0.135, 0.185)):
        m = _cov(np.maximum(np.abs(x - _F(px_)) - _F(0.012), np.abs(y) - _F(0.035)), S)
        marks.append(m)
        ink = np.maximum(ink, m)
    ink_col = np.array([52, 56, 72], _F)
    body_img = plain_body * (1 - 0.85 * ink[..., None]) + ink_col * 0.85 * ink[..., None]
    img = bg * (1 - body[..., None]) + body_img * body[..., None]
    face = body * _cov(d + 0.012, S)
    ctx = {"face": face.astype(_F), "body": body, "bg": bg.astype(_F), "noise_sigma": 1.8,
           "marks": marks, "plain": (bg * (1 - body[..., None]) + plain_body * body[..., None]).astype(_F),
           "geo": (cx, cy, th, L, r)}  # fmt: skip
    return img.astype(_F), ctx


@lru_cache(maxsize=16)
def _pcb_layout(layout_seed: tuple) -> dict:
    """The board layout shared by every image of a dataset (image-unit coordinates)."""
    rng = np.random.default_rng(list(layout_seed))
    traces, pads = [], []
    grid = np.linspace(-0.4, 0.4, 9)
    for _ in range(9):
        if rng.random() < 0.5:  # horizontal then vertical (L shape)
            y0 = rng.choice(grid)
            x0, x1 = sorted(rng.choice(grid, 2, replace=False))
            seg = [((x0, y0), (x1, y0))]
            if rng.random() < 0.6:
                y1 = rng.choice(grid)
                seg.append(((x1, y0), (x1, y1)))
        else:
            x0 = rng.choice(grid)
            y0, y1 = sorted(rng.choice(grid, 2, replace=False))
            seg = [((x0, y0), (x0, y1))]
        w = float(rng.uniform(0.011, 0.018))
        for a, b in seg:
            traces.append((a, b, w))
        pads.append((seg[0][0], float(rng.uniform(0.018, 0.024))))
        pads.append((seg[-1][1], float(rng.uniform(0.018, 0.024))))
    # unique pads
    uniq = {}
    for (p, r) in pads:
        uniq.setdefault((round(p[0], 3), round(p[1], 3)), r)
    pads = [((x, y), r) for (x, y), r in uniq.items()]
    chip = (float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15)), 0.11, 0.07)
    silk = [(float(rng.uniform(-0.42, 0.42)), float(rng.uniform(-0.42, 0.42))) for _ in range(4)]
    return {"traces": traces, "pads": pads, "chip": chip, "silk": silk}


def _render_pcb(rng, S, layout):
    u, v = _grid(S)
    dx, dy = rng.uniform(-0.008, 0.008, 2)
    th = np.deg2rad(rng.uniform(-0.8, 0.8))
    c, s = np.cos(th), np.sin(th)

    def to_px(p):  # image units (layout) -> pixel coords, with this image's pose
        x, y = p
        xr, yr = c * x - s * y + dx, s * x + c * y + dy
        return ((xr + 0.5) * S - 0.5, (yr + 0.5) * S - 0.5)

    board = (1.0 + 0.03 * _smooth(rng, (S, S), 5) + _gradient(rng, S, 0.04))[..., None]
    board_img = board * np.array([34, 102, 56], _F) * _F(rng.uniform(0.96, 1.04))
    trace_cov = np.zeros((S, S), _F)
    for a, b, w in layout["traces"]:
        _paint_seg(trace_cov, S, to_px(a), to_px(b), max(w * S / 2, 0.75))
    trace_col = np.array([62, 150, 76], _F)
    img_traces = board_img * (1 - trace_cov[..., None]) + trace_col * board * trace_cov[..., None]
    # chip with pins
    chip_cov = np.zeros((S, S), _F)
    pin_cov = np.zeros((S, S), _F)
    ccx, ccy, hw, hh = layout["chip"]
    _paint_seg(chip_cov, S, to_px((ccx - hw + hh, ccy)), to_px((ccx + hw - hh, ccy)), hh * S)
    for k in range(6):
        px_ = ccx - hw + (k + 0.5) * (2 * hw / 6)
        for sgn in (-1, 1):
            _paint_seg(pin_cov, S, to_px((px_, ccy + sgn * hh)), to_px((px_, ccy + sgn * (hh + 0.03))), 0.006 * S)
    pads_cov = []
    for (p, r) in layout["pads"]:
        pads_cov.append(_disk(S, *to_px(p), r * S))
    below_pads = img_traces * (1 - chip_cov[..., None]) + np.array([30, 30, 34], _F) * chip_cov[..., None]
    below_pads = below_pads * (1 - pin_cov[..., None]) + np.array([190, 190, 185], _F) * pin_cov[..., None]
    pad_col = np.array([208, 182, 104], _F)
    img = below_pads
    allpads = np.zeros((S, S), _F)
    for pc in pads_cov:
        np.maximum(allpads, pc, out=allpads)
    img = img * (1 - allpads[..., None]) + pad_col * board * allpads[..., None]
    silk_cov = np.zeros((S, S), _F)
    for (sx, sy) in layout["silk"]:
        for k in range(3):
            _paint_seg(silk_cov, S, to_px((sx + k * 0.025, sy)), to_px((sx + k * 0.025, sy + 0.03)), 0.004 * S)
    img = img * (1 - silk_cov[..., None]) + _F(228) * silk_cov[..., None]
    free = (1 - allpads) * (1 - chip_cov) * (1 - pin_cov) * (1 - silk_cov)
    ctx = {"face": free.astype(_F), "noise_sigma": 2.0, "pads": pads_cov, "allpads": allpads,
           "traces": trace_cov, "board_img": board_img.astype(_F), "below_pads": below_pads.astype(_F),
           "other": np.maximum(allpads, np.maximum(chip_cov, np.maximum(pin_cov, silk_cov)))}  # fmt: skip
    return img.astype(_F), ctx


# ----------------------------------------------------------------------------- defects
# Each returns (target image, alpha); the defect image is img + alpha * (target - img).
# Sizes are in image units (fractions of the side), so defects scale with image_size.
#
# A defect type has a dataset-level "style" (size, contrast, colour, orientation, and
# for objects the favoured location) drawn once per (seed, category, type) and jittered
# per instance, as a recurring production fault would be. So instances of one type look
# alike, and several of them in the training set make that type look normal to a
# nearest-neighbour detector.


class _Style:
    """Dataset-level parameters of one defect type (``tpl``) jittered per instance (``rng``).

    Values are drawn from ``tpl`` in call order, so a defect function must make its
    ``_Style`` calls in a fixed order.
    """

    def __init__(self, tpl: np.random.Generator, rng: np.random.Generator, variation: float = 1.0):
        self.tpl, self.rng, self.variation = tpl, rng, float(variation)
        self.where = rng  # where an instance goes is always its own draw

    def val(self, lo, hi, jitter=0.12):
        j = jitter * self.variation
        return float(self.tpl.uniform(lo, hi) * self.rng.uniform(1 - j, 1 + j))

    def angle(self, spread=0.2):
        return float(self.tpl.uniform(0, 2 * np.pi) + self.rng.normal(0, spread * self.variation))

    def index(self, n, p_same=0.75):
        fav = int(self.tpl.integers(n))
        return fav if self.rng.random() < 1 - (1 - p_same) * self.variation else int(self.rng.integers(n))


def _d_scratch(rng, st, S, img, ctx, delta=(5, 8), width=(0.005, 0.008), length=(0.25, 0.45), region="face"):
    dl, w, L, ang = st.val(*delta), st.val(*width), st.val(*length), st.angle(0.25)
    p = _pick_point(st.where, ctx[region])
    pts = _curve_pts(rng, S, p, _px(S, L, 6), bend=0.2, ang=ang)
    a = _stroke(S, pts, _px(S, w, 1.0)) * ctx[region]
    return img + _F(dl), a


def _d_crack(rng, st, S, img, ctx, dark=(0.62, 0.75), length=(0.2, 0.35), width=(0.005, 0.008), branch_p=0.04):
    dk, L, w, ang = st.val(*dark, jitter=0.05), st.val(*length), st.val(*width), st.angle(0.4)
    p = _pick_point(st.where, ctx["face"], margin=max(S // 10, 1))
    pts = _crack_pts(rng, S, p, _px(S, L, 6), branch_p=branch_p, ang=ang)
    a = _stroke(S, pts, _px(S, w, 1.0)) * ctx["face"]
    return img * _F(min(dk, 0.95)), a


def _d_stain(rng, st, S, img, ctx, colour=(120, 96, 70), k=(0.07, 0.11), radius=(0.045, 0.075)):
    kk, r = st.val(*k), st.val(*radius)
    col = np.asarray(colour, _F) * _F(st.val(0.95, 1.05, jitter=0.02))
    p = _pick_point(st.where, ctx["face"])
    a = _blob(rng, S, *p, _px(S, r, 2), irregular=0.25, edge=_px(S, 0.01, 1.0)) * ctx["face"]
    return img * _F(1 - kk) + col * _F(kk), a


def _d_dent(rng, st, S, img, ctx):
    R, amp, lt = _px(S, st.val(0.045, 0.07), 2), st.val(3.5, 5.5), st.angle(0.3)
    cx, cy = _pick_point(st.where, ctx["face"])
    a = _disk(S, cx, cy, R) * ctx["face"]
    u = (np.arange(S, dtype=_F)[None, :] - _F(cx)) / _F(R)
    v = (np.arange(S, dtype=_F)[:, None] - _F(cy)) / _F(R)
    ramp = (np.cos(lt) * u + np.sin(lt) * v) * _F(amp)
    return img * _F(0.96) + ramp[..., None], a


def _d_pits(rng, st, S, img, ctx):
    dk, spread, n = st.val(0.9, 0.94, jitter=0.02), _px(S, st.val(0.025, 0.04), 3), int(round(st.val(6, 10)))
    cx, cy = _pick_point(st.where, ctx["face"])
    a = np.zeros((S, S), _F)
    for _ in range(n):
        r = _px(S, rng.uniform(0.005, 0.008), 0.8)
        a = np.maximum(a, _disk(S, cx + rng.normal(0, spread), cy + rng.normal(0, spread), r))
    return img * _F(dk), a * ctx["face"]


def _d_hole_fabric(rng, st, S, img, ctx):
    r, dark = st.val(0.018, 0.028), st.val(0.68, 0.78, jitter=0.04)
    p = _pick_point(st.where, ctx["face"])
    a = _blob(rng, S, *p, _px(S, r, 1.5), irregular=0.35, edge=1.0)
    return img * _F(dark), a


def _d_thread(rng, st, S, img, ctx):
    T = ctx["T"] * S
    L, dl, horiz = st.val(0.3, 0.5), st.val(16, 22), st.index(2, p_same=0.85)
    cx, cy = _pick_point(st.where, ctx["face"])
    Lp = _px(S, L, 8)
    wob = rng.uniform(-1.0, 1.0)
    t = np.linspace(0, Lp, int(2 * Lp) + 2)
    if horiz:
        pts = np.stack([cx + t, cy + wob * np.sin(t / Lp * np.pi)], 1)
    else:
        pts = np.stack([cx + wob * np.sin(t / Lp * np.pi), cy + t], 1)
    a = _stroke(S, pts, max(T * 0.6, 1.0))
    return img + _F(dl), a


def _d_fiber(rng, st, S, img, ctx):
    L, dk, ang = st.val(0.15, 0.25), st.val(0.8, 0.86, jitter=0.03), st.angle(0.5)
    p = _pick_point(st.where, ctx["face"])
    pts = _curve_pts(rng, S, p, _px(S, L, 5), bend=0.45, ang=ang)
    a = _stroke(S, pts, _px(S, 0.006, 1.0))
    return img * _F(dk), a


def _d_hole_wood(rng, st, S, img, ctx):
    r, dk = _px(S, st.val(0.012, 0.02), 1.5), st.val(0.45, 0.6, jitter=0.05)
    cx, cy = _pick_point(st.where, ctx["face"])
    a = _disk(S, cx, cy, r + _px(S, 0.006, 1.0))
    core = _disk(S, cx, cy, r)
    return img * (1 - core[..., None] * _F(1 - dk)) * _F(0.85), a


def _d_oil(rng, st, S, img, ctx):
    r, dk = st.val(0.05, 0.08), st.val(0.92, 0.95, jitter=0.01)
    p = _pick_point(st.where, ctx["face"])
    a = _blob(rng, S, *p, _px(S, r, 3), irregular=0.25, edge=_px(S, 0.015, 1.5))
    return img * _F(dk) + np.array([0, 1, 4], _F), a


def _d_gray_stroke(rng, st, S, img, ctx):
    L, w, ang = st.val(0.2, 0.35), st.val(0.02, 0.03), st.angle(0.3)
    p = _pick_point(st.where, ctx["face"])
    pts = _curve_pts(rng, S, p, _px(S, L, 6), bend=0.2, ang=ang)
    a = _stroke(S, pts, _px(S, w, 2)) * _F(0.6)
    return img * _F(0.82) + np.array([128, 128, 132], _F) * _F(0.18), a


def _d_rough(rng, st, S, img, ctx):
    r, amp = st.val(0.05, 0.08), st.val(22, 30)
    p = _pick_point(st.where, ctx["face"])
    a = _blob(rng, S, *p, _px(S, r, 3), irregular=0.3, edge=_px(S, 0.01, 1.0))
    tex = ndimage.gaussian_filter(rng.standard_normal((S, S), dtype=_F), 0.8) * _F(amp)
    return img * _F(0.97) + tex[..., None], a


def _d_chip(rng, st, S, img, ctx):
    cx, cy, th, R = ctx["geo"]
    k, r = st.index(6), st.val(0.03, 0.045)
    ang = th + np.pi / 6 + k * np.pi / 3 + rng.uniform(-0.15, 0.15)  # at a corner
    rr = R / np.cos(np.pi / 6) * 0.98
    px_ = ((cx + rr * np.cos(ang)) + 0.5) * S - 0.5
    py_ = ((cy + rr * np.sin(ang)) + 0.5) * S - 0.5
    a = _blob(rng, S, px_, py_, _px(S, r, 2), irregular=0.2, edge=1.0) * ctx["body"]
    return ctx["bg"], a


def _d_particle(rng, st, S, img, ctx, region="face", radius=(0.018, 0.03), strength=0.85):
    r, light = st.val(*radius), st.index(2, p_same=0.9)
    col = np.array([226, 220, 205], _F) if light else np.array([20, 18, 16], _F)
    p = _pick_point(st.where, ctx[region])
    a = _blob(rng, S, *p, _px(S, r, 1.5), irregular=0.4, edge=1.0)
    return np.zeros_like(img) + col, a * _F(strength)


def _d_squeeze(rng, st, S, img, ctx):
    cx, cy, th, L, r = ctx["geo"]
    side, pos, rad = st.index(2), st.val(-0.8, 0.8, jitter=0.0), st.val(0.03, 0.045)
    t = float(np.clip(pos + st.where.normal(0, 0.25), -1, 1)) * L
    x, y = t, (1.0 if side else -1.0) * (r + 0.012)
    px_ = ((cx + np.cos(th) * x - np.sin(th) * y) + 0.5) * S - 0.5
    py_ = ((cy + np.sin(th) * x + np.cos(th) * y) + 0.5) * S - 0.5
    a = _blob(rng, S, px_, py_, _px(S, rad, 2), irregular=0.15, edge=1.0) * ctx["body"]
    return ctx["bg"], a


def _d_imprint(rng, st, S, img, ctx):
    mark = st.index(len(ctx["marks"]), p_same=0.8)
    if rng.random() < 0.75:  # a missing print mark (mostly the same one)
        a = np.clip(ndimage.maximum_filter(ctx["marks"][mark], 3), 0, 1)
        return ctx["plain"], a * ctx["body"]
    cx, cy, th, L, r = ctx["geo"]  # an ink smudge next to the print
    x, y = rng.uniform(0.05, 0.22), rng.uniform(-0.06, 0.06)
    px_ = ((cx + np.cos(th) * x - np.sin(th) * y) + 0.5) * S - 0.5
    py_ = ((cy + np.sin(th) * x + np.cos(th) * y) + 0.5) * S - 0.5
    a = _blob(rng, S, px_, py_, _px(S, rng.uniform(0.015, 0.022), 1.5), irregular=0.4, edge=1.0) * ctx["face"]
    return img * _F(0.45) + np.array([20, 22, 30], _F), a * _F(0.85)


def _d_poke(rng, st, S, img, ctx):
    r, dk = _px(S, st.val(0.009, 0.015), 1.2), st.val(0.75, 0.83, jitter=0.03)
    cx, cy = _pick_point(st.where, ctx["face"])
    a = _disk(S, cx, cy, r + _px(S, 0.004, 0.8)) * ctx["face"]
    return img * _F(dk), a


def _d_missing_pad(rng, st, S, img, ctx):
    pads = ctx["pads"]
    ok = [i for i in range(len(pads)) if pads[i].max() > 0.9]
    i = ok[st.index(len(ok), p_same=0.7)]
    return ctx["below_pads"], pads[i]


def _d_solder_bridge(rng, st, S, img, ctx):
    pads = [p for p in ctx["pads"] if p.max() > 0.9]
    m = pads[st.index(len(pads), p_same=0.6)]
    ang, L, w = st.angle(0.3), _px(S, st.val(0.045, 0.065), 3), _px(S, st.val(0.006, 0.009), 1.0)
    ys, xs = np.nonzero(m > 0.5)
    cx, cy = xs.mean(), ys.mean()
    cov = np.zeros((S, S), _F)
    _paint_seg(cov, S, (cx, cy), (cx + L * np.cos(ang), cy + L * np.sin(ang)), w)
    a = np.clip(cov - m, 0, 1) * _F(0.45)  # the solder on top of the pad itself does not change it
    return np.zeros_like(img) + np.array([200, 200, 196], _F), a


def _d_broken_trace(rng, st, S, img, ctx):
    r = _px(S, st.val(0.014, 0.02), 1.5)
    tr = ctx["traces"] * (1 - ctx["other"])
    ys, xs = np.nonzero(tr > 0.95 * tr.max())
    i = st.where.integers(len(xs))
    a = _disk(S, float(xs[i]), float(ys[i]), r) * tr
    return ctx["board_img"], a


def _with(fn, **kw):
    return lambda rng, st, S, img, ctx: fn(rng, st, S, img, ctx, **kw)


_DEFECTS = {
    "metal": {"scratch": _d_scratch, "dent": _d_dent, "stain": _d_stain, "pits": _d_pits},
    "fabric": {"hole": _d_hole_fabric, "thread": _d_thread, "stain": _with(_d_stain, colour=(150, 128, 70), k=(0.14, 0.2)),
               "fiber": _d_fiber},
    "wood": {"scratch": _with(_d_scratch, delta=(20, 28)), "crack": _d_crack, "hole": _d_hole_wood,
             "stain": _with(_d_stain, colour=(95, 85, 80), k=(0.22, 0.3), radius=(0.05, 0.08))},
    "tile": {"crack": _with(_d_crack, dark=(0.85, 0.9), branch_p=0.025), "oil": _d_oil,
             "gray_stroke": _d_gray_stroke, "rough": _d_rough},
    "nut": {"scratch": _with(_d_scratch, delta=(30, 42), length=(0.14, 0.22), width=(0.007, 0.01)),
            "chip": _d_chip, "rust": _with(_d_stain, colour=(150, 88, 48), k=(0.18, 0.26), radius=(0.03, 0.05)),
            "contamination": _with(_d_particle, region="body", radius=(0.015, 0.025), strength=0.3)},
    "capsule": {"crack": _with(_d_crack, dark=(0.7, 0.8), length=(0.07, 0.12), width=(0.005, 0.008)),
                "squeeze": _d_squeeze, "faulty_imprint": _d_imprint, "poke": _d_poke,
                "color": _with(_d_stain, colour=(150, 110, 60), k=(0.15, 0.22), radius=(0.025, 0.04))},
    "pcb": {"missing_pad": _d_missing_pad, "solder_bridge": _d_solder_bridge, "broken_trace": _d_broken_trace,
            "scratch": _with(_d_scratch, delta=(4, 6), length=(0.15, 0.3)),
            "contamination": _with(_d_particle, radius=(0.015, 0.025), strength=0.25)},
}  # fmt: skip
assert all(tuple(_DEFECTS[c]) == DEFECT_TYPES[c] for c in SYNTHETIC_CATEGORIES)


# ----------------------------------------------------------------------------- one image
def _cat_index(category: str) -> int:
    if category not in SYNTHETIC_CATEGORIES:
        raise ValueError(f"synthetic: unknown category {category!r}; choose from {SYNTHETIC_CATEGORIES}")
    return SYNTHETIC_CATEGORIES.index(category)


def _render_base(category: str, rng, S: int, seed: int):
    if category == "pcb":
        return _render_pcb(rng, S, _pcb_layout((int(seed), _cat_index("pcb"), 99)))
    return {
        "metal": _render_metal,
        "fabric": _render_fabric,
        "wood": _render_wood,
        "tile": _render_tile,
        "nut": _render_nut,
        "capsule": _render_capsule,
    }[category](rng, S)


def render_synthetic(
    category: str,
    image_size: int = 256,
    seed: int = 0,
    index: int = 0,
    defect: str | None = None,
    split: str = "train",
    variation: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image without writing it (what :func:`generate_synthetic` writes).

    Args:
        category: One of :data:`SYNTHETIC_CATEGORIES`.
        image_size: Side length in pixels (>= 32).
        seed: Dataset seed.
        index: Image index within its split.
        defect: ``None`` for a good image, else one of ``DEFECT_TYPES[category]``.
        split: ``"train"`` or ``"test"`` (good images; defects are always test).
        variation: How much instances of one defect type differ, in [0, 1]: their
            size, contrast, orientation and favoured location are the type's style
            jittered by ``variation`` times the default spread; at 0 every instance also
            has the same shape, only its position is its own (one recurring machine
            fault). 1 (the default) gives the files of earlier versions.

    Returns:
        ``(image, mask, clean)``: ``(S, S, 3)`` uint8 image, ``(S, S)`` bool mask (all
        False for good images) and ``(S, S, 3)`` uint8 the same image without the defect
        (equal to ``image`` for good images).
    """
    S = int(image_size)
    if S < 32:
        raise ValueError(f"render_synthetic: image_size must be >= 32, got {image_size}")
    if not 0 <= variation <= 1:
        raise ValueError(f"render_synthetic: variation must be in [0, 1], got {variation}")
    ci = _cat_index(category)
    if defect is None:
        code = {"train": 0, "test": 1}[split]
    else:
        if defect not in DEFECT_TYPES[category]:
            raise ValueError(f"render_synthetic: {category!r} has no defect {defect!r}; {DEFECT_TYPES[category]}")
        code = 2 + DEFECT_TYPES[category].index(defect)
    rng = np.random.default_rng([int(seed), ci, code, int(index)])
    img, ctx = _render_base(category, rng, S, seed)
    noise = _sensor_noise(rng, S, ctx["noise_sigma"])
    clean = np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)
    if defect is None:
        return clean, np.zeros((S, S), bool), clean
    fn = _DEFECTS[category][defect]
    style_seed = [int(seed), ci, 1000 + DEFECT_TYPES[category].index(defect)]
    # variation 0: every instance of the type also has the same shape (one recurring fault);
    # only its position (st.where) is the instance's own.
    shape_rng = np.random.default_rng(style_seed + [1]) if variation == 0 else rng
    for _ in range(20):
        st = _Style(np.random.default_rng(style_seed), rng, variation)  # same dataset-level style every time
        target, alpha = fn(shape_rng, st, S, img, ctx)
        a = np.where(alpha > _ALPHA_MIN, alpha, 0).astype(_F)
        out = img + a[..., None] * (np.asarray(target, _F) - img)
        q = np.clip(np.rint(out + noise), 0, 255).astype(np.uint8)
        mask = a > 0
        changed = np.any(q != clean, axis=2)
        if mask.sum() >= 3 and changed[mask].mean() > 0.5:
            return q, mask, clean
    raise RuntimeError(f"render_synthetic: could not place a visible {defect!r} on {category!r} (seed {seed})")


# ----------------------------------------------------------------------------- writing
def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _jobs(category, n_train, n_test_good, n_test_defect):
    jobs = [("train", "good", i, None) for i in range(n_train)]
    jobs += [("test", "good", i, None) for i in range(n_test_good)]
    types = DEFECT_TYPES[category]
    counts = dict.fromkeys(types, 0)
    for k in range(n_test_defect):
        t = types[k % len(types)]
        jobs.append(("test", t, counts[t], t))
        counts[t] += 1
    return jobs


def generate_synthetic(
    root: str | Path,
    categories=None,
    n_train: int = 80,
    n_test_good: int = 24,
    n_test_defect: int = 56,
    image_size: int = 256,
    seed: int = 0,
    *,
    variation: float = 1.0,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Write the synthetic dataset in the MVTec AD layout.

    The defaults (80 train, 24 good + 56 defective test images per category) leave 24
    test defects after moving 40 % x 80 = 32 defects into training (no-overlap).

    Args:
        root: Output folder (created).
        categories: Subset of :data:`SYNTHETIC_CATEGORIES` (default: all seven).
        n_train: Good training images per category.
        n_test_good: Good test images per category.
        n_test_defect: Defective test images per category, spread evenly over its types.
        image_size: Side length in pixels (>= 32).
        seed: Seed; the same arguments give byte-identical files.
        variation: Spread between instances of one defect type, in [0, 1] (see
            :func:`render_synthetic`).
        overwrite: Replace existing category folders. Otherwise a category folder that
            already holds this exact generation (per ``synthetic.json``) is kept as it is,
            and any other existing non-empty folder raises ``FileExistsError``.
        workers: Threads (default: CPU count, at most 8).
        progress: Show a tqdm progress bar.

    Returns:
        ``Path(root)``, ready for :func:`meds.data.load_mvtec`.
    """
    cats = tuple(SYNTHETIC_CATEGORIES if categories is None else ([categories] if isinstance(categories, str)
                                                                    else categories))  # fmt: skip
    for c in cats:
        _cat_index(c)
    if len(set(cats)) != len(cats):
        raise ValueError(f"generate_synthetic: duplicate categories in {cats}")
    for name, val, lo in (("n_train", n_train, 1), ("n_test_good", n_test_good, 0), ("n_test_defect", n_test_defect, 0)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
            raise ValueError(f"generate_synthetic: {name} must be an int >= {lo}, got {val!r}")
    if int(image_size) < 32:
        raise ValueError(f"generate_synthetic: image_size must be >= 32, got {image_size}")
    if not 0 <= variation <= 1:
        raise ValueError(f"generate_synthetic: variation must be in [0, 1], got {variation}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    params = {"format_version": _FORMAT_VERSION, "image_size": int(image_size), "seed": int(seed),
              "n_train": int(n_train), "n_test_good": int(n_test_good), "n_test_defect": int(n_test_defect),
              "variation": float(variation)}  # fmt: skip
    meta_path = root / "synthetic.json"
    previous = {}
    if meta_path.is_file():
        try:
            previous = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = {}
    prev_cats = set(previous.get("categories", [])) if previous.get("params") == params else set()

    todo = []
    for c in cats:
        cdir = root / c
        if cdir.exists() and any(cdir.iterdir()):
            if overwrite:
                shutil.rmtree(cdir)
            elif c in prev_cats:
                continue  # identical generation already there
            else:
                raise FileExistsError(
                    f"generate_synthetic: {str(cdir)!r} exists and is not empty (pass overwrite=True to replace it)"
                )
        todo.append(c)

    jobs = []
    for c in todo:
        for split, folder, i, defect in _jobs(c, int(n_train), int(n_test_good), int(n_test_defect)):
            (root / c / split / folder).mkdir(parents=True, exist_ok=True)
            if defect is not None:
                (root / c / "ground_truth" / folder).mkdir(parents=True, exist_ok=True)
            jobs.append((c, split, folder, i, defect))

    def work(job):
        c, split, folder, i, defect = job
        img, mask, _ = render_synthetic(c, int(image_size), int(seed), i, defect, split, variation)
        _save_png(img, root / c / split / folder / f"{i:03d}.png")
        if defect is not None:
            _save_png(mask.astype(np.uint8) * 255, root / c / "ground_truth" / folder / f"{i:03d}_mask.png")

    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="synthetic data", unit="img")
    if n_workers <= 1:
        for j in jobs:
            work(j)
            if bar is not None:
                bar.update(1)
    else:
        with ThreadPoolExecutor(max_workers=int(n_workers)) as ex:
            for _ in ex.map(work, jobs):
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()

    all_cats = [c for c in SYNTHETIC_CATEGORIES if c in prev_cats or c in cats]
    meta = {"generator": "meds.data.synthetic", "params": params, "categories": all_cats,
            "defect_types": {c: list(DEFECT_TYPES[c]) for c in all_cats}}  # fmt: skip
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return root
