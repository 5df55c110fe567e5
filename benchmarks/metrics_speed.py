"""Time meds.evaluation.metrics on a realistic test set: 100 images of 256x256 (6.5 M pixels).

    python benchmarks/metrics_speed.py [--images 100] [--size 256] [--repeat 3] [--sklearn]

Prints one row per metric: best-of-``repeat`` wall time in seconds. With ``--sklearn`` (needs
scikit-learn) it also times ``roc_auc_score`` / ``average_precision_score`` on the same pixels
and prints the absolute difference of the values.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

try:
    from meds.evaluation import metrics as M
except ImportError:  # running from a source checkout without installing
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from meds.evaluation import metrics as M


def make_data(n_images: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_images // 2):  # half the images defective, 1-3 blob regions each
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            r = rng.integers(size // 40 + 1, size // 8)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = rng.random(masks.shape, dtype=np.float32) * 0.6 + masks * rng.random((n_images, 1, 1), dtype=np.float32)
    labels = masks.reshape(n_images, -1).any(1)
    scores = maps.reshape(n_images, -1).mean(1) * 20 + rng.normal(size=n_images)  # imperfect
    return labels, scores, masks, maps


def best_time(fn, repeat):
    best, value = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t)
    return best, value


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sklearn", action="store_true", help="also time scikit-learn for comparison")
    args = ap.parse_args(argv)

    labels, scores, masks, maps = make_data(args.images, args.size)
    n_pix = masks.size
    print(f"{args.images} images of {args.size}x{args.size} = {n_pix / 1e6:.2f} M pixels, "
          f"{masks.any((1, 2)).sum()} defective images, best of {args.repeat}")
    rows = [
        ("image_auroc", lambda: M.image_auroc(labels, scores)),
        ("image_ap", lambda: M.image_ap(labels, scores)),
        ("f1_max", lambda: M.f1_max(labels, scores)),
        ("pixel_auroc", lambda: M.pixel_auroc(masks, maps)),
        ("pixel_ap", lambda: M.pixel_ap(masks, maps)),
        ("aupro (fpr<=0.3)", lambda: M.aupro(masks, maps)),
        ("aupro, float64 maps", lambda: M.aupro(masks, maps.astype(np.float64) + 1e-12)),
        ("evaluate (all 7)", lambda: M.evaluate(labels, scores, masks, maps)),
    ]
    if args.sklearn:
        from sklearn.metrics import average_precision_score, roc_auc_score

        y, s = masks.ravel(), maps.ravel()
        ref = {
            "pixel_auroc": ("sklearn roc_auc_score", lambda: roc_auc_score(y, s)),
            "pixel_ap": ("sklearn average_precision", lambda: average_precision_score(y, s)),
        }
    print(f"{'metric':<28}{'seconds':>10}{'Mpix/s':>10}   value")
    for name, fn in rows:
        t, v = best_time(fn, args.repeat)
        rate = f"{n_pix / t / 1e6:10.1f}" if name.startswith(("pixel", "aupro", "evaluate")) else f"{'':>10}"
        shown = v if isinstance(v, dict) else f"{v:.6f}"
        if isinstance(v, dict):
            shown = ", ".join(f"{k}={x:.4f}" for k, x in v.items())
        print(f"{name:<28}{t:10.3f}{rate}   {shown}")
        if args.sklearn and name in ref:
            rname, rfn = ref[name]
            rt, rv = best_time(rfn, 1)
            print(f"{'  ' + rname:<28}{rt:10.3f}{n_pix / rt / 1e6:10.1f}   {rv:.6f} (|diff| = {abs(rv - v):.1e})")


if __name__ == "__main__":
    main()
