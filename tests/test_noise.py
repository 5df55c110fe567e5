"""The noisy-training protocol: contaminate() and the official split lists."""

from __future__ import annotations

import csv
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from meds.data import (
    CategoryData,
    DataWarning,
    NoiseSetting,
    Sample,
    apply_split_list,
    contaminate,
    load_mvtec,
    load_split_list,
    load_visa,
)

SPLITS_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "meds-official-splits"


def _data(n_normal=50, n_test_good=20, n_defect=30, name="part") -> CategoryData:
    train = [Sample(f"/d/{name}/train/good/{i:03d}.png", 0, None, name, "good") for i in range(n_normal)]
    test = [Sample(f"/d/{name}/test/good/{i:03d}.png", 0, None, name, "good") for i in range(n_test_good)]
    types = ("crack", "scratch", "hole")
    test += [
        Sample(f"/d/{name}/test/{types[i % 3]}/{i:03d}.png", 1, f"/d/{name}/gt/{i:03d}_mask.png", name, types[i % 3])
        for i in range(n_defect)
    ]
    return CategoryData(name, train, test, train_is_noise=np.zeros(n_normal, bool))


# ----------------------------------------------------------------------------- contaminate
@pytest.mark.parametrize("ratio,expected", [(0.1, 5), (0.2, 10), (0.4, 20), (0.13, 6)])
def test_contaminate_counts_no_overlap(ratio, expected):
    data = _data()
    before = (list(data.train), list(data.test))
    out = contaminate(data, ratio, seed=0)
    injected = out.train[len(data.train) :]
    assert len(injected) == expected == out.n_noise
    assert out.train[: len(data.train)] == data.train
    assert all(s.label == 1 for s in injected)
    assert out.train_is_noise.tolist() == [False] * 50 + [True] * expected
    assert set(injected) <= set(data.test)
    # no-overlap: removed from test, everything else kept in order
    assert out.test == [s for s in data.test if s not in set(injected)]
    assert len(out.test) == len(data.test) - expected
    assert (data.train, data.test) == before  # input untouched
    assert str(out.noise) == f"noise={100 * ratio:g}% no-overlap seed=0"


def test_contaminate_overlap_keeps_test():
    data = _data()
    out = contaminate(data, 0.2, seed=3, overlap=True)
    assert out.test == data.test
    assert len(out.train) == 60 and out.n_noise == 10
    assert set(out.train[50:]) <= {s for s in data.test if s.label == 1}
    assert str(out.noise) == "noise=20% overlap seed=3"


def test_contaminate_deterministic_and_seed_dependent():
    data = _data()
    a = contaminate(data, 0.2, seed=7).train_paths()
    b = contaminate(data, 0.2, seed=7).train_paths()
    c = contaminate(data, 0.2, seed=8).train_paths()
    assert a == b
    assert a != c  # C(30, 10) draws: equal by chance with probability ~3e-8
    # the draw uses a numpy Generator seeded with the seed: reference re-implementation
    defect_paths = [s.path for s in data.test if s.label == 1]
    perm = np.random.default_rng(7).permutation(len(defect_paths))[:10]
    assert sorted(a[50:]) == sorted(defect_paths[i] for i in perm)


def test_contaminate_nested_across_ratios():
    data = _data()
    small = set(contaminate(data, 0.1, seed=1).train_paths()[50:])
    big = set(contaminate(data, 0.4, seed=1).train_paths()[50:])
    assert len(small) == 5 and len(big) == 20 and small < big


def test_contaminate_cap_warns_with_counts():
    data = _data(n_normal=50, n_defect=12, name="hazelnut")
    with pytest.warns(DataWarning, match=r"hazelnut.*50.*25.*12"):
        out = contaminate(data, 0.5, seed=0)
    assert out.n_noise == 12
    assert all(s.label == 0 for s in out.test)


def test_contaminate_ratio_zero_and_bad_args():
    data = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = contaminate(data, 0.0, seed=0)
    assert out.train == data.train and out.test == data.test and not out.train_is_noise.any()
    assert str(out.noise) == "noise=0% no-overlap seed=0"
    for bad in (-0.1, float("nan"), float("inf"), "lots"):
        with pytest.raises(ValueError, match="ratio"):
            contaminate(data, bad, seed=0)
    with pytest.raises(TypeError, match="seed"):
        contaminate(data, 0.1, seed=None)


def test_contaminate_rounding_matches_official_counts():
    """round(ratio * n_normal) capped by the defects: the counts of the authors' lists."""
    # MVTec AD: normal training images and test defects per category
    sizes = {"bottle": (209, 63), "cable": (224, 92), "capsule": (219, 109), "carpet": (280, 89),
             "grid": (264, 57), "hazelnut": (391, 70), "leather": (245, 92), "metal_nut": (220, 93),
             "pill": (267, 141), "screw": (320, 119), "tile": (230, 84), "toothbrush": (60, 30),
             "transistor": (213, 40), "wood": (247, 60), "zipper": (240, 119)}  # fmt: skip
    # counts read from train_mvtec_nr{10,20,40}_seed_10.csv (seed 0 has a hazelnut quirk)
    official_totals = {0.1: 362, 0.2: 715, 0.4: 1167}
    for ratio, total in official_totals.items():
        got = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            for name, (n, d) in sizes.items():
                got += contaminate(_data(n, 1, d, name), ratio, seed=10).n_noise
        assert got == total
    if SPLITS_DIR.is_dir():  # cross-check per category against the files themselves
        for ratio in (0.1, 0.2, 0.4):
            lists = load_split_list(SPLITS_DIR / "mvtec" / f"train_mvtec_nr{int(ratio * 100)}_seed_10.csv")
            for name, (n, d) in sizes.items():
                listed = sum("/test/" in f for f in lists[name])
                assert listed == min(round(ratio * n), d), name


def test_noise_setting_strings():
    assert str(NoiseSetting(0.2, 0, False)) == "noise=20% no-overlap seed=0"
    assert str(NoiseSetting(0.05, 30, True)) == "noise=5% overlap seed=30"
    assert str(NoiseSetting(None, None, True, 3, source="train_mvtec_nr10_seed_0.csv")) == (
        "noise=split-list train_mvtec_nr10_seed_0.csv overlap"
    )


# ----------------------------------------------------------------------------- split lists
def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _fake_mvtec(root: Path, cats: dict[str, dict]) -> None:
    """Empty files are enough: the loader is run with check_images=False."""
    for cat, spec in cats.items():
        for i in range(spec["train"]):
            _touch(root / cat / "train" / "good" / f"{i:03d}.png")
        for i in range(spec.get("test_good", 2)):
            _touch(root / cat / "test" / "good" / f"{i:03d}.png")
        for defect, n in spec["defects"].items():
            for i in range(n):
                _touch(root / cat / "test" / defect / f"{i:03d}.png")
                _touch(root / cat / "ground_truth" / defect / f"{i:03d}_mask.png")


def _write_csv(path: Path, rows, header=("filename", "clsname")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_load_split_list_parses(tmp_path):
    p = _write_csv(tmp_path / "l.csv", [("b/train/good/000.png", "b"), ("a/test/x/001.png", "a"),
                                        ("b/test/y/002.png", "b")])  # fmt: skip
    assert load_split_list(p) == {"b": ["b/train/good/000.png", "b/test/y/002.png"], "a": ["a/test/x/001.png"]}
    q = _write_csv(tmp_path / "v.csv", [("c/train/good/1.JPG", "c")], header=("filename", "class"))
    assert load_split_list(q) == {"c": ["c/train/good/1.JPG"]}
    r = _write_csv(tmp_path / "bad.csv", [("x", "y")], header=("path", "label"))
    with pytest.raises(ValueError, match="filename"):
        load_split_list(r)


def test_apply_split_list_on_fake_mvtec(tmp_path):
    root = tmp_path / "mvtec"
    _fake_mvtec(root, {"bottle": {"train": 6, "defects": {"broken": 3, "crack": 2}}})
    data = load_mvtec(root, "bottle", check_images=False)
    listed = [f"bottle/train/good/{i:03d}.png" for i in (0, 2, 3, 4, 5)] + [
        "bottle/test/crack/001.png",
        "bottle/test/broken/000.png",
    ]
    csv_path = _write_csv(tmp_path / "train_mvtec_nr40_seed_0.csv", [(f, "bottle") for f in listed])
    out = apply_split_list(data, load_split_list(csv_path)["bottle"])
    tails = ["/".join(Path(p).parts[-4:]) for p in out.train_paths()]
    assert tails == listed[:5] + ["bottle/test/broken/000.png", "bottle/test/crack/001.png"]
    assert out.train_is_noise.tolist() == [False] * 5 + [True, True]
    moved = set(out.train[5:])
    assert out.test == [s for s in data.test if s not in moved] and len(out.test) == len(data.test) - 2
    # overlap keeps the test split; a CSV path and the whole mapping work too
    over = apply_split_list(data, csv_path, overlap=True)
    assert over.test == data.test and over.train_paths() == out.train_paths()
    assert str(over.noise) == "noise=split-list train_mvtec_nr40_seed_0.csv overlap"
    assert over.noise.ratio == 0.4 and over.noise.seed == 0
    assert apply_split_list(data, load_split_list(csv_path)).train_paths() == out.train_paths()


def test_apply_split_list_errors_name_files(tmp_path):
    root = tmp_path / "mvtec"
    _fake_mvtec(root, {"bottle": {"train": 3, "defects": {"broken": 2}}})
    data = load_mvtec(root, "bottle", check_images=False)
    with pytest.raises(ValueError, match=r"bottle/test/broken/007\.png"):
        apply_split_list(data, ["bottle/train/good/000.png", "bottle/test/broken/007.png"])
    with pytest.raises(ValueError, match="'bottle'.*'cable'"):
        apply_split_list(data, {"cable": ["cable/train/good/000.png"]})
    with pytest.raises(ValueError, match="empty"):
        apply_split_list(data, [])


def test_apply_split_list_visa_names_match_original_layout(tmp_path):
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for i in range(3):
        rel = f"cashew/Data/Images/Normal/{i:03d}.JPG"
        _touch(root / rel)
        rows.append(f"cashew,train,normal,{rel},")
    for i in range(2):
        rel = f"cashew/Data/Images/Anomaly/{i:03d}.JPG"
        _touch(root / rel)
        _touch(root / f"cashew/Data/Masks/Anomaly/{i:03d}.png")
        rows.append(f"cashew,test,anomaly,{rel},cashew/Data/Masks/Anomaly/{i:03d}.png")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    data = load_visa(root, "cashew", check_images=False)
    out = apply_split_list(data, ["cashew/train/good/000.JPG", "cashew/train/good/002.JPG", "cashew/test/bad/001.JPG"])
    assert [Path(p).name for p in out.train_paths()] == ["000.JPG", "002.JPG", "001.JPG"]
    assert out.train_is_noise.tolist() == [False, False, True]
    assert len(out.test) == 1


@pytest.mark.skipif(not SPLITS_DIR.is_dir(), reason="official split lists not available")
@pytest.mark.parametrize(
    "dataset,csv_name,cats",
    [
        ("mvtec", "train_mvtec_nr10_seed_0.csv", ("hazelnut", "toothbrush", "transistor")),
        ("mvtec", "train_mvtec_nr40_seed_20.csv", ("bottle", "toothbrush")),
        ("visa", "train_visa_nr5_seed_0.csv", ("pcb1",)),
    ],
)
def test_official_split_lists_reproduce_counts(tmp_path, dataset, csv_name, cats):
    """Build a fake tree from the listed names and check the per-category counts."""
    lists = load_split_list(SPLITS_DIR / dataset / csv_name)
    clean = load_split_list(SPLITS_DIR / dataset / f"train_{dataset}_nr0_seed_0.csv")
    root = tmp_path / dataset
    for cat in cats:
        for name in set(lists[cat]) | set(clean[cat]):
            _touch(root / name)
            parts = Path(name).parts
            if parts[1] == "test":
                stem = Path(name).stem
                mask = f"{stem}_mask.png" if dataset == "mvtec" else f"{stem}.png"
                _touch(root / cat / "ground_truth" / parts[2] / mask)
        for i in range(3):
            _touch(root / cat / "test" / "good" / f"9{i:03d}.png")
    for cat in cats:
        data = load_mvtec(root, cat, check_images=False)
        out = apply_split_list(data, lists[cat], source=csv_name)
        n_defects = sum("/test/" in f for f in lists[cat])
        assert len(out.train) == len(lists[cat])
        assert out.n_noise == n_defects
        assert len(out.train) - out.n_noise == len(clean[cat])
        assert len(out.test) == len(data.test) - n_defects
    if csv_name == "train_mvtec_nr10_seed_0.csv":  # README: 371 defects over all categories
        assert sum(sum("/test/" in f for f in v) for v in lists.values()) == 371
        assert Counter({c: sum("/test/" in f for f in lists[c]) for c in cats})["toothbrush"] == 6
        assert math.isclose(round(0.1 * len(clean["toothbrush"])), 6)
