"""Stages 2 and 3 of MeDS (ICML 2026, arXiv 2605.26676): distillation and progressive selection.

Both stages train only the reconstruction network, on cached encoder features.

* Stage 2 regresses the network's patch scores onto the memory-ensemble scores:
  ``loss = 10 * MSE(s_theta(x), S_M(x))``.
* Stage 3 starts from the distilled weights, keeps a frozen copy ``theta_0`` and, before
  every pass over the data, selects the images it trusts::

      eta_t(x) = (1 - a_t) * agg(s_theta0(x)) + a_t * agg(s_theta(x)),  a_t = min(1, 2t/T)
      keep x  iff  eta_t(x) < median(eta_t) + k * (t/T) * MAD(eta_t)

  then trains on them with the reconstruction loss (mean ``1 - cos``) whose easiest
  fraction ``p`` of patches gets its gradient scaled by 0.1 (``p`` ramps 0 -> 0.5).

Every step's randomness (batch draw, dropout) is a pure function of ``(seed, stage, step)``,
so a run resumed from a checkpoint continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic_io import CorruptFileError, commit_bundle, load_tensors, read_bundle, remove_stale
from ..data.labels import DEFECTIVE, GOOD
from .network import ReconstructionNetwork
from .scoring import top_fraction_mean

#: ``callback(stage, step, total_steps, loss)`` after every optimisation step; raising
#: from it interrupts training (the last checkpoint stays valid).
StepCallback = Callable[[str, int, int, float], None]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule of stages 2 and 3 (paper defaults unless noted).

    Attributes:
        distill_steps: Stage-2 iterations; ``None`` scales with the data
            (:func:`auto_steps`; the paper uses 10k on MVTec AD).
        finetune_steps: Stage-3 iterations ``T``; ``None`` scales likewise.
        batch_size: Images per step.
        lr: Peak learning rate (after warm-up).
        min_lr: Final learning rate of the cosine decay.
        warmup_steps: Linear warm-up steps (capped at a tenth of a stage).
        weight_decay: AdamW weight decay.
        grad_clip: Gradient-norm clip.
        distill_weight: Factor of the distillation MSE.
        selection_k: ``k`` of the selection rule (3 by default; 1 is also used).
        top_fraction: Share of the top patches averaged by ``agg``.
        hard_mining_max: Final share ``p`` of easy patches whose gradient is damped.
        hard_mining_ramp: Share of ``T`` over which ``p`` ramps up (1000 of 10k).
        hard_mining_factor: Gradient factor of the easy patches.
        checkpoint_every: Steps between checkpoints when a checkpoint folder is given.
    """

    distill_steps: Optional[int] = None
    finetune_steps: Optional[int] = None
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    distill_weight: float = 10.0
    selection_k: float = 3.0
    top_fraction: float = 0.01
    hard_mining_max: float = 0.5
    hard_mining_ramp: float = 0.1
    hard_mining_factor: float = 0.1
    checkpoint_every: int = 50

    def __post_init__(self):
        for name in ("batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("distill_steps", "finetune_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"TrainConfig: {name} must be >= 0 or None, got {value}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"TrainConfig: top_fraction must be in (0, 1], got {self.top_fraction}")

    def steps(self, stage: str, n_images: int) -> int:
        """Iterations of ``stage`` (``"distill"``/``"finetune"``): the given ones, else :func:`auto_steps`."""
        given = self.distill_steps if stage == "distill" else self.finetune_steps
        return given if given is not None else auto_steps(n_images, stage)


#: Steps per training image of each stage when none are given (batch 16: 32 and 64 passes).
#: Stage 3 gets twice stage 2's: on the synthetic benchmark at 40 % noise, doubling the
#: fine-tuning steps lifted contamination detection and test AUROC far more than the same
#: steps spent on distillation (benchmarks/RESULTS.md, "Training schedule").
STEPS_PER_IMAGE = {"distill": 2.0, "finetune": 4.0}
MIN_STEPS = {"distill": 150, "finetune": 300}


def auto_steps(n_images: int, stage: str) -> int:
    """Iterations of ``stage`` (``"distill"`` or ``"finetune"``) for ``n_images`` images.

    Proportional to the data (:data:`STEPS_PER_IMAGE`), at least :data:`MIN_STEPS` and at
    most the paper's 10k: small data sets need far fewer steps than the paper's schedule,
    and CPU training stays practical.
    """
    if stage not in STEPS_PER_IMAGE:
        raise ValueError(f"auto_steps: stage must be one of {list(STEPS_PER_IMAGE)}, got {stage!r}")
    return int(min(10_000, max(MIN_STEPS[stage], round(STEPS_PER_IMAGE[stage] * n_images))))


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``min_lr``."""
    warmup = min(config.warmup_steps, max(1, total // 10))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _step_seed(seed: int, stage: str, step: int) -> int:
    return int(np.random.SeedSequence([seed, 2 if stage == "distill" else 3, step]).generate_state(1)[0])


@torch.no_grad()
def patch_scores(network: ReconstructionNetwork, features: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Patch scores ``(N, L)`` of ``network`` in eval mode (no dropout)."""
    was_training = network.training
    network.eval()
    out = torch.cat([network(features[i : i + batch_size]) for i in range(0, features.shape[0], batch_size)])
    network.train(was_training)
    return out


def hard_mining_loss(distances: torch.Tensor, easy_fraction: float, factor: float) -> torch.Tensor:
    """Mean ``1 - cos`` whose easiest ``easy_fraction`` of entries pass ``factor`` of their gradient."""
    if easy_fraction <= 0.0:
        return distances.mean()
    flat = distances.reshape(-1)
    threshold = torch.quantile(flat.detach().float()[:: max(1, flat.numel() // 1_000_000)], easy_fraction)
    damped = factor * flat + (1.0 - factor) * flat.detach()
    return torch.where(flat.detach() < threshold, damped, flat).mean()


def selection_mask(eta: torch.Tensor, k: float, progress: float) -> torch.Tensor:
    """``eta < median + k * progress * MAD`` (the lower half at ``progress = 0``)."""
    # The usual median (mean of the two middle values), not torch.median's lower one.
    median = torch.quantile(eta.double(), 0.5)
    mad = torch.quantile((eta.double() - median).abs(), 0.5)
    return eta < median + k * progress * mad


class Checkpointer:
    """Saves and restores training state in a folder (safetensors + JSON, atomic).

    Each state (``memory_scores``, ``train_state``) is one bundle
    (:func:`meds.atomic_io.commit_bundle`): ``<name>.json`` holds the step, the stage, the
    fingerprint and the checksum of ``<name>.<hash>.safetensors``, and its rename commits
    the save. Killed at any point, the folder holds the previous state or the new one,
    whole: never the JSON of one step with the tensors of another. A state whose files
    fail their checksum is ignored with a warning. Files left by an interrupted save are
    removed when a Checkpointer opens the folder; the caller holds the folder's lock
    (:meth:`MeDS.fit <meds.method.model.MeDS.fit>` does).

    Args:
        folder: Where the states live; ``None`` disables checkpointing.
        fingerprint: Describes the data and settings; a checkpoint with another
            fingerprint is ignored (a fresh run starts instead of resuming the wrong one).
    """

    def __init__(self, folder: Optional[Path], fingerprint: dict):
        self.folder = Path(folder) if folder is not None else None
        self.fingerprint = fingerprint
        if self.folder is not None and self.folder.is_dir():
            remove_stale(self.folder, [p.name for p in self.folder.glob("*.json")])

    def save(self, name: str, tensors: dict, meta: dict) -> None:
        if self.folder is None:
            return
        commit_bundle(self.folder, f"{name}.json", {"fingerprint": self.fingerprint, **meta}, {name: tensors})

    def _read(self, name: str) -> Optional[tuple[dict, Path]]:
        """The verified manifest and tensor file of a state of this fingerprint, if any."""
        if self.folder is None:
            return None
        try:
            meta, files = read_bundle(self.folder, f"{name}.json", "Checkpointer")
        except FileNotFoundError:
            return None
        except CorruptFileError as error:
            warnings.warn(f"{error}; ignoring this checkpoint", RuntimeWarning, stacklevel=3)
            return None
        if meta.get("fingerprint") != self.fingerprint or name not in files:
            return None
        return meta, files[name]

    def load(self, name: str, device) -> Optional[tuple[dict, dict]]:
        found = self._read(name)
        if found is None:
            return None
        meta, path = found
        return load_tensors(path, device), meta

    def save_training(self, stage: str, step: int, network, optimizer, extra: Optional[dict] = None) -> None:
        tensors = {f"net.{k}": v for k, v in network.state_dict().items()}
        tensors.update(extra or {})
        state = optimizer.state_dict()
        for index, values in state["state"].items():
            for key, value in values.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        self.save("train_state", tensors, {"stage": stage, "step": step})

    def training_stage(self) -> Optional[str]:
        """The stage of the saved training state (``"distill"``/``"finetune"``), if any."""
        found = self._read("train_state")
        return None if found is None else found[0].get("stage")

    def load_training(self, stage: str, network, optimizer, device) -> Optional[tuple[int, dict]]:
        """Restore ``network`` and ``optimizer`` from a state saved in ``stage``.

        Returns:
            ``(step, extra tensors)``, or ``None`` when no state of that stage is saved.
        """
        if self.training_stage() != stage:
            return None
        loaded = self.load("train_state", device)
        if loaded is None:
            return None
        tensors, meta = loaded
        network.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        state = optimizer.state_dict()
        restored: dict = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, index, key = name.split(".", 2)
                restored.setdefault(int(index), {})[key] = value.cpu() if key == "step" else value
        state["state"] = restored
        optimizer.load_state_dict(state)
        extra = {k: v for k, v in tensors.items() if not k.startswith(("net.", "optim."))}
        return int(meta["step"]), extra


def _make_optimizer(network: ReconstructionNetwork, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _optimise(network, optimizer, loss, config: TrainConfig, step: int, total: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, step, total)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
    optimizer.step()


class _SeededStep:
    """Forks the torch RNG and seeds it for one step, so dropout never touches global state."""

    def __init__(self, seed: int, device: torch.device):
        self.seed = seed
        self.devices = [device] if device.type == "cuda" else []
        self._fork = None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def distill(
    network: ReconstructionNetwork,
    features: torch.Tensor,
    targets: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int = 0,
    checkpointer: Optional[Checkpointer] = None,
    callback: Optional[StepCallback] = None,
    progress: bool = True,
    labels: Optional[np.ndarray] = None,
) -> ReconstructionNetwork:
    """Stage 2: train ``network`` so its patch scores regress ``targets``.

    Args:
        network: The reconstruction network (trained in place).
        features: Training features ``(N, L, D)``.
        targets: Memory-ensemble scores ``(N, L)``.
        config: Schedule.
        seed: Seed of the batch draws and dropout.
        checkpointer: Saves every ``config.checkpoint_every`` steps; resumes if it holds
            a stage-2 state.
        callback: Called after every step.
        progress: Show a progress bar.
        labels: ``(N,)`` int8 label codes (:func:`meds.data.labels.label_codes`): batches
            never hold an image labelled defective. ``None``: no labels.

    Returns:
        ``network``.
    """
    checkpointer = checkpointer or Checkpointer(None, {})
    # Batches are drawn over positions of `pool` (all images when there are no labels).
    pool = None if labels is None else torch.as_tensor(np.flatnonzero(labels != DEFECTIVE), device=features.device)
    n_pool = features.shape[0] if pool is None else pool.numel()
    total = config.steps("distill", features.shape[0])
    if checkpointer.training_stage() == "finetune":
        return network  # stage 2 finished before the interruption; stage 3 restores the weights
    optimizer = _make_optimizer(network, config)
    resumed = checkpointer.load_training("distill", network, optimizer, features.device)
    start = resumed[0] if resumed is not None else 0
    network.train()
    bar = tqdm(total=total, initial=start, desc="stage 2: distillation", unit="step", disable=not progress)
    for step in range(start, total):
        step_seed = _step_seed(seed, "distill", step)
        rng = np.random.default_rng(step_seed)
        batch = torch.as_tensor(rng.choice(n_pool, size=config.batch_size), device=features.device)
        if pool is not None:
            batch = pool[batch]
        with _SeededStep(step_seed, features.device):
            loss = config.distill_weight * torch.mean((network(features[batch]) - targets[batch]) ** 2)
        _optimise(network, optimizer, loss, config, step, total)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == total:
            checkpointer.save_training("distill", step + 1, network, optimizer)
        if callback is not None:
            callback("distill", step + 1, total, loss.item())
    bar.close()
    return network


@dataclasses.dataclass
class SelectionResult:
    """Outcome of stage 3.

    Attributes:
        network: The fine-tuned network.
        selected: ``(N,)`` bool, the images the last selection kept.
        scores: ``(N,)`` the final ``eta`` of every training image (suspicion score).
        initial_scores: ``(N,)`` ``agg(s_theta0(x))``, the scores of the network stage 3
            started from (the distilled one).
        history: Per pass: step, number of images kept and the cut on ``eta``.
    """

    network: ReconstructionNetwork
    selected: torch.Tensor
    scores: torch.Tensor
    initial_scores: torch.Tensor
    history: list


def _select(network, frozen_aggs, features, config: TrainConfig, step: int, total: int, select: bool,
            labels: Optional[torch.Tensor] = None):
    alpha = min(1.0, 2.0 * step / total) if total else 1.0
    current = top_fraction_mean(patch_scores(network, features), config.top_fraction)
    eta = (1.0 - alpha) * frozen_aggs + alpha * current
    if labels is None:
        if not select:
            return eta, torch.ones_like(eta, dtype=torch.bool)
        return eta, selection_mask(eta, config.selection_k, step / total if total else 1.0)
    # Known defects take no part in the rule (they would widen the cut); known goods are
    # always kept, known defects never.
    allowed = labels != DEFECTIVE
    keep = torch.ones_like(allowed)
    if select:
        keep[allowed] = selection_mask(eta[allowed], config.selection_k, step / total if total else 1.0)
    return eta, (keep | (labels == GOOD)) & allowed


def progressive_selection(
    network: ReconstructionNetwork,
    features: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int = 0,
    checkpointer: Optional[Checkpointer] = None,
    callback: Optional[StepCallback] = None,
    progress: bool = True,
    select: bool = True,
    labels: Optional[np.ndarray] = None,
) -> SelectionResult:
    """Stage 3: fine-tune on the images the model trusts, re-selecting every pass.

    Args:
        network: The distilled network (fine-tuned in place; a frozen copy is kept).
        features: Training features ``(N, L, D)``.
        config: Schedule and selection rule.
        seed: Seed of the pass orders and dropout.
        checkpointer: Saves at the end of a pass once ``config.checkpoint_every`` steps
            have passed since the last save; resumes if it holds a stage-3 state.
        callback: Called after every step.
        progress: Show a progress bar.
        select: ``False`` trains on every image (the plain reconstruction baseline);
            ``eta`` is still reported.
        labels: ``(N,)`` int8 label codes: images labelled good are always selected,
            images labelled defective never (nor trained on). ``None``: no labels.

    Returns:
        The :class:`SelectionResult`.
    """
    checkpointer = checkpointer or Checkpointer(None, {})
    n_images = features.shape[0]
    total = config.steps("finetune", n_images)
    codes = None if labels is None else torch.as_tensor(labels, device=features.device)
    optimizer = _make_optimizer(network, config)
    resumed = checkpointer.load_training("finetune", network, optimizer, features.device)
    if resumed is None:
        # theta_0 is frozen, so its aggregated scores are computed once.
        step, history = 0, []
        frozen_aggs = top_fraction_mean(patch_scores(network, features), config.top_fraction)
    else:
        step, extra = resumed
        frozen_aggs = extra["frozen_aggs"]
        history = [tuple(row) for row in extra["history"].tolist()]
    ramp = max(1.0, config.hard_mining_ramp * total)
    network.train()
    bar = tqdm(total=total, initial=step, desc="stage 3: selection + fine-tuning", unit="step", disable=not progress)
    last_save = step
    while step < total:
        eta, keep = _select(network, frozen_aggs, features, config, step, total, select, codes)
        kept = torch.nonzero(keep).flatten()
        if kept.numel() == 0:  # all eta equal: nothing is below the cut, trust everyone not labelled defective
            kept = (torch.arange(n_images, device=features.device) if codes is None
                    else torch.nonzero(codes != DEFECTIVE).flatten())
        history.append((step, int(kept.numel()), float(eta[kept].max())))
        order = np.random.default_rng(_step_seed(seed, "finetune", step)).permutation(kept.numel())
        order_t = kept[torch.as_tensor(order, device=features.device)]
        network.train()
        for start in range(0, order_t.numel(), config.batch_size):
            if step >= total:
                break
            batch = order_t[start : start + config.batch_size]
            easy = config.hard_mining_max * min(1.0, step / ramp)
            with _SeededStep(_step_seed(seed, "finetune", step), features.device):
                loss = hard_mining_loss(network.patch_distances(features[batch]), easy, config.hard_mining_factor)
            _optimise(network, optimizer, loss, config, step, total)
            step += 1
            bar.update(1)
            bar.set_postfix(kept=int(kept.numel()), loss=f"{loss.item():.4f}", refresh=False)
            if callback is not None:
                callback("finetune", step, total, loss.item())
        if step - last_save >= config.checkpoint_every or step >= total:
            checkpointer.save_training(
                "finetune", step, network, optimizer,
                {"frozen_aggs": frozen_aggs, "history": torch.tensor(history, dtype=torch.float64)},
            )
            last_save = step
    bar.close()
    eta, keep = _select(network, frozen_aggs, features, config, total, total, select, codes)
    return SelectionResult(network=network, selected=keep, scores=eta, initial_scores=frozen_aggs, history=history)
