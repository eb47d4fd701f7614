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
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
import yaml
from torch import nn

from prune_perception.compress.batchnorm import reparameterize_batchnorm
from prune_perception.compress.config import CompressConfig, config_to_dict
from prune_perception.compress.prune import count_macs_params, prune_model, save_pruned_checkpoint
from prune_perception.compress.reconstruct import reconstruct_pruned
from prune_perception.compress.sparsity import SparsityMasks, sparsify
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
from prune_perception.export.modelopt_int8 import modelopt_unavailable_reason, quantize_int8_modelopt
from prune_perception.export.onnx_export import export_onnx
from prune_perception.files import write_json_atomic, write_text_atomic
from prune_perception.models.weights import load_official_checkpoint, load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from prune_perception.runtime.backends.torch_backend import load_torch_model
from prune_perception.runtime.class_names import default_class_names
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor

LOGGER = logging.getLogger(__name__)
FACTORY = "prune_perception.models.yolox:build_yolox"
AS_GIVEN = "teacher as given"


@dataclass
class ModelRecord:
    """One row of the report."""

    name: str
    kind: str  # teacher | pruned | distilled | int8 | int8_modelopt
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


STAGES = ("prune", "distill", "export", "build-engine", "evaluate")
"""The stages in order; ``compress`` runs them all, each also runs alone (its own subcommand)."""


@dataclass(frozen=True)
class StudentPlan:
    """One student of the run: its output folder, and how it is made from the teacher."""

    label: str
    ratio: float | None = None
    """The channel ratio, or None for the single MACs/params/speed-up target (or a sparse student)."""
    sparsity: str | None = None
    """2:4 or unstructured: dense shapes with zero weights instead of removed channels."""


class CompressionRun:
    """The stages of ``prune-perception compress`` over one output folder.

    A stage reads what the stages before it wrote (and says which command to run when that is
    missing), and skips the artifacts that already exist, so a run resumes where it stopped.
    """

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
        self._teacher: nn.Module | None = None
        self._data: CompressData | None = None

    # ----------------------------------------------------------------- inputs, loaded once and on demand
    @property
    def teacher(self) -> nn.Module:
        if self._teacher is None:
            self._teacher = self.load_teacher()
        return self._teacher

    @property
    def data(self) -> CompressData:
        if self._data is None:
            self._data = self.load_data()
        return self._data

    @property
    def teacher_onnx(self) -> Path:
        return self.export(self.teacher, self.output_dir / "teacher" / "teacher.onnx")

    @property
    def int8_calibration(self) -> list[np.ndarray]:
        return self.data.calibration[: self.config.export.int8_calibration_images]

    def plans(self) -> list[StudentPlan]:
        section = self.config.prune
        plans = [StudentPlan(section.target_label(ratio), ratio) for ratio in section.targets()]
        sparse = section.sparse_label()
        if sparse:
            plans.append(StudentPlan(sparse, None, section.sparsity))
        return plans

    def load_teacher(self) -> nn.Module:
        teacher_config = self.config.teacher
        model = build_yolox(teacher_config.variant, teacher_config.num_classes)
        if teacher_config.onnx:
            load_onnx_weights(model, teacher_config.onnx, input_size=teacher_config.input_size)
            # A BN-folded export imports as identity BatchNorms. Trained as they are, they would
            # normalise with batch statistics the folded weights never saw: the student's training
            # forward would not be the teacher's function at all (measured: an unpruned YOLOX-Nano
            # distilled into itself fell from AP 0.38 to 0.00 in 50 steps). Real statistics, same function.
            calibration = self.data.calibration
            reparameterize_batchnorm(model, [torch.from_numpy(np.concatenate(calibration[i:i + 8]))
                                             for i in range(0, len(calibration), 8)])
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
        wanted = max(self.config.export.int8_calibration_images, self.config.prune.calibration_images)
        picks = rng.permutation(len(samples))[:wanted]
        calibration = [preprocessor(samples[i].image)[0] for i in picks]
        LOGGER.info("data: %d training images (%d labelled), %d validation, %d fidelity frames",
                    len(samples), len(train_labelled), len(validation), len(fidelity_frames))
        return CompressData(samples, validation, fidelity_frames, calibration)

    def export(self, model: nn.Module, path: Path) -> Path:
        if not path.exists():
            export_onnx(model, path, self.class_names, self.spec, sample_inputs=self.data.calibration[:2],
                        decode_in_graph=self.config.export.decode_in_graph)
        return path

    def _require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise PrunePerceptionError(f"{path} is missing: run `prune-perception {stage} --config ...` "
                                       f"(with the same configuration) first")
        return path

    def _factory_kwargs(self) -> dict[str, Any]:
        return {"variant": self.config.teacher.variant, "num_classes": self.config.teacher.num_classes}

    # ----------------------------------------------------------------- stage: prune
    def stage_prune(self) -> None:
        """Every student, pruned (or made sparse) from the teacher: ``pruned.pt`` and ``pruned.onnx``."""
        self._write_config()
        LOGGER.info("teacher exported to %s (the reference of the report, by the same exporter)", self.teacher_onnx)
        for plan in self.plans():
            folder = self.output_dir / plan.label
            student = self.make_sparse(plan, folder) if plan.sparsity else self.prune(plan, folder)
            self.export(student, folder / "pruned.onnx")

    def prune(self, plan: StudentPlan, folder: Path) -> nn.Module:
        path = folder / "pruned.pt"
        if path.exists():
            return load_torch_model(path)
        folder.mkdir(parents=True, exist_ok=True)
        teacher, data = self.teacher, self.data
        student = build_yolox(self.config.teacher.variant, self.config.teacher.num_classes)
        student.load_state_dict(teacher.state_dict())
        section = self.config.prune
        loss_fn = self._taylor_loss(teacher, data) if section.importance == "taylor" else None
        meter = self._speedup_meter(folder) if section.target_speedup else None
        images = torch.from_numpy(np.concatenate(data.calibration[: section.calibration_images]))
        result = prune_model(student, section.prune_config(plan.ratio), self.example, loss_fn=loss_fn,
                             measure_speedup=meter, calibration=images if section.mean_compensation else None)
        LOGGER.info("pruned: MACs %.1f%%, params %.1f%% of the teacher", 100 * result.macs_fraction, 100 * result.params_fraction)
        write_json_atomic(folder / "pruning.json", {
            "channel_ratio": result.channel_ratio, "macs_fraction": result.macs_fraction,
            "params_fraction": result.params_fraction, "steps": result.history})
        if section.reconstruct:
            fit = reconstruct_pruned(student, teacher, result.kept_output_channels, images, seed=self.config.seed)
            write_json_atomic(folder / "reconstruction.json", {
                "layers": fit.layers, "mean_relative_error_before": fit.mean_error_before,
                "mean_relative_error_after": fit.mean_error_after, "relative_error_before": fit.relative_error_before,
                "relative_error_after": fit.relative_error_after})
        save_pruned_checkpoint(path, student, FACTORY, self._factory_kwargs())
        return student

    def make_sparse(self, plan: StudentPlan, folder: Path) -> nn.Module:
        path = folder / "pruned.pt"
        if path.exists():
            return load_torch_model(path)
        folder.mkdir(parents=True, exist_ok=True)
        student = copy.deepcopy(self.teacher)
        masks = sparsify(student, plan.sparsity, self.config.prune.sparsity_amount)
        write_json_atomic(folder / "sparsity.json", {"before_training": masks.summary(student)})
        save_pruned_checkpoint(path, student, FACTORY, self._factory_kwargs())
        return student

    def _speedup_meter(self, folder: Path) -> Callable[[nn.Module], float]:
        """Times a model being pruned against the teacher on ``prune.latency_backend``, interleaved."""
        section, evaluate = self.config.prune, self.config.evaluate
        inputs = self.data.calibration[:4]
        if section.latency_backend == "onnxruntime":
            reference, suffix, device = self.teacher_onnx, ".onnx", "cpu"
        else:
            reference, suffix, device = self.output_dir / "teacher" / "teacher.pt", ".pt", self.config.device
            if not reference.exists():
                save_pruned_checkpoint(reference, self.teacher, FACTORY, self._factory_kwargs())

        def measure(model: nn.Module) -> float:
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                candidate = Path(scratch) / f"candidate{suffix}"
                if suffix == ".onnx":
                    export_onnx(model, candidate, self.class_names, self.spec, sample_inputs=inputs[:1])
                else:
                    save_pruned_checkpoint(candidate, model, FACTORY, self._factory_kwargs())
                summaries = measure_latency({"teacher": reference, "candidate": candidate}, inputs,
                                            runs=evaluate.latency_runs, warmup=evaluate.latency_warmup,
                                            backend=section.latency_backend, device=device,
                                            intra_op_threads=evaluate.latency_threads)
            return summaries["teacher"].p50_ms / summaries["candidate"].p50_ms

        return measure

    def _taylor_loss(self, teacher: nn.Module, data: CompressData):
        batch = torch.from_numpy(np.concatenate(data.calibration[:8]))

        def loss_fn(student: nn.Module) -> torch.Tensor:
            with torch.no_grad():
                targets = (teacher(batch)[..., 4:] > 0.3).float()
            scores = student(batch)[..., 4:].clamp(1e-6, 1 - 1e-6)
            return nn.functional.binary_cross_entropy(scores, targets)

        return loss_fn

    # ----------------------------------------------------------------- stage: distill
    def stage_distill(self) -> None:
        """Every pruned student, recovered by distillation and/or fine-tuning: ``student.pt``."""
        for plan in self.plans():
            folder = self.output_dir / plan.label
            if (folder / "student.pt").exists():
                continue
            student = load_torch_model(self._require(folder / "pruned.pt", "prune"))
            self.recover(student, plan, folder)

    def recover(self, student: nn.Module, plan: StudentPlan, folder: Path) -> nn.Module:
        masks = SparsityMasks.from_zeros(student, plan.sparsity) if plan.sparsity else None
        trainer = Trainer(copy.deepcopy(student), self.teacher, self.data.train_samples, self.config.train, folder / "train",
                          self.config.augment, self.config.distill, self.config.device,
                          weight_constraint=masks.apply if masks else None)
        result = trainer.fit(progress=self.progress)
        recovered = trainer.trained_model().cpu().eval()
        write_json_atomic(folder / "training_history.json", result.history)
        if masks is not None:
            sparsity = json.loads((folder / "sparsity.json").read_text())
            sparsity["after_training"] = masks.summary(recovered)
            write_json_atomic(folder / "sparsity.json", sparsity)
        save_pruned_checkpoint(folder / "student.pt", recovered, FACTORY, self._factory_kwargs())
        return recovered

    # ----------------------------------------------------------------- stage: export
    def stage_export(self) -> None:
        """Every recovered student as ONNX (with its sidecar), INT8 QDQ, and ModelOpt Q/DQ if asked."""
        export = self.config.export
        for plan in self.plans():
            folder = self.output_dir / plan.label
            student_onnx = folder / "student.onnx"
            if not student_onnx.exists():
                self.export(load_torch_model(self._require(folder / "student.pt", "distill")), student_onnx)
            if export.int8 and not (folder / "int8_result.json").exists():
                result = quantize_int8_qdq(
                    student_onnx, folder / "student_int8.onnx", self.int8_calibration, method=export.int8_method,
                    target_score_cosine=export.int8_target_score_cosine, max_float_fraction=export.int8_max_float_fraction,
                    progress=self.progress,
                )
                write_json_atomic(folder / "int8_result.json", _jsonable(asdict(result)))
            if export.modelopt_int8 and not (folder / "modelopt_result.json").exists():
                reason = modelopt_unavailable_reason()
                if reason:
                    LOGGER.warning("ModelOpt INT8 of %s skipped: %s", plan.label, reason)
                else:
                    qdq = folder / "int8_result.json"  # what its search kept in float stays so for TensorRT
                    float_convs = json.loads(qdq.read_text()).get("float_nodes", []) if qdq.exists() else []
                    result = quantize_int8_modelopt(student_onnx, folder / "student_int8_modelopt.onnx",
                                                    self.int8_calibration, method=export.modelopt_calibration,
                                                    float_convs=float_convs)
                    write_json_atomic(folder / "modelopt_result.json", _jsonable(asdict(result)))

    # ----------------------------------------------------------------- stage: build-engine
    def stage_build_engine(self) -> list[str]:
        """TensorRT engines for the teacher and every exported student, where TensorRT exists."""
        notes = self._engine_notes()
        write_json_atomic(self.output_dir / "engines.json", notes)
        for note in notes:
            LOGGER.info("%s", note)
        return notes

    def _engine_notes(self) -> list[str]:
        if not self.config.export.tensorrt:
            return ["TensorRT engines: disabled in the configuration"]
        from prune_perception.export.tensorrt_engine import EngineBuildConfig, build_engine, tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        if reason:
            return [f"TensorRT engines: skipped, {reason}"]
        export = self.config.export
        notes = []
        sparse = {plan.label for plan in self.plans() if plan.sparsity == "2:4"}
        for record in self.collect_records()[0]:
            if record.kind == "pruned":
                continue
            engine = Path(record.onnx).with_suffix(".engine")
            if not engine.exists():
                precision = "int8" if record.kind.startswith("int8") else export.tensorrt_precision
                build_engine(Path(record.onnx), engine, EngineBuildConfig(
                    precision=precision, workspace_mb=export.tensorrt_workspace_mb,
                    timing_cache=self.output_dir / "tensorrt.timing_cache",
                    sparse_weights=Path(record.onnx).parent.name in sparse), calibration_inputs=self.int8_calibration)
            notes.append(f"{record.name}: {engine}")
        return notes

    # ----------------------------------------------------------------- stage: evaluate
    def collect_records(self) -> tuple[list[ModelRecord], dict[str, list], list[str], list[str]]:
        """The models on disk (teacher first), their training histories, and INT8 and sparsity notes."""
        teacher_onnx = self._require(self.output_dir / "teacher" / "teacher.onnx", "prune")
        macs, params = count_macs_params(self.teacher, self.example)
        records = [ModelRecord("teacher", "teacher", str(teacher_onnx), 0.0, params, macs, _mb(teacher_onnx))]
        histories: dict[str, list] = {}
        int8_notes: list[str] = []
        sparsity_notes: list[str] = []
        for plan in self.plans():
            folder = self.output_dir / plan.label
            pruned = self._require(folder / "pruned.onnx", "prune")
            macs, params = count_macs_params(load_torch_model(folder / "pruned.pt"), self.example)
            ratio = plan.ratio if plan.ratio is not None else _searched_ratio(folder / "pruning.json")
            refit = ", least-squares refitted" if self.config.prune.reconstruct and not plan.sparsity else ""
            records.append(ModelRecord(f"{plan.label} pruned", "pruned", str(pruned), ratio, params, macs, _mb(pruned),
                                       notes=("sparse, before training" if plan.sparsity else "before training") + refit
                                       + _speedup_search_note(folder / "pruning.json", self.config.prune.latency_backend)))
            student = folder / "student.onnx"
            if student.exists():
                records.append(ModelRecord(f"{plan.label} distilled", "distilled", str(student), ratio, params, macs,
                                           _mb(student)))
                history = folder / "training_history.json"
                histories[plan.label] = json.loads(history.read_text()) if history.exists() else []
            if (folder / "int8_result.json").exists():
                result = json.loads((folder / "int8_result.json").read_text())
                int8_notes.append(f"{plan.label} (onnxruntime QDQ): {len(result['float_nodes'])}/{result['total_convs']} convs "
                                  f"kept in float; score cosine {result['score_cosine']:.4f}, output cosine "
                                  f"{result['output_cosine']:.4f} (on {result['validation_images']} held-out calibration images)")
                int8 = folder / "student_int8.onnx"
                records.append(ModelRecord(f"{plan.label} int8", "int8", str(int8), ratio, params, macs, _mb(int8)))
            if (folder / "modelopt_result.json").exists():
                result = json.loads((folder / "modelopt_result.json").read_text())
                int8_notes.append(f"{plan.label} (ModelOpt Q/DQ for TensorRT, {result['method']} calibration): "
                                  f"{result['quantized_convs']}/{result['total_convs']} convs quantized; score cosine "
                                  f"{result['score_cosine']:.4f}, output cosine {result['output_cosine']:.4f}. Its "
                                  "onnxruntime CPU latency is not TensorRT's")
                modelopt = folder / "student_int8_modelopt.onnx"
                records.append(ModelRecord(f"{plan.label} int8 modelopt", "int8_modelopt", str(modelopt), ratio, params,
                                           macs, _mb(modelopt), notes="TensorRT-targeted Q/DQ"))
            if plan.sparsity and (folder / "sparsity.json").exists():
                summary = json.loads((folder / "sparsity.json").read_text())
                latest = summary.get("after_training", summary["before_training"])
                sparsity_notes.append(
                    f"{plan.label}: {plan.sparsity} in {latest['sparse_layers']}/{latest['conv_layers']} convs holding "
                    f"{latest['sparse_weight_share']:.0%} of the conv weights; {latest['zero_fraction_of_conv_weights']:.1%} "
                    f"of all conv weights are zero{' after training' if 'after_training' in summary else ''}")
        return records, histories, int8_notes, sparsity_notes

    def stage_evaluate(self) -> dict[str, Any]:
        """Accuracy, fidelity and interleaved latency of every model on disk; the report."""
        from prune_perception.eval.compress_report import write_compress_report

        records, histories, int8_notes, sparsity_notes = self.collect_records()
        for record in records:
            self.evaluate(record)
        teacher_as_given = self.measure_latency(records)
        engines_file = self.output_dir / "engines.json"
        engines = json.loads(engines_file.read_text()) if engines_file.exists() else [
            "TensorRT engines: not built yet (prune-perception build-engine)"]
        return write_compress_report(self.output_dir, records, histories, config_to_dict(self.config), int8_notes,
                                     engines, sparsity_notes, teacher_as_given)

    def evaluate(self, record: ModelRecord) -> None:
        data = self.data
        if data.validation:
            metrics = evaluate_on_dataset(record.onnx, data.validation, progress=self.progress)
            record.ap, record.ap50, record.per_class_ap = metrics.ap, metrics.ap50, metrics.per_class_ap
        if data.fidelity_frames and record.kind != "teacher":
            record.fidelity_ap = fidelity_to_teacher(record.onnx, self.teacher_onnx, data.fidelity_frames,
                                                     progress=self.progress).ap

    def measure_latency(self, records: list[ModelRecord]) -> dict[str, Any] | None:
        """Every model's latency, interleaved in one run, into its record. Returns the latency of
        the teacher's ONNX file as given, in a default onnxruntime session, timed in the same run
        (what plain onnxruntime users deploy today), or None without an ONNX teacher of this input size."""
        evaluate = self.config.evaluate
        unique = {r.onnx: r for r in records if r.kind != "pruned"}  # pruned and distilled share the architecture
        as_given = self._teacher_as_given(evaluate.latency_threads)
        summaries = measure_latency({path: path for path in unique}, self.data.calibration[:4], runs=evaluate.latency_runs,
                                    warmup=evaluate.latency_warmup, device="cpu", intra_op_threads=evaluate.latency_threads,
                                    loaded={AS_GIVEN: as_given} if as_given else None)
        teacher_p50 = summaries[records[0].onnx].p50_ms
        by_architecture = {r.name.replace(" pruned", " distilled"): r for r in records}
        for record in records:
            source = record if record.kind != "pruned" else by_architecture.get(record.name.replace(" pruned", " distilled"), record)
            summary = summaries.get(source.onnx)
            if summary is not None:
                record.latency_p50_ms, record.latency_p99_ms = summary.p50_ms, summary.p99_ms
                record.speedup = teacher_p50 / summary.p50_ms
        if AS_GIVEN not in summaries:
            return None
        given = summaries[AS_GIVEN]
        return {"onnx": str(self.config.teacher.onnx), "latency_p50_ms": given.p50_ms, "latency_p99_ms": given.p99_ms,
                "teacher_speedup": given.p50_ms / teacher_p50}

    def _teacher_as_given(self, threads: int) -> OnnxRuntimeBackend | None:
        onnx_path = self.config.teacher.onnx
        if not onnx_path or not Path(onnx_path).exists():
            return None
        backend = OnnxRuntimeBackend(onnx_path, device="cpu", intra_op_threads=threads, fuse_silu=True)
        if backend.input_shape() not in (None, tuple(self.data.calibration[0].shape)):
            backend.close()  # a fixed input size other than the run's: not comparable
            return None
        return backend

    # ----------------------------------------------------------------- the whole run
    def _write_config(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.output_dir / "config.yaml", yaml.safe_dump(config_to_dict(self.config), sort_keys=False))

    def run_stage(self, stage: str) -> None:
        """One stage alone (the inputs it needs must exist); ``evaluate`` writes the report."""
        if stage not in STAGES:
            raise PrunePerceptionError(f"stage must be one of {STAGES}, got {stage!r}")
        handlers = {"prune": self.stage_prune, "distill": self.stage_distill, "export": self.stage_export,
                    "build-engine": self.stage_build_engine, "evaluate": self.stage_evaluate}
        handlers[stage]()

    def run(self) -> dict[str, Any]:
        """All the stages in order (each skips what is already on disk); returns the report."""
        for stage in STAGES[:-1]:
            self.run_stage(stage)
        return self.stage_evaluate()


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


def _searched_ratio(pruning_json: Path) -> float:
    """The channel ratio a MACs, params or speed-up target ended at (0 for a sparse student)."""
    return float(json.loads(pruning_json.read_text()).get("channel_ratio", 0.0)) if pruning_json.exists() else 0.0


def _speedup_search_note(pruning_json: Path, backend: str) -> str:
    """For a student pruned to a latency target: what the search measured at its last step."""
    steps = json.loads(pruning_json.read_text())["steps"] if pruning_json.exists() else []
    if not steps or "speedup" not in steps[-1]:
        return ""
    return (f"; latency target: {steps[-1]['speedup']:.2f}x measured on {backend} after {len(steps)} pruning steps "
            f"(channel ratio {steps[-1]['channel_ratio']:.2f})")


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
