"""``prune-perception compress``: teacher -> prune -> distil/fine-tune -> evaluate -> export ->
INT8 -> engine, into one output folder, with a report of what was gained and lost, measured.

Output layout::

    <output_dir>/config.yaml                 the resolved configuration
    <output_dir>/teacher/teacher.onnx(.json) the teacher exported by the same exporter
    <output_dir>/ratio_0.30/pruned.pt        pruned (and least-squares refitted), before training
    <output_dir>/ratio_0.30/reconstruction.json  per-layer error of that refit
    <output_dir>/ratio_0.30/pruned.onnx
    <output_dir>/ratio_0.30/train/           training checkpoint (resumable)
    <output_dir>/ratio_0.30/student.pt       pruned + distilled (EMA weights)
    <output_dir>/ratio_0.30/student.onnx     ... and its sidecar: what detector_node loads
    <output_dir>/ratio_0.30/student_int8.onnx
    <output_dir>/report.md, report.json, pareto.png, training_curves.png

A stage whose artifact already exists is not run again, and training resumes from its
checkpoint, so an interrupted run continues where it stopped. Every artifact is written
atomically.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch import nn

from prune_perception.compress.config import CompressConfig, config_to_dict
from prune_perception.compress.prune import count_macs_params, prune_model, save_pruned_checkpoint
from prune_perception.compress.reconstruct import reconstruct_pruned
from prune_perception.compress.train import Trainer
from prune_perception.data.augment import Sample
from prune_perception.data.datasets import (
    LabelledImage,
    iter_unlabelled_frames,
    load_coco_json,
    load_yolo_dataset,
    split_dataset,
)
from prune_perception.errors import PrunePerceptionError
from prune_perception.eval.detector_eval import evaluate_on_dataset, fidelity_to_teacher
from prune_perception.eval.latency_benchmark import measure_latency
from prune_perception.export.int8 import quantize_int8_qdq
from prune_perception.export.onnx_export import export_onnx
from prune_perception.files import write_json_atomic, write_text_atomic
from prune_perception.models.weights import load_official_checkpoint, load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.backends.torch_backend import load_torch_model
from prune_perception.runtime.class_names import default_class_names
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor

LOGGER = logging.getLogger(__name__)
FACTORY = "prune_perception.models.yolox:build_yolox"


@dataclass
class ModelRecord:
    """One row of the report."""

    name: str
    kind: str  # teacher | pruned | distilled | int8
    onnx: str
    channel_ratio: float = 0.0
    params: int | None = None
    macs: int | None = None
    file_mb: float = 0.0
    ap: float | None = None
    ap50: float | None = None
    per_class_ap: dict[str, float] = field(default_factory=dict)
    fidelity_ap: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    speedup: float | None = None
    notes: str = ""


@dataclass
class CompressData:
    train_samples: list[Sample]
    validation: list[LabelledImage]
    fidelity_frames: list[np.ndarray]
    calibration: list[np.ndarray]


class CompressionRun:
    def __init__(self, config: CompressConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.output_dir = Path(config.output_dir)
        self.spec = InputSpec(width=config.teacher.input_size, height=config.teacher.input_size)
        self.class_names = tuple(config.teacher.class_names or default_class_names(config.teacher.num_classes))
        if len(self.class_names) != config.teacher.num_classes:
            raise PrunePerceptionError(
                f"teacher.class_names has {len(self.class_names)} names for {config.teacher.num_classes} classes"
            )
        self.example = torch.zeros(1, 3, self.spec.height, self.spec.width)

    # ----------------------------------------------------------------- stages
    def load_teacher(self) -> nn.Module:
        teacher_config = self.config.teacher
        model = build_yolox(teacher_config.variant, teacher_config.num_classes)
        if teacher_config.onnx:
            load_onnx_weights(model, teacher_config.onnx, input_size=teacher_config.input_size)
        elif teacher_config.checkpoint:
            load_official_checkpoint(model, teacher_config.checkpoint)
        else:
            raise PrunePerceptionError("set teacher.onnx or teacher.checkpoint")
        return model.eval()

    def load_data(self) -> CompressData:
        data = self.config.data
        labelled: list[LabelledImage] = []
        if data.coco_json:
            labelled, names = load_coco_json(data.coco_json, data.labelled)
            if len(names) != len(self.class_names):
                raise PrunePerceptionError(f"{data.coco_json} has {len(names)} categories, the teacher {len(self.class_names)}")
        elif data.labelled:
            labelled = load_yolo_dataset(data.labelled)
        if data.max_labelled:
            labelled = labelled[: data.max_labelled]
        train_labelled, validation = split_dataset(labelled, data.validation_fraction, self.config.seed)
        if self.config.evaluate.max_validation_images:
            validation = validation[: self.config.evaluate.max_validation_images]
        frames = list(iter_unlabelled_frames(data.unlabelled, data.unlabelled_max_frames, data.unlabelled_stride,
                                             data.bag_topic)) if data.unlabelled else []
        held_out = min(data.fidelity_frames, len(frames) // 4)
        fidelity_frames = frames[len(frames) - held_out:] if held_out else []
        training_frames = frames[: len(frames) - held_out]
        cap = 2 * self.spec.width  # keep memory bounded; augmentation scales further anyway
        samples = [_bounded(Sample(item.read(), item.boxes_xyxy.astype(np.float32), item.class_ids), cap)
                   for item in train_labelled]
        samples += [_bounded(Sample.unlabelled(frame), cap) for frame in training_frames]
        if not samples:
            raise PrunePerceptionError("no training images: set data.labelled and/or data.unlabelled")
        if self.config.train.label_weight > 0 and not train_labelled:
            raise PrunePerceptionError("train.label_weight > 0 needs labelled data (data.labelled)")
        preprocessor = Preprocessor(self.spec)
        rng = np.random.default_rng(self.config.seed)
        picks = rng.permutation(len(samples))[: self.config.export.int8_calibration_images]
        calibration = [preprocessor(samples[i].image)[0] for i in picks]
        LOGGER.info("data: %d training images (%d labelled), %d validation, %d fidelity frames",
                    len(samples), len(train_labelled), len(validation), len(fidelity_frames))
        return CompressData(samples, validation, fidelity_frames, calibration)

    def export(self, model: nn.Module, path: Path, data: CompressData) -> Path:
        if not path.exists():
            export_onnx(model, path, self.class_names, self.spec, sample_inputs=data.calibration[:2],
                        decode_in_graph=self.config.export.decode_in_graph)
        return path

    def prune(self, teacher: nn.Module, ratio: float | None, data: CompressData, folder: Path) -> nn.Module:
        path = folder / "pruned.pt"
        if path.exists():
            return load_torch_model(path)
        student = build_yolox(self.config.teacher.variant, self.config.teacher.num_classes)
        student.load_state_dict(teacher.state_dict())
        section = self.config.prune
        loss_fn = self._taylor_loss(teacher, data) if section.importance == "taylor" else None
        result = prune_model(student, section.prune_config(ratio), self.example, loss_fn=loss_fn)
        LOGGER.info("pruned: MACs %.1f%%, params %.1f%% of the teacher", 100 * result.macs_fraction, 100 * result.params_fraction)
        if section.reconstruct:
            images = torch.from_numpy(np.concatenate(data.calibration[: section.reconstruct_images]))
            fit = reconstruct_pruned(student, teacher, result.kept_output_channels, images, seed=self.config.seed)
            write_json_atomic(folder / "reconstruction.json", {
                "layers": fit.layers, "mean_relative_error_before": fit.mean_error_before,
                "mean_relative_error_after": fit.mean_error_after, "relative_error_before": fit.relative_error_before,
                "relative_error_after": fit.relative_error_after})
        save_pruned_checkpoint(path, student, FACTORY, self._factory_kwargs())
        return student

    def _taylor_loss(self, teacher: nn.Module, data: CompressData):
        batch = torch.from_numpy(np.concatenate(data.calibration[:8]))

        def loss_fn(student: nn.Module) -> torch.Tensor:
            with torch.no_grad():
                targets = (teacher(batch)[..., 4:] > 0.3).float()
            scores = student(batch)[..., 4:].clamp(1e-6, 1 - 1e-6)
            return nn.functional.binary_cross_entropy(scores, targets)

        return loss_fn

    def recover(self, student: nn.Module, teacher: nn.Module, data: CompressData, folder: Path) -> tuple[nn.Module, list]:
        path = folder / "student.pt"
        history_path = folder / "training_history.json"
        if path.exists():
            history = json.loads(history_path.read_text()) if history_path.exists() else []
            return load_torch_model(path), history
        trainer = Trainer(copy.deepcopy(student), teacher, data.train_samples, self.config.train, folder / "train",
                          self.config.augment, self.config.distill, self.config.device)
        result = trainer.fit(progress=self.progress)
        recovered = trainer.trained_model().cpu().eval()
        write_json_atomic(history_path, result.history)
        save_pruned_checkpoint(path, recovered, FACTORY, self._factory_kwargs())
        return recovered, result.history

    def _factory_kwargs(self) -> dict[str, Any]:
        return {"variant": self.config.teacher.variant, "num_classes": self.config.teacher.num_classes}

    def evaluate(self, record: ModelRecord, data: CompressData, teacher_onnx: Path) -> None:
        if data.validation:
            metrics = evaluate_on_dataset(record.onnx, data.validation, progress=self.progress)
            record.ap, record.ap50, record.per_class_ap = metrics.ap, metrics.ap50, metrics.per_class_ap
        if data.fidelity_frames and record.kind != "teacher":
            record.fidelity_ap = fidelity_to_teacher(record.onnx, teacher_onnx, data.fidelity_frames,
                                                     progress=self.progress).ap

    # ----------------------------------------------------------------- the whole run
    def run(self) -> dict[str, Any]:
        from prune_perception.eval.compress_report import write_compress_report

        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.output_dir / "config.yaml", yaml.safe_dump(config_to_dict(self.config), sort_keys=False))
        teacher = self.load_teacher()
        data = self.load_data()
        teacher_onnx = self.export(teacher, self.output_dir / "teacher" / "teacher.onnx", data)
        macs, params = count_macs_params(teacher, self.example)
        records = [ModelRecord("teacher", "teacher", str(teacher_onnx), 0.0, params, macs, _mb(teacher_onnx))]
        histories: dict[str, list] = {}
        int8_notes: list[str] = []
        section = self.config.prune
        for ratio in section.targets():
            label = f"ratio_{ratio:.2f}" if ratio is not None else (
                f"macs_{section.macs_fraction:.2f}" if section.macs_fraction else f"params_{section.params_fraction:.2f}")
            folder = self.output_dir / label
            student = self.prune(teacher, ratio, data, folder)
            macs, params = count_macs_params(student, self.example)
            channel_ratio = ratio if ratio is not None else 0.0
            pruned_onnx = self.export(student, folder / "pruned.onnx", data)
            records.append(ModelRecord(f"{label} pruned", "pruned", str(pruned_onnx), channel_ratio, params, macs,
                                       _mb(pruned_onnx), notes="before training" + (", least-squares refitted" if section.reconstruct else "")))
            recovered, history = self.recover(student, teacher, data, folder)
            histories[label] = history
            student_onnx = self.export(recovered, folder / "student.onnx", data)
            records.append(ModelRecord(f"{label} distilled", "distilled", str(student_onnx), channel_ratio, params, macs,
                                       _mb(student_onnx)))
            if self.config.export.int8:
                int8_path, result_path = folder / "student_int8.onnx", folder / "int8_result.json"
                if not (int8_path.exists() and result_path.exists()):
                    result = quantize_int8_qdq(
                        student_onnx, int8_path, data.calibration, method=self.config.export.int8_method,
                        target_score_cosine=self.config.export.int8_target_score_cosine,
                        max_float_fraction=self.config.export.int8_max_float_fraction,
                    )
                    write_json_atomic(result_path, {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()})
                result = json.loads(result_path.read_text())
                int8_notes.append(f"{label}: {result['float_convs']}/{result['total_convs']} convs kept in float; score "
                                  f"cosine {result['score_cosine']:.4f}, output cosine {result['output_cosine']:.4f} "
                                  f"(on {result['validation_images']} held-out calibration images)")
                records.append(ModelRecord(f"{label} int8", "int8", str(int8_path), channel_ratio, params, macs,
                                           _mb(int8_path)))
        for record in records:
            self.evaluate(record, data, teacher_onnx)
        self.measure_latency(records, data)
        engines = self.build_engines(records)
        return write_compress_report(self.output_dir, records, histories, config_to_dict(self.config), int8_notes, engines)

    def measure_latency(self, records: list[ModelRecord], data: CompressData) -> None:
        unique = {r.onnx: r for r in records if r.kind != "pruned"}  # pruned and distilled share the architecture
        summaries = measure_latency({path: path for path in unique}, data.calibration[:4],
                                    runs=self.config.evaluate.latency_runs, warmup=self.config.evaluate.latency_warmup,
                                    device="cpu", intra_op_threads=self.config.evaluate.latency_threads)
        teacher_p50 = summaries[records[0].onnx].p50_ms
        by_architecture = {r.name.replace(" pruned", " distilled"): r for r in records}
        for record in records:
            source = record if record.kind != "pruned" else by_architecture.get(record.name.replace(" pruned", " distilled"), record)
            summary = summaries.get(source.onnx)
            if summary is not None:
                record.latency_p50_ms, record.latency_p99_ms = summary.p50_ms, summary.p99_ms
                record.speedup = teacher_p50 / summary.p50_ms

    def build_engines(self, records: list[ModelRecord]) -> list[str]:
        if not self.config.export.tensorrt:
            return ["TensorRT engines: disabled in the configuration"]
        from prune_perception.export.tensorrt_engine import EngineBuildConfig, build_engine, tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        if reason:
            return [f"TensorRT engines: skipped, {reason}"]
        notes = []
        for record in records:
            if record.kind in ("distilled", "int8", "teacher"):
                engine = Path(record.onnx).with_suffix(".engine")
                precision = "int8" if record.kind == "int8" else self.config.export.tensorrt_precision
                build_engine(Path(record.onnx), engine, EngineBuildConfig(precision=precision,
                                                                          workspace_mb=self.config.export.tensorrt_workspace_mb))
                notes.append(f"{record.name}: {engine}")
        return notes


def _bounded(sample: Sample, longest_side: int) -> Sample:
    """The sample resized so that its longest side is at most ``longest_side`` (boxes scaled too)."""
    height, width = sample.image.shape[:2]
    scale = longest_side / max(height, width)
    if scale >= 1:
        return sample
    size = (int(round(width * scale)), int(round(height * scale)))
    image = cv2.resize(sample.image, size, interpolation=cv2.INTER_AREA)
    return Sample(image, sample.boxes_xyxy * scale, sample.class_ids, sample.labelled)


def _mb(path: Path) -> float:
    return Path(path).stat().st_size / 1e6
