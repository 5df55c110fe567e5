"""The feature extractor: a frozen timm backbone that turns images into patch features.

:class:`PatchFeatureExtractor` maps a batch of normalised images ``(N, 3, S, S)`` to
:class:`PatchFeatures` ``(N, h*w, D)``, the concatenation of one or more *groups* (feature
levels of a CNN, or blocks of a ViT). Images are decoded by
:func:`meds.data.images.decode_image` (the decoder every entry point shares), then resized,
cropped and normalised here; weights come from :mod:`.weights`, named settings from
:mod:`.presets`.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data.images import decode_image
from .presets import BACKBONE_PRESETS, IMAGENET_MEAN, IMAGENET_STD
from .weights import create_backbone

__all__ = ["PatchFeatures", "PatchFeatureExtractor"]

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
        model, self._weights_id = create_backbone(arch_full, weights, kwargs, self.seed)
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
        return self._weights_id

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

    def preprocess(self, images) -> torch.Tensor:
        """Resize, centre-crop and normalise images.

        Args:
            images: one image or a list of images, as :func:`meds.data.images.decode_image`
                accepts them (paths, PIL images, uint8/uint16/bool/float arrays); grayscale
                is repeated to RGB, alpha is dropped.

        Returns:
            ``(N, 3, S_h, S_w)`` float32 tensor, ``(S_h, S_w)`` = :attr:`output_size`. Resizing is
            bilinear with antialiasing (as torchvision's ``Resize``) to ``image_size``; the crop
            is centred as torchvision's ``CenterCrop``.
        """
        if isinstance(images, (str, os.PathLike)) or _is_single_image(images):
            images = [images]
        out = []
        for i, img in enumerate(images):
            rgb = decode_image(img, f"PatchFeatureExtractor.preprocess: images[{i}]")
            t = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None].div_(255.0)
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
        for _, feats in self.iter_batches(images, batch_size, device, progress, num_workers):
            parts.append(feats)
        if not parts:
            return PatchFeatures(torch.zeros(0, self.grid[0] * self.grid[1], self.feature_dim), self.grid, self.group_dims)
        return PatchFeatures(torch.cat(parts), self.grid, tuple(self.group_dims))

    def iter_batches(self, images, batch_size=16, device="cpu", progress=True, num_workers=0):
        """Yield ``((start, stop), features)`` batch by batch: what :meth:`extract` collects
        and :func:`~meds.method.backbones.cache.cached_features` writes to disk as it goes.

        Arguments as in :meth:`extract`; ``features`` is ``(stop - start, h*w, D)`` on the CPU.
        """
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


def _is_single_image(obj) -> bool:
    """One image rather than a list of them: a PIL image or an ``(H, W[, C])`` array."""
    from PIL import Image

    if isinstance(obj, Image.Image):
        return True
    return isinstance(obj, np.ndarray) and obj.ndim in (2, 3) and (obj.ndim == 2 or obj.shape[-1] in (1, 3, 4))
