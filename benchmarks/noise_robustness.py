"""Noise-robustness benchmark: does MeDS hold up as contamination grows?

Runs every method of :mod:`meds.evaluation.experiment` side by side on the same splits, on
the embedded synthetic dataset (generated on the fly) or on a real MVTec AD / VisA folder,
at noise ratios 0 / 10 / 20 / 40 % (defects per normal training image) over several seeds.
Each fit is evaluated under both noise protocols: no-overlap (injected defects leave the
test split, as in SoftPatch) and overlap (they stay, as in the official MeDS code), since
the training split of a (ratio, seed) pair is the same under both. Prints markdown tables
like the paper's Tables 1 and 4, one per protocol, and writes all rows as JSON (saved after
every setting, so an interrupted run keeps what it measured).

The synthetic set is sized like MVTec AD (160 normal training images per category), with
recurring defect types (``variation`` 0.25: the instances of a type look alike, as a
repeated production fault does) and 224-pixel inputs (28 x 28 patches), where the
full-memory nearest neighbour is well above chance on every category.

    python benchmarks/noise_robustness.py --quick            # 3 categories, 0 / 40 %, one seed
    python benchmarks/noise_robustness.py                    # the full run (hours on 2 cores)
    python benchmarks/noise_robustness.py --data /data/mvtec --splits shared/reference/meds-official-splits/mvtec
    python benchmarks/noise_robustness.py --quick --image-size 320   # a finer patch grid (40 x 40)
    python benchmarks/noise_robustness.py --report bench_out/noise/results.json   # reprint saved tables
    python benchmarks/noise_robustness.py --report seed0.json seeds12.json    # runs made separately, as one
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from meds.atomic_io import load_json, save_json
from meds.data import generate_synthetic, list_categories, load_dataset, parse_split_list_name
from meds.data.synthetic import SYNTHETIC_CATEGORIES
from meds.evaluation.experiment import (
    METHODS,
    PROTOCOLS,
    TEST_METRICS,
    TRAIN_METRICS,
    ExperimentConfig,
    markdown_table,
    merge_rows,
    of_protocol,
    per_category_table,
    run_experiment,
)
from meds.method.network import NetworkConfig
from meds.method.train import TrainConfig

#: One configuration for every noise ratio (as in the paper): no per-ratio tuning.
#: The defaults a user gets: 224-pixel inputs (28 x 28 patches), the "small" network and the
#: schedule that scales with the training set (2 + 4 steps per image, meds.method.train).
BENCH_MODEL = dict(image_size=224, device="auto")
BENCH_MEDS = dict(n_banks=100, bank_ratio=0.1, network=NetworkConfig(), train=TrainConfig())
SIZES = dict(n_train=160, n_test_good=32, n_test_defect=96, image_size=256)
VARIATION = 0.25
FULL = dict(noise=(0.0, 0.1, 0.2, 0.4), seeds=(0, 1, 2), categories=SYNTHETIC_CATEGORIES)
QUICK = dict(noise=(0.0, 0.4), seeds=(0,), categories=("fabric", "nut", "pcb"))
#: Methods of the quick run: the baselines and MeDS's final detectors (one fit; "meds"
#: scores with the default final, the reconstruction network standardised per position;
#: "meds_raw" with its raw patch errors, as the paper does).
QUICK_METHODS = ("nearest_neighbour", "memory_ensemble", "meds", "meds_raw", "meds_memory", "meds_fusion")


def _split_lists(folder: Path) -> dict:
    lists = {}
    for path in sorted(folder.glob("*.csv")):
        ratio, seed = parse_split_list_name(path.name)
        if ratio is not None and seed is not None:
            lists[(ratio, seed)] = str(path)
    if not lists:
        raise SystemExit(f"--splits: no CSV named like train_<data>_nr<percent>_seed_<n>.csv in {folder}")
    return lists


def _float_list(text: str) -> tuple:
    return tuple(float(x) for x in text.split(","))


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 categories, 0 and 40%% noise, one seed")
    parser.add_argument("--data", help="a real MVTec AD / VisA folder (default: the synthetic set)")
    parser.add_argument("--splits", help="folder of official split CSVs (with --data)")
    parser.add_argument("--category", action="append", help="restrict to these categories")
    parser.add_argument("--noise", type=_float_list, help="noise ratios, e.g. 0,0.4 (default: the plan's)")
    parser.add_argument("--seeds", type=lambda t: tuple(int(x) for x in t.split(",")), help="seeds, e.g. 0,1,2")
    parser.add_argument("--methods", default=None, help="comma-separated methods or 'all' (default: the plan's)")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="no-overlap, overlap or both (default)")
    parser.add_argument("--variation", type=float, default=VARIATION,
                        help="synthetic set: spread between instances of a defect type (0 = one recurring fault)")
    parser.add_argument("--image-size", type=_positive_int, default=BENCH_MODEL["image_size"],
                        help="the model's input side in pixels; the patch grid is 1/8 of it (default: "
                             "%(default)s, MeDS's default)")
    parser.add_argument("--work", default="bench_out/noise", help="where the synthetic data and results go")
    parser.add_argument("--json", help="results JSON (default: WORK/results.json)")
    parser.add_argument("--report", metavar="JSON", nargs="+", help="only print the tables of saved results "
                        "JSONs (also of an interrupted run); several are merged, e.g. seeds run separately")
    args = parser.parse_args(argv)
    if args.report:
        runs = []
        for path in args.report:
            saved = load_json(path)
            done = "complete" if saved.get("complete") else "INCOMPLETE (interrupted or still running)"
            print(f"{saved['command']}\n{len(saved['rows'])} rows, {done}; {saved['seconds'] / 60:.1f} min\n")
            runs.append((path, saved["rows"]))
        try:
            rows = merge_rows(runs)
        except ValueError as error:
            raise SystemExit(f"--report: {error}") from None
        print(report(rows))
        return 0

    plan = QUICK if args.quick else FULL
    noise, seeds = args.noise or plan["noise"], args.seeds or plan["seeds"]
    work = Path(args.work)
    if args.data:
        root = Path(args.data)
        categories = args.category or list_categories(root)
        fmt = "auto"
    else:
        root = work / f"synthetic_v{args.variation:g}_n{SIZES['n_train']}"
        categories = [c for c in (args.category or plan["categories"]) if c in SYNTHETIC_CATEGORIES]
        generate_synthetic(root, categories=categories, seed=0, variation=args.variation, **SIZES)
        fmt = "mvtec"
    if args.methods == "all":
        methods = list(METHODS)
    elif args.methods:
        methods = args.methods.split(",")
    else:
        methods = list(QUICK_METHODS) if args.quick else list(METHODS)
    config = ExperimentConfig(
        noise_ratios=noise, seeds=seeds, methods=methods, protocols=tuple(args.protocols.split(",")),
        model_kwargs={**BENCH_MODEL, "image_size": args.image_size, "verbose": False}, meds_kwargs=BENCH_MEDS,
        split_lists=_split_lists(Path(args.splits)) if args.splits else {},
    )
    datasets = [load_dataset(root, category=c, format=fmt) for c in categories]
    json_path = Path(args.json) if args.json else work / "results.json"
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    rows, start = [], time.perf_counter()

    def save(row=None):
        if row is not None:
            rows.append(row)
        save_json({"command": command, "rows": rows, "seconds": time.perf_counter() - start,
                   "complete": row is None}, json_path)

    run_experiment(datasets, config, verbose=True, on_row=save)
    save()
    elapsed = time.perf_counter() - start
    print(f"\n{command}\ncategories: {', '.join(categories)}; seeds: {', '.join(map(str, seeds))}; "
          f"{elapsed / 60:.1f} min\n")
    print(report(rows))
    print(f"\nrows: {json_path}")
    return 0


def report(rows) -> str:
    """The markdown tables per protocol: metrics x noise (Table 1 style), per category at the
    highest noise."""
    parts = []
    for protocol in PROTOCOLS:
        chosen = of_protocol(rows, protocol)
        if not chosen:
            continue
        parts.append(f"### Protocol: {protocol}")
        for metric in TEST_METRICS + TRAIN_METRICS:
            parts.append(f"**{metric}** ({protocol}; mean ± std over seeds of the category average, x100)\n\n"
                         + markdown_table(chosen, metric))
        top = max(r["noise"] for r in chosen)
        parts.append(f"**image_auroc per category at {100 * top:g}% noise** ({protocol}; mean ± std over seeds, "
                     "x100)\n\n" + per_category_table(chosen, "image_auroc", top))
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
