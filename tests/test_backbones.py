"""meds.method.backbones: weights, feature layout, preprocessing, cache. No network needed."""

import os

import numpy as np
import pytest
import skimage.data
import timm
import torch
import torch.nn.functional as F

from meds.method import backbones as B
from meds.method.backbones import weights as W
from meds.method.backbones import (
    PatchFeatureExtractor,
    PatchFeatures,
    cached_features,
    embedded_efficientnet_lite0_path,
    feature_cache_key,
    map_efficientnet_lite0_state_dict,
)


@pytest.fixture(scope="module")
def lite0():
    return PatchFeatureExtractor()  # embedded weights, default preset


@pytest.fixture(scope="module")
def lite0_classifier():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    sd = torch.load(embedded_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(map_efficientnet_lite0_state_dict(sd, model.state_dict()), strict=True)
    return model.eval()


def _cat(size=224):
    img = torch.from_numpy(np.array(skimage.data.chelsea())).permute(2, 0, 1)[None].float() / 255
    img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (img - 0.5) / 0.5


def test_embedded_lite0_classifies_cat(lite0_classifier):
    with torch.no_grad():
        probs = lite0_classifier(_cat()).softmax(-1)[0]
    top = int(probs.argmax())
    assert top == 285, f"expected 285 'Egyptian cat', got {top} (p={float(probs[top]):.3f})"
    assert probs[281:286].sum() > 0.8  # the cat classes


def test_lite0_mapping_rule_and_errors(lite0_classifier):
    sd = torch.load(embedded_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    target = lite0_classifier.state_dict()
    nbt = [k for k in sd if k.endswith("num_batches_tracked")]
    assert len(sd) == len(target) == 296 and len(nbt) == 49
    assert len(sd) - len(nbt) == 247
    mapped = map_efficientnet_lite0_state_dict(sd, target)
    src = [v for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    assert all(torch.equal(mapped[k], v) for k, v in zip(dst, src))
    assert torch.equal(mapped["conv_stem.weight"], sd["_conv_stem.weight"])
    assert torch.equal(mapped["classifier.weight"], sd["_fc.weight"])
    # a missing tensor or a wrong shape is an error, never a partial load
    short = dict(list(sd.items())[:-1])
    with pytest.raises(ValueError, match="247"):
        map_efficientnet_lite0_state_dict(short, target)
    bad = dict(sd)
    bad["_conv_stem.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(ValueError, match="#0"):
        map_efficientnet_lite0_state_dict(bad, target)


def test_lite0_features_match_classifier_layers(lite0, lite0_classifier):
    assert lite0.group_dims == (40, 112)
    assert lite0.grid == (28, 28)  # at the preset input size, 224
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    x = _cat(256)
    pf = lite0(x)
    assert isinstance(pf, PatchFeatures)
    assert pf.features.shape == (1, 32 * 32, 152) and pf.features.dtype == torch.float32
    # plain reference: run the classifier's own modules, pool 3x3 over valid pixels, resize
    m = lite0_classifier
    with torch.no_grad():
        h = m.bn1(m.conv_stem(x))
        outs = []
        for i, blk in enumerate(m.blocks):
            h = blk(h)
            if i in (2, 4):
                outs.append(h)
    ref = []
    for f in outs:
        ones = torch.ones_like(f[:, :1])
        num = F.conv2d(F.pad(f, (1, 1, 1, 1)), torch.ones(f.shape[1], 1, 3, 3), groups=f.shape[1])
        cnt = F.conv2d(F.pad(ones, (1, 1, 1, 1)), torch.ones(1, 1, 3, 3))
        ref.append(num / cnt)
    ref[1] = F.interpolate(ref[1], size=(32, 32), mode="bilinear", align_corners=False)
    ref = torch.cat(ref, 1).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pf.features, ref, atol=1e-4, rtol=1e-4)
    sl = pf.group_slices()
    assert sl == [slice(0, 40), slice(40, 152)]
    assert pf.as_maps().shape == (1, 152, 32, 32)


def test_frozen_and_eval(lite0):
    assert not any(p.requires_grad for p in lite0.parameters())
    lite0.train()
    assert lite0.training and not lite0.backbone.training
    lite0.eval()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert not lite0(x).features.requires_grad


def test_cnn_layer_order_groups_and_neighbourhood():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a = PatchFeatureExtractor("resnet18", weights=None, layers=(2, 3), image_size=64, neighbourhood=1)
    b = PatchFeatureExtractor("resnet18", weights=None, layers=(3, 2), image_size=64, neighbourhood=1)
    fa, fb = a(x), b(x)
    assert fa.group_dims == (128, 256) and fb.group_dims == (256, 128)
    assert fa.grid == (8, 8) and fb.grid == (4, 4)  # grid of the first chosen layer
    # same seed -> same random weights; level 3 unresized in b equals resnet layer3 output
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model("resnet18", pretrained=False).eval()
    with torch.no_grad():
        h = net.maxpool(net.act1(net.bn1(net.conv1(x))))
        l2 = net.layer2(net.layer1(h))
        l3 = net.layer3(l2)
    torch.testing.assert_close(fb.features[..., :256], l3.flatten(2).transpose(1, 2))
    torch.testing.assert_close(fa.features[..., :128], l2.flatten(2).transpose(1, 2))
    l3_up = F.interpolate(l3, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(fa.features[..., 128:], l3_up.flatten(2).transpose(1, 2))
    # neighbourhood averaging over valid pixels, checked by loops
    c = PatchFeatureExtractor("resnet18", weights=None, layers=(3,), image_size=64, neighbourhood=3)
    got = c(x).features.transpose(1, 2).reshape(2, 256, 4, 4)
    ref = torch.zeros_like(l3)
    for i in range(4):
        for j in range(4):
            ref[:, :, i, j] = l3[:, :, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].mean((2, 3))
    torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match="out of range"):
        PatchFeatureExtractor("resnet18", weights=None, layers=(7,))


def test_vit_patch_tokens_registers_and_final_norm():
    kw = dict(img_size=32, depth=3, embed_dim=48, num_heads=3, reg_tokens=4)
    ext = PatchFeatureExtractor(
        "vit_tiny_patch16_224", weights=None, layers=(-1, (0, 1)), image_size=48, crop_size=32, model_kwargs=kw
    )
    assert ext.is_vit and ext.backbone.num_prefix_tokens == 5
    assert ext.group_dims == (48, 48) and ext.grid == (2, 2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pf = ext(x)
    assert pf.features.shape == (2, 4, 96) and pf.grid == (2, 2)
    # plain reference with the same random weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True, **kw).eval()
    with torch.no_grad():
        t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        outs = []
        for blk in vit.blocks:
            t = blk(t)
            outs.append(t[:, 5:])  # drop cls + 4 registers
        last = vit.norm(t)[:, 5:]
    torch.testing.assert_close(pf.features[..., :48], last)
    torch.testing.assert_close(pf.features[..., 48:], (outs[0] + outs[1]) / 2)
    # config round-trips through JSON
    import json

    again = PatchFeatureExtractor(**json.loads(json.dumps(ext.config)))
    torch.testing.assert_close(again(x).features, pf.features)
    # other input size works (dynamic position embedding)
    assert ext(torch.randn(1, 3, 64, 48)).grid == (4, 3)


def test_presets_build_offline_with_random_weights():
    d = PatchFeatureExtractor("dinov2_vitb14_reg", weights=None)
    assert d.arch == "vit_base_patch14_reg4_dinov2.lvd142m"
    assert d.output_size == (392, 392) and d.grid == (28, 28) and d.group_dims == (768,)
    assert d.backbone.num_prefix_tokens == 5
    assert d.mean == B.IMAGENET_MEAN
    w = PatchFeatureExtractor("wide_resnet50_2", pretrained=False)
    assert w.group_dims == (512, 1024) and w.output_size == (224, 224) and w.grid == (28, 28)


def test_preprocess(lite0, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    ext = PatchFeatureExtractor("resnet18", weights=None, image_size=(128, 96), crop_size=(64, 80))
    x = ext.preprocess([img])
    assert x.shape == (1, 3, 64, 80) and x.dtype == torch.float32
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    t = F.interpolate(t, size=(128, 96), mode="bilinear", antialias=True, align_corners=False)[..., 32:96, 8:88]
    mean, std = torch.tensor(ext.mean).view(1, 3, 1, 1), torch.tensor(ext.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (t - mean) / std)
    # path, PIL and array give the same; grayscale repeats to RGB
    p = tmp_path / "a.png"
    Image.fromarray(img).save(p)
    torch.testing.assert_close(ext.preprocess([str(p)]), x)
    torch.testing.assert_close(ext.preprocess(Image.fromarray(img)), x)
    g = ext.preprocess([img[:, :, 0]])
    torch.testing.assert_close(g[:, 0] * ext.std[0] + ext.mean[0], g[:, 1] * ext.std[1] + ext.mean[1])
    # lite0: 0.5 normalisation maps [0, 1] to [-1, 1]
    y = lite0.preprocess([np.full((10, 10, 3), 255, np.uint8)])
    assert y.shape == (1, 3, 224, 224) and torch.allclose(y, torch.ones_like(y))


def test_extract_batches_equal_forward():
    ext = PatchFeatureExtractor("resnet18", weights=None, image_size=64)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8) for i in range(5)]
    pf = ext.extract(imgs, batch_size=2, progress=False)
    ref = ext(ext.preprocess(imgs))
    assert pf.grid == ref.grid == ext.grid and pf.group_dims == ref.group_dims
    torch.testing.assert_close(pf.features, ref.features, atol=1e-5, rtol=1e-5)
    pf2 = ext.extract(imgs, batch_size=3, progress=False, num_workers=2)
    torch.testing.assert_close(pf2.features, pf.features)
    # extract output can serve as a training target (not an inference tensor)
    w = torch.ones(1, requires_grad=True)
    (pf.features[:1] * w).sum().backward()


def test_weights_from_local_files(tmp_path):
    src = PatchFeatureExtractor("resnet18", weights=None, seed=1)
    full = timm.create_model("resnet18", pretrained=False)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in full.state_dict().items()}
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "w.safetensors")
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        ext = PatchFeatureExtractor("resnet18", weights=tmp_path / name)
        assert torch.equal(ext.backbone.state_dict()["conv1.weight"], sd["conv1.weight"])
        assert not torch.equal(src.backbone.state_dict()["conv1.weight"], sd["conv1.weight"])
    bad = dict(sd)
    del bad["layer1.0.conv1.weight"]
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match=r"missing keys: layer1\.0\.conv1\.weight.*unexpected keys: extra\.weight"):
        PatchFeatureExtractor("resnet18", weights=tmp_path / "bad.pth")
    # the lite0 file in its own naming scheme is also accepted as weights=PATH
    lite = PatchFeatureExtractor("tf_efficientnet_lite0", weights=embedded_efficientnet_lite0_path())
    ref = torch.load(embedded_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    assert torch.equal(lite.backbone.state_dict()["conv_stem.weight"], ref["_conv_stem.weight"])


def _hub_settings():
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")


def test_offline_hub_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(W, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    before = _hub_settings()
    with pytest.raises(RuntimeError, match=r"weights for resnet18 could not be downloaded \(offline\?\); pass weights=PATH"):
        PatchFeatureExtractor("resnet18")
    assert _hub_settings() == before  # the caller's hub settings were never touched
    with pytest.raises(ValueError, match="neither a preset"):
        PatchFeatureExtractor("no_such_model_xyz")


def test_offline_hub_loads_the_cached_copy_without_a_global_switch(monkeypatch, tmp_path):
    """Offline, timm's pretrained weights come from the local hub cache; the hub is never
    asked and no process-wide offline flag is flipped for it."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id  # e.g. timm/resnet18.a1_in1k
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v
          for k, v in timm.create_model("resnet18", pretrained=False).state_dict().items()}
    repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(sd, repo / "snapshots" / ("0" * 40) / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(W, "_hub_reachable", lambda timeout=3.0: False)

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked while offline")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_network)
    before = _hub_settings()
    ext = PatchFeatureExtractor("resnet18")
    assert _hub_settings() == before
    assert torch.equal(ext.backbone.state_dict()["conv1.weight"], sd["conv1.weight"])
    assert ext.weights_id.startswith(f"hub:{hub_id}:")  # the same id as an online load


def test_feature_cache(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    ext = PatchFeatureExtractor("resnet18", weights=None, image_size=32)
    cache = tmp_path / "cache"
    pf = cached_features(ext, paths, cache, batch_size=2, progress=False)
    ref = ext.extract(paths, progress=False)
    torch.testing.assert_close(pf.features, ref.features)
    assert pf.grid == ref.grid and pf.group_dims == ref.group_dims
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    for name in files:  # written by meds.atomic_io: a plain file's mode, not mkstemp's 0600
        assert os.stat(cache / name).st_mode & 0o777 == 0o666 & ~umask
    arr = np.load(cache / files[1], allow_pickle=False)  # plain npy, no pickle
    assert arr.shape == tuple(ref.features.shape)

    # second call: read from disk, the backbone never runs
    calls = []
    monkeypatch.setattr(ext, "_run", lambda *a: calls.append(1))
    again = cached_features(ext, paths, cache, progress=False)
    assert not calls
    torch.testing.assert_close(again.features, pf.features)
    mm = cached_features(ext, paths, cache, progress=False, mmap=True)
    assert isinstance(mm.features, np.memmap) and not mm.features.flags.writeable
    monkeypatch.undo()

    # key depends on file content identity, order, and extractor settings
    k0 = feature_cache_key(ext, paths)
    assert feature_cache_key(ext, paths[::-1]) != k0
    other = PatchFeatureExtractor("resnet18", weights=None, image_size=32, layers=(1, 2))
    assert feature_cache_key(other, paths) != k0
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    assert feature_cache_key(ext, paths) != k0
    half = cached_features(ext, paths, cache, progress=False, dtype="float16")
    torch.testing.assert_close(half.features, ext.extract(paths, progress=False).features, atol=2e-2, rtol=2e-3)


def _three_inputs(tmp_path):
    """A 16-bit grayscale PNG (values that are not multiples of 257), an RGBA PNG with a
    varying alpha, and a grayscale array, each as a file too."""
    from PIL import Image

    rng = np.random.default_rng(3)
    g16 = rng.integers(0, 65536, (40, 36), dtype=np.uint16)
    rgba = rng.integers(0, 256, (40, 36, 4), dtype=np.uint8)
    gray = rng.integers(0, 256, (40, 36), dtype=np.uint8)
    paths = [tmp_path / "g16.png", tmp_path / "rgba.png", tmp_path / "gray.png"]
    Image.fromarray(g16).save(paths[0])
    Image.fromarray(rgba, mode="RGBA").save(paths[1])
    Image.fromarray(gray, mode="L").save(paths[2])
    assert Image.open(paths[0]).mode.startswith("I")  # Pillow reads it back as 16-bit
    return [g16, rgba, gray], [str(p) for p in paths]


def test_every_entry_point_sees_the_same_pixels(tmp_path):
    """Regression: 16-bit files were divided by 65535 in the extractor (so in cached_features)
    but rounded to 8 bits in MeDS.fit / read_image, and uint16 arrays were refused there."""
    from PIL import Image

    from meds.data import decode_image, read_image
    from meds.method.detector import PatchDetector

    arrays, paths = _three_inputs(tmp_path)
    ext = PatchFeatureExtractor("resnet18", weights=None, image_size=32)
    detector = PatchDetector("resnet18", weights=None, image_size=32, device="cpu", verbose=False)
    detector._extractor = ext
    cached = cached_features(ext, paths, tmp_path / "cache", batch_size=1, progress=False).features
    for i, (array, path) in enumerate(zip(arrays, paths)):
        pixels = decode_image(path)
        with Image.open(path) as pil:
            others = [array, pil, read_image(path), torch.from_numpy(array)]
            for other in others:
                np.testing.assert_array_equal(decode_image(other), pixels)
        ref = ext.extract([path], batch_size=1, progress=False).features
        (_, from_detector), = detector.iter_features([path])
        candidates = {
            "cached_features": cached[i : i + 1],
            "PatchDetector (MeDS.fit/predict)": from_detector,
            "array": ext.extract([array], batch_size=1, progress=False).features,
            "read_image": ext.extract([read_image(path)], batch_size=1, progress=False).features,
        }
        for name, got in candidates.items():
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-6, msg=f"{path}: {name}")
