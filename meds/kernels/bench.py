"""Throughput of the meds kernels against the baselines they replace, side by side in one run.

(a) group_min_distance vs torch.mm on the same (Nq, D) x (D, Nm) product (GFLOP/s, ratio),
    and vs a chunked torch addmm + amin (what one would write in torch without a kernel).
(b) ensemble_distance (B = 100, rho = 0.1) vs the official per-bank search (torch matmul +
    min per bank) and vs faiss-cpu IndexFlatIP per bank (if faiss is installed).
(c) Peak memory of each call: VmHWM of a fresh subprocess per case (reset before the call).
(d) With --device cuda: group_min_distance at fp32 / tf32 / bf16 vs torch.mm at the same
    precision, and ensemble_distance vs the per-bank search on the GPU.

Timings: warm-up, then rounds in which every method runs once (interleaved, so that noise
from other processes hits them alike); the median of the rounds is reported.

    meds bench [--quick] [--device cpu|cuda] [--json PATH]
    python benchmarks/kernel_throughput.py [same options]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ROWS_PER_GROUP = 784  # 28 x 28 patches per image


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch and OpenMP); default: all")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, quick 3)")
    p.add_argument("--sections", default="gemm,ensemble,memory",
                   help="CPU sections to run, comma-separated from gemm,ensemble,memory (default: all)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--_memcase", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------
# Data and the methods under test.


def make_data(nq, n_groups, d, seed=0, device="cpu", dtype=None):
    import torch

    g = torch.Generator().manual_seed(seed)
    nm = n_groups * ROWS_PER_GROUP
    q = torch.randn(nq, d, generator=g)
    m = torch.randn(nm, d, generator=g)
    groups = torch.arange(n_groups).repeat_interleave(ROWS_PER_GROUP)
    q, m, groups = q.to(device), m.to(device), groups.to(device)
    if dtype is not None:
        q, m = q.to(dtype), m.to(dtype)
    return q, m, groups


def chunked_addmm_amin(q, m, n_groups, chunk=1024):
    """Cosine group minima with torch only: normalise, addmm per query chunk, amin per group
    (groups contiguous and equal-sized, so a reshape does the scatter)."""
    import torch

    qn = torch.nn.functional.normalize(q, dim=1)
    mn = torch.nn.functional.normalize(m, dim=1)
    out = torch.empty(q.shape[0], n_groups, dtype=q.dtype, device=q.device)
    ones = torch.ones((), dtype=q.dtype, device=q.device)
    for s in range(0, q.shape[0], chunk):
        dist = torch.addmm(ones, qn[s:s + chunk], mn.T, beta=1, alpha=-1)
        out[s:s + chunk] = dist.view(dist.shape[0], n_groups, -1).amin(dim=2)
    return out


def per_bank_torch(q, m, groups, banks):
    """The official stage-1 search: for each bank, gather its memory, 1 - q @ m.T, min."""
    import torch

    qn = torch.nn.functional.normalize(q, dim=1)
    mn = torch.nn.functional.normalize(m, dim=1)
    total = torch.zeros(q.shape[0], dtype=torch.float32, device=q.device)
    for bank in banks:
        rows = torch.isin(groups, torch.as_tensor(bank, device=groups.device)).nonzero().squeeze(1)
        mb = mn.index_select(0, rows)
        total += 1 - (qn @ mb.T).amax(dim=1)
    return total / len(banks)


def per_bank_faiss(q, m, groups, banks):
    import faiss

    qn = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True))
    mn = m / np.linalg.norm(m, axis=1, keepdims=True)
    total = np.zeros(q.shape[0], np.float64)
    for bank in banks:
        index = faiss.IndexFlatIP(q.shape[1])
        index.add(np.ascontiguousarray(mn[np.isin(groups, bank)]))
        sim, _ = index.search(qn, 1)
        total += 1 - sim[:, 0]
    return (total / len(banks)).astype(np.float32)


def sync(device):
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def bench(methods, repeats, device="cpu", warmup=1):
    """methods: {name: fn}. Interleaved rounds; returns {name: median seconds}."""
    times = {k: [] for k in methods}
    for _ in range(warmup):
        for fn in methods.values():
            fn()
            sync(device)
    for _ in range(repeats):
        for name, fn in methods.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# --------------------------------------------------------------------------------------
# Sections.


def section_gemm(args, sizes, results):
    import torch

    import meds

    rows = []
    for d in sizes["dims"]:
        nq, G = sizes["nq"], sizes["groups"]
        q, m, groups = make_data(nq, G, d)
        nm = m.shape[0]
        flops = 2.0 * nq * nm * d
        # torch.mm into a preallocated output: the pure GEMM rate, no page faults.
        mm_out = torch.empty(nq, nm)
        t = bench(
            {
                "group_min_distance": lambda: meds.group_min_distance(q, m, groups, G),
                "torch.mm": lambda: torch.mm(q, m.T, out=mm_out),
                "addmm+amin": lambda: chunked_addmm_amin(q, m, G),
            },
            args.repeats,
        )
        row = {"D": d, "Nq": nq, "Nm": nm, "G": G}
        for k, v in t.items():
            row[f"{k} s"] = v
            row[f"{k} GFLOP/s"] = flops / v / 1e9
        row["ratio vs torch.mm"] = t["torch.mm"] / t["group_min_distance"]
        row["addmm+amin ratio vs torch.mm"] = t["torch.mm"] / t["addmm+amin"]
        rows.append(row)
    results["gemm_cpu"] = rows
    print("\n(a) group_min_distance vs torch.mm, CPU, same product 2*Nq*Nm*D (GFLOP/s; ratio = torch.mm time / time)")
    print(f"{'D':>5} {'Nq':>6} {'Nm':>7} {'G':>4} | {'meds':>7} {'mm':>7} {'addmm+amin':>10} | {'meds/mm':>7} {'addmm/mm':>8}")
    for r in rows:
        print(f"{r['D']:>5} {r['Nq']:>6} {r['Nm']:>7} {r['G']:>4} | {r['group_min_distance GFLOP/s']:7.1f} "
              f"{r['torch.mm GFLOP/s']:7.1f} {r['addmm+amin GFLOP/s']:10.1f} | {r['ratio vs torch.mm']:7.3f} "
              f"{r['addmm+amin ratio vs torch.mm']:8.3f}")


def section_ensemble(args, sizes, results, device="cpu"):
    import torch

    import meds

    nq, G, d = sizes["ens_nq"], sizes["ens_groups"], sizes["ens_dim"]
    q, m, groups = make_data(nq, G, d, seed=1, device=device)
    banks = meds.sample_banks(G, n_banks=100, ratio=0.1, seed=0)
    banks_t = torch.as_tensor(banks, device=device)
    methods = {
        "ensemble_distance": lambda: meds.ensemble_distance(q, m, groups, banks_t),
        "per-bank torch": lambda: per_bank_torch(q, m, groups, banks),
    }
    faiss_ok = False
    if device == "cpu":
        try:
            import faiss

            faiss.omp_set_num_threads(torch.get_num_threads())
            qn, mn, gn = q.numpy(), m.numpy(), groups.numpy()
            methods["per-bank faiss"] = lambda: per_bank_faiss(qn, mn, gn, banks)
            faiss_ok = True
        except ImportError:
            print("(faiss not installed: faiss baseline skipped)")
    # Same answer first (the comparison is only meaningful if it is); this is also the
    # warm-up of the torch methods (faiss warms up on one bank).
    ref = per_bank_torch(q, m, groups, banks)
    ours = meds.ensemble_distance(q, m, groups, banks_t)
    err = float((ours - ref).abs().max())
    if faiss_ok:
        per_bank_faiss(qn, mn, gn, banks[:1])
    t = bench(methods, args.repeats, device=device, warmup=0)
    row = {"device": device, "Nq": nq, "Nm": m.shape[0], "G": G, "D": d, "B": 100, "rho": 0.1,
           "bank_size": int(banks.shape[1]), "max_abs_diff_vs_per_bank": err}
    for k, v in t.items():
        row[f"{k} s"] = v
    row["speedup vs per-bank torch"] = t["per-bank torch"] / t["ensemble_distance"]
    if faiss_ok:
        row["speedup vs per-bank faiss"] = t["per-bank faiss"] / t["ensemble_distance"]
    results[f"ensemble_{device}"] = row
    print(f"\n(b) ensemble_distance, {device}, B=100, rho=0.1 (bank = {row['bank_size']} of {G} images), "
          f"Nq={nq}, Nm={m.shape[0]}, D={d}; max |diff| vs per-bank = {err:.2e}")
    for k, v in t.items():
        extra = "" if k == "ensemble_distance" else f"   speedup of ensemble_distance: {v / t['ensemble_distance']:.1f}x"
        print(f"  {k:<20} {v * 1e3:10.1f} ms{extra}")


MEM_CASES = ("group_min_distance", "torch.mm", "addmm+amin", "ensemble_distance", "per-bank torch", "per-bank faiss")


def _vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def _memcase(spec):
    """Runs in a fresh subprocess: builds the inputs, resets the peak RSS, runs one call."""
    import torch

    import meds

    case, nq, G, d = spec.split(":")
    nq, G, d = int(nq), int(G), int(d)
    if case.startswith("per-bank") or case == "ensemble_distance":
        q, m, groups = make_data(nq, G, d, seed=1)
        banks = meds.sample_banks(G, n_banks=100, ratio=0.1, seed=0)
    else:
        q, m, groups = make_data(nq, G, d)
    fns = {
        "group_min_distance": lambda: meds.group_min_distance(q, m, groups, G),
        "torch.mm": lambda: torch.mm(q, m.T, out=torch.empty(q.shape[0], m.shape[0], device=q.device)),
        "addmm+amin": lambda: chunked_addmm_amin(q, m, G),
        "ensemble_distance": lambda: meds.ensemble_distance(q, m, groups, banks),
        "per-bank torch": lambda: per_bank_torch(q, m, groups, banks),
    }
    if case == "per-bank faiss":
        qn, mn, gn = q.numpy(), m.numpy(), groups.numpy()
        fns[case] = lambda: per_bank_faiss(qn, mn, gn, banks)
    # Touch the code paths once on tiny data so that lazy initialisation is not counted.
    meds.build_info()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _vm_hwm_kib()
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    base = rss if reset else before
    res = fns[case]()
    del res
    print(json.dumps({"case": case, "peak_extra_mib": (_vm_hwm_kib() - base) / 1024.0, "hwm_reset": reset}))


def section_memory(args, sizes, results):
    rows = []
    print("\n(c) peak memory of one call above the inputs (VmHWM of a fresh process, reset before the call)")
    for case in MEM_CASES:
        if case.startswith("per-bank") or case == "ensemble_distance":
            spec = f"{case}:{sizes['ens_nq']}:{sizes['ens_groups']}:{sizes['ens_dim']}"
        else:
            spec = f"{case}:{sizes['nq']}:{sizes['groups']}:{max(sizes['dims'])}"
        if case == "per-bank faiss":
            try:
                import faiss  # noqa: F401
            except ImportError:
                continue
        proc = subprocess.run([sys.executable, "-m", "meds.kernels.bench", "--_memcase", spec], capture_output=True, text=True,
                              env=os.environ.copy())
        if proc.returncode != 0:
            print(f"  {case}: failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["spec (case:Nq:G:D)"] = spec
        rows.append(row)
        print(f"  {case:<20} {row['peak_extra_mib']:9.1f} MiB   ({spec})")
    results["peak_memory_cpu"] = rows


def section_cuda(args, sizes, results):
    import torch

    import meds
    from meds import _C

    if not torch.cuda.is_available():
        print("\n(d) CUDA: no device visible, skipped")
        return
    if not meds.build_info().get("cuda"):
        print("\n(d) CUDA: this build of meds has no CUDA kernels, skipped")
        return
    nq, G, d = sizes["cuda_nq"], sizes["groups"], sizes["cuda_dim"]
    # Tensor-core rows once per kernel: mma.sync, and the Hopper wgmma kernel where it can run
    # (MEDS_CUDA_TC selects it; the row records the kernel that actually ran).
    wgmma_status = _C.cuda_wgmma_status(torch.cuda.current_device())
    results["cuda_wgmma_status"] = wgmma_status
    tc_paths = ["mma", "wgmma"] if wgmma_status == "ok" else ["mma"]
    q32, m32, groups = make_data(nq, G, d, device="cuda")
    data = {"fp32": (q32, m32), "tf32": (q32, m32),
            "bf16": (q32.to(torch.bfloat16), m32.to(torch.bfloat16))}
    # mma rows first and every row printed as soon as it is measured: should the wgmma kernel
    # fault (which ends this process), the rows before it are still on record.
    configs = [("fp32", None)] + [(prec, tc) for tc in tc_paths for prec in ("tf32", "bf16")]
    rows = []
    env_before = os.environ.get("MEDS_CUDA_TC")
    print(f"\n(d) CUDA ({torch.cuda.get_device_name()}): group_min_distance vs torch.mm at the same precision")
    if wgmma_status != "ok":
        print(f"  (no wgmma rows: {wgmma_status})")
    for prec, tc in configs:
        q, m = data[prec]
        flops = 2.0 * nq * m.shape[0] * d
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
        if tc is not None:
            os.environ["MEDS_CUDA_TC"] = tc
        try:
            t = bench({"group_min_distance": lambda: meds.group_min_distance(q, m, groups, G, precision=prec),
                       "torch.mm": lambda: torch.mm(q, m.T)}, max(args.repeats, 5), device="cuda")
            kernel = _C.cuda_last_kernel()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
            if env_before is None:
                os.environ.pop("MEDS_CUDA_TC", None)
            else:
                os.environ["MEDS_CUDA_TC"] = env_before
        rows.append({"precision": prec, "MEDS_CUDA_TC": tc, "kernel": kernel,
                     "Nq": nq, "Nm": m.shape[0], "D": d, "G": G,
                     "group_min_distance s": t["group_min_distance"], "torch.mm s": t["torch.mm"],
                     "group_min_distance TFLOP/s": flops / t["group_min_distance"] / 1e12,
                     "torch.mm TFLOP/s": flops / t["torch.mm"] / 1e12,
                     "time ratio meds/mm": t["group_min_distance"] / t["torch.mm"]})
        r = rows[-1]
        print(f"  {r['precision']:<5} {r['kernel']:<6} Nq={r['Nq']} Nm={r['Nm']} D={r['D']}: meds "
              f"{r['group_min_distance TFLOP/s']:7.1f} TFLOP/s, mm {r['torch.mm TFLOP/s']:7.1f} TFLOP/s, "
              f"time ratio meds/mm {r['time ratio meds/mm']:.3f}", flush=True)
    results["gemm_cuda"] = rows
    section_ensemble(args, {**sizes, "ens_nq": sizes["cuda_ens_nq"]}, results, device="cuda")


def main(argv=None):
    """Run the benchmark; ``argv`` as on the command line (default: ``sys.argv[1:]``)."""
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args._memcase:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        _memcase(args._memcase)
        return
    import torch

    import meds

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats is None:
        args.repeats = 3
    if args.quick:
        sizes = dict(nq=1024, groups=21, dims=(128, 768), ens_nq=128, ens_groups=40, ens_dim=128,
                     cuda_nq=4096, cuda_dim=768, cuda_ens_nq=2048)
    else:
        sizes = dict(nq=4096, groups=84, dims=(128, 768), ens_nq=512, ens_groups=84, ens_dim=768,
                     cuda_nq=16384, cuda_dim=768, cuda_ens_nq=8192)
    info = meds.build_info()
    results = {
        "command": " ".join(["meds bench"] + list(argv if argv is not None else sys.argv[1:])),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "build_info": info,
        "sizes": sizes,
    }
    print(f"meds {info.get('version')}: simd={info['simd_selected']} openmp={info['openmp']} "
          f"threads={info.get('openmp_max_threads')} cuda={info['cuda']}; torch {torch.__version__} "
          f"threads={torch.get_num_threads()}")
    if args.device == "cpu":
        sections = set(args.sections.split(","))
        if "gemm" in sections:
            section_gemm(args, sizes, results)
        if "ensemble" in sections:
            section_ensemble(args, sizes, results, device="cpu")
        if "memory" in sections and not args.no_memory:
            section_memory(args, sizes, results)
    else:
        section_cuda(args, sizes, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
