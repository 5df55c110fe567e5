"""Frozen pretrained encoders that turn images into grids of patch features.

The main class is :class:`PatchFeatureExtractor`: a frozen `timm <https://github.com/huggingface/pytorch-image-models>`_
backbone (CNN or ViT) that maps a batch of normalised images ``(N, 3, S, S)`` to
:class:`PatchFeatures` ``(N, h*w, D)``, the concatenation of one or more *groups* (feature levels
of a CNN, or blocks of a ViT). The memory (stage 1) uses the concatenation; the reconstruction
network (stages 2-3) reconstructs each group separately.

Modules, one job each:

* :mod:`.presets`: named settings (``tf_efficientnet_lite0``, the paper's DINOv2 ViT-B/14, ...).
* :mod:`.weights`: where the weights come from, offline first: the embedded
  ``tf_efficientnet_lite0`` ImageNet weights, the hub (or its local cache), a local file, or a
  seeded random init (README, "The paper's backbone (DINOv2) with a local weights file").
* :mod:`.extractor`: preprocessing (after :func:`meds.data.images.decode_image`, the one
  image decoder) and feature extraction.
* :mod:`.cache`: features cached on disk once per dataset (:func:`cached_features`).
"""

from .cache import cached_features, feature_cache_key
from .extractor import PatchFeatureExtractor, PatchFeatures
from .presets import BACKBONE_PRESETS, IMAGENET_MEAN, IMAGENET_STD
from .weights import embedded_efficientnet_lite0_path, load_state_dict_file, map_efficientnet_lite0_state_dict

__all__ = [
    "BACKBONE_PRESETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PatchFeatures",
    "PatchFeatureExtractor",
    "cached_features",
    "feature_cache_key",
    "embedded_efficientnet_lite0_path",
    "map_efficientnet_lite0_state_dict",
    "load_state_dict_file",
]
