"""Scale-out on Ray: sharded stage 1, ``meds fit/predict --ray``, retries and errors.

One local Ray instance (2 CPUs, no dashboard) serves the whole module; the CLI runs in this
process, so its tasks reuse the same warm worker processes (torch imports once per worker).
"""

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ray  # in the test extra: a missing Ray must fail here, not skip

from meds.app import cli
from meds.data import generate_synthetic, load_dataset
from meds.method.memory import memory_scores

FAST = ["--image-size", "64", "--steps", "6", "--n-banks", "5", "--network", "small", "--device", "cpu", "--quiet"]
CATEGORIES = ["wood", "tile"]


@pytest.fixture(scope="module", autouse=True)
def cluster(one_thread, tmp_path_factory):
    # one_thread (conftest): Ray gives each worker OMP_NUM_THREADS = its CPUs (1 here).
    # torch's reductions split by thread count, so the local reference runs with the same
    # single thread: then the results agree bit for bit (with other counts, within float32
    # round-off).

    # The raylet waits this long for its agents to start; on a loaded CI runner the
    # default (30 s on Linux) is not always enough.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    # Workers put their start directory first on sys.path: start them outside the source
    # tree, so they import the installed meds (with its compiled _C), as the driver does.
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray_cwd"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        os.chdir(before)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, categories=CATEGORIES, n_train=8, n_test_good=3, n_test_defect=4, image_size=64, seed=1)
    return root


def _fit(dataset, out, *extra):
    assert cli.main(["fit", str(dataset), "--out", str(out), *FAST, *extra]) == 0


@pytest.fixture(scope="module")
def local_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    _fit(dataset, out)
    return out


@pytest.fixture(scope="module")
def ray_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray")
    _fit(dataset, out, "--ray")
    return out


def _training_scores(run: Path, category: str) -> str:
    return (run / category / "training_scores.csv").read_text()


def test_fit_on_ray_writes_the_models_of_the_local_run(dataset, local_run, ray_run):
    from meds.method.model import MeDS

    for category in CATEGORIES:
        assert _training_scores(ray_run, category) == _training_scores(local_run, category)
        here = MeDS.load(local_run / category, device="cpu", verbose=False)
        there = MeDS.load(ray_run / category, device="cpu", verbose=False)
        np.testing.assert_array_equal(there.training_scores_, here.training_scores_)
        np.testing.assert_array_equal(there.selected_, here.selected_)
        test = load_dataset(dataset, category=category).test_paths()
        np.testing.assert_array_equal(there.predict(test, return_maps=False).scores,
                                      here.predict(test, return_maps=False).scores)


def test_predict_on_ray_equals_the_local_csv_and_heat_maps(dataset, ray_run, tmp_path):
    images = str(dataset / "wood" / "test")
    args = ["predict", str(ray_run), images, "--category", "wood", "--device", "cpu", "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "local")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "ray"), "--ray", "--workers", "2"]) == 0
    local = (tmp_path / "local" / "predictions.csv").read_text().splitlines()
    remote = (tmp_path / "ray" / "predictions.csv").read_text().splitlines()
    assert len(local) == 8 and remote == local  # header + 7 images, row for row
    pngs = sorted(p.name for p in (tmp_path / "local" / "heatmaps").glob("*.png"))
    assert len(pngs) == 7 and pngs == sorted(p.name for p in (tmp_path / "ray" / "heatmaps").glob("*.png"))
    for name in pngs:
        assert (tmp_path / "ray" / "heatmaps" / name).read_bytes() == (tmp_path / "local" / "heatmaps" / name).read_bytes()


def test_audit_on_ray_writes_the_local_reports(dataset, ray_run, tmp_path):
    args = ["audit", str(dataset), "--model", str(ray_run), "--device", "cpu", "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "local")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "ray"), "--ray"]) == 0
    for category in CATEGORIES:
        local = (tmp_path / "local" / category / "audit.csv").read_text()
        assert local and (tmp_path / "ray" / category / "audit.csv").read_text() == local


def test_eval_on_ray_gives_the_local_rows(dataset, tmp_path):
    import json

    args = ["eval", str(dataset), "--category", "wood", "--noise", "0,0.25", "--seeds", "0",
            "--methods", "nearest_neighbour,meds", *FAST]
    assert cli.main([*args, "--out", str(tmp_path / "local")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "ray"), "--ray"]) == 0
    rows = [[{k: v for k, v in row.items() if k != "fit_seconds"} for row in
             json.loads((tmp_path / run / "results.json").read_text())["rows"]] for run in ("local", "ray")]
    assert len(rows[0]) == 4 and rows[1] == rows[0]  # same metrics, same order


def test_a_worker_killed_mid_fit_is_retried_and_gives_the_same_model(dataset, local_run, tmp_path):
    from meds.distributed.tasks import Job, run_jobs

    marker = tmp_path / "killed-once"

    def fit_killed_once(data, kwargs, out, *, report):
        def callback(stage, step, total, loss):
            if stage == "finetune" and not marker.exists():
                marker.touch()
                os._exit(1)  # the worker process dies mid-task, after stage 2's checkpoint

        cli._fit_and_save(data, {**kwargs, "verbose": False}, out, callback=callback)

    args = cli.build_parser().parse_args(["fit", str(dataset), "--category", "wood", "--out", str(tmp_path), *FAST])
    data = cli._load_categories(args)[0]
    [outcome] = run_jobs([Job("wood", fit_killed_once, (data, cli._model_kwargs(args), tmp_path))],
                         progress=False)
    assert marker.exists() and outcome.ok, outcome.error
    assert _training_scores(tmp_path, "wood") == _training_scores(local_run, "wood")


def test_a_category_with_bad_data_fails_alone(dataset, local_run, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    for category in CATEGORIES:
        shutil.copytree(dataset / category, data / category)
    from PIL import Image

    broken = sorted((data / "tile" / "train" / "good").iterdir())[0]
    Image.new("RGB", (40, 40)).save(broken)  # a readable image of another size: fit refuses it
    status = cli.main(["fit", str(data), "--out", str(tmp_path / "run"), *FAST, "--ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and "category 'tile'" in err[0] and "one size" in err[0], err
    assert (tmp_path / "run" / "wood" / "config.json").is_file()
    assert _training_scores(tmp_path / "run", "wood") == _training_scores(local_run, "wood").replace(
        str(dataset), str(data))


def _features(n=13, length=16, dim=8):
    return torch.randn(n, length, dim, generator=torch.Generator().manual_seed(0))


def test_sharded_stage1_is_bit_identical_to_local():
    """Same chunks and kernel calls (queries), or the same (Nq, G) minima concatenated from
    memory shards and the same reduction code (memory): equal bits, not just close."""
    from meds.distributed.stage1 import Stage1Workers

    features = _features()
    with Stage1Workers(2) as pool:  # one pair of actors serves every call
        for shard in ("queries", "memory"):
            for n_banks in (7, "exact"):
                for exclude_self in (False, True):
                    settings = dict(n_banks=n_banks, bank_ratio=0.2, exclude_self=exclude_self, images_per_chunk=4,
                                    progress=False)
                    local = memory_scores(features, **settings)
                    sharded = memory_scores(features, workers=pool, shard=shard, **settings)
                    assert torch.equal(sharded, local), (shard, n_banks, exclude_self)


def test_memory_scores_with_workers_starts_and_stops_its_actors():
    features = _features(n=9)
    settings = dict(n_banks=5, bank_ratio=0.3, exclude_self=True, images_per_chunk=2, progress=False)
    sharded = memory_scores(features, workers=2, shard="memory", **settings)
    assert torch.equal(sharded, memory_scores(features, **settings))
    # The call's actors are gone: their CPUs come back.
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU") != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU") == 2


def test_ray_missing_says_which_extra_to_install(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert cli.main(["fit", str(dataset), "--out", str(tmp_path), "--ray", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "meds[ray]"' in err[0]
    assert not (tmp_path / "wood").exists()
    from meds.distributed import RayNotInstalledError

    with pytest.raises(RayNotInstalledError, match=r'pip install "meds\[ray\]"'):
        memory_scores(_features(), workers=2, progress=False)
