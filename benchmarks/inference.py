"""Inference speed and memory: torch eager ``MeDS.predict`` vs the exported graph.

Fits MeDS (default backbone and network, a short schedule: speed does not depend on how
long it trained) on N synthetic "tile" images of 256x256, gives its memory detector a memory
the size of a ``--memory-images`` one (``memory_images * ceil(coreset_ratio * L)`` rows: the
fitted memory's rows repeated; speed and working memory depend only on its shape, and
fitting on that many images only to get it takes many minutes on 2 shared cores), exports it
for every runtime, and then, for each final detector, runs each runtime in its own process
with ``--threads`` threads:

* ``torch``: ``MeDS.load(folder).predict(arrays)`` (eager, as the user calls it);
* ``onnxruntime``: ``meds.deploy.Detector(model.onnx)``;
* ``openvino-fp32`` / ``openvino-fp16``: ``Detector(model.xml)`` (FP16: FP16 weights, f32 compute);
* ``onnxruntime-one-chunk`` (memory detectors only): the graph exported with the whole memory
  as one chunk, i.e. the ``(N * L, M)`` distance matrix anomalib's export holds, for comparison.

Images are decoded once beforehand (arrays), so only inference is timed. Reported: images per
second at batch 1 (one image per call) and batch 16 (best of ``--repeats``), the peak RSS
during inference (``VmHWM`` reset before the first call, via ``/proc/self/clear_refs``) and
its growth over the RSS after loading, and each runtime's speed relative to torch.

    python benchmarks/inference.py                       # a 300-image memory
    python benchmarks/inference.py --memory-images 60    # quick

Prints one JSON line per (final, runtime) and a table.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from meds.atomic_io import save_json


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(runtime: str, target: str, images: str, repeats: int, threads: int) -> dict:
    """Runs in its own process: load ``target`` with ``runtime``, time it, measure memory."""
    import numpy as np

    arrays = list(np.load(images))
    if runtime == "torch":
        import torch

        import meds

        torch.set_num_threads(threads)
        model = meds.MeDS.load(target, device="cpu", verbose=False)
        predict = model.predict
    else:
        from meds.deploy import Detector

        predict = Detector(target, threads=threads).predict
    predict(arrays[:1])  # warm-up: lazy initialisation of every runtime
    loaded = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    for image in arrays[:16]:
        predict([image])
    batch1 = 16 / (time.perf_counter() - start)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predict(arrays[:16])
        best = min(best, time.perf_counter() - start)
    peak = _rss_kib("VmHWM")
    return {"batch1_img_s": round(batch1, 1), "batch16_img_s": round(16 / best, 1),
            "peak_rss_mib": round(peak / 1024), "inference_growth_mib": round((peak - loaded) / 1024)}


def prepare(n_train: int, n_memory: int, steps: int, work: Path, finals) -> tuple[dict, Path, int]:
    """Fit, save and export; returns ``{final: {runtime: target}}``, the image file, memory rows."""
    import numpy as np

    import meds
    from meds.data import generate_synthetic, load_dataset
    from meds.data.images import decode_image
    from meds.method.train import TrainConfig

    root = generate_synthetic(work / f"data{n_train}", categories=["tile"], n_train=n_train, n_test_good=16,
                              n_test_defect=16, image_size=256, seed=0)
    data = load_dataset(root, category="tile", format="mvtec")
    model = meds.MeDS(device="cpu", verbose=False, train=TrainConfig(distill_steps=steps, finetune_steps=steps))
    model.fit(data.train_paths())
    per_image = math.ceil(model.coreset_ratio * model.grid_[0] * model.grid_[1])
    rows = n_memory * per_image
    bank = model.memory_bank_
    model.memory_bank_ = bank.repeat(math.ceil(rows / bank.shape[0]), 1)[:rows].contiguous()
    images = work / "images.npy"
    np.save(images, np.stack([decode_image(p) for p in data.test_paths()[:16]]))
    targets = {}
    for final in finals:
        view = model.with_final(final)
        folder = view.save(work / f"model-{final}")
        targets[final] = {
            "torch": folder,
            "onnxruntime": view.export(work / f"{final}.onnx"),
            "openvino-fp32": view.export(work / f"{final}-fp32", "openvino"),
            "openvino-fp16": view.export(work / f"{final}-fp16", "openvino", half=True),
        }
        if final != "reconstruction":
            targets[final]["onnxruntime-one-chunk"] = view.export(work / f"{final}-one-chunk.onnx",
                                                                  chunk=int(view.memory_bank_.shape[0]))
    return targets, images, int(model.memory_bank_.shape[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=24, help="training images of the fit (default 24)")
    parser.add_argument("--memory-images", type=int, default=300, help="images in the memory (default 300)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every runtime (default 1)")
    parser.add_argument("--steps", type=int, default=20, help="steps of stages 2 and 3 (default 20)")
    parser.add_argument("--finals", default="reconstruction,memory", help="final detectors to time")
    parser.add_argument("--repeats", type=int, default=3, help="batch-16 repeats; the best counts")
    parser.add_argument("--work", default="bench_out/inference", help="where data and models go")
    parser.add_argument("--json", help="also write the results as JSON")
    parser.add_argument("--child", nargs=3, metavar=("RUNTIME", "TARGET", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.repeats, args.threads)))
        return 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    finals = [f.strip() for f in args.finals.split(",") if f.strip()]
    targets, images, memory_rows = prepare(args.train, args.memory_images, args.steps, work, finals)
    rows = []
    for final in finals:
        for runtime, target in targets[final].items():
            kind = "onnxruntime" if runtime.startswith("onnxruntime") else runtime
            out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--threads",
                                  str(args.threads), "--child", kind,
                                  str(target), str(images)],
                                 capture_output=True, text=True, check=True)
            row = {"final": final, "runtime": runtime, "memory_images": args.memory_images,
                   "memory_rows": memory_rows, "threads": args.threads,
                   **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n256 px images, encoder input 224 px, {args.threads} thread(s); memory detector: "
          f"{args.memory_images} images, {memory_rows} rows\n")
    print("| final | runtime | img/s batch 1 | img/s batch 16 | × torch (1 / 16) | peak RSS | RSS growth in inference |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["final"] == row["final"] and r["runtime"] == "torch")
        ratio = f"{row['batch1_img_s'] / base['batch1_img_s']:.2f} / {row['batch16_img_s'] / base['batch16_img_s']:.2f}"
        print(f"| {row['final']} | {row['runtime']} | {row['batch1_img_s']} | {row['batch16_img_s']} | {ratio} | "
              f"{row['peak_rss_mib']} MiB | {row['inference_growth_mib']} MiB |")
    if args.json:
        save_json(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
