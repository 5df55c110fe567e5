"""The synthetic MVTec-layout generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meds.data import SYNTHETIC_CATEGORIES, contaminate, generate_synthetic, load_mvtec, read_image, read_mask
from meds.data.synthetic import DEFECT_TYPES, render_synthetic

SMALL = dict(n_train=3, n_test_good=2, image_size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_byte_for_byte(tmp_path):
    kw = dict(SMALL, n_test_defect=5, seed=3)
    generate_synthetic(tmp_path / "a", **kw)
    generate_synthetic(tmp_path / "b", workers=1, **kw)  # thread count must not matter
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == len(SYNTHETIC_CATEGORIES) * (3 + 2 + 5 + 5) + 1
    assert a == b
    generate_synthetic(tmp_path / "c", **dict(kw, seed=4))
    c = _files(tmp_path / "c")
    assert c.keys() == a.keys()
    assert sum(a[k] != c[k] for k in a if k.endswith(".png")) > 0.9 * (len(a) - 1)


def test_layout_masks_and_labels(tmp_path):
    root = generate_synthetic(tmp_path / "syn", categories=["metal", "nut", "pcb"], n_test_defect=10, **SMALL)
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["categories"] == ["metal", "nut", "pcb"]
    for cat in ("metal", "nut", "pcb"):
        data = load_mvtec(root, cat)
        assert len(data.train) == 3
        goods = [s for s in data.test if s.label == 0]
        bads = [s for s in data.test if s.label == 1]
        assert len(goods) == 2 and len(bads) == 10
        types = DEFECT_TYPES[cat]
        # defects spread evenly over the category's types
        counts = {t: sum(s.defect_type == t for s in bads) for t in types}
        assert max(counts.values()) - min(counts.values()) <= 1 and set(counts) == set(types)
        for s in data.train + goods:
            img = read_image(s.path)
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
            assert not read_mask(s).any()
        for s in bads:
            m = read_mask(s)
            assert m.shape == (64, 64) and m.any()
            assert m.mean() < 0.12, (cat, s.defect_type, m.mean())  # small defects
            raw = np.asarray(Image.open(s.mask_path))
            assert set(np.unique(raw).tolist()) <= {0, 255}
        assert not (root / cat / "ground_truth" / "good").exists()


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_defects_change_exactly_the_masked_pixels(category):
    for size in (64, 128):
        for k, defect in enumerate(DEFECT_TYPES[category]):
            img, mask, clean = render_synthetic(category, size, seed=0, index=k, defect=defect)
            diff = np.abs(img.astype(np.int16) - clean.astype(np.int16)).max(axis=2)
            assert mask.any()
            assert (diff[~mask] == 0).all(), (category, defect)  # nothing changes outside the mask
            assert (diff[mask] > 0).mean() > 0.5, (category, defect)  # most mask pixels change
            assert diff[mask].mean() >= 3, (category, defect)  # and visibly so


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_normal_images_vary_but_stay_alike(category):
    a = render_synthetic(category, 64, seed=0, index=0)[0].astype(np.float64)
    b = render_synthetic(category, 64, seed=0, index=1)[0].astype(np.float64)
    c = render_synthetic(category, 64, seed=0, index=0)[0].astype(np.float64)
    assert (a == c).all()  # same index -> same image
    d = np.abs(a - b).mean()
    assert 1.0 < d < 60.0, d  # nuisance variation, same kind of part
    assert abs(a.mean() - b.mean()) < 25


def test_defects_are_mostly_subtle():
    """Most defects cover < 1 % of a 128 px image and change it by < 60 grey levels on average."""
    areas, contrasts = [], []
    for cat in SYNTHETIC_CATEGORIES:
        for k, defect in enumerate(DEFECT_TYPES[cat]):
            img, mask, clean = render_synthetic(cat, 128, seed=1, index=k, defect=defect)
            areas.append(mask.mean())
            contrasts.append(np.abs(img.astype(float) - clean)[mask].mean())
    assert np.median(areas) < 0.01
    assert np.median(contrasts) < 60
    assert max(areas) < 0.08


def test_default_sizes_allow_40_percent_no_overlap():
    """Defaults: 40 % of the training set can be contaminated and defects remain for testing."""
    import inspect

    sig = inspect.signature(generate_synthetic).parameters
    n_train, n_def = sig["n_train"].default, sig["n_test_defect"].default
    assert n_def - round(0.4 * n_train) >= 16


def test_contaminate_synthetic_category(tmp_path):
    root = generate_synthetic(tmp_path / "syn", categories=["fabric"], n_train=10, n_test_good=2, n_test_defect=8,
                              image_size=64)  # fmt: skip
    data = contaminate(load_mvtec(root, "fabric"), 0.4, seed=0)
    assert data.n_noise == 4 and len(data.train) == 14 and len(data.test) == 6
    assert all("/test/" in p for p, n in zip(data.train_paths(), data.train_is_noise) if n)


def test_existing_output_is_reused_or_refused(tmp_path):
    kw = dict(categories=["tile"], n_test_defect=4, **SMALL)
    root = generate_synthetic(tmp_path / "s", **kw)
    f = root / "tile" / "train" / "good" / "000.png"
    stamp = f.stat().st_mtime_ns
    generate_synthetic(root, **kw)  # identical request: nothing rewritten
    assert f.stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_synthetic(root, **dict(kw, seed=5))
    generate_synthetic(root, overwrite=True, **dict(kw, seed=5, n_train=2))
    assert len(list((root / "tile" / "train" / "good").iterdir())) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="category"):
        render_synthetic("banana", 64)
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic("/nonexistent/never", image_size=16)
    with pytest.raises(ValueError, match="n_train"):
        generate_synthetic("/nonexistent/never", n_train=0)
    with pytest.raises(ValueError, match="defect"):
        render_synthetic("nut", 64, defect="crack")
    with pytest.raises(ValueError, match="variation"):
        render_synthetic("nut", 64, defect="rust", variation=1.5)
    with pytest.raises(ValueError, match="variation"):
        generate_synthetic("/nonexistent/never", variation=-0.1)


def _extent(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1


@pytest.mark.parametrize("category,defect", [("fabric", "hole"), ("metal", "stain"), ("wood", "hole")])
def test_variation_zero_repeats_one_fault_at_new_places(category, defect):
    masks = [render_synthetic(category, 128, 0, i, defect, variation=0.0)[1] for i in range(5)]
    centres = {tuple(np.round(np.argwhere(m).mean(0))) for m in masks}
    assert len(centres) == 5, "each instance must be placed on its own"
    # The same shape up to sub-pixel placement: areas within 8 %, extents within a pixel.
    areas = np.array([m.sum() for m in masks])
    assert areas.max() <= 1.08 * areas.min(), areas
    extents = np.array([_extent(m) for m in masks])
    assert (extents.max(0) - extents.min(0) <= 1).all(), extents
    # The default spread gives instances of clearly different sizes.
    areas = np.array([render_synthetic(category, 128, 0, i, defect)[1].sum() for i in range(5)])
    assert areas.max() > 1.08 * areas.min(), areas


def test_variation_is_recorded_and_one_is_the_default(tmp_path):
    kw = dict(categories=["capsule"], n_train=1, n_test_good=1, n_test_defect=5, image_size=64)
    generate_synthetic(tmp_path / "a", **kw)
    generate_synthetic(tmp_path / "b", variation=1.0, **kw)
    generate_synthetic(tmp_path / "c", variation=0.0, **kw)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert json.loads(c["synthetic.json"])["params"]["variation"] == 0.0
    assert any(a[k] != c[k] for k in a if "ground_truth" in k)
