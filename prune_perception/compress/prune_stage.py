"""The prune stage of a compression run: each student cut from the teacher.

:class:`StudentPruner` turns a :class:`~prune_perception.compress.pipeline.StudentPlan` into
``pruned.pt`` and ``pruning.json`` (what was cut, how it was found, how to reproduce it) by one of:
a fixed channel ratio or MACs/params fraction; a measured speed-up target (uniform ratio, timing
noise handled by :mod:`speedup_measurement`) or a latency-aware allocation (:mod:`allocation`); an
architecture pinned from an earlier run (``prune.channels_from``); a peer's method
(:mod:`peers`); or a sparse student with the teacher's shapes (:mod:`sparsity`). Residual blocks
are dropped first where asked, and our students are refitted by least squares (:mod:`reconstruct`).
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from prune_perception.compress.allocation import Allocation, LayerLatencyTable, allocate_to_target, conv_shapes
from prune_perception.compress.block_removal import rank_blocks, remove_blocks
from prune_perception.compress.class_subset import specialize_head
from prune_perception.compress.peers import PEER_METHODS, prune_as_peer
from prune_perception.compress.prune import (
    PruneConfig,
    conv_channels,
    layer_ratios_for,
    pinned_prune_config,
    prune_model,
    prune_to_speedup,
    reproducible_prune_config,
)
from prune_perception.compress.reconstruct import reconstruct_pruned
from prune_perception.compress.run_data import CompressData
from prune_perception.compress.sensitivity import SensitivityScan, scan_sensitivity
from prune_perception.compress.speedup_measurement import repeat_close_calls
from prune_perception.compress.sparsity import sparsify
from prune_perception.errors import PrunePerceptionError
from prune_perception.eval.latency_benchmark import measure_latency
from prune_perception.export.onnx_export import export_onnx
from prune_perception.files import write_json_atomic
from prune_perception.models.pruned_checkpoint import save_pruned_checkpoint
from prune_perception.models.yolox import YOLOX_FACTORY, build_yolox
from prune_perception.runtime.backends.torch_backend import load_torch_model

if TYPE_CHECKING:
    from prune_perception.compress.pipeline import CompressionRun, StudentPlan

LOGGER = logging.getLogger(__name__)


class StudentPruner:
    """The prune stage of ``run``: reads the run's teacher, data and configuration."""

    def __init__(self, run: CompressionRun) -> None:
        self.run = run

    def prune(self, plan: StudentPlan, folder: Path) -> nn.Module:
        path = folder / "pruned.pt"
        if path.exists():
            return load_torch_model(path)
        folder.mkdir(parents=True, exist_ok=True)
        teacher, data = self.run.teacher, self.run.data
        section = self.run.config.prune
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
            result = prune_model(student, prune_config, self.run.example, loss_fn=loss_fn, calibration=calibration)
            result.history[-1]["speedup"] = result.measured_speedup = rounds[-1]["measured_speedup"]
        elif meter is not None:
            prune_config = section.prune_config(plan.target)
            noisy = repeat_close_calls(meter, plan.target, section.latency_noise_margin, section.latency_repeats)
            student, result = prune_to_speedup(self.unpruned_student, prune_config, self.run.example, noisy,
                                               loss_fn=loss_fn, calibration=calibration)
        else:
            prune_config = section.prune_config(plan.target)
            student = self.unpruned_student()
            result = prune_model(student, prune_config, self.run.example, loss_fn=loss_fn, calibration=calibration)
        LOGGER.info("pruned: MACs %.1f%%, params %.1f%% of the teacher", 100 * result.macs_fraction, 100 * result.params_fraction)
        write_json_atomic(folder / "pruning.json", {
            "channel_ratio": result.channel_ratio, "macs_fraction": result.macs_fraction,
            "params_fraction": result.params_fraction, "steps": result.history, "refinement": result.refinement,
            "measured_speedup": result.measured_speedup, "allocation": section.allocation,
            "allocation_rounds": rounds, "dropped_blocks": list(self.dropped_blocks), "pinned_from": section.channels_from,
            "reproduce": reproducible_prune_config(prune_config, result),
            "channels": conv_channels(student)})
        if section.reconstruct:
            fit = reconstruct_pruned(student, teacher, result.kept_output_channels, images, seed=self.run.config.seed)
            write_json_atomic(folder / "reconstruction.json", {
                "layers": fit.layers, "mean_relative_error_before": fit.mean_error_before,
                "mean_relative_error_after": fit.mean_error_after, "relative_error_before": fit.relative_error_before,
                "relative_error_after": fit.relative_error_after})
        save_pruned_checkpoint(path, student, YOLOX_FACTORY, self.run.factory_kwargs(student))
        return student

    def prune_as_peer(self, folder: Path, calibration: torch.Tensor) -> nn.Module:
        """A peer's student (``prune.method``) at ``prune.macs_fraction``: no compensation, no refit,
        only the peer's own choice of channels; recovered, exported and timed as ours are."""
        section = self.run.config.prune
        student, result = prune_as_peer(section.method, self.unpruned_student(), self.run.example, section.macs_fraction,
                                        calibration, folder / "fastnas_search.pth", section.round_to,
                                        section.max_layer_ratio, section.peer_iterative_steps)
        LOGGER.info("pruned by %s: MACs %.1f%%, params %.1f%% of the teacher", section.method,
                    100 * result.macs_fraction, 100 * result.params_fraction)
        write_json_atomic(folder / "pruning.json", {**result.to_dict(), "channels": conv_channels(student)})
        save_pruned_checkpoint(folder / "pruned.pt", student, YOLOX_FACTORY, self.run.factory_kwargs(student))
        return student

    def pinned(self, path: str, loss_fn: Callable | None, calibration: torch.Tensor | None
               ) -> tuple[nn.Module, Any, PruneConfig]:
        """The student an earlier run's ``pruning.json`` records, pruned again the same way (a peer's
        record, ``prune.method`` torch_pruning or modelopt_fastnas: its channel counts per layer, the
        channels chosen, compensated and refitted ours); its channels are checked layer by layer
        against the record."""
        try:
            record = json.loads(Path(path).read_text())
            channels = record["channels"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrunePerceptionError(f"prune.channels_from: {path} is not a pruning.json ({exc})") from exc
        if list(record.get("dropped_blocks", [])) != list(self.dropped_blocks):
            raise PrunePerceptionError(f"prune.channels_from: {path} dropped blocks {record.get('dropped_blocks')}, "
                                       f"this run drops {list(self.dropped_blocks)}: set prune.drop_block_names to match")
        student = self.unpruned_student()
        if "reproduce" not in record and record.get("method") in PEER_METHODS:
            # a peer's architecture (its per-layer channel counts) with our channel choice, compensation and refit
            section = self.run.config.prune
            prune_config = PruneConfig(importance=section.importance, round_to=section.round_to,
                                       max_layer_ratio=section.max_layer_ratio,
                                       layer_ratios=layer_ratios_for(student, channels))
        else:
            prune_config = pinned_prune_config(record, self.run.config.prune)
        result = prune_model(student, prune_config, self.run.example, loss_fn=loss_fn, calibration=calibration)
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
        student = build_yolox(self.run.config.teacher.variant, self.run.config.teacher.num_classes)
        student.load_state_dict(self.run.teacher.state_dict())
        if self.run.subset is not None:
            specialize_head(student, self.run.subset)
        return remove_blocks(student, self.dropped_blocks) if self.dropped_blocks else student

    @property
    def dropped_blocks(self) -> list[str]:
        """The residual blocks every student loses: named, or the gentlest ``drop_blocks`` by measured
        output damage on calibration images (ranked once per run: ``blocks.json``)."""
        section = self.run.config.prune
        if section.drop_block_names or not section.drop_blocks:
            return list(section.drop_block_names)
        path = self.run.output_dir / "blocks.json"
        if not path.exists():
            model = build_yolox(self.run.config.teacher.variant, self.run.config.teacher.num_classes)
            model.load_state_dict(self.run.teacher.state_dict())
            images = torch.from_numpy(np.concatenate(self.run.data.calibration[: section.sensitivity_images]))
            ranked = rank_blocks(model, images)
            write_json_atomic(path, {"ranked": [asdict(block) for block in ranked],
                                     "dropped": [block.name for block in ranked[: section.drop_blocks]]})
        return list(json.loads(path.read_text())["dropped"])

    def allocate(self, student: nn.Module, target_speedup: float, meter: Callable[[nn.Module], float],
                 calibration: torch.Tensor | None) -> tuple[PruneConfig, list[dict[str, float]]]:
        """Per-group channel counts that reach ``target_speedup`` measured, at the least
        estimated damage: the sensitivity scan (once per run), the per-layer latency table (cached
        per backend), then greedy allocation verified by timing the pruned model."""
        section = self.run.config.prune
        scan_path = self.run.output_dir / "sensitivity.json"
        if scan_path.exists():
            scan = SensitivityScan.from_dict(json.loads(scan_path.read_text()))
        else:
            images = torch.from_numpy(np.concatenate(self.run.data.calibration[: section.sensitivity_images]))
            scan = scan_sensitivity(student, images, section.sensitivity_ratios, section.round_to,
                                    section.max_layer_ratio, progress=self.run.progress)
            write_json_atomic(scan_path, scan.to_dict())
        table = LayerLatencyTable(self.run.output_dir / "latency_table.json", threads=self.run.config.evaluate.latency_threads)
        channels = {group.root: group.channels for group in scan.groups}

        def config_for(allocation: Allocation) -> PruneConfig:
            return PruneConfig(importance=section.importance, layer_ratios=allocation.ratios(channels),
                               round_to=section.round_to, max_layer_ratio=section.max_layer_ratio)

        def measure(allocation: Allocation) -> float:
            trial = copy.deepcopy(student)
            prune_model(trial, config_for(allocation), self.run.example, calibration=calibration)
            return meter(trial)

        allocation, rounds = allocate_to_target(scan, conv_shapes(student, self.run.example), table, target_speedup,
                                                measure, section.round_to)
        return config_for(allocation), rounds

    def make_sparse(self, plan: StudentPlan, folder: Path) -> nn.Module:
        path = folder / "pruned.pt"
        if path.exists():
            return load_torch_model(path)
        folder.mkdir(parents=True, exist_ok=True)
        student = self.unpruned_student()
        masks = sparsify(student, plan.sparsity, self.run.config.prune.sparsity_amount)
        write_json_atomic(folder / "sparsity.json", {"before_training": masks.summary(student)})
        save_pruned_checkpoint(path, student, YOLOX_FACTORY, self.run.factory_kwargs(student))
        return student

    def _speedup_meter(self, folder: Path) -> Callable[[nn.Module], float]:
        """Times a model being pruned against the teacher on ``prune.latency_backend``, interleaved."""
        section, evaluate = self.run.config.prune, self.run.config.evaluate
        inputs = self.run.data.calibration[:4]
        if section.latency_backend == "onnxruntime":
            reference, suffix, device = self.run.teacher_onnx, ".onnx", "cpu"
        else:
            reference, suffix, device = self.run.output_dir / "teacher" / "teacher.pt", ".pt", self.run.config.device
            if not reference.exists():
                save_pruned_checkpoint(reference, self.run.teacher, YOLOX_FACTORY, self.run.factory_kwargs(self.run.teacher))

        def measure(model: nn.Module) -> float:
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                candidate = Path(scratch) / f"candidate{suffix}"
                if suffix == ".onnx":
                    export_onnx(model, candidate, self.run.student_names, self.run.spec, sample_inputs=inputs[:1])
                else:
                    save_pruned_checkpoint(candidate, model, YOLOX_FACTORY, self.run.factory_kwargs(model))
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
