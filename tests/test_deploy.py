"""Exported graphs (ONNX, OpenVINO) give MeDS.predict's results, and run without torch."""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import meds
from meds.app.cli import main as meds_main
from meds.data import generate_synthetic, load_dataset
from meds.deploy import Detector
from meds.method.baselines import NearestNeighbourDetector
from meds.method.model import FINAL_DETECTORS
from meds.method.network import NetworkConfig
from meds.method.train import TrainConfig

import onnx  # noqa: E402  (the deploy extra is part of the test extra: these tests never skip)

# Runs a script in a fresh interpreter in which `import torch` fails.
NO_TORCH = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, _NoTorch())
""")


def run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(meds.__file__).parent.parent), TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# One torch thread: on a shared 2-core machine more threads only contend (10x slower).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    # 120 px images, 96 px encoder input: the graph resizes (antialiased) as predict does.
    generate_synthetic(root, categories=["tile"], n_train=12, n_test_good=4, n_test_defect=4, image_size=120, seed=3)
    data = load_dataset(root, category="tile", format="mvtec")
    return data.train_paths(), data.test_paths()


@pytest.fixture(scope="module")
def fitted(paths):
    model = meds.MeDS(image_size=96, network=NetworkConfig(dim=32, depth=1, heads=2), n_banks=10,
                      train=TrainConfig(distill_steps=20, finetune_steps=20, batch_size=8),
                      device="cpu", verbose=False)
    return model.fit(paths[0])


def with_mixed_labels(model, images):
    """A view whose threshold lies between two middle scores, so both labels occur."""
    scores = np.sort(model.predict(images, return_maps=False).scores)
    view = model.with_final(model.final)
    view.threshold_ = float((scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2)
    return view


def assert_same(got, expected):
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-4)
    assert len(got.maps) == len(expected.maps)
    for a, b in zip(got.maps, expected.maps):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(got.labels, expected.labels)
    assert got.labels.dtype == bool and got.threshold == expected.threshold


@pytest.mark.parametrize("final", FINAL_DETECTORS)
def test_onnxruntime_and_openvino_give_predict_results(fitted, paths, final, tmp_path):
    view = with_mixed_labels(fitted.with_final(final), paths[1])
    expected = view.predict(paths[1])
    assert 0 < expected.labels.sum() < len(paths[1])
    # chunk=64 < the memory's rows: the in-graph search runs over several chunks.
    assert fitted.memory_bank_.shape[0] > 2 * 64
    written = {fmt: view.export(tmp_path / final, fmt, chunk=64) for fmt in ("onnx", "openvino")}
    assert written["onnx"].suffix == ".onnx" and written["openvino"].with_suffix(".bin").is_file()
    for path in written.values():
        detector = Detector(path, threads=1)
        assert detector.input_size == (120, 120) and detector.meds_version == meds.__version__
        assert detector.metadata["final"] == final and detector.metadata["threshold"] == view.threshold_
        assert detector.metadata["normalisation"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
        assert_same(detector.predict(paths[1], batch_size=3), expected)


def test_the_memory_search_is_chunked_in_the_graph(fitted, tmp_path):
    path = fitted.with_final("memory").export(tmp_path / "memory.onnx", chunk=64)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    rows, dim = fitted.memory_bank_.shape
    chunks = {i.name: list(i.dims) for i in model.graph.initializer if i.name.startswith("scores.memory.rows_t")}
    assert sorted(chunks.values()) == sorted([dim, min(64, rows - start)] for start in range(0, rows, 64))
    # Every product with the memory is (N * L, <= 64): the (N * L, M) matrix never exists.
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    products = [node.output[0] for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in chunks]
    assert len(products) == len(chunks) >= 3
    assert all(shapes[name][-1] <= 64 for name in products)


def test_a_baseline_exports_too(paths, tmp_path):
    baseline = NearestNeighbourDetector(image_size=96, device="cpu", verbose=False).fit(paths[0][:4])
    expected = baseline.predict(paths[1])
    assert_same(Detector(baseline.export(tmp_path / "nn.onnx", chunk=100), threads=1).predict(paths[1]), expected)


def test_openvino_fp16_is_close(fitted, paths, tmp_path):
    fp32 = fitted.export(tmp_path / "fp32", "openvino")
    fp16 = fitted.export(tmp_path / "fp16", "openvino", half=True)
    assert fp16.with_suffix(".bin").stat().st_size < 0.6 * fp32.with_suffix(".bin").stat().st_size
    detector = Detector(fp16, threads=1)
    assert detector.metadata["precision"] == "fp16"
    # Scores standardised per position can sit near 0, so closeness is measured against
    # their spread over the images, not relative to each score.
    expected = fitted.predict(paths[1]).scores
    np.testing.assert_allclose(detector.predict(paths[1]).scores, expected, rtol=0, atol=1e-2 * np.ptp(expected))


def test_detector_and_cli_run_without_torch(fitted, paths, tmp_path):
    view = with_mixed_labels(fitted, paths[1])
    view.save(tmp_path / "model")
    exported = view.export(tmp_path / "model.onnx")
    expected = view.predict(paths[1])
    np.save(tmp_path / "maps.npy", np.stack(expected.maps))
    (tmp_path / "expected.json").write_text(json.dumps({"paths": paths[1], "scores": expected.scores.tolist(),
                                                        "labels": expected.labels.tolist()}))
    result = run_without_torch(f"""
        import json, sys
        import numpy as np
        from PIL import Image
        import meds
        from meds.deploy import Detector, Prediction
        expected = json.load(open("expected.json"))
        detector = Detector("{exported}", threads=1)
        images = expected["paths"][:4] + [np.asarray(Image.open(p)) for p in expected["paths"][4:]]
        out = detector.predict(images, batch_size=3)
        assert isinstance(out, Prediction)
        np.testing.assert_allclose(out.scores, expected["scores"], rtol=1e-4)
        np.testing.assert_array_equal(out.labels, expected["labels"])
        np.testing.assert_allclose(np.stack(out.maps), np.load("maps.npy"), atol=1e-3)
        from meds.app.cli import main
        code = main(["predict", "{exported}", *expected["paths"], "--out", "exported", "--quiet"])
        assert code == 0, code
        assert "torch" not in sys.modules
        print("torch-free ok")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "torch-free ok" in result.stdout
    # `meds predict` on the model folder writes the same CSV (scores to float32 round-off).
    assert meds_main(["predict", str(tmp_path / "model"), *paths[1], "--out", str(tmp_path / "folder"),
                      "--quiet", "--device", "cpu"]) == 0
    rows = {}
    for name in ("folder", "exported"):
        with open(tmp_path / name / "predictions.csv", newline="") as f:
            rows[name] = list(csv.reader(f))
    assert rows["folder"][0] == rows["exported"][0] == ["path", "score", "label"]
    assert [(r[0], r[2]) for r in rows["folder"]] == [(r[0], r[2]) for r in rows["exported"]]
    np.testing.assert_allclose([float(r[1]) for r in rows["exported"][1:]],
                               [float(r[1]) for r in rows["folder"][1:]], rtol=1e-4)
    assert {r[2] for r in rows["folder"][1:]} == {"0", "1"}
    assert sorted(os.listdir(tmp_path / "exported" / "heatmaps")) == sorted(os.listdir(tmp_path / "folder" / "heatmaps"))


def test_cli_export_writes_a_file_that_detector_loads(fitted, paths, tmp_path):
    fitted.save(tmp_path / "run" / "tile")
    assert meds_main(["export", str(tmp_path / "run"), "--category", "tile", "--format", "onnx",
                      "--out", str(tmp_path / "tile.onnx"), "--quiet"]) == 0
    detector = Detector(tmp_path / "tile.onnx", threads=1)
    assert detector.input_size == (120, 120)
    np.testing.assert_allclose(detector.predict(paths[1][:2]).scores, fitted.predict(paths[1][:2]).scores, rtol=1e-4)


def test_a_file_from_another_meds_version_loads(fitted, paths, tmp_path):
    path = fitted.export(tmp_path / "model.onnx")
    model = onnx.load(str(path))
    for entry in model.metadata_props:
        if entry.key == "meds":
            metadata = json.loads(entry.value)
            metadata.update(meds_version="0.0.9", graph_format=0)
            entry.value = json.dumps(metadata)
    onnx.save(model, str(tmp_path / "old.onnx"))
    detector = Detector(tmp_path / "old.onnx", threads=1)
    assert detector.meds_version == "0.0.9"
    assert detector.predict(paths[1][:1]).scores.shape == (1,)


def test_bad_input_gives_one_clear_line(fitted, paths, tmp_path, monkeypatch, capsys):
    with pytest.raises(RuntimeError, match="not fitted"):
        meds.MeDS(device="cpu", verbose=False).export(tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="format must be one of"):
        fitted.export(tmp_path / "x", "tflite")
    with pytest.raises(FileNotFoundError, match="exported model not found"):
        Detector(tmp_path / "missing.onnx")
    path = fitted.export(tmp_path / "ok.onnx")
    wrong = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="is 64x64, this model takes 120x120"):
        Detector(path).predict([wrong])

    cases = [
        (["export", str(tmp_path / "no_run"), "--format", "onnx", "--out", str(tmp_path / "a.onnx")],
         "model folder not found"),
        (["predict", str(tmp_path / "missing.onnx"), paths[1][0], "--out", str(tmp_path / "p")],
         "exported model not found"),
    ]
    fitted.save(tmp_path / "model")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the package were absent
    cases.append((["export", str(tmp_path / "model"), "--format", "openvino", "--out", str(tmp_path / "b")],
                  "needs the 'openvino' package"))
    for argv, message in cases:
        assert meds_main(argv + ["--quiet"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModuleNotFoundError, match="pip install 'meds\\[deploy\\]'"):
        Detector(path)
