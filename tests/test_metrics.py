"""meds.evaluation.metrics against scikit-learn and plain loop references."""

import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from meds.evaluation import metrics as M
from meds.evaluation.metrics import (
    MetricWarning,
    aupro,
    evaluate,
    f1_max,
    image_ap,
    image_auroc,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    pro_curve,
)


def _tied_scores(rng, n, dtype):
    """Scores with many ties, negative values and a -0.0 next to +0.0."""
    s = np.round(rng.normal(size=n) * 3).astype(dtype)
    s[: n // 10] = 0.0
    s[n // 10 : n // 5] = -0.0
    return s


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.float16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn(dtype, seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.random(n) < 0.35
    s = _tied_scores(rng, n, dtype) + (y * rng.integers(0, 3, n)).astype(dtype)
    assert len(np.unique(s)) < n // 4  # really tied
    s64 = s.astype(np.float64)
    assert image_auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s64), abs=1e-12)
    assert image_ap(y.astype(int), s) == pytest.approx(skm.average_precision_score(y, s64), abs=1e-12)
    # continuous scores, float64 that float32 cannot represent (argsort path)
    s2 = rng.normal(size=n) + y * 0.7 + 1e-12 * rng.random(n)
    assert image_auroc(y, s2) == pytest.approx(skm.roc_auc_score(y, s2), abs=1e-12)
    assert image_ap(y, s2) == pytest.approx(skm.average_precision_score(y, s2), abs=1e-12)


def test_image_metrics_perfect_and_reversed():
    y = np.array([0, 0, 1, 1])
    assert image_auroc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert image_auroc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert image_auroc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert image_ap(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert image_ap(y, [0.1, 0.2, 0.8, 0.9]) == 1.0


def _f1_bruteforce(y, s):
    best, best_t = 0.0, None
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & y)
        fp = np.sum(pred & ~y)
        fn = np.sum(~pred & y)
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best or (f1 == best and best_t is not None and t > best_t):
            best, best_t = f1, t
    return best, best_t


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_f1_max_matches_bruteforce(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(size=200) * 4) + y * 2
    f1, thr = f1_max(y, s, return_threshold=True)
    ref, ref_t = _f1_bruteforce(y, s)
    assert f1 == pytest.approx(ref, abs=1e-12)
    assert thr == ref_t
    # also equals the max over scikit-learn's PR curve
    p, r, _ = skm.precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        assert f1 == pytest.approx(np.nanmax(2 * p * r / (p + r)), abs=1e-12)


def test_degenerate_inputs_warn_nan():
    with pytest.warns(MetricWarning, match="one class"):
        assert np.isnan(image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    with pytest.warns(MetricWarning, match="no positive"):
        assert np.isnan(image_ap([0, 0], [0.1, 0.2]))
    with pytest.warns(MetricWarning):
        assert np.isnan(f1_max([0, 0], [0.1, 0.2]))
    # all positive: AP is defined
    assert image_ap([1, 1], [0.1, 0.2]) == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="labels"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="length"):
        image_ap([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), fpr_limit=0)


# ----------------------------------------------------------------------------------- pixels


def _flood_regions(mask):
    """8-connected components by an explicit flood fill (independent of scipy)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                reg = np.zeros_like(mask, dtype=bool)
                stack = [(i, j)]
                seen[i, j] = True
                while stack:
                    a, b = stack.pop()
                    reg[a, b] = True
                    for da in (-1, 0, 1):
                        for db in (-1, 0, 1):
                            c, d = a + da, b + db
                            if 0 <= c < h and 0 <= d < w and mask[c, d] and not seen[c, d]:
                                seen[c, d] = True
                                stack.append((c, d))
                regions.append(reg)
    return regions


def _aupro_reference(masks, maps, limit=0.3):
    """Plain AU-PRO: loop over thresholds, per-region overlap, trapezoid to the limit with
    linear interpolation at the limit, normalised by the limit."""
    masks = [np.asarray(m) > 0 for m in masks]
    maps = [np.asarray(a, dtype=np.float64) for a in maps]
    regions = [(i, r) for i, m in enumerate(masks) for r in _flood_regions(m)]
    n_ok = sum(int((~m).sum()) for m in masks)
    thresholds = sorted({float(v) for a in maps for v in a.ravel()}, reverse=True)
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        fp = sum(int(((a >= t) & ~m).sum()) for a, m in zip(maps, masks))
        overlaps = [((maps[i] >= t) & r).sum() / r.sum() for i, r in regions]
        fprs.append(fp / n_ok)
        pros.append(float(np.mean(overlaps)))
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def _synthetic_pixels(seed, n=5, h=24, w=24, levels=40):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n - 1):  # last image defect-free
        for _ in range(rng.integers(1, 3)):
            r, c = rng.integers(0, h - 4, 2)
            masks[i, r : r + rng.integers(2, 8), c : c + rng.integers(2, 8)] = 255
    maps = np.round(rng.random((n, h, w)) * levels) / levels + (masks > 0) * rng.random((n, 1, 1)) * 0.5
    return masks, maps.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_reference(seed):
    masks, maps = _synthetic_pixels(seed)
    for limit in (0.3, 0.05, 1.0):
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(_aupro_reference(masks, maps, limit), abs=1e-9)
    # float64 maps that float32 cannot hold take the argsort path
    maps64 = maps.astype(np.float64) + 1e-13 * np.arange(maps.size).reshape(maps.shape)
    assert aupro(masks, maps64) == pytest.approx(_aupro_reference(masks, maps64), abs=1e-9)


def test_aupro_images_of_different_sizes():
    masks, maps = _synthetic_pixels(5, n=3)
    m_list = [masks[0], masks[1][:20, :13], masks[2][:7]]
    a_list = [maps[0], maps[1][:20, :13], maps[2][:7]]
    assert aupro(m_list, a_list) == pytest.approx(_aupro_reference(m_list, a_list), abs=1e-9)
    flat_m = np.concatenate([m.ravel() for m in m_list]) > 0
    flat_a = np.concatenate([a.ravel() for a in a_list])
    assert pixel_auroc(m_list, a_list) == pytest.approx(skm.roc_auc_score(flat_m, flat_a), abs=1e-12)


def test_aupro_uses_8_connectivity():
    # a pixel touching a 2x2 block only diagonally: one region of 5 pixels under
    # 8-connectivity (PRO 1/5 when only the single pixel is found), two regions under
    # 4-connectivity (PRO (1 + 0) / 2)
    mask = np.zeros((1, 6, 6), dtype=bool)
    mask[0, 1, 1] = True
    mask[0, 2:4, 2:4] = True
    amap = np.zeros((1, 6, 6))
    amap[0, 1, 1] = 1.0  # no false positive
    # curve: (0, 0) -> (0, 0.2) -> (1, 1); at FPR 0.3 PRO = 0.2 + 0.8 * 0.3
    expected_8 = (0.2 + (0.2 + 0.8 * 0.3)) / 2
    assert aupro(mask, amap) == pytest.approx(expected_8, abs=1e-12)
    assert aupro(mask, amap) == pytest.approx(_aupro_reference(mask, amap), abs=1e-12)
    # regions never connect across images
    two = np.concatenate([mask, mask])
    assert aupro(two, np.concatenate([amap, amap])) == pytest.approx(expected_8, abs=1e-12)
    fpr, pro = pro_curve(mask, amap)
    assert fpr[0] == 0 and pro[0] == 0 and pro[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_metrics_match_sklearn(seed):
    masks, maps = _synthetic_pixels(seed, n=6, h=32, w=32, levels=20)
    y, s = masks.ravel() > 0, maps.ravel().astype(np.float64)
    assert pixel_auroc(masks, maps) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert pixel_f1_max(masks, maps) == pytest.approx(_f1_bruteforce(y, s)[0], abs=1e-12)


def test_evaluate_and_torch_inputs():
    rng = np.random.default_rng(0)
    masks, maps = _synthetic_pixels(3, n=8, h=16, w=16)
    labels = masks.reshape(8, -1).max(1) > 0
    scores = maps.reshape(8, -1).max(1)
    res = evaluate(torch.from_numpy(labels), torch.from_numpy(scores), torch.from_numpy(masks), torch.from_numpy(maps))
    assert set(res) == {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}
    assert res["image_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert res["image_ap"] == pytest.approx(skm.average_precision_score(labels, scores), abs=1e-12)
    assert res["pixel_auroc"] == pytest.approx(skm.roc_auc_score(masks.ravel() > 0, maps.ravel()), abs=1e-12)
    assert res["aupro"] == pytest.approx(_aupro_reference(masks, maps), abs=1e-9)
    # image only
    assert set(evaluate(labels, scores)) == {"image_auroc", "image_ap", "image_f1_max"}
    # masks without any defect: pixel metrics nan, one warning, no exception
    with pytest.warns(MetricWarning, match="no defect"):
        res = evaluate(labels, scores, np.zeros_like(masks), maps)
    assert np.isnan(res["aupro"]) and np.isnan(res["pixel_auroc"])
    assert res["image_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    with pytest.raises(ValueError, match="together"):
        evaluate(labels, scores, masks=masks)
    del rng


def test_pixel_metrics_speed_smoke():
    """100 maps of 64x64 (410k pixels) in well under a second (the benchmark does 256x256)."""
    import time

    rng = np.random.default_rng(0)
    masks = np.zeros((100, 64, 64), dtype=bool)
    masks[::2, 10:30, 20:40] = True
    maps = rng.random(masks.shape, dtype=np.float32) + masks * 0.3
    t = time.perf_counter()
    res = evaluate(np.arange(100) % 2 == 0, rng.random(100), masks, maps)
    assert time.perf_counter() - t < 5.0
    assert 0.5 < res["pixel_auroc"] <= 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.aupro(masks, maps)  # no warnings on well-formed input
