"""Torch-free inference with an exported meds model (ONNX or OpenVINO).

    from meds.deploy import Detector
    detector = Detector("bottle.onnx")          # or "bottle.xml" (OpenVINO IR)
    out = detector.predict(["part_001.png"])    # out.scores, out.maps, out.labels, out.threshold

Models are written by ``MeDS.export(path, format="onnx" | "openvino")`` or ``meds export``.
Needs ``onnxruntime`` (``.onnx``) or ``openvino`` (``.xml``): ``pip install 'meds[deploy]'``;
never imports torch.
"""

from ..method.prediction import Prediction
from .runtime import Detector, read_metadata

__all__ = ["Detector", "Prediction", "read_metadata"]
