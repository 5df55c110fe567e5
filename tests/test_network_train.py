"""The reconstruction network, the post-processing and the stage-2/3 training rules."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from meds.method.network import NETWORK_PRESETS, NetworkConfig, ReconstructionNetwork
from meds.method.scoring import (
    anomaly_maps,
    gaussian_blur,
    position_stats,
    robust_threshold,
    standardise_positions,
    top_fraction_mean,
)
from meds.method.train import (
    Checkpointer,
    TrainConfig,
    auto_steps,
    distill,
    hard_mining_loss,
    learning_rate,
    patch_scores,
    progressive_selection,
    selection_mask,
)

GROUPS = (5, 11)


def toy_features(n=12, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, length, sum(GROUPS), generator=g)
    feats = base + 0.1 * torch.randn(n, length, sum(GROUPS), generator=g)
    feats[:2, :3] = torch.randn(2, 3, sum(GROUPS), generator=g) * 3  # two "defective" images
    return feats


def test_network_scores_shape_range_and_gradients():
    net = ReconstructionNetwork(GROUPS, NetworkConfig(dim=16, depth=1, heads=2))
    x = torch.randn(3, 7, sum(GROUPS))
    d = net.patch_distances(x)
    assert d.shape == (3, 7, 2)
    s = net(x)
    assert s.shape == (3, 7)
    assert torch.all(s >= 0) and torch.all(s <= 2)
    s.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_network_rejects_wrong_feature_width():
    net = ReconstructionNetwork(GROUPS, NetworkConfig(dim=16, depth=1, heads=2))
    with pytest.raises(ValueError, match="features"):
        net(torch.randn(2, 4, sum(GROUPS) + 1))


@pytest.mark.parametrize("kwargs", [dict(dim=10, heads=3), dict(depth=0), dict(dropout=1.0)])
def test_network_config_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        NetworkConfig(**kwargs)


def test_dinomaly_preset_matches_the_paper_decoder():
    cfg = NETWORK_PRESETS["dinomaly"]
    assert (cfg.dim, cfg.depth, cfg.dropout) == (768, 8, 0.2)


def test_top_fraction_mean_matches_numpy():
    x = torch.rand(4, 1000)
    ref = np.sort(x.numpy(), axis=1)[:, -10:].mean(axis=1)
    np.testing.assert_allclose(top_fraction_mean(x, 0.01).numpy(), ref, rtol=1e-6)
    assert torch.allclose(top_fraction_mean(x, 1e-9), x.max(dim=1).values)


def test_gaussian_blur_matches_scipy():
    x = np.random.default_rng(0).random((2, 40, 50)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(x), 4.0).numpy()
    ref = np.stack([ndimage.gaussian_filter(m, 4.0, mode="mirror", truncate=4.0) for m in x])
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_anomaly_maps_shape_and_location():
    scores = torch.zeros(1, 16)
    scores[0, 5] = 1.0  # row 1, column 1 of a 4x4 grid
    maps = anomaly_maps(scores, (4, 4), (32, 32), sigma=1.0)
    assert maps.shape == (1, 32, 32)
    peak = np.unravel_index(int(maps[0].argmax()), (32, 32))
    assert 8 <= peak[0] < 16 and 8 <= peak[1] < 16


def test_robust_threshold():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    assert robust_threshold(scores, 0.0) == 3.0
    assert robust_threshold(scores, 1.0) == pytest.approx(3.0 + 1.4826)


def test_position_stats_are_the_median_and_floored_mad_of_each_position():
    rng = np.random.default_rng(5)
    x = rng.gamma(2.0, 1.0, size=(41, 13)) * np.linspace(0.2, 3.0, 13)  # odd sizes: one median
    x[:, 3] = 7.0  # every image alike here: the floor gives it a scale
    centre, scale = position_stats(torch.from_numpy(x), floor=0.5)
    median = np.median(x, axis=0)
    mad = np.median(np.abs(x - median), axis=0)
    np.testing.assert_allclose(centre.numpy(), median)
    np.testing.assert_allclose(scale.numpy(), np.maximum(mad, 0.5 * np.median(mad)))
    assert scale[3] > 0
    z = standardise_positions(torch.from_numpy(x), centre, scale).numpy()
    np.testing.assert_allclose(np.median(z, axis=0)[mad > 0.5 * np.median(mad)], 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="patch_scores must be"):
        position_stats(torch.zeros(5))


def test_selection_mask_keeps_lower_half_first_then_more():
    eta = torch.arange(10, dtype=torch.float32)
    assert selection_mask(eta, 3.0, 0.0).sum() == 5
    assert selection_mask(eta, 3.0, 1.0).sum() == 10
    eta[-1] = 1000.0  # an outlier stays out even at the end
    assert not selection_mask(eta, 3.0, 1.0)[-1]


def test_hard_mining_damps_easy_gradients():
    d = torch.tensor([0.1, 0.2, 0.3, 0.9], requires_grad=True)
    hard_mining_loss(d, 0.5, 0.1).backward()
    np.testing.assert_allclose(d.grad.numpy(), [0.025, 0.025, 0.25, 0.25], rtol=1e-6)
    d.grad = None
    hard_mining_loss(d, 0.0, 0.1).backward()
    np.testing.assert_allclose(d.grad.numpy(), [0.25] * 4)


def test_learning_rate_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert learning_rate(cfg, 0, 1000) == pytest.approx(0.1)
    assert learning_rate(cfg, 9, 1000) == pytest.approx(1.0)
    assert learning_rate(cfg, 1000, 1000) == pytest.approx(0.1)
    lrs = [learning_rate(cfg, s, 1000) for s in range(10, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_auto_steps_scale_with_the_data_and_give_stage_3_twice_stage_2():
    assert auto_steps(300, "distill") == 600 and auto_steps(300, "finetune") == 1200
    assert auto_steps(10, "distill") == 150 and auto_steps(10, "finetune") == 300  # the floors
    assert auto_steps(100_000, "finetune") == 10_000  # the paper's schedule caps it
    with pytest.raises(ValueError, match="stage"):
        auto_steps(300, "stage2")


SMALL = NetworkConfig(dim=16, depth=1, heads=2, dropout=0.2)


def fresh_network(seed=0):
    torch.manual_seed(seed)
    return ReconstructionNetwork(GROUPS, SMALL)


def test_distillation_regresses_the_memory_scores():
    feats = toy_features()
    targets = torch.full(feats.shape[:2], 0.05)
    targets[:2, :3] = 0.8
    net = fresh_network()
    before = torch.mean((patch_scores(net, feats) - targets) ** 2).item()
    distill(net, feats, targets, TrainConfig(distill_steps=60, batch_size=4, warmup_steps=5), progress=False)
    after = torch.mean((patch_scores(net, feats) - targets) ** 2).item()
    assert after < 0.5 * before


def test_progressive_selection_reports_selection_and_history():
    feats = toy_features()
    net = fresh_network()
    result = progressive_selection(net, feats, TrainConfig(finetune_steps=12, batch_size=4), progress=False)
    assert result.selected.shape == (12,) and result.scores.shape == (12,)
    assert result.history[0][1] == 6  # the first pass keeps the lower half
    assert sum(h[0] == 0 for h in result.history) == 1
    everyone = progressive_selection(fresh_network(), feats, TrainConfig(finetune_steps=6, batch_size=4),
                                     progress=False, select=False)
    assert all(h[1] == 12 for h in everyone.history)


class Interrupt(Exception):
    pass


def interrupt_at(stage, step):
    def callback(s, t, total, loss):
        if s == stage and t == step:
            raise Interrupt()
    return callback


@pytest.mark.parametrize("stage,step", [("distill", 13), ("finetune", 9)])
def test_resume_after_interruption_gives_the_uninterrupted_result(tmp_path, stage, step):
    feats = toy_features()
    targets = torch.rand(feats.shape[:2], generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(distill_steps=20, finetune_steps=16, batch_size=4, checkpoint_every=5)

    def run(checkpointer, callback=None):
        net = fresh_network()
        distill(net, feats, targets, cfg, checkpointer=checkpointer, callback=callback, progress=False)
        return progressive_selection(net, feats, cfg, checkpointer=checkpointer, callback=callback, progress=False)

    reference = run(None)
    checkpointer = Checkpointer(tmp_path, {"run": 1})
    with pytest.raises(Interrupt):
        run(checkpointer, interrupt_at(stage, step))
    resumed = run(checkpointer)
    for (name, a), b in zip(reference.network.state_dict().items(), resumed.network.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert torch.equal(reference.selected, resumed.selected)

    # A checkpoint of other data or settings is ignored: a fresh run starts.
    other = Checkpointer(tmp_path, {"run": 2})
    assert other.load("train_state", "cpu") is None
