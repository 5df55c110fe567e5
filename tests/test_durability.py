"""Nothing lost, nothing mixed: atomic model folders and checkpoints, folder locks, training
fingerprints, corrupted folders, and the smaller error messages of issue 14.

Kills are real: a subprocess runs a save with ``MEDS_TEST_KILL_AT`` naming a point inside
it and exits there (``os._exit``); the test process then loads or resumes what is on disk.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import meds
from meds.app import cli
from meds.atomic_io import KILL_ENV, KILL_EXIT_CODE, CorruptFileError, sha256_file
from meds.data import generate_synthetic, load_dataset
from meds.kernels import ops
from meds.locking import LOCK_FILE, FolderLockedError, folder_lock
from meds.method.network import NetworkConfig
from meds.method.train import TrainConfig

#: Subprocesses run here, so that they import the installed meds (as this process does),
#: not the source tree.
TESTS = Path(__file__).resolve().parent
TINY = dict(image_size=64, network=NetworkConfig(dim=16, depth=1, heads=2), n_banks=5, device="cpu", verbose=False)
SCHEDULE = TrainConfig(distill_steps=8, finetune_steps=8, batch_size=4, checkpoint_every=2)
CLI_FAST = ["--image-size", "64", "--n-banks", "5", "--device", "cpu", "--quiet"]
SAVE_POINTS = ["data-written", "data-renamed", "manifest-written", "committed"]


def python(code: str, *args, kill_at=None, check=False):
    """Run ``code`` in a fresh interpreter (argv[1:] = args), optionally with a kill point."""
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_at:
        env[KILL_ENV] = kill_at
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                            env=env, timeout=600, cwd=TESTS)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def folder_files(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def weights_of(folder: Path) -> Path:
    return folder / json.loads((folder / "config.json").read_text())["files"]["model"]["name"]


def same_model(a, b) -> bool:
    sa, sb = a.network_.state_dict(), b.network_.state_dict()
    return (a.threshold_ == b.threshold_ and a.thresholds_ == b.thresholds_ and a.get_config() == b.get_config()
            and all(torch.equal(sa[k], sb[k]) for k in sa) and np.array_equal(a.training_scores_, b.training_scores_)
            and torch.equal(a.memory_bank_, b.memory_bank_))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, categories=["wood"], n_train=8, n_test_good=2, n_test_defect=2, image_size=64, seed=1)
    return root


@pytest.fixture(scope="module")
def paths(data_root):
    return load_dataset(data_root, category="wood", format="mvtec").train_paths()


@pytest.fixture(scope="module")
def image(data_root):
    return load_dataset(data_root, category="wood", format="mvtec").test_paths()[0]


@pytest.fixture(scope="module")
def saved(paths, tmp_path_factory):
    """Two models of the same data (seeds 0 and 1), each fitted once and saved."""
    root = tmp_path_factory.mktemp("models")
    models = {}
    for name, seed in (("A", 0), ("B", 1)):
        model = meds.MeDS(seed=seed, train=SCHEDULE, **TINY).fit(paths)
        model.save(root / name)
        models[name] = (model, root / name)
    return models


# -- 1. atomic model folders ---------------------------------------------------------


def test_a_model_folder_is_config_plus_one_checksummed_weights_file(saved):
    model, folder = saved["A"]
    config = json.loads((folder / "config.json").read_text())
    entry = config["files"]["model"]
    assert folder_files(folder) == ["config.json", entry["name"]]  # no lock or temp file left
    assert entry["sha256"] == sha256_file(folder / entry["name"]) and entry["name"].startswith("model.")
    assert same_model(meds.MeDS.load(folder, device="cpu", verbose=False), model)


@pytest.mark.parametrize("point", SAVE_POINTS)
def test_a_save_killed_at_any_point_leaves_the_old_model_or_the_new_one(saved, tmp_path, point):
    (old, old_dir), (new, new_dir) = saved["A"], saved["B"]
    target = tmp_path / "model"
    shutil.copytree(old_dir, target)
    result = python("import sys, meds; meds.MeDS.load(sys.argv[1], device='cpu', verbose=False).save(sys.argv[2])",
                    new_dir, target, kill_at=f"config.json:{point}")
    assert result.returncode == KILL_EXIT_CODE, result.stderr
    loaded = meds.MeDS.load(target, device="cpu", verbose=False)
    expected = new if point == "committed" else old
    assert same_model(loaded, expected), f"killed at {point}: neither the old model nor the new one"
    # The next save removes what the killed one left behind.
    new.save(target)
    assert folder_files(target) == ["config.json", weights_of(target).name]
    assert same_model(meds.MeDS.load(target, device="cpu", verbose=False), new)


def test_a_first_save_killed_before_its_commit_leaves_no_model(saved, tmp_path):
    result = python("import sys, meds; meds.MeDS.load(sys.argv[1], device='cpu', verbose=False).save(sys.argv[2])",
                    saved["A"][1], tmp_path / "model", kill_at="config.json:manifest-written")
    assert result.returncode == KILL_EXIT_CODE
    with pytest.raises(FileNotFoundError, match="holds no model"):
        meds.MeDS.load(tmp_path / "model")


def test_a_view_saves_its_final_detector(saved, tmp_path):
    model, _ = saved["A"]
    model.with_final("memory").save(tmp_path / "m")
    loaded = meds.MeDS.load(tmp_path / "m", device="cpu", verbose=False)
    assert loaded.final == "memory" and loaded.threshold_ == model.thresholds_["memory"]
    assert loaded.training_files_ == model.training_files_


# -- 1. atomic checkpoints -----------------------------------------------------------

FIT_WITH_CHECKPOINTS = """
import sys, torch
torch.set_num_threads(1)
import meds
from meds.method.network import NetworkConfig
from meds.method.train import TrainConfig
from meds.data import load_dataset
paths = load_dataset(sys.argv[1], category="wood", format="mvtec").train_paths()
meds.MeDS(image_size=64, network=NetworkConfig(dim=16, depth=1, heads=2), n_banks=5, device="cpu", verbose=False,
          train=TrainConfig(distill_steps=8, finetune_steps=8, batch_size=4, checkpoint_every=2)
          ).fit(paths, checkpoint_dir=sys.argv[2])
"""


@pytest.fixture(scope="module")
def uninterrupted(paths):
    torch.set_num_threads(1)
    return meds.MeDS(train=SCHEDULE, **TINY).fit(paths)


# train_state saves: distill steps 2, 4, 6, 8, then fine-tuning 2, 4, 6, 8 (#6 = fine-tune step 4).
@pytest.mark.parametrize("kill_at", [f"train_state.json:{p}#6" for p in SAVE_POINTS]
                         + ["train_state.json:manifest-written#2", "memory_scores.json:manifest-written"])
def test_a_checkpoint_killed_at_any_point_resumes_to_the_uninterrupted_model(data_root, paths, uninterrupted,
                                                                              tmp_path, kill_at):
    folder = tmp_path / "checkpoint"
    result = python(FIT_WITH_CHECKPOINTS, data_root, folder, kill_at=kill_at)
    assert result.returncode == KILL_EXIT_CODE, result.stderr
    torch.set_num_threads(1)
    resumed = meds.MeDS(train=SCHEDULE, **TINY).fit(paths, checkpoint_dir=folder)
    np.testing.assert_array_equal(resumed.training_scores_, uninterrupted.training_scores_)
    np.testing.assert_array_equal(resumed.selected_, uninterrupted.selected_)
    assert resumed.threshold_ == uninterrupted.threshold_
    # One file per state plus its manifest: the killed save's leftovers are gone.
    names = folder_files(folder)
    assert not [n for n in names if n.endswith(".tmp") or n == LOCK_FILE], names
    assert len([n for n in names if n.startswith("train_state.")]) == 2
    assert len([n for n in names if n.startswith("memory_scores.")]) == 2


def test_a_checkpoint_whose_tensors_were_damaged_is_ignored_with_a_warning(data_root, paths, uninterrupted, tmp_path):
    folder = tmp_path / "checkpoint"
    python(FIT_WITH_CHECKPOINTS, data_root, folder, kill_at="train_state.json:committed#6")
    state = json.loads((folder / "train_state.json").read_text())["files"]["train_state"]["name"]
    (folder / state).write_bytes(b"\0" * 16)
    torch.set_num_threads(1)
    with pytest.warns(RuntimeWarning, match="ignoring this checkpoint"):
        resumed = meds.MeDS(train=SCHEDULE, **TINY).fit(paths, checkpoint_dir=folder)
    np.testing.assert_array_equal(resumed.training_scores_, uninterrupted.training_scores_)  # trained again from the start


# -- 2. locks ------------------------------------------------------------------------


def test_two_concurrent_cli_fits_into_one_folder(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    fit = ["fit", str(data_root), "--category", "wood", "--out", str(run), *CLI_FAST]
    first = subprocess.Popen([sys.executable, "-m", "meds", *fit, "--steps", "4", "--seed", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=TESTS)
    deadline = time.monotonic() + 300
    while first.poll() is None and time.monotonic() < deadline:
        if (run / LOCK_FILE).is_file() and (run / LOCK_FILE).read_text().strip():
            break
        time.sleep(0.02)
    # The second fit (another process: this one) starts while the first holds the folder.
    code = cli.main([*fit, "--steps", "2", "--seed", "1"])
    second = capsys.readouterr()
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0 and "saved" in out, err
    assert code == 1 and "saved" not in second.out
    lines = second.err.strip().splitlines()
    assert len(lines) == 1 and str(run) in lines[0] and f"PID {first.pid}" in lines[0], lines
    model = meds.MeDS.load(run / "wood", device="cpu", verbose=False)
    assert model.seed == 0 and model.train_config.finetune_steps == 4  # the first fit's model, whole
    assert not (run / LOCK_FILE).exists()


HOLD_LOCK = """
import sys, time
from meds.locking import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_save_and_fit_fail_at_once_while_another_process_holds_the_folder(saved, paths, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=TESTS)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(FolderLockedError, match=f"PID {holder.pid}") as info:
            saved["A"][0].save(tmp_path)
        assert str(tmp_path) in str(info.value)
        with pytest.raises(FolderLockedError, match=f"PID {holder.pid}"):
            meds.MeDS(train=SCHEDULE, **TINY).fit(paths, checkpoint_dir=tmp_path)
        assert time.monotonic() - start < 60  # failed at once (the fit never started training)
        assert not (tmp_path / "config.json").exists()
    finally:
        holder.communicate("\n", timeout=60)
    # Released by its holder (or by the OS had it died): free again.
    saved["A"][0].save(tmp_path)


def test_the_lock_is_reentrant_in_one_process_and_released_by_a_dying_holder(tmp_path):
    with folder_lock(tmp_path):
        with folder_lock(tmp_path):
            assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()
    died = python("import os, sys; from meds.locking import folder_lock\n"
                  "with folder_lock(sys.argv[1]): os._exit(3)", tmp_path)
    assert died.returncode == 3 and (tmp_path / LOCK_FILE).exists()  # stale file, lock released by the OS
    with folder_lock(tmp_path):
        pass


# -- 3. training fingerprint ----------------------------------------------------------


def test_the_model_records_its_training_files(saved, paths):
    record = saved["A"][0].training_files_
    assert record["count"] == len(paths) == len(record["files"])
    name, size, sha = record["files"][3]
    assert name == Path(paths[3]).name and size == os.path.getsize(paths[3]) and sha == sha256_file(paths[3])


def test_audit_refuses_a_model_of_other_training_files(saved, data_root, tmp_path, capsys):
    other = tmp_path / "other"
    generate_synthetic(other, categories=["wood"], n_train=8, n_test_good=2, n_test_defect=2, image_size=64, seed=7)
    model_dir = saved["A"][1]
    code = cli.main(["audit", str(other), "--category", "wood", "--model", str(model_dir), "--out",
                     str(tmp_path / "audit"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "was not trained on the training images of 'wood'" in err[0] and "other content" in err[0]
    assert not (tmp_path / "audit").exists()
    # One file more or one file changed is refused too; the model's own data is accepted.
    shutil.copytree(data_root, tmp_path / "same")
    assert cli.main(["audit", str(tmp_path / "same"), "--category", "wood", "--model", str(model_dir),
                     "--out", str(tmp_path / "ok"), "--quiet"]) == 0
    capsys.readouterr()
    first = Path(load_dataset(tmp_path / "same", category="wood", format="mvtec").train_paths()[0])
    first.write_bytes(first.read_bytes() + b"\0")
    assert cli.main(["audit", str(tmp_path / "same"), "--category", "wood", "--model", str(model_dir),
                     "--out", str(tmp_path / "no"), "--quiet"]) == 1
    assert f"training image 0 ('{first.name}') has other content" in capsys.readouterr().err


# -- 4. corrupted or edited model folders -----------------------------------------------


def _edit_config(edit):
    def damage(folder):
        path = folder / "config.json"
        config = json.loads(path.read_text())
        edit(config)
        path.write_text(json.dumps(config))
    return damage


def _rewrite_weights(edit):
    """Change the tensors and record the new checksum, as a save of such a model would."""
    def damage(folder):
        from safetensors.torch import load_file, save_file

        weights = weights_of(folder)
        tensors = load_file(str(weights))
        edit(tensors)
        save_file(tensors, str(weights))
        config = json.loads((folder / "config.json").read_text())
        config["files"]["model"].update(size=weights.stat().st_size, sha256=sha256_file(weights))
        (folder / "config.json").write_text(json.dumps(config))
    return damage


def _truncate(folder):
    weights = weights_of(folder)
    weights.write_bytes(weights.read_bytes()[:1000])


def _nan_weights(tensors):
    name = next(k for k in sorted(tensors) if k.startswith("network.") and tensors[k].is_floating_point())
    tensors[name][...] = float("nan")


CORRUPTIONS = [
    ("fitted.threshold missing", _edit_config(lambda c: c["fitted"].pop("threshold")), "config.json", "'fitted.threshold' is missing"),
    ("fitted.thresholds missing", _edit_config(lambda c: c["fitted"].pop("thresholds")), "config.json", "'fitted.thresholds' is missing"),
    ("fitted.thresholds.memory missing", _edit_config(lambda c: c["fitted"]["thresholds"].pop("memory")), "config.json", "'fitted.thresholds.memory' is missing"),
    ("fitted.fusion_stats missing", _edit_config(lambda c: c["fitted"].pop("fusion_stats")), "config.json", "'fitted.fusion_stats' is missing"),
    ("fusion scale zero", _edit_config(lambda c: c["fitted"]["fusion_stats"]["memory"].__setitem__(1, 0)), "config.json", "'fitted.fusion_stats.memory' must be > 0"),
    ("config.backbone missing", _edit_config(lambda c: c["config"].pop("backbone")), "config.json", "'config.backbone' is missing"),
    ("config.final missing", _edit_config(lambda c: c["config"].pop("final")), "config.json", "'config.final' is missing"),
    ("config.trust_k missing", _edit_config(lambda c: c["config"].pop("trust_k")), "config.json", "'config.trust_k' is missing"),
    ("config.trust_rounds missing", _edit_config(lambda c: c["config"].pop("trust_rounds")), "config.json", "'config.trust_rounds' is missing"),
    ("config.coreset_ratio missing", _edit_config(lambda c: c["config"].pop("coreset_ratio")), "config.json", "'config.coreset_ratio' is missing"),
    ("final unknown", _edit_config(lambda c: c["config"].__setitem__("final", "best")), "config.json", "final must be one of"),
    ("threshold abc", _edit_config(lambda c: c["fitted"].__setitem__("threshold", "abc")), "config.json", "'fitted.threshold' must be a finite number, got 'abc'"),
    ("bank ratio abc", _edit_config(lambda c: c["config"].__setitem__("bank_ratio", "abc")), "config.json", "'config.bank_ratio' must be of type float"),
    ("files missing", _edit_config(lambda c: c.pop("files")), "config.json", "'files'"),
    ("config.json truncated", lambda f: (f / "config.json").write_text((f / "config.json").read_text()[:200]), "config.json", "not valid JSON"),
    ("config.json empty", lambda f: (f / "config.json").write_text(""), "config.json", "not valid JSON"),
    ("weights truncated", _truncate, "model.", "truncated or changed"),
    ("weights empty", lambda f: weights_of(f).write_bytes(b""), "model.", "truncated or changed"),
    ("weights missing", lambda f: weights_of(f).unlink(), "model.", "missing"),
    ("weights edited", lambda f: weights_of(f).write_bytes(weights_of(f).read_bytes()[:-1] + b"x"), "model.", "content changed"),
    ("tensor training_scores missing", _rewrite_weights(lambda t: t.pop("training_scores")), "model.", "tensor 'training_scores' is missing"),
    ("tensor memory_bank missing", _rewrite_weights(lambda t: t.pop("memory_bank")), "model.", "tensor 'memory_bank' is missing"),
    ("tensor trusted missing", _rewrite_weights(lambda t: t.pop("trusted")), "model.", "tensor 'trusted' is missing"),
    ("network tensor missing", _rewrite_weights(lambda t: t.pop(sorted(k for k in t if k.startswith("network."))[0])), "model.", "is missing"),
    ("selected of wrong length", _rewrite_weights(lambda t: t.__setitem__("selected", t["selected"][:-1].clone())), "model.", "tensor 'selected' must have shape (N,)"),
    ("NaN weights", _rewrite_weights(_nan_weights), "model.", "holds NaN or Inf"),
    ("Inf in the memory bank", _rewrite_weights(lambda t: t["memory_bank"].__setitem__((0, 0), float("inf"))), "model.", "tensor 'memory_bank' holds NaN or Inf"),
    ("tensor position_scale missing", _rewrite_weights(lambda t: t.pop("position_scale")), "model.",
     "tensor 'position_scale' is missing (the model was saved with position_norm)"),
    ("position_centre of wrong length", _rewrite_weights(lambda t: t.__setitem__("position_centre", t["position_centre"][:-1].clone())),
     "model.", "tensor 'position_centre' must have shape"),
    ("position_scale zero", _rewrite_weights(lambda t: t["position_scale"].__setitem__(0, 0.0)), "model.",
     "tensor 'position_scale' must be > 0"),
    ("newer meds", _edit_config(lambda c: c.__setitem__("meds_version", "99.0.0")), "99.0.0", f"newer than this meds {meds.__version__}"),
    ("labels null", _edit_config(lambda c: c["fitted"].__setitem__("labels", None)), "config.json", "'fitted.labels' must be"),
    ("image size of three", _edit_config(lambda c: c["fitted"].__setitem__("image_size", [64, 64, 3])), "config.json",
     "'fitted.image_size' must be a list of 2 positive integers"),
]


@pytest.fixture(params=CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def corrupted(request, saved, tmp_path):
    _, damage, where, message = request.param
    folder = tmp_path / "model"
    shutil.copytree(saved["A"][1], folder)
    damage(folder)
    return folder, where, message


def test_a_corrupted_folder_gives_one_line_naming_the_file_and_key(corrupted):
    folder, where, message = corrupted
    with pytest.raises(CorruptFileError) as info:
        meds.MeDS.load(folder, device="cpu", verbose=False)
    text = str(info.value)
    assert "\n" not in text and message in text and where in text, text
    assert str(folder) in text


def test_a_folder_from_before_image_size_and_labels_loads(saved, tmp_path):
    """Older versions wrote neither key: such a folder loads as a fit without labels."""
    folder = tmp_path / "model"
    shutil.copytree(saved["A"][1], folder)
    _edit_config(lambda c: (c["fitted"].pop("image_size"), c["fitted"].pop("labels")))(folder)
    model = meds.MeDS.load(folder, device="cpu", verbose=False)
    assert model.label_counts_ == {"defective": 0, "good": 0}
    assert model.train_image_size_ is None


def test_a_folder_from_before_position_norm_loads_without_it(saved, tmp_path):
    """Older versions neither had the setting nor saved the statistics: such a folder loads
    as a model with raw network scores (what it was fitted with)."""
    folder = tmp_path / "model"
    shutil.copytree(saved["A"][1], folder)
    _rewrite_weights(lambda t: (t.pop("position_centre"), t.pop("position_scale")))(folder)
    _edit_config(lambda c: c["config"].pop("position_norm"))(folder)
    model = meds.MeDS.load(folder, device="cpu", verbose=False)
    assert model.position_norm is False and model.position_stats_ is None


def test_the_cli_prints_a_corrupted_folder_as_one_line(corrupted, image, tmp_path, capsys):
    folder, where, message = corrupted
    code = cli.main(["predict", str(folder), image, "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0], err


def test_the_cli_subprocess_shows_no_traceback_for_a_damaged_model(saved, image, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved["A"][1], folder)
    _truncate(folder)
    result = python("import sys; from meds.app.cli import main; sys.exit(main(sys.argv[1:]))",
                    "predict", folder, image, "--out", tmp_path / "out", "--quiet")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "truncated or changed" in result.stderr


def test_a_non_finite_score_is_never_labelled_good(saved, data_root):
    model = meds.MeDS.load(saved["A"][1], device="cpu", verbose=False)
    with torch.no_grad():
        next(model.network_.parameters()).fill_(float("nan"))
    images = load_dataset(data_root, category="wood", format="mvtec").test_paths()[:2]
    for final in ("reconstruction", "fusion"):
        out = model.with_final(final).predict(images, return_maps=False)
        assert np.isnan(out.scores).all() and out.labels.all()


# -- 5. smaller messages ----------------------------------------------------------------


def test_stale_temporary_files_are_removed_by_the_next_save(saved, tmp_path):
    model, folder = saved["A"]
    target = tmp_path / "m"
    shutil.copytree(folder, target)
    for name in (".config.json.x1.tmp", ".model.x2.tmp", "model.0123456789abcdef.safetensors"):
        (target / name).write_bytes(b"left by a killed save")
    (target / "notes.txt").write_text("the user's")
    model.save(target)
    assert folder_files(target) == ["config.json", weights_of(target).name, "notes.txt"]


def test_the_empty_folder_error_names_the_cli_option(tmp_path, capsys):
    assert cli.main(["fit", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    assert "--format on the command line" in capsys.readouterr().err


def test_a_run_folder_with_one_category_is_not_called_several(saved, tmp_path, capsys):
    shutil.copytree(saved["A"][1], tmp_path / "run" / "base")
    assert cli.main(["predict", str(tmp_path / "run"), str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "several" not in err and "one category model (base)" in err and "--category base" in err


@pytest.mark.parametrize("metric", ["l2", "sqeuclidean"])
def test_euclidean_overflow_gives_inf_not_nan(metric):
    queries = np.full((3, 4), 1e19, np.float32)
    memory = np.full((4, 4), -1e19, np.float32)
    groups = np.array([0, 0, 1, 1])
    out = ops.group_min_distance(queries, memory, groups, 3, metric=metric)
    assert np.isposinf(out[:, :2]).all() and np.isnan(out[:, 2]).all()  # group 2 has no rows
    loo = ops.group_min_distance(queries, memory, groups, metric=metric, query_groups=[0, 1, 5], exclude_self=True)
    np.testing.assert_array_equal(np.isnan(loo), [[True, False], [False, True], [False, False]])
    assert np.isposinf(loo[~np.isnan(loo)]).all()
    assert torch.isposinf(torch.cdist(torch.from_numpy(queries), torch.from_numpy(memory))).all()  # as torch does


def test_kernel_argument_messages():
    q, m, g = np.ones((2, 4), np.float32), np.ones((4, 4), np.float32), np.arange(4)
    with pytest.raises(ValueError, match=r"'groups' must hold ids below 2\*\*63, got 18446744073709551615"):
        ops.group_min_distance(q, m, np.array([0, 1, 2, 2**64 - 1], np.uint64))
    with pytest.raises(ValueError, match=r"ensemble_distance: argument 'banks' .* rows of different lengths"):
        ops.ensemble_distance(q, m, g, [[0, 1], [2]])
    with pytest.raises(ValueError, match=r"'groups' must hold ids in \[0, 3\), got 3 \(G = 3 is the width of the bool mask 'banks'"):
        ops.ensemble_distance(q, m, g, np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="sample_banks: argument 'seed' must be >= 0, got -1"):
        ops.sample_banks(10, seed=-1)
    with pytest.raises(TypeError, match="sample_banks: argument 'seed' must be an int, got str"):
        ops.sample_banks(10, seed="abc")


def test_the_prediction_csv_labels_a_nan_score_anomalous(tmp_path):
    import csv

    from meds.app.report import write_prediction_outputs

    written = write_prediction_outputs(["a.png", "b.png"], [float("nan"), 0.1], None, None, None, tmp_path, 0.5)
    rows = list(csv.DictReader(open(written["csv"])))
    assert [r["label"] for r in rows] == ["1", "0"]
