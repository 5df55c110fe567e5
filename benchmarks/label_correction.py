"""Label-correction benchmark: how much does a person inspecting the top of the ranking help?

The paper's "active label correction": on the synthetic set at 20 % and 40 % noise, MeDS
ranks the training images (an unlabelled fit); a simulated person inspects the ``k`` most
suspicious (k = 0, 10, 25, 50 per category) and labels each truthfully (``defective`` for
an injected defect, ``good`` otherwise); MeDS is refitted with those labels
(``MeDS.fit_features(labels=...)``). Reported per k: test image AUROC (no-overlap and
overlap protocols, one fit serving both), the defects left in the trusted set
(``trusted_``) and in stage 3's selection (``selected_``), for MeDS and for the full-memory
nearest neighbour (PatchCore without coreset) fitted on the cleaned set (the trusted
images only; ``k = 0`` also shows it on all images, the uncleaned baseline).

    python benchmarks/label_correction.py --quick     # 2 categories, one seed, small sizes
    python benchmarks/label_correction.py             # 6 categories, seeds 0,1,2, full sizes
    python benchmarks/label_correction.py --report bench_out/labels/results.json

Encoder features of the training and test images are computed once per split and shared
by every fit. Rows are saved as JSON after every fit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meds.atomic_io import load_json, save_json
from meds.data import contaminate, generate_synthetic, load_dataset
from meds.data.synthetic import SYNTHETIC_CATEGORIES
from meds.evaluation.experiment import share_features
from meds.evaluation.metrics import image_auroc
from meds.method.baselines import NearestNeighbourDetector
from meds.method.model import MeDS
from meds.method.network import NetworkConfig
from meds.method.train import TrainConfig

KS = (0, 10, 25, 50)
NOISE = (0.2, 0.4)
PROTOCOLS = ("no-overlap", "overlap")
VARIATION = 0.25
#: The noise-robustness benchmark's sizes and model (benchmarks/noise_robustness.py);
#: ``steps=None``: the default schedule, which scales with the training set.
FULL = dict(categories=SYNTHETIC_CATEGORIES, seeds=(0, 1, 2),
            sizes=dict(n_train=160, n_test_good=32, n_test_defect=96, image_size=256),
            model=dict(image_size=224), meds=dict(n_banks=100, steps=None))
#: Sized for a 2-core CPU shared with other jobs: 32 normal training images of 96 px,
#: 40 + 40 steps, 20 banks (k = 50 then labels every training image).
QUICK = dict(categories=("fabric", "pcb"), seeds=(0,),
             sizes=dict(n_train=32, n_test_good=12, n_test_defect=28, image_size=96),
             model=dict(image_size=96), meds=dict(n_banks=20, steps=40))


def _auroc(detector, features, index, labels) -> float:
    scores, _ = detector.predict_features(features)
    return float(image_auroc(labels, scores[index]))


def run_split(data, noise: float, seed: int, plan: dict, verbose: bool, on_row=None) -> list[dict]:
    """Every k on one category, noise ratio and seed (one feature pass for all fits)."""
    splits = {p: contaminate(data, noise, seed, overlap=p == "overlap") for p in PROTOCOLS}
    split = splits["no-overlap"]
    is_noise = split.noise_labels()
    steps = plan["meds"]["steps"]
    settings = dict(**plan["model"], n_banks=plan["meds"]["n_banks"], network=NetworkConfig(),
                    train=TrainConfig(distill_steps=steps, finetune_steps=steps), seed=seed, device="auto",
                    verbose=False)
    shared = MeDS(**settings)
    train = shared.training_features(split.train_paths())
    test_paths = list(dict.fromkeys(p for s in splits.values() for p in s.test_paths()))
    test = torch.cat([f for _, f in shared.iter_features(test_paths)])
    position = {p: i for i, p in enumerate(test_paths)}
    tests = {p: ([position[q] for q in s.test_paths()], s.test_labels()) for p, s in splits.items()}

    def fitted(detector):
        return share_features(detector, shared)

    ranking = None
    rows = []
    for k in KS:
        start = time.perf_counter()
        labels = None
        if k:
            labels = [None] * len(is_noise)
            for i in ranking[:k]:
                labels[i] = "defective" if is_noise[i] else "good"
        model = fitted(MeDS(**settings)).fit_features(train, labels=labels)
        if ranking is None:  # what the person inspects: the unlabelled fit's ranking
            ranking = np.argsort(-model.training_scores_, kind="stable")
        cleaned = torch.as_tensor(model.trusted_)
        nn_clean = fitted(NearestNeighbourDetector(**plan["model"], device="auto", verbose=False)).fit_features(train[cleaned])
        row = {"category": data.name, "noise": float(noise), "seed": int(seed), "k": k,
               "n_train": len(is_noise), "n_noise": int(is_noise.sum()),
               "labelled_defective": int(sum(1 for x in (labels or []) if x == "defective")),
               "defects_trusted": int(is_noise[model.trusted_].sum()), "n_trusted": int(model.trusted_.sum()),
               "defects_selected": int(is_noise[model.selected_].sum()), "n_selected": int(model.selected_.sum())}
        for protocol, (index, truth) in tests.items():
            row[f"meds_auroc_{protocol}"] = _auroc(model, test, index, truth)
            row[f"nn_clean_auroc_{protocol}"] = _auroc(nn_clean, test, index, truth)
        if k == 0:
            nn_all = fitted(NearestNeighbourDetector(**plan["model"], device="auto", verbose=False)).fit_features(train)
            for protocol, (index, truth) in tests.items():
                row[f"nn_all_auroc_{protocol}"] = _auroc(nn_all, test, index, truth)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if verbose:
            print(f"  {data.name} noise {noise:g} seed {seed} k={k}: defects trusted {row['defects_trusted']}"
                  f"/{row['n_noise']}, MeDS AUROC {row['meds_auroc_no-overlap']:.3f} / "
                  f"{row['meds_auroc_overlap']:.3f}, NN(clean) {row['nn_clean_auroc_no-overlap']:.3f} / "
                  f"{row['nn_clean_auroc_overlap']:.3f} ({row['seconds']:.0f} s)", flush=True)
    return rows


def report(rows) -> str:
    """One markdown table: per noise and k, category means (seeds averaged first)."""
    lines = ["| noise | k | defects labelled | defects left in trusted set | MeDS no-overlap | MeDS overlap "
             "| NN on cleaned set no-overlap | NN on cleaned set overlap |",
             "|---|---|---|---|---|---|---|---|"]
    for noise in sorted({r["noise"] for r in rows}):
        for k in KS:
            chosen = [r for r in rows if r["noise"] == noise and r["k"] == k]
            if not chosen:
                continue

            def mean(key, scale=1.0):
                return scale * float(np.mean([r[key] for r in chosen]))

            injected = mean("n_noise")
            lines.append(
                f"| {100 * noise:g}% | {k} | {mean('labelled_defective'):.1f} | "
                f"{mean('defects_trusted'):.1f} of {injected:.1f} | {mean('meds_auroc_no-overlap', 100):.1f} | "
                f"{mean('meds_auroc_overlap', 100):.1f} | {mean('nn_clean_auroc_no-overlap', 100):.1f} | "
                f"{mean('nn_clean_auroc_overlap', 100):.1f} |")
    base = [r for r in rows if r["k"] == 0]
    if base:
        lines.append("")
        for noise in sorted({r["noise"] for r in base}):
            chosen = [r for r in base if r["noise"] == noise]
            lines.append(f"Full-memory NN on all training images (uncleaned) at {100 * noise:g}%: "
                         f"no-overlap {100 * np.mean([r['nn_all_auroc_no-overlap'] for r in chosen]):.1f}, "
                         f"overlap {100 * np.mean([r['nn_all_auroc_overlap'] for r in chosen]):.1f}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 categories, one seed, small sizes")
    parser.add_argument("--category", action="append", help="restrict to these categories")
    parser.add_argument("--work", default="bench_out/labels", help="where the synthetic data and results go")
    parser.add_argument("--report", metavar="JSON", help="only print the table of a saved results JSON")
    args = parser.parse_args(argv)
    if args.report:
        saved = load_json(args.report)
        print(f"{saved['command']}\n{len(saved['rows'])} rows; {saved['seconds'] / 60:.1f} min\n")
        print(report(saved["rows"]))
        return 0
    plan = QUICK if args.quick else FULL
    work = Path(args.work)
    sizes = plan["sizes"]
    root = work / f"synthetic_v{VARIATION:g}_n{sizes['n_train']}_s{sizes['image_size']}"
    categories = [c for c in (args.category or plan["categories"]) if c in SYNTHETIC_CATEGORIES]
    generate_synthetic(root, categories=categories, seed=0, variation=VARIATION, **sizes)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    rows, start = [], time.perf_counter()
    json_path = work / ("results_quick.json" if args.quick else "results.json")

    def save(row):  # after every fit, so an interrupted run keeps what it measured
        rows.append(row)
        save_json({"command": command, "rows": rows, "seconds": time.perf_counter() - start}, json_path)

    for category in categories:
        data = load_dataset(root, category=category, format="mvtec")
        for noise in NOISE:
            for seed in plan["seeds"]:
                run_split(data, noise, seed, plan, verbose=True, on_row=save)
    print(f"\n{command}\ncategories: {', '.join(categories)}; seeds: {', '.join(map(str, plan['seeds']))}; "
          f"{(time.perf_counter() - start) / 60:.1f} min\n")
    print(report(rows))
    print(f"\nrows: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
