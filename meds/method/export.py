"""Export a fitted detector to ONNX or OpenVINO: one graph from pixels to decision.

The graph takes ``image``, float32 ``(N, 3, H, W)`` in ``[0, 1]`` at the training image
size (``N`` dynamic), and returns ``pred_score (N,)``, ``anomaly_map (N, H, W)`` and
``pred_label (N,)`` -- exactly what :meth:`PatchDetector.predict` computes:

resize (bilinear, antialiased) + centre crop + normalisation -> frozen encoder -> patch
features -> the detector's patch scores -> bilinear upsampling + Gaussian blur -> top-1 %
image score -> ``not (score <= threshold)`` and the map resized back to the image size.

Every resize and the blur are linear and separable, so each axis is one small matrix,
probed from the very torch functions :meth:`predict` uses (no re-implementation that
could drift, and no interpolation or padding mode whose ONNX translation differs between
runtimes). A memory detector's nearest-neighbour search runs over fixed chunks of the
memory with a running minimum, so the runtime never holds more than ``(N * L, chunk)``
similarities, whatever the memory size (anomalib's exported PatchCore holds ``N * L x M``).
"""

from __future__ import annotations

import io
import json
import math
import copy
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from .export_interface import GRAPH_FORMAT, INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, require_package
from .scoring import anomaly_maps

#: Formats :func:`export_model` writes.
EXPORT_FORMATS = ("onnx", "openvino")
_OPSET = 17  # LayerNormalization; onnxruntime >= 1.14 and OpenVINO >= 2023 run it


def _axis_matrix(apply, n_in: int) -> torch.Tensor:
    """The ``(n_out, n_in)`` matrix of a linear map along one axis, probed on unit vectors.

    ``apply(e)`` gets ``e = eye(n_in)`` (row ``k`` = unit vector ``k``) and returns
    ``(n_in, n_out)``. The probes give the other axis a constant width of 2, not 1: torch's
    antialiased resize treats a width-1 image differently from a wide one.
    """
    with torch.no_grad():
        return apply(torch.eye(n_in)).T.contiguous().float()


def _resize_matrix(n_in: int, n_out: int, *, antialias: bool) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) of one axis, as ``F.interpolate`` does it."""
    return _axis_matrix(
        lambda e: F.interpolate(e[:, None, :, None].expand(-1, 1, -1, 2).contiguous(), size=(n_out, 2),
                                mode="bilinear", align_corners=False, antialias=antialias)[:, 0, :, 0],
        n_in,
    )


def _map_matrices(grid: Sequence[int], size: Sequence[int], sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis matrices of :func:`anomaly_maps` (upsampling, then the blur with its padding;
    a constant second axis stays constant under both)."""
    (h, w), (height, width) = grid, size
    rows = _axis_matrix(lambda e: anomaly_maps(e[:, :, None].expand(-1, -1, 2).reshape(h, 2 * h), (h, 2),
                                               (height, 2), sigma)[:, :, 0], h)
    cols = _axis_matrix(lambda e: anomaly_maps(e[:, None, :].expand(-1, 2, -1).reshape(w, 2 * w), (2, w),
                                               (2, width), sigma)[:, 0, :], w)
    return rows, cols


def _float32_at_most(value: float) -> np.float32:
    """The largest float32 ``<= value``: ``s <= it`` iff ``s <= value`` for every float32 ``s``,
    so the graph's float32 comparison labels exactly as ``predict``'s float64 one."""
    out = np.float32(value)
    if float(out) > value:
        out = np.nextafter(out, np.float32(-np.inf))
    return out


class NearestPatch(nn.Module):
    """Nearest distance from each query row to a fixed memory, in memory chunks.

    The same distance as :func:`meds.kernels.ops.group_min_distance` with one group: cosine
    ``max(1 - max cos, 0)`` (a zero vector has similarity 0), ``sqeuclidean`` /
    ``l2`` from ``|q|^2 + |m|^2 - 2 q.m`` clamped at 0.

    Args:
        memory: ``(M, D)`` memory rows.
        metric: ``"cosine"``, ``"l2"`` or ``"sqeuclidean"``.
        chunk: Memory rows per chunk (bounds the runtime's working memory).
    """

    def __init__(self, memory: torch.Tensor, metric: str, chunk: int):
        super().__init__()
        if chunk < 1:
            raise ValueError(f"NearestPatch: chunk must be >= 1, got {chunk}")
        self.metric = metric
        rows = memory.detach().to("cpu", torch.float64)
        norms_sq = (rows * rows).sum(dim=1)
        if metric == "cosine":
            norms = norms_sq.sqrt()
            rows = torch.where(norms[:, None] > 0, rows / norms.clamp_min(1e-300)[:, None], torch.zeros_like(rows))
        self.n_chunks = math.ceil(rows.shape[0] / chunk)
        for i in range(self.n_chunks):
            part = slice(i * chunk, (i + 1) * chunk)
            # Stored transposed: the graph multiplies (N*L, D) @ (D, chunk).
            self.register_buffer(f"rows_t{i}", rows[part].T.float().contiguous())
            self.register_buffer(f"norms_sq{i}", norms_sq[part].float().contiguous())

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        if self.metric == "cosine":
            norm = torch.sqrt((queries * queries).sum(dim=1, keepdim=True))
            queries = queries / norm.clamp_min(1e-30)
        best = None
        for i in range(self.n_chunks):  # unrolled: a running extremum over the chunks
            product = queries @ getattr(self, f"rows_t{i}")
            if self.metric == "cosine":
                part = product.amax(dim=1)
                best = part if best is None else torch.maximum(best, part)
            else:
                part = (getattr(self, f"norms_sq{i}") - 2.0 * product).amin(dim=1)
                best = part if best is None else torch.minimum(best, part)
        if self.metric == "cosine":
            return (1.0 - best).clamp_min(0.0)
        distance = ((queries * queries).sum(dim=1) + best).clamp_min(0.0)
        return distance.sqrt() if self.metric == "l2" else distance


class MeDSPatchScores(nn.Module):
    """The patch scores of a fitted :class:`~meds.method.model.MeDS` with its ``final`` detector."""

    def __init__(self, model, chunk: int):
        super().__init__()
        self.final = model.final
        uses_network = self.final in ("reconstruction", "fusion")
        self.network = copy.deepcopy(model.network_).cpu().eval() if uses_network else None
        self.standardise = uses_network and model.position_stats_ is not None
        if self.standardise:
            centre, scale = (t.detach().cpu().double() for t in model.position_stats_)
            self.grid = tuple(int(v) for v in model.grid_)
            self.register_buffer("position_weight", (1.0 / scale).float().view(1, *self.grid))
            self.register_buffer("position_bias", (-centre / scale).float().view(1, *self.grid))
        self.memory = NearestPatch(model.memory_bank_, model.metric, chunk) if self.final != "reconstruction" else None
        if self.final == "fusion":
            (c_rec, w_rec), (c_mem, w_mem) = model.fusion_stats_["reconstruction"], model.fusion_stats_["memory"]
            self.stats = (float(c_rec), float(w_rec), float(c_mem), float(w_mem))

    def _reconstruction(self, features: torch.Tensor) -> torch.Tensor:
        scores = self.network(features)
        if not self.standardise:
            return scores
        # Applied on the (h, w) grid: OpenVINO 2026.4's CPU plugin gave wrong scores (no
        # error) for the same per-position constants applied to the flat (N, L) scores.
        on_grid = scores.reshape(-1, *self.grid) * self.position_weight + self.position_bias
        return on_grid.reshape(scores.shape)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.final == "reconstruction":
            return self._reconstruction(features)
        n, length, dim = features.shape
        memory = self.memory(features.reshape(-1, dim)).reshape(n, length)
        if self.final == "memory":
            return memory
        c_rec, w_rec, c_mem, w_mem = self.stats
        return (self._reconstruction(features) - c_rec) / w_rec + (memory - c_mem) / w_mem


class NearestNeighbourPatchScores(nn.Module):
    """The patch scores of a fitted :class:`~meds.method.baselines.NearestNeighbourDetector`."""

    def __init__(self, model, chunk: int):
        super().__init__()
        dim = model.memory_.shape[-1]
        self.memory = NearestPatch(model.memory_.reshape(-1, dim), model.metric, chunk)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, length, dim = features.shape
        return self.memory(features.reshape(-1, dim)).reshape(n, length)


def patch_scorer(model, chunk: int) -> nn.Module:
    """The module that turns ``(N, L, D)`` features into ``(N, L)`` patch scores for ``model``."""
    from .baselines import NearestNeighbourDetector
    from .model import MeDS

    if isinstance(model, MeDS):
        return MeDSPatchScores(model, chunk)
    if isinstance(model, NearestNeighbourDetector):
        return NearestNeighbourPatchScores(model, chunk)
    raise TypeError(f"export: cannot export a {type(model).__name__} (MeDS and NearestNeighbourDetector can be)")


class DecisionGraph(nn.Module):
    """Pixels to decision for a fitted detector (see the module docstring).

    Args:
        model: A fitted :class:`~meds.method.detector.PatchDetector` (MeDS, any final).
        input_size: ``(H, W)`` of the graph's input images.
        chunk: Memory rows per chunk of the nearest-neighbour search.
    """

    def __init__(self, model, input_size: Sequence[int], chunk: int = 2048):
        super().__init__()
        # Copies on the CPU: tracing must not move (or change) the model's own modules.
        extractor = copy.deepcopy(model.extractor).cpu().eval()
        self.extractor = extractor
        height, width = (int(v) for v in input_size)
        self.input_size = (height, width)
        # 1. preprocessing, as PatchFeatureExtractor.preprocess
        self.resize = (height, width) != tuple(extractor.image_size)
        if self.resize:
            self.register_buffer("resize_rows", _resize_matrix(height, extractor.image_size[0], antialias=True))
            self.register_buffer("resize_cols_t", _resize_matrix(width, extractor.image_size[1], antialias=True).T.contiguous())
        self.crop = None
        if extractor.crop_size:
            (ch, cw), (h, w) = extractor.crop_size, extractor.image_size
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            self.crop = (top, top + ch, left, left + cw)
        self.register_buffer("mean", torch.tensor(extractor.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(extractor.std, dtype=torch.float32).view(1, 3, 1, 1))
        # 2. features, as PatchFeatureExtractor.forward (its level resize as matrices)
        self.grid = tuple(int(v) for v in model.grid_)
        self.level_resize = []
        with torch.no_grad():
            levels = extractor._levels(torch.zeros(1, 3, *extractor.output_size))
        for i, level in enumerate(levels):
            size = tuple(level.shape[-2:])
            if size != self.grid:
                self.register_buffer(f"level_rows{i}", _resize_matrix(size[0], self.grid[0], antialias=False))
                self.register_buffer(f"level_cols_t{i}", _resize_matrix(size[1], self.grid[1], antialias=False).T.contiguous())
            self.level_resize.append(size != self.grid)
        # 3. the detector's patch scores
        self.scores = patch_scorer(model, chunk)
        # 4. maps, image score, label, as PatchDetector.predict
        rows, cols = _map_matrices(self.grid, extractor.output_size, model.blur_sigma)
        self.register_buffer("map_rows", rows)
        self.register_buffer("map_cols_t", cols.T.contiguous())
        pixels = extractor.output_size[0] * extractor.output_size[1]
        self.top_k = max(1, int(math.ceil(model.top_fraction * pixels)))
        self.back = tuple(extractor.output_size) != (height, width)
        if self.back:
            self.register_buffer("back_rows", _resize_matrix(extractor.output_size[0], height, antialias=False))
            self.register_buffer("back_cols_t", _resize_matrix(extractor.output_size[1], width, antialias=False).T.contiguous())
        self.threshold = float(_float32_at_most(float(model.threshold_)))

    def forward(self, image: torch.Tensor):
        # Normalised before the resize (rows of the resize matrices sum to 1, so it commutes
        # up to rounding): OpenVINO's CPU plugin cannot compile an FP16 model whose per-channel
        # normalisation follows a MatMul.
        x = (image - self.mean) / self.std
        if self.resize:
            x = self.resize_rows @ x @ self.resize_cols_t
        if self.crop is not None:
            top, bottom, left, right = self.crop
            x = x[:, :, top:bottom, left:right]
        levels = self.extractor._levels(x)
        k = self.extractor.neighbourhood
        if k > 1:
            levels = [F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False) for f in levels]
        levels = [getattr(self, f"level_rows{i}") @ f @ getattr(self, f"level_cols_t{i}") if resize else f
                  for i, (f, resize) in enumerate(zip(levels, self.level_resize))]
        features = torch.cat(levels, dim=1).float().flatten(2).transpose(1, 2)
        patch = self.scores(features)
        maps = self.map_rows @ patch.reshape(-1, self.grid[0], self.grid[1]) @ self.map_cols_t
        score = maps.flatten(1).topk(self.top_k, dim=1).values.mean(dim=1)
        label = torch.logical_not(score <= self.threshold)  # a NaN score is never labelled good
        if self.back:
            maps = self.back_rows @ maps @ self.back_cols_t
        return score, maps, label


def graph_metadata(model, graph: DecisionGraph, half: bool = False) -> dict:
    """What a reader of the exported file needs (and a person inspecting it wants to know)."""
    extractor = model.extractor
    return {
        "meds_version": __version__,
        "graph_format": GRAPH_FORMAT,
        "detector": type(model).__name__,
        "final": getattr(model, "final", None),
        "backbone": model.backbone,
        "input_size": list(graph.input_size),
        "encoder_size": list(extractor.output_size),
        "threshold": float(model.threshold_),
        "normalisation": {"mean": list(extractor.mean), "std": list(extractor.std)},
        "top_fraction": model.top_fraction,
        "blur_sigma": model.blur_sigma,
        "grid": list(graph.grid),
        "precision": "fp16" if half else "fp32",
    }


def export_model(model, path: Union[str, os.PathLike], format: str = "onnx", *, half: bool = False,
                 input_size: Optional[Sequence[int]] = None, chunk: int = 2048) -> Path:
    """Write ``model``'s decision graph to ``path`` (see the module docstring).

    Args:
        model: A fitted MeDS (any ``final``) or NearestNeighbourDetector.
        path: ``.onnx`` file for ``format="onnx"``; ``.xml`` (with a ``.bin`` beside it) for
            ``"openvino"``. A missing suffix is added.
        format: ``"onnx"`` or ``"openvino"``.
        half: OpenVINO only: store the weights as FP16.
        input_size: ``(H, W)`` of the input images; default the training images' size
            (the encoder's input size if the model does not record it).
        chunk: Memory rows per chunk of a memory detector's search.

    Returns:
        The path of the written ``.onnx`` / ``.xml``.

    Raises:
        RuntimeError: ``model`` is not fitted.
        ValueError: Unknown format, ``half`` with ONNX, bad ``input_size`` or ``chunk``.
        ModuleNotFoundError: ``onnx`` (or ``openvino``) is not installed.
    """
    who = f"{type(model).__name__}.export"
    if format not in EXPORT_FORMATS:
        raise ValueError(f"{who}: format must be one of {list(EXPORT_FORMATS)}, got {format!r}")
    if half and format != "openvino":
        raise ValueError(f"{who}: half=True needs format='openvino' (ONNX is exported in FP32)")
    if getattr(model, "threshold_", None) is None:
        raise RuntimeError(f"{who}: the model is not fitted; call fit() (or load a saved model) first")
    if chunk < 1:
        raise ValueError(f"{who}: chunk must be >= 1, got {chunk}")
    if input_size is None:
        input_size = getattr(model, "train_image_size_", None) or model.input_size
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 2 or min(input_size) < 1:
        raise ValueError(f"{who}: input_size must be a positive (H, W), got {input_size}")
    onnx = require_package("onnx", who, f"format={format!r}")
    ov = require_package("openvino", who, f"format={format!r}") if format == "openvino" else None
    path = Path(path)
    suffix = ".onnx" if format == "onnx" else ".xml"
    if path.suffix != suffix:
        path = path.with_name(path.name + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)

    graph = DecisionGraph(model, input_size, chunk).eval()
    proto = _to_onnx(graph, onnx)
    metadata = graph_metadata(model, graph, half)
    readable = {"meds_version": __version__, "input_size": "x".join(map(str, input_size)),
                "threshold": repr(float(model.threshold_)), "normalisation": json.dumps(metadata["normalisation"]),
                METADATA_KEY: json.dumps(metadata)}
    if format == "onnx":
        for key, value in readable.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        from ..atomic_io import atomic_write_bytes

        return atomic_write_bytes(proto.SerializeToString(), path)
    return _write_openvino(ov, proto, readable, path, half)


def _to_onnx(graph: DecisionGraph, onnx):
    """The traced graph as an ONNX ``ModelProto`` (checked)."""
    height, width = graph.input_size
    example = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    batch = {0: "N"}
    with torch.no_grad():
        # dynamo=False: the TorchScript exporter traces this fixed-size graph reliably and
        # needs no onnxscript; the dynamo exporter would add that dependency for no gain here.
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=_OPSET,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={name: batch for name in (INPUT_NAME,) + OUTPUT_NAMES})
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    return proto


def _write_openvino(ov, proto, readable: dict, path: Path, half: bool) -> Path:
    """Convert to OpenVINO IR (``.xml`` + ``.bin``), renamed into place ``.bin`` first."""
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as tmp:
        onnx_file = Path(tmp) / "graph.onnx"
        onnx_file.write_bytes(proto.SerializeToString())
        converted = ov.Core().read_model(str(onnx_file))
        for key, value in readable.items():
            converted.set_rt_info(value, [METADATA_KEY, key])
        xml = Path(tmp) / "model.xml"
        # compress_to_fp16 defaults to True in OpenVINO: FP32 must be asked for.
        ov.save_model(converted, str(xml), compress_to_fp16=half)
        os.replace(xml.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(xml, path)
    return path


__all__ = ["DecisionGraph", "NearestPatch", "export_model", "EXPORT_FORMATS", "graph_metadata"]
