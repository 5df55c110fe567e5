"""Wall time of ``MeDS.fit`` with default settings, and the prediction speed it leaves.

For each size N: N training images of 256x256 from the synthetic "tile" category (5/6
normal, 1/6 injected defects: 20 % noise, no-overlap), ``meds.MeDS(device="cpu")`` with
every default, all stages included (features, memory ensemble, distillation, selection,
the trusted memory). Then ``predict`` images per second (batch 16, maps included) for each
final detector on 64 test images, and the contamination-detection AUROC of the fit.

    python benchmarks/fit_time.py                   # 300 and 600 training images
    python benchmarks/fit_time.py --sizes 300

Prints a table and one JSON line per size.
"""
from __future__ import annotations

import argparse
import json
import time

import meds
from meds.data import contaminate, generate_synthetic, load_dataset
from meds.evaluation.metrics import image_auroc
from meds.method.model import FINAL_DETECTORS


def _stage_clock():
    """A fit callback that records the wall time of each stage's first and last step."""
    stages: dict = {}

    def callback(stage, step, total, loss):
        now = time.perf_counter()
        stages.setdefault(stage, [now, now])[1] = now

    return stages, callback


def measure(n_train: int, work: str) -> dict:
    n_normal = round(n_train / 1.2)
    root = generate_synthetic(f"{work}/fit{n_train}", categories=["tile"], n_train=n_normal, n_test_good=16,
                              n_test_defect=n_train - n_normal + 48, image_size=256, seed=0)
    data = contaminate(load_dataset(root, category="tile", format="mvtec"), 0.2, seed=0)
    stages, callback = _stage_clock()
    start = time.perf_counter()
    model = meds.MeDS(device="cpu", verbose=False).fit(data.train_paths(), callback=callback)
    end = time.perf_counter()
    (d0, d1), f1 = stages["distill"], stages["finetune"][1]
    seconds = {"features + stage 1": d0 - start, "stage 2 (distillation)": d1 - d0,
               "stage 3 (selection + fine-tuning)": f1 - d1, "trusted memory": end - f1, "fit": end - start}
    test = data.test_paths()[:64]
    model.predict(test[:16])  # warm-up
    predict = {}
    for final in FINAL_DETECTORS:
        view = model.with_final(final)
        t = time.perf_counter()
        view.predict(test)
        predict[final] = len(test) / (time.perf_counter() - t)
    return {
        "n_train": len(data.train), "n_noise": int(data.n_noise),
        "steps": {stage: model.train_config.steps(stage, len(data.train)) for stage in ("distill", "finetune")},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "predict_images_per_second": {k: round(v, 1) for k, v in predict.items()},
        "memory_rows": int(model.memory_bank_.shape[0]),
        "contamination_auroc": round(image_auroc(data.noise_labels().astype(int), model.training_scores_), 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="300,600", help="training-set sizes, e.g. 300,600")
    parser.add_argument("--work", default="bench_out", help="where the synthetic data goes")
    args = parser.parse_args(argv)
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        result = measure(n, args.work)
        results.append(result)
        print(json.dumps(result), flush=True)
    stages = list(results[0]["seconds"])
    print("\n| training images | " + " | ".join(stages) + " | predict img/s (" + ", ".join(FINAL_DETECTORS) + ") |")
    print("|---" * (len(stages) + 2) + "|")
    for r in results:
        rates = ", ".join(f"{r['predict_images_per_second'][f]:.1f}" for f in FINAL_DETECTORS)
        print(f"| {r['n_train']} | " + " | ".join(f"{r['seconds'][s]:.0f} s" for s in stages) + f" | {rates} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
