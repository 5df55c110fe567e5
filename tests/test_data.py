"""Dataset loaders and image/mask reading, on tiny trees generated into tmp_path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meds.data import (
    CategoryData,
    DataWarning,
    ImageReadError,
    Sample,
    decode_image,
    detect_format,
    list_categories,
    list_images,
    load_dataset,
    load_folder,
    load_mvtec,
    load_realiad,
    load_visa,
    mvtec_categories,
    read_image,
    read_mask,
    realiad_categories,
    visa_categories,
)


def _img(path: Path, value=100, size=(6, 5), mode="RGB") -> Path:
    """Write a small constant image (size = (W, H))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        arr = np.full((size[1], size[0], 3), value, np.uint8)
    else:
        arr = np.full((size[1], size[0]), value, np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _mask(path: Path, size=(6, 5), box=(1, 1, 3, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr).save(path)
    return path


def _mvtec_tree(root: Path) -> Path:
    for name in ("000.png", "2.png", "10.png"):
        _img(root / "bottle" / "train" / "good" / name)
    for name in ("000.png", "001.png"):
        _img(root / "bottle" / "test" / "good" / name)
    for name in ("000.png", "001.png"):
        _img(root / "bottle" / "test" / "broken" / name, 30)
        _mask(root / "bottle" / "ground_truth" / "broken" / name.replace(".png", "_mask.png"))
    _img(root / "bottle" / "test" / "crack" / "000.png", 40)
    _mask(root / "bottle" / "ground_truth" / "crack" / "000_mask.png")
    _img(root / "cable" / "train" / "good" / "000.png")
    _img(root / "cable" / "test" / "good" / "000.png")
    (root / "license.txt").write_text("not a category")
    return root


# ----------------------------------------------------------------------------- reading
def test_read_image_converts_modes_to_rgb_uint8(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((4, 7), 100, np.uint8), mode="L").save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.tile(np.array([10, 20, 30, 0], np.uint8), (4, 7, 1)), mode="RGBA").save(rgba)
    g16 = tmp_path / "g16.png"
    arr16 = np.array([[0, 257 * 100, 65535]], dtype=np.uint16).repeat(4, 0)
    Image.fromarray(arr16).save(g16)
    pal = tmp_path / "pal.png"
    Image.fromarray(np.full((4, 7, 3), (200, 10, 50), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE).save(pal)
    bmp = tmp_path / "upper.BMP"
    Image.fromarray(np.full((4, 7, 3), (1, 2, 3), np.uint8)).save(bmp)

    out = read_image(gray)
    assert out.shape == (4, 7, 3) and out.dtype == np.uint8
    assert (out == 100).all()
    out = read_image(rgba)
    assert out.shape == (4, 7, 3) and (out == [10, 20, 30]).all()
    out = read_image(g16)
    assert out.dtype == np.uint8 and out.shape == (4, 3, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255]
    assert (read_image(pal)[0, 0] == [200, 10, 50]).all()
    assert (read_image(bmp) == [1, 2, 3]).all()


def test_decode_image_arrays_follow_the_file_rules():
    g16 = np.array([[0, 257 * 100, 65535, 128]], dtype=np.uint16)
    assert decode_image(g16)[0, :, 0].tolist() == [0, 100, 255, 0]  # as a 16-bit file
    assert decode_image(g16.astype(">u2"))[0, :, 0].tolist() == [0, 100, 255, 0]  # any byte order
    assert decode_image(np.array([[0.0, 0.5, 1.0]]))[0].tolist() == [[0] * 3, [128] * 3, [255] * 3]
    assert decode_image(np.array([[True, False]]))[0, :, 0].tolist() == [255, 0]
    rgba = np.tile(np.array([10, 20, 30, 0], np.uint8), (2, 3, 1))
    out = decode_image(rgba)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8 and (out == [10, 20, 30]).all()
    assert decode_image(np.full((2, 3, 1), 7, np.uint8)).shape == (2, 3, 3)
    pil16 = Image.fromarray(g16)
    np.testing.assert_array_equal(decode_image(pil16), decode_image(g16))


@pytest.mark.parametrize(
    "bad,error,match",
    [
        (np.zeros((4, 4), np.int32), TypeError, r"x\[2\]: expected dtype uint8, uint16, bool or float"),
        (np.full((4, 4), 1.5), ValueError, r"x\[2\]: float images must hold finite values in \[0, 1\]"),
        (np.full((4, 4), np.nan, np.float32), ValueError, r"x\[2\]: float images"),
        (np.zeros((4, 4, 2), np.uint8), ValueError, r"x\[2\]: expected an image of shape"),
        (np.zeros((1, 4, 4, 3), np.uint8), ValueError, r"x\[2\]: expected an image of shape"),
        ([[1, 2]], TypeError, r"x\[2\]: expected a path, numpy array or PIL image, got list"),
    ],
)
def test_decode_image_errors_name_the_argument(bad, error, match):
    with pytest.raises(error, match=match):
        decode_image(bad, "x[2]")


def test_read_image_resizes_int_and_hw(tmp_path):
    p = _img(tmp_path / "a.png", size=(12, 8))
    assert read_image(p).shape == (8, 12, 3)
    assert read_image(p, 5).shape == (5, 5, 3)
    assert read_image(p, (3, 9)).shape == (3, 9, 3)
    with pytest.raises(ValueError, match="size"):
        read_image(p, 0)


def test_unreadable_or_missing_image_error_names_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(bad)
    with pytest.raises(ValueError, match="nowhere.png"):  # ImageReadError is a ValueError
        read_image(tmp_path / "nowhere.png")


def test_read_mask_bool_and_sample_rules(tmp_path):
    m = _mask(tmp_path / "m_mask.png", size=(6, 5), box=(1, 1, 3, 3))
    out = read_mask(m)
    expected = np.zeros((5, 6), bool)
    expected[1:3, 1:3] = True
    assert out.dtype == bool and (out == expected).all()
    assert read_mask(m, (10, 12)).shape == (10, 12)
    assert read_mask(m, (10, 12)).sum() == 16  # nearest-neighbour x2 of a 2x2 square
    img = _img(tmp_path / "g.png", size=(6, 5))
    good = Sample(str(img), 0, None, "c", "good")
    assert read_mask(good).shape == (5, 6) and not read_mask(good).any()
    assert read_mask(good, 3).shape == (3, 3)
    bad = Sample(str(img), 1, None, "c", "scratch")
    with pytest.raises(ImageReadError, match="g.png"):
        read_mask(bad)
    with_mask = Sample(str(img), 1, str(m), "c", "scratch")
    assert (read_mask(with_mask) == expected).all()


def test_list_images_extensions_case_insensitive_and_natural_order(tmp_path):
    for n in ("img10.png", "img2.PNG", "b.JpG", "c.tiff", "d.jpeg", "e.bmp", "f.TIF"):
        _img(tmp_path / n)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["b.JpG", "c.tiff", "d.jpeg", "e.bmp", "f.TIF", "img2.PNG", "img10.png"]


# ----------------------------------------------------------------------------- MVTec
def test_mvtec_loader(tmp_path):
    root = _mvtec_tree(tmp_path / "mvtec")
    assert mvtec_categories(root) == ["bottle", "cable"]
    data = load_mvtec(root, "bottle")
    assert isinstance(data, CategoryData) and data.name == "bottle"
    assert [Path(p).name for p in data.train_paths()] == ["000.png", "2.png", "10.png"]
    assert all(s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in data.train)
    assert data.train_is_noise is not None and not data.train_is_noise.any()
    got = [(s.label, s.defect_type, Path(s.path).name, s.mask_path and Path(s.mask_path).name) for s in data.test]
    assert got == [
        (0, "good", "000.png", None),
        (0, "good", "001.png", None),
        (1, "broken", "000.png", "000_mask.png"),
        (1, "broken", "001.png", "001_mask.png"),
        (1, "crack", "000.png", "000_mask.png"),
    ]
    # masks are matched inside the right defect folder
    assert Path(data.test[4].mask_path).parent.name == "crack"
    assert data.has_masks
    # a category folder works as the root too
    assert load_mvtec(root / "bottle").train_paths() == data.train_paths()
    with pytest.raises(FileNotFoundError, match="nope"):
        load_mvtec(root, "nope")


def test_mvtec_missing_mask_raise_and_skip(tmp_path):
    root = _mvtec_tree(tmp_path / "mvtec")
    (root / "bottle" / "ground_truth" / "broken" / "001_mask.png").unlink()
    with pytest.raises(ImageReadError, match="001.png"):
        load_mvtec(root, "bottle")
    with pytest.warns(DataWarning, match="001.png"):
        data = load_mvtec(root, "bottle", on_error="skip")
    assert sum(s.defect_type == "broken" for s in data.test) == 1


def test_mvtec_unreadable_image_raise_and_skip(tmp_path):
    root = _mvtec_tree(tmp_path / "mvtec")
    (root / "bottle" / "train" / "good" / "2.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match="2.png"):
        load_mvtec(root, "bottle")
    with pytest.warns(DataWarning, match="2.png"):
        data = load_mvtec(root, "bottle", on_error="skip")
    assert [Path(p).name for p in data.train_paths()] == ["000.png", "10.png"]
    with pytest.raises(ValueError, match="on_error"):
        load_mvtec(root, "bottle", on_error="ignore")


# ----------------------------------------------------------------------------- VisA
def _visa_tree(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for i in (3, 1, 2):
        rel = f"candle/Data/Images/Normal/{i:04d}.JPG"
        _img(root / rel)
        rows.append(f"candle,train,normal,{rel},")
    _img(root / "candle/Data/Images/Normal/0009.JPG")
    rows.append("candle,test,normal,candle/Data/Images/Normal/0009.JPG,")
    for i in (0, 1):
        rel = f"candle/Data/Images/Anomaly/{i:03d}.JPG"
        _img(root / rel)
        _mask(root / f"candle/Data/Masks/Anomaly/{i:03d}.png")
        rows.append(f"candle,test,anomaly,{rel},candle/Data/Masks/Anomaly/{i:03d}.png")
    _img(root / "pcb1/Data/Images/Normal/0000.JPG")
    rows.append("pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_loader_csv_layout(tmp_path):
    root = _visa_tree(tmp_path / "visa")
    assert visa_categories(root) == ["candle", "pcb1"]
    data = load_visa(root, "candle")
    assert [Path(p).name for p in data.train_paths()] == ["0001.JPG", "0002.JPG", "0003.JPG"]
    assert [(s.label, s.defect_type) for s in data.test] == [(0, "good"), (1, "bad"), (1, "bad")]
    assert Path(data.test[1].mask_path).name == "000.png"
    assert read_mask(data.test[1]).sum() == 4
    assert detect_format(root) == "visa"
    assert list_categories(root) == ["candle", "pcb1"]
    assert load_dataset(root, "candle").train_paths() == data.train_paths()


def test_visa_loader_defect_names_and_missing_file(tmp_path):
    root = _visa_tree(tmp_path / "visa")
    (root / "candle" / "image_anno.csv").write_text(
        "image,label,mask\ncandle/Data/Images/Anomaly/000.JPG,chunk of wax missing,x\n"
    )
    data = load_visa(root, "candle")
    assert [s.defect_type for s in data.test if s.label] == ["bad", "chunk_of_wax_missing"]
    (root / "candle/Data/Images/Anomaly/001.JPG").unlink()
    with pytest.raises(ImageReadError, match="001.JPG"):
        load_visa(root, "candle")
    with pytest.warns(DataWarning, match="001.JPG"):
        assert len(load_visa(root, "candle", on_error="skip").test) == 2


def test_visa_loader_mvtec_style_copy(tmp_path):
    root = tmp_path / "visa_pytorch"
    _img(root / "cashew/train/good/250.JPG")
    _img(root / "cashew/test/good/000.JPG")
    _img(root / "cashew/test/bad/089.JPG")
    _mask(root / "cashew/ground_truth/bad/089.png")
    data = load_visa(root, "cashew")
    assert len(data.train) == 1 and [s.label for s in data.test] == [0, 1]
    assert Path(data.test[1].mask_path).name == "089.png"
    assert detect_format(root) == "mvtec"


# ----------------------------------------------------------------------------- Real-IAD
def _realiad_tree(root: Path, fuiad=False) -> Path:
    base = root / "realiad_256" / "audiojack"
    train, test = [], []
    for s in (1, 2):
        rel = f"OK/S000{s}/audiojack_000{s}_OK_C1_20230922.jpg"
        _img(base / rel)
        train.append({"category": "audiojack", "anomaly_class": "OK", "image_path": rel, "mask_path": None})
    rel = "OK/S0003/audiojack_0003_OK_C1_20230922.jpg"
    _img(base / rel)
    test.append({"category": "audiojack", "anomaly_class": "OK", "image_path": rel, "mask_path": None})
    for code, s in (("AK", 4), ("HS", 5)):
        rel = f"NG/{code}/S000{s}/audiojack_000{s}_NG_C1_20230922.jpg"
        _img(base / rel, 20)
        _mask(base / rel.replace(".jpg", "_mask.png"))
        entry = {"category": "audiojack", "anomaly_class": code, "image_path": rel,
                 "mask_path": rel.replace(".jpg", "_mask.png")}  # fmt: skip
        (train if (fuiad and code == "HS") else test).append(entry)
    jdir = root / "realiad_jsons" / ("realiad_jsons_fuiad_0.1" if fuiad else "realiad_jsons")
    jdir.mkdir(parents=True, exist_ok=True)
    doc = {"meta": {"prefix": "", "normal_class": "OK", "pixel_mask": True}, "train": train, "test": test}
    (jdir / "audiojack.json").write_text(json.dumps(doc))
    return root


def test_realiad_loader(tmp_path):
    root = _realiad_tree(tmp_path / "Real-IAD")
    assert realiad_categories(root) == ["audiojack"]
    assert detect_format(root) == "realiad"
    data = load_realiad(root, "audiojack")
    assert len(data.train) == 2 and all(s.label == 0 for s in data.train)
    assert [(s.label, s.defect_type) for s in data.test] == [(0, "good"), (1, "AK"), (1, "HS")]
    assert all(Path(s.path).is_file() for s in data.train + data.test)
    assert data.test[1].mask_path.endswith("_mask.png") and read_mask(data.test[1]).any()
    assert load_dataset(root).train_paths() == data.train_paths()


def test_realiad_fuiad_train_defects_are_noise(tmp_path):
    root = _realiad_tree(tmp_path / "Real-IAD", fuiad=True)
    data = load_realiad(root, "audiojack", json_path="realiad_jsons/realiad_jsons_fuiad_0.1")
    assert len(data.train) == 3
    assert data.train_is_noise.tolist() == [s.defect_type == "HS" for s in data.train]
    assert data.train_is_noise.sum() == 1
    with pytest.raises(FileNotFoundError, match="audiojack"):
        load_realiad(root, "audiojack")  # no base split json in this tree


def test_realiad_missing_image(tmp_path):
    root = _realiad_tree(tmp_path / "Real-IAD")
    victim = next((root / "realiad_256" / "audiojack" / "NG" / "HS").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(ImageReadError, match=victim.name):
        load_realiad(root, "audiojack")
    with pytest.warns(DataWarning, match=victim.name):
        data = load_realiad(root, "audiojack", on_error="skip")
    assert [s.defect_type for s in data.test] == ["good", "AK"]


# ----------------------------------------------------------------------------- folders
def test_folder_class_layout(tmp_path):
    root = tmp_path / "widget"
    for i in range(10):
        _img(root / "good" / f"{i}.png")
    for i in range(3):
        _img(root / "bad" / f"b{i}.png", 10)
    _mask(root / "masks" / "bad" / "b0_mask.png")
    _mask(root / "masks" / "bad" / "b1.png")
    _mask(root / "masks" / "bad" / "b2_label.png")
    assert detect_format(root) == "folder"
    assert list_categories(root) == ["widget"]
    data = load_folder(root)
    assert data.name == "widget"
    assert len(data.train) == 8 and all(s.label == 0 for s in data.train)
    goods = [s for s in data.test if s.label == 0]
    bads = [s for s in data.test if s.label == 1]
    assert len(goods) == 2 and len(bads) == 3
    assert {Path(s.path).name for s in data.train} | {Path(s.path).name for s in goods} == {f"{i}.png" for i in range(10)}
    assert [Path(s.mask_path).name for s in bads] == ["b0_mask.png", "b1.png", "b2_label.png"]
    assert all(s.defect_type == "bad" for s in bads)
    # the hold-out draw is seeded
    assert load_folder(root, seed=0).train_paths() == data.train_paths()
    assert len({tuple(load_folder(root, seed=s).train_paths()) for s in range(5)}) > 1
    assert load_dataset(root).train_paths() == data.train_paths()


def test_folder_split_layout_and_missing_mask(tmp_path):
    root = tmp_path / "part"
    for i in range(4):
        _img(root / "train" / f"{i}.png")
    _img(root / "train" / "scratch" / "s.png", 5)  # known contamination (evaluation only)
    _img(root / "test" / "good" / "g.png")
    _img(root / "test" / "defect_dent" / "d0.png", 5)
    _img(root / "test" / "defect_dent" / "d1.png", 5)
    _mask(root / "ground_truth" / "defect_dent" / "d0_mask.png")
    with pytest.raises(ImageReadError, match="d1.png"):
        load_folder(root)
    with pytest.warns(DataWarning, match="d1.png"):
        data = load_folder(root, on_error="skip")
    assert len(data.train) == 5
    assert data.train_is_noise.tolist() == [s.defect_type == "scratch" for s in data.train]
    assert [(s.label, s.defect_type) for s in data.test] == [(0, "good"), (1, "defect_dent")]


def test_folder_flat_layout_unlabeled(tmp_path):
    root = tmp_path / "batch7"
    for n in ("a.jpg", "B.PNG", "c.tif"):
        _img(root / n)
    data = load_folder(root)
    assert len(data.train) == 3 and data.test == [] and data.train_is_noise is None
    assert data.noise_labels().tolist() == [False, False, False]


def test_detect_format_and_load_dataset_mvtec(tmp_path):
    root = _mvtec_tree(tmp_path / "mvtec")
    assert detect_format(root) == "mvtec"
    assert detect_format(root / "bottle") == "mvtec"
    assert list_categories(root) == ["bottle", "cable"]
    assert load_dataset(root, "cable").name == "cable"
    with pytest.raises(ValueError, match="category"):
        load_dataset(root)
    with pytest.raises(ValueError, match="format"):
        load_dataset(root, "cable", format="coco")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="layout"):
        detect_format(empty)


def test_category_data_helpers(tmp_path):
    root = _mvtec_tree(tmp_path / "mvtec")
    data = load_mvtec(root, "bottle")
    paths = data.train_paths()
    assert paths == [s.path for s in data.train] and all(isinstance(p, str) for p in paths)
    assert data.test_labels().tolist() == [0, 0, 1, 1, 1]
    assert "bottle" in repr(data) and "train 3" in data.summary()
    with pytest.raises(ValueError, match="train_is_noise"):
        CategoryData("x", data.train, data.test, train_is_noise=np.zeros(2, bool))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean load warns about nothing
        load_mvtec(root, "bottle")
