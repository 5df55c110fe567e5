"""The ``meds`` command line, end to end on a tiny synthetic dataset (subprocesses)."""

import csv
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from meds.data import generate_synthetic

FAST = ["--image-size", "64", "--steps", "6", "--n-banks", "5", "--network", "small", "--device", "cpu", "--quiet"]


def meds_cli(*args, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Run outside the source tree so that the installed package (with its extension) is used.
    result = subprocess.run([sys.executable, "-m", "meds", *map(str, args)], capture_output=True, text=True,
                            env=env, timeout=600, cwd=Path(__file__).resolve().parents[1] / "tests")
    if check and result.returncode != 0:
        raise AssertionError(f"meds {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, categories=["wood"], n_train=8, n_test_good=3, n_test_defect=4, image_size=64, seed=1)
    return root


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = meds_cli("fit", dataset, "--category", "wood", "--out", out, *FAST)
    assert "saved" in result.stdout
    return out


def test_fit_writes_a_loadable_model_and_training_scores(run_dir):
    model_dir = run_dir / "wood"
    weights = json.loads((model_dir / "config.json").read_text())["files"]["model"]["name"]
    assert (model_dir / weights).is_file() and weights.endswith(".safetensors")
    rows = list(csv.DictReader(open(model_dir / "training_scores.csv")))
    assert len(rows) == 8 and set(rows[0]) == {"path", "score", "selected"}


def test_predict_writes_csv_and_heatmaps(run_dir, dataset, tmp_path):
    test_dir = dataset / "wood" / "test"
    result = meds_cli("predict", run_dir, test_dir, "--category", "wood", "--out", tmp_path, "--quiet")
    assert "7 images scored" in result.stdout
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert len(rows) == 7
    assert all(np.isfinite(float(r["score"])) and r["label"] in ("0", "1") for r in rows)
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 7


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_audit_writes_a_report_that_references_existing_files(dataset, tmp_path):
    result = meds_cli("audit", dataset, "--category", "wood", "--out", tmp_path, *FAST)
    assert "report:" in result.stdout
    html = (tmp_path / "index.html").read_text()
    parser = _Links()
    parser.feed(html)
    assert parser.links, "the report shows thumbnails"
    for link in parser.links:
        assert not link.startswith(("http:", "https:", "//"))
        assert (tmp_path / link).is_file(), link
    rows = list(csv.DictReader(open(tmp_path / "audit.csv")))
    scores = [float(r["score"]) for r in rows]
    assert len(rows) == 8 and scores == sorted(scores, reverse=True)


def test_eval_prints_and_writes_the_table(dataset, tmp_path):
    result = meds_cli("eval", dataset, "--noise", "0,0.25", "--seeds", "0", "--methods",
                      "nearest_neighbour,meds", "--out", tmp_path, *FAST)
    assert "image_auroc" in result.stdout and "no-overlap" in result.stdout
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {(r["method"], r["noise"]) for r in saved["rows"]} == {
        ("nearest_neighbour", 0.0), ("nearest_neighbour", 0.25), ("meds", 0.0), ("meds", 0.25)}
    noisy = [r for r in saved["rows"] if r["noise"] == 0.25]
    assert all(r["n_noise"] == 2 for r in noisy)
    assert (tmp_path / "results.md").read_text().count("|") > 10


def test_demo_runs_on_a_reduced_dataset(tmp_path):
    from meds.app.demo import run_demo
    from meds.method.network import NetworkConfig
    from meds.method.train import TrainConfig

    # At 50 % noise 4 defects are injected; the 2 test defects asked for must still be there.
    rows = run_demo(tmp_path, noise=0.5, categories=["tile"], device="cpu", verbose=False,
                    sizes=dict(n_train=8, n_test_good=2, n_test_defect=2, image_size=64),
                    meds_kwargs=dict(image_size=64, n_banks=5, network=NetworkConfig(dim=16, depth=1, heads=2),
                                     train=TrainConfig(distill_steps=4, finetune_steps=4)))
    assert {r["method"] for r in rows} == {"nearest_neighbour", "meds"}
    assert all(np.isfinite(r["image_auroc"]) for r in rows)
    assert (tmp_path / "audit" / "tile" / "index.html").is_file()
    assert list((tmp_path / "heatmaps" / "tile" / "heatmaps").glob("*.png"))


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["fit", "/no/such/folder", "--out", "x"], "not found", 1),
        (["predict", "/no/such/run", "img.png", "--out", "x"], "not found", 1),
        (["eval", "DATA", "--methods", "magic"], "unknown method", 2),
        (["fit", "DATA", "--category", "unicorn", "--out", "x"], "unknown category", 1),
        (["fit", "EMPTY", "--out", "x"], "cannot tell the layout", 1),
        (["fit", "DATA", "--out", "x", "--bank-ratio", "2"], "--bank-ratio", 2),
    ],
)
def test_errors_print_one_line_and_exit_non_zero(dataset, tmp_path, args, message, code):
    (tmp_path / "empty").mkdir()
    args = [str(dataset) if a == "DATA" else str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    result = meds_cli(*args, "--quiet", check=False)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    result = meds_cli("fit", tmp_path / "missing", "--out", tmp_path, "--debug", check=False)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_bench_prints_the_throughput_table(tmp_path):
    result = meds_cli("bench", "--quick", "--json", tmp_path / "bench.json")
    assert "GFLOP/s" in result.stdout
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["build_info"]["simd_selected"]


def test_bad_option_is_a_usage_error():
    result = meds_cli("eval", "x", "--noise", "a,b", check=False)
    assert result.returncode == 2 and "expected comma-separated numbers" in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["fit", "NOWHERE", "--out", "x", "--worker-cpus", "0"], "--worker-cpus must be > 0"),
        (["fit", "NOWHERE", "--out", "x", "--steps", "-1"], "--steps must be >= 0"),
        (["predict", "m.onnx", "img.png", "--out", "x", "--workers", "0"], "--workers must be >= 1"),
        (["predict", "m.onnx", "img.png", "--out", "x", "--category", "c"], "--category chooses a model"),
        (["export", "NOWHERE", "--format", "onnx", "--out", "x.onnx", "--half"], "--half needs --format openvino"),
        (["export", "NOWHERE", "--format", "onnx", "--out", "x.onnx", "--input-size", "64"], "--input-size"),
        (["eval", "NOWHERE", "--protocols", "both"], "--protocols"),
    ],
)
def test_a_bad_option_value_exits_2_before_any_file_is_read(tmp_path, capsys, args, message):
    """Option values checked without reading a file are usage errors, as argparse's own."""
    from meds.app.cli import main

    nowhere = tmp_path / "nowhere"  # never read: the option is refused first
    code = main([str(nowhere) if a == "NOWHERE" else a for a in args] + ["--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-position-norm"], False)])
def test_position_norm_is_on_unless_switched_off(flag, expected):
    from meds.app.cli import _model_kwargs, build_parser

    args = build_parser().parse_args(["fit", "data", "--out", "runs", *flag])
    assert _model_kwargs(args)["position_norm"] is expected
