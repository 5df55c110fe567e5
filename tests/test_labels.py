"""A person's labels: the labels file, and what ``MeDS.fit(labels=...)`` does with them."""

import numpy as np
import pytest
import torch

import meds
from meds.data import contaminate, generate_synthetic, load_dataset
from meds.data.labels import label_codes, label_keys, match_labels, read_labels
from meds.kernels import ops
from meds.method import memory as memory_module
from meds.method.network import NetworkConfig, ReconstructionNetwork
from meds.method.train import TrainConfig

N_BANKS = 12
torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared machine


def test_label_keys_are_the_shortest_unique_tails():
    paths = ["/d/wood/train/good/000.png", "/d/wood/test/crack/000.png", "/d/wood/train/good/001.png"]
    assert label_keys(paths) == ["good/000.png", "crack/000.png", "001.png"]


def test_match_labels_by_tail_and_errors(tmp_path):
    paths = ["/d/train/good/000.png", "/d/test/crack/000.png", "/d/train/good/001.png"]
    got = match_labels([("001.png", "good"), ("crack/000.png", "defective")], paths)
    assert got == [None, "defective", "good"]
    with pytest.raises(ValueError, match="'002.png' is not a training image"):
        match_labels([("002.png", "good")], paths)
    with pytest.raises(ValueError, match="'000.png' matches 2 training images"):
        match_labels([("000.png", "good")], paths)
    with pytest.raises(ValueError, match="is not a training image"):
        match_labels([("od/001.png", "good")], paths)  # whole path components only


def test_read_labels_checks_the_file(tmp_path):
    good = tmp_path / "labels.csv"
    good.write_text("filename,label\na.png,defective\nb.png,good\n")
    assert read_labels(good) == [("a.png", "defective"), ("b.png", "good")]
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,label\na.png,broken\n")
    with pytest.raises(ValueError, match="line 2"):
        read_labels(bad)
    bad.write_text("name,label\n")
    with pytest.raises(ValueError, match="filename,label"):
        read_labels(bad)
    with pytest.raises(ValueError, match="one entry per image"):
        label_codes(["good"], 3)
    with pytest.raises(ValueError, match=r"labels\[1\]"):
        label_codes(["good", "bad", None], 3)
    assert label_codes([None, None], 2) is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Features of a tiny category and a model factory (the encoder runs once)."""
    root = tmp_path_factory.mktemp("labels")
    generate_synthetic(root, categories=["tile"], n_train=12, n_test_good=2, n_test_defect=4, image_size=64, seed=5)
    data = contaminate(load_dataset(root, category="tile", format="mvtec"), 0.25, seed=0)  # 3 defects

    def make():
        return meds.MeDS(image_size=64, n_banks=N_BANKS, network=NetworkConfig(dim=16, depth=1, heads=2),
                         train=TrainConfig(distill_steps=8, finetune_steps=8, batch_size=4, selection_k=0.0),
                         device="cpu", verbose=False)  # k = 0: the last selection keeps the lower half

    model = make()
    features = model.training_features(data.train_paths())

    def fit(**kwargs):
        fresh = make()
        fresh.grid_, fresh.group_dims_ = model.grid_, model.group_dims_
        return fresh.fit_features(features, **kwargs)

    return features, fit


class _Spy:
    """Records the banks of stage 1 and the images of every training batch."""

    def __init__(self, monkeypatch, features):
        self.banks, self.batches = [], []
        flat = features.reshape(features.shape[0], -1)
        real_ensemble = ops.ensemble_distance
        real_forward, real_distances = ReconstructionNetwork.forward, ReconstructionNetwork.patch_distances

        def ensemble(queries, memory, groups, banks, **kwargs):
            if torch.as_tensor(banks).dtype != torch.bool:  # (B, m) ids: stage 1's memories
                self.banks.append(torch.as_tensor(banks).clone())
            return real_ensemble(queries, memory, groups, banks, **kwargs)

        def which(x):  # training image index of each batch row (features are distinct per image)
            rows = x.reshape(x.shape[0], -1)
            return [int(torch.nonzero((flat == row).all(dim=1)).flatten()[0]) for row in rows]

        def forward(net, x):
            if net.training:
                self.batches.append(which(x))
            return real_forward(net, x)

        def distances(net, x):
            if net.training:
                self.batches.append(which(x))
            return real_distances(net, x)

        monkeypatch.setattr(memory_module.ops, "ensemble_distance", ensemble)
        monkeypatch.setattr(ReconstructionNetwork, "forward", forward)
        monkeypatch.setattr(ReconstructionNetwork, "patch_distances", distances)


@pytest.fixture(scope="module")
def plain(trained):
    return trained[1]()


def test_without_labels_the_fit_is_unchanged(trained, plain, monkeypatch):
    features, fit = trained
    spy = _Spy(monkeypatch, features)
    fit()
    # The banks are the seeded draw over all images, as before labels existed.
    expected = torch.as_tensor(ops.sample_banks(features.shape[0], n_banks=N_BANKS, ratio=0.1, seed=0))
    assert all(torch.equal(b, expected) for b in spy.banks)
    assert spy.banks
    unset = fit(labels=[None] * features.shape[0])
    for name in ("memory_scores_", "training_scores_", "selected_", "trusted_"):
        np.testing.assert_array_equal(getattr(unset, name), getattr(plain, name))
    assert torch.equal(unset.memory_bank_, plain.memory_bank_)
    assert plain.label_counts_ == {"defective": 0, "good": 0}


def test_labels_keep_defects_out_and_goods_in(trained, plain, monkeypatch, tmp_path):
    features, fit = trained
    order = np.argsort(-plain.training_scores_)
    good, defective = int(order[0]), [int(order[-1]), int(order[-2])]  # would be distrusted / trusted
    assert not plain.selected_[good] and plain.selected_[defective].all()
    labels = [None] * features.shape[0]
    labels[good] = "good"
    for i in defective:
        labels[i] = "defective"

    spy = _Spy(monkeypatch, features)
    model = fit(labels=labels)
    assert spy.banks and spy.batches
    banks = torch.cat([b.flatten() for b in spy.banks])
    assert not set(banks.tolist()) & set(defective)                      # no bank holds a labelled defect
    assert banks.numel() == len(spy.banks) * N_BANKS * 2                 # ceil(0.1 * 13 allowed) = 2 per bank
    assert not {i for batch in spy.batches for i in batch} & set(defective)  # nor any training batch
    assert not model.selected_[defective].any() and model.selected_[good]
    assert not model.trusted_[defective].any() and model.trusted_[good]
    assert np.isfinite(model.training_scores_[defective]).all()         # still scored
    bank = model.memory_bank_
    for i in defective:  # the final memory holds none of their patches
        assert not (torch.cdist(bank, features[i]) == 0).any()
    assert model.label_counts_ == {"defective": 2, "good": 1}
    model.save(tmp_path / "m")
    assert meds.MeDS.load(tmp_path / "m", device="cpu", verbose=False).label_counts_ == {"defective": 2, "good": 1}


def test_labels_need_two_images_left(trained):
    features, fit = trained
    with pytest.raises(ValueError, match="at least 2"):
        fit(labels=["defective"] * (features.shape[0] - 1) + [None])
