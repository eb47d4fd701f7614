"""INT8 post-training quantization of an exported ONNX detector.

``quantize_int8_qdq`` writes a QDQ model with onnxruntime's ``quantize_static`` (per-channel
weights, MinMax or Percentile activation calibration from N preprocessed images) for CPU
runtimes. Its sidecar is the FP32 model's, with the INT8 file's sha256.

Measured on YOLOX-Nano: quantizing every layer gives 1.8x on the CPU but destroys the scores
(cosine 0.03 against FP32). Per-tensor activation scales starve channels: after BN folding, the
channels of one conv output span 0.4 to 108. The search below keeps the worst such convs in
float until the scores agree.

The TensorRT-targeted Q/DQ variant (NVIDIA ModelOpt) is not here: importing modelopt patches
onnxruntime's calibrators for the whole process, so it must run in a subprocess of its own.
"""

from __future__ import annotations

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
    float_convs: int
    """Convolutions kept in float (with their activations) by the mixed-precision search."""
    total_convs: int
    output_cosine: float
    """Worst per-image cosine between the INT8 and FP32 outputs (whole output tensor)."""
    score_cosine: float
    """Worst per-image cosine of the detection scores (objectness x class) the runtime thresholds."""
    validation_images: int
    float_nodes: tuple[str, ...] = ()
    """Names of the convolutions kept in float, whose output ranges a per-tensor scale starves (the
    same names as in the FP32 model). ModelOpt's Q/DQ for TensorRT keeps the convs reading those
    outputs in float (:func:`modelopt_int8.quantize_int8_modelopt`)."""


def _conv_groups(model) -> tuple[list, dict[str, list[str]]]:
    """Conv nodes, and for each the names of the conv and of its activation (Sigmoid/Mul: SiLU)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    groups = {}
    for conv in convs:
        names = [conv.name]
        for consumer in consumers.get(conv.output[0], []):
            if consumer.op_type in ("Sigmoid", "Mul", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Clip"):
                names.append(consumer.name)
                names += [c.name for c in consumers.get(consumer.output[0], []) if c.op_type == "Mul"]
        groups[conv.name] = names
    return convs, groups


def range_starvation(model_path: Path, inputs: Sequence[np.ndarray], levels: int = 8) -> dict[str, float]:
    """Per conv, the fraction of output channels whose range spans fewer than ``levels`` steps of
    the tensor's 8-bit quantization grid (per-tensor activation scales starve such channels)."""
    import onnx
    import onnxruntime

    model = onnx.load(str(model_path))
    convs, _ = _conv_groups(model)
    outputs = [conv.output[0] for conv in convs]
    for name in outputs:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    channel_max: dict[str, np.ndarray] = {}
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for tensor in inputs:
        for name, value in zip(outputs, session.run(outputs, {input_name: tensor})):
            per_channel = np.abs(value).reshape(value.shape[1], -1).max(axis=1)
            channel_max[name] = np.maximum(channel_max.get(name, per_channel), per_channel)
            low[name], high[name] = min(low.get(name, 0.0), float(value.min())), max(high.get(name, 0.0), float(value.max()))
    return {conv.name: float((channel_max[conv.output[0]] < levels * (high[conv.output[0]] - low[conv.output[0]]) / 255).mean())
            for conv in convs}


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
    import onnxruntime

    sessions = [onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    name = sessions[0].get_inputs()[0].name
    whole, scores = [], []
    for tensor in inputs:
        reference, quantized = (s.run(None, {name: tensor})[0][0] for s in sessions)
        whole.append(_cosine(quantized, reference))
        scores.append(_cosine(quantized[:, 4:5] * quantized[:, 5:], reference[:, 4:5] * reference[:, 5:]))
    return min(whole), min(scores)


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
    op_types: Sequence[str] = ("Conv",),
) -> Int8Result:
    """Quantize ``fp32_path`` to INT8 QDQ at ``output_path`` (with its sidecar).

    Mixed precision, searched: convolutions are ranked by how many of their output channels a
    per-tensor 8-bit scale starves (:func:`range_starvation`), and the worst are kept in float,
    more at each try (0, 2, 4, 8, ... up to ``max_float_fraction`` of them), until the detection
    scores agree with FP32 to ``target_score_cosine`` on held-out calibration images (the last
    quarter, not used to calibrate). If the target is not reached, the try with the best
    agreement is kept and the result says so.

    Args:
        calibration_inputs: preprocessed ``[1, 3, H, W]`` float32 tensors (a few dozen real images).
        op_types: the operator types to quantize. Convolutions by default: the concatenations,
            residual adds, resizes and SiLU around them mix channels of very different ranges and
            stay in float (they are memory-bound, so INT8 gains little there). Empty: all types.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise PrunePerceptionError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    fp32_path, output_path = Path(fp32_path), Path(output_path)
    metadata, calibrate_on, validate_on = split_calibration(fp32_path, calibration_inputs)
    input_name = metadata.input.name or "images"

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._inputs = iter(calibrate_on)

        def get_next(self):
            tensor = next(self._inputs, None)
            return None if tensor is None else {input_name: np.asarray(tensor, np.float32)}

    extra = {"CalibPercentile": percentile} if method == "percentile" else {}
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(_with_min_opset(fp32_path, Path(folder))), str(prepared), skip_symbolic_shape=True)
        convs, groups = _conv_groups(onnx.load(str(prepared)))
        starvation = range_starvation(prepared, calibrate_on[:12])
        ranked = sorted(convs, key=lambda conv: -starvation[conv.name])
        limit = int(max_float_fraction * len(convs))
        tries = [0] + [k for k in (2, 4, 8, 12, 16, 24, 32, 48, 64) if k <= limit]
        best: tuple[float, float, int, Path] | None = None
        for float_convs in tries:
            candidate = Path(folder) / f"int8_{float_convs}.onnx"
            excluded = [name for conv in ranked[:float_convs] for name in groups[conv.name]]
            quantize_static(
                str(prepared), str(candidate), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                op_types_to_quantize=list(op_types) if op_types else None,
                calibrate_method=CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Percentile,
                extra_options=extra,
            )
            whole, scores = output_agreement(prepared, candidate, validate_on)
            LOGGER.info("INT8 with %d/%d convs in float: score cosine %.4f, output cosine %.4f",
                        float_convs, len(convs), scores, whole)
            if best is None or scores > best[0]:
                best = (scores, whole, float_convs, candidate)
            if scores >= target_score_cosine:
                break
        scores, whole, float_convs, chosen = best
        if scores < target_score_cosine:
            LOGGER.warning("INT8 agreement target %.3f not reached: best score cosine %.4f with %d convs in float",
                           target_score_cosine, scores, float_convs)
        with atomic_output(output_path) as tmp:
            tmp.write_bytes(chosen.read_bytes())
    write_sidecar(output_path, metadata)
    return Int8Result(output_path, float_convs, len(convs), whole, scores, len(validate_on),
                      tuple(conv.name for conv in ranked[:float_convs]))
