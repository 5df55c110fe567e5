"""Summaries of the noise-robustness experiment: merging runs, averaging over seeds."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meds.atomic_io import save_json
from meds.evaluation.experiment import TEST_METRICS, TRAIN_METRICS, aggregate, markdown_table, merge_rows

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "noise_robustness.py"


def _row(method, category, noise, seed, auroc, protocol="no-overlap"):
    """A result row as run_experiment writes it; metrics other than image AUROC unmeasured."""
    return {**dict.fromkeys(TEST_METRICS + TRAIN_METRICS, float("nan")), "method": method,
            "category": category, "noise": noise, "seed": seed, "protocol": protocol, "image_auroc": auroc}


def _run(seed, values):
    """Rows of one seed: ``values`` maps (method, category) to image AUROC at 40 % noise."""
    return [_row(m, c, 0.4, seed, v) for (m, c), v in values.items()]


def test_merged_seeds_average_categories_first_then_seeds():
    seed0 = _run(0, {("meds", "a"): 0.90, ("meds", "b"): 0.70})
    seed1 = _run(1, {("meds", "a"): 0.95, ("meds", "b"): 0.85})
    rows = merge_rows([("seed0.json", seed0), ("seed1.json", seed1)])
    assert len(rows) == 4
    mean, std = aggregate(rows, "image_auroc")[("meds", 0.4)]
    per_seed = np.array([0.80, 0.90])  # category means of seed 0 and seed 1
    assert mean == pytest.approx(per_seed.mean()) and std == pytest.approx(per_seed.std())
    table = markdown_table(rows, "image_auroc")
    assert "40% noise (2 seeds)" in table and "85.00 ± 5.00" in table


def test_merge_refuses_a_setting_measured_twice():
    first = _run(0, {("meds", "a"): 0.9})
    again = _run(0, {("meds", "a"): 0.8})
    with pytest.raises(ValueError, match=r"'second.json' and 'first.json' both measured method=meds, category=a"):
        merge_rows([("first.json", first), ("second.json", again)])
    # The same setting under the other protocol is another measurement.
    other = [_row("meds", "a", 0.4, 0, 0.8, protocol="overlap")]
    assert len(merge_rows([("first.json", first), ("second.json", other)])) == 2


def test_table_header_counts_the_seeds_of_each_ratio():
    rows = [_row("meds", "a", 0.0, s, 0.9) for s in (0, 1, 2)] + [_row("meds", "a", 0.2, 0, 0.8)]
    header = markdown_table(rows, "image_auroc").splitlines()[0]
    assert "0% noise (3 seeds)" in header and "20% noise (1 seed)" in header


def test_benchmark_report_merges_saved_runs(tmp_path):
    for seed in (0, 1):
        rows = _run(seed, {("nearest_neighbour", "a"): 0.5 + 0.1 * seed, ("meds", "a"): 0.9})
        save_json({"command": f"run {seed}", "rows": rows, "seconds": 60.0, "complete": seed == 0},
                  tmp_path / f"seed{seed}.json")
    done = subprocess.run([sys.executable, str(BENCHMARK), "--report", str(tmp_path / "seed0.json"),
                           str(tmp_path / "seed1.json")], capture_output=True, text=True, check=True)
    assert "run 0" in done.stdout and "run 1" in done.stdout and "INCOMPLETE" in done.stdout
    assert "40% noise (2 seeds)" in done.stdout and "55.00 ± 5.00" in done.stdout
    twice = subprocess.run([sys.executable, str(BENCHMARK), "--report", str(tmp_path / "seed0.json"),
                            str(tmp_path / "seed0.json")], capture_output=True, text=True)
    assert twice.returncode != 0 and "both measured" in twice.stderr


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("noise_robustness", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_image_size_reaches_the_model(tmp_path, monkeypatch):
    bench = _load_benchmark()
    configs = []
    monkeypatch.setattr(bench, "generate_synthetic", lambda *args, **kwargs: None)
    monkeypatch.setattr(bench, "load_dataset", lambda root, category, format: category)
    monkeypatch.setattr(bench, "run_experiment", lambda datasets, config, **kwargs: configs.append(config))
    argv = ["--quick", "--work", str(tmp_path), "--methods", "meds", "--image-size", "320"]
    assert bench.main(argv) == 0
    assert configs[0].model_kwargs["image_size"] == 320
    assert bench.main(argv[:-2]) == 0
    assert configs[1].model_kwargs["image_size"] == bench.BENCH_MODEL["image_size"]


def test_benchmark_refuses_a_non_positive_image_size(capsys):
    with pytest.raises(SystemExit):
        _load_benchmark().main(["--quick", "--image-size", "0"])
    assert "--image-size: must be a positive number of pixels, got 0" in capsys.readouterr().err
