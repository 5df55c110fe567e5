"""Noise-robustness benchmark: does MeDS hold up as contamination grows?

Runs every method of :mod:`meds.evaluation.experiment` side by side on the same splits, on every
category of the embedded synthetic dataset (generated on the fly) or on a real MVTec AD /
VisA folder, at noise ratios 0 / 10 / 20 / 40 % (defects per normal training image,
no-overlap unless --overlap), over several seeds. Prints markdown tables like the paper's
Tables 1 and 4 and writes all rows as JSON (saved after every setting, so an interrupted
run keeps what it measured).

    python benchmarks/noise_robustness.py --quick            # a subset, one seed (< 10 min)
    python benchmarks/noise_robustness.py                    # the full run
    python benchmarks/noise_robustness.py --data /data/mvtec --splits shared/reference/meds-official-splits/mvtec
    # does contamination hurt the baselines at all? (one recurring fault per defect type)
    python benchmarks/noise_robustness.py --quick --variation 0 --methods nearest_neighbour,memory_ensemble
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from meds.data import generate_synthetic, list_categories, load_dataset, parse_split_list_name
from meds.data.synthetic import SYNTHETIC_CATEGORIES
from meds.evaluation.experiment import (
    METHODS,
    TEST_METRICS,
    TRAIN_METRICS,
    ExperimentConfig,
    markdown_table,
    per_category_table,
    run_experiment,
)
from meds.atomic_io import load_json, save_json
from meds.method.network import NetworkConfig
from meds.method.train import TrainConfig

#: One configuration for every noise ratio (as in the paper): no per-ratio tuning.
#: Sized for 2 CPU cores: 160-pixel inputs (a 20x20 patch grid) and 100 + 100 steps.
BENCH_MODEL = dict(image_size=160, device="auto")
BENCH_MEDS = dict(n_banks=100, bank_ratio=0.1, network=NetworkConfig(),
                  train=TrainConfig(distill_steps=100, finetune_steps=100))
FULL = dict(noise=(0.0, 0.1, 0.2, 0.4), seeds=(0, 1, 2), categories=SYNTHETIC_CATEGORIES,
            sizes=dict(n_train=40, n_test_good=16, n_test_defect=32, image_size=192))
QUICK = dict(noise=(0.0, 0.4), seeds=(0,), categories=("fabric", "nut", "capsule"),
             sizes=FULL["sizes"])


def _split_lists(folder: Path) -> dict:
    lists = {}
    for path in sorted(folder.glob("*.csv")):
        ratio, seed = parse_split_list_name(path.name)
        if ratio is not None and seed is not None:
            lists[(ratio, seed)] = str(path)
    if not lists:
        raise SystemExit(f"--splits: no CSV named like train_<data>_nr<percent>_seed_<n>.csv in {folder}")
    return lists


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 categories, 0 and 40%% noise, one seed")
    parser.add_argument("--data", help="a real MVTec AD / VisA folder (default: the synthetic set)")
    parser.add_argument("--splits", help="folder of official split CSVs (with --data)")
    parser.add_argument("--category", action="append", help="restrict to these categories")
    parser.add_argument("--methods", default="all", help="comma-separated methods or 'all'")
    parser.add_argument("--overlap", action="store_true", help="official overlap protocol")
    parser.add_argument("--variation", type=float, default=1.0,
                        help="synthetic set: spread between instances of a defect type (0 = one recurring fault)")
    parser.add_argument("--work", default="bench_out/noise", help="where the synthetic data and results go")
    parser.add_argument("--json", help="results JSON (default: WORK/results.json)")
    parser.add_argument("--report", metavar="JSON", help="only print the tables of a saved results JSON "
                        "(also of an interrupted run)")
    args = parser.parse_args(argv)
    if args.report:
        saved = load_json(args.report)
        done = "complete" if saved.get("complete") else "INCOMPLETE (interrupted or still running)"
        print(f"{saved['command']}\nprotocol: {saved['protocol']}; {len(saved['rows'])} rows, {done}; "
              f"{saved['seconds'] / 60:.1f} min\n")
        print(report(saved["rows"]))
        return 0

    plan = QUICK if args.quick else FULL
    work = Path(args.work)
    if args.data:
        root = Path(args.data)
        categories = args.category or list_categories(root)
        fmt = "auto"
    else:
        root = work / ("synthetic" if args.variation == 1.0 else f"synthetic_variation{args.variation:g}")
        categories = [c for c in (args.category or plan["categories"]) if c in SYNTHETIC_CATEGORIES]
        generate_synthetic(root, categories=categories, seed=0, variation=args.variation, **plan["sizes"])
        fmt = "mvtec"
    methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
    config = ExperimentConfig(
        noise_ratios=plan["noise"], seeds=plan["seeds"], methods=methods, overlap=args.overlap,
        model_kwargs={**BENCH_MODEL, "verbose": False}, meds_kwargs=BENCH_MEDS,
        split_lists=_split_lists(Path(args.splits)) if args.splits else {},
    )
    datasets = [load_dataset(root, category=c, format=fmt) for c in categories]
    json_path = Path(args.json) if args.json else work / "results.json"
    protocol = "overlap" if args.overlap else "no-overlap"
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    rows, start = [], time.perf_counter()

    def save(row=None):
        if row is not None:
            rows.append(row)
        save_json({"command": command, "protocol": protocol, "rows": rows,
                   "seconds": time.perf_counter() - start, "complete": row is None}, json_path)

    run_experiment(datasets, config, verbose=True, on_row=save)
    save()
    elapsed = time.perf_counter() - start
    print(f"\n{command}\nprotocol: {protocol}; categories: {', '.join(categories)}; "
          f"seeds: {', '.join(map(str, plan['seeds']))}; {elapsed / 60:.1f} min\n")
    print(report(rows))
    print(f"\nrows: {json_path}")
    return 0


def report(rows) -> str:
    """The markdown tables: metrics x noise (Table 1 style), per category at the highest noise."""
    parts = []
    for metric in TEST_METRICS + TRAIN_METRICS:
        parts.append(f"**{metric}** (mean ± std over seeds of the category average, x100)\n\n"
                     + markdown_table(rows, metric))
    top = max(r["noise"] for r in rows)
    parts.append(f"**image_auroc per category at {100 * top:g}% noise** (mean ± std over seeds, x100)\n\n"
                 + per_category_table(rows, "image_auroc", top))
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
