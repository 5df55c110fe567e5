"""The ``meds`` command line (also ``python -m meds``).

    meds fit DATA [--category C] --out RUN        train one model per category
    meds predict RUN IMAGES... --out DIR          scores, labels and heat maps
    meds export RUN --format onnx --out FILE      one ONNX / OpenVINO graph, pixels to decision
    meds audit DATA [--category C] --out DIR      rank the training images by suspicion
    meds clean DATA [--category C] --out CLEAN    the trusted images in the MVTec AD layout
    meds eval DATA --noise 0,0.1 --seeds 0,1,2    the noise-robustness table
    meds demo                                     everything above on a synthetic set
    meds bench                                    kernel throughput table

``fit``, ``audit``, ``eval`` and ``predict`` take ``--ray [ADDRESS]`` to run on Ray
(:mod:`meds.distributed`). Errors print one line; ``--debug`` shows the traceback.

Exit status: 0 done; 130 interrupted;

* 2 (:class:`UsageError`) - the arguments are wrong: argparse's own errors, and every check
  of an option's value, alone or with the other options, that needs no file (a value out
  of range, options that do not go together); also a ``--labels`` file that cannot be used
  (unreadable, malformed, naming no or several training images, or disagreeing with the
  ``--model``'s fit), as the README states;
* 1 (:class:`CLIError` and the other errors) - what the command found while doing its work:
  a data or model folder that is missing, empty, corrupt or does not fit the data, an
  unknown category, a held lock, a missing optional package, a failed Ray task.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

EXIT_ERROR = 1
EXIT_USAGE = 2


class CLIError(Exception):
    """A problem the user can fix; printed as one line."""


class UsageError(CLIError):
    """Wrong arguments (exit code 2, like argparse's own errors; see the module doc)."""


# -- argument helpers ------------------------------------------------------------------


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _n_banks(text: str):
    if text == "exact":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'exact', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'exact', got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="tf_efficientnet_lite0", help="backbone preset or timm name")
    g.add_argument("--weights", default="default", help="'default' (embedded / hub) or a local weights file")
    g.add_argument("--image-size", type=int, default=None, help="encoder input size (default: the preset's)")
    g.add_argument("--n-banks", type=_n_banks, default=100, help="memories B, or 'exact' (default 100)")
    g.add_argument("--bank-ratio", type=float, default=0.1, help="share rho of images per memory (default 0.1)")
    g.add_argument("--exclude-self", action="store_true", help="leave-one-out memory scores")
    g.add_argument("--network", default="small", help="network preset: small, base, dinomaly")
    g.add_argument("--steps", type=int, default=None, help="iterations of stage 2 and of stage 3 (default: auto)")
    g.add_argument("--selection-k", type=float, default=3.0, help="k of the selection rule (default 3)")
    g.add_argument("--final", default="reconstruction", choices=["reconstruction", "memory", "fusion"],
                   help="final detector: the paper's network (default), the trusted memory, or both")
    g.add_argument("--coreset-ratio", type=float, default=0.1,
                   help="share of each trusted image's patches kept in the memory (default 0.1)")
    g.add_argument("--no-position-norm", dest="position_norm", action="store_false",
                   help="score with the network's raw patch errors, not standardised per patch position")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    g.add_argument("--seed", type=int, default=0)


def _add_ray_options(p: argparse.ArgumentParser, pool: bool = False) -> None:
    g = p.add_argument_group('Ray (pip install "meds[ray]")')
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray: join the cluster at ADDRESS, or without one start a local instance")
    g.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs per Ray task or actor (default 1)")
    g.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs per Ray task or actor (default 0)")
    if pool:
        g.add_argument("--workers", type=int, default=None,
                       help="actors scoring images (default: the cluster's CPUs / --worker-cpus)")


def _ray_settings(args) -> Optional[dict]:
    """``None`` for a local run, else the address and resources of the Ray tasks."""
    if args.worker_cpus <= 0:
        raise UsageError(f"--worker-cpus must be > 0, got {args.worker_cpus}")
    if args.worker_gpus < 0:
        raise UsageError(f"--worker-gpus must be >= 0, got {args.worker_gpus}")
    if args.ray is None:
        return None
    from ..distributed import require_ray

    require_ray("--ray")
    return {"address": args.ray or None, "num_cpus": args.worker_cpus, "num_gpus": args.worker_gpus,
            "progress": not args.quiet}


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset root: MVTec AD, VisA, Real-IAD or a plain folder")
    p.add_argument("--category", action="append", help="category to use (repeatable; default: all)")
    p.add_argument("--format", default="auto", choices=["auto", "mvtec", "visa", "realiad", "folder"])


def _add_labels_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", help="labels.csv (filename,label with label defective|good, e.g. from the audit "
                   "page): defective images are kept out of the fit, good ones always kept")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meds",
        description="Noise-robust anomaly detection on contaminated training data (MeDS).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("fit", help="train a model per category")
    _add_data_options(p)
    p.add_argument("--out", required=True, help="run folder (one model folder per category)")
    _add_labels_option(p)
    _add_model_options(p)
    _add_ray_options(p)
    _add_common(p)

    p = sub.add_parser("predict", help="score images with a trained model")
    p.add_argument("run", help="a model folder, a run folder with --category, or an exported .onnx / .xml")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--category", help="category model inside the run folder")
    p.add_argument("--out", required=True, help="output folder (predictions.csv, heatmaps/)")
    p.add_argument("--device", default="auto")
    _add_ray_options(p, pool=True)
    _add_common(p)

    p = sub.add_parser("export", help="export a trained model to ONNX or OpenVINO (runs without torch)")
    p.add_argument("run", help="a model folder, or a run folder with --category")
    p.add_argument("--category", help="category model inside the run folder")
    p.add_argument("--format", required=True, choices=["onnx", "openvino"])
    p.add_argument("--out", required=True, help="output file (.onnx, or .xml with a .bin beside it)")
    p.add_argument("--half", action="store_true", help="OpenVINO: FP16 weights")
    p.add_argument("--input-size", type=_int_list, default=None,
                   help="H,W of the input images (default: the training images' size)")
    _add_common(p)

    p = sub.add_parser("audit", help="rank the training images by suspicion (HTML + CSV)")
    _add_data_options(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", help="reuse a model folder written by 'meds fit' instead of training")
    _add_labels_option(p)
    _add_model_options(p)
    _add_ray_options(p)
    _add_common(p)

    p = sub.add_parser("clean", help="write the trusted training images in the MVTec AD layout")
    _add_data_options(p)
    p.add_argument("--out", required=True, help="clean root: <out>/<category>/train/good, suspicious, test")
    p.add_argument("--copy", action="store_true", help="copy the images (default: symbolic links)")
    p.add_argument("--model", help="reuse a model folder written by 'meds fit' instead of training")
    _add_labels_option(p)
    _add_model_options(p)
    _add_common(p)

    p = sub.add_parser("eval", help="noise-robustness evaluation per category")
    _add_data_options(p)
    p.add_argument("--noise", type=_float_list, default=[0.0, 0.1, 0.2, 0.4], help="noise ratios, e.g. 0,0.1,0.2,0.4")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="seeds, e.g. 0,1,2")
    p.add_argument("--methods", default="nearest_neighbour,meds,reconstruction", help="comma-separated methods (or 'all')")
    p.add_argument("--protocols", default="no-overlap",
                   help="noise protocols to evaluate every fit on: no-overlap, overlap or no-overlap,overlap")
    p.add_argument("--overlap", action="store_true", help="shorthand for --protocols overlap (official protocol)")
    p.add_argument("--out", help="folder for results.json and results.md")
    _add_model_options(p)
    _add_ray_options(p)
    _add_common(p)

    p = sub.add_parser("demo", help="the whole pipeline on a generated synthetic dataset")
    p.add_argument("--out", default="meds-demo", help="output folder (default ./meds-demo)")
    p.add_argument("--noise", type=float, default=0.2, help="contamination ratio (default 0.2)")
    p.add_argument("--categories", default=None, help="comma-separated synthetic categories (default: two)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

    p = sub.add_parser("bench", help="kernel throughput table")
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", help="also write the results as JSON")
    _add_common(p)
    return parser


# -- shared steps ----------------------------------------------------------------------


def _model_kwargs(args) -> dict:
    from ..method.train import TrainConfig

    if not 0.0 < args.bank_ratio <= 1.0:
        raise UsageError(f"--bank-ratio must be in (0, 1], got {args.bank_ratio}")
    if not 0.0 < args.coreset_ratio <= 1.0:
        raise UsageError(f"--coreset-ratio must be in (0, 1], got {args.coreset_ratio}")
    if args.steps is not None and args.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {args.steps}")
    train = TrainConfig(distill_steps=args.steps, finetune_steps=args.steps, selection_k=args.selection_k)
    kwargs = dict(
        backbone=args.backbone, weights=None if args.weights == "none" else args.weights,
        n_banks=args.n_banks, bank_ratio=args.bank_ratio, exclude_self=args.exclude_self,
        network=args.network, train=train, device=args.device, seed=args.seed, verbose=not args.quiet,
        final=args.final, coreset_ratio=args.coreset_ratio, position_norm=args.position_norm,
    )
    if args.image_size is not None:
        kwargs["image_size"] = args.image_size
    return kwargs


def _load_categories(args) -> list:
    from ..data import list_categories, load_dataset

    root = Path(args.data)
    if not root.is_dir():
        raise CLIError(f"data folder not found: {root}")
    available = list_categories(root, format=args.format)
    if not available:
        raise CLIError(f"no categories with images found in {root}")
    wanted = args.category or available
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise CLIError(f"unknown category {unknown[0]!r} in {root}; available: {', '.join(available)}")
    datasets = [load_dataset(root, category=c, format=args.format) for c in wanted]
    for data in datasets:
        if len(data.train) < 2:
            raise CLIError(f"category {data.name!r} has {len(data.train)} training image(s); at least 2 are needed")
    return datasets


def _say(text: str) -> None:
    print(text, flush=True)


def _expand_images(items: Sequence[str]) -> list[str]:
    from ..data.images import list_images
    from ..data.types import is_image_file

    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = [str(p) for p in list_images(path, recursive=True)]
            if not found:
                raise CLIError(f"no images found in folder {path}")
            paths.extend(found)
        elif path.is_file():
            if not is_image_file(path):
                raise CLIError(f"not an image file: {path}")
            paths.append(str(path))
        else:
            raise CLIError(f"image not found: {path}")
    return paths


def _fit_category(data, kwargs: dict, checkpoint_dir: Optional[Path] = None, labels=None, callback=None):
    from ..method.model import MeDS

    model = MeDS(**kwargs)
    return model.fit(data.train_paths(), checkpoint_dir=checkpoint_dir, labels=labels, callback=callback)


def _read_labels(args, datasets) -> list:
    """Per category, the per-image labels of ``--labels`` (``None`` entries where unset).

    A name is matched against the training images of every chosen category together, so
    it must name exactly one of them (see :mod:`meds.data.labels`).
    """
    from ..data.labels import match_labels, read_labels

    if not args.labels:
        return [None] * len(datasets)
    try:
        entries = read_labels(args.labels)
        paths = [p for data in datasets for p in data.train_paths()]
        flat = match_labels(entries, paths, f"--labels {args.labels}")
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    out, start = [], 0
    for data in datasets:
        out.append(flat[start : start + len(data.train)])
        start += len(data.train)
    return out


def _datasets_and_labels(args) -> tuple:
    """The chosen categories and, per category, the labels of ``--labels``."""
    datasets = _load_categories(args)
    return datasets, _read_labels(args, datasets)


def _label_counts(labels) -> dict:
    """``{"defective": n, "good": m}`` of per-image labels, as ``MeDS.label_counts_``."""
    from ..data.labels import LABELS

    return {name: sum(1 for x in labels or [] if x == name) for name in LABELS}


def _counts_text(counts: dict) -> str:
    return f"{counts['defective']} defective, {counts['good']} good"


def _say_fitting(data, labels) -> None:
    given = f"; labels: {_counts_text(_label_counts(labels))}" if labels is not None else ""
    _say(f"fitting {data.summary()}{given}")


# -- commands --------------------------------------------------------------------------


def cmd_fit(args) -> int:
    from ..locking import folder_lock

    kwargs = _model_kwargs(args)
    ray = _ray_settings(args)
    out = Path(args.out)
    datasets, labels = _datasets_and_labels(args)
    with folder_lock(out, "--out"):
        if ray is not None:
            from ..distributed.tasks import Job, fit_job, report_failures, run_jobs

            out = out.resolve()  # workers may run elsewhere
            jobs = [Job(data.name, fit_job, (data, kwargs, out, these)) for data, these in zip(datasets, labels)]
            return report_failures("fit", run_jobs(jobs, desc="fit", **ray))
        for data, these in zip(datasets, labels):
            _fit_and_save(data, kwargs, out, these)
    return 0


def _fit_and_save(data, kwargs: dict, out: Path, labels=None, callback=None) -> None:
    """One category: fit (checkpointed in <out>/<category>/checkpoint), save, write scores."""
    target = out / data.name
    _say_fitting(data, labels)
    start = time.perf_counter()
    model = _fit_category(data, kwargs, checkpoint_dir=target / "checkpoint", labels=labels, callback=callback)
    model.save(target)
    _write_training_scores(model, data, target / "training_scores.csv")
    n_flagged = int((~model.selected_).sum())
    _say(f"  saved {target} in {time.perf_counter() - start:.0f} s; "
         f"{n_flagged} of {len(data.train)} training images not trusted; threshold {model.threshold_:.4f}")


def _write_training_scores(model, data, path: Path) -> None:
    import csv
    import io

    from ..atomic_io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "score", "selected"])
    for p, s, sel in zip(data.train_paths(), model.training_scores_, model.selected_):
        writer.writerow([p, f"{s:.6f}", int(sel)])
    atomic_write_text(buffer.getvalue(), path)


def _resolve_model_dir(run: str, category: Optional[str]) -> Path:
    from ..method.persistence import CONFIG_FILE

    path = Path(run)
    if category:
        path = path / category
    if (path / CONFIG_FILE).is_file():
        return path
    if not path.is_dir():
        raise CLIError(f"model folder not found: {path}")
    inside = sorted(p.name for p in path.iterdir() if (p / CONFIG_FILE).is_file())
    if len(inside) == 1:
        raise CLIError(f"{path} is a run folder with one category model ({inside[0]}); "
                       f"choose it with --category {inside[0]}")
    if inside:
        raise CLIError(f"{path} holds {len(inside)} category models ({', '.join(inside)}); choose one with --category")
    raise CLIError(f"{path} holds no model (no {CONFIG_FILE}); train one with 'meds fit'")


def _is_exported(run: str) -> bool:
    return Path(run).suffix in (".onnx", ".xml")


def cmd_predict(args) -> int:
    from .report import write_prediction_outputs

    ray = _ray_settings(args)
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if _is_exported(args.run):
        from ..deploy import Detector

        if args.category:
            raise UsageError(f"--category chooses a model inside a run folder; {args.run} is one exported model")
        if ray is not None:
            raise UsageError(f"--ray scores with a model folder; {args.run} is an exported model")
        try:
            model = Detector(args.run)
        except ImportError as error:
            raise CLIError(str(error)) from None
    else:
        from ..method.model import MeDS

        model_dir = _resolve_model_dir(args.run, args.category)
        model = MeDS.load(model_dir, device="cpu" if ray is not None else args.device, verbose=not args.quiet)
    paths = _expand_images(args.images)
    if ray is not None:
        from ..distributed.predict import predict_on_ray

        scores, labels, maps = predict_on_ray(model_dir, paths, batch_size=model.batch_size, device=args.device,
                                              workers=args.workers, **ray)
        threshold = float(model.threshold_)
    else:
        pred = model.predict(paths)
        scores, labels, maps, threshold = pred.scores, pred.labels, pred.maps, pred.threshold
    written = write_prediction_outputs(paths, scores, labels, maps, None, args.out, threshold,
                                       progress=not args.quiet)
    n_bad = int(labels.sum())
    _say(f"{len(paths)} images scored, {n_bad} above the threshold {threshold:.4f}")
    _say(f"wrote {written.get('csv', Path(args.out) / 'predictions.csv')}")
    return 0


def cmd_export(args) -> int:
    from ..method.model import MeDS

    if args.half and args.format != "openvino":
        raise UsageError("--half needs --format openvino (ONNX is exported in FP32)")
    if args.input_size is not None and (len(args.input_size) != 2 or min(args.input_size) < 1):
        raise UsageError(f"--input-size: expected H,W (two positive integers), got {args.input_size}")
    model = MeDS.load(_resolve_model_dir(args.run, args.category), device="cpu", verbose=not args.quiet)
    try:
        written = model.export(args.out, args.format, half=args.half, input_size=args.input_size)
    except ImportError as error:
        raise CLIError(str(error)) from None
    _say(f"wrote {written} ({args.format}{' FP16' if args.half else ''}, final detector {model.final})")
    return 0


def _check_same_training_files(model, data, model_dir: str) -> None:
    """The model's per-image scores are only valid for the exact training files it saw."""
    from ..method.fingerprint import fingerprint_mismatch, training_fingerprint

    if model.training_files_ is None:
        raise CLIError(f"--model {model_dir} records no training files (fitted from features); "
                       "audit it by fitting here instead (drop --model)")
    why = fingerprint_mismatch(model.training_files_, training_fingerprint(data.train_paths()))
    if why is not None:
        raise CLIError(f"--model {model_dir} was not trained on the training images of {data.name!r}: {why}")


def cmd_audit(args) -> int:
    kwargs = _model_kwargs(args)
    ray = _ray_settings(args)
    out = Path(args.out)
    datasets, labels = _datasets_and_labels(args)
    many = len(datasets) > 1
    targets = [out / data.name if many else out for data in datasets]
    if ray is not None:
        from ..distributed.tasks import Job, audit_job, report_failures, run_jobs

        jobs = [Job(data.name, audit_job, (data, args, kwargs, target.resolve(), many, these))
                for data, target, these in zip(datasets, targets, labels)]
        return report_failures("audit", run_jobs(jobs, desc="audit", **ray))
    for data, target, these in zip(datasets, targets, labels):
        _audit_category(data, args, kwargs, target, many, these)
    return 0


def _audit_category(data, args, kwargs: dict, target: Path, many: bool, labels=None, callback=None) -> None:
    """One category: fit (or load ``--model``, a run folder if ``many``), write the report into ``target``."""
    from .report import write_audit

    model = _model_for(args, data, many, labels, kwargs, callback)
    settings = {"category": data.name, "training images": len(data.train), "backbone": model.backbone,
                "banks": model.n_banks, "bank ratio": model.bank_ratio, "selection k": model.train_config.selection_k,
                "labels used": _counts_text(model.label_counts_)}
    written = write_audit(model, data, target, settings, labels=labels)
    flagged = int((~model.selected_).sum())
    _say(f"{data.name}: {flagged} of {len(data.train)} training images flagged as suspicious")
    _say(f"  report: {written.get('html', target / 'index.html')}")


def _model_for(args, data, many: bool, labels, kwargs: dict, callback=None):
    """The fitted model of one category: loaded from ``--model`` (a run folder if ``many``)
    or fitted here with ``kwargs``."""
    from ..method.model import MeDS

    if args.model:
        from ..method.persistence import CONFIG_FILE

        # A run folder of 'meds fit' holds <category>/; a model folder is used as it is.
        inside = many or (Path(args.model) / data.name / CONFIG_FILE).is_file()
        model = MeDS.load(_resolve_model_dir(args.model, data.name if inside else None),
                          device=args.device, verbose=not args.quiet)
        _check_same_training_files(model, data, args.model)
        # With --model, --labels only says which labels that fit used (for the report and
        # selection.csv); the counts must agree with what the model recorded.
        given = _label_counts(labels)
        if given != model.label_counts_:
            raise UsageError(f"--model {args.model} was fitted with {model.label_counts_['defective']} defective and "
                             f"{model.label_counts_['good']} good labels for {data.name!r}, --labels gives "
                             f"{given['defective']} and {given['good']}; refit with 'meds fit --labels' or pass its labels")
        return model
    _say_fitting(data, labels)
    return _fit_category(data, kwargs, labels=labels, callback=callback)


def cmd_clean(args) -> int:
    from .clean import write_clean

    kwargs = _model_kwargs(args)
    out = Path(args.out)
    datasets, labels = _datasets_and_labels(args)
    for data, these in zip(datasets, labels):
        model = _model_for(args, data, len(datasets) > 1, these, kwargs)
        written = write_clean(model, data, out, labels=these, copy=args.copy)
        _say(f"{data.name}: {written['kept']} trusted training images in {written['dir'] / 'train' / 'good'}, "
             f"{written['suspicious']} in suspicious/, {written['test']} test images")
    return 0


def cmd_eval(args) -> int:
    from ..evaluation.experiment import METHODS, PROTOCOLS, ExperimentConfig, of_protocol, run_experiment
    from ..atomic_io import save_json

    methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)} or 'all'")
    kwargs = _model_kwargs(args)
    model_kwargs = {k: kwargs.pop(k) for k in ("backbone", "weights", "device") if k in kwargs}
    if "image_size" in kwargs:
        model_kwargs["image_size"] = kwargs.pop("image_size")
    kwargs.pop("seed"), kwargs.pop("verbose")
    protocols = ["overlap"] if args.overlap else [p.strip() for p in args.protocols.split(",") if p.strip()]
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise UsageError(f"--protocols: expected no-overlap and/or overlap, got {args.protocols!r}")
    config = ExperimentConfig(noise_ratios=args.noise, seeds=args.seeds, methods=methods, protocols=protocols,
                              model_kwargs={**model_kwargs, "verbose": False}, meds_kwargs=kwargs)
    ray = _ray_settings(args)
    datasets = _load_categories(args)
    start = time.perf_counter()
    status = 0
    if ray is not None:
        from ..distributed.tasks import Job, eval_job, report_failures, run_jobs
        from ..evaluation.experiment import experiment_settings

        jobs = [Job(f"{data.name} noise {ratio} seed {seed}", eval_job, (data, ratio, seed, config))
                for data, ratio, seed in experiment_settings(datasets, config)]
        outcomes = run_jobs(jobs, desc="eval", **ray)
        rows = [row for out in outcomes if out.ok for row in out.value]
        status = report_failures("eval", outcomes, what="setting")
    else:
        rows = run_experiment(datasets, config, verbose=not args.quiet)
    text = "\n\n".join(_results_markdown(of_protocol(rows, p), p, args.seeds) for p in protocols)
    print(text)
    if args.out:
        out = Path(args.out)
        save_json({"rows": rows, "protocols": protocols, "seconds": time.perf_counter() - start}, out / "results.json")
        (out / "results.md").write_text(text + "\n", encoding="utf-8")
        _say(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return status


def _results_markdown(rows, protocol: str, seeds) -> str:
    from ..evaluation.experiment import TEST_METRICS, TRAIN_METRICS, markdown_table

    parts = [f"Noise protocol: {protocol}; seeds {', '.join(map(str, seeds))}; mean ± std over seeds "
             "of the category average, x100."]
    for metric in TEST_METRICS + TRAIN_METRICS:
        parts.append(f"\n{metric}\n\n" + markdown_table(rows, metric))
    return "\n".join(parts)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), noise=args.noise,
             categories=[c.strip() for c in args.categories.split(",")] if args.categories else None,
             device=args.device, seed=args.seed, verbose=not args.quiet)
    return 0


def cmd_bench(args) -> int:
    from ..kernels.bench import main as bench_main

    argv = ["--device", args.device] + (["--quick"] if args.quick else []) + (["--json", args.json] if args.json else [])
    bench_main(argv)
    return 0


COMMANDS = {"fit": cmd_fit, "predict": cmd_predict, "audit": cmd_audit, "clean": cmd_clean, "eval": cmd_eval,
            "demo": cmd_demo, "bench": cmd_bench, "export": cmd_export}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("meds: interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, ValueError, TypeError, RuntimeError, OSError) as error:
        if args.debug:
            raise
        message = str(error) or type(error).__name__
        print(f"meds {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, UsageError) else EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
