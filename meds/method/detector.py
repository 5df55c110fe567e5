"""What every patch-based detector of meds shares: inputs, features, maps, threshold.

A detector turns images into frozen encoder patch features (:mod:`meds.method.backbones`), scores
the patches (its own job: :meth:`PatchDetector._score_features`), and post-processes the
patch scores into pixel maps and image scores (:mod:`meds.method.scoring`). MeDS and the
baselines differ only in how they fit and score patches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..data.images import decode_image
from .backbones import PatchFeatureExtractor
from .prediction import Prediction
from .scoring import anomaly_maps, resize_map, robust_threshold, top_fraction_mean

ImageLike = Union[str, os.PathLike, np.ndarray, "PIL.Image.Image"]  # noqa: F821


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``"auto"`` picks CUDA when a device is visible, else the CPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_images(images: Sequence[ImageLike], argument: str = "images") -> list[np.ndarray]:
    """Read and check a list of images into ``(H, W, 3)`` uint8 RGB arrays.

    Args:
        images: File paths, PIL images or arrays, as :func:`meds.data.images.decode_image`
            accepts them.
        argument: Name used in error messages.

    Raises:
        TypeError: ``images`` is not a sequence of those, or an array has another dtype.
        ValueError: An array has an impossible shape or float values outside ``[0, 1]``.
    """
    if isinstance(images, (str, os.PathLike, np.ndarray, torch.Tensor)) and not (
        isinstance(images, np.ndarray) and images.ndim == 4
    ):
        raise TypeError(f"{argument}: expected a list of images (paths, arrays or PIL images), got {type(images).__name__}")
    return [decode_image(image, f"{argument}[{i}]") for i, image in enumerate(images)]


class PatchDetector:
    """Base class: feature extraction, post-processing, threshold, predict.

    Args:
        backbone: Backbone preset or timm model name (see :mod:`meds.method.backbones`).
        layers: Feature layers; ``None`` = the preset's.
        image_size: Input size; ``None`` = the preset's.
        crop_size: Centre-crop size; ``None`` = the preset's.
        weights: ``"default"`` (embedded or hub), a local weights file, or ``None`` (random).
        blur_sigma: Gaussian blur of the pixel maps, in input pixels.
        top_fraction: Share of the top pixels averaged into the image score.
        threshold_k: Labels use ``median + k * 1.4826 * MAD`` of the trusted training
            images' scores.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        batch_size: Images per encoder / scoring batch.
        verbose: Show progress bars.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        *,
        layers: Optional[Sequence[Any]] = None,
        image_size: Optional[int] = None,
        crop_size: Optional[int] = None,
        weights: Optional[str] = "default",
        blur_sigma: float = 4.0,
        top_fraction: float = 0.01,
        threshold_k: float = 3.0,
        device: Union[str, torch.device] = "auto",
        batch_size: int = 16,
        verbose: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"{type(self).__name__}: top_fraction must be in (0, 1], got {top_fraction}")
        self.backbone = backbone
        self.layers = list(layers) if layers is not None else None
        self.image_size = image_size
        self.crop_size = crop_size
        self.weights = str(weights) if isinstance(weights, Path) else weights
        self.blur_sigma = float(blur_sigma)
        self.top_fraction = float(top_fraction)
        self.threshold_k = float(threshold_k)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.verbose = bool(verbose)
        self._extractor: Optional[PatchFeatureExtractor] = None
        self.threshold_: Optional[float] = None
        self.grid_: Optional[tuple] = None
        self.group_dims_: Optional[tuple] = None
        self.train_image_size_: Optional[tuple] = None  # (H, W) of the training images

    # -- configuration ---------------------------------------------------------------

    def base_config(self) -> dict:
        """The constructor arguments shared by every detector (JSON-serialisable)."""
        return {
            "backbone": self.backbone,
            "layers": self.layers,
            "image_size": self.image_size,
            "crop_size": self.crop_size,
            "weights": self.weights,
            "blur_sigma": self.blur_sigma,
            "top_fraction": self.top_fraction,
            "threshold_k": self.threshold_k,
            "batch_size": self.batch_size,
        }

    @property
    def extractor(self) -> PatchFeatureExtractor:
        if self._extractor is None:
            kwargs = {"layers": self.layers, "weights": self.weights}
            if self.image_size is not None:
                kwargs["image_size"] = self.image_size
            if self.crop_size is not None:
                kwargs["crop_size"] = self.crop_size
            self._extractor = PatchFeatureExtractor(self.backbone, **kwargs).to(self.device)
        return self._extractor

    @property
    def input_size(self) -> tuple:
        """``(H, W)`` of the encoder input (the size maps are computed at)."""
        return tuple(self.extractor.output_size)

    # -- features and maps -----------------------------------------------------------

    def iter_features(self, images: Sequence[ImageLike], desc: str = "encoder features"):
        """Read, encode and yield ``(arrays, features (n, L, D))`` batch by batch.

        Only one batch of images is in memory at a time, so thousands of large images fit.
        """
        from tqdm.auto import tqdm

        if isinstance(images, (str, os.PathLike)) or not hasattr(images, "__len__"):
            raise TypeError(f"{type(self).__name__}: images must be a list of images, got {type(images).__name__}")
        batches = range(0, len(images), self.batch_size)
        for start in tqdm(batches, desc=desc, unit="batch", disable=not self.verbose or len(batches) < 2):
            arrays = load_images(images[start : start + self.batch_size])
            result = self.extractor.extract(arrays, batch_size=self.batch_size, device=self.device, progress=False)
            self.grid_ = tuple(result.grid)
            self.group_dims_ = tuple(result.group_dims)
            yield arrays, result.features.to(self.device, torch.float32)

    def training_features(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Features ``(N, L, D)`` of a training set, checking it is usable for fitting."""
        name = type(self).__name__
        if not hasattr(images, "__len__") or isinstance(images, (str, os.PathLike)):
            raise TypeError(f"{name}.fit: images must be a list of images, got {type(images).__name__}")
        if len(images) < 2:
            raise ValueError(f"{name}.fit: images must hold at least 2 training images, got {len(images)}")
        features, sizes = [], set()
        for arrays, batch in self.iter_features(images, desc="encoder features (train)"):
            sizes.update(a.shape[:2] for a in arrays)
            if len(sizes) > 1:
                a, b = sorted(sizes)[:2]
                raise ValueError(
                    f"{name}.fit: training images must share one size (one model per camera and "
                    f"category), got {a} and {b}"
                )
            features.append(batch)
        self.train_image_size_ = tuple(int(v) for v in next(iter(sizes)))
        return torch.cat(features)

    def maps_from_patch_scores(self, patch_scores: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` blurred pixel maps at the input size from ``(N, L)`` patch scores."""
        return anomaly_maps(patch_scores, self.grid_, self.input_size, self.blur_sigma)

    def image_scores_from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        return top_fraction_mean(maps.reshape(maps.shape[0], -1), self.top_fraction)

    def _score_features(self, features: torch.Tensor) -> torch.Tensor:
        """Patch scores ``(N, L)`` of a batch of features; implemented by each detector."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_features(self, features: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Image scores ``(N,)`` and pixel maps ``(N, H, W)`` (at the input size) of features.

        For evaluation code that computed the test features once for several detectors.
        """
        self._check_fitted()
        scores, maps = [], []
        for start in range(0, features.shape[0], self.batch_size):
            batch = features[start : start + self.batch_size].to(self.device, torch.float32)
            batch_maps = self.maps_from_patch_scores(self._score_features(batch))
            scores.append(self.image_scores_from_maps(batch_maps).cpu().numpy())
            maps.append(batch_maps.cpu())
        return np.concatenate(scores).astype(np.float64), torch.cat(maps)

    def _set_threshold(self, trusted_features: torch.Tensor) -> None:
        """Label threshold from the score distribution of trusted training images."""
        scores = []
        for start in range(0, trusted_features.shape[0], self.batch_size):
            maps = self.maps_from_patch_scores(self._score_features(trusted_features[start : start + self.batch_size]))
            scores.append(self.image_scores_from_maps(maps).cpu())
        self.threshold_ = robust_threshold(torch.cat(scores).numpy(), self.threshold_k)

    def _check_fitted(self) -> None:
        if self.threshold_ is None:
            raise RuntimeError(f"{type(self).__name__}: call fit() (or load()) before predict()")

    # -- export ----------------------------------------------------------------------

    def export(self, path: Union[str, os.PathLike], format: str = "onnx", *, half: bool = False,
               input_size: Optional[Sequence[int]] = None, chunk: int = 2048) -> Path:
        """Write one ONNX or OpenVINO graph from pixels to decision; :class:`meds.deploy.Detector`
        runs it without torch. Arguments as :func:`meds.method.export.export_model`; returns
        the written file."""
        from .export import export_model

        return export_model(self, path, format, half=half, input_size=input_size, chunk=chunk)

    # -- prediction ------------------------------------------------------------------

    def predict(self, images: Sequence[ImageLike], *, return_maps: bool = True) -> Prediction:
        """Score images.

        Args:
            images: Paths, arrays or PIL images of any size.
            return_maps: Also return the pixel maps, resized to each image's own size.

        Returns:
            A :class:`Prediction`.
        """
        self._check_fitted()
        if len(images) == 0:
            raise ValueError(f"{type(self).__name__}.predict: images is empty")
        scores, maps = [], []
        for arrays, features in self.iter_features(images, desc="predict"):
            with torch.no_grad():
                batch_maps = self.maps_from_patch_scores(self._score_features(features))
            scores.append(self.image_scores_from_maps(batch_maps).cpu().numpy())
            if return_maps:
                maps.extend(resize_map(m, a.shape[:2]) for m, a in zip(batch_maps.cpu().numpy(), arrays))
        scores = np.concatenate(scores).astype(np.float64)
        # `not <=` rather than `>`: a NaN score (a broken model or input) is never labelled good.
        labels = ~(scores <= self.threshold_)
        return Prediction(scores=scores, maps=maps, labels=labels, threshold=float(self.threshold_))
