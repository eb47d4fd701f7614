"""The report's ladder: every model of a run, evaluated on each validation set and timed
interleaved in one run, each against the teacher file as given and against the row it is a step
from (as given -> our export -> camera shape -> pruned and recovered -> INT8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from prune_perception.compress.run_data import ValidationSet
from prune_perception.eval.detector_eval import evaluate_on_dataset, fidelity_to_teacher
from prune_perception.eval.latency_benchmark import measure_backend_latency
from prune_perception.runtime.backends import create_backend
from prune_perception.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor

AS_GIVEN = "teacher as given"
TEACHER_KINDS = ("as_given", "teacher", "teacher_camera")


@dataclass
class ModelRecord:
    """One row of the report."""

    name: str
    kind: str  # as_given | teacher | teacher_camera | pruned | distilled | int8 | int8_modelopt
    onnx: str
    channel_ratio: float = 0.0
    params: int | None = None
    macs: int | None = None
    file_mb: float = 0.0
    input_hw: str = ""
    ap: float | None = None
    """AP on the first validation set (the one the Pareto plot shows)."""
    ap50: float | None = None
    ap_by_set: dict[str, float] = field(default_factory=dict)
    ap50_by_set: dict[str, float] = field(default_factory=dict)
    per_class_ap: dict[str, float] = field(default_factory=dict)
    fidelity_ap: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    speedup: float | None = None
    """Against our export of the teacher at the run's square size (the row ``teacher``)."""
    speedup_vs_given: float | None = None
    """Against the teacher file as given, in a default onnxruntime session."""
    previous: str | None = None
    """The row this one is a step from (the ladder)."""
    speedup_vs_previous: float | None = None
    notes: str = ""


def evaluate_record(record: ModelRecord, validation: Sequence[ValidationSet], fidelity_frames: Sequence[np.ndarray],
                    teacher_onnx: Path, progress: bool = True) -> None:
    """AP on every validation set (on the classes it labels) and, for a student, fidelity to the
    teacher at the same input on held-out frames, into ``record``."""
    for index, held_out in enumerate(validation):
        metrics = evaluate_on_dataset(record.onnx, held_out.items, progress=progress, classes=held_out.classes,
                                      agnostic=held_out.agnostic)
        record.ap_by_set[held_out.name], record.ap50_by_set[held_out.name] = metrics.ap, metrics.ap50
        if index == 0:
            record.ap, record.ap50, record.per_class_ap = metrics.ap, metrics.ap50, metrics.per_class_ap
    if fidelity_frames and record.kind not in TEACHER_KINDS:
        record.fidelity_ap = fidelity_to_teacher(record.onnx, teacher_onnx, fidelity_frames, progress=progress).ap


def time_ladder(records: list[ModelRecord], frames: Sequence[np.ndarray], evaluate: Any) -> None:
    """Every model's latency, interleaved in one run, each on the same frames preprocessed for its own
    input; then the speed-ups against our square teacher, the file as given and the row above."""
    threads = evaluate.latency_threads
    by_shape: dict[str, list[np.ndarray]] = {}
    backends: dict[str, Any] = {}
    inputs: dict[str, list[np.ndarray]] = {}
    for record in records:
        if record.kind == "pruned" or record.onnx in backends:  # pruned and distilled share the architecture
            continue
        backends[record.onnx] = (
            OnnxRuntimeBackend(record.onnx, device="cpu", intra_op_threads=threads, fuse_silu=True)
            if record.kind == "as_given" else create_backend(record.onnx, "onnxruntime", "cpu", intra_op_threads=threads))
        if record.input_hw not in by_shape:
            height, width = (int(v) for v in record.input_hw.split("x"))
            preprocessor = Preprocessor(InputSpec(width=width, height=height))
            by_shape[record.input_hw] = [preprocessor(frame)[0] for frame in frames]
        inputs[record.onnx] = by_shape[record.input_hw]
    try:
        summaries = measure_backend_latency(backends, inputs, runs=evaluate.latency_runs, warmup=evaluate.latency_warmup)
    finally:
        for backend in backends.values():
            backend.close()
    by_name = {record.name: record for record in records}
    for record in records:
        source = by_name.get(record.name.replace(" pruned", " distilled"), record) if record.kind == "pruned" else record
        summary = summaries.get(source.onnx)
        if summary is not None:
            record.latency_p50_ms, record.latency_p99_ms = summary.p50_ms, summary.p99_ms
    teacher = by_name["teacher"].latency_p50_ms
    given = by_name[AS_GIVEN].latency_p50_ms if AS_GIVEN in by_name else None
    for record in records:
        if not record.latency_p50_ms:
            continue
        record.speedup = teacher / record.latency_p50_ms
        record.speedup_vs_given = given / record.latency_p50_ms if given else None
        previous = by_name.get(record.previous or "")
        if previous is not None and previous.latency_p50_ms:
            record.speedup_vs_previous = previous.latency_p50_ms / record.latency_p50_ms


def static_input_hw(path: Path) -> str | None:
    """``HxW`` of an ONNX file's fixed image input, or None where it is dynamic."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    return f"{values[2]}x{values[3]}" if len(values) == 4 and all(values[2:]) else None


def file_mb(path: Path) -> float:
    return Path(path).stat().st_size / 1e6
