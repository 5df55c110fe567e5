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

import contextlib
import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import __version__
from .detector import ImageLike, PatchDetector
from ..locking import folder_lock
from .memory import SHARD_MODES, BankCount, check_bank_count, memory_scores, nearest_neighbour_scores
from .scoring import position_stats, robust_centre_scale, robust_threshold, standardise_positions, top_fraction_mean
from .network import NETWORK_PRESETS, NetworkConfig, ReconstructionNetwork
from .fingerprint import training_fingerprint
from ..data.labels import DEFECTIVE, GOOD, label_codes
from .persistence import load_model, save_model
from .train import Checkpointer, StepCallback, TrainConfig, distill, patch_scores, progressive_selection
from .trusted import PatchMemory, image_coreset, leave_one_out_distance, select_trusted

#: The final detectors :class:`MeDS` can score test images with (see its docstring).
FINAL_DETECTORS = ("reconstruction", "memory", "fusion")


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
        final: The detector that scores test images, fitted from the selection:
            ``"reconstruction"`` (the paper's: the fine-tuned network; the default, as it
            measured best in ``benchmarks/noise_robustness.py``), ``"memory"``
            (nearest neighbour over a coreset of the trusted images' patches) or
            ``"fusion"`` (both scores, each standardised by the median and MAD of the
            trusted images' scores, summed). All three are fitted; :meth:`with_final`
            switches between them without refitting.
        trust_k: Width, in robust standard deviations, of the cut that decides which
            images the memory trusts (:func:`~meds.method.trusted.select_trusted`).
        trust_rounds: Re-score / cut rounds of that selection.
        coreset_ratio: Share of each trusted image's patches kept in the memory bank
            (greedy k-center); bounds the cost of prediction.
        position_norm: Standardise the network's patch scores per patch position by the
            median and MAD of the selected training images
            (:func:`~meds.method.scoring.position_stats`), so an error that is normal at
            an object's edge does not outweigh a defect in a flat region.
        seed: Seed of every random choice (banks, init, batches, dropout).
        workers: Run stage 1 on this many Ray actors, or on a
            :class:`~meds.distributed.stage1.Stage1Workers` (``pip install "meds[ray]"``);
            ``None`` runs it here. The scores are the same (see
            :func:`~meds.method.memory.memory_scores`); not saved with the model.
        stage1_shard: How those actors split stage 1: ``"queries"`` or ``"memory"``.
        **kwargs: Backbone, post-processing and runtime options of
            :class:`~meds.method.detector.PatchDetector` (``layers``, ``image_size``,
            ``weights``, ``blur_sigma``, ``threshold_k``, ``device``, ``verbose``...).

    Attributes (after fit):
        training_scores_: ``(N,)`` suspicion score of every training image (final ``eta``).
        selected_: ``(N,)`` bool, the training images the final network trusted.
        trusted_: ``(N,)`` bool, the images whose patches the memory detector holds.
        memory_bank_: ``(M, D)`` the trusted patches of the memory detector.
        fusion_stats_: ``{"reconstruction": [centre, scale], "memory": [...]}``.
        position_stats_: ``(centre, scale)``, each ``(L,)``: the per-position
            standardisation of the network's patch scores (``None`` without ``position_norm``).
        thresholds_: Label threshold of each final detector.
        label_counts_: ``{"defective": n, "good": m}``, how many labels the fit used
            (saved in ``config.json``).
        training_files_: Fingerprint of the training images (name, size and sha256 of
            each, in order; see :mod:`~meds.method.fingerprint`); ``None`` after
            :meth:`fit_features`.
        memory_scores_: ``(N,)`` stage-1 image scores (top-1% mean of the patch scores).
        train_image_size_: ``(H, W)`` of the training images (the input size of
            :meth:`export`); ``None`` in folders saved before it was recorded.
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
        final: str = "reconstruction",
        trust_k: float = 3.0,
        trust_rounds: int = 1,
        coreset_ratio: float = 0.1,
        position_norm: bool = True,
        seed: int = 0,
        workers=None,
        stage1_shard: str = "queries",
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
        if final not in FINAL_DETECTORS:
            raise ValueError(f"MeDS: final must be one of {list(FINAL_DETECTORS)}, got {final!r}")
        if not 0.0 < coreset_ratio <= 1.0:
            raise ValueError(f"MeDS: coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if int(trust_rounds) < 1:
            raise ValueError(f"MeDS: trust_rounds must be >= 1, got {trust_rounds}")
        self.final = final
        self.trust_k = float(trust_k)
        self.trust_rounds = int(trust_rounds)
        self.coreset_ratio = float(coreset_ratio)
        self.position_norm = bool(position_norm)
        self.network_config = _network_config(network)
        self.train_config = train if train is not None else TrainConfig()
        self.distillation = bool(distillation)
        self.selection = bool(selection)
        self.seed = int(seed)
        if stage1_shard not in SHARD_MODES:
            raise ValueError(f"MeDS: stage1_shard must be one of {list(SHARD_MODES)}, got {stage1_shard!r}")
        self.workers, self.stage1_shard = workers, stage1_shard
        self.network_: Optional[ReconstructionNetwork] = None
        self.training_scores_: Optional[np.ndarray] = None
        self.selected_: Optional[np.ndarray] = None
        self.memory_scores_: Optional[np.ndarray] = None
        self.history_: list = []
        self.distilled_network_: Optional[ReconstructionNetwork] = None
        self.distilled_scores_: Optional[np.ndarray] = None
        self.trusted_: Optional[np.ndarray] = None
        self.memory_bank_: Optional[torch.Tensor] = None
        self.fusion_stats_: dict = {}
        self.position_stats_: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.thresholds_: dict = {}
        self.training_files_: Optional[dict] = None
        self.label_counts_: dict = {"defective": 0, "good": 0}

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
            "final": self.final,
            "trust_k": self.trust_k,
            "trust_rounds": self.trust_rounds,
            "coreset_ratio": self.coreset_ratio,
            "position_norm": self.position_norm,
            "seed": self.seed,
        }

    # -- fitting ---------------------------------------------------------------------

    def fit(
        self,
        images: Sequence[ImageLike],
        *,
        labels: Optional[Sequence[Optional[str]]] = None,
        checkpoint_dir: Optional[Union[str, Path]] = None,
        callback: Optional[StepCallback] = None,
    ) -> "MeDS":
        """Fit on one category's (possibly contaminated, unlabeled) training images.

        Args:
            images: Paths, arrays or PIL images, all of one size.
            labels: A person's corrections, one entry per image: ``"defective"`` (kept out
                of every stage-1 memory, of training and of the trusted memory; still
                scored), ``"good"`` (always selected and trusted) or ``None`` (left to
                MeDS). ``None`` or no entry set: the unlabelled fit, bit for bit.
            checkpoint_dir: Folder for checkpoints; if it holds one of the same data and
                settings, training resumes from it. It is locked while the fit runs: a
                second process fitting into it fails at once (:mod:`meds.locking`).
            callback: ``callback(stage, step, total, loss)`` after every training step.

        Returns:
            ``self``.
        """
        if labels is not None:  # checked before the encoder runs
            label_codes(labels, len(images), "MeDS.fit")
        # Locked before the encoder runs, so a second writer fails at once.
        with folder_lock(checkpoint_dir, "MeDS.fit") if checkpoint_dir is not None else contextlib.nullcontext():
            features = self.training_features(images)
            fingerprint = training_fingerprint(images)  # after the checks of training_features
            self.fit_features(features, checkpoint_dir=checkpoint_dir, callback=callback, labels=labels)
        self.training_files_ = fingerprint
        return self

    def fit_features(
        self,
        features: torch.Tensor,
        *,
        checkpoint_dir: Optional[Union[str, Path]] = None,
        callback: Optional[StepCallback] = None,
        memory: Optional[torch.Tensor] = None,
        labels: Optional[Sequence[Optional[str]]] = None,
    ) -> "MeDS":
        """Fit on precomputed encoder features ``(N, L, D)`` (see :meth:`training_features`).

        Args:
            features: Training features; :attr:`grid_` and :attr:`group_dims_` must match.
            checkpoint_dir: As in :meth:`fit`.
            callback: As in :meth:`fit`.
            memory: Stage-1 patch scores ``(N, L)`` to reuse instead of recomputing them
                (computed with the same ``labels``).
            labels: As in :meth:`fit`.
        """
        if self.grid_ is None or self.group_dims_ is None:
            raise RuntimeError("MeDS.fit_features: grid_ and group_dims_ are unset; use training_features() first")
        codes = label_codes(labels, features.shape[0], "MeDS.fit")
        if codes is not None and int((codes != DEFECTIVE).sum()) < 2:
            raise ValueError(f"MeDS.fit: labels leave {int((codes != DEFECTIVE).sum())} image(s) not labelled "
                             "defective; at least 2 are needed")
        if checkpoint_dir is None:
            return self._fit_features(features, None, callback, memory, codes)
        with folder_lock(checkpoint_dir, "MeDS.fit"):
            return self._fit_features(features, Path(checkpoint_dir), callback, memory, codes)

    def _fit_features(self, features: torch.Tensor, checkpoint_dir: Optional[Path],
                      callback: Optional[StepCallback], memory: Optional[torch.Tensor],
                      codes: Optional[np.ndarray]) -> "MeDS":
        self.training_files_ = None
        features = features.to(self.device, torch.float32)
        fingerprint = {"data": _features_fingerprint(features), "config": self.get_config(), "version": __version__}
        if codes is not None:  # a checkpoint of other labels must not be resumed
            fingerprint["labels"] = hashlib.sha1(codes.tobytes()).hexdigest()
        checkpointer = Checkpointer(checkpoint_dir, json.loads(json.dumps(fingerprint)))
        self.label_counts_ = {name: int((codes == code).sum()) if codes is not None else 0
                              for name, code in (("defective", DEFECTIVE), ("good", GOOD))}

        memory = self._stage1(features, checkpointer, codes) if memory is None else memory.to(self.device)
        self.memory_scores_ = _top_mean(memory, self.train_config.top_fraction)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            network = ReconstructionNetwork(self.group_dims_, self.network_config).to(self.device)
        if self.distillation:
            distill(network, features, memory, self.train_config, seed=self.seed,
                    checkpointer=checkpointer, callback=callback, progress=self.verbose, labels=codes)
        # theta_0, kept frozen by stage 3; also the "distilled only" model of the benchmarks.
        self.distilled_network_ = copy.deepcopy(network).eval()
        result = progressive_selection(network, features, self.train_config, seed=self.seed,
                                       checkpointer=checkpointer, callback=callback,
                                       progress=self.verbose, select=self.selection, labels=codes)
        self.network_ = result.network.eval()
        self.training_scores_ = result.scores.cpu().numpy().astype(np.float64)
        self.selected_ = result.selected.cpu().numpy()
        self.distilled_scores_ = result.initial_scores.cpu().numpy().astype(np.float64)
        self.history_ = [tuple(h) for h in result.history]
        self._fit_final(features, result.scores, codes)
        return self

    def _fit_final(self, features: torch.Tensor, eta: torch.Tensor, codes: Optional[np.ndarray]) -> None:
        """The trusted set, the memory bank, and the standardisation and threshold of each
        final detector (all from training images only)."""
        # The network's raw scores of every training image, computed once: the position
        # statistics come from the selected images, the thresholds from the trusted ones.
        raw = patch_scores(self.network_, features, self.batch_size)
        self.position_stats_ = None
        if self.position_norm:
            selected = torch.as_tensor(self.selected_, device=features.device)
            if not bool(selected.any()):  # every eta equal: no image is below the cut
                selected = torch.ones_like(selected)
            self.position_stats_ = position_stats(raw[selected])
        coreset = image_coreset(features, self.coreset_ratio)
        trusted = select_trusted(features, eta, coreset, self._image_scores, k=self.trust_k,
                                 rounds=self.trust_rounds, metric=self.metric, labels=codes)
        keep = torch.nonzero(trusted.trusted).flatten()
        bank = PatchMemory.of(features, keep, coreset)
        self.memory_bank_ = bank.rows.contiguous()
        self.trusted_ = trusted.trusted.cpu().numpy()

        # Out-of-sample memory scores of the trusted images (never against their own
        # patches); the network's scores of the same images.
        patch = {"memory": leave_one_out_distance(features[keep], PatchMemory(bank.rows, _renumber(bank.images)),
                                                  metric=self.metric),
                 "reconstruction": self._standardised(raw[keep])}
        self.fusion_stats_ = {}
        for name, values in patch.items():
            centre, scale = robust_centre_scale(self._image_scores(values))
            self.fusion_stats_[name] = [centre, max(scale, 1e-12)]
        patch["fusion"] = self._fuse(patch["reconstruction"], patch["memory"])
        self.thresholds_ = {name: robust_threshold(self._image_scores(values), self.threshold_k)
                            for name, values in patch.items()}
        self.threshold_ = self.thresholds_[self.final]

    def _standardised(self, scores: torch.Tensor) -> torch.Tensor:
        """Raw network patch scores ``(N, L)`` standardised per position (if fitted so)."""
        return scores if self.position_stats_ is None else standardise_positions(scores, *self.position_stats_)

    def _reconstruction_scores(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` patch scores of the fine-tuned network, standardised per position."""
        return self._standardised(patch_scores(self.network_, features, self.batch_size))

    def _image_scores(self, patch: torch.Tensor) -> torch.Tensor:
        """``(N,)`` image scores of ``(N, L)`` patch scores (maps, blur, top fraction), batched."""
        return torch.cat([self.image_scores_from_maps(self.maps_from_patch_scores(patch[i : i + self.batch_size]))
                          for i in range(0, patch.shape[0], self.batch_size)])

    def _fuse(self, reconstruction: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        (c_rec, w_rec), (c_mem, w_mem) = self.fusion_stats_["reconstruction"], self.fusion_stats_["memory"]
        return (reconstruction - c_rec) / w_rec + (memory - c_mem) / w_mem

    def with_final(self, final: str) -> "MeDS":
        """A view of this fitted model that scores with another final detector (no refit)."""
        if final not in FINAL_DETECTORS:
            raise ValueError(f"MeDS.with_final: final must be one of {list(FINAL_DETECTORS)}, got {final!r}")
        self._check_fitted()
        view = copy.copy(self)
        view.final = final
        view.threshold_ = self.thresholds_[final]
        return view

    def _stage1(self, features: torch.Tensor, checkpointer: Checkpointer, codes: Optional[np.ndarray]) -> torch.Tensor:
        cached = checkpointer.load("memory_scores", self.device)
        if cached is not None:
            return cached[0]["scores"]
        scores = memory_scores(
            features, n_banks=self.n_banks, bank_ratio=self.bank_ratio, replace=self.bank_replace,
            exclude_self=self.exclude_self, metric=self.metric, seed=self.seed, progress=self.verbose,
            allowed=None if codes is None else torch.as_tensor(codes != DEFECTIVE),
            workers=self.workers, shard=self.stage1_shard,
        )
        checkpointer.save("memory_scores", {"scores": scores}, {})
        return scores

    def _score_features(self, features: torch.Tensor) -> torch.Tensor:
        if self.final == "reconstruction":
            return self._reconstruction_scores(features)
        n, length, dim = features.shape
        memory = nearest_neighbour_scores(features.reshape(-1, dim), self.memory_bank_,
                                          metric=self.metric).reshape(n, length)
        if self.final == "memory":
            return memory
        return self._fuse(self._reconstruction_scores(features), memory)

    # -- persistence -----------------------------------------------------------------

    def save(self, path: Union[str, Path]) -> Path:
        """Write the model into folder ``path``: ``config.json`` + ``model.<hash>.safetensors``.

        One atomic commit (:mod:`~meds.method.persistence`): interrupted at any point, the
        folder still holds the previous model (or none), never a mix; the folder is locked
        while it is written. A view from :meth:`with_final` saves with its final detector.
        The backbone's weights are not copied: they come from the embedded package, the
        hub cache, or the local file named in the config.
        """
        self._check_fitted()
        return save_model(self, path)

    @classmethod
    def load(cls, path: Union[str, Path], *, device: str = "auto", verbose: bool = True) -> "MeDS":
        """Load a model written by :meth:`save` (no pickle involved).

        Every file, key and tensor is checked first; a missing, truncated or edited one,
        non-finite weights, or a folder written by a newer meds raise
        :class:`~meds.atomic_io.CorruptFileError` (a ``ValueError``) naming the file and key.
        """
        return load_model(cls, path, device=device, verbose=verbose)


def _renumber(ids: torch.Tensor) -> torch.Tensor:
    """Map ids to ``0..n-1`` in order of first appearance (ids arrive sorted, as groups)."""
    return torch.unique_consecutive(ids, return_inverse=True)[1]


def _top_mean(patch_scores_: torch.Tensor, fraction: float) -> np.ndarray:
    return top_fraction_mean(patch_scores_, fraction).cpu().numpy().astype(np.float64)
