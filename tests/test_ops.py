"""meds.kernels.ops against plain float64 numpy references (CPU paths; CUDA lives in test_ops_cuda.py)."""

import itertools
import math
import warnings

import numpy as np
import pytest

import torch

from meds import _C  # noqa: F401  (a missing build fails here, it is never skipped)
from meds.kernels import ops

METRICS = ("cosine", "l2", "sqeuclidean")


# ---------------------------------------------------------------------------------------
# Plain references.


def ref_distances(q, m, metric):
    """Full (Nq, Nm) float64 distance matrix."""
    q = np.asarray(q, np.float64)
    m = np.asarray(m, np.float64)
    if metric == "cosine":
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        mn = np.linalg.norm(m, axis=1, keepdims=True)
        qu = np.divide(q, qn, out=np.zeros_like(q), where=qn > 0)
        mu = np.divide(m, mn, out=np.zeros_like(m), where=mn > 0)
        return 1.0 - qu @ mu.T
    sq = ((q[:, None, :] - m[None, :, :]) ** 2).sum(-1)
    return np.sqrt(sq) if metric == "l2" else sq


def ref_group_min(q, m, groups, n_groups, metric, query_groups=None, exclude_self=False):
    dist = ref_distances(q, m, metric)
    groups = np.asarray(groups)
    out = np.full((dist.shape[0], n_groups), np.nan)
    for i in range(dist.shape[0]):
        for g in range(n_groups):
            if exclude_self and query_groups[i] == g:
                continue
            cols = dist[i, groups == g]
            if cols.size:
                out[i, g] = cols.min()
    return out


def ref_ensemble(gm, banks, reduce):
    """banks: list of arrays of group ids (one per bank)."""
    per = np.full((gm.shape[0], len(banks)), np.nan)
    for b, ids in enumerate(banks):
        for i in range(gm.shape[0]):
            vals = [gm[i, g] for g in ids if not np.isnan(gm[i, g])]
            if vals:
                per[i, b] = min(vals)
    if reduce == "none":
        return per
    out = np.full(gm.shape[0], np.nan)
    for i in range(gm.shape[0]):
        vals = per[i][~np.isnan(per[i])]
        if vals.size:
            out[i] = vals.mean()
    return out


def assert_matches(out, ref, metric, q, m):
    out = np.asarray(out, np.float64)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    ok = ~np.isnan(ref)
    if metric == "cosine":
        np.testing.assert_allclose(out[ok], ref[ok], rtol=0, atol=2e-5)
    else:
        # |q|^2 + |m|^2 - 2 q.m in float32: error relative to the squared norms; compare
        # squares for l2 (sqrt amplifies the round-off of near-zero distances).
        scale = float((np.asarray(q, np.float64) ** 2).sum(1).max(initial=0)
                      + (np.asarray(m, np.float64) ** 2).sum(1).max(initial=0)) + 1.0
        o, r = (out[ok] ** 2, ref[ok] ** 2) if metric == "l2" else (out[ok], ref[ok])
        np.testing.assert_allclose(o, r, rtol=0, atol=2e-6 * scale)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------
# group_min_distance


SHAPES = [  # (nq, nm, d, G)
    (1, 1, 1, 1),
    (1, 50, 3, 4),
    (7, 5, 3, 2),
    (33, 100, 17, 5),
    (70, 301, 130, 13),
    (10, 2000, 64, 7),  # few queries, many rows: memory split across threads
    (200, 150, 20, 1),  # query split, one group
]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_group_min_random_groups(metric, shape):
    nq, nm, d, G = shape
    rng = np.random.default_rng(100 * METRICS.index(metric) + SHAPES.index(shape))  # fixed per case
    q, m = rand(rng, nq, d), rand(rng, nm, d)
    groups = rng.integers(0, G, nm)  # unsorted
    out = ops.group_min_distance(q, m, groups, G, metric=metric)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert_matches(out, ref_group_min(q, m, groups, G, metric), metric, q, m)


@pytest.mark.parametrize("isa", ["native", "avx2", "portable"])
@pytest.mark.parametrize("metric", METRICS)
def test_group_min_contiguous_runs_all_kernels(monkeypatch, isa, metric):
    # Runs of random length, so group changes fall inside and across micro-panels, and
    # small cache blocks (env knobs of the CPU kernel), so every blocking loop turns.
    if isa != "native":
        monkeypatch.setenv("MEDS_CPU_SIMD", isa)
    monkeypatch.setenv("MEDS_CPU_THREAD_FLOPS", "1")  # use every thread even for tiny data
    rng = np.random.default_rng(1)
    nq, d, G = 97, 19, 23
    lengths = rng.integers(1, 40, G)
    groups = np.repeat(rng.permutation(G), lengths)
    nm = groups.size
    q, m = rand(rng, nq, d), rand(rng, nm, d)
    ref = ref_group_min(q, m, groups, G, metric)
    out = ops.group_min_distance(q, m, groups, G, metric=metric)
    assert_matches(out, ref, metric, q, m)
    for split in ("queries", "memory"):  # how the threads share the work
        monkeypatch.setenv("MEDS_CPU_SPLIT", split)
        assert_matches(ops.group_min_distance(q, m, groups, G, metric=metric), ref, metric, q, m)
    for knob in ("MEDS_CPU_MC_BYTES", "MEDS_CPU_NC_BYTES", "MEDS_CPU_SB_BYTES"):
        monkeypatch.setenv(knob, "1")
    for split in ("queries", "memory"):
        monkeypatch.setenv("MEDS_CPU_SPLIT", split)
        assert_matches(ops.group_min_distance(q, m, groups, G, metric=metric), ref, metric, q, m)
    assert ops.build_info()["simd_selected"] in ops.build_info()["simd_compiled"]


def test_simd_override_is_reported(monkeypatch):
    monkeypatch.setenv("MEDS_CPU_SIMD", "portable")
    assert ops.build_info()["simd_selected"] == "portable"


@pytest.mark.parametrize("metric", METRICS)
def test_group_min_exclude_self(metric):
    rng = np.random.default_rng(2)
    d, G = 9, 6
    groups = np.sort(rng.integers(0, G, 120))
    m = rand(rng, groups.size, d)
    q = np.concatenate([m[:30], rand(rng, 10, d)])  # self matches at distance 0
    qg = np.concatenate([groups[:30], rng.integers(-1, G, 10)])  # -1 excludes nothing
    ref = ref_group_min(q, m, groups, G, metric, qg, True)
    for split in ("queries", "memory"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEDS_CPU_SPLIT", split)
            mp.setenv("MEDS_CPU_NC_BYTES", "1")
            mp.setenv("MEDS_CPU_THREAD_FLOPS", "1")
            out = ops.group_min_distance(q, m, groups, G, metric=metric, query_groups=qg, exclude_self=True)
        assert_matches(out, ref, metric, q, m)
    rows = np.arange(30)
    assert np.isnan(out[rows, qg[:30]]).all()
    # Without exclude_self the own group is a (near) zero-distance match.
    plain = ops.group_min_distance(q, m, groups, G, metric=metric, query_groups=qg)
    assert np.all(plain[rows, qg[:30]] < 1e-3)


def test_group_min_single_group_excluded_is_nan():
    rng = np.random.default_rng(3)
    q, m = rand(rng, 5, 4), rand(rng, 8, 4)
    out = ops.group_min_distance(q, m, np.zeros(8, int), 1, query_groups=np.zeros(5, int), exclude_self=True)
    assert out.shape == (5, 1) and np.isnan(out).all()


def test_group_min_empty_groups_and_large_ids():
    rng = np.random.default_rng(4)
    G = 5000
    groups = rng.integers(G - 300, G, 250)
    groups[0] = G - 1
    q, m = rand(rng, 33, 8), rand(rng, 250, 8)
    out = ops.group_min_distance(q, m, groups, G, metric="sqeuclidean")
    assert out.shape == (33, G)
    assert np.isnan(out[:, : G - 300]).all()
    assert_matches(out, ref_group_min(q, m, groups, G, "sqeuclidean"), "sqeuclidean", q, m)


def test_group_min_zero_vectors_cosine():
    q = np.zeros((3, 5), np.float32)
    q[1, 0] = 1.0
    m = np.zeros((4, 5), np.float32)
    m[2, 0] = 2.0
    out = ops.group_min_distance(q, m, [0, 0, 1, 1], 2, metric="cosine")
    np.testing.assert_allclose(out, [[1, 1], [1, 0], [1, 1]], atol=1e-6)


def test_group_min_default_n_groups_and_index_dtypes():
    rng = np.random.default_rng(5)
    q, m = rand(rng, 6, 7), rand(rng, 20, 7)
    groups = rng.integers(0, 4, 20)
    groups[3] = 3
    ref = ref_group_min(q, m, groups, 4, "cosine")
    for g in (groups, groups.astype(np.int32), groups.tolist(), groups.astype(np.uint8)):
        out = ops.group_min_distance(q, m, g)
        assert out.shape == (6, 4)
        assert_matches(out, ref, "cosine", q, m)


def test_group_min_empty_sizes():
    rng = np.random.default_rng(6)
    out = ops.group_min_distance(rand(rng, 0, 4), rand(rng, 5, 4), np.zeros(5, int), 2)
    assert out.shape == (0, 2)
    out = ops.group_min_distance(rand(rng, 3, 4), rand(rng, 0, 4), np.zeros(0, int), 2)
    assert out.shape == (3, 2) and np.isnan(out).all()


@pytest.mark.parametrize("metric", METRICS)
def test_group_min_strided_and_transposed_inputs(metric):
    rng = np.random.default_rng(7)
    big_q = rand(rng, 90, 40)
    q = big_q[::3, 5:22]  # strided rows, offset columns
    m = np.asfortranarray(rand(rng, 130, 17))  # column-major: copied to contiguous
    mt = rand(rng, 17, 130).T  # transposed view
    groups = rng.integers(0, 9, 130)
    for mem in (m, mt):
        ref = ref_group_min(q, mem, groups, 9, metric)
        assert_matches(ops.group_min_distance(q, mem, groups, 9, metric=metric), ref, metric, q, mem)
        tq, tm = torch.from_numpy(big_q)[::3, 5:22], torch.from_numpy(np.ascontiguousarray(mem.T)).T
        assert not tq.is_contiguous() and not tm.is_contiguous()
        out = ops.group_min_distance(tq, tm, torch.from_numpy(groups), 9, metric=metric)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert_matches(out.numpy(), ref, metric, q, mem)


def test_numpy_inputs_run_the_torch_path_without_copies():
    """numpy arrays are viewed as tensors (no copy, no warning for read-only ones); only a
    layout torch cannot view (reversed rows) is copied; results come back as numpy."""
    rng = np.random.default_rng(9)
    base = rand(rng, 40, 6)
    strided = base[::2]
    assert ops._from_numpy(strided).data_ptr() == strided.ctypes.data  # a view
    reversed_rows = base[::-1]
    assert ops._from_numpy(reversed_rows).data_ptr() != reversed_rows.ctypes.data  # a copy
    read_only = base.copy()
    read_only.flags.writeable = False
    groups = np.arange(40) % 5
    ref = ops.group_min_distance(base.copy(), base.copy(), groups, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ops.group_min_distance(read_only, read_only, groups, 5)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        np.testing.assert_array_equal(out, ref)
        flipped = ops.group_min_distance(reversed_rows, base, groups, 5)
        np.testing.assert_array_equal(flipped, ref[::-1])
        banks = ops.sample_banks(5, n_banks=7, ratio=0.4, seed=1)
        ens = ops.ensemble_distance(read_only, read_only, groups, banks, reduce="none")
        assert isinstance(ens, np.ndarray) and ens.shape == (40, 7)
        exp = ops.expected_min_distance(ref.astype(np.float64), 2)
        assert isinstance(exp, np.ndarray) and exp.dtype == np.float64


def test_group_min_broadcast_rows():
    # Row stride 0 (an expanded tensor) is a valid layout.
    rng = np.random.default_rng(8)
    row = torch.from_numpy(rand(rng, 1, 6))
    q = row.expand(50, 6)
    m = rand(rng, 30, 6)
    groups = rng.integers(0, 3, 30)
    out = ops.group_min_distance(q, torch.from_numpy(m), torch.from_numpy(groups), 3)
    ref = ref_group_min(q.numpy(), m, groups, 3, "cosine")
    assert_matches(out.numpy(), ref, "cosine", q.numpy(), m)


def test_torch_and_numpy_agree_and_keep_kind():
    rng = np.random.default_rng(9)
    q, m = rand(rng, 50, 12), rand(rng, 90, 12)
    groups = rng.integers(0, 5, 90)
    a = ops.group_min_distance(q, m, groups, 5)
    b = ops.group_min_distance(torch.from_numpy(q), torch.from_numpy(m), torch.from_numpy(groups).int(), 5)
    assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor)
    np.testing.assert_array_equal(a, b.numpy())


def test_sizes_are_64_bit(tmp_path):
    """A row offset beyond 2^31 elements (8 GiB sparse file, two rows touched)."""
    stride = 2**31 + 16
    d = 8
    try:
        buf = np.memmap(tmp_path / "sparse.bin", dtype=np.float32, mode="w+", shape=(stride + d,))
    except (OSError, ValueError) as exc:  # pragma: no cover - filesystem without sparse files
        pytest.skip(f"cannot map an 8 GiB sparse file: {exc}")
    rng = np.random.default_rng(10)
    rows = rand(rng, 2, d)
    buf[:d] = rows[0]
    buf[stride:stride + d] = rows[1]
    mem = np.lib.stride_tricks.as_strided(buf, shape=(2, d), strides=(stride * 4, 4))
    q = rand(rng, 3, d)
    for metric in METRICS:
        out = ops.group_min_distance(q, mem, [0, 1], 2, metric=metric)
        assert_matches(out, ref_group_min(q, rows, [0, 1], 2, metric), metric, q, rows)
        # Also as the query operand.
        out = ops.group_min_distance(mem, q, [0, 0, 1], 2, metric=metric)
        assert_matches(out, ref_group_min(rows, q, [0, 0, 1], 2, metric), metric, rows, q)
    del buf


# ---------------------------------------------------------------------------------------
# ensemble_distance


def _data(seed, nq=25, G=12, d=10, rows=(1, 9)):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(G), rng.integers(rows[0], rows[1], G))
    rng.shuffle(groups)
    return rng, rand(rng, nq, d), rand(rng, groups.size, d), groups


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_ensemble_id_banks_with_repeats(metric, reduce):
    rng, q, m, groups = _data(11)
    G = 12
    banks = rng.integers(0, G, (7, 4))
    banks[0] = [3, 3, 3, 3]  # repeats
    gm = ref_group_min(q, m, groups, G, metric)
    ref = ref_ensemble(gm, list(banks), reduce)
    out = ops.ensemble_distance(q, m, groups, banks, metric=metric, reduce=reduce)
    assert out.shape == ((25,) if reduce == "mean" else (25, 7))
    assert_matches(out, ref, metric, q, m)


@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_ensemble_mask_banks_torch(reduce):
    rng, q, m, groups = _data(12)
    mask = rng.random((6, 12)) < 0.3
    mask[0] = False
    mask[0, 5] = True
    mask[1] = True
    gm = ref_group_min(q, m, groups, 12, "cosine")
    ref = ref_ensemble(gm, [np.flatnonzero(r) for r in mask], reduce)
    out = ops.ensemble_distance(torch.from_numpy(q), torch.from_numpy(m), torch.from_numpy(groups),
                                torch.from_numpy(mask), reduce=reduce)
    assert isinstance(out, torch.Tensor)
    assert_matches(out.numpy(), ref, "cosine", q, m)
    out_np = ops.ensemble_distance(q, m, groups, mask, reduce=reduce)
    assert_matches(out_np, ref, "cosine", q, m)


def test_ensemble_empty_mask_row_is_nan():
    rng, q, m, groups = _data(13)
    mask = np.zeros((3, 12), bool)
    mask[1, 2] = True
    out = ops.ensemble_distance(q, m, groups, mask, reduce="none")
    assert np.isnan(out[:, 0]).all() and np.isnan(out[:, 2]).all() and not np.isnan(out[:, 1]).any()
    mean = ops.ensemble_distance(q, m, groups, mask)
    np.testing.assert_array_equal(mean, out[:, 1])


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_ensemble_exclude_self_nan_rules(kind):
    rng, q, m, groups = _data(14, G=5)
    qg = np.array([0] * 10 + [1] * 10 + [4] * 5)
    # Bank 0 holds only group 0, bank 1 only {0, 1}: empty for some queries.
    banks = np.array([[0, 0], [0, 1], [2, 4], [3, 3]])
    gm = ref_group_min(q, m, groups, 5, "l2", qg, True)
    ref_none = ref_ensemble(gm, list(banks), "none")
    ref_mean = ref_ensemble(gm, list(banks), "mean")
    assert np.isnan(ref_none[:10, 0]).all() and np.isnan(ref_none[:10, 1]).sum() == 0
    args = (q, m, groups, banks) if kind == "numpy" else tuple(torch.from_numpy(x) for x in (q, m, groups, banks))
    qg_in = qg if kind == "numpy" else torch.from_numpy(qg)
    out_none = ops.ensemble_distance(*args, metric="l2", query_groups=qg_in, exclude_self=True, reduce="none")
    out_mean = ops.ensemble_distance(*args, metric="l2", query_groups=qg_in, exclude_self=True)
    assert_matches(np.asarray(out_none), ref_none, "l2", q, m)
    assert_matches(np.asarray(out_mean), ref_mean, "l2", q, m)
    # Every bank empty for a query -> NaN mean.
    only0 = np.array([[0], [0]])
    out = ops.ensemble_distance(q, m, groups, only0, query_groups=qg, exclude_self=True, n_groups=5)
    assert np.isnan(out[:10]).all() and not np.isnan(out[10:]).any()


def test_ensemble_chunking_is_exact():
    rng, q, m, groups = _data(15, nq=40)
    banks = ops.sample_banks(12, n_banks=9, ratio=0.25, seed=3)
    full = ops.ensemble_distance(q, m, groups, banks, reduce="none")
    for chunk in (1, 3, 7, 40, 100):
        np.testing.assert_array_equal(ops.ensemble_distance(q, m, groups, banks, reduce="none", chunk_size=chunk), full)


@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_reduce_banks_of_group_minima_is_ensemble_distance(reduce):
    """The driver of memory-sharded stage 1 reduces concatenated group minima with it."""
    rng, q, m, groups = _data(17, G=12)
    banks = ops.sample_banks(12, n_banks=9, ratio=0.25, seed=4)
    banks[0] = [2, 2, 2]  # repeats
    mask = np.zeros((2, 12), bool)
    mask[1, 3] = True  # row 0 empty: NaN
    qg = rng.integers(0, 12, q.shape[0])
    for bank_arg, kwargs in ((banks, {}), (mask, {}), (banks, dict(query_groups=qg, exclude_self=True))):
        expected = ops.ensemble_distance(q, m, groups, bank_arg, reduce=reduce, n_groups=12, **kwargs)
        nearest = ops.group_min_distance(q, m, groups, 12, **kwargs)
        np.testing.assert_array_equal(ops.reduce_banks(nearest, bank_arg, reduce=reduce), expected)
    out = ops.reduce_banks(torch.from_numpy(nearest), torch.from_numpy(banks))
    assert isinstance(out, torch.Tensor) and out.shape == (q.shape[0],)
    with pytest.raises(ValueError, match="at least one group column"):
        ops.reduce_banks(np.zeros((3, 0), np.float32), banks)


def test_ensemble_banks_beyond_groups_max():
    # A bank id with no memory rows (an image without rows) is a NaN group, not an error.
    rng, q, m, groups = _data(16, G=4)
    banks = np.array([[5, 5], [0, 5]])
    out = ops.ensemble_distance(q, m, groups, banks, reduce="none")
    gm = ref_group_min(q, m, groups, 6, "cosine")
    assert_matches(out, ref_ensemble(gm, list(banks), "none"), "cosine", q, m)
    assert np.isnan(out[:, 0]).all()


# ---------------------------------------------------------------------------------------
# sample_banks / expected_min_distance


def test_sample_banks_shapes_and_seed():
    b = ops.sample_banks(50, n_banks=100, ratio=0.1, seed=1)
    assert b.shape == (100, 5) and b.dtype == np.int64
    assert b.min() >= 0 and b.max() < 50
    np.testing.assert_array_equal(b, ops.sample_banks(50, n_banks=100, ratio=0.1, seed=1))
    assert not np.array_equal(b, ops.sample_banks(50, n_banks=100, ratio=0.1, seed=2))
    for G, r in [(30, 0.1), (84, 0.1), (7, 0.33), (13, 1.0)]:  # the official ceil(rho * N)
        assert ops.sample_banks(G, n_banks=1, ratio=r).shape[1] == math.ceil(r * G) == ops.bank_size(G, r)
    assert ops.sample_banks(7, n_banks=5, ratio=0.5).shape == (5, 4)
    assert ops.sample_banks(1000, n_banks=2, ratio=1e-6).shape == (2, 1)
    nr = ops.sample_banks(20, n_banks=50, ratio=0.5, replace=False, seed=0)
    assert all(len(set(r)) == 10 for r in nr)
    perm = ops.sample_banks(6, n_banks=3, ratio=1.0, replace=False)
    assert all(sorted(r) == list(range(6)) for r in perm)
    # With replacement, repeats do occur.
    assert any(len(set(r)) < 10 for r in ops.sample_banks(20, n_banks=50, ratio=0.5, seed=0))


def _exact_expectation(row, m, replace):
    vals = row[~np.isnan(row)]
    if vals.size == 0:
        return np.nan
    if replace:
        draws = list(itertools.product(range(vals.size), repeat=m))
    else:
        draws = list(itertools.combinations(range(vals.size), min(m, vals.size)))
    return np.mean([vals[list(t)].min() for t in draws])


@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 7])
def test_expected_min_exact_enumeration(replace, m):
    rng = np.random.default_rng(20 + m)
    gm = rng.random((6, 6)).astype(np.float32)
    gm[1, 2] = gm[1, 4]  # ties
    gm[2, [0, 3]] = np.nan  # excluded groups: left out of G
    gm[3] = np.nan  # nothing eligible
    out = ops.expected_min_distance(gm, m, replace=replace)
    ref = np.array([_exact_expectation(r.astype(np.float64), m, replace) for r in gm])
    np.testing.assert_allclose(out, ref, rtol=1e-6, equal_nan=True)
    out_t = ops.expected_min_distance(torch.from_numpy(gm), m, replace=replace)
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), ref, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("replace", [True, False])
def test_expected_min_matches_monte_carlo(replace):
    rng, q, m, groups = _data(21, nq=8, G=30, d=6)
    gm = ops.group_min_distance(q, m, groups, 30)
    banks = ops.sample_banks(30, n_banks=20000, ratio=0.1, replace=replace, seed=5)
    mc = ops.ensemble_distance(q, m, groups, banks)
    exact = ops.expected_min_distance(gm, banks.shape[1], replace=replace)
    per_bank = ops.ensemble_distance(q, m, groups, banks, reduce="none")
    sem = per_bank.std(1) / math.sqrt(banks.shape[0])
    assert np.all(np.abs(mc - exact) < 5 * sem + 1e-6)


# ---------------------------------------------------------------------------------------
# Errors: type, message naming the argument.


def _err(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert match in str(info.value), str(info.value)
    return str(info.value)


def test_errors_group_min():
    rng = np.random.default_rng(30)
    q, m, g = rand(rng, 4, 5), rand(rng, 6, 5), np.array([0, 1, 0, 1, 2, 2])
    f = ops.group_min_distance
    msg = _err(TypeError, "'queries'", f, q.astype(np.float64), m, g)
    assert "group_min_distance" in msg and "float64" in msg and "float32" in msg
    _err(TypeError, "'memory'", f, q, m.astype(np.float64), g)
    _err(TypeError, "'queries'", f, q.astype(np.int32), m, g)
    _err(TypeError, "'memory'", f, q, torch.from_numpy(m), g)
    _err(TypeError, "'queries'", f, q.tolist(), m, g)
    _err(TypeError, "'queries'", f, torch.from_numpy(q).half(), torch.from_numpy(m).half(), g)
    _err(TypeError, "'groups'", f, q, m, g.astype(np.float32))
    _err(ValueError, "'memory'", f, q, rand(rng, 6, 4), g)
    _err(ValueError, "'queries'", f, q[0], m, g)
    _err(ValueError, "'groups'", f, q, m, g[:5])
    msg = _err(ValueError, "'groups'", f, q, m, g, 2)
    assert "[0, 2)" in msg and "2" in msg
    _err(ValueError, "'groups'", f, q, m, g - 1)
    bad = q.copy()
    bad[1, 2] = np.nan
    _err(ValueError, "'queries'", f, bad, m, g)
    bad = m.copy()
    bad[0, 0] = np.inf
    _err(ValueError, "'memory'", f, q, bad, g)
    _err(ValueError, "'metric'", f, q, m, g, metric="manhattan")
    _err(ValueError, "'precision'", f, q, m, g, precision="tf32")
    _err(ValueError, "'precision'", f, q, m, g, precision="fp64")
    _err(ValueError, "'query_groups'", f, q, m, g, exclude_self=True)
    _err(ValueError, "'query_groups'", f, q, m, g, query_groups=[0, 1], exclude_self=True)
    _err(ValueError, "'n_groups'", f, q, m, g, 0)
    _err(ValueError, "'n_groups'", f, q, m[:0], g[:0])


def test_errors_ensemble_and_helpers():
    rng = np.random.default_rng(31)
    q, m, g = rand(rng, 4, 5), rand(rng, 6, 5), np.array([0, 1, 0, 1, 2, 2])
    f = ops.ensemble_distance
    _err(ValueError, "'banks'", f, q, m, g, np.zeros((0, 2), int))
    _err(ValueError, "'banks'", f, q, m, g, np.zeros((3, 0), int))
    _err(ValueError, "'banks'", f, q, m, g, np.array([[0, -1]]))
    _err(ValueError, "'banks'", f, q, m, g, np.array([[0, 3]]), n_groups=3)
    _err(ValueError, "'banks'", f, q, m, g, np.ones((2, 4), bool), n_groups=3)
    _err(ValueError, "'groups'", f, q, m, g, np.ones((2, 2), bool))  # mask narrower than the ids
    _err(TypeError, "'banks'", f, q, m, g, np.ones((2, 2), np.float32))
    _err(TypeError, "'banks'", f, q, m, g, torch.zeros(2, 2, dtype=torch.int64))
    _err(ValueError, "'banks'", f, q, m, g, np.array([0, 1]))
    _err(ValueError, "'reduce'", f, q, m, g, np.array([[0, 1]]), reduce="max")
    _err(ValueError, "'chunk_size'", f, q, m, g, np.array([[0, 1]]), chunk_size=0)
    _err(TypeError, "'queries'", f, q.astype(np.float64), m, g, np.array([[0, 1]]))
    s = ops.sample_banks
    _err(ValueError, "'ratio'", s, 10, 5, 0.0)
    _err(ValueError, "'ratio'", s, 10, 5, 1.5)
    _err(ValueError, "'n_banks'", s, 10, 0)
    _err(ValueError, "'n_groups'", s, 0)
    e = ops.expected_min_distance
    _err(ValueError, "'bank_size'", e, np.zeros((2, 3), np.float32), 0)
    _err(ValueError, "'group_min'", e, np.zeros(3, np.float32), 1)
    _err(TypeError, "'group_min'", e, np.zeros((2, 3), np.int64), 1)


def test_cpp_errors_are_exceptions_not_aborts():
    rng = np.random.default_rng(32)
    q, m = rand(rng, 3, 4), rand(rng, 5, 4)
    out = np.empty((3, 2), np.float32)
    groups = np.array([0, 1, 2, 0, 1], np.int64)  # 2 is out of range for n_groups = 2
    kw = dict(queries=q.ctypes.data, nq=3, query_row_stride=4, memory=m.ctypes.data, nm=5, memory_row_stride=4,
              d=4, dtype=0, groups=groups.ctypes.data, n_groups=2, query_groups=0, exclude_self=False,
              metric=0, precision=0, out=out.ctypes.data, device=-1, stream=0, num_threads=0)
    with pytest.raises(ValueError, match="groups"):
        _C.group_min_distance(**kw)
    groups[2] = 1
    _C.group_min_distance(**kw)  # valid now
    for key, value, exc, name in [("dtype", 1, TypeError, "queries"), ("precision", 1, ValueError, "precision"),
                                  ("metric", 7, ValueError, "metric"), ("d", 0, ValueError, "queries"),
                                  ("exclude_self", True, ValueError, "query_groups")]:
        with pytest.raises(exc, match=name):
            _C.group_min_distance(**{**kw, key: value})
    if not _C.build_info()["cuda"]:
        with pytest.raises(TypeError, match="CUDA"):
            _C.group_min_distance(**{**kw, "device": 0})


def _raw_kwargs(q, m, groups, n_groups, out, query_groups=None, num_threads=0):
    """Keyword arguments of a direct meds._C.group_min_distance call on CPU numpy arrays."""
    return dict(queries=q.ctypes.data, nq=q.shape[0], query_row_stride=q.shape[1], memory=m.ctypes.data,
                nm=m.shape[0], memory_row_stride=m.shape[1], d=q.shape[1], dtype=0, groups=groups.ctypes.data,
                n_groups=n_groups, query_groups=0 if query_groups is None else query_groups.ctypes.data,
                exclude_self=query_groups is not None, metric=2, precision=0, out=out.ctypes.data, device=-1,
                stream=0, num_threads=num_threads)


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("bad_id", [-1, 3, 2**40])
def test_cpp_gate_rejects_group_ids_out_of_range(bad_id, num_threads):
    """The C++ gate itself (no Python checks in front): an out-of-range id anywhere in a large
    array (checked by threads) is a ValueError naming 'groups', the id and its first index,
    raised before anything is written."""
    rng = np.random.default_rng(33)
    nm = 70_000
    q, m = rand(rng, 2, 1), rand(rng, nm, 1)
    groups = rng.integers(0, 3, nm).astype(np.int64)
    groups[[40_001, 65_000]] = bad_id
    out = np.full((2, 3), 7.0, np.float32)
    kw = _raw_kwargs(q, m, groups, 3, out, num_threads=num_threads)
    pattern = rf"argument 'groups' must be ids in \[0, 3\), got {bad_id} at index 40001"
    with pytest.raises(ValueError, match=pattern):
        _C.group_min_distance(**kw)
    assert (out == 7.0).all()
    with pytest.raises(ValueError, match=pattern):  # checked even when there is no query
        _C.group_min_distance(**{**kw, "nq": 0})
    groups[[40_001, 65_000]] = 2
    _C.group_min_distance(**kw)
    assert_matches(out, ref_group_min(q, m, groups, 3, "sqeuclidean"), "sqeuclidean", q, m)


def test_cpp_gate_accepts_any_query_group():
    """query_groups are only compared with group ids: one outside [0, G) excludes nothing."""
    rng = np.random.default_rng(34)
    q, m = rand(rng, 3, 4), rand(rng, 6, 4)
    groups = np.array([0, 0, 1, 1, 0, 1], np.int64)
    qg = np.array([-5, 2**40, 1], np.int64)
    out = np.empty((3, 2), np.float32)
    _C.group_min_distance(**_raw_kwargs(q, m, groups, 2, out, query_groups=qg))
    assert_matches(out, ref_group_min(q, m, groups, 2, "sqeuclidean", qg, True), "sqeuclidean", q, m)
    assert np.isnan(out[2, 1]) and not np.isnan(out[:2]).any()


@pytest.mark.parametrize("value,accepted", [(None, "auto"), ("", "auto"), ("auto", "auto"), ("mma", "mma"),
                                            ("wgmm", None), ("WGMMA", None), ("wgmma", "wgmma?")])
def test_build_info_reports_only_accepted_tc_settings(monkeypatch, value, accepted):
    """cuda_tc is the MEDS_CUDA_TC setting the kernels accept; a rejected one is None with the
    reason in cuda_tc_error. wgmma is accepted only where a visible device can run it."""
    if value is None:
        monkeypatch.delenv("MEDS_CUDA_TC", raising=False)
    else:
        monkeypatch.setenv("MEDS_CUDA_TC", value)
    if accepted == "wgmma?":
        runs = any(_C.cuda_wgmma_status(dev) == "ok" for dev in range(_C.cuda_device_count()))
        accepted = "wgmma" if runs else None
    info = ops.build_info()
    assert info["cuda_tc"] == accepted
    if accepted is None:
        assert "MEDS_CUDA_TC" in info["cuda_tc_error"] and value in info["cuda_tc_error"]
    else:
        assert info["cuda_tc_error"] is None


def test_build_info():
    info = ops.build_info()
    for key in ("cuda", "cuda_archs", "openmp", "simd_compiled", "simd_selected", "compiler", "version"):
        assert key in info
    assert info["simd_selected"] in info["simd_compiled"]
    assert "portable" in info["simd_compiled"]
    if not info["cuda"]:
        assert info["cuda_archs"] == []
