"""The noise-robustness experiment behind ``meds eval`` and ``benchmarks/noise_robustness.py``.

For every category, noise ratio and seed, the training set is contaminated with the noise
protocol (:func:`meds.data.contaminate`), the encoder features of the training and test
images are computed once, and every method is fitted and evaluated on the same split:

========================  ==========================================================
``nearest_neighbour``     full-memory nearest neighbour (PatchCore without coreset)
``memory_ensemble``       MeDS stage 1 scores used at test time
``distilled``             MeDS stage 2 only (the frozen ``theta_0`` of stage 3)
``meds``                  full MeDS with its default final detector
``meds_reconstruction``   the same fit scored by the paper's final network
``meds_memory``           the same fit scored by the trusted memory (nearest neighbour)
``meds_fusion``           the same fit scored by both, standardised and summed
``meds_raw``              the same fit scored by the final network's raw patch errors
                          (``position_norm=False``: no standardisation per position)
``reconstruction``        the reconstruction network trained on everything
``meds_exclude_self``     MeDS with leave-one-out memory scores
``meds_exact``            MeDS with ``n_banks="exact"`` (the B -> infinity limit)
========================  ==========================================================

One fit serves every protocol: the training split of a (noise, seed) pair is the same
under no-overlap and overlap (only the test split differs), so each fitted method is
evaluated on the test split of each protocol in ``ExperimentConfig.protocols``.

Test metrics come from :func:`meds.evaluation.metrics.evaluate` (pixel metrics at the encoder's input
resolution); the training-set metrics ``contamination_auroc`` / ``contamination_auprc``
say how well each method's ``training_scores_`` find the defects hidden in training.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from ..method.baselines import MemoryEnsembleDetector, NearestNeighbourDetector
from ..data import CategoryData, apply_split_list, contaminate, read_mask
from .metrics import evaluate, image_ap, image_auroc
from ..method.memory import memory_scores
from ..method.model import FINAL_DETECTORS, MeDS

METHODS = (
    "nearest_neighbour",
    "memory_ensemble",
    "distilled",
    "meds",
    "meds_reconstruction",
    "meds_memory",
    "meds_fusion",
    "meds_raw",
    "reconstruction",
    "meds_exclude_self",
    "meds_exact",
)

METHOD_LABELS = {
    "nearest_neighbour": "Full-memory NN (B=1, rho=1)",
    "memory_ensemble": "Memory ensemble only (stage 1)",
    "distilled": "Distilled only (stage 2)",
    "meds": "MeDS (default final detector)",
    "meds_reconstruction": "MeDS, final = reconstruction (paper)",
    "meds_memory": "MeDS, final = trusted memory",
    "meds_fusion": "MeDS, final = fusion",
    "meds_raw": "MeDS, raw network scores (no position norm)",
    "reconstruction": "Reconstruction, no selection",
    "meds_exclude_self": "MeDS, exclude_self",
    "meds_exact": "MeDS, n_banks=exact",
}

PROTOCOLS = ("no-overlap", "overlap")
TEST_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "aupro", "pixel_ap", "image_f1_max")
TRAIN_METRICS = ("contamination_auroc", "contamination_auprc")


@dataclasses.dataclass
class ExperimentConfig:
    """What one experiment runs.

    Attributes:
        noise_ratios: ``#defects / #normal training images`` levels.
        seeds: Seeds of the contamination draw and of every model.
        methods: Names from :data:`METHODS`.
        protocols: Noise protocols to evaluate each fit on: ``"no-overlap"`` (injected
            defects leave the test split) and/or ``"overlap"`` (they stay: the official
            MeDS protocol).
        model_kwargs: Arguments shared by every detector (backbone, sizes, device...).
        meds_kwargs: Extra arguments of the MeDS-based methods (banks, network, train...).
        split_lists: ``{(noise, seed): csv path}`` of published noisy training lists
            (``filename,clsname`` rows, e.g. the official MeDS splits). When given, the
            settings are these pairs and the lists replace the random contamination.
    """

    noise_ratios: Sequence[float] = (0.0, 0.1, 0.2, 0.4)
    seeds: Sequence[int] = (0, 1, 2)
    methods: Sequence[str] = METHODS
    protocols: Sequence[str] = ("no-overlap",)
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    meds_kwargs: dict = dataclasses.field(default_factory=dict)
    split_lists: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"ExperimentConfig: unknown methods {unknown}; choose from {list(METHODS)}")
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise ValueError(f"ExperimentConfig: protocols must be a non-empty subset of {list(PROTOCOLS)}, "
                             f"got {list(self.protocols)}")
        if any(r < 0 for r in self.noise_ratios):
            raise ValueError(f"ExperimentConfig: noise ratios must be >= 0, got {list(self.noise_ratios)}")


def _test_masks(data: CategoryData, size: Sequence[int]) -> Optional[np.ndarray]:
    if not data.has_masks:
        return None
    return np.stack([read_mask(s.mask_path if s.label else None, size) for s in data.test])


def _training_metrics(scores: Optional[np.ndarray], is_noise: np.ndarray) -> dict:
    if scores is None or not is_noise.any() or is_noise.all():
        return {name: float("nan") for name in TRAIN_METRICS}
    return {
        "contamination_auroc": image_auroc(is_noise.astype(int), scores),
        "contamination_auprc": image_ap(is_noise.astype(int), scores),
    }


def share_features(detector, shared: MeDS):
    """``detector`` set up to take ``shared``'s features as its own (same encoder, grid and
    feature groups), so ``fit_features`` / ``predict_features`` need no second feature pass."""
    detector._extractor = shared.extractor
    detector.grid_, detector.group_dims_ = shared.grid_, shared.group_dims_
    return detector


def _fit_methods(
    methods: Sequence[str],
    train_features: torch.Tensor,
    shared: MeDS,
    config: ExperimentConfig,
    seed: int,
) -> Iterable[tuple[str, object, float]]:
    """Yield ``(method, fitted detector, seconds)`` for each method, sharing work."""
    kwargs = {**config.model_kwargs, "verbose": shared.verbose}
    meds_kwargs = {**kwargs, **config.meds_kwargs, "seed": seed}

    def prepared(detector):
        return share_features(detector, shared)

    def timed(fit: Callable[[], object]):
        start = time.perf_counter()
        detector = fit()
        return detector, time.perf_counter() - start

    # Stage 1 with MeDS's banks is the same for MeDS, the reconstruction baseline (which
    # reports it) and the memory-ensemble detector: compute it once per split. Its time
    # counts in the fit_seconds of the first method that needs it.
    reference = prepared(MeDS(**meds_kwargs))
    stage1: dict = {}

    def memory():
        if "scores" not in stage1:
            stage1["scores"] = memory_scores(
                train_features, n_banks=reference.n_banks, bank_ratio=reference.bank_ratio,
                replace=reference.bank_replace, exclude_self=reference.exclude_self, metric=reference.metric,
                seed=seed, progress=reference.verbose)
        return stage1["scores"]

    def fit_meds(**changes):
        return prepared(MeDS(**{**meds_kwargs, **changes})).fit_features(train_features, memory=memory())

    meds_model, meds_seconds = None, 0.0
    for method in methods:
        if method == "nearest_neighbour":
            det, sec = timed(lambda: prepared(NearestNeighbourDetector(**kwargs)).fit_features(train_features))
        elif method == "memory_ensemble":
            ensemble = MemoryEnsembleDetector(**kwargs, n_banks=reference.n_banks, bank_ratio=reference.bank_ratio,
                                              metric=reference.metric, seed=seed)
            same_banks = reference.bank_replace and not reference.exclude_self
            shared_scores = memory() if same_banks else None
            det, sec = timed(lambda: prepared(ensemble).fit_features(train_features, patch_scores=shared_scores))
        elif method in ("meds", "distilled", "meds_raw") or method.startswith("meds_") and method[5:] in FINAL_DETECTORS:
            if meds_model is None:
                meds_model, meds_seconds = timed(fit_meds)
            if method == "meds":
                det, sec = meds_model, meds_seconds
            elif method == "distilled":
                det, sec = _distilled_view(meds_model), float("nan")
            elif method == "meds_raw":
                det, sec = _raw_view(meds_model), float("nan")
            else:  # the same fit, scored by another final detector
                det, sec = meds_model.with_final(method[5:]), float("nan")
        elif method == "reconstruction":
            det, sec = timed(lambda: fit_meds(distillation=False, selection=False))
        elif method == "meds_exclude_self":
            det, sec = timed(lambda: prepared(MeDS(**{**meds_kwargs, "exclude_self": True})).fit_features(train_features))
        else:  # meds_exact
            det, sec = timed(lambda: prepared(MeDS(**{**meds_kwargs, "n_banks": "exact"})).fit_features(train_features))
        yield method, det, sec


def _distilled_view(model: MeDS) -> MeDS:
    """The stage-2 network of a fitted MeDS as a detector of its own (no extra training)."""
    view = copy.copy(model)
    view.final = "reconstruction"
    view.network_ = model.distilled_network_
    view.position_stats_ = None  # the final network's standardisation does not fit theta_0
    view.training_scores_ = model.distilled_scores_
    return view


def _raw_view(model: MeDS) -> MeDS:
    """The fit scored by its final network without the per-position standardisation: what
    ``position_norm=False`` gives (that setting changes only the scoring, not the training).
    Only for evaluation: its ``threshold_`` is the standardised one's."""
    view = model.with_final("reconstruction")
    view.position_stats_ = None
    return view


def _splits(data: CategoryData, noise: float, seed: int, config: ExperimentConfig) -> dict:
    """``{protocol: contaminated split}``; the training split is the same for every protocol."""
    split_list = config.split_lists.get((noise, seed))
    splits = {}
    for protocol in config.protocols:
        overlap = protocol == "overlap"
        if split_list is not None:
            splits[protocol] = apply_split_list(data, split_list, overlap=overlap)
        else:
            splits[protocol] = contaminate(data, noise, seed, overlap=overlap)
    return splits


def run_setting(
    data: CategoryData,
    noise: float,
    seed: int,
    config: ExperimentConfig,
    *,
    verbose: bool = False,
    on_fitted: Optional[Callable[[str, object, CategoryData], None]] = None,
) -> list[dict]:
    """Contaminate ``data`` at ``noise`` with ``seed``, fit every method once and evaluate
    it under every protocol.

    Args:
        data: A clean category split.
        noise: Contamination ratio.
        seed: Seed of the contamination and of every model.
        config: Methods, protocols and model settings.
        verbose: Progress bars of the feature extraction and training.
        on_fitted: ``on_fitted(method, detector, split)`` after each method is fitted
            (e.g. to write reports from the fitted models); ``split`` is the first
            protocol's.

    Returns:
        One row per method and protocol: category, noise, seed, protocol, sizes, metrics,
        fit seconds.
    """
    splits = _splits(data, noise, seed, config)
    split = splits[config.protocols[0]]
    shared = MeDS(**{**config.model_kwargs, **config.meds_kwargs, "seed": seed, "verbose": verbose})
    train_features = shared.training_features(split.train_paths())
    # Features of every test image any protocol uses, computed once.
    test_paths = list(dict.fromkeys(p for s in splits.values() for p in s.test_paths()))
    features = torch.cat([f for _, f in shared.iter_features(test_paths, desc="encoder features (test)")])
    position = {p: i for i, p in enumerate(test_paths)}
    tests = {protocol: (s, [position[p] for p in s.test_paths()], s.test_labels(), _test_masks(s, shared.input_size))
             for protocol, s in splits.items()}
    is_noise = split.noise_labels()
    rows = []
    for method, detector, seconds in _fit_methods(config.methods, train_features, shared, config, seed):
        if on_fitted is not None:
            on_fitted(method, detector, split)
        training = _training_metrics(getattr(detector, "training_scores_", None), is_noise)
        all_scores, all_maps = detector.predict_features(features)
        for protocol, (s, index, labels, masks) in tests.items():
            scores, maps = all_scores[index], all_maps[index]
            metrics = evaluate(labels, scores, masks, maps.numpy() if masks is not None else None)
            rows.append({
                "category": data.name,
                "method": method,
                "noise": float(noise),
                "seed": int(seed),
                "protocol": protocol,
                "n_train": len(s.train),
                "n_noise": int(is_noise.sum()),
                "n_test": len(s.test),
                "fit_seconds": seconds,
                **{k: float(metrics.get(k, float("nan"))) for k in TEST_METRICS},
                **training,
            })
    return rows


def experiment_settings(datasets: Sequence[CategoryData], config: ExperimentConfig) -> list:
    """``[(data, noise ratio, seed), ...]``: every setting :func:`run_experiment` runs, in order."""
    pairs = sorted(config.split_lists) or [(r, s) for r in config.noise_ratios for s in config.seeds]
    return [(d, r, s) for d in datasets for r, s in pairs]


def run_experiment(
    datasets: Sequence[CategoryData],
    config: ExperimentConfig,
    *,
    verbose: bool = True,
    on_row: Optional[Callable[[dict], None]] = None,
) -> list[dict]:
    """Run :func:`run_setting` for every category, noise ratio and seed.

    Args:
        datasets: Clean category splits.
        config: What to run.
        verbose: A progress bar over the settings.
        on_row: Called with every result row as soon as it exists (e.g. to save
            partial results of a long run).
    """
    from tqdm.auto import tqdm

    settings = experiment_settings(datasets, config)
    rows = []
    bar = tqdm(settings, desc="eval", unit="setting", disable=not verbose)
    for data, ratio, seed in bar:
        bar.set_postfix(category=data.name, noise=ratio, seed=seed, refresh=True)
        for row in run_setting(data, ratio, seed, config):
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


# -- summaries -------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=0))


#: What identifies one measurement: a method on one category, noise ratio, seed and protocol.
SETTING_KEY = ("method", "category", "noise", "seed", "protocol")


def merge_rows(runs: Sequence[tuple[str, Sequence[dict]]]) -> list[dict]:
    """The rows of several runs as one result (e.g. seeds or ratios run separately).

    Args:
        runs: ``(source, rows)`` pairs; ``source`` names the run in errors (a file name).

    Raises:
        ValueError: Two runs hold the same measurement (:data:`SETTING_KEY`): averaging
            both would count that setting twice.
    """
    merged, seen = [], {}
    for source, rows in runs:
        for row in rows:
            key = tuple(row[name] for name in SETTING_KEY)
            if key in seen:
                setting = ", ".join(f"{name}={value}" for name, value in zip(SETTING_KEY, key))
                raise ValueError(f"merge_rows: {source!r} and {seen[key]!r} both measured {setting}")
            seen[key] = source
            merged.append(row)
    return merged


def of_protocol(rows: Sequence[dict], protocol: str) -> list[dict]:
    """The rows measured under one noise protocol (tables never mix protocols)."""
    return [row for row in rows if row["protocol"] == protocol]


def aggregate(rows: Sequence[dict], metric: str) -> dict:
    """``{(method, noise): (mean, std)}`` of ``metric``, for rows of one protocol.

    The category average is taken per seed first, so the std is over seeds (as the
    paper's tables report it).
    """
    if len({row["protocol"] for row in rows}) > 1:
        raise ValueError("aggregate: rows of several protocols; select one with of_protocol()")
    by_key: dict = {}
    for row in rows:
        by_key.setdefault((row["method"], row["noise"], row["seed"]), []).append(row[metric])
    per_seed: dict = {}
    for (method, noise, _), values in by_key.items():
        mean, _ = _mean_std(values)
        per_seed.setdefault((method, noise), []).append(mean)
    return {key: _mean_std(values) for key, values in per_seed.items()}


def _cell(mean: float, std: float, scale: float = 100.0) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def markdown_table(rows: Sequence[dict], metric: str, methods: Optional[Sequence[str]] = None) -> str:
    """Methods x noise ratios, ``mean ± std`` over seeds of the category average (x100)."""
    methods = [m for m in (methods or METHODS) if any(r["method"] == m for r in rows)]
    ratios = sorted({r["noise"] for r in rows})
    table = aggregate(rows, metric)
    # Runs merged from several sources may hold more seeds at some ratios than at others.
    seeds = {r: len({row["seed"] for row in rows if row["noise"] == r}) for r in ratios}
    lines = ["| method | " + " | ".join(f"{100 * r:g}% noise ({seeds[r]} seed{'s' * (seeds[r] > 1)})"
                                       for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for method in methods:
        cells = [_cell(*table.get((method, r), (float("nan"), float("nan")))) for r in ratios]
        lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_category_table(rows: Sequence[dict], metric: str, noise: float, methods: Optional[Sequence[str]] = None) -> str:
    """Categories x methods at one noise ratio, ``mean ± std`` over seeds (x100)."""
    methods = [m for m in (methods or METHODS) if any(r["method"] == m for r in rows)]
    categories = sorted({r["category"] for r in rows})
    lines = ["| category | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for category in categories:
        cells = []
        for method in methods:
            values = [r[metric] for r in rows if r["category"] == category and r["method"] == method and r["noise"] == noise]
            cells.append(_cell(*_mean_std(values)))
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
