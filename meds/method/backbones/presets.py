"""Named backbone settings (the encoder, its feature layers, input size and normalisation)."""

from __future__ import annotations

from typing import Any

__all__ = ["BACKBONE_PRESETS", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Named backbone settings. Keys of each entry: ``model`` (timm name, with pretrained tag),
#: ``layers``, ``image_size``, ``crop_size``, ``mean``, ``std``, ``neighbourhood``.
#:
#: * ``tf_efficientnet_lite0``: the embedded default. timm feature levels 2 and 3 (stride 8,
#:   40 channels; stride 16, 112 channels) -> a 28x28 grid at 224x224 input (784 patches,
#:   as many as the paper's ViT setting), D = 152,
#:   3x3 neighbourhood averaging (PatchCore-style), mean = std = 0.5.
#: * ``dinov2_vitb14_reg``: the paper setting. DINOv2-with-registers ViT-B/14, resize 448, centre
#:   crop 392 -> 28x28 grid, the last block after the final norm, patch tokens only, D = 768
#:   (one group). ImageNet mean/std.
#: * ``dinov2_vitb14_reg_dinomaly``: same encoder, two groups in the style of Dinomaly: the
#:   mean of blocks 2-5 and the mean of blocks 6-9 (no final norm), D = 2 x 768. Use it for a
#:   Dinomaly-like reconstruction network; note the memory then sees D = 1536.
#: * ``wide_resnet50_2``: PatchCore-style layer2 + layer3 (512 + 1024 channels) with
#:   torchvision's ImageNet weights, resize 256, centre crop 224 -> 28x28 grid, D = 1536.
BACKBONE_PRESETS: dict[str, dict[str, Any]] = {
    "tf_efficientnet_lite0": dict(
        model="tf_efficientnet_lite0",
        layers=(2, 3),
        image_size=224,
        crop_size=None,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        neighbourhood=3,
    ),
    "dinov2_vitb14_reg": dict(
        model="vit_base_patch14_reg4_dinov2.lvd142m",
        layers=(-1,),
        image_size=448,
        crop_size=392,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        neighbourhood=1,
    ),
    "dinov2_vitb14_reg_dinomaly": dict(
        model="vit_base_patch14_reg4_dinov2.lvd142m",
        layers=((2, 3, 4, 5), (6, 7, 8, 9)),
        image_size=448,
        crop_size=392,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        neighbourhood=1,
    ),
    "wide_resnet50_2": dict(
        model="wide_resnet50_2.tv_in1k",
        layers=(2, 3),
        image_size=256,
        crop_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        neighbourhood=3,
    ),
}
