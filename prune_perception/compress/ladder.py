"""The report's ladder: every model of a run, evaluated on each validation set and timed
interleaved in one run, each against the teacher file as given and against the row it is a step
from (as given -> our export -> camera shape -> pruned and recovered -> INT8)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from prune_perception.compress.prune import count_macs_params
from prune_perception.compress.run_data import ValidationSet
from prune_perception.eval.detector_eval import evaluate_on_dataset, fidelity_to_teacher
from prune_perception.eval.latency_benchmark import measure_backend_latency
from prune_perception.runtime.backends import create_backend
from prune_perception.runtime.backends.torch_backend import load_torch_model
from prune_perception.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor

if TYPE_CHECKING:
    from prune_perception.compress.pipeline import CompressionRun

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
    ap_by_size_band: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per validation set: AP of small, medium and large objects and of the image's lower, middle
    and upper thirds (:meth:`CocoMetrics.by_size_and_band`)."""
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
        record.ap_by_size_band[held_out.name] = metrics.by_size_and_band()
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


def collect_records(run: CompressionRun) -> tuple[list[ModelRecord], dict[str, list], list[str], list[str]]:
    """The models on disk as the report's ladder, and their training histories, INT8 and sparsity notes:
    the teacher file as given, our export of it, our export at the camera shape, then every student
    (pruned, recovered, INT8)."""
    square = run.require(run.output_dir / "teacher" / "teacher.onnx", "prune")
    hw = f"{run.spec.height}x{run.spec.width}"
    square_hw = f"{run.square_spec.height}x{run.square_spec.width}"
    records = []
    given = run.config.teacher.onnx
    if given and Path(given).exists():
        given_hw = static_input_hw(Path(given)) or square_hw
        records.append(ModelRecord(AS_GIVEN, "as_given", str(given), 0.0, file_mb=file_mb(Path(given)),
                                   input_hw=given_hw, notes="the file as given, onnxruntime default session"))
    square_macs, params = count_macs_params(run.teacher, torch.zeros(1, 3, run.square_spec.height,
                                                                       run.square_spec.width))
    records.append(ModelRecord("teacher", "teacher", str(square), 0.0, params, square_macs, file_mb(square),
                               input_hw=square_hw, previous=records[-1].name if records else None,
                               notes="our export, our onnxruntime backend"))
    macs, _ = count_macs_params(run.teacher, run.example)
    if run.camera_shaped:
        camera = run.require(run.output_dir / "teacher" / "teacher_camera.onnx", "prune")
        records.append(ModelRecord("teacher camera", "teacher_camera", str(camera), 0.0, params, macs, file_mb(camera),
                                   input_hw=hw, previous="teacher", notes=f"input {run.shape.describe()}"))
    reference = records[-1].name
    histories: dict[str, list] = {}
    int8_notes: list[str] = []
    sparsity_notes: list[str] = []
    for plan in run.plans():
        folder = run.output_dir / plan.label
        pruned = run.require(folder / "pruned.onnx", "prune")
        macs, params = count_macs_params(load_torch_model(folder / "pruned.pt"), run.example)
        fixed = run.config.prune.channel_ratio_of(plan.target) if not plan.sparsity else None
        ratio = fixed if fixed is not None else _searched_ratio(folder / "pruning.json")
        section = run.config.prune
        refit = (f", pruned by {section.method}" if section.method != "prune_perception" else
                 ", least-squares refitted" if section.reconstruct and not plan.sparsity else "")
        common = {"channel_ratio": ratio, "params": params, "macs": macs, "input_hw": hw}
        records.append(ModelRecord(f"{plan.label} pruned", "pruned", str(pruned), file_mb=file_mb(pruned),
                                   previous=reference, **common,
                                   notes=("sparse, before training" if plan.sparsity else "before training") + refit
                                   + _speedup_search_note(folder / "pruning.json", run.config.prune.latency_backend)))
        student = folder / "student.onnx"
        if student.exists():
            records.append(ModelRecord(f"{plan.label} distilled", "distilled", str(student), file_mb=file_mb(student),
                                       previous=reference, **common))
            history = folder / "training_history.json"
            histories[plan.label] = json.loads(history.read_text()) if history.exists() else []
        if (folder / "int8_result.json").exists():
            result = json.loads((folder / "int8_result.json").read_text())
            int8_notes.append(f"{plan.label} (onnxruntime QDQ): {len(result['float_nodes'])}/{result['total_convs']} convs "
                              f"kept in float; score cosine {result['score_cosine']:.4f}, output cosine "
                              f"{result['output_cosine']:.4f} (on {result['validation_images']} held-out calibration images)")
            int8 = folder / "student_int8.onnx"
            records.append(ModelRecord(f"{plan.label} int8", "int8", str(int8), file_mb=file_mb(int8),
                                       previous=f"{plan.label} distilled", **common))
        if (folder / "modelopt_result.json").exists():
            result = json.loads((folder / "modelopt_result.json").read_text())
            int8_notes.append(f"{plan.label} (ModelOpt Q/DQ for TensorRT, {result['method']} calibration): "
                              f"{result['quantized_convs']}/{result['total_convs']} convs quantized; score cosine "
                              f"{result['score_cosine']:.4f}, output cosine {result['output_cosine']:.4f}. Its "
                              "onnxruntime CPU latency is not TensorRT's")
            modelopt = folder / "student_int8_modelopt.onnx"
            records.append(ModelRecord(f"{plan.label} int8 modelopt", "int8_modelopt", str(modelopt),
                                       file_mb=file_mb(modelopt), previous=f"{plan.label} distilled", **common,
                                       notes="TensorRT-targeted Q/DQ"))
        if plan.sparsity and (folder / "sparsity.json").exists():
            summary = json.loads((folder / "sparsity.json").read_text())
            latest = summary.get("after_training", summary["before_training"])
            sparsity_notes.append(
                f"{plan.label}: {plan.sparsity} in {latest['sparse_layers']}/{latest['conv_layers']} convs holding "
                f"{latest['sparse_weight_share']:.0%} of the conv weights; {latest['zero_fraction_of_conv_weights']:.1%} "
                f"of all conv weights are zero{' after training' if 'after_training' in summary else ''}")
    return records, histories, int8_notes, sparsity_notes


def _searched_ratio(pruning_json: Path) -> float:
    """The channel ratio a MACs, params or speed-up target ended at (0 for a sparse student)."""
    return float(json.loads(pruning_json.read_text()).get("channel_ratio", 0.0)) if pruning_json.exists() else 0.0


def _speedup_search_note(pruning_json: Path, backend: str) -> str:
    """For a student pruned to a latency target: what the search measured at its last step."""
    record = json.loads(pruning_json.read_text()) if pruning_json.exists() else {}
    steps = record.get("steps", [])
    if not steps or "speedup" not in steps[-1]:
        return ""
    speedup = record.get("measured_speedup") or steps[-1]["speedup"]
    refined = (f", refined from {steps[-1]['channel_ratio']:.3f} ({steps[-1]['speedup']:.2f}x) by "
               f"{len(record['refinement'])} ratio(s) timed between the last two steps"
               if record.get("refinement") and record["channel_ratio"] != steps[-1]["channel_ratio"] else "")
    return (f"; latency target: {speedup:.2f}x measured on {backend} after {len(steps)} pruning steps "
            f"(channel ratio {record.get('channel_ratio', steps[-1]['channel_ratio']):.3f}{refined})")
