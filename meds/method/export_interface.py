"""The interface of an exported meds graph: tensor names, the metadata record, and the
import of the optional packages that write and run it.

Shared by the exporter (:mod:`meds.method.export`, needs torch) and the runtime
(:mod:`meds.deploy.runtime`, needs no torch); nothing here imports either.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INPUT_NAME = "image"  #: float32 (N, 3, H, W) in [0, 1] at the training image size
OUTPUT_NAMES = ("pred_score", "anomaly_map", "pred_label")  #: (N,), (N, H, W), (N,) bool
#: Key of the JSON metadata in ONNX ``metadata_props`` and OpenVINO ``rt_info`` (``["meds", KEY]``;
#: OpenVINO also keeps the ONNX props under ``["framework", KEY]``).
METADATA_KEY = "meds"
#: Version of this interface. Readers load any version: the metadata says which made a file.
GRAPH_FORMAT = 1
#: Metadata fields a reader needs.
REQUIRED_FIELDS = ("meds_version", "input_size", "threshold")


def require_package(package: str, who: str, task: str) -> ModuleType:
    """Import ``package`` (onnx, onnxruntime, openvino), or say that ``task`` needs the extra."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ModuleNotFoundError(
            f"{who}: {task} needs the {package!r} package, which is not installed; "
            "install it with: pip install 'meds[deploy]'"
        ) from None
