"""The trusted memory (meds.method.trusted) against plain references."""

import numpy as np
import pytest
import torch

from meds.method.trusted import PatchMemory, image_coreset, leave_one_out_distance, select_trusted


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return 1.0 - a @ b.T


def _greedy_reference(patches: np.ndarray, k: int) -> list:
    """Greedy k-center of one image, written as plainly as possible (float64)."""
    centre = patches.mean(axis=0, keepdims=True)
    chosen = [int(np.argmax(_cosine(patches, centre)[:, 0]))]
    while len(chosen) < k:
        nearest = _cosine(patches, patches[chosen]).min(axis=1)
        nearest[chosen] = -1.0
        chosen.append(int(np.argmax(nearest)))
    return chosen


def test_image_coreset_is_the_greedy_k_center_of_each_image():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(5, 40, 6)).astype(np.float32)
    chosen = image_coreset(torch.from_numpy(features), 0.2, images_per_chunk=2)
    assert chosen.shape == (5, 8)
    for i in range(5):
        assert chosen[i].tolist() == _greedy_reference(features[i].astype(np.float64), 8)
        assert len(set(chosen[i].tolist())) == 8


def test_image_coreset_keeps_a_rare_patch_before_repeats():
    # 30 copies of one pattern plus one outlier: the outlier is among the first picks.
    features = torch.zeros(1, 31, 4)
    features[0, :, 0] = 1.0
    features[0, 30] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert 30 in image_coreset(features, 2 / 31)[0].tolist()


def test_image_coreset_full_ratio_and_bad_ratio():
    features = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(1))
    assert image_coreset(features, 1.0).tolist() == [list(range(9))] * 2
    with pytest.raises(ValueError, match="ratio"):
        image_coreset(features, 0.0)


def test_leave_one_out_distance_matches_brute_force():
    rng = np.random.default_rng(11)
    features = rng.normal(size=(6, 10, 5)).astype(np.float32)
    which = torch.tensor([0, 2, 3, 5])
    coreset = image_coreset(torch.from_numpy(features), 0.5)
    memory = PatchMemory.of(torch.from_numpy(features), which, coreset)
    got = leave_one_out_distance(torch.from_numpy(features), memory, images_per_chunk=4).numpy()
    rows, owners = memory.rows.numpy().astype(np.float64), memory.images.numpy()
    for i in range(6):
        distance = _cosine(features[i].astype(np.float64), rows)
        distance[:, owners == i] = np.inf  # never against its own patches
        np.testing.assert_allclose(got[i], distance.min(axis=1), atol=2e-6)


def test_select_trusted_drops_outlier_images_and_keeps_the_normals():
    # 40 normal images near one pattern; 12 defective ones each carry three patches of a
    # defect of their own, far from it. (Two copies of one defect inside the core would
    # vouch for each other: the core must be mostly clean, which the ranking provides.)
    rng = np.random.default_rng(3)
    normal = rng.normal(size=16)
    features = normal + 0.3 * rng.normal(size=(52, 16, 16))
    features[40:, :3] = rng.normal(size=(12, 1, 16))  # a random direction per defect
    features = torch.from_numpy(features.astype(np.float32))
    is_defect = np.arange(52) >= 40
    # A noisy first ranking: defects above the normals on average, with overlap.
    ranking = torch.from_numpy(is_defect * 1.0 + rng.normal(scale=0.6, size=52))

    def aggregate(patch):
        return patch.max(dim=1).values

    result = select_trusted(features, ranking, image_coreset(features, 0.5), aggregate, k=3.0)
    trusted = result.trusted.numpy()
    assert not trusted[is_defect].any()
    assert trusted[~is_defect].mean() >= 0.9
    # The re-scores separate the defects perfectly here.
    assert result.scores.numpy()[is_defect].min() > result.scores.numpy()[~is_defect].max()


def test_select_trusted_checks_its_arguments():
    features = torch.randn(4, 3, 2)
    coreset = image_coreset(features, 1.0)
    with pytest.raises(ValueError, match="rounds"):
        select_trusted(features, torch.zeros(4), coreset, lambda p: p.mean(1), rounds=0)
    with pytest.raises(ValueError, match="core_fraction"):
        select_trusted(features, torch.zeros(4), coreset, lambda p: p.mean(1), core_fraction=1.5)
