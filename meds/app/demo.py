"""``meds demo``: the main job end to end on the embedded defaults, offline.

Generates the synthetic industrial dataset, contaminates its training sets (20% by
default, no-overlap), fits MeDS and the plain full-memory nearest-neighbour baseline on the
same features, prints both side by side, and writes the audit report of the training
images and a few heat maps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

#: Two contrasting categories (a texture and an object) keep the demo near five minutes.
DEMO_CATEGORIES = ("fabric", "nut")
#: The benchmark's kind of data at a smaller scale (benchmarks/noise_robustness.py uses 160
#: normals): a training set of realistic size (with 50 images the network is undertrained on
#: textures and loses to nearest neighbour) and recurring defect types, the case where
#: contamination hurts. ``n_test_defect`` counts the defective test images left after the
#: injected ones are taken out (no-overlap), whatever the noise ratio.
DEMO_SIZES = dict(n_train=120, n_test_good=24, n_test_defect=24, image_size=256, variation=0.25)


def _pick_categories(requested: Optional[Sequence[str]]) -> list[str]:
    from ..data.synthetic import SYNTHETIC_CATEGORIES

    if requested:
        unknown = [c for c in requested if c not in SYNTHETIC_CATEGORIES]
        if unknown:
            raise ValueError(f"meds demo: unknown synthetic category {unknown[0]!r}; "
                             f"available: {', '.join(SYNTHETIC_CATEGORIES)}")
        return list(requested)
    chosen = [c for c in DEMO_CATEGORIES if c in SYNTHETIC_CATEGORIES]
    return chosen or list(SYNTHETIC_CATEGORIES[:2])


def run_demo(
    out: Path,
    *,
    noise: float = 0.2,
    categories: Optional[Sequence[str]] = None,
    device: str = "auto",
    seed: int = 0,
    verbose: bool = True,
    sizes: Optional[dict] = None,
    meds_kwargs: Optional[dict] = None,
) -> list[dict]:
    """Run the demo into folder ``out`` and return the metric rows it printed.

    ``sizes`` are :func:`~meds.data.generate_synthetic` options (default :data:`DEMO_SIZES`);
    the defects to inject at ``noise`` are generated on top of ``n_test_defect``.
    """
    from .report import write_audit
    from ..data import generate_synthetic, load_dataset
    from ..data.noise import injected_count
    from ..evaluation.experiment import ExperimentConfig, run_setting
    from .report import write_prediction_outputs

    started = time.perf_counter()
    out = Path(out)
    categories = _pick_categories(categories)
    data_root = out / "data"
    print(f"[1/4] generating the synthetic dataset ({', '.join(categories)}) in {data_root}", flush=True)
    sizes = dict(sizes or DEMO_SIZES)
    sizes["n_test_defect"] += injected_count(noise, sizes["n_train"])
    generate_synthetic(data_root, categories=categories, seed=seed, **sizes)

    config = ExperimentConfig(noise_ratios=(noise,), seeds=(seed,), methods=("nearest_neighbour", "meds"),
                              model_kwargs={"device": device, "verbose": verbose}, meds_kwargs=meds_kwargs or {})
    rows, reports, heatmaps = [], [], []

    def on_fitted(method, detector, split):
        if method != "meds":
            return
        print(f"      writing the audit report of {split.name}", flush=True)
        settings = {"category": split.name, "noise": str(split.noise), "training images": len(split.train),
                    "injected defects": split.n_noise}
        written = write_audit(detector, split, out / "audit" / split.name, settings)
        reports.append(written.get("html", out / "audit" / split.name / "index.html"))
        defects = [s for s in split.test if s.label == 1][:3] + [s for s in split.test if s.label == 0][:1]
        paths = [s.path for s in defects]
        pred = detector.predict(paths)
        target = out / "heatmaps" / split.name
        write_prediction_outputs(paths, pred.scores, pred.labels, pred.maps, None, target, pred.threshold)
        heatmaps.append(target)

    for i, category in enumerate(categories):
        data = load_dataset(data_root, category=category, format="mvtec")
        print(f"[{i + 2}/{len(categories) + 2}] {category}: contaminating ({100 * noise:g}% no-overlap), "
              f"fitting the nearest-neighbour baseline and MeDS", flush=True)
        rows += run_setting(data, noise, seed, config, verbose=verbose, on_fitted=on_fitted)

    print(f"[{len(categories) + 2}/{len(categories) + 2}] results "
          f"(noise {100 * noise:g}% no-overlap, seed {seed}; test metrics x100):\n", flush=True)
    print(_side_by_side(rows))
    print("\naudit reports (training images ranked by suspicion):")
    for path in reports:
        print(f"  {path}")
    print("heat maps:")
    for path in heatmaps:
        print(f"  {path}")
    print(f"\ndone in {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def _side_by_side(rows: list[dict]) -> str:
    from ..evaluation.experiment import METHOD_LABELS

    columns = [("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"),
               ("contamination_auroc", "finds injected defects (AUROC)")]
    header = f"{'category':<12} {'method':<32} " + " ".join(f"{title:>14}" for _, title in columns)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for key, title in columns:
            value = row[key]
            cells.append(f"{100 * value:>{max(14, len(title))}.1f}" if np.isfinite(value) else f"{'-':>{max(14, len(title))}}")
        lines.append(f"{row['category']:<12} {METHOD_LABELS[row['method']]:<32} " + " ".join(cells))
    return "\n".join(lines)
