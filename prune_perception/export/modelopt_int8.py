"""TensorRT-targeted INT8 Q/DQ ONNX through NVIDIA ModelOpt (``nvidia-modelopt``), run in a
subprocess of its own.

Why a subprocess: importing ``modelopt.onnx`` patches onnxruntime's calibrators for the whole
process, so :func:`prune_perception.export.int8.quantize_int8_qdq` would calibrate differently
after it. The child process does the quantization and nothing else.

What it writes: ModelOpt's Q/DQ placement is the one TensorRT fuses (every Conv input and
weight, per-channel weights, entropy or max calibration of activations). The ops that are not
quantized stay FP32 here (``high_precision_dtype=fp32``), so that onnxruntime on a CPU can run
the file to measure its accuracy; TensorRT's builder lowers them to FP16 with ``--fp16`` (10.x)
or reads the precision from the graph (11.x, strongly typed). The CPU latency of this file
is not what TensorRT will give: onnxruntime's CPU kernels are tuned for its own QDQ layout
(:mod:`prune_perception.export.int8`), not this one.

Install: ``pip install -c requirements/constraints.txt -r requirements/modelopt.txt`` (the
``onnx`` extra of nvidia-modelopt without its GPU-only parts: cupy, onnxruntime-gpu).

Command line (the child process)::

    python -m prune_perception.export.modelopt_int8 MODEL.onnx CALIBRATION.npy OUT.onnx --method entropy
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from prune_perception.errors import PrunePerceptionError
from prune_perception.files import atomic_output
from prune_perception.optional import modelopt_unavailable_reason
from prune_perception.runtime.metadata import write_sidecar

LOGGER = logging.getLogger(__name__)
MODELOPT_CALIBRATION_METHODS = ("entropy", "max")


@dataclass(frozen=True)
class ModelOptResult:
    path: Path
    method: str
    quantized_convs: int
    """Convolutions whose input ModelOpt quantized (a DequantizeLinear feeds them)."""
    total_convs: int
    output_cosine: float
    """Worst per-image cosine between the Q/DQ and FP32 outputs (run in onnxruntime)."""
    score_cosine: float
    """Worst per-image cosine of the detection scores (objectness x class)."""
    validation_images: int
    seconds: float


def quantize_int8_modelopt(
    fp32_path: str | Path,
    output_path: str | Path,
    calibration_inputs: Sequence[np.ndarray],
    method: str = "entropy",
    timeout_s: float = 1800,
    float_convs: Sequence[str] = (),
) -> ModelOptResult:
    """Quantize ``fp32_path`` with ModelOpt in a child process; write ``output_path`` and its sidecar.

    The last quarter of ``calibration_inputs`` is held out of calibration to measure agreement.
    ``float_convs``: the convolutions the onnxruntime QDQ search kept in float
    (``Int8Result.float_nodes``): the ones whose quantized input, weights or output hurt the
    scores most. ModelOpt puts its Q/DQ on conv *inputs*, so the convs that read their outputs
    (through activations, concatenations, adds, resizes, pools) are kept in float
    (:func:`reading_convs`). Measured on a YOLOX-Nano student with every conv quantized: score
    cosine 0.015 against FP32.
    """
    from prune_perception.export.int8 import output_agreement, split_calibration

    if method not in MODELOPT_CALIBRATION_METHODS:
        raise PrunePerceptionError(f"ModelOpt calibration must be one of {MODELOPT_CALIBRATION_METHODS}, got {method!r}")
    reason = modelopt_unavailable_reason()
    if reason:
        raise PrunePerceptionError(f"ModelOpt INT8: {reason}")
    fp32_path, output_path = Path(fp32_path), Path(output_path)
    metadata, calibrate_on, validate_on = split_calibration(fp32_path, calibration_inputs)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        calibration = Path(folder) / "calibration.npy"
        np.save(calibration, np.concatenate([np.asarray(x, np.float32) for x in calibrate_on]))
        quantized = Path(folder) / "modelopt.onnx"
        command = [sys.executable, "-m", __name__, str(fp32_path), str(calibration), str(quantized), "--method", method]
        excluded = reading_convs(fp32_path, float_convs) if float_convs else []
        command += [argument for name in excluded for argument in ("--exclude", name)]
        try:
            child = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise PrunePerceptionError(f"ModelOpt quantization did not finish in {timeout_s:.0f} s") from exc
        if child.returncode != 0 or not quantized.exists():
            raise PrunePerceptionError(f"ModelOpt quantization failed (exit {child.returncode}):\n{child.stderr[-2000:]}")
        quantized_convs, total_convs = _quantized_convs(quantized)
        whole, scores = output_agreement(fp32_path, quantized, validate_on)
        with atomic_output(output_path) as tmp:
            tmp.write_bytes(quantized.read_bytes())
    write_sidecar(output_path, metadata)
    return ModelOptResult(output_path, method, quantized_convs, total_convs, whole, scores, len(validate_on),
                          time.monotonic() - started)


def reading_convs(model_path: Path, convs: Sequence[str]) -> list[str]:
    """The Conv nodes that read the outputs of ``convs``, following any non-Conv nodes in between."""
    import onnx

    from prune_perception.export.int8 import tensor_readers

    graph = onnx.load(str(model_path)).graph
    readers = tensor_readers(graph)
    by_name = {node.name: node for node in graph.node}
    found, seen = [], set()
    frontier = [output for name in convs if name in by_name for output in by_name[name].output]
    while frontier:
        for node in readers.get(frontier.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type == "Conv":
                found.append(node.name)
            else:
                frontier.extend(node.output)
    return found


def _quantized_convs(path: Path) -> tuple[int, int]:
    import onnx

    graph = onnx.load(str(path)).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    return sum(producers.get(conv.input[0]) == "DequantizeLinear" for conv in convs), len(convs)


def _hide_stub_only_tensorrt() -> None:
    """``tensorrt-stubs`` installs a ``tensorrt`` folder of ``.pyi`` files that imports as an empty
    namespace package; ModelOpt would take it for TensorRT and call ``trt.Logger``. Make such a
    ``tensorrt`` unimportable in this (child) process, so that ModelOpt sees no TensorRT."""
    spec = importlib.util.find_spec("tensorrt")
    if spec is not None and spec.origin in (None, "namespace"):
        sys.modules["tensorrt"] = None  # type: ignore[assignment]  # import now raises ImportError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="INT8 Q/DQ for TensorRT with NVIDIA ModelOpt (child process)")
    parser.add_argument("model", type=Path)
    parser.add_argument("calibration", type=Path, help=".npy of preprocessed [N, 3, H, W] float32 images")
    parser.add_argument("output", type=Path)
    parser.add_argument("--method", choices=MODELOPT_CALIBRATION_METHODS, default="entropy")
    parser.add_argument("--exclude", action="append", default=[], metavar="NODE", help="node name to keep in float")
    args = parser.parse_args(argv)
    _hide_stub_only_tensorrt()
    from modelopt.onnx.quantization import quantize

    quantize(
        onnx_path=str(args.model), quantize_mode="int8", calibration_data=np.load(args.calibration),
        calibration_method=args.method, calibration_eps=["cpu"], output_path=str(args.output),
        high_precision_dtype="fp32", log_level="WARNING",
        nodes_to_exclude=[f"^{re.escape(name)}$" for name in args.exclude] or None,  # ModelOpt reads regexes
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
