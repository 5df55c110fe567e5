"""One Ray task per category (``meds fit/audit --ray``) or per noise setting (``meds eval --ray``).

Every task runs the very function of the local command (``_fit_and_save``,
``_audit_category``, ``run_setting``), so it writes the same model folders and rows. The
driver shows one progress bar over the tasks and, as they finish, each task's stage names
(sent through a :class:`ray.util.queue.Queue`). A worker that dies is retried by Ray
(``max_retries``; a fit resumes from its checkpoint and ends with the same model); a task
that raises (bad data, ...) is not retried: its error is reported on one line and the
other tasks still finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tqdm.auto import tqdm

from . import connect

#: Retries of a task whose worker died.
MAX_RETRIES = 2

_STAGE_NAMES = {"distill": "stage 2 (distillation)", "finetune": "stage 3 (selection + fine-tuning)"}


@dataclasses.dataclass
class Job:
    """One task: ``fn(*args, report=report)``; ``report(text)`` sends a stage name."""

    name: str
    fn: Callable
    args: tuple


@dataclasses.dataclass
class Outcome:
    name: str
    value: Any = None
    output: str = ""  # what the task printed (shown by the driver when it finishes)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _run_job(job: Job, queue) -> tuple:
    """Inside the worker: run the job, capturing what it prints."""
    def report(text: str) -> None:
        queue.put_nowait((job.name, text))

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        value = job.fn(*job.args, report=report)
    return value, buffer.getvalue()


def _cause(error: Exception) -> str:
    """The message of the exception a task raised (not Ray's wrapper and traceback)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return str(cause) or type(cause).__name__
    first = str(error).strip().splitlines()
    return first[0] if first else type(error).__name__


def run_jobs(jobs: Sequence[Job], *, address: Optional[str] = None, num_cpus: float = 1, num_gpus: float = 0,
             max_retries: int = MAX_RETRIES, progress: bool = True, desc: str = "tasks") -> list:
    """Run the jobs as Ray tasks; return an :class:`Outcome` per job, in job order."""
    ray = connect(address, what="--ray")
    from ray.util.queue import Queue  # noqa: PLC0415

    queue = Queue(actor_options={"num_cpus": 0})
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                      retry_exceptions=False)(_run_job)
    refs = {task.remote(job, queue): i for i, job in enumerate(jobs)}
    outcomes = [Outcome(job.name) for job in jobs]
    bar = tqdm(total=len(jobs), desc=desc, unit="task", disable=not progress, file=sys.stderr)
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            _show_stages(queue, bar, progress)
            for ref in ready:
                out = outcomes[refs[ref]]
                try:
                    out.value, out.output = ray.get(ref)
                except ray.exceptions.RayError as error:
                    out.error = _cause(error)
                if out.output:
                    bar.write(out.output.rstrip("\n"), file=sys.stdout)
                bar.update(1)
                bar.set_postfix_str(out.name)
        _show_stages(queue, bar, progress)
    finally:
        bar.close()
        ray.kill(queue.actor)
    return outcomes


def _show_stages(queue, bar, progress: bool) -> None:
    while not queue.empty():
        name, text = queue.get_nowait()
        if progress:
            bar.write(f"  {name}: {text}", file=sys.stderr)


class _StageReporter:
    """A ``MeDS.fit`` step callback that reports each stage once it has finished."""

    def __init__(self, report: Callable[[str], None]):
        self.report, self.stage, self.start = report, None, time.perf_counter()

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        if stage != self.stage:
            self.report(f"{_STAGE_NAMES.get(self.stage, 'features + stage 1 (memory ensemble)')} done "
                        f"({time.perf_counter() - self.start:.0f} s)")
            self.stage = stage
        if stage == "finetune" and step == total:
            self.report(f"{_STAGE_NAMES[stage]} done ({time.perf_counter() - self.start:.0f} s)")


# -- the jobs (module-level, so workers import them) -------------------------------------


def fit_job(data, kwargs: dict, out: Path, labels=None, *, report) -> None:
    from ..app.cli import _fit_and_save  # noqa: PLC0415

    _fit_and_save(data, {**kwargs, "verbose": False}, out, labels, callback=_StageReporter(report))
    report("saved")


def audit_job(data, args, kwargs: dict, target: Path, many: bool, labels=None, *, report) -> None:
    from ..app.cli import _audit_category  # noqa: PLC0415

    _audit_category(data, args, {**kwargs, "verbose": False}, target, many, labels, callback=_StageReporter(report))
    report("report written")


def eval_job(data, ratio: float, seed: int, config, *, report) -> list:
    from ..evaluation.experiment import run_setting  # noqa: PLC0415

    rows = run_setting(data, ratio, seed, config)
    report("evaluated")
    return rows


def report_failures(command: str, outcomes: Sequence[Outcome], what: str = "category") -> int:
    """One line per failed task on stderr; the exit status (1 if any failed)."""
    failed = [out for out in outcomes if not out.ok]
    for out in failed:
        print(f"meds {command}: error: {what} {out.name!r}: {out.error}", file=sys.stderr)
    return 1 if failed else 0
