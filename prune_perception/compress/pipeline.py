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

The prune stage lives in :mod:`prune_stage`, the report's ladder of models in :mod:`ladder`.
A stage whose artifact already exists is not run again, and training resumes from its
checkpoint, so an interrupted run continues where it stopped. Every artifact is written
atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from prune_perception.compress.batchnorm import reparameterize_batchnorm
from prune_perception.compress.class_subset import ClassSubset, resolve_classes
from prune_perception.compress.config import CompressConfig, config_to_dict
from prune_perception.compress.distill_teacher import DistillTeacher, cached_predictions, with_pseudo_labels
from prune_perception.compress.input_shape import InputShape, resolve_input_shape
from prune_perception.compress.ladder import collect_records, evaluate_record, time_ladder
from prune_perception.compress.prune_stage import StudentPruner
from prune_perception.compress.run_data import CompressData, check_sources, load_run_data
from prune_perception.compress.sparsity import SparsityMasks
from prune_perception.compress.train import Trainer
from prune_perception.data.augment import Sample
from prune_perception.errors import PrunePerceptionError
from prune_perception.export.int8 import quantize_int8_qdq
from prune_perception.export.modelopt_int8 import quantize_int8_modelopt
from prune_perception.export.onnx_export import export_onnx
from prune_perception.files import remove_stale_temporaries, write_json_atomic, write_text_atomic
from prune_perception.models.pruned_checkpoint import save_pruned_checkpoint
from prune_perception.models.weights import load_official_checkpoint, load_onnx_weights
from prune_perception.models.yolox import YOLOX_FACTORY, build_yolox, residual_blocks
from prune_perception.optional import modelopt_unavailable_reason
from prune_perception.runtime.backends.torch_backend import load_torch_model
from prune_perception.runtime.class_names import default_class_names
from prune_perception.runtime.metadata import InputSpec

LOGGER = logging.getLogger(__name__)
STAGES = ("prune", "distill", "export", "build-engine", "evaluate")
"""The stages in order; ``compress`` runs them all, each also runs alone (its own subcommand)."""


@dataclass(frozen=True)
class StudentPlan:
    """One student of the run: its output folder, and how it is made from the teacher."""

    label: str
    target: float | None = None
    """The channel ratio or the speed-up target (``PruneSection.targets``); None for a MACs or params
    target, or a sparse student."""
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
        self.class_names = tuple(config.teacher.class_names or default_class_names(config.teacher.num_classes))
        if len(self.class_names) != config.teacher.num_classes:
            raise PrunePerceptionError(
                f"teacher.class_names has {len(self.class_names)} names for {config.teacher.num_classes} classes"
            )
        # Everything that can be refused is refused here, before any work starts.
        section = config.input
        self.shape: InputShape = resolve_input_shape(
            build_yolox(config.teacher.variant).config.strides, square=config.teacher.input_size, camera=section.camera,
            camera_bag=section.camera_bag, camera_topic=section.camera_topic, network_width=section.width,
            network_hw=section.hw)
        self.subset: ClassSubset | None = (resolve_classes(config.classes.keep, self.class_names)
                                           if config.classes.keep is not None else None)
        check_sources(config, self.class_names, self.subset)
        self.spec = InputSpec(width=self.shape.width, height=self.shape.height)
        self.square_spec = InputSpec(width=config.teacher.input_size, height=config.teacher.input_size)
        self.camera_shaped = self.spec != self.square_spec
        self.student_names = self.subset.names if self.subset else self.class_names
        self.distill_teacher: DistillTeacher | None = None
        if config.distill.teacher:
            if config.train.label_weight <= 0:
                raise PrunePerceptionError("distill.teacher gives pseudo-labels, which enter the label loss: set "
                                           "train.label_weight above 0")
            self.distill_teacher = DistillTeacher(config.distill.teacher, self.student_names,
                                                  config.distill.teacher_score_threshold)
            LOGGER.info("distillation teacher: %s (pseudo-labels; the teacher of record stays %s)",
                        self.distill_teacher.describe(), config.teacher.onnx or config.teacher.checkpoint)
        self.example = torch.zeros(1, 3, self.spec.height, self.spec.width)
        self.augment = config.augment
        if self.augment.input_hw != self.shape.hw:
            LOGGER.info("augmentation works at the network input %dx%d (HxW), not augment.input_size %s",
                        *self.shape.hw, config.augment.input_size)
            self.augment = dataclasses.replace(config.augment, input_size=self.shape.hw)
        LOGGER.info("network input %s%s", self.shape.describe(),
                    f"; students keep {len(self.subset)} classes: {', '.join(self.subset.names)}" if self.subset else "")
        self._teacher: nn.Module | None = None
        self._data: CompressData | None = None
        self._training_samples: list[Sample] | None = None
        self._swept = False
        self.pruner = StudentPruner(self)

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
        """Our export of the teacher at the run's network input (the camera shape, if one is set)."""
        if not self.camera_shaped:
            return self.teacher_square_onnx
        return self.export(self.teacher, self.output_dir / "teacher" / "teacher_camera.onnx", student=False)

    @property
    def teacher_square_onnx(self) -> Path:
        """Our export of the teacher at ``teacher.input_size``, square: the ladder's second row."""
        return self.export(self.teacher, self.output_dir / "teacher" / "teacher.onnx", student=False,
                           spec=self.square_spec)

    @property
    def int8_calibration(self) -> list[np.ndarray]:
        return self.data.calibration[: self.config.export.int8_calibration_images]

    def plans(self) -> list[StudentPlan]:
        section = self.config.prune
        plans = [StudentPlan(section.target_label(target), target) for target in section.targets()]
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

    @property
    def training_samples(self) -> list[Sample]:
        """The training images, with the distillation teacher's pseudo-labels where there is one
        (computed once per run and cached in ``distill_teacher/``)."""
        if self._training_samples is None:
            data = self.data
            self._training_samples = data.train_samples
            if self.distill_teacher is not None:
                folder = self.output_dir / "distill_teacher"
                predictions = cached_predictions(self.distill_teacher, data.train_samples, self.shape.hw, folder,
                                                 progress=self.progress)
                section = self.config.distill
                self._training_samples, added = with_pseudo_labels(
                    data.train_samples, data.train_label_classes, predictions, len(self.student_names),
                    section.pseudo_label_sets, section.pseudo_label_frames)
                write_json_atomic(folder / "pseudo_labels.json", {
                    "teacher": self.distill_teacher.describe(), "input_hw": list(self.shape.hw), **added})
                LOGGER.info("pseudo-labels from %s: %d boxes on %d labelled images and %d unlabelled frames",
                            self.distill_teacher.describe(), added["boxes"], added["labelled_images"],
                            added["unlabelled_frames"])
        return self._training_samples

    def load_data(self) -> CompressData:
        return load_run_data(self.config, self.spec, self.class_names, self.subset, progress=self.progress)

    def export(self, model: nn.Module, path: Path, student: bool = True, spec: InputSpec | None = None) -> Path:
        """``model`` as ONNX at ``spec`` (default: the run's input); a student's sidecar names the
        classes it keeps, with their ids in the teacher."""
        if not path.exists():
            spec = spec or self.spec
            samples = self.data.calibration[:2] if spec == self.spec else ()
            subset = self.subset if student else None
            export_onnx(model, path, self.student_names if student else self.class_names, spec, sample_inputs=samples,
                        decode_in_graph=self.config.export.decode_in_graph,
                        class_ids=subset.teacher_ids if subset else None,
                        dynamic_batch=self.config.export.max_batch > 1)
        return path

    def require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise PrunePerceptionError(f"{path} is missing: run `prune-perception {stage} --config ...` "
                                       f"(with the same configuration) first")
        return path

    def factory_kwargs(self, model: nn.Module) -> dict[str, Any]:
        """What rebuilds ``model``'s module tree before its pruned state loads: the variant, and the
        residual blocks it no longer has."""
        kwargs: dict[str, Any] = {"variant": self.config.teacher.variant, "num_classes": self.config.teacher.num_classes}
        removed = [name for name in residual_blocks(build_yolox(self.config.teacher.variant))
                   if isinstance(model.get_submodule(name), nn.Identity)]
        if removed:
            kwargs["removed_blocks"] = removed
        return kwargs

    # ----------------------------------------------------------------- stage: prune
    def stage_prune(self) -> None:
        """Every student, pruned (or made sparse) from the teacher: ``pruned.pt`` and ``pruned.onnx``."""
        self._write_config()
        LOGGER.info("teacher exported to %s (the reference of the report, by the same exporter)", self.teacher_square_onnx)
        if self.camera_shaped:
            LOGGER.info("teacher at the camera shape: %s (what the students are measured against)", self.teacher_onnx)
        for plan in self.plans():
            folder = self.output_dir / plan.label
            student = self.pruner.make_sparse(plan, folder) if plan.sparsity else self.pruner.prune(plan, folder)
            self.export(student, folder / "pruned.onnx")

    # ----------------------------------------------------------------- stage: distill
    def stage_distill(self) -> None:
        """Every pruned student, recovered by distillation and/or fine-tuning: ``student.pt``."""
        for plan in self.plans():
            folder = self.output_dir / plan.label
            if (folder / "student.pt").exists():
                continue
            student = load_torch_model(self.require(folder / "pruned.pt", "prune"))
            self.recover(student, plan, folder)

    def recover(self, student: nn.Module, plan: StudentPlan, folder: Path) -> nn.Module:
        masks = SparsityMasks.from_zeros(student, plan.sparsity) if plan.sparsity else None
        trainer = Trainer(copy.deepcopy(student), self.teacher, self.training_samples, self.config.train, folder / "train",
                          self.augment, self.config.distill, self.config.device,
                          weight_constraint=masks.apply if masks else None,
                          teacher_classes=self.subset.teacher_ids if self.subset else None)
        result = trainer.fit(progress=self.progress)
        recovered = trainer.trained_model().cpu().eval()
        write_json_atomic(folder / "training_history.json", result.history)
        if result.resume_notes:
            write_json_atomic(folder / "training_notes.json", result.resume_notes)
        if masks is not None:
            sparsity = json.loads((folder / "sparsity.json").read_text())
            sparsity["after_training"] = masks.summary(recovered)
            write_json_atomic(folder / "sparsity.json", sparsity)
        save_pruned_checkpoint(folder / "student.pt", recovered, YOLOX_FACTORY, self.factory_kwargs(recovered))
        return recovered

    # ----------------------------------------------------------------- stage: export
    def stage_export(self) -> None:
        """Every recovered student as ONNX (with its sidecar), INT8 QDQ, and ModelOpt Q/DQ if asked."""
        export = self.config.export
        for plan in self.plans():
            folder = self.output_dir / plan.label
            student_onnx = folder / "student.onnx"
            if not student_onnx.exists():
                self.export(load_torch_model(self.require(folder / "student.pt", "distill")), student_onnx)
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
        for record in collect_records(self)[0]:
            if record.kind in ("pruned", "as_given"):
                continue
            engine = Path(record.onnx).with_suffix(".engine")
            if not engine.exists():
                precision = "int8" if record.kind.startswith("int8") else export.tensorrt_precision
                build_engine(Path(record.onnx), engine, EngineBuildConfig(
                    precision=precision, workspace_mb=export.tensorrt_workspace_mb,
                    timing_cache=self.output_dir / "tensorrt.timing_cache", max_batch=export.max_batch,
                    sparse_weights=Path(record.onnx).parent.name in sparse), calibration_inputs=self.int8_calibration)
            notes.append(f"{record.name}: {engine}")
        return notes

    # ----------------------------------------------------------------- stage: evaluate
    def stage_evaluate(self) -> dict[str, Any]:
        """Accuracy, fidelity and interleaved latency of every model on disk; the report."""
        from prune_perception.eval.compress_report import pruning_sections, write_compress_report

        records, histories, int8_notes, sparsity_notes = collect_records(self)
        data = self.data
        for record in records:
            evaluate_record(record, data.validation, data.fidelity_frames, self.teacher_onnx, self.progress)
        frames = [sample.image for sample in data.train_samples[:: max(1, len(data.train_samples) // 4)][:4]]
        time_ladder(records, frames, self.config.evaluate)
        engines_file = self.output_dir / "engines.json"
        engines = json.loads(engines_file.read_text()) if engines_file.exists() else [
            "TensorRT engines: not built yet (prune-perception build-engine)"]
        run_facts = {"input": self.shape.to_dict(), "classes": self.subset.to_dict() if self.subset else None,
                     "validation": [{"name": v.name, "images": len(v.items), "agnostic": v.agnostic,
                                     "classes": [self.class_names[i] for i in v.classes] if v.classes else "all"}
                                    for v in self.data.validation],
                     "training_images": len(self.data.train_samples), "fidelity_frames": len(self.data.fidelity_frames),
                     "training_notes": [f"{plan.label}: {note}" for plan in self.plans()
                                        if (notes := self.output_dir / plan.label / "training_notes.json").exists()
                                        for note in json.loads(notes.read_text())]}
        pruning = {plan.label: json.loads((self.output_dir / plan.label / "pruning.json").read_text())
                   for plan in self.plans() if (self.output_dir / plan.label / "pruning.json").exists()}
        teacher_channels = {name: m.out_channels for name, m in self.teacher.named_modules() if isinstance(m, nn.Conv2d)}
        sections = pruning_sections(self.output_dir, teacher_channels, pruning) if pruning else []
        return write_compress_report(self.output_dir, records, histories, config_to_dict(self.config), int8_notes,
                                     engines, sparsity_notes, run_facts, sections)

    # ----------------------------------------------------------------- the whole run
    def _write_config(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.output_dir / "config.yaml", yaml.safe_dump(config_to_dict(self.config), sort_keys=False))

    def run_stage(self, stage: str) -> None:
        """One stage alone (the inputs it needs must exist); ``evaluate`` writes the report."""
        if stage not in STAGES:
            raise PrunePerceptionError(f"stage must be one of {STAGES}, got {stage!r}")
        if not self._swept:  # what a killed run was writing when it died
            for path in remove_stale_temporaries(self.output_dir):
                LOGGER.info("removed %s, left half-written by an interrupted run", path)
            self._swept = True
        handlers = {"prune": self.stage_prune, "distill": self.stage_distill, "export": self.stage_export,
                    "build-engine": self.stage_build_engine, "evaluate": self.stage_evaluate}
        handlers[stage]()

    def run(self) -> dict[str, Any]:
        """All the stages in order (each skips what is already on disk); returns the report."""
        for stage in STAGES[:-1]:
            self.run_stage(stage)
        return self.stage_evaluate()


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
