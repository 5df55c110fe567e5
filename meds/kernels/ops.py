"""Fused nearest-distance kernels of MeDS: group minima and the memory-ensemble distance.

Memories of MeDS are unions of whole training images ("groups"), so the nearest distance
from a query to a memory ``b`` is the minimum, over the images in ``b``, of the query's
nearest distance to that image. :func:`group_min_distance` computes the ``(Nq, G)`` matrix
of those per-image nearest distances in one GEMM-like pass over all memory rows (the
``Nq x Nm`` distance matrix never exists); :func:`ensemble_distance` reduces it over the
banks; :func:`expected_min_distance` gives the ``B -> infinity`` limit in closed form.

Every function accepts numpy arrays or torch tensors (CPU, or CUDA when the extension was
built with CUDA) and returns the same kind, on the same device: a numpy array is wrapped as a
CPU tensor without a copy (``torch.from_numpy``), the one torch implementation runs, and the
result goes back as a numpy array.

Array rules (all functions):

* ``queries`` / ``memory`` are float32 (CUDA also takes float16 / bfloat16; both arrays
  share one dtype). Nothing is cast from float64 or copied across devices: such input
  raises ``TypeError`` naming the argument.
* Rows may be strided (e.g. a slice ``x[::2]``); an array whose last dimension is not
  contiguous (e.g. a transposed view) is copied to a contiguous one first - the only copy
  made of the float inputs.
* Index arrays (``groups``, ``query_groups``, ``banks``) may be any integer dtype and are
  converted to int64. Tensors must already be on the queries' device; numpy arrays or
  sequences are moved there (they are small).
* Bad input raises at once: wrong dtype/device -> ``TypeError``; bad shape/value (D
  mismatch, group id out of range, NaN/Inf, ...) -> ``ValueError``. Messages name the
  function, the argument, the expected and the actual value.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import numpy as np
import torch

__all__ = [
    "group_min_distance",
    "ensemble_distance",
    "sample_banks",
    "expected_min_distance",
    "reduce_banks",
    "bank_size",
    "build_info",
]

_METRICS = {"cosine": 0, "l2": 1, "sqeuclidean": 2}
_PRECISIONS = {"fp32": 0, "tf32": 1, "bf16": 2, "fp16": 3}
_REDUCE = ("mean", "none")
# Working-memory budget of ensemble_distance / expected_min_distance (bytes).
_DEFAULT_BUDGET = 256 << 20


# --------------------------------------------------------------------------------------
# Helpers: array kinds, the extension, validation.


def _ext():
    try:
        from meds import _C  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - only without a build
        raise ImportError(
            "meds._C (the compiled kernels) is not importable; reinstall meds with "
            "`pip install .` so that the C++ extension is built"
        ) from exc
    return _C


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"torch.Tensor (dtype {x.dtype}, device {x.device}, shape {tuple(x.shape)})"
    if isinstance(x, np.ndarray):
        return f"numpy.ndarray (dtype {x.dtype}, shape {x.shape})"
    return type(x).__name__


def _from_numpy(x: np.ndarray) -> torch.Tensor:
    """A CPU tensor over ``x``'s memory; copied only where torch cannot view it (negative,
    unaligned or not whole-element strides)."""
    if not x.flags.aligned or any(s < 0 or s % x.itemsize for s in x.strides):
        x = np.ascontiguousarray(x)
    with warnings.catch_warnings():  # a read-only array is fine: inputs are never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x)


class _Kind:
    """Array kind (numpy or torch) and device of the call, taken from ``queries``."""

    def __init__(self, x: Any, fn: str, name: str):
        if isinstance(x, torch.Tensor):
            self.is_torch = True
            self.device = x.device
            self.index = -1 if x.device.type == "cpu" else x.device.index
            if x.device.type not in ("cpu", "cuda"):
                raise TypeError(f"{fn}: argument '{name}' must be on the CPU or a CUDA device, got {x.device}")
        elif isinstance(x, np.ndarray):
            self.is_torch = False
            self.device = torch.device("cpu")
            self.index = -1
        else:
            raise TypeError(
                f"{fn}: argument '{name}' must be a numpy.ndarray or a torch.Tensor, got {_describe(x)}"
            )

    @property
    def is_cuda(self) -> bool:
        return self.index >= 0

    def where(self) -> str:
        return f"torch.Tensor on {self.device}" if self.is_torch else "numpy.ndarray"

    def same(self, x: Any) -> bool:
        if self.is_torch:
            return isinstance(x, torch.Tensor) and x.device == self.device
        return isinstance(x, np.ndarray)

    def tensor(self, x: Any) -> torch.Tensor:
        """``x`` (checked to be of this kind) as a tensor."""
        return x if self.is_torch else _from_numpy(x)

    def result(self, t: torch.Tensor):
        """A result in the caller's kind: numpy in -> numpy out (sharing the tensor's memory)."""
        return t if self.is_torch else t.numpy()


def _check_float(x: Any, kind: _Kind, fn: str, name: str) -> None:
    """Kind/device/dtype/ndim checks of a float input (queries, memory)."""
    if not kind.same(x):
        raise TypeError(f"{fn}: argument '{name}' must be a {kind.where()} (like 'queries'), got {_describe(x)}")
    if kind.is_torch:
        allowed = (torch.float32, torch.float16, torch.bfloat16) if kind.is_cuda else (torch.float32,)
        if x.dtype not in allowed:
            exp = "float32, float16 or bfloat16" if kind.is_cuda else "float32 (float16/bfloat16 only on CUDA)"
            raise TypeError(f"{fn}: argument '{name}' must have dtype {exp}, got {x.dtype}")
    elif x.dtype != np.float32:
        raise TypeError(f"{fn}: argument '{name}' must have dtype float32 (nothing is cast implicitly), got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{fn}: argument '{name}' must be 2-D (N, D), got shape {tuple(x.shape)}")


def _check_finite(x: torch.Tensor, fn: str, name: str) -> None:
    """NaN/Inf check in one vectorised pass: a NaN or Inf element always makes the float32
    sum non-finite; only when it is (or when finite values overflowed it) is each element
    tested, to tell the two apart."""
    if x.numel() == 0:
        return
    with torch.no_grad():
        ok = bool(torch.isfinite(x.sum(dtype=torch.float32))) or bool(torch.isfinite(x).all())
    if not ok:
        raise ValueError(f"{fn}: argument '{name}' must contain only finite values, got NaN or Inf")


def _row_layout(x: torch.Tensor):
    """(tensor with a contiguous last dimension, data pointer, row stride in elements)."""
    if x.shape[1] > 1 and x.stride(1) != 1 or x.stride(0) < 0:
        x = x.contiguous()
    return x, x.data_ptr(), int(x.stride(0))


def _check_index_tensor(x: torch.Tensor, kind: _Kind, fn: str, name: str) -> None:
    """An index tensor goes with tensor queries on the same device (numpy queries take numpy ids)."""
    if not kind.is_torch:
        raise TypeError(f"{fn}: argument '{name}' must be a numpy array or sequence like 'queries', got {_describe(x)}")
    if x.device != kind.device:
        raise TypeError(
            f"{fn}: argument '{name}' must be on {kind.device} like 'queries' (nothing is "
            f"copied across devices), got a tensor on {x.device}"
        )


def _index_array(x: Any, kind: _Kind, fn: str, name: str, ndim: int) -> torch.Tensor:
    """An integer index array as a contiguous int64 tensor on the call's device."""
    if isinstance(x, torch.Tensor):
        _check_index_tensor(x, kind, fn, name)
        if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
            raise TypeError(f"{fn}: argument '{name}' must have an integer dtype, got {x.dtype}")
        if x.dtype == torch.uint64:
            _check_int64_range(x.cpu().numpy(), fn, name)
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{fn}: argument '{name}' must have an integer dtype, got {arr.dtype}")
        _check_int64_range(arr, fn, name)
        x = _from_numpy(arr.astype(np.int64, copy=False)).to(kind.device)
    if x.ndim != ndim:
        raise ValueError(f"{fn}: argument '{name}' must be {ndim}-D, got shape {tuple(x.shape)}")
    return x.to(torch.int64).contiguous()


def _check_int64_range(arr: np.ndarray, fn: str, name: str) -> None:
    """uint64 ids past the int64 range would wrap to negative ones in the conversion."""
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{fn}: argument '{name}' must hold ids below 2**63, got {int(arr.max())}")


def _minmax(x: torch.Tensor):
    lo, hi = torch.aminmax(x)
    return int(lo), int(hi)


def _check_int(value: Any, fn: str, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: argument '{name}' must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{fn}: argument '{name}' must be >= {minimum}, got {value}")
    return int(value)


def _check_choice(value: Any, choices, fn: str, name: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{fn}: argument '{name}' must be one of {sorted(choices)}, got {value!r}")


class _Problem:
    """Validated inputs of one group-min computation, ready for the kernel."""

    def __init__(self, fn, queries, memory, groups, n_groups, metric, query_groups, exclude_self,
                 precision, extra_max_id: Optional[int] = None, bound_note: str = ""):
        kind = _Kind(queries, fn, "queries")
        _check_float(queries, kind, fn, "queries")
        _check_float(memory, kind, fn, "memory")
        if memory.dtype != queries.dtype:
            raise TypeError(
                f"{fn}: argument 'memory' must have the dtype of 'queries' ({queries.dtype}), got {memory.dtype}"
            )
        _check_choice(metric, _METRICS, fn, "metric")
        _check_choice(precision, _PRECISIONS, fn, "precision")
        if not kind.is_cuda and precision != "fp32":
            raise ValueError(
                f"{fn}: argument 'precision' must be 'fp32' for CPU inputs (tf32/bf16/fp16 are CUDA "
                f"tensor-core modes), got {precision!r}"
            )
        if not isinstance(exclude_self, (bool, np.bool_)):
            raise TypeError(f"{fn}: argument 'exclude_self' must be a bool, got {type(exclude_self).__name__}")
        nq, d = int(queries.shape[0]), int(queries.shape[1])
        nm, dm = int(memory.shape[0]), int(memory.shape[1])
        if dm != d:
            raise ValueError(
                f"{fn}: argument 'memory' must have the feature dimension of 'queries' (D = {d}), got D = {dm}"
            )
        if d == 0:
            raise ValueError(f"{fn}: argument 'queries' must have D >= 1 features, got D = 0")

        groups = _index_array(groups, kind, fn, "groups", 1)
        if int(groups.shape[0]) != nm:
            raise ValueError(
                f"{fn}: argument 'groups' must have one id per memory row ({nm},), got shape {tuple(groups.shape)}"
            )
        lo, hi = _minmax(groups) if nm > 0 else (0, -1)
        if n_groups is None:
            if nm == 0 and extra_max_id is None:
                raise ValueError(f"{fn}: argument 'n_groups' must be given when 'memory' is empty, got None")
            n_groups = max(hi, -1 if extra_max_id is None else extra_max_id) + 1
        n_groups = _check_int(n_groups, fn, "n_groups", 1)
        if nm > 0 and (lo < 0 or hi >= n_groups):
            bad = lo if lo < 0 else hi
            raise ValueError(f"{fn}: argument 'groups' must hold ids in [0, {n_groups}), got {bad}{bound_note}")

        if exclude_self and query_groups is None:
            raise ValueError(f"{fn}: argument 'query_groups' must be given when exclude_self=True, got None")
        if query_groups is not None:
            query_groups = _index_array(query_groups, kind, fn, "query_groups", 1)
            if int(query_groups.shape[0]) != nq:
                raise ValueError(
                    f"{fn}: argument 'query_groups' must have shape ({nq},) (one id per query), "
                    f"got {tuple(query_groups.shape)}"
                )
        queries, memory = kind.tensor(queries), kind.tensor(memory)
        _check_finite(queries, fn, "queries")
        _check_finite(memory, fn, "memory")

        self.fn, self.kind = fn, kind
        self.queries = queries
        self.memory, self.m_ptr, self.m_stride = _row_layout(memory)
        self.groups = groups
        self.query_groups = query_groups
        self.exclude_self = bool(exclude_self) and query_groups is not None
        self.nq, self.nm, self.d, self.n_groups = nq, nm, d, n_groups
        self.metric, self.precision = metric, precision
        dt = queries.dtype
        self.dtype_code = 0 if dt == torch.float32 else (1 if dt == torch.float16 else 2)

    def run(self, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """(stop - start, G) float32 group minima of the query rows [start, stop)."""
        kind = self.kind
        stop = self.nq if stop is None else stop
        n = stop - start
        q, q_ptr, q_stride = _row_layout(self.queries[start:stop])
        out = torch.empty((n, self.n_groups), dtype=torch.float32, device=kind.device)
        if n == 0:
            return out
        qg_ptr = self.query_groups[start:stop].data_ptr() if self.exclude_self else 0
        stream = int(torch.cuda.current_stream(kind.device).cuda_stream) if kind.is_cuda else 0
        _ext().group_min_distance(
            queries=q_ptr, nq=n, query_row_stride=q_stride,
            memory=self.m_ptr, nm=self.nm, memory_row_stride=self.m_stride, d=self.d,
            dtype=self.dtype_code, groups=self.groups.data_ptr() if self.nm else 0,
            n_groups=self.n_groups, query_groups=qg_ptr, exclude_self=self.exclude_self,
            metric=_METRICS[self.metric], precision=_PRECISIONS[self.precision],
            out=out.data_ptr(), device=kind.index, stream=stream, num_threads=0,
        )
        return out


# --------------------------------------------------------------------------------------
# Public API.


def group_min_distance(queries, memory, groups, n_groups=None, *, metric="cosine", query_groups=None,
                       exclude_self=False, precision="fp32"):
    """Nearest distance from every query to every group of memory rows.

    ``out[q, g] = min over memory rows r with groups[r] == g of dist(queries[q], memory[r])``,
    computed tile by tile (the ``(Nq, Nm)`` distance matrix never exists).

    Args:
        queries: ``(Nq, D)`` float32 (CUDA also float16/bfloat16) numpy array or torch tensor.
        memory: ``(Nm, D)`` same kind, dtype and device as ``queries``.
        groups: ``(Nm,)`` integer group id of each memory row, in ``[0, n_groups)``; any order.
        n_groups: Number of groups ``G``; default ``groups.max() + 1``.
        metric: ``"cosine"`` (1 - cosine similarity; inputs need not be normalised; a zero
            vector has distance 1 to everything), ``"l2"`` or ``"sqeuclidean"``.
        query_groups: ``(Nq,)`` integer group of each query (any value; one outside
            ``[0, G)`` excludes nothing). Used only with ``exclude_self``.
        exclude_self: If True, query ``q`` never matches rows of group ``query_groups[q]``.
        precision: How a CUDA device multiplies: ``"fp32"`` (default), ``"tf32"``, ``"bf16"``
            or ``"fp16"`` (tensor cores, fp32 accumulation). CPU inputs accept only
            ``"fp32"`` (anything else raises ``ValueError``).

    Returns:
        ``(Nq, G)`` float32 of the same kind/device as ``queries``. A group with no eligible
        row is NaN. Distances are clamped at 0.
    """
    prob = _Problem("group_min_distance", queries, memory, groups, n_groups, metric, query_groups,
                    exclude_self, precision)
    return prob.kind.result(prob.run())


def _prepare_banks(banks, kind: _Kind, fn: str, n_groups: Optional[int]):
    """Banks as a ``(B, m)`` int64 id tensor; masks become ids padded with ``G`` (a pad
    column of +inf is appended to the group minima). Returns (ids, G or max id, is_mask)."""
    if isinstance(banks, torch.Tensor):
        _check_index_tensor(banks, kind, fn, "banks")
        is_bool = banks.dtype == torch.bool
        is_int = not is_bool and not banks.is_floating_point() and not banks.is_complex()
        shape = tuple(banks.shape)
    else:
        try:
            banks = np.asarray(banks)
        except ValueError:  # numpy refuses ragged nested sequences
            raise ValueError(f"{fn}: argument 'banks' must be (B, m) ids or a (B, G) bool mask, got rows of "
                             "different lengths") from None
        is_bool = banks.dtype == np.bool_
        is_int = banks.dtype.kind in "iu"
        shape = banks.shape
    if not (is_bool or is_int):
        raise TypeError(f"{fn}: argument 'banks' must be (B, m) integer ids or a (B, G) bool mask, got dtype {banks.dtype}")
    if len(shape) != 2:
        raise ValueError(f"{fn}: argument 'banks' must be 2-D, (B, m) ids or (B, G) mask, got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{fn}: argument 'banks' must hold at least one bank, got shape {shape}")
    if is_bool:
        if n_groups is not None and shape[1] != n_groups:
            raise ValueError(f"{fn}: argument 'banks' (bool mask) must have n_groups = {n_groups} columns, got {shape[1]}")
        g = shape[1]
        if g == 0:
            raise ValueError(f"{fn}: argument 'banks' must cover at least one group, got shape {shape}")
        mask = banks if isinstance(banks, torch.Tensor) else _from_numpy(banks).to(kind.device)
        counts = mask.sum(1)
        width = max(int(counts.max()), 1)
        # Stable sort puts the True columns first, in order; the rest becomes padding.
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
        keep = torch.arange(width, device=kind.device)[None, :] < counts[:, None]
        return torch.where(keep, order, torch.full_like(order, g)), g, True
    ids = _index_array(banks, kind, fn, "banks", 2)
    if shape[1] == 0:
        raise ValueError(f"{fn}: argument 'banks' must hold at least one group per bank, got shape {shape}")
    lo, hi = _minmax(ids)
    if lo < 0 or (n_groups is not None and hi >= n_groups):
        bad = lo if lo < 0 else hi
        upper = n_groups if n_groups is not None else "G"
        raise ValueError(f"{fn}: argument 'banks' must hold group ids in [0, {upper}), got {bad}")
    return ids, hi, False


def _bank_min(gm: torch.Tensor, ids: torch.Tensor, budget: int) -> torch.Tensor:
    """(c, B) min over each bank's groups of gm (c, G); NaN groups ignored, NaN if none."""
    c, g = gm.shape
    n_banks, width = ids.shape
    per_bank = max(1, c * width * 4)
    step = max(1, min(n_banks, budget // per_bank))
    inf = torch.full((c, 1), float("inf"), dtype=gm.dtype, device=gm.device)
    gmi = torch.cat([torch.nan_to_num(gm, nan=float("inf")), inf], dim=1)
    parts = [gmi[:, ids[b0:b0 + step]].amin(dim=2) for b0 in range(0, n_banks, step)]
    out = torch.cat(parts, dim=1)
    return out.masked_fill_(torch.isinf(out), float("nan"))


def _reduce_group_min(gm: torch.Tensor, ids: torch.Tensor, reduce: str) -> torch.Tensor:
    """The bank reduction of (c, G) group minima: (c,) for ``"mean"``, (c, B) for ``"none"``."""
    per_bank = _bank_min(gm, ids, _DEFAULT_BUDGET // 2)
    return _nanmean_rows(per_bank) if reduce == "mean" else per_bank


def _nanmean_rows(x: torch.Tensor) -> torch.Tensor:
    """Mean of the non-NaN entries of every row; NaN where a row has none (no warnings)."""
    valid = ~torch.isnan(x)
    total = torch.where(valid, x, torch.zeros_like(x)).sum(1, dtype=torch.float64)
    count = valid.sum(1)
    mean = total / count.clamp(min=1)
    return mean.masked_fill_(count == 0, float("nan")).to(torch.float32)


def ensemble_distance(queries, memory, groups, banks, *, metric="cosine", query_groups=None, exclude_self=False,
                      reduce="mean", precision="fp32", n_groups=None, chunk_size=None):
    """Nearest distance of every query to each memory bank, averaged over the banks.

    A bank is a set of groups (images); its memory is all rows of those groups. Computed
    exactly as ``group_min_distance`` followed by a min over each bank's groups, in chunks
    of queries, so at most a ``(chunk_size, G)`` block of group minima is held.

    Args:
        queries: ``(Nq, D)`` float32 (CUDA also float16/bfloat16) array or tensor.
        memory: ``(Nm, D)``, same kind, dtype and device.
        groups: ``(Nm,)`` integer group id of each memory row.
        banks: ``(B, m)`` integer group ids (repeats allowed, e.g. from :func:`sample_banks`)
            or a ``(B, G)`` bool mask.
        metric: ``"cosine"``, ``"l2"`` or ``"sqeuclidean"``.
        query_groups: ``(Nq,)`` group of each query (for ``exclude_self``).
        exclude_self: Leave-one-out: a query never matches rows of its own group.
        reduce: ``"mean"`` -> ``(Nq,)``, the mean over the banks that have an eligible row
            (NaN if none has); ``"none"`` -> ``(Nq, B)`` (NaN for a bank with no eligible row).
        precision: See :func:`group_min_distance`.
        n_groups: Number of groups ``G``; default: the mask width, else
            ``max(groups.max(), banks.max()) + 1``.
        chunk_size: Queries per kernel call; default keeps the ``(chunk, G)`` block and its
            reduction within about 256 MiB.

    Returns:
        ``(Nq,)`` or ``(Nq, B)`` float32 of the kind/device of ``queries``.
    """
    fn = "ensemble_distance"
    kind = _Kind(queries, fn, "queries")
    _check_choice(reduce, _REDUCE, fn, "reduce")
    if n_groups is not None:
        n_groups = _check_int(n_groups, fn, "n_groups", 1)
    ids, g_or_max, is_mask = _prepare_banks(banks, kind, fn, n_groups)
    if is_mask:
        n_groups = g_or_max
        extra = None
    else:
        extra = g_or_max
    note = f" (G = {n_groups} is the width of the bool mask 'banks', one column per group)" if is_mask else ""
    prob = _Problem(fn, queries, memory, groups, n_groups, metric, query_groups, exclude_self, precision,
                    extra_max_id=extra, bound_note=note)
    G = prob.n_groups
    if not is_mask and g_or_max >= G:
        raise ValueError(f"{fn}: argument 'banks' must hold group ids in [0, {G}), got {g_or_max}")
    if chunk_size is None:
        chunk_size = max(1, _DEFAULT_BUDGET // (4 * (G + 1) * 3))
    else:
        chunk_size = _check_int(chunk_size, fn, "chunk_size", 1)
    n_banks = int(ids.shape[0])
    nq = prob.nq
    out = torch.empty((nq,) if reduce == "mean" else (nq, n_banks), dtype=torch.float32, device=kind.device)
    for start in range(0, nq, chunk_size):
        stop = min(nq, start + chunk_size)
        out[start:stop] = _reduce_group_min(prob.run(start, stop), ids, reduce)
    return kind.result(out)


def reduce_banks(group_min, banks, *, reduce="mean"):
    """The bank reduction of :func:`ensemble_distance` applied to precomputed group minima.

    ``ensemble_distance(q, m, g, banks)`` equals ``reduce_banks(group_min_distance(q, m, g,
    G), banks)`` bit for bit (the same reduction code runs); this form lets the ``(Nq, G)``
    columns come from several memory shards, concatenated in group order.

    Args:
        group_min: ``(Nq, G)`` float32 array/tensor (NaN = group not eligible).
        banks: ``(B, m)`` integer group ids or a ``(B, G)`` bool mask, as in
            :func:`ensemble_distance`.
        reduce: ``"mean"`` -> ``(Nq,)``; ``"none"`` -> ``(Nq, B)``.

    Returns:
        float32 of the kind/device of ``group_min``.
    """
    fn = "reduce_banks"
    kind = _Kind(group_min, fn, "group_min")
    _check_float(group_min, kind, fn, "group_min")
    _check_choice(reduce, _REDUCE, fn, "reduce")
    gm = kind.tensor(group_min)
    if gm.dtype != torch.float32:
        raise TypeError(f"{fn}: argument 'group_min' must have dtype float32, got {gm.dtype}")
    g = int(gm.shape[1])
    if g == 0:
        raise ValueError(f"{fn}: argument 'group_min' must have at least one group column, got shape {tuple(gm.shape)}")
    ids, _, _ = _prepare_banks(banks, kind, fn, g)
    return kind.result(_reduce_group_min(gm, ids, reduce))


def bank_size(n_groups: int, ratio: float) -> int:
    """Groups per bank for a bank ratio: ``ceil(ratio * n_groups)`` in plain float arithmetic,
    as the official code computes it (so ``0.1 * 30`` gives 4), and at least 1."""
    return max(1, int(math.ceil(ratio * n_groups)))


def sample_banks(n_groups, n_banks=100, ratio=0.1, *, replace=True, seed=0):
    """Random banks of groups, as drawn by MeDS (bootstrap of training images).

    Args:
        n_groups: Number of groups ``G`` to draw from.
        n_banks: Number of banks ``B`` (>= 1).
        ratio: Fraction ``rho`` in (0, 1]: each bank holds ``m = ceil(rho * G)`` draws
            (see :func:`bank_size`).
        replace: Draw with replacement (the official code; ids may repeat within a bank)
            or without (``m <= G`` distinct ids).
        seed: Non-negative int seed of a ``numpy.random.Generator`` (no global RNG is
            touched).

    Returns:
        ``(B, m)`` int64 numpy array of group ids.
    """
    fn = "sample_banks"
    n_groups = _check_int(n_groups, fn, "n_groups", 1)
    n_banks = _check_int(n_banks, fn, "n_banks", 1)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: argument 'ratio' must be a float in (0, 1], got {type(ratio).__name__}")
    if not (0.0 < float(ratio) <= 1.0):
        raise ValueError(f"{fn}: argument 'ratio' must be in (0, 1], got {ratio}")
    seed = _check_int(seed, fn, "seed", 0)
    m = bank_size(n_groups, float(ratio))
    rng = np.random.default_rng(seed)
    if replace:
        return rng.integers(0, n_groups, size=(n_banks, m), dtype=np.int64)
    return np.stack([rng.choice(n_groups, size=m, replace=False) for _ in range(n_banks)]).astype(np.int64)


def expected_min_distance(group_min, bank_size, *, replace=True):
    """Expected nearest distance to a random bank of ``bank_size`` groups (``B -> infinity``).

    For each row, with its ``G'`` non-NaN distances sorted ``d_(1) <= ... <= d_(G')`` (NaN
    entries, i.e. excluded groups, are left out of ``G'``): with replacement
    ``P(min = d_(i)) = ((G'-i+1)/G')^m - ((G'-i)/G')^m``; without replacement
    ``P(min = d_(i)) = [C(G'-i+1, m) - C(G'-i, m)] / C(G', m)`` (``m >= G'`` gives
    ``d_(1)``). No Monte Carlo noise, no number of banks to choose.

    Args:
        group_min: ``(Nq, G)`` float array/tensor from :func:`group_min_distance`.
        bank_size: ``m``, groups per bank (>= 1).
        replace: Whether banks are drawn with replacement (as in :func:`sample_banks`).

    Returns:
        ``(Nq,)`` of group_min's dtype, kind and device; NaN for rows with no finite entry.
    """
    fn = "expected_min_distance"
    m = _check_int(bank_size, fn, "bank_size", 1)
    if isinstance(group_min, torch.Tensor):
        if not group_min.is_floating_point():
            raise TypeError(f"{fn}: argument 'group_min' must be a float tensor, got {group_min.dtype}")
        x = group_min
    elif isinstance(group_min, np.ndarray):
        if group_min.dtype.kind != "f":
            raise TypeError(f"{fn}: argument 'group_min' must be a float array, got {group_min.dtype}")
        native = group_min.dtype in (np.float16, np.float32, np.float64)  # what torch can view
        x = _from_numpy(group_min if native else group_min.astype(np.float64))
    else:
        raise TypeError(f"{fn}: argument 'group_min' must be a numpy.ndarray or torch.Tensor, got {_describe(group_min)}")
    if x.ndim != 2:
        raise ValueError(f"{fn}: argument 'group_min' must be 2-D (Nq, G), got shape {tuple(group_min.shape)}")
    nq, g = int(x.shape[0]), int(x.shape[1])
    if g == 0:
        raise ValueError(f"{fn}: argument 'group_min' must have at least one group column, got shape {(nq, g)}")
    rows = max(1, _DEFAULT_BUDGET // (8 * (g + 1) * 6))
    out = torch.empty(nq, dtype=x.dtype, device=x.device)
    ranks = torch.arange(1, g + 1, dtype=torch.float64, device=x.device)
    for s in range(0, nq, rows):
        part = x[s:s + rows].to(torch.float64)
        xs = torch.sort(torch.nan_to_num(part, nan=float("inf")), dim=1).values
        gq = (~torch.isnan(part)).sum(1, dtype=torch.float64)[:, None]
        surv = _survival(ranks, gq, m, replace)
        p = surv[:, :-1] - surv[:, 1:]
        e = torch.where(p > 0, p * xs, 0.0).sum(1)
        out[s:s + rows] = torch.where(gq[:, 0] > 0, e, float("nan")).to(x.dtype)
    if isinstance(group_min, torch.Tensor):
        return out
    return out.numpy().astype(group_min.dtype, copy=False)


def _survival(ranks: torch.Tensor, gq: torch.Tensor, m: int, replace: bool) -> torch.Tensor:
    """S[:, i-1] = P(min rank >= i) for i = 1..G+1 (rows: G' = gq)."""
    if replace:
        surv = ((gq - ranks + 1) / gq.clamp(min=1)).clamp(0, 1) ** m
        return torch.cat([surv, torch.zeros_like(surv[:, :1])], 1)
    # S(1) = 1, S(i+1) = S(i) * (G'-i+1-m) / (G'-i+1), with non-positive factors -> 0.
    num = gq - ranks + 1 - m
    den = gq - ranks + 1
    factor = torch.where(den > 0, num.clamp(min=0) / torch.where(den > 0, den, torch.ones_like(den)), 0.0)
    surv = torch.cumprod(factor, dim=1)
    return torch.cat([torch.ones_like(surv[:, :1]), surv], 1)


def build_info() -> dict:
    """What this build of the extension contains.

    Returns:
        dict with ``cuda`` (bool), ``cuda_archs`` (list), ``cuda_sm90a`` (whether the Hopper
        wgmma kernel is compiled in, i.e. an sm_90a target is in the list),
        ``cuda_runtime_version``, ``cuda_tc`` (the ``MEDS_CUDA_TC`` setting in effect:
        ``auto`` (default) uses the wgmma kernel for tf32/bf16/fp16 where it can run and
        mma.sync elsewhere, ``mma`` always mma.sync, ``wgmma`` requires the wgmma kernel: a
        tensor-core call where it cannot run raises; ``None`` if the setting was refused, with
        the reason in ``cuda_tc_error``), ``cuda_device_count``,
        ``openmp``, ``openmp_version``, ``openmp_max_threads``, ``simd_compiled`` (list),
        ``simd_selected`` (the CPU kernel used on this machine; ``MEDS_CPU_SIMD=avx2|portable``
        lowers it), ``compiler`` and ``version``. ``meds._C.cuda_wgmma_status(device)`` says
        whether the wgmma kernel can run on a device and ``meds._C.cuda_last_kernel()`` which
        kernel the latest CUDA call ran.
    """
    info = dict(_ext().build_info())
    from meds import __version__  # noqa: PLC0415

    info["version"] = __version__
    return info
