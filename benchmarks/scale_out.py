"""Scale-out on Ray: stage 1 and a two-category fit with 1 and 2 workers vs the local run.

On one machine with ``C`` cores (a local Ray instance with ``num_cpus = C``):

* **stage 1** - ``memory_scores`` on random ``(N, L, D)`` features: local (``C`` kernel
  threads), then ``workers=1`` (one actor with ``C`` CPUs) and ``workers=2`` (two actors
  with ``C/2`` each), for both ``shard`` modes. "cold" starts the actors inside the call
  (what ``workers=N`` does), "warm" reuses a :class:`~meds.distributed.stage1.Stage1Workers`
  pool; cold - warm is the actor start-up, warm / local the per-call overhead.
* **fit** - ``meds fit`` on two synthetic categories: local (one after the other), then
  ``--ray`` with one task at a time (``--worker-cpus C``) and two at once
  (``--worker-cpus C/2``).
* **cost model** - Real-IAD (150k images, 30 categories of 5000; equal sizes assumed) at
  the paper's setting (L = 784, D = 768): stage-1 FLOPs ``2*(N*L)^2*D`` per category, and
  its time on ``W`` workers from a per-worker kernel rate: the CPU rate measured here and
  the H200 rates of ``benchmarks/RESULTS.md`` (not measured by this script).

    python benchmarks/scale_out.py --json scale_out.json          # defaults
    python benchmarks/scale_out.py --images 32 --patches 196 --json scale_out.json

This machine's CPUs are shared: read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from meds.atomic_io import save_json

REAL_IAD = {"images": 150_000, "categories": 30, "patches": 784, "dim": 768}
#: group_min_distance on an NVIDIA H200, from benchmarks/RESULTS.md (bash benchmarks/device_check.sh).
H200_TFLOPS = {"fp32": 42.0, "tf32": 288.0, "bf16": 485.0}  # lower ends of the measured ranges


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def stage1(ray, cores: int, images: int, patches: int, dim: int, n_banks: int) -> list:
    from meds.distributed.stage1 import Stage1Workers
    from meds.method.memory import memory_scores

    features = torch.randn(images, patches, dim, generator=torch.Generator().manual_seed(0))
    settings = dict(n_banks=n_banks, bank_ratio=0.1, images_per_chunk=4, progress=False)
    local_s, local = _timed(lambda: memory_scores(features, **settings))
    flop = 2.0 * (images * patches) ** 2 * dim
    rows = [{"what": "stage 1", "mode": "local", "workers": 0, "seconds": local_s, "ratio": 1.0,
             "gflops": flop / local_s / 1e9, "equal": True}]
    for workers in (1, 2):
        for shard in ("queries", "memory"):
            cold_s, cold = _timed(lambda: memory_scores(features, workers=workers, shard=shard, **settings))
            with Stage1Workers(workers, num_cpus=cores / workers) as pool:
                memory_scores(features, workers=pool, shard=shard, **settings)  # actors up, imports done
                warm_s, warm = _timed(lambda: memory_scores(features, workers=pool, shard=shard, **settings))
            for mode, seconds, out in (("cold", cold_s, cold), ("warm", warm_s, warm)):
                rows.append({"what": "stage 1", "mode": f"{shard}, {mode}", "workers": workers, "seconds": seconds,
                             "ratio": seconds / local_s, "gflops": flop / seconds / 1e9,
                             "equal": bool(torch.equal(out, local))})
    return rows


def fit(cores: int, work: Path) -> list:
    from meds.app import cli
    from meds.data import generate_synthetic

    data = generate_synthetic(work / "data", categories=["wood", "tile"], n_train=24, n_test_good=2,
                              n_test_defect=2, image_size=128, seed=0)
    common = ["fit", str(data), "--image-size", "128", "--steps", "30", "--n-banks", "20", "--device", "cpu",
              "--quiet"]

    def run(out, *extra):
        assert cli.main([*common, "--out", str(work / out), *extra]) == 0
        return (work / out / "wood" / "training_scores.csv").read_text()

    local_s, local = _timed(lambda: run("local"))
    rows = [{"what": "fit, 2 categories", "mode": "local", "workers": 0, "seconds": local_s, "ratio": 1.0}]
    for workers in (1, 2):
        cpus = str(cores / workers)
        seconds, scores = _timed(lambda: run(f"ray{workers}", "--ray", "--worker-cpus", cpus))
        rows.append({"what": "fit, 2 categories", "mode": f"--ray --worker-cpus {cpus}", "workers": workers,
                     "seconds": seconds, "ratio": seconds / local_s, "same_scores_csv": scores == local})
    return rows


def cost_model(cpu_gflops: float) -> list:
    n = REAL_IAD["images"] // REAL_IAD["categories"]
    per_category = 2.0 * (n * REAL_IAD["patches"]) ** 2 * REAL_IAD["dim"]
    total = per_category * REAL_IAD["categories"]
    rates = {"CPU worker (measured here, 2 cores)": cpu_gflops * 1e9}
    rates.update({f"H200 {p} (RESULTS.md)": t * 1e12 for p, t in H200_TFLOPS.items()})
    rows = []
    for name, rate in rates.items():
        for workers in (1, 8, 30, 64):
            # Query sharding splits every category evenly; categories alone cannot use more
            # than 30 workers, and each worker runs ceil(30 / W) whole categories.
            sharded = total / (rate * workers)
            by_category = math.ceil(REAL_IAD["categories"] / workers) * per_category / rate
            rows.append({"rate": name, "workers": workers, "flop": total, "hours_sharded": sharded / 3600,
                         "hours_by_category": by_category / 3600})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="stage 1: images N")
    parser.add_argument("--patches", type=int, default=196, help="stage 1: patches per image L")
    parser.add_argument("--dim", type=int, default=152, help="stage 1: feature dimension D")
    parser.add_argument("--banks", type=int, default=100)
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args(argv)

    import ray

    cores = torch.get_num_threads()
    init_s, _ = _timed(lambda: ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False))
    try:
        with tempfile.TemporaryDirectory() as work:
            rows = stage1(ray, cores, args.images, args.patches, args.dim, args.banks) + fit(cores, Path(work))
    finally:
        ray.shutdown()
    cpu_rate = rows[0]["gflops"]
    model = cost_model(cpu_rate)

    print(f"Ray start-up (local instance, {cores} CPUs): {init_s:.1f} s")
    print(f"stage 1: N = {args.images}, L = {args.patches}, D = {args.dim}, B = {args.banks}\n")
    print("| what | mode | workers | seconds | / local | result equal to local |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        same = r.get("equal", r.get("same_scores_csv"))
        verdict = "reference" if r["workers"] == 0 else ("bit-identical" if same else "no (other thread count)")
        print(f"| {r['what']} | {r['mode']} | {r['workers']} | {r['seconds']:.1f} | {r['ratio']:.2f} | {verdict} |")
    print(f"\nReal-IAD stage 1 ({REAL_IAD['images']} images, {REAL_IAD['categories']} categories, "
          f"L = {REAL_IAD['patches']}, D = {REAL_IAD['dim']}): {model[0]['flop']:.2e} FLOP\n")
    print("| per-worker rate | workers | hours, query-sharded | hours, one task per category |")
    print("|---|---|---|---|")
    for r in model:
        print(f"| {r['rate']} | {r['workers']} | {r['hours_sharded']:.3g} | {r['hours_by_category']:.3g} |")
    if args.json:
        save_json({"ray_init_s": init_s, "cores": cores, "settings": vars(args), "rows": rows, "cost_model": model},
                  args.json)


if __name__ == "__main__":
    main()
