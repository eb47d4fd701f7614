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
import dataclasses
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn

from prune_perception.compress.allocation import Allocation, LayerLatencyTable, allocate_to_target, conv_shapes
from prune_perception.compress.batchnorm import reparameterize_batchnorm
from prune_perception.compress.block_removal import rank_blocks, remove_blocks
from prune_perception.compress.class_subset import ClassSubset, resolve_classes, specialize_head
from prune_perception.compress.config import CompressConfig, config_to_dict
from prune_perception.compress.distill_teacher import DistillTeacher, cached_predictions, with_pseudo_labels
from prune_perception.compress.input_shape import InputShape, resolve_input_shape
from prune_perception.compress.ladder import AS_GIVEN, ModelRecord, evaluate_record, file_mb, static_input_hw, time_ladder
from prune_perception.compress.peers import prune_as_peer
from prune_perception.compress.prune import (
    PruneConfig,
    conv_channels,
    count_macs_params,
    pinned_prune_config,
    prune_model,
    prune_to_speedup,
    reproducible_prune_config,
)
from prune_perception.compress.reconstruct import reconstruct_pruned
from prune_perception.compress.run_data import CompressData, check_sources, load_run_data
from prune_perception.compress.sensitivity import SensitivityScan, scan_sensitivity
from prune_perception.compress.speedup_measurement import repeat_close_calls
from prune_perception.compress.sparsity import SparsityMasks, sparsify
from prune_perception.compress.train import Trainer
from prune_perception.data.augment import Sample
from prune_perception.errors import PrunePerceptionError
from prune_perception.eval.latency_benchmark import measure_latency
from prune_perception.export.int8 import quantize_int8_qdq
from prune_perception.export.modelopt_int8 import quantize_int8_modelopt
from prune_perception.export.onnx_export import export_onnx
from prune_perception.files import remove_stale_temporaries, write_json_atomic, write_text_atomic
from prune_perception.models.pruned_checkpoint import save_pruned_checkpoint
from prune_perception.models.weights import load_official_checkpoint, load_onnx_weights
from prune_perception.models.yolox import build_yolox, residual_blocks
from prune_perception.optional import modelopt_unavailable_reason
from prune_perception.runtime.backends.torch_backend import load_torch_model
from prune_perception.runtime.class_names import default_class_names
from prune_perception.runtime.metadata import InputSpec

LOGGER = logging.getLogger(__name__)
FACTORY = "prune_perception.models.yolox:build_yolox"


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

    def _require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise PrunePerceptionError(f"{path} is missing: run `prune-perception {stage} --config ...` "
                                       f"(with the same configuration) first")
        return path

    def _factory_kwargs(self, model: nn.Module) -> dict[str, Any]:
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
            student = self.make_sparse(plan, folder) if plan.sparsity else self.prune(plan, folder)
            self.export(student, folder / "pruned.onnx")

    def prune(self, plan: StudentPlan, folder: Path) -> nn.Module:
        path = folder / "pruned.pt"
        if path.exists():
            return load_torch_model(path)
        folder.mkdir(parents=True, exist_ok=True)
        teacher, data = self.teacher, self.data
        section = self.config.prune
        loss_fn = self._taylor_loss(teacher, data) if section.importance == "taylor" else None
        meter = self._speedup_meter(folder) if section.target_speedup is not None else None
        images = torch.from_numpy(np.concatenate(data.calibration[: section.calibration_images]))
        calibration = images if section.mean_compensation else None
        rounds: list[dict[str, float]] = []
        if section.method != "prune_perception":
            return self.prune_as_peer(folder, images)
        if section.channels_from:
            student, result, prune_config = self.pinned(section.channels_from, loss_fn, calibration)
        elif section.allocation == "latency":
            student = self.unpruned_student()
            prune_config, rounds = self.allocate(student, plan.target, meter, calibration)
            result = prune_model(student, prune_config, self.example, loss_fn=loss_fn, calibration=calibration)
            result.history[-1]["speedup"] = result.measured_speedup = rounds[-1]["measured_speedup"]
        elif meter is not None:
            prune_config = section.prune_config(plan.target)
            noisy = repeat_close_calls(meter, plan.target, section.latency_noise_margin, section.latency_repeats)
            student, result = prune_to_speedup(self.unpruned_student, prune_config, self.example, noisy,
                                               loss_fn=loss_fn, calibration=calibration)
        else:
            prune_config = section.prune_config(plan.target)
            student = self.unpruned_student()
            result = prune_model(student, prune_config, self.example, loss_fn=loss_fn, calibration=calibration)
        LOGGER.info("pruned: MACs %.1f%%, params %.1f%% of the teacher", 100 * result.macs_fraction, 100 * result.params_fraction)
        write_json_atomic(folder / "pruning.json", {
            "channel_ratio": result.channel_ratio, "macs_fraction": result.macs_fraction,
            "params_fraction": result.params_fraction, "steps": result.history, "refinement": result.refinement,
            "measured_speedup": result.measured_speedup, "allocation": section.allocation,
            "allocation_rounds": rounds, "dropped_blocks": list(self.dropped_blocks), "pinned_from": section.channels_from,
            "reproduce": reproducible_prune_config(prune_config, result),
            "channels": conv_channels(student)})
        if section.reconstruct:
            fit = reconstruct_pruned(student, teacher, result.kept_output_channels, images, seed=self.config.seed)
            write_json_atomic(folder / "reconstruction.json", {
                "layers": fit.layers, "mean_relative_error_before": fit.mean_error_before,
                "mean_relative_error_after": fit.mean_error_after, "relative_error_before": fit.relative_error_before,
                "relative_error_after": fit.relative_error_after})
        save_pruned_checkpoint(path, student, FACTORY, self._factory_kwargs(student))
        return student

    def prune_as_peer(self, folder: Path, calibration: torch.Tensor) -> nn.Module:
        """A peer's student (``prune.method``) at ``prune.macs_fraction``: no compensation, no refit,
        only the peer's own choice of channels; recovered, exported and timed as ours are."""
        section = self.config.prune
        student, result = prune_as_peer(section.method, self.unpruned_student(), self.example, section.macs_fraction,
                                        calibration, folder / "fastnas_search.pth", section.round_to,
                                        section.max_layer_ratio, section.peer_iterative_steps)
        LOGGER.info("pruned by %s: MACs %.1f%%, params %.1f%% of the teacher", section.method,
                    100 * result.macs_fraction, 100 * result.params_fraction)
        write_json_atomic(folder / "pruning.json", {**result.to_dict(), "channels": conv_channels(student)})
        save_pruned_checkpoint(folder / "pruned.pt", student, FACTORY, self._factory_kwargs(student))
        return student

    def pinned(self, path: str, loss_fn: Callable | None, calibration: torch.Tensor | None
               ) -> tuple[nn.Module, Any, PruneConfig]:
        """The student an earlier run's ``pruning.json`` records, pruned again the same way; its
        channels are checked layer by layer against the record."""
        try:
            record = json.loads(Path(path).read_text())
            channels = record["channels"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrunePerceptionError(f"prune.channels_from: {path} is not a pruning.json ({exc})") from exc
        if list(record.get("dropped_blocks", [])) != list(self.dropped_blocks):
            raise PrunePerceptionError(f"prune.channels_from: {path} dropped blocks {record.get('dropped_blocks')}, "
                                       f"this run drops {list(self.dropped_blocks)}: set prune.drop_block_names to match")
        prune_config = pinned_prune_config(record, self.config.prune)
        student = self.unpruned_student()
        result = prune_model(student, prune_config, self.example, loss_fn=loss_fn, calibration=calibration)
        got = conv_channels(student)
        differ = [name for name in sorted(set(channels) | set(got)) if channels.get(name) != got.get(name)]
        if differ:
            raise PrunePerceptionError(
                f"prune.channels_from: pruning as {path} records gives other channels in {len(differ)} layers "
                f"(first: {differ[0]}: {got.get(differ[0])} against {channels.get(differ[0])} recorded); the teacher, "
                "classes, calibration data or importance differ from that run's")
        LOGGER.info("pinned architecture from %s: the same channels in all %d convolutions", path, len(got))
        return student, result, prune_config

    def unpruned_student(self) -> nn.Module:
        """The teacher's weights in the students' shape before any channel is cut: the kept classes
        only, and the residual blocks ``prune.drop_blocks`` removes, removed."""
        student = build_yolox(self.config.teacher.variant, self.config.teacher.num_classes)
        student.load_state_dict(self.teacher.state_dict())
        if self.subset is not None:
            specialize_head(student, self.subset)
        return remove_blocks(student, self.dropped_blocks) if self.dropped_blocks else student

    @property
    def dropped_blocks(self) -> list[str]:
        """The residual blocks every student loses: named, or the gentlest ``drop_blocks`` by measured
        output damage on calibration images (ranked once per run: ``blocks.json``)."""
        section = self.config.prune
        if section.drop_block_names or not section.drop_blocks:
            return list(section.drop_block_names)
        path = self.output_dir / "blocks.json"
        if not path.exists():
            model = build_yolox(self.config.teacher.variant, self.config.teacher.num_classes)
            model.load_state_dict(self.teacher.state_dict())
            images = torch.from_numpy(np.concatenate(self.data.calibration[: section.sensitivity_images]))
            ranked = rank_blocks(model, images)
            write_json_atomic(path, {"ranked": [asdict(block) for block in ranked],
                                     "dropped": [block.name for block in ranked[: section.drop_blocks]]})
        return list(json.loads(path.read_text())["dropped"])

    def allocate(self, student: nn.Module, target_speedup: float, meter: Callable[[nn.Module], float],
                 calibration: torch.Tensor | None) -> tuple[PruneConfig, list[dict[str, float]]]:
        """Per-group channel counts that reach ``target_speedup`` measured, at the least
        estimated damage: the sensitivity scan (once per run), the per-layer latency table (cached
        per backend), then greedy allocation verified by timing the pruned model."""
        section = self.config.prune
        scan_path = self.output_dir / "sensitivity.json"
        if scan_path.exists():
            scan = SensitivityScan.from_dict(json.loads(scan_path.read_text()))
        else:
            images = torch.from_numpy(np.concatenate(self.data.calibration[: section.sensitivity_images]))
            scan = scan_sensitivity(student, images, section.sensitivity_ratios, section.round_to,
                                    section.max_layer_ratio, progress=self.progress)
            write_json_atomic(scan_path, scan.to_dict())
        table = LayerLatencyTable(self.output_dir / "latency_table.json", threads=self.config.evaluate.latency_threads)
        channels = {group.root: group.channels for group in scan.groups}

        def config_for(allocation: Allocation) -> PruneConfig:
            return PruneConfig(importance=section.importance, layer_ratios=allocation.ratios(channels),
                               round_to=section.round_to, max_layer_ratio=section.max_layer_ratio)

        def measure(allocation: Allocation) -> float:
            trial = copy.deepcopy(student)
            prune_model(trial, config_for(allocation), self.example, calibration=calibration)
            return meter(trial)

        allocation, rounds = allocate_to_target(scan, conv_shapes(student, self.example), table, target_speedup,
                                                measure, section.round_to)
        return config_for(allocation), rounds

    def make_sparse(self, plan: StudentPlan, folder: Path) -> nn.Module:
        path = folder / "pruned.pt"
        if path.exists():
            return load_torch_model(path)
        folder.mkdir(parents=True, exist_ok=True)
        student = self.unpruned_student()
        masks = sparsify(student, plan.sparsity, self.config.prune.sparsity_amount)
        write_json_atomic(folder / "sparsity.json", {"before_training": masks.summary(student)})
        save_pruned_checkpoint(path, student, FACTORY, self._factory_kwargs(student))
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
                save_pruned_checkpoint(reference, self.teacher, FACTORY, self._factory_kwargs(self.teacher))

        def measure(model: nn.Module) -> float:
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                candidate = Path(scratch) / f"candidate{suffix}"
                if suffix == ".onnx":
                    export_onnx(model, candidate, self.student_names, self.spec, sample_inputs=inputs[:1])
                else:
                    save_pruned_checkpoint(candidate, model, FACTORY, self._factory_kwargs(model))
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
        save_pruned_checkpoint(folder / "student.pt", recovered, FACTORY, self._factory_kwargs(recovered))
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
    def collect_records(self) -> tuple[list[ModelRecord], dict[str, list], list[str], list[str]]:
        """The models on disk as the report's ladder, and their training histories, INT8 and sparsity notes:
        the teacher file as given, our export of it, our export at the camera shape, then every student
        (pruned, recovered, INT8)."""
        square = self._require(self.output_dir / "teacher" / "teacher.onnx", "prune")
        hw = f"{self.spec.height}x{self.spec.width}"
        square_hw = f"{self.square_spec.height}x{self.square_spec.width}"
        records = []
        given = self.config.teacher.onnx
        if given and Path(given).exists():
            given_hw = static_input_hw(Path(given)) or square_hw
            records.append(ModelRecord(AS_GIVEN, "as_given", str(given), 0.0, file_mb=file_mb(Path(given)),
                                       input_hw=given_hw, notes="the file as given, onnxruntime default session"))
        square_macs, params = count_macs_params(self.teacher, torch.zeros(1, 3, self.square_spec.height,
                                                                           self.square_spec.width))
        records.append(ModelRecord("teacher", "teacher", str(square), 0.0, params, square_macs, file_mb(square),
                                   input_hw=square_hw, previous=records[-1].name if records else None,
                                   notes="our export, our onnxruntime backend"))
        macs, _ = count_macs_params(self.teacher, self.example)
        if self.camera_shaped:
            camera = self._require(self.output_dir / "teacher" / "teacher_camera.onnx", "prune")
            records.append(ModelRecord("teacher camera", "teacher_camera", str(camera), 0.0, params, macs, file_mb(camera),
                                       input_hw=hw, previous="teacher", notes=f"input {self.shape.describe()}"))
        reference = records[-1].name
        histories: dict[str, list] = {}
        int8_notes: list[str] = []
        sparsity_notes: list[str] = []
        for plan in self.plans():
            folder = self.output_dir / plan.label
            pruned = self._require(folder / "pruned.onnx", "prune")
            macs, params = count_macs_params(load_torch_model(folder / "pruned.pt"), self.example)
            fixed = self.config.prune.channel_ratio_of(plan.target) if not plan.sparsity else None
            ratio = fixed if fixed is not None else _searched_ratio(folder / "pruning.json")
            section = self.config.prune
            refit = (f", pruned by {section.method}" if section.method != "prune_perception" else
                     ", least-squares refitted" if section.reconstruct and not plan.sparsity else "")
            common = {"channel_ratio": ratio, "params": params, "macs": macs, "input_hw": hw}
            records.append(ModelRecord(f"{plan.label} pruned", "pruned", str(pruned), file_mb=file_mb(pruned),
                                       previous=reference, **common,
                                       notes=("sparse, before training" if plan.sparsity else "before training") + refit
                                       + _speedup_search_note(folder / "pruning.json", self.config.prune.latency_backend)))
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

    def stage_evaluate(self) -> dict[str, Any]:
        """Accuracy, fidelity and interleaved latency of every model on disk; the report."""
        from prune_perception.eval.compress_report import pruning_sections, write_compress_report

        records, histories, int8_notes, sparsity_notes = self.collect_records()
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


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
