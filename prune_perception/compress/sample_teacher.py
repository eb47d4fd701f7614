"""``prune-perception train-sample``: the project's own sample teacher, trained on synthetic scenes.

A YOLOX (nano by default) for the six :data:`SCENE_CLASSES`, trained from scratch with the
compression pipeline's own :class:`Trainer` and YOLOX detection loss, on frames of the scene
generator. Training and validation sequences come from disjoint seeds. It writes:

    <output_dir>/sample_teacher.onnx (+ .json sidecar)   what detector_node and compress load
    <output_dir>/sample_teacher.pt                       factory checkpoint (torch backend)
    <output_dir>/training_report.md / .json, training_curve.png
    <output_dir>/validation/                             the held-out scenes, YOLO txt layout

Everything is a function of the configuration (seeds included), so a run reproduces its weights
up to floating-point non-determinism of the CPU kernels.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from prune_perception.compress.train import TrainConfig, Trainer
from prune_perception.data.augment import AugmentConfig
from prune_perception.eval.compress_report import plot_training_curves
from prune_perception.eval.detector_eval import evaluate_on_dataset
from prune_perception.export.onnx_export import export_onnx
from prune_perception.files import atomic_stream, write_json_atomic, write_text_atomic
from prune_perception.models.yolox import YOLOX_FACTORY, build_yolox
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor
from prune_perception.sim.datasets import scene_frames, scene_samples, write_yolo_dataset
from prune_perception.sim.scenes import SCENE_CLASSES, SceneConfig

LOGGER = logging.getLogger(__name__)
SAMPLE_MODEL_NAME = "sample_teacher"


@dataclass(frozen=True)
class SampleTeacherConfig:
    variant: str = "yolox_nano"
    input_size: int = 320
    scene: SceneConfig = SceneConfig(width=640, height=384)
    train_seeds: list[int] = field(default_factory=lambda: list(range(100, 124)))
    frames_per_seed: int = 40
    frame_stride: int = 3
    validation_seeds: list[int] = field(default_factory=lambda: [900, 901])
    validation_frames_per_seed: int = 30
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 0.01
    seed: int = 0


def train_sample_teacher(output_dir: str | Path, config: SampleTeacherConfig = SampleTeacherConfig(),
                         progress: bool = True) -> dict[str, Any]:
    """Train, export and evaluate the sample teacher. Resumes an interrupted run from its checkpoint."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    samples = scene_samples(config.scene, config.train_seeds, config.frames_per_seed, config.frame_stride)
    validation = write_yolo_dataset(
        scene_frames(config.scene, config.validation_seeds, config.validation_frames_per_seed, config.frame_stride),
        output / "validation")
    model = build_yolox(config.variant, num_classes=len(SCENE_CLASSES))
    train_config = TrainConfig(
        steps=config.steps, batch_size=config.batch_size, optimizer="sgd", learning_rate=config.learning_rate, warmup_steps=min(200, config.steps // 5 + 1),
        freeze_batchnorm=False, freeze_stem=False, label_weight=1.0, distill_weight=0.0, ema_decay=0.999,
        ema_ramp_steps=max(1, config.steps // 5), checkpoint_every=250, seed=config.seed,
    )
    augment = AugmentConfig(input_size=config.input_size, mosaic_probability=0.5, scale_range=(0.6, 1.4))
    trainer = Trainer(model, None, samples, train_config, output / "train", augment)
    result = trainer.fit(progress=progress)
    trained = trainer.trained_model().cpu().eval()
    # the training's own wall time, across resumes (a resumed finished run trains for 0 s)
    seconds = float(result.history[-1].get("elapsed_s", math.nan)) if result.history else math.nan

    spec = InputSpec(width=config.input_size, height=config.input_size)
    preprocessor = Preprocessor(spec)
    onnx_path = output / f"{SAMPLE_MODEL_NAME}.onnx"
    export_onnx(trained, onnx_path, SCENE_CLASSES, spec, sample_inputs=[preprocessor(validation[0].read())[0]])
    with atomic_stream(output / f"{SAMPLE_MODEL_NAME}.pt") as stream:
        torch.save({"factory": YOLOX_FACTORY,
                    "factory_kwargs": {"variant": config.variant, "num_classes": len(SCENE_CLASSES)},
                    "state_dict": trained.state_dict()}, stream)
    metrics = evaluate_on_dataset(onnx_path, validation, progress=progress)
    report = {
        "model": onnx_path.name,
        "config": _plain(asdict(config)),
        "training_images": len(samples),
        "validation_images": len(validation),
        "train_seconds": None if math.isnan(seconds) else round(seconds, 1),
        "resumed_from_step": result.resumed_from_step,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "ap": metrics.ap, "ap50": metrics.ap50, "per_class_ap": metrics.per_class_ap,
    }
    write_json_atomic(output / "training_report.json", report)
    write_json_atomic(output / "training_history.json", result.history)
    write_text_atomic(output / "training_report.md", _markdown(report))
    plot_training_curves({"sample teacher": result.history}, output / "training_curve.png")
    LOGGER.info("sample teacher: AP %.3f, AP50 %.3f on %d held-out scenes", metrics.ap, metrics.ap50, len(validation))
    return report


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Sample teacher: training report", "",
             f"- model: `{report['model']}` ({report['config']['variant']}, "
             f"{report['config']['input_size']} px input, classes: {', '.join(SCENE_CLASSES)})",
             f"- trained from scratch on {report['training_images']} synthetic frames, "
             f"{report['config']['steps']} steps of {report['config']['batch_size']}"
             + (f" in {report['train_seconds']:.0f} s of training" if report["train_seconds"] is not None
                else " (training time not recorded by the checkpoint)")
             + (f" (this run resumed at step {report['resumed_from_step']})" if report["resumed_from_step"] else ""),
             f"- held-out synthetic scenes ({report['validation_images']} frames, other seeds): "
             f"**AP {report['ap']:.3f}, AP50 {report['ap50']:.3f}**", "",
             "| class | AP |", "|---|---:|"]
    lines += [f"| {name} | {ap:.3f} |" for name, ap in report["per_class_ap"].items()]
    return "\n".join(lines) + "\n"
