"""``meds clean``: the cleaned category in the MVTec AD layout, and its atomic replacement."""

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from meds.app import clean as clean_module
from meds.app.clean import write_clean
from meds.data import contaminate, generate_synthetic, load_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean_data")
    generate_synthetic(root, categories=["wood"], n_train=8, n_test_good=3, n_test_defect=4, image_size=32, seed=2)
    return root, contaminate(load_dataset(root, category="wood", format="mvtec"), 0.25, seed=0)  # 2 defects


def _model(n, trusted, seed=0):
    return SimpleNamespace(training_scores_=np.random.default_rng(seed).random(n), trusted_=np.asarray(trusted))


def _selection(folder):
    with open(folder / "selection.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def test_layout_links_and_selection_csv(data, tmp_path):
    _, split = data
    n = len(split.train)
    trusted = np.arange(n) % 3 != 0
    labels = [None] * n
    labels[0], labels[1] = "defective", "good"
    written = write_clean(_model(n, trusted), split, tmp_path, labels=labels)
    out = tmp_path / "wood"
    assert written == {"dir": out, "kept": int(trusted.sum()), "suspicious": int((~trusted).sum()),
                       "test": len(split.test)}
    rows = _selection(out)
    assert len(rows) == n and [int(r["rank"]) for r in rows] == list(range(1, n + 1))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    good = sorted((out / "train" / "good").iterdir())
    suspicious = sorted((out / "suspicious").iterdir())
    assert len(good) == sum(r["kept"] == "true" for r in rows) == trusted.sum()
    assert len(suspicious) == sum(r["kept"] == "false" for r in rows)
    for r in rows:
        target = out / r["written_as"]
        assert target.is_symlink() and target.resolve() == Path(r["file"]).resolve()  # links resolve
        if r["kept"] == "false":
            assert target.name.startswith(f"{int(r['rank']):04d}_")
    by_file = {r["file"]: r for r in rows}
    assert by_file[split.train[0].path]["label_source"] == "labelled defective"
    assert by_file[split.train[1].path]["label_source"] == "labelled good"
    assert {by_file[s.path]["label_source"] for s in split.train[2:]} == {"meds"}
    # The test split as loaded: every image (and mask) under test/<type>/ (ground_truth/<type>/).
    tests = sorted((out / "test").rglob("*.png"))
    assert len(tests) == len(split.test)
    assert sorted(p.resolve() for p in tests) == sorted(Path(s.path).resolve() for s in split.test)
    masks = [s for s in split.test if s.mask_path is not None]
    assert len(list((out / "ground_truth").rglob("*_mask.png"))) == len(masks)


def test_copy_writes_files(data, tmp_path):
    _, split = data
    n = len(split.train)
    write_clean(_model(n, np.ones(n, bool)), split, tmp_path, copy=True)
    files = list((tmp_path / "wood" / "train" / "good").iterdir())
    assert len(files) == n and not any(p.is_symlink() for p in files)
    assert sorted(p.read_bytes() for p in files) == sorted(Path(s.path).read_bytes() for s in split.train)


def test_rerun_replaces_the_folder_whole(data, tmp_path, monkeypatch):
    _, split = data
    n = len(split.train)
    write_clean(_model(n, np.arange(n) < 2, seed=1), split, tmp_path)
    first = _tree(tmp_path / "wood")
    write_clean(_model(n, np.arange(n) >= 2, seed=2), split, tmp_path)
    second = _tree(tmp_path / "wood")
    assert second != first
    rows = _selection(tmp_path / "wood")
    training = [f for f in second if f.startswith(("train/", "suspicious/"))]
    assert sorted(r["written_as"] for r in rows) == training  # nothing of run 1 left
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".wood")] == []

    # A run that fails half-way leaves the previous folder as it was, and no temporary folder.
    calls = []
    real = clean_module._place

    def failing(source, target, copy):
        calls.append(target)
        if len(calls) == 4:
            raise OSError("disk full")
        real(source, target, copy)

    monkeypatch.setattr(clean_module, "_place", failing)
    with pytest.raises(OSError, match="disk full"):
        write_clean(_model(n, np.ones(n, bool), seed=3), split, tmp_path)
    assert _tree(tmp_path / "wood") == second and _selection(tmp_path / "wood") == rows
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".wood")] == []


def _cli(capsys, *args):
    """``meds ARGS`` in this process (the fit is the slow part; no second interpreter start)."""
    from meds.app.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


FAST = ["--image-size", "32", "--steps", "4", "--n-banks", "4", "--device", "cpu", "--quiet"]


def test_cli_clean_with_labels(data, tmp_path, capsys):
    root, _ = data
    train = sorted((root / "wood" / "train" / "good").iterdir())
    labels = tmp_path / "labels.csv"
    labels.write_text(f"filename,label\n{train[0].name},defective\n{train[1].name},good\n")
    result = _cli(capsys, "fit", root, "--category", "wood", "--out", tmp_path / "run", "--labels", labels, *FAST)
    assert result.returncode == 0, result.stderr
    result = _cli(capsys, "clean", root, "--category", "wood", "--out", tmp_path / "clean", "--model",
                  tmp_path / "run", "--labels", labels, "--quiet")
    assert result.returncode == 0, result.stderr
    rows = {Path(r["file"]).name: r for r in _selection(tmp_path / "clean" / "wood")}
    assert rows[train[0].name]["kept"] == "false" and rows[train[0].name]["label_source"] == "labelled defective"
    assert rows[train[1].name]["kept"] == "true" and rows[train[1].name]["label_source"] == "labelled good"
    assert (tmp_path / "clean" / "wood" / "train" / "good" / train[1].name).resolve() == train[1].resolve()
    # The model records its labels: reusing it without them is refused.
    result = _cli(capsys, "clean", root, "--category", "wood", "--out", tmp_path / "clean", "--model",
                  tmp_path / "run", "--quiet")
    assert result.returncode == 2 and "fitted with 1 defective and 1 good labels" in result.stderr

    # A label naming no training image: one line naming it, exit 2, before any fit.
    labels.write_text("filename,label\nnot_there.png,good\n")
    result = _cli(capsys, "fit", root, "--category", "wood", "--out", tmp_path / "run", "--labels", labels, *FAST)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"meds fit: error: --labels {labels}: 'not_there.png' is not a training image of this data set"]
