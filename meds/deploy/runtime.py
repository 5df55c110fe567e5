"""The torch-free runtime: :class:`Detector` runs an exported graph with onnxruntime or OpenVINO.

The graph does everything :meth:`MeDS.predict` does (see :mod:`meds.method.export`); the
runtime only decodes images with :func:`meds.data.images.decode_image` (the decoder of
``predict``, so the same file gives the same pixels), batches them, and wraps the outputs in
the same :class:`~meds.method.prediction.Prediction`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..data.images import decode_image
from ..method.prediction import Prediction
from ..method.export_interface import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, REQUIRED_FIELDS, require_package

BACKENDS = ("onnxruntime", "openvino")


def _parse_metadata(text: Optional[str], path: Path, who: str) -> dict:
    if text is None:
        raise ValueError(f"{who}: {path} was not exported by meds (no {METADATA_KEY!r} metadata)")
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{who}: {path}: the {METADATA_KEY!r} metadata is not JSON ({error})") from None
    missing = [k for k in REQUIRED_FIELDS if k not in metadata] if isinstance(metadata, dict) else list(REQUIRED_FIELDS)
    if missing:
        raise ValueError(f"{who}: {path}: the {METADATA_KEY!r} metadata lacks {missing[0]!r}")
    return metadata


class _OnnxRuntime:
    def __init__(self, path: Path, threads: Optional[int], who: str):
        ort = require_package("onnxruntime", who, "running this model")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.metadata_text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> list:
        return self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})


class _OpenVINO:
    def __init__(self, path: Path, threads: Optional[int], precision: str, who: str):
        ov = require_package("openvino", who, "running this model")
        core = ov.Core()
        model = core.read_model(str(path))
        self.metadata_text = None
        for where in ([METADATA_KEY, METADATA_KEY], ["framework", METADATA_KEY]):
            if model.has_rt_info(where):
                self.metadata_text = model.get_rt_info(where).astype(str)
                break
        # The CPU plugin would run bf16 on CPUs that have it (AVX512-BF16, AMX) unless told:
        # f32 keeps the exported model's results equal to MeDS.predict.
        config = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.inputs = [i.get_any_name() for i in self.compiled.inputs]
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> list:
        result = self.request.infer({INPUT_NAME: batch})
        return [result[self.compiled.output(name)] for name in OUTPUT_NAMES]


def read_metadata(path: Union[str, os.PathLike]) -> dict:
    """The metadata of an exported model (meds version, input size, threshold, normalisation...)."""
    return Detector(path).metadata


class Detector:
    """An exported meds model, ready to predict without torch.

    Args:
        path: ``.onnx`` (run by onnxruntime unless ``backend="openvino"``) or ``.xml``
            (OpenVINO IR, its ``.bin`` beside it).
        backend: ``"onnxruntime"`` or ``"openvino"``; ``None`` = by the file's suffix.
        threads: Intra-op threads of the runtime; ``None`` = the runtime's default.
        precision: OpenVINO's inference precision hint (``"f32"``, ``"f16"``, ``"bf16"``).
            ``"f32"`` (the default) gives ``MeDS.predict``'s results; an FP16 IR then still
            computes in f32 from FP16 weights.

    Attributes:
        metadata: What the exporter recorded (``meds_version``, ``input_size``,
            ``threshold``, ``normalisation``, ``final``...).
        input_size: ``(H, W)`` the model takes: images must have this size.
        threshold: The label threshold inside the graph.
        meds_version: The meds version that exported the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Not an exported meds model, or an unknown suffix / backend.
        ModuleNotFoundError: The runtime package is not installed.
    """

    def __init__(self, path: Union[str, os.PathLike], *, backend: Optional[str] = None,
                 threads: Optional[int] = None, precision: str = "f32"):
        who = "meds.deploy.Detector"
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{who}: exported model not found: {path}")
        if backend is None:
            if path.suffix not in (".onnx", ".xml"):
                raise ValueError(f"{who}: expected an .onnx or .xml (OpenVINO) file, got {path}")
            backend = "onnxruntime" if path.suffix == ".onnx" else "openvino"
        if backend not in BACKENDS:
            raise ValueError(f"{who}: backend must be one of {list(BACKENDS)}, got {backend!r}")
        if backend == "onnxruntime" and path.suffix != ".onnx":
            raise ValueError(f"{who}: onnxruntime runs .onnx files, got {path}")
        self.path, self.backend = path, backend
        self._runtime = (_OnnxRuntime(path, threads, who) if backend == "onnxruntime"
                         else _OpenVINO(path, threads, precision, who))
        if INPUT_NAME not in self._runtime.inputs or not set(OUTPUT_NAMES) <= set(self._runtime.outputs):
            raise ValueError(f"{who}: {path} has inputs {self._runtime.inputs} and outputs {self._runtime.outputs}; "
                             f"a meds model has {INPUT_NAME!r} and {list(OUTPUT_NAMES)}")
        self.metadata = _parse_metadata(self._runtime.metadata_text, path, who)
        self.input_size = tuple(int(v) for v in self.metadata["input_size"])
        self.threshold = float(self.metadata["threshold"])
        self.meds_version = str(self.metadata["meds_version"])

    def __repr__(self) -> str:
        return (f"Detector({str(self.path)!r}, backend={self.backend!r}, input_size={self.input_size}, "
                f"meds_version={self.meds_version!r})")

    def _batch(self, images: Sequence, start: int) -> np.ndarray:
        arrays = []
        for i, image in enumerate(images, start):
            rgb = decode_image(image, f"images[{i}]")
            if rgb.shape[:2] != self.input_size:
                name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"images[{i}]"
                raise ValueError(
                    f"Detector.predict: {name} is {rgb.shape[0]}x{rgb.shape[1]}, this model takes "
                    f"{self.input_size[0]}x{self.input_size[1]} images (the size it was exported for)"
                )
            arrays.append(rgb)
        # As PatchFeatureExtractor.preprocess: float32, then / 255.
        return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)).astype(np.float32) / np.float32(255.0)

    def predict(self, images: Sequence, *, batch_size: int = 16, return_maps: bool = True) -> Prediction:
        """Score images, as :meth:`MeDS.predict` does.

        Args:
            images: Paths, ``(H, W[, C])`` arrays or PIL images at :attr:`input_size`.
            batch_size: Images per run of the graph.
            return_maps: Also return the ``(H, W)`` pixel maps.

        Returns:
            A :class:`~meds.method.prediction.Prediction` (scores float64, labels bool).
        """
        if isinstance(images, (str, os.PathLike)) or not hasattr(images, "__len__"):
            raise TypeError(f"Detector.predict: images must be a list of images, got {type(images).__name__}")
        if len(images) == 0:
            raise ValueError("Detector.predict: images is empty")
        if batch_size < 1:
            raise ValueError(f"Detector.predict: batch_size must be >= 1, got {batch_size}")
        scores, labels, maps = [], [], []
        for start in range(0, len(images), batch_size):
            score, batch_maps, label = self._runtime.run(self._batch(images[start : start + batch_size], start))
            scores.append(np.asarray(score, dtype=np.float64))
            labels.append(np.asarray(label, dtype=bool))
            if return_maps:
                maps.extend(np.array(m, dtype=np.float32) for m in batch_maps)
        return Prediction(scores=np.concatenate(scores), maps=maps, labels=np.concatenate(labels),
                          threshold=self.threshold)
