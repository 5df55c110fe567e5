"""CUDA kernels of meds.group_min_distance / meds.ensemble_distance against a float64 brute
force written here (and against the CPU path). Every test needs a visible CUDA device and is
skipped without one.

The tensor-core tests run once per tensor-core kernel (fixture `tc_path`): "mma" (mma.sync,
sm_80+) and "wgmma" (Hopper sm_90a; skipped where the device or the binary lacks it), chosen
through the environment variable MEDS_CUDA_TC, and each checks that the intended kernel ran
(meds._C.cuda_last_kernel())."""

import math

import numpy as np
import pytest
import torch

import meds
from meds import _C

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a visible CUDA device"),
]

METRICS = ["cosine", "sqeuclidean", "l2"]
# Absolute tolerance on cosine distances / on squared euclidean distances relative to the
# scale |q|^2 + |m|^2, per multiplication precision.
TOL = {"fp32": 1e-5, "tf32": 4e-3, "fp16": 4e-3, "bf16": 2.5e-2}
DEV = "cuda"
TC_PATHS = ["mma", "wgmma"]


def wgmma_status():
    return _C.cuda_wgmma_status(torch.cuda.current_device())


@pytest.fixture(params=TC_PATHS)
def tc_path(request, monkeypatch):
    """Runs the test under MEDS_CUDA_TC=mma and =wgmma (the latter only where it can run)."""
    if request.param == "wgmma":
        status = wgmma_status()
        if status != "ok":
            pytest.skip(f"the sm_90a wgmma kernel cannot run here: {status}")
    monkeypatch.setenv("MEDS_CUDA_TC", request.param)
    return request.param


def skip_fp32_twice(precision, tc_path):
    """fp32 runs the SIMT kernel whatever MEDS_CUDA_TC says: test it under one tc_path only."""
    if precision == "fp32" and tc_path != TC_PATHS[0]:
        pytest.skip("fp32 runs the SIMT kernel, already tested under MEDS_CUDA_TC=mma")


def assert_kernel(precision, tc_path):
    """The latest CUDA call ran the kernel that precision + MEDS_CUDA_TC select."""
    want = "simt" if precision == "fp32" else tc_path
    got = _C.cuda_last_kernel()
    assert got == want, f"expected the {want} kernel to run, the {got} kernel ran"


# ---------------------------------------------------------------------------------------------
# Reference (float64, CPU, brute force).
def ref_distances(q, m, metric):
    q = q.detach().double().cpu()
    m = m.detach().double().cpu()
    dot = q @ m.T
    if metric == "cosine":
        qn, mn = q.norm(dim=1), m.norm(dim=1)
        qi = torch.where(qn > 0, 1.0 / qn, torch.zeros_like(qn))
        mi = torch.where(mn > 0, 1.0 / mn, torch.zeros_like(mn))
        d = 1.0 - dot * qi[:, None] * mi[None, :]
    else:
        d = (q * q).sum(1)[:, None] + (m * m).sum(1)[None, :] - 2.0 * dot
    return d.clamp_min(0.0)


def ref_group_min(q, m, groups, n_groups, metric, query_groups=None, exclude_self=False):
    """(nq, n_groups) float64: squared euclidean for 'l2' is square-rooted at the end."""
    d = ref_distances(q, m, metric)
    groups = groups.detach().cpu().long()
    out = torch.full((d.shape[0], n_groups), float("nan"), dtype=torch.float64)
    qg = query_groups.detach().cpu().long() if query_groups is not None else None
    for g in torch.unique(groups).tolist():
        dg = d[:, groups == g].clone()
        if exclude_self:
            dg[qg == g] = math.inf
        v = dg.min(dim=1).values
        v[torch.isinf(v)] = float("nan")
        out[:, g] = v
    if metric == "l2":
        out = out.sqrt()
    return out


def assert_close_distances(out, ref, q, m, metric, precision):
    """Compares in squared space for l2 (sqrt amplifies round-off near 0)."""
    assert out.device.type == "cuda", "the CUDA path did not run"
    assert out.dtype == torch.float32
    assert out.shape == ref.shape
    got = out.detach().double().cpu()
    exp = ref.clone()
    nan_got, nan_exp = torch.isnan(got), torch.isnan(exp)
    assert torch.equal(nan_got, nan_exp), "NaN pattern differs from the reference"
    assert (got[~nan_got] >= 0).all(), "distances must be clamped at 0"
    if metric == "cosine":
        scale = 1.0
    else:
        qd, md = q.detach().double().cpu(), m.detach().double().cpu()
        scale = float((qd * qd).sum(1).max() + (md * md).sum(1).max())
        if metric == "l2":
            got, exp = got * got, exp * exp
    tol = TOL[precision]
    diff = (got - exp).abs()[~nan_exp]
    worst = float(diff.max()) if diff.numel() else 0.0
    assert worst <= tol * scale, f"max abs error {worst:.3g} > {tol:g} x scale {scale:.3g}"


def contiguous_groups(nm, n_groups, gen):
    """Sorted group ids (each group a run of rows), every group non-empty when nm >= G."""
    cuts = torch.sort(torch.randperm(max(nm - 1, 1), generator=gen)[: n_groups - 1] + 1).values
    g = torch.zeros(nm, dtype=torch.int64)
    for c in cuts.tolist():
        g[c:] += 1
    return g


def make(nq, nm, d, n_groups, *, seed=0, dtype=torch.float32, groups="contiguous"):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(nq, d, generator=gen)
    m = torch.randn(nm, d, generator=gen)
    # Near-duplicates so that small distances (cancellation) are exercised too.
    k = min(nq, nm) // 3
    if k:
        q[:k] = m[:k] + 0.05 * torch.randn(k, d, generator=gen)
    if groups == "contiguous":
        g = contiguous_groups(nm, n_groups, gen)
    elif groups == "random":
        g = torch.randint(0, n_groups, (nm,), generator=gen)
    elif groups == "permuted_blocks":  # contiguous runs, in shuffled group order
        g = contiguous_groups(nm, n_groups, gen)
        perm = torch.randperm(n_groups, generator=gen)
        g = perm[g]
    else:
        raise ValueError(groups)
    return q.to(dtype).to(DEV), m.to(dtype).to(DEV), g.to(DEV)


# ---------------------------------------------------------------------------------------------
def test_build_has_cuda():
    info = meds.build_info()
    assert info["cuda"] is True, "a CUDA device is visible but meds was built without CUDA"
    assert info.get("cuda_device_count", 1) >= 1


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d", [1, 3, 17, 128, 130, 768])
def test_fp32_matches_reference_and_cpu(metric, d):
    q, m, g = make(37, 301, d, 6, seed=d)
    out = meds.group_min_distance(q, m, g, 6, metric=metric, precision="fp32")
    assert_close_distances(out, ref_group_min(q, m, g, 6, metric), q, m, metric, "fp32")
    cpu = meds.group_min_distance(q.cpu(), m.cpu(), g.cpu(), 6, metric=metric)
    assert cpu.device.type == "cpu"
    got, want = out.cpu(), cpu
    if metric == "l2":  # compare squared: sqrt turns a 1e-7 round-off next to 0 into 3e-4
        got, want = got * got, want * want
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * max(1.0, d / 8), equal_nan=True)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
@pytest.mark.parametrize("d", [3, 17, 128, 768])
def test_tensor_core_precisions_fp32_inputs(metric, precision, d, tc_path):
    q, m, g = make(300, 517, d, 5, seed=100 + d)
    out = meds.group_min_distance(q, m, g, 5, metric=metric, precision=precision)
    assert_kernel(precision, tc_path)
    assert_close_distances(out, ref_group_min(q, m, g, 5, metric), q, m, metric, precision)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("precision", ["fp32", "tf32", "native"])
@pytest.mark.parametrize("metric", METRICS)
def test_16bit_inputs(dtype, precision, metric, tc_path):
    if precision == "native":
        precision = "fp16" if dtype == torch.float16 else "bf16"
    skip_fp32_twice(precision, tc_path)
    q, m, g = make(260, 390, 130, 4, seed=7, dtype=dtype)
    out = meds.group_min_distance(q, m, g, 4, metric=metric, precision=precision)
    assert_kernel(precision, tc_path)
    # The inputs are exact in every precision here: products of 16-bit values are exact in
    # fp32, so the reference on the 16-bit values themselves must match to fp32 round-off.
    assert_close_distances(out, ref_group_min(q, m, g, 4, metric), q, m, metric, "tf32")


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
@pytest.mark.parametrize(
    "nq,nm", [(1, 1), (1, 300), (255, 129), (256, 128), (257, 127), (513, 1), (129, 1025)]
)
def test_tails(precision, nq, nm, tc_path):
    skip_fp32_twice(precision, tc_path)
    q, m, g = make(nq, nm, 33, 1, seed=nq + nm)
    for metric in ("cosine", "sqeuclidean"):
        out = meds.group_min_distance(q, m, g, 1, metric=metric, precision=precision)
        assert_kernel(precision, tc_path)
        assert out.shape == (nq, 1)
        assert_close_distances(out, ref_group_min(q, m, g, 1, metric), q, m, metric, precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["random", "permuted_blocks", "one_row_per_group"])
def test_unsorted_groups(precision, layout, tc_path):
    skip_fp32_twice(precision, tc_path)
    if layout == "one_row_per_group":
        q, m, _ = make(70, 400, 64, 1, seed=3)
        g = torch.randperm(400, generator=torch.Generator().manual_seed(1)).to(DEV)
        n_groups = 400
    else:
        n_groups = 23
        q, m, g = make(70, 1500, 64, n_groups, seed=4, groups=layout)
    for metric in METRICS:
        out = meds.group_min_distance(q, m, g, n_groups, metric=metric, precision=precision)
        assert_kernel(precision, tc_path)
        ref = ref_group_min(q, m, g, n_groups, metric)
        assert_close_distances(out, ref, q, m, metric, precision)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_exclude_self(precision, tc_path):
    skip_fp32_twice(precision, tc_path)
    # Queries are the memory rows themselves (a leave-one-out search), groups of ~784 rows.
    gen = torch.Generator().manual_seed(5)
    n_img, per = 6, 100
    m = torch.randn(n_img * per, 48, generator=gen).to(DEV)
    g = torch.arange(n_img).repeat_interleave(per).to(DEV)
    q, qg = m[::7].clone(), g[::7].clone()
    for metric in METRICS:
        out = meds.group_min_distance(
            q, m, g, n_img, metric=metric, query_groups=qg, exclude_self=True, precision=precision
        )
        assert_kernel(precision, tc_path)
        ref = ref_group_min(q, m, g, n_img, metric, qg, True)
        assert torch.isnan(out[torch.arange(len(qg), device=DEV), qg]).all()
        assert_close_distances(out, ref, q, m, metric, precision)
        # Without exclusion each query finds itself in its own group: distance ~0.
        own = meds.group_min_distance(q, m, g, n_img, metric=metric, precision=precision)
        self_d = own[torch.arange(len(qg), device=DEV), qg]
        assert float(self_d.max()) <= 1e-3 * (1 if metric == "cosine" else 100)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_patch_groups_typical_layout(precision, tc_path):
    skip_fp32_twice(precision, tc_path)
    # The normal case: a group is one image's 784 patches, contiguous; tiles mostly hold one
    # group (fast epilogue) and some straddle two (general epilogue).
    gen = torch.Generator().manual_seed(21)
    n_img, per, d = 9, 784, 96
    m = torch.randn(n_img * per, d, generator=gen)
    q = torch.cat([m[::37] + 0.1 * torch.randn(m[::37].shape, generator=gen), torch.randn(300, d, generator=gen)])
    q, m = q.to(DEV), m.to(DEV)
    g = torch.arange(n_img).repeat_interleave(per).to(DEV)
    for metric in METRICS:
        out = meds.group_min_distance(q, m, g, n_img, metric=metric, precision=precision)
        assert_kernel(precision, tc_path)
        assert_close_distances(out, ref_group_min(q, m, g, n_img, metric), q, m, metric, precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_empty_groups_give_nan(precision, tc_path):
    skip_fp32_twice(precision, tc_path)
    q, m, g = make(20, 90, 16, 3, seed=9)
    out = meds.group_min_distance(q, m, g * 2, 7, precision=precision)
    assert_kernel(precision, tc_path)  # groups 0, 2, 4 only
    assert torch.isnan(out[:, [1, 3, 5, 6]]).all()
    assert not torch.isnan(out[:, [0, 2, 4]]).any()
    assert_close_distances(out, ref_group_min(q, m, g * 2, 7, "cosine"), q, m, "cosine", precision)


def test_zero_vectors_cosine():
    q, m, g = make(10, 40, 8, 2, seed=11)
    q[0] = 0
    m[g == 1] = 0
    out = meds.group_min_distance(q, m, g, 2, metric="cosine")
    assert torch.allclose(out[0], torch.ones(2, device=DEV))
    assert torch.allclose(out[:, 1], torch.ones(10, device=DEV))


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_and_unaligned_rows(precision, dtype, tc_path):
    if dtype == torch.bfloat16 and precision == "fp16":
        pytest.skip("bfloat16 inputs refuse fp16 precision")
    skip_fp32_twice(precision, tc_path)
    gen = torch.Generator().manual_seed(12)
    d = 40
    qb = torch.randn(50, 3 * d + 5, generator=gen).to(dtype).to(DEV)
    qa = torch.randn(50, 64, generator=gen).to(dtype).to(DEV)
    mb = torch.randn(2 * 333, d + 8, generator=gen).to(dtype).to(DEV)
    cases = [
        (qb[:, :d], mb[::2, :d]),  # odd row stride (125); 16-byte-multiple stride (96)
        (qb[:, 1 : d + 1], mb[1::2, 3 : d + 3]),  # data pointers not 16-byte aligned
        (qa[:, 8 : d + 8], mb[::2, 8 : d + 8]),  # aligned pointers, strided rows
    ]
    g = contiguous_groups(333, 4, gen).to(DEV)
    for q, m in cases:
        assert not q.is_contiguous()
        for metric in METRICS:
            out = meds.group_min_distance(q, m, g, 4, metric=metric, precision=precision)
            assert_kernel(precision, tc_path)
            ref = ref_group_min(q, m, g, 4, metric)
            p = precision if dtype == torch.float32 else "tf32"
            assert_close_distances(out, ref, q, m, metric, p)


def raw_kwargs(q, m, g, n_groups, out, stream, precision="fp32", metric="sqeuclidean"):
    """Keyword arguments of a direct meds._C.group_min_distance call (no Python checks)."""
    codes = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
    return dict(queries=q.data_ptr(), nq=q.shape[0], query_row_stride=q.stride(0), memory=m.data_ptr(),
                nm=m.shape[0], memory_row_stride=m.stride(0), d=q.shape[1], dtype=codes[q.dtype],
                groups=g.data_ptr(), n_groups=n_groups, query_groups=0, exclude_self=False,
                metric={"cosine": 0, "l2": 1, "sqeuclidean": 2}[metric],
                precision={"fp32": 0, "tf32": 1, "bf16": 2, "fp16": 3}[precision], out=out.data_ptr(),
                device=q.device.index, stream=stream, num_threads=0)


def capture_and_replay(call, out, warm_up=None):
    """Captures `call(stream)` into a CUDA graph on a side stream and replays it into `out`.

    Capture fails on a launch or a synchronous call on any other stream, and work queued
    elsewhere is not in the graph: `out` is overwritten between capture and replay, so only
    what the graph does is seen. `warm_up(stream)` (default: `call`) runs first, outside the
    capture, so that the kernels are loaded."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        (warm_up or call)(s.cuda_stream)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=s):
        call(s.cuda_stream)
    out.fill_(-1.0)
    graph.replay()
    torch.cuda.synchronize()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_runs_on_the_callers_stream(precision, tc_path):
    skip_fp32_twice(precision, tc_path)
    q, m, g = make(300, 2000, 128, 8, seed=13)
    if precision == "bf16":
        q, m = q.to(torch.bfloat16), m.to(torch.bfloat16)
    out = torch.empty(300, 8, device=DEV)
    capture_and_replay(lambda st: _C.group_min_distance(**raw_kwargs(q, m, g, 8, out, st, precision)), out)
    assert_kernel(precision, tc_path)
    assert_close_distances(out, ref_group_min(q, m, g, 8, "sqeuclidean"), q, m, "sqeuclidean", precision)


@pytest.mark.parametrize("bad_id", [-1, 8, 2**40])
def test_cpp_gate_rejects_group_ids_out_of_range(bad_id):
    """A direct call of the extension (no Python checks) with an out-of-range group id is a
    ValueError naming 'groups', the id and its first index; nothing is written."""
    q, m, g = make(300, 2000, 16, 8, seed=43)
    g[[1234, 1500]] = bad_id
    buf = torch.full((302, 8), 7.0, device=DEV)  # the output with a guard row on either side
    out = buf[1:-1]
    pattern = rf"argument 'groups' must be ids in \[0, 8\), got {bad_id} at index 1234"
    with pytest.raises(ValueError, match=pattern):
        _C.group_min_distance(**raw_kwargs(q, m, g, 8, out, torch.cuda.current_stream().cuda_stream))
    torch.cuda.synchronize()
    assert (buf == 7.0).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_out_of_range_ids_are_never_written_under_graph_capture(precision, tc_path):
    """During stream capture the ids cannot be read back, so the gate cannot raise; the
    kernels skip out-of-range ids instead (a whole tile of them, and scattered ones)."""
    skip_fp32_twice(precision, tc_path)
    q, m, g = make(300, 2000, 32, 8, seed=44)
    if precision == "bf16":
        q, m = q.to(torch.bfloat16), m.to(torch.bfloat16)
    bad = g.clone()
    bad[256:512] = 8
    bad[[3, 700, 1999]] = -1
    keep = (bad >= 0) & (bad < 8)
    buf = torch.full((302, 8), 7.0, device=DEV)
    out = buf[1:-1]
    with pytest.raises(ValueError, match="'groups'"):  # outside capture the gate refuses them
        _C.group_min_distance(**raw_kwargs(q, m, bad, 8, out, torch.cuda.current_stream().cuda_stream))
    capture_and_replay(lambda st: _C.group_min_distance(**raw_kwargs(q, m, bad, 8, out, st, precision)), out,
                       warm_up=lambda st: _C.group_min_distance(**raw_kwargs(q, m, g, 8, out, st, precision)))
    assert_kernel(precision, tc_path)
    assert (buf[0] == 7.0).all() and (buf[-1] == 7.0).all()
    ref = ref_group_min(q, m[keep], bad[keep], 8, "sqeuclidean")
    assert_close_distances(out, ref, q, m, "sqeuclidean", precision)


def test_other_device_ordinal():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    q, m, g = make(40, 300, 16, 3, seed=14)
    q1, m1, g1 = q.to("cuda:1"), m.to("cuda:1"), g.to("cuda:1")
    out = meds.group_min_distance(q1, m1, g1, 3)
    assert out.device == torch.device("cuda:1")
    assert torch.cuda.current_device() == 0
    torch.testing.assert_close(out.cpu(), meds.group_min_distance(q, m, g, 3).cpu(), equal_nan=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_ensemble_distance_on_cuda(precision, reduce, tc_path):
    skip_fp32_twice(precision, tc_path)
    n_img, per = 12, 50
    gen = torch.Generator().manual_seed(15)
    m = torch.randn(n_img * per, 32, generator=gen).to(DEV)
    g = torch.arange(n_img).repeat_interleave(per).to(DEV)
    q, qg = m[::5].clone(), g[::5].clone()
    banks = torch.as_tensor(np.asarray(meds.sample_banks(n_img, n_banks=9, ratio=0.25, seed=3)))
    banks = banks.to(torch.int64).to(DEV)
    out = meds.ensemble_distance(
        q, m, g, banks, query_groups=qg, exclude_self=True, reduce=reduce, precision=precision
    )
    assert_kernel(precision, tc_path)
    assert out.device.type == "cuda"
    gm = ref_group_min(q, m, g, n_img, "cosine", qg, True)  # (nq, G)
    per_bank = torch.stack(
        [
            torch.where(torch.isnan(gm[:, b]), torch.full_like(gm[:, b], math.inf), gm[:, b]).min(1).values
            for b in banks.cpu()
        ],
        dim=1,
    )
    per_bank[torch.isinf(per_bank)] = float("nan")
    tol = TOL[precision]
    if reduce == "none":
        assert out.shape == per_bank.shape
        exp = per_bank
    else:
        assert out.shape == (q.shape[0],)
        exp = torch.nanmean(per_bank, dim=1)
    got = out.double().cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(exp))
    ok = ~torch.isnan(exp)
    assert float((got[ok] - exp[ok]).abs().max()) <= tol
    cpu = meds.ensemble_distance(
        q.cpu(), m.cpu(), g.cpu(), banks.cpu(), query_groups=qg.cpu(), exclude_self=True, reduce=reduce
    )
    torch.testing.assert_close(got.float(), cpu, atol=max(tol, 1e-5), rtol=0, equal_nan=True)


_MANY_TILES_CACHE = {}


def _many_tiles_case(layout):
    """Inputs and float64 references (computed once, shared by precisions and kernels)."""
    if layout not in _MANY_TILES_CACHE:
        gen = torch.Generator().manual_seed(31)
        nq, nm, d, n_groups = 1100, 16000, 200, 24
        m = torch.randn(nm, d, generator=gen)
        q = torch.cat([m[:: nm // 500][:500] + 0.05 * torch.randn(500, d, generator=gen),
                       torch.randn(nq - 500, d, generator=gen)])
        if layout == "contiguous":
            g = contiguous_groups(nm, n_groups, gen)
        else:
            g = torch.randint(0, n_groups, (nm,), generator=gen)
        qg = torch.randint(0, n_groups, (nq,), generator=gen)
        refs = {}
        for metric in ("cosine", "sqeuclidean"):
            for excl in (False, True):
                refs[metric, excl] = ref_group_min(q, m, g, n_groups, metric, qg if excl else None, excl)
        _MANY_TILES_CACHE[layout] = (q, m, g, qg, n_groups, refs)
    return _MANY_TILES_CACHE[layout]


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "random"])
def test_many_tiles_per_cta(precision, layout, tc_path):
    # 9 x 63 = 567 output tiles of the wgmma kernel (128 x 256), so every persistent CTA of an
    # H200 (132 SMs) runs 4-5 of them: the pipeline phases wrap across tiles, the column info
    # is double-buffered and prefetched one tile ahead. K = 200 -> 7 (tf32) / 4 (bf16) stages
    # of 128 bytes, the last one partial; nq and nm are not multiples of the tile. "contiguous"
    # groups (runs of ~670 rows) mix one- and two-group tiles, "random" takes the general
    # epilogue everywhere.
    q, m, g, qg, n_groups, refs = _many_tiles_case(layout)
    q, m, g, qg = q.to(DEV), m.to(DEV), g.to(DEV), qg.to(DEV)
    for (metric, excl), ref in refs.items():
        out = meds.group_min_distance(q, m, g, n_groups, metric=metric, precision=precision,
                                      query_groups=qg if excl else None, exclude_self=excl)
        assert_kernel(precision, tc_path)
        assert_close_distances(out, ref, q, m, metric, precision)


def test_wgmma_kernel_runs_on_hopper(monkeypatch):
    """On a cc 9.0 device with an sm_90a build, the default (auto) must use the wgmma kernel."""
    major, minor = torch.cuda.get_device_capability()
    info = meds.build_info()
    if (major, minor) != (9, 0) or not info.get("cuda_sm90a"):
        pytest.skip(f"needs a cc 9.0 device and an sm_90a build (cc {major}.{minor}, "
                    f"archs {info.get('cuda_archs')})")
    assert wgmma_status() == "ok", f"sm_90a build on a cc 9.0 device but: {wgmma_status()}"
    q, m, g = make(300, 1000, 128, 3, seed=41, dtype=torch.bfloat16)
    for env, want in ((None, "wgmma"), ("auto", "wgmma"), ("wgmma", "wgmma"), ("mma", "mma")):
        if env is None:
            monkeypatch.delenv("MEDS_CUDA_TC", raising=False)
        else:
            monkeypatch.setenv("MEDS_CUDA_TC", env)
        for precision in ("tf32", "bf16", "fp16"):
            qq, mm = (q.float(), m.float()) if precision == "tf32" else (q, m)
            if precision == "fp16":
                qq, mm = q.half(), m.half()
            meds.group_min_distance(qq, mm, g, 3, precision=precision)
            assert _C.cuda_last_kernel() == want, (env, precision)


def test_wgmma_request_fails_where_unavailable(monkeypatch):
    """MEDS_CUDA_TC=wgmma asks for the wgmma kernel: where it cannot run, a tensor-core call
    fails (no silent fallback) and build_info() does not report the setting."""
    if wgmma_status() == "ok":
        pytest.skip("the wgmma kernel is available here")
    monkeypatch.setenv("MEDS_CUDA_TC", "wgmma")
    q, m, g = make(50, 300, 32, 2, seed=42)
    for precision in ("tf32", "bf16"):
        with pytest.raises(RuntimeError, match="MEDS_CUDA_TC=wgmma"):
            meds.group_min_distance(q, m, g, 2, precision=precision)
        assert _C.cuda_last_kernel() == "none"
    # fp32 runs the SIMT kernel whatever MEDS_CUDA_TC says.
    out = meds.group_min_distance(q, m, g, 2)
    assert _C.cuda_last_kernel() == "simt"
    assert_close_distances(out, ref_group_min(q, m, g, 2, "cosine"), q, m, "cosine", "fp32")
    if torch.cuda.device_count() == 1:
        info = meds.build_info()
        assert info["cuda_tc"] is None and wgmma_status() in info["cuda_tc_error"]


def test_bad_tc_env_raises(monkeypatch):
    monkeypatch.setenv("MEDS_CUDA_TC", "wgmm")
    q, m, g = make(5, 20, 4, 2)
    with pytest.raises(ValueError, match="MEDS_CUDA_TC"):
        meds.group_min_distance(q, m, g, 2, precision="bf16")


def test_numpy_inputs_stay_on_cpu_and_cuda_inputs_stay_on_cuda():
    q, m, g = make(10, 50, 8, 2, seed=16)
    out = meds.group_min_distance(q, m, g, 2)
    assert isinstance(out, torch.Tensor) and out.device.type == "cuda"
    out_np = meds.group_min_distance(q.cpu().numpy(), m.cpu().numpy(), g.cpu().numpy(), 2)
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out.cpu().numpy(), out_np, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Errors.
def test_float64_cuda_raises_type_error():
    q, m, g = make(5, 20, 4, 2)
    with pytest.raises(TypeError):
        meds.group_min_distance(q.double(), m.double(), g, 2)


@pytest.mark.parametrize("which", ["queries", "memory", "groups"])
def test_mixed_devices_raise_type_error_naming_the_argument(which):
    q, m, g = make(5, 20, 4, 2)
    args = {"queries": q, "memory": m, "groups": g}
    args[which] = args[which].cpu()
    # With the queries moved, the odd one out may be reported as memory (devices follow queries).
    pattern = "queries|memory" if which == "queries" else which
    with pytest.raises(TypeError, match=pattern):
        meds.group_min_distance(args["queries"], args["memory"], args["groups"], 2)


# ---------------------------------------------------------------------------------------------
# 64-bit sizes (big; a few hundred MB to ~10 GB of device memory).
@pytest.mark.slow
def test_more_than_2_31_distances():
    nq, nm, d = 65539, 32771, 8  # nq * nm ~ 2.15e9 > 2^31
    gen = torch.Generator(device=DEV).manual_seed(17)
    q = torch.randn(nq, d, device=DEV, generator=gen)
    m = torch.randn(nm, d, device=DEV, generator=gen)
    g = torch.arange(nm, device=DEV) // 7
    n_groups = int(g.max()) + 1
    out = meds.group_min_distance(q, m, g, n_groups, metric="sqeuclidean")
    # Check a sample of rows (first, last, random) against float64 brute force.
    rows = torch.cat([torch.arange(3), torch.arange(nq - 3, nq), torch.randint(0, nq, (10,))]).to(DEV)
    ref = ref_group_min(q[rows], m, g, n_groups, "sqeuclidean")
    assert_close_distances(out[rows], ref, q[rows], m, "sqeuclidean", "fp32")


@pytest.mark.slow
def test_output_larger_than_2_31_entries():
    nq, n_groups, d = 70000, 32768, 4  # nq * n_groups ~ 2.29e9 entries (9.2 GB)
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip("needs ~12 GB of free device memory")
    gen = torch.Generator(device=DEV).manual_seed(18)
    q = torch.randn(nq, d, device=DEV, generator=gen)
    m = torch.randn(n_groups, d, device=DEV, generator=gen)
    g = torch.arange(n_groups, device=DEV)
    out = meds.group_min_distance(q, m, g, n_groups, metric="sqeuclidean")
    rows = torch.tensor([0, 1, nq // 2, nq - 2, nq - 1], device=DEV)
    ref = ref_group_min(q[rows], m, g, n_groups, "sqeuclidean")
    assert_close_distances(out[rows], ref, q[rows], m, "sqeuclidean", "fp32")
    del out
