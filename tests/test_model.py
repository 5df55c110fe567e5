"""The MeDS estimator end to end on a tiny contaminated synthetic category."""

import copy
import json

import numpy as np
import pytest
import torch

import meds
from meds.method.baselines import MemoryEnsembleDetector, NearestNeighbourDetector
from meds.data import contaminate, generate_synthetic, load_dataset
from meds.evaluation.metrics import image_auroc
from meds.method.model import FINAL_DETECTORS
from meds.method.network import NetworkConfig
from meds.method.scoring import POSITION_SCALE_FLOOR
from meds.method.train import TrainConfig, patch_scores

TINY_NETWORK = NetworkConfig(dim=32, depth=1, heads=2)


def tiny_meds(**kwargs):
    settings = dict(
        image_size=96, network=TINY_NETWORK, n_banks=20,
        train=TrainConfig(distill_steps=40, finetune_steps=40, batch_size=8, checkpoint_every=10),
        device="cpu", verbose=False,
    )
    settings.update(kwargs)
    return meds.MeDS(**settings)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, categories=["tile"], n_train=20, n_test_good=8, n_test_defect=16, image_size=160, seed=3)
    data = load_dataset(root, category="tile", format="mvtec")
    return contaminate(data, 0.4, seed=0)


@pytest.fixture(scope="module")
def fitted(split):
    """MeDS at its default network size with a short schedule (about 20 s on 2 cores)."""
    model = meds.MeDS(image_size=160, n_banks=50, train=TrainConfig(distill_steps=100, finetune_steps=100),
                      device="cpu", verbose=False)
    return model.fit(split.train_paths())


def test_meds_finds_the_injected_defects(split, fitted):
    is_noise = split.noise_labels()
    assert is_noise.sum() == 8
    assert fitted.training_scores_.shape == (len(split.train),)
    assert image_auroc(is_noise.astype(int), fitted.training_scores_) >= 0.9
    # The final selection trusts mostly normal images.
    assert fitted.selected_.dtype == bool
    assert is_noise[fitted.selected_].mean() < 0.5 * is_noise.mean()


def test_meds_beats_the_full_memory_nearest_neighbour(split, fitted):
    labels = split.test_labels()
    ours = image_auroc(labels, fitted.predict(split.test_paths(), return_maps=False).scores)
    baseline = NearestNeighbourDetector(image_size=160, device="cpu", verbose=False).fit(split.train_paths())
    theirs = image_auroc(labels, baseline.predict(split.test_paths(), return_maps=False).scores)
    assert ours > theirs


def test_predict_returns_maps_at_each_image_size(split, fitted, tmp_path):
    from PIL import Image

    odd = tmp_path / "odd.png"
    Image.fromarray(np.zeros((70, 50, 3), np.uint8)).save(odd)
    out = fitted.predict([split.test_paths()[0], str(odd)])
    assert out.scores.shape == (2,) and out.labels.dtype == bool
    assert out.maps[0].shape == (160, 160) and out.maps[1].shape == (70, 50)
    assert out.threshold == fitted.threshold_
    np.testing.assert_array_equal(out.labels, out.scores > out.threshold)


def test_save_load_gives_identical_predictions(split, fitted, tmp_path):
    fitted.save(tmp_path / "model")
    weights = json.loads((tmp_path / "model" / "config.json").read_text())["files"]["model"]["name"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", weights]
    loaded = meds.MeDS.load(tmp_path / "model", device="cpu", verbose=False)
    paths = split.test_paths()[:6]
    a, b = fitted.predict(paths), loaded.predict(paths)
    np.testing.assert_array_equal(a.scores, b.scores)
    for ma, mb in zip(a.maps, b.maps):
        np.testing.assert_array_equal(ma, mb)
    np.testing.assert_array_equal(loaded.training_scores_, fitted.training_scores_)
    np.testing.assert_array_equal(loaded.selected_, fitted.selected_)
    assert loaded.get_config() == fitted.get_config()


@pytest.mark.parametrize("final", FINAL_DETECTORS)
def test_every_final_detector_predicts_and_round_trips(split, fitted, final, tmp_path):
    view = fitted.with_final(final)
    assert view.final == final and fitted.final == "reconstruction"  # a view; the model is unchanged
    paths = split.test_paths()
    out = view.predict(paths)
    assert out.threshold == fitted.thresholds_[final]
    np.testing.assert_array_equal(out.labels, out.scores > out.threshold)
    assert image_auroc(split.test_labels(), out.scores) > 0.5
    view.save(tmp_path / final)
    loaded = meds.MeDS.load(tmp_path / final, device="cpu", verbose=False)
    assert loaded.final == final
    before, after = view.predict(paths[:4]), loaded.predict(paths[:4])  # same batch: same bits
    np.testing.assert_array_equal(after.scores, before.scores)
    np.testing.assert_array_equal(after.labels, before.labels)


def test_the_memory_detector_holds_only_trusted_patches(split, fitted):
    grid = fitted.grid_[0] * fitted.grid_[1]
    per_image = int(np.ceil(fitted.coreset_ratio * grid))
    assert fitted.memory_bank_.shape == (int(fitted.trusted_.sum()) * per_image, sum(fitted.group_dims_))
    # The trusted set is stricter than stage 3's training set at 40 % noise.
    is_noise = split.noise_labels()
    assert is_noise[fitted.trusted_].sum() <= is_noise[fitted.selected_].sum()
    # Its scores are nearest-neighbour distances to the bank (brute force, cosine).
    features = torch.cat([f for _, f in fitted.iter_features(split.test_paths()[:2])])
    patches = torch.nn.functional.normalize(features.reshape(-1, features.shape[-1]), dim=1)
    bank = torch.nn.functional.normalize(fitted.memory_bank_, dim=1)
    expected = (1 - patches @ bank.T).min(dim=1).values.reshape(2, -1)
    got = fitted.with_final("memory")._score_features(features)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_reconstruction_scores_are_standardised_per_patch_position(split, fitted):
    """Centre and scale: numpy's median and floored MAD of the selected images' raw network
    scores at each position; test scores are the raw scores standardised by them."""
    train = fitted.training_features(split.train_paths())
    raw = patch_scores(fitted.network_, train[torch.as_tensor(fitted.selected_)]).double().numpy()
    # torch's median of an even count is the lower middle value
    lower_median = lambda a: np.sort(a, axis=0)[(a.shape[0] - 1) // 2]
    centre = lower_median(raw)
    spread = lower_median(np.abs(raw - centre))
    scale = np.maximum(spread, POSITION_SCALE_FLOOR * lower_median(spread[:, None])[0])
    got_centre, got_scale = (t.double().numpy() for t in fitted.position_stats_)
    np.testing.assert_allclose(got_centre, centre, rtol=1e-6)
    np.testing.assert_allclose(got_scale, scale, rtol=1e-6)
    assert (got_scale > spread).any()  # the floor binds somewhere on this data

    features = torch.cat([f for _, f in fitted.iter_features(split.test_paths()[:3])])
    test_raw = patch_scores(fitted.network_, features).double().numpy()
    got = fitted._score_features(features).double().numpy()
    np.testing.assert_allclose(got, (test_raw - centre) / scale, rtol=1e-5, atol=1e-6)
    plain = copy.copy(fitted)
    plain.position_stats_ = None
    np.testing.assert_allclose(plain._score_features(features).double().numpy(), test_raw, rtol=1e-6)


def test_position_norm_off_scores_with_the_raw_network(split):
    model = tiny_meds(position_norm=False).fit(split.train_paths())
    assert model.position_stats_ is None
    features = torch.cat([f for _, f in model.iter_features(split.test_paths()[:2])])
    torch.testing.assert_close(model._score_features(features), patch_scores(model.network_, features))


def test_load_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        meds.MeDS.load(tmp_path)


class Interrupted(Exception):
    pass


def test_fit_resumes_after_an_interruption(split, tmp_path):
    uninterrupted = tiny_meds().fit(split.train_paths())

    def stop_in_stage3(stage, step, total, loss):
        if stage == "finetune" and step == 25:
            raise Interrupted()

    with pytest.raises(Interrupted):
        tiny_meds().fit(split.train_paths(), checkpoint_dir=tmp_path, callback=stop_in_stage3)
    assert (tmp_path / "train_state.json").exists() and (tmp_path / "memory_scores.json").exists()
    seen = []
    resumed = tiny_meds().fit(split.train_paths(), checkpoint_dir=tmp_path,
                              callback=lambda stage, step, total, loss: seen.append((stage, step)))
    assert ("distill", 1) not in seen and seen[0][0] == "finetune"  # stages 1-2 were not redone
    np.testing.assert_allclose(resumed.training_scores_, uninterrupted.training_scores_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(resumed.selected_, uninterrupted.selected_)


def test_variants_run_exact_banks_and_exclude_self(split):
    exact = tiny_meds(n_banks="exact", train=TrainConfig(distill_steps=5, finetune_steps=5, batch_size=8))
    loo = tiny_meds(exclude_self=True, train=TrainConfig(distill_steps=5, finetune_steps=5, batch_size=8))
    for model in (exact.fit(split.train_paths()), loo.fit(split.train_paths())):
        assert np.isfinite(model.training_scores_).all() and np.isfinite(model.memory_scores_).all()
    # Leave-one-out memory scores are never below the ones that allow self matches.
    plain = tiny_meds(train=TrainConfig(distill_steps=0, finetune_steps=0)).fit(split.train_paths())
    assert np.all(loo.memory_scores_ >= plain.memory_scores_ - 1e-6)


def test_memory_ensemble_detector_scores_defects_higher(split):
    det = MemoryEnsembleDetector(image_size=160, n_banks=50, device="cpu", verbose=False).fit(split.train_paths())
    assert image_auroc(split.noise_labels().astype(int), det.training_scores_) >= 0.9
    scores = det.predict(split.test_paths(), return_maps=False).scores
    assert image_auroc(split.test_labels(), scores) > 0.5


@pytest.mark.parametrize(
    "images,error,match",
    [
        ([], ValueError, "at least 2"),
        (["ONE"], ValueError, "at least 2"),
        ("MIXED", ValueError, "one size"),
        ([np.zeros((32, 32, 3), np.int32)] * 3, TypeError, "dtype"),
        ("a_folder_name", TypeError, "list"),
    ],
)
def test_fit_rejects_bad_training_sets(split, images, error, match):
    if images == ["ONE"]:
        images = split.train_paths()[:1]
    elif images == "MIXED":
        images = [np.zeros((32, 32, 3), np.uint8), np.zeros((40, 32, 3), np.uint8)]
    with pytest.raises(error, match=match):
        tiny_meds().fit(images)


def test_predict_before_fit_and_bad_options():
    with pytest.raises(RuntimeError, match="fit"):
        tiny_meds().predict([np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match="n_banks"):
        meds.MeDS(n_banks=0)
    with pytest.raises(ValueError, match="bank_ratio"):
        meds.MeDS(bank_ratio=1.5)
    with pytest.raises(ValueError, match="network"):
        meds.MeDS(network="huge")
    with pytest.raises(ValueError, match="final"):
        meds.MeDS(final="best")
    with pytest.raises(ValueError, match="coreset_ratio"):
        meds.MeDS(coreset_ratio=0.0)
    with pytest.raises(ValueError, match="trust_rounds"):
        meds.MeDS(trust_rounds=0)


def test_fit_is_reproducible_and_leaves_the_global_rng_alone(split):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = tiny_meds(train=TrainConfig(distill_steps=8, finetune_steps=8, batch_size=8)).fit(split.train_paths())
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = tiny_meds(train=TrainConfig(distill_steps=8, finetune_steps=8, batch_size=8)).fit(split.train_paths())
    np.testing.assert_array_equal(a.training_scores_, b.training_scores_)
