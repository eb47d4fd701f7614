"""INT8 post-training quantization of an exported ONNX detector.

``quantize_int8_qdq`` writes a QDQ model with onnxruntime's quantizer (per-channel weights,
MinMax or Percentile activation calibration from N preprocessed images) for CPU runtimes. Its
sidecar is the FP32 model's, with the INT8 file's sha256.

Each convolution is quantized together with its activation (SiLU: Sigmoid and Mul), so that
onnxruntime runs QLinearConv -> QLinearSigmoid -> QLinearMul without float round trips. With the
convs alone quantized, every SiLU sits between a DequantizeLinear and a QuantizeLinear, and
YOLOX-Nano ran no faster than FP32 (measured: 1.01x with 32 convs in float, 0.98x with none).

Per-tensor activation scales make a few layers fragile: after BN folding, the channels of one
conv output span 0.4 to 108, and a depthwise conv that reads such a tensor has no other channels
to average the error out. Quantizing every layer took the detection scores' cosine against FP32
to 0.03. The layers to keep in float are found by measurement (:func:`quantization_sensitivity`),
not guessed from ranges: on YOLOX-Nano the stem and the depthwise conv reading it account for
almost all of the damage.

The TensorRT-targeted Q/DQ variant (NVIDIA ModelOpt) is not here: importing modelopt patches
onnxruntime's calibrators for the whole process, so it must run in a subprocess of its own.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from prune_perception.errors import PrunePerceptionError
from prune_perception.files import atomic_output
from prune_perception.runtime.metadata import ModelMetadata, load_sidecar, write_sidecar

LOGGER = logging.getLogger(__name__)
CALIBRATION_METHODS = ("minmax", "percentile")


MIN_QDQ_OPSET = 13  # per-channel DequantizeLinear (its axis attribute) needs opset 13


def _with_min_opset(path: Path, folder: Path) -> Path:
    """The model itself, or a copy converted to opset 13 when it is older (e.g. opset-11 exports)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_QDQ_OPSET)
    if opset >= MIN_QDQ_OPSET:
        return path
    converted = folder / "opset13.onnx"
    onnx.save(version_converter.convert_version(model, MIN_QDQ_OPSET), str(converted))
    return converted


@dataclass(frozen=True)
class Int8Result:
    path: Path
    total_convs: int
    output_cosine: float
    """Worst per-image cosine between the INT8 and FP32 outputs (whole output tensor)."""
    score_cosine: float
    """Worst per-image cosine of the detection scores (objectness x class) the runtime thresholds."""
    validation_images: int
    float_nodes: tuple[str, ...] = ()
    """Names of the convolutions kept in float, the most sensitive first (the same names as in the
    FP32 model). ModelOpt's Q/DQ for TensorRT keeps the convs reading their outputs in float too
    (:func:`modelopt_int8.quantize_int8_modelopt`)."""
    sensitivity: dict[str, float] | None = None
    """Per convolution, 1 - score cosine against FP32 with only that conv (and its activation)
    quantized, where the search measured it."""

    @property
    def float_convs(self) -> int:
        """Convolutions kept in float (with their activations) by the mixed-precision search."""
        return len(self.float_nodes)


ACTIVATIONS = ("Sigmoid", "Mul", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Clip")


def tensor_readers(graph) -> dict[str, list]:
    """Per tensor name of an ONNX graph, the nodes that read it."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _conv_groups(model) -> tuple[list, dict[str, list[str]]]:
    """Conv nodes, and for each the names of the conv and of its activation (Sigmoid/Mul: SiLU)."""
    consumers = tensor_readers(model.graph)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    groups = {}
    for conv in convs:
        names = [conv.name]
        for consumer in consumers.get(conv.output[0], []):
            if consumer.op_type in ACTIVATIONS:
                names.append(consumer.name)
                names += [c.name for c in consumers.get(consumer.output[0], []) if c.op_type == "Mul"]
        groups[conv.name] = list(dict.fromkeys(names))
    return convs, groups


class QdqBuilder:
    """Calibrates a model once, then writes QDQ versions of it with any chosen set of nodes
    quantized (onnxruntime's own calibrator and QDQ quantizer, as ``quantize_static`` runs them)."""

    def __init__(self, prepared: Path, calibrate_on: Sequence[np.ndarray], input_name: str, method: str,
                 percentile: float, per_channel: bool, folder: Path) -> None:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
        from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._inputs = iter(calibrate_on)

            def get_next(self):
                tensor = next(self._inputs, None)
                return None if tensor is None else {input_name: np.asarray(tensor, np.float32)}

        self.model = load_model_with_shape_infer(prepared)
        self.per_channel = per_channel
        calibrator = create_calibrator(
            prepared, list(ACTIVATIONS) + ["Conv"], augmented_model_path=str(folder / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Percentile,
            extra_options={"percentile": percentile} if method == "percentile" else {},
        )
        calibrator.collect_data(Reader())
        self.tensors_range = calibrator.compute_data()

    def build(self, nodes: Sequence[str]):
        """The model with ``nodes`` (and only them) quantized, as an ``onnx.ModelProto``."""
        from onnxruntime.quantization import QuantType
        from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

        quantizer = QDQQuantizer(
            copy.deepcopy(self.model), per_channel=self.per_channel, reduce_range=False, weight_qType=QuantType.QInt8,
            activation_qType=QuantType.QUInt8, tensors_range=self.tensors_range, nodes_to_quantize=list(nodes),
            nodes_to_exclude=[], op_types_to_quantize=["Conv", *ACTIVATIONS], extra_options={},
        )
        quantizer.quantize_model()
        return quantizer.model.model


def quantization_sensitivity(builder: QdqBuilder, groups: dict[str, list[str]], reference: Sequence[np.ndarray],
                             inputs: Sequence[np.ndarray], progress: bool = False) -> dict[str, float]:
    """Per conv: 1 - the worst score cosine against FP32 (``reference`` outputs for ``inputs``)
    when only that conv and its activation are quantized (its input, weights and output)."""
    from tqdm import tqdm

    return {name: 1.0 - _agreement(builder.build(nodes), reference, inputs)[1]
            for name, nodes in tqdm(groups.items(), desc="INT8 sensitivity", disable=not progress, leave=False)}


def _agreement(model, reference: Sequence[np.ndarray], inputs: Sequence[np.ndarray]) -> tuple[float, float]:
    """Worst per-image cosine of (whole output, detection scores) of ``model`` (a path or an
    ``onnx.ModelProto``) against the ``reference`` outputs for ``inputs``."""
    import onnxruntime

    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    whole, scores = [], []
    for tensor, expected in zip(inputs, reference):
        actual = session.run(None, {name: tensor})[0][0]
        whole.append(_cosine(actual, expected))
        scores.append(_cosine(_scores(actual), _scores(expected)))
    return min(whole), min(scores)


def _reference_outputs(model_path: Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return [session.run(None, {session.get_inputs()[0].name: tensor})[0][0] for tensor in inputs]


def _scores(output: np.ndarray) -> np.ndarray:
    """Objectness x class scores of one image's YOLOX-layout output ``[anchors, 5 + classes]``."""
    return output[:, 4:5] * output[:, 5:]


def split_calibration(fp32_path: Path, calibration_inputs: Sequence[np.ndarray]) -> tuple[ModelMetadata, list, list]:
    """The FP32 model's sidecar, and the calibration images split into (calibrate on, held out to
    check agreement): the last quarter is held out."""
    if len(calibration_inputs) < 4:
        raise PrunePerceptionError("INT8 calibration needs at least 4 images (a quarter is held out to check agreement)")
    metadata = load_sidecar(fp32_path)
    if metadata is None:
        raise PrunePerceptionError(f"{fp32_path} has no sidecar; export it with prune-perception export")
    held_out = max(1, len(calibration_inputs) // 4)
    return metadata, list(calibration_inputs[:-held_out]), list(calibration_inputs[-held_out:])


def output_agreement(fp32_path: Path, int8_path: Path, inputs: Sequence[np.ndarray]) -> tuple[float, float]:
    """Worst per-image cosine of (whole output, detection scores) between two YOLOX-layout models."""
    return _agreement(int8_path, _reference_outputs(fp32_path, inputs), inputs)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def quantize_int8_qdq(
    fp32_path: str | Path,
    output_path: str | Path,
    calibration_inputs: Sequence[np.ndarray],
    method: str = "minmax",
    per_channel: bool = True,
    percentile: float = 99.999,
    target_score_cosine: float = 0.99,
    max_float_fraction: float = 0.3,
    progress: bool = False,
) -> Int8Result:
    """Quantize ``fp32_path`` to INT8 QDQ at ``output_path`` (with its sidecar).

    Mixed precision, searched. Every conv is first quantized alone, with its activation, and the
    damage to the detection scores measured (:func:`quantization_sensitivity`, on a few held-out
    calibration images). The most sensitive are then kept in float, more at each try (0, 1, 2,
    3, 4, 6, 8, ... up to ``max_float_fraction`` of the convs), until the scores agree with FP32
    to ``target_score_cosine`` on the held-out calibration images (the last quarter, not used to
    calibrate). If the target is not reached, the try with the best agreement is kept and the
    result says so. Calibration runs once for all tries.

    Args:
        calibration_inputs: preprocessed ``[1, 3, H, W]`` float32 tensors (a few dozen real images).
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise PrunePerceptionError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    fp32_path, output_path = Path(fp32_path), Path(output_path)
    metadata, calibrate_on, validate_on = split_calibration(fp32_path, calibration_inputs)
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(_with_min_opset(fp32_path, Path(folder))), str(prepared), skip_symbolic_shape=True)
        builder = QdqBuilder(prepared, calibrate_on, metadata.input.name or "images", method, percentile, per_channel,
                             Path(folder))
        convs, groups = _conv_groups(onnx.load(str(prepared)))
        reference = _reference_outputs(prepared, validate_on)
        everything = [name for conv in convs for name in groups[conv.name]]
        full = builder.build(everything)
        _, full_agreement = _agreement(full, reference, validate_on)
        sensitivity: dict[str, float] | None = None
        ranked: list[str] = []
        best = (full_agreement, 0, full)
        if full_agreement < target_score_cosine:
            sensitivity = quantization_sensitivity(builder, groups, reference[:4], validate_on[:4], progress)
            ranked = sorted(sensitivity, key=lambda name: -sensitivity[name])
            limit = int(max_float_fraction * len(convs))
            for float_convs in [k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k <= limit]:
                kept = {name for conv in ranked[:float_convs] for name in groups[conv]}
                candidate = builder.build([name for name in everything if name not in kept])
                _, agreement = _agreement(candidate, reference, validate_on)
                LOGGER.info("INT8 with %d/%d convs in float: score cosine %.4f", float_convs, len(convs), agreement)
                if agreement > best[0]:
                    best = (agreement, float_convs, candidate)
                if agreement >= target_score_cosine:
                    break
        scores, float_convs, chosen = best
        if scores < target_score_cosine:
            LOGGER.warning("INT8 agreement target %.3f not reached: best score cosine %.4f with %d convs in float",
                           target_score_cosine, scores, float_convs)
        whole, scores = _agreement(chosen, reference, validate_on)
        with atomic_output(output_path) as tmp:
            onnx.save(chosen, str(tmp))
    write_sidecar(output_path, metadata)
    return Int8Result(output_path, len(convs), whole, scores, len(validate_on), tuple(ranked[:float_convs]), sensitivity)
