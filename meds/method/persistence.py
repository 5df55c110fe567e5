"""Saving and loading :class:`~meds.method.model.MeDS` model folders.

A model folder holds ``config.json`` (settings, fitted values, and the name, size and
sha256 of the weights file) and ``model.<sha256 prefix>.safetensors`` (network weights
and per-image arrays). They are one bundle (:func:`meds.atomic_io.commit_bundle`): the
rename of ``config.json`` commits a save, so a save that is interrupted at any point
leaves the previous model (or nothing, for a first save) loadable, never a mix of two.
:func:`save_model` holds the folder's lock (:mod:`meds.locking`) while it writes.

:func:`load_model` checks everything before it builds the model: the weights file against
its recorded checksum, every key of ``config.json`` (presence and type), every tensor
(presence, shape, finite values), and the version of meds that wrote the folder. A problem
raises :class:`~meds.atomic_io.CorruptFileError` with one line naming the file and key.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from .. import __version__
from ..atomic_io import CorruptFileError, commit_bundle, load_tensors, read_bundle
from ..locking import folder_lock
from .detector import resolve_device
from .network import NetworkConfig, ReconstructionNetwork
from .train import TrainConfig

if TYPE_CHECKING:
    from .model import MeDS

CONFIG_FILE = "config.json"
WEIGHTS_STEM = "model"  # -> model.<sha256 prefix>.safetensors
_PER_IMAGE = ("training_scores", "selected", "memory_scores", "trusted")
_REQUIRED = object()  # _Config.get without a default: the key must be present
_POSITION = ("position_centre", "position_scale")  # saved only with position_norm
#: Settings that folders written by earlier versions lack, with the value those fits used.
_ADDED_SETTINGS = {"position_norm": False}


def save_model(model: "MeDS", path: Union[str, Path]) -> Path:
    """Write a fitted model into folder ``path`` as one atomic commit (see module doc)."""
    path = Path(path)
    tensors = {f"network.{k}": v for k, v in model.network_.state_dict().items()}
    tensors["training_scores"] = torch.from_numpy(np.asarray(model.training_scores_, dtype=np.float64))
    tensors["selected"] = torch.from_numpy(model.selected_.astype(np.uint8))
    tensors["memory_scores"] = torch.from_numpy(np.asarray(model.memory_scores_, dtype=np.float64))
    tensors["trusted"] = torch.from_numpy(model.trusted_.astype(np.uint8))
    tensors["memory_bank"] = model.memory_bank_
    if model.position_stats_ is not None:
        tensors["position_centre"], tensors["position_scale"] = model.position_stats_
    manifest = {
        "meds_version": __version__,
        "model": "MeDS",
        "config": model.get_config(),
        "fitted": {
            "threshold": model.threshold_,
            "thresholds": model.thresholds_,
            "fusion_stats": model.fusion_stats_,
            "grid": list(model.grid_),
            "group_dims": list(model.group_dims_),
            "history": [list(h) for h in model.history_],
            "training_files": model.training_files_,
            "image_size": list(model.train_image_size_) if model.train_image_size_ else None,
            "labels": model.label_counts_,
        },
    }
    with folder_lock(path, "MeDS.save"):
        commit_bundle(path, CONFIG_FILE, manifest, {WEIGHTS_STEM: tensors})
    return path


def _version(text: str) -> tuple:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise ValueError(text)
    return tuple(int(x or 0) for x in match.groups())


class _Config:
    """Typed access to ``config.json`` whose errors name the file and the dotted key."""

    def __init__(self, data: dict, path: Path):
        self.data, self.path = data, path

    def fail(self, key: str, problem: str) -> CorruptFileError:
        return CorruptFileError(f"MeDS.load: {self.path}: key '{key}' {problem}")

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        """The value at dotted ``key``; ``default``, if given, when only its last part is absent
        (a key that older versions did not write)."""
        parts = key.split(".")
        node = self.data
        for i, part in enumerate(parts):
            if not isinstance(node, dict):
                raise self.fail(".".join(parts[:i]), f"must be a JSON object, got {node!r}")
            if part not in node:
                if default is _REQUIRED or i < len(parts) - 1:
                    raise self.fail(key, "is missing")
                return default
            node = node[part]
        return node

    def number(self, key: str, value: Any = None, *, positive: bool = False) -> float:
        value = self.get(key) if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if positive and value <= 0:
            raise self.fail(key, f"must be > 0, got {value!r}")
        return float(value)

    def ints(self, key: str, length: Union[int, None] = None) -> tuple:
        value = self.get(key)
        ok = isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                       for v in value)
        if not ok or (length is not None and len(value) != length):
            size = f"{length} " if length is not None else ""
            raise self.fail(key, f"must be a list of {size}positive integers, got {value!r}")
        return tuple(value)

    def mapping(self, key: str, keys) -> dict:
        value = self.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a JSON object, got {value!r}")
        for name in keys:
            if name not in value:
                raise self.fail(f"{key}.{name}", "is missing")
        return value


def _check_value(cfg: _Config, key: str, value: Any, default: Any) -> None:
    """A saved constructor argument has the type of its default (``None`` defaults: any)."""
    if default is None or key == "config.weights" and value is None:
        return
    if key == "config.n_banks" and value == "exact":
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (isinstance(value, int) or isinstance(default, float))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise cfg.fail(key, f"must be of type {type(default).__name__}, got {value!r}")


def _constructor_args(cls, cfg: _Config) -> dict:
    saved = cfg.mapping("config", [])
    defaults = cls(device="cpu", verbose=False).get_config()
    saved = {**{k: v for k, v in _ADDED_SETTINGS.items() if k not in saved}, **saved}
    for name, default in defaults.items():
        if name not in saved:
            raise cfg.fail(f"config.{name}", "is missing")
        _check_value(cfg, f"config.{name}", saved[name], default)
    unknown = sorted(set(saved) - set(defaults))
    if unknown:
        raise cfg.fail(f"config.{unknown[0]}", "is not a MeDS setting (written by another version?)")
    args = dict(saved)
    for name, kind in (("network", NetworkConfig), ("train", TrainConfig)):
        fields = {f.name for f in dataclasses.fields(kind)}
        extra = sorted(set(args[name]) - fields)
        if extra:
            raise cfg.fail(f"config.{name}.{extra[0]}", f"is not a {kind.__name__} field")
        try:
            args[name] = kind(**args[name])
        except (TypeError, ValueError) as error:
            raise cfg.fail(f"config.{name}", f"is invalid: {error}") from None
    return args


def _check_tensors(tensors: dict, weights: Path, network: ReconstructionNetwork, dim: int,
                   positions: Union[int, None]) -> None:
    """Presence, shapes and finite values; ``positions``: the grid's patch count when the
    model standardises patch positions, else ``None``."""
    def fail(name: str, problem: str) -> CorruptFileError:
        return CorruptFileError(f"MeDS.load: {weights}: tensor '{name}' {problem}")

    expected = {f"network.{k}": v for k, v in network.state_dict().items()}
    for name, ref in expected.items():
        if name not in tensors:
            raise fail(name, "is missing")
        if tuple(tensors[name].shape) != tuple(ref.shape):
            raise fail(name, f"has shape {tuple(tensors[name].shape)}, expected {tuple(ref.shape)}")
    for name in _PER_IMAGE + ("memory_bank",):
        if name not in tensors:
            raise fail(name, "is missing")
    for name in _POSITION if positions is not None else ():
        if name not in tensors:
            raise fail(name, "is missing (the model was saved with position_norm)")
        if tuple(tensors[name].shape) != (positions,):
            raise fail(name, f"must have shape ({positions},), one value per patch, got {tuple(tensors[name].shape)}")
    if positions is not None and not bool((tensors["position_scale"] > 0).all()):
        raise fail("position_scale", "must be > 0 everywhere")
    optional = set(_POSITION) if positions is not None else set()
    unknown = sorted(set(tensors) - set(expected) - set(_PER_IMAGE) - {"memory_bank"} - optional)
    if unknown:
        raise fail(unknown[0], "is not part of a MeDS model")
    n = tensors["training_scores"].shape[0] if tensors["training_scores"].ndim == 1 else -1
    for name in _PER_IMAGE:
        if tuple(tensors[name].shape) != (n,) or n < 1:
            raise fail(name, f"must have shape (N,) like 'training_scores', got {tuple(tensors[name].shape)}")
    bank = tensors["memory_bank"]
    if bank.ndim != 2 or bank.shape[0] < 1 or bank.shape[1] != dim:
        raise fail("memory_bank", f"must have shape (M, {dim}) with M >= 1, got {tuple(bank.shape)}")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise fail(name, "holds NaN or Inf values")


def load_model(cls, path: Union[str, Path], *, device: str = "auto", verbose: bool = True) -> "MeDS":
    """Load and check a model folder written by :func:`save_model` (no pickle involved)."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"MeDS.load: {path} holds no model ({CONFIG_FILE} not found)")
    saved, files = read_bundle(path, CONFIG_FILE, "MeDS.load")
    cfg = _Config(saved, path / CONFIG_FILE)
    version = cfg.get("meds_version")
    try:
        newer = _version(str(version)) > _version(__version__)
    except ValueError:
        raise cfg.fail("meds_version", f"must be a version like '0.1.0', got {version!r}") from None
    if newer:
        raise CorruptFileError(f"MeDS.load: {path} was written by meds {version}, newer than this meds "
                               f"{__version__}; upgrade meds to load it")
    if cfg.get("model") != "MeDS":
        raise cfg.fail("model", f"must be 'MeDS', got {cfg.get('model')!r}")
    if WEIGHTS_STEM not in files:
        raise cfg.fail(f"files.{WEIGHTS_STEM}", "is missing")

    args = _constructor_args(cls, cfg)
    backbone = args.pop("backbone")
    try:
        model = cls(backbone, device=device, verbose=verbose, **args)
    except (TypeError, ValueError) as error:
        raise CorruptFileError(f"MeDS.load: {cfg.path}: key 'config' is invalid: {error}") from None
    model.threshold_ = cfg.number("fitted.threshold")
    model.grid_ = cfg.ints("fitted.grid", 2)
    model.group_dims_ = cfg.ints("fitted.group_dims")
    history = cfg.get("fitted.history")
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 3 for h in history):
        raise cfg.fail("fitted.history", "must be a list of [step, kept, cut] rows")
    model.history_ = [tuple(h) for h in history]
    thresholds = cfg.mapping("fitted.thresholds", ("reconstruction", "memory", "fusion"))
    model.thresholds_ = {k: cfg.number(f"fitted.thresholds.{k}", v) for k, v in thresholds.items()}
    stats = cfg.mapping("fitted.fusion_stats", ("reconstruction", "memory"))
    model.fusion_stats_ = {}
    for name, pair in stats.items():
        key = f"fitted.fusion_stats.{name}"
        if not isinstance(pair, list) or len(pair) != 2:
            raise cfg.fail(key, f"must be [centre, scale], got {pair!r}")
        model.fusion_stats_[name] = [cfg.number(key, pair[0]), cfg.number(key, pair[1], positive=True)]
    files_seen = cfg.get("fitted.training_files")
    if files_seen is not None and not (isinstance(files_seen, dict) and isinstance(files_seen.get("files"), list)
                                       and isinstance(files_seen.get("sha256"), str)
                                       and files_seen.get("count") == len(files_seen["files"])):
        raise cfg.fail("fitted.training_files", "must be null or hold count, sha256 and files")
    model.training_files_ = files_seen
    # Absent (or null) in folders written before the training image size was recorded.
    if cfg.get("fitted.image_size", None) is not None:
        model.train_image_size_ = cfg.ints("fitted.image_size", 2)
    # Absent from folders written before fits took labels: those used none.
    counts = cfg.get("fitted.labels", {"defective": 0, "good": 0})
    if not (isinstance(counts, dict) and set(counts) == {"defective", "good"}
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values())):
        raise cfg.fail("fitted.labels", f"must be {{'defective': n, 'good': m}} with counts >= 0, got {counts!r}")
    model.label_counts_ = dict(counts)

    weights = files[WEIGHTS_STEM]
    tensors = load_tensors(weights, resolve_device(device))
    network = ReconstructionNetwork(model.group_dims_, model.network_config).to(model.device)
    positions = model.grid_[0] * model.grid_[1] if model.position_norm else None
    _check_tensors(tensors, weights, network, sum(model.group_dims_), positions)
    n_images = tensors["training_scores"].shape[0]
    if files_seen is not None and files_seen["count"] != n_images:
        raise cfg.fail("fitted.training_files", f"lists {files_seen['count']} images, the weights hold {n_images}")
    network.load_state_dict({k[len("network."):]: v for k, v in tensors.items() if k.startswith("network.")})
    model.network_ = network.eval()
    model.training_scores_ = tensors["training_scores"].cpu().numpy()
    model.selected_ = tensors["selected"].cpu().numpy().astype(bool)
    model.memory_scores_ = tensors["memory_scores"].cpu().numpy()
    model.trusted_ = tensors["trusted"].cpu().numpy().astype(bool)
    model.memory_bank_ = tensors["memory_bank"].to(model.device, torch.float32).contiguous()
    if model.position_norm:
        model.position_stats_ = tuple(tensors[name].to(model.device, torch.float32) for name in _POSITION)
    return model
