"""On-disk cache of patch features, computed once per dataset and extractor setting."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from ...atomic_io import atomic_write, atomic_write_text
from .extractor import PatchFeatureExtractor, PatchFeatures

__all__ = ["cached_features", "feature_cache_key"]

_CACHE_FORMAT = 1


def feature_cache_key(extractor: PatchFeatureExtractor, image_paths: Sequence[Union[str, os.PathLike]]) -> str:
    """Hash of everything the cached features depend on: the extractor's configuration and
    weights identity, and each file's absolute path, size and modification time (in order)."""
    h = hashlib.sha256()
    meta = dict(format=_CACHE_FORMAT, config=extractor.config, weights=extractor.weights_id, arch=extractor.arch)
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for p in image_paths:
        st = os.stat(p)
        h.update(f"\0{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def cached_features(
    extractor: PatchFeatureExtractor,
    image_paths: Sequence[Union[str, os.PathLike]],
    cache_dir: Union[str, os.PathLike],
    *,
    batch_size: int = 16,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
    num_workers: int = 0,
    dtype: str = "float32",
    mmap: bool = False,
) -> PatchFeatures:
    """Patch features of image files, computed once and stored in ``cache_dir``.

    The cache entry is ``<key>.npy`` (features, ``(N, h*w, D)``) plus ``<key>.json`` (grid, group
    dims, paths), key = :func:`feature_cache_key`. Features are written batch by batch into a
    memory-mapped temporary file that :func:`meds.atomic_io.atomic_write` moves into place, so
    a crash never leaves a half-written entry and memory stays bounded by one batch. Loading uses
    ``np.load(allow_pickle=False)``: nothing is unpickled.

    Args:
        extractor: the feature extractor.
        image_paths: image files, in order.
        cache_dir: folder for the cache (created if missing).
        batch_size: see :meth:`PatchFeatureExtractor.extract`.
        device: see :meth:`PatchFeatureExtractor.extract`.
        progress: see :meth:`PatchFeatureExtractor.extract`.
        num_workers: see :meth:`PatchFeatureExtractor.extract`.
        dtype: stored precision, ``"float32"`` or ``"float16"`` (half the disk and RAM).
        mmap: return the features as a read-only numpy memmap (stored dtype) instead of a
            float32 torch tensor in memory.

    Returns:
        :class:`PatchFeatures`.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"cached_features: dtype must be 'float32' or 'float16', got {dtype!r}")
    image_paths = [os.fspath(p) for p in image_paths]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = feature_cache_key(extractor, image_paths) + ("" if dtype == "float32" else "-f16")
    npy, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"

    meta = _read_meta(meta_path)
    if meta is None or not npy.is_file():
        grid = extractor.grid
        shape = (len(image_paths), grid[0] * grid[1], extractor.feature_dim)

        def write(tmp: str) -> None:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
            for (s, e), feats in extractor.iter_batches(image_paths, batch_size, device, progress, num_workers):
                arr[s:e] = feats.numpy().astype(dtype, copy=False)
            arr.flush()
            del arr

        atomic_write(npy, write)
        meta = dict(
            format=_CACHE_FORMAT,
            key=key,
            shape=list(shape),
            dtype=dtype,
            grid=list(extractor.grid),
            group_dims=list(extractor.group_dims),
            config=extractor.config,
            weights=extractor.weights_id,
            paths=image_paths,
        )
        atomic_write_text(json.dumps(meta, default=str), meta_path)

    arr = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    if list(arr.shape) != list(meta["shape"]) or arr.dtype != np.dtype(meta["dtype"]):
        raise RuntimeError(
            f"cached_features: cache entry {str(npy)!r} is inconsistent (shape {arr.shape}, "
            f"dtype {arr.dtype}; expected {meta['shape']} {meta['dtype']}); delete it"
        )
    if not mmap:
        arr = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return PatchFeatures(arr, tuple(meta["grid"]), tuple(meta["group_dims"]))


def _read_meta(path: Path):
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != _CACHE_FORMAT:
        return None
    return meta
