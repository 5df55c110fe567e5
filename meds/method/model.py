"""The :class:`MeDS` estimator: fit on a contaminated training set, predict, save, load.

Usage::

    model = meds.MeDS(backbone="tf_efficientnet_lite0", n_banks=100, bank_ratio=0.1)
    model.fit(train_images)              # unlabeled, possibly contaminated; one category
    model.training_scores_               # suspicion score of every training image
    model.selected_                      # which training images the final model trusted
    out = model.predict(test_images)     # image scores, pixel maps (image size), labels
    model.save("model_dir"); meds.MeDS.load("model_dir")

The label threshold needs no test labels: it is ``median + threshold_k * 1.4826 * MAD`` of
the image scores of the training images the final selection trusted.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import __version__
from .detector import ImageLike, PatchDetector, resolve_device
from ..atomic_io import load_json, load_tensors, save_json, save_tensors
from .memory import BankCount, check_bank_count, memory_scores
from .scoring import top_fraction_mean
from .network import NETWORK_PRESETS, NetworkConfig, ReconstructionNetwork
from .train import Checkpointer, StepCallback, TrainConfig, distill, patch_scores, progressive_selection

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _network_config(network: Union[str, NetworkConfig, dict]) -> NetworkConfig:
    if isinstance(network, NetworkConfig):
        return network
    if isinstance(network, dict):
        return NetworkConfig(**network)
    if network not in NETWORK_PRESETS:
        raise ValueError(f"MeDS: network must be one of {sorted(NETWORK_PRESETS)} or a NetworkConfig, got {network!r}")
    return NETWORK_PRESETS[network]


def _features_fingerprint(features: torch.Tensor) -> str:
    """A cheap content hash of the training features (to match checkpoints to data)."""
    sample = features[:, :: max(1, features.shape[1] // 64)].detach().to("cpu", torch.float32)
    digest = hashlib.sha1(sample.numpy().tobytes())
    digest.update(str(tuple(features.shape)).encode())
    return digest.hexdigest()


class MeDS(PatchDetector):
    """Memory-Distilled Selection (MeDS, ICML 2026, arXiv 2605.26676) on frozen encoder features.

    Args:
        backbone: Backbone preset or timm model name; the embedded default works offline.
        n_banks: Memories ``B`` of stage 1, or ``"exact"`` for the B -> infinity limit.
        bank_ratio: Share ``rho`` of the training images in each memory.
        bank_replace: Draw memories with replacement (as the official code does).
        exclude_self: Leave-one-out memory scores (a patch never matches its own image).
        metric: Patch distance of stage 1: ``"cosine"``, ``"l2"`` or ``"sqeuclidean"``.
        network: Network preset name (``"small"``, ``"base"``, ``"dinomaly"``) or a
            :class:`~meds.method.network.NetworkConfig`.
        train: Optimisation schedule (:class:`~meds.method.train.TrainConfig`).
        distillation: Run stage 2; ``False`` trains from a random init.
        selection: Run progressive selection in stage 3; ``False`` fine-tunes on every
            image (with ``distillation=False`` that is the plain reconstruction model).
        seed: Seed of every random choice (banks, init, batches, dropout).
        **kwargs: Backbone, post-processing and runtime options of
            :class:`~meds.method.detector.PatchDetector` (``layers``, ``image_size``,
            ``weights``, ``blur_sigma``, ``threshold_k``, ``device``, ``verbose``...).

    Attributes (after fit):
        training_scores_: ``(N,)`` suspicion score of every training image (final ``eta``).
        selected_: ``(N,)`` bool, the training images the final model trusted.
        memory_scores_: ``(N,)`` stage-1 image scores (top-1% mean of the patch scores).
        distilled_network_: The stage-2 network (``theta_0``; not saved by :meth:`save`).
        distilled_scores_: ``(N,)`` its image scores on the training set.
        threshold_: Image-score threshold of ``predict(...).labels``.
        history_: Per selection pass: ``(step, n_kept, cut)``.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        *,
        n_banks: BankCount = 100,
        bank_ratio: float = 0.1,
        bank_replace: bool = True,
        exclude_self: bool = False,
        metric: str = "cosine",
        network: Union[str, NetworkConfig] = "small",
        train: Optional[TrainConfig] = None,
        distillation: bool = True,
        selection: bool = True,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(backbone, **kwargs)
        check_bank_count(n_banks, "MeDS")
        if not 0.0 < bank_ratio <= 1.0:
            raise ValueError(f"MeDS: bank_ratio must be in (0, 1], got {bank_ratio}")
        if metric not in ("cosine", "l2", "sqeuclidean"):
            raise ValueError(f"MeDS: metric must be 'cosine', 'l2' or 'sqeuclidean', got {metric!r}")
        self.n_banks = n_banks if isinstance(n_banks, str) else int(n_banks)
        self.bank_ratio = float(bank_ratio)
        self.bank_replace = bool(bank_replace)
        self.exclude_self = bool(exclude_self)
        self.metric = metric
        self.network_config = _network_config(network)
        self.train_config = train if train is not None else TrainConfig()
        self.distillation = bool(distillation)
        self.selection = bool(selection)
        self.seed = int(seed)
        self.network_: Optional[ReconstructionNetwork] = None
        self.training_scores_: Optional[np.ndarray] = None
        self.selected_: Optional[np.ndarray] = None
        self.memory_scores_: Optional[np.ndarray] = None
        self.history_: list = []
        self.distilled_network_: Optional[ReconstructionNetwork] = None
        self.distilled_scores_: Optional[np.ndarray] = None

    def get_config(self) -> dict:
        """Every constructor argument, JSON-serialisable (what :meth:`save` writes)."""
        return {
            **self.base_config(),
            "n_banks": self.n_banks,
            "bank_ratio": self.bank_ratio,
            "bank_replace": self.bank_replace,
            "exclude_self": self.exclude_self,
            "metric": self.metric,
            "network": dataclasses.asdict(self.network_config),
            "train": dataclasses.asdict(self.train_config),
            "distillation": self.distillation,
            "selection": self.selection,
            "seed": self.seed,
        }

    # -- fitting ---------------------------------------------------------------------

    def fit(
        self,
        images: Sequence[ImageLike],
        *,
        checkpoint_dir: Optional[Union[str, Path]] = None,
        callback: Optional[StepCallback] = None,
    ) -> "MeDS":
        """Fit on one category's (possibly contaminated, unlabeled) training images.

        Args:
            images: Paths, arrays or PIL images, all of one size.
            checkpoint_dir: Folder for checkpoints; if it holds one of the same data and
                settings, training resumes from it.
            callback: ``callback(stage, step, total, loss)`` after every training step.

        Returns:
            ``self``.
        """
        return self.fit_features(self.training_features(images), checkpoint_dir=checkpoint_dir, callback=callback)

    def fit_features(
        self,
        features: torch.Tensor,
        *,
        checkpoint_dir: Optional[Union[str, Path]] = None,
        callback: Optional[StepCallback] = None,
        memory: Optional[torch.Tensor] = None,
    ) -> "MeDS":
        """Fit on precomputed encoder features ``(N, L, D)`` (see :meth:`training_features`).

        Args:
            features: Training features; :attr:`grid_` and :attr:`group_dims_` must match.
            checkpoint_dir: As in :meth:`fit`.
            callback: As in :meth:`fit`.
            memory: Stage-1 patch scores ``(N, L)`` to reuse instead of recomputing them.
        """
        if self.grid_ is None or self.group_dims_ is None:
            raise RuntimeError("MeDS.fit_features: grid_ and group_dims_ are unset; use training_features() first")
        features = features.to(self.device, torch.float32)
        fingerprint = {"data": _features_fingerprint(features), "config": self.get_config(), "version": __version__}
        checkpointer = Checkpointer(checkpoint_dir, json.loads(json.dumps(fingerprint)))

        memory = self._stage1(features, checkpointer) if memory is None else memory.to(self.device)
        self.memory_scores_ = _top_mean(memory, self.train_config.top_fraction)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            network = ReconstructionNetwork(self.group_dims_, self.network_config).to(self.device)
        if self.distillation:
            distill(network, features, memory, self.train_config, seed=self.seed,
                    checkpointer=checkpointer, callback=callback, progress=self.verbose)
        # theta_0, kept frozen by stage 3; also the "distilled only" model of the benchmarks.
        self.distilled_network_ = copy.deepcopy(network).eval()
        result = progressive_selection(network, features, self.train_config, seed=self.seed,
                                       checkpointer=checkpointer, callback=callback,
                                       progress=self.verbose, select=self.selection)
        self.network_ = result.network.eval()
        self.training_scores_ = result.scores.cpu().numpy().astype(np.float64)
        self.selected_ = result.selected.cpu().numpy()
        self.distilled_scores_ = result.initial_scores.cpu().numpy().astype(np.float64)
        self.history_ = [tuple(h) for h in result.history]
        self._set_threshold(features[result.selected])
        return self

    def _stage1(self, features: torch.Tensor, checkpointer: Checkpointer) -> torch.Tensor:
        cached = checkpointer.load("memory_scores", self.device)
        if cached is not None:
            return cached[0]["scores"]
        scores = memory_scores(
            features, n_banks=self.n_banks, bank_ratio=self.bank_ratio, replace=self.bank_replace,
            exclude_self=self.exclude_self, metric=self.metric, seed=self.seed, progress=self.verbose,
        )
        checkpointer.save("memory_scores", {"scores": scores}, {})
        return scores

    def _score_features(self, features: torch.Tensor) -> torch.Tensor:
        return patch_scores(self.network_, features, self.batch_size)

    # -- persistence -----------------------------------------------------------------

    def save(self, path: Union[str, Path]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into folder ``path`` (atomically).

        The backbone's weights are not copied: they come from the embedded package, the
        hub cache, or the local file named in the config.
        """
        self._check_fitted()
        path = Path(path)
        tensors = {f"network.{k}": v for k, v in self.network_.state_dict().items()}
        tensors["training_scores"] = torch.from_numpy(self.training_scores_)
        tensors["selected"] = torch.from_numpy(self.selected_.astype(np.uint8))
        tensors["memory_scores"] = torch.from_numpy(np.asarray(self.memory_scores_, dtype=np.float64))
        save_tensors(tensors, path / WEIGHTS_FILE)
        save_json(
            {
                "meds_version": __version__,
                "model": "MeDS",
                "config": self.get_config(),
                "fitted": {
                    "threshold": self.threshold_,
                    "grid": list(self.grid_),
                    "group_dims": list(self.group_dims_),
                    "history": [list(h) for h in self.history_],
                },
            },
            path / CONFIG_FILE,
        )
        return path

    @classmethod
    def load(cls, path: Union[str, Path], *, device: str = "auto", verbose: bool = True) -> "MeDS":
        """Load a model written by :meth:`save` (no pickle involved)."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"MeDS.load: {path} does not hold {CONFIG_FILE} and {WEIGHTS_FILE}")
        saved = load_json(path / CONFIG_FILE)
        config = dict(saved["config"])
        config["network"] = NetworkConfig(**config["network"])
        config["train"] = TrainConfig(**config["train"])
        backbone = config.pop("backbone")
        model = cls(backbone, device=device, verbose=verbose, **config)
        fitted = saved["fitted"]
        model.threshold_ = float(fitted["threshold"])
        model.grid_ = tuple(fitted["grid"])
        model.group_dims_ = tuple(fitted["group_dims"])
        model.history_ = [tuple(h) for h in fitted["history"]]
        tensors = load_tensors(path / WEIGHTS_FILE, resolve_device(device))
        network = ReconstructionNetwork(model.group_dims_, model.network_config).to(model.device)
        network.load_state_dict({k[len("network."):]: v for k, v in tensors.items() if k.startswith("network.")})
        model.network_ = network.eval()
        model.training_scores_ = tensors["training_scores"].cpu().numpy()
        model.selected_ = tensors["selected"].cpu().numpy().astype(bool)
        model.memory_scores_ = tensors["memory_scores"].cpu().numpy()
        return model


def _top_mean(patch_scores_: torch.Tensor, fraction: float) -> np.ndarray:
    return top_fraction_mean(patch_scores_, fraction).cpu().numpy().astype(np.float64)
