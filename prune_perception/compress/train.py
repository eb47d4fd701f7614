"""The training loop that recovers a pruned detector: distillation from a teacher, labels, or both.

- AdamW or SGD, linear warm-up then cosine decay, EMA of the weights (``AveragedModel``).
- Mixed precision chosen at start-up (``precision: auto``): float16 autocast + GradScaler on CUDA,
  bfloat16 autocast on a CPU that computes bf16 natively (AVX-512 BF16 or AMX), float32 elsewhere.
  The losses, the label assignment, the optimizer state and the EMA stay float32.
- channels_last memory format for the student and the teacher (oneDNN's blocked convolutions).
- The batch of step k+1 is prepared on a worker thread while step k trains, where a core is free
  for it (OpenCV and NumPy release the GIL); it is still a pure function of (seed, step).
- Batches are a pure function of (seed, step), so a run resumed from its checkpoint continues
  exactly where it stopped; checkpoints are written atomically every ``checkpoint_every`` steps.
- Data parallel over ``torch.distributed`` when started with ``torchrun`` (WORLD_SIZE > 1): each
  rank takes its share of every batch, DDP averages the gradients, rank 0 writes.
- BatchNorm statistics are frozen by default: the batches that fit a vehicle-class CPU/GPU are
  too small to estimate them, and imported BN-folded weights carry none worth re-estimating.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from prune_perception.compress.class_subset import select_teacher_classes
from prune_perception.compress.losses import DistillConfig, detection_loss, distillation_loss, feature_adapters
from prune_perception.data.augment import AugmentConfig, Sample, augment
from prune_perception.errors import PrunePerceptionError
from prune_perception.files import atomic_stream


class CheckpointSettingsError(PrunePerceptionError):
    """A training checkpoint of another configuration sits where this run would resume."""


LOGGER = logging.getLogger(__name__)
CHECKPOINT_NAME = "train_checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "train_checkpoint.previous.pt"
"""The checkpoint before the newest, kept so that a corrupt newest one costs one interval."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 8
    optimizer: str = "adamw"
    learning_rate: float = 5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_steps: int = 50
    min_learning_rate_ratio: float = 0.05
    ema_decay: float = 0.998
    ema_ramp_steps: int = 100
    """Ramp the EMA decay up as decay * (1 - exp(-updates / ramp)) (YOLOX: 2000); 0 for a fixed
    decay. Needed from scratch (a fixed 0.999 keeps 8% of the random initial weights after 2500
    steps) and in recovery too: a fixed decay keeps the damaged pruned start in the average
    (measured: teacher fidelity 0.14 -> 0.00)."""
    grad_clip_norm: float = 10.0
    precision: str = "auto"
    """``auto``: float16 autocast on CUDA, bfloat16 on a CPU with native bf16 (AVX-512 BF16 or
    AMX), float32 elsewhere (:func:`resolve_precision`); or ``fp32``, ``bf16``, ``fp16`` (CUDA)."""
    channels_last: bool = True
    """Student and teacher in channels_last memory format (measured faster with oneDNN on the CPU)."""
    prefetch: bool | None = None
    """Prepare the next step's batch on a worker thread while this step trains. None (auto): only
    where a core is free for it, on CUDA or with more cores than torch threads. Measured on 2 cores
    with 2 torch threads: 0.263 -> 0.400 s per step, because the worker stalls torch's threads
    (docs/compression-experiments.md)."""
    compile: bool = False
    """``torch.compile`` the student's forward (measured: see docs/compression-experiments.md)."""
    checkpoint_every: int = 50
    freeze_batchnorm: bool = False
    freeze_stem: bool = True
    """Keep the first convolution's weights. It reads raw 0-255 pixels, so its gradient is ~255x
    larger relative to its weights than any other layer's; one SGD step at a learning rate that
    suits the rest throws a converged model off (measured: YOLOX-Nano distilled into itself, stem
    gradient norm 146 against a weight norm of 0.53, AP 0.38 -> 0.00 within 10 steps). Off when
    training from scratch."""
    label_weight: float = 0.0
    """Weight of the detection loss on labels (0: distillation only)."""
    distill_weight: float = 1.0
    """Weight of the distillation loss (0: labels only)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise PrunePerceptionError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise PrunePerceptionError("steps and batch_size must be >= 1")
        if self.label_weight <= 0 and self.distill_weight <= 0:
            raise PrunePerceptionError("set label_weight or distill_weight (or both) above 0")
        if self.precision not in PRECISIONS:
            raise PrunePerceptionError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX), so that bf16 autocast
    is faster than float32 instead of emulated and slower."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """The compute precision a run uses: ``fp32``, ``bf16`` or ``fp16``.

    Raises:
        PrunePerceptionError: fp16 asked for on a CPU, or bf16 on a CPU without native bf16.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise PrunePerceptionError("precision fp16 needs CUDA; on a CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        raise PrunePerceptionError("precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), where it "
                                   "is emulated and slower than fp32; use fp32 or auto")
    return precision


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0
    resume_notes: list[str] = field(default_factory=list)
    """Checkpoints that could not be used, and what the run did instead."""


def ramped_ema_update(decay: float, ramp_steps: int) -> Callable:
    """An AveragedModel ``multi_avg_fn``: EMA whose decay grows from 0 to ``decay`` (YOLOX ModelEMA)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        current_decay = decay * (1 - math.exp(-float(num_averaged) / ramp_steps))
        floating = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floating:
            torch._foreach_lerp_([a for a, _ in floating], [c for _, c in floating], 1 - current_decay)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():  # counters such as BatchNorm's num_batches_tracked
                a.copy_(c)

    return update


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_learning_rate_ratio + (1 - config.min_learning_rate_ratio) * cosine


def batch_for_step(samples: Sequence[Sample], step: int, config: TrainConfig, augment_config: AugmentConfig,
                   rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, list[torch.Tensor | None], list[bool]]:
    """The augmented batch of ``step`` (this rank's share): a function of (seed, step) only.
    Targets are ``(M, 5)`` class+xyxy tensors, or None for images without labels; with them,
    whether each image's labels are exhaustive."""
    rng = np.random.default_rng([config.seed, step])
    picks = rng.integers(0, len(samples), size=(config.batch_size, 4))
    images, targets, exhaustive = [], [], []
    for row in range(rank, config.batch_size, world_size):
        sample = augment([samples[i] for i in picks[row]], augment_config, np.random.default_rng([config.seed, step, row]))
        images.append(torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1))).float())
        boxes = torch.from_numpy(sample.boxes_xyxy.astype(np.float32)).reshape(-1, 4)
        target = torch.cat([torch.from_numpy(sample.class_ids.astype(np.float32))[:, None], boxes], dim=1)
        targets.append(target if sample.labelled else None)
        exhaustive.append(sample.labelled and sample.exhaustive)
    return torch.stack(images), targets, exhaustive


class BatchPrefetcher:
    """Prepares the batch of the next step on a worker thread while the current one trains.

    Batches stay a pure function of (seed, step): the worker only computes ahead what
    :func:`batch_for_step` would give, so a resumed run sees the same batches.
    """

    def __init__(self, make: Callable[[int], Any], enabled: bool = True) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.make = make
        self.executor = (ThreadPoolExecutor(1, thread_name_prefix="batches", initializer=_one_opencv_thread)
                         if enabled else None)
        self.pending: tuple[int, Any] | None = None
        self.wait_s = 0.0
        """Time the trainer spent waiting for batches (all of the preparation without a worker)."""

    def get(self, step: int, next_step: int | None) -> Any:
        started = time.perf_counter()
        if self.pending is not None and self.pending[0] == step:
            batch = self.pending[1].result()
        else:
            if self.pending is not None:
                self.pending[1].cancel()
            batch = self.make(step)
        self.pending = None
        if self.executor is not None and next_step is not None:
            self.pending = (next_step, self.executor.submit(self.make, next_step))
        self.wait_s = time.perf_counter() - started
        return batch

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        self.pending = None


def _one_opencv_thread() -> None:
    """OpenCV's own thread pool would compete with torch's threads for the cores; the worker
    prepares batches on one thread."""
    import cv2

    cv2.setNumThreads(1)


def _freeze_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class Trainer:
    """Trains ``student`` on ``samples``, from ``teacher`` and/or the samples' labels.

    Args:
        student: a YOLOX-layout model (pruned or not); trained in place.
        teacher: the model to distil from (same classes), or None for labels only.
        samples: training images (with boxes for label training); augmented on the fly.
        output_dir: where the checkpoint is written and from where a run resumes.
        weight_constraint: applied to the student after every optimizer step (e.g. re-zeroing
            the masked weights of a sparse model, so that the zeros survive training).
        teacher_classes: for a student specialized to some of the teacher's classes, their
            indices in the teacher: distillation reads the teacher's scores for those only.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        samples: Sequence[Sample],
        config: TrainConfig,
        output_dir: str | Path,
        augment_config: AugmentConfig = AugmentConfig(),
        distill_config: DistillConfig = DistillConfig(),
        device: str = "cpu",
        weight_constraint: Callable[[nn.Module], None] | None = None,
        teacher_classes: Sequence[int] | None = None,
    ) -> None:
        if config.distill_weight > 0 and teacher is None:
            raise PrunePerceptionError("distillation needs a teacher")
        if not samples:
            raise PrunePerceptionError("no training samples")
        self.config, self.augment_config, self.distill_config = config, augment_config, distill_config
        self.device = torch.device(device)
        self.output_dir = Path(output_dir)
        self.samples = samples
        self.weight_constraint = weight_constraint
        self.teacher_classes = tuple(teacher_classes) if teacher_classes is not None else None
        self.rank, self.world_size = init_distributed_from_env()
        self.precision = resolve_precision(config.precision, self.device)
        self.prefetch = config.prefetch if config.prefetch is not None else (
            self.device.type == "cuda" or (os.cpu_count() or 1) > torch.get_num_threads())
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.student = student.to(self.device, memory_format=self.memory_format)
        self.teacher = (teacher.to(self.device, memory_format=self.memory_format).eval()
                        if teacher is not None else None)
        LOGGER.info("training in %s%s on %s%s", self.precision, ", channels_last" if config.channels_last else "",
                    self.device, ", batches prepared on a worker thread" if self.prefetch else "")
        self.strides = tuple(getattr(getattr(student, "config", None), "strides", (8, 16, 32)))
        self.adapters = None
        if distill_config.feature_weight > 0:
            if self.teacher is None or not hasattr(student, "features"):
                raise PrunePerceptionError("feature imitation needs a teacher and models with .features()")
            probe = torch.zeros(1, 3, 64, 64, device=self.device)
            with torch.no_grad():
                student_channels = [f.shape[1] for f in student.features(probe)]
                teacher_channels = [f.shape[1] for f in self.teacher.features(probe)]
            self.adapters = feature_adapters(student_channels, teacher_channels).to(self.device)
        if config.freeze_stem:
            stem = next((m for m in self.student.modules() if isinstance(m, nn.Conv2d)), None)
            for parameter in stem.parameters() if stem is not None else ():
                parameter.requires_grad_(False)
        parameters = [p for p in self.student.parameters() if p.requires_grad]
        parameters += list(self.adapters.parameters()) if self.adapters else []
        if config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                                             weight_decay=config.weight_decay, nesterov=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: learning_rate_factor(step, config))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        average = (ramped_ema_update(config.ema_decay, config.ema_ramp_steps) if config.ema_ramp_steps > 0
                   else get_ema_multi_avg_fn(config.ema_decay))
        self.ema = AveragedModel(self.student, multi_avg_fn=average, use_buffers=True) if config.ema_decay > 0 else None
        self.trained = self.student
        if config.compile:
            self.trained = torch.compile(self.student)
        if self.world_size > 1:
            self.trained = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.resume_notes: list[str] = []
        """What went wrong resuming (a corrupt checkpoint), for the run's report."""

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    @property
    def previous_checkpoint_path(self) -> Path:
        return self.output_dir / PREVIOUS_CHECKPOINT_NAME

    def _resumable_state(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "adapters": self.adapters.state_dict() if self.adapters else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        state = {"step": self.step, **self._resumable_state(), "history": self.history, "config": asdict(self.config)}
        if self.checkpoint_path.exists():
            os.replace(self.checkpoint_path, self.previous_checkpoint_path)
        with atomic_stream(self.checkpoint_path) as stream:
            torch.save(state, stream)

    def try_resume(self) -> int:
        """Continue from ``output_dir``'s newest readable checkpoint; return its step (0 if none).

        A checkpoint that cannot be read (truncated, corrupt, not a checkpoint) is named in a
        warning and the previous one is tried; with none left, training starts over from step 0.
        One written with other training settings is an error: it is not this run's.
        """
        candidates = [path for path in (self.checkpoint_path, self.previous_checkpoint_path) if path.exists()]
        if not candidates:
            return 0
        initial = copy.deepcopy(self._resumable_state())
        for index, path in enumerate(candidates):
            try:
                self._load_checkpoint(path)
            except CheckpointSettingsError:
                raise
            except Exception as exc:  # whatever torch.load or load_state_dict makes of a damaged file
                self._apply_state(initial)
                self.history, self.step = [], 0
                then = (f"resuming from the previous one, {candidates[index + 1].name}" if index + 1 < len(candidates)
                        else "training starts over from step 0")
                note = f"training checkpoint {path} cannot be used ({type(exc).__name__}: {exc}); {then}"
                LOGGER.warning(note)
                self.resume_notes.append(note)
                continue
            LOGGER.info("resumed training from step %d of %d (%s)", self.step, self.config.steps, path.name)
            return self.step
        return 0

    def _load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        if not isinstance(state, dict) or "config" not in state or "step" not in state:
            raise ValueError("not a training checkpoint")
        saved = {k: v for k, v in state["config"].items() if k not in ("steps", "checkpoint_every")}
        current = {k: v for k, v in asdict(self.config).items() if k not in ("steps", "checkpoint_every")}
        if saved != current:
            raise CheckpointSettingsError(f"{path} was written with other training settings; delete it to start over")
        self._apply_state(state)
        self.history = list(state["history"])
        self.step = int(state["step"])

    def _apply_state(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        if self.adapters is not None and state["adapters"] is not None:
            self.adapters.load_state_dict(state["adapters"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    # ---------------------------------------------------------------- training
    def autocast(self) -> Any:
        """The autocast context of this run's precision (a no-op context in fp32)."""
        dtype = AUTOCAST_DTYPES.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _loss(self, images: torch.Tensor, targets: list[torch.Tensor | None],
              exhaustive: list[bool]) -> tuple[torch.Tensor, dict[str, float]]:
        """The step's loss: the networks run in the run's precision, the losses in float32."""
        parts: dict[str, float] = {}
        imitate = self.config.distill_weight > 0 and self.adapters is not None
        student_features: tuple[torch.Tensor, ...] = ()
        with self.autocast():
            if imitate and self.world_size == 1:
                # one student pass gives both the neck features and the head's logits
                student_features = self.student.features(images)
                levels = self.student.head(student_features)
            else:
                levels = self.trained(images)
                if imitate:  # under DDP the logits must come from the wrapped forward
                    student_features = self.student.features(images)
            teacher_features: tuple[torch.Tensor, ...] = ()
            teacher_levels: list[torch.Tensor] = []
            if self.config.distill_weight > 0:
                with torch.no_grad():
                    teacher_features = self.teacher.features(images) if imitate else ()
                    teacher_levels = self.teacher.head(teacher_features) if imitate else self.teacher.logits(images)
        levels = [level.float() for level in levels]
        total = images.new_zeros((), dtype=torch.float32)
        if self.config.distill_weight > 0:
            teacher_levels = [level.float() for level in teacher_levels]
            if self.teacher_classes is not None:
                teacher_levels = select_teacher_classes(teacher_levels, self.teacher_classes)
            loss, distill_parts = distillation_loss(levels, teacher_levels, self.distill_config,
                                                    [f.float() for f in student_features],
                                                    [f.float() for f in teacher_features], self.adapters)
            total = total + self.config.distill_weight * loss
            parts.update(distill_parts)
        if self.config.label_weight > 0:
            loss, label_parts = detection_loss(levels, [None if t is None else t.to(self.device) for t in targets],
                                               self.strides, exhaustive=exhaustive)
            total = total + self.config.label_weight * loss
            parts.update(label_parts)
        return total, parts

    def fit(self, progress: bool = True, stop_after: int | None = None,
            on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
        """Train until ``config.steps`` (or ``stop_after`` more steps, to simulate an interruption)."""
        resumed = self.try_resume()
        config = self.config
        if self.teacher is not None:
            self.teacher.eval()
        last = config.steps if stop_after is None else min(config.steps, self.step + stop_after)
        bar = tqdm(total=config.steps, initial=self.step, desc="train", disable=not progress or self.rank != 0,
                   dynamic_ncols=True)
        # Wall time of training, kept across resumes (each record carries the total up to its step).
        elapsed_before = float(self.history[-1].get("elapsed_s", 0.0)) if self.history else 0.0
        started = time.perf_counter()
        batches = BatchPrefetcher(
            lambda step: batch_for_step(self.samples, step, config, self.augment_config, self.rank, self.world_size),
            enabled=self.prefetch)
        try:
            while self.step < last:
                images, targets, exhaustive = batches.get(self.step, self.step + 1 if self.step + 1 < last else None)
                record = self._train_step(images, targets, exhaustive)
                record.update(step=self.step, data_wait_s=batches.wait_s,
                              elapsed_s=elapsed_before + time.perf_counter() - started)
                self.history.append(record)
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if on_step is not None:
                    on_step(self.step, record)
                if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                    self.save_checkpoint()
        finally:
            batches.close()
        bar.close()
        return TrainResult(list(self.history), resumed, list(self.resume_notes))

    def _train_step(self, images: torch.Tensor, targets: list[torch.Tensor | None],
                    exhaustive: list[bool]) -> dict[str, float]:
        """One optimizer step on one batch; returns its record (loss, its parts, lr, grad norm)."""
        config = self.config
        self.student.train()
        if config.freeze_batchnorm:
            _freeze_batchnorm(self.student)
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        loss, parts = self._loss(images, targets, exhaustive)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), config.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.weight_constraint is not None:
            self.weight_constraint(self.student)
        if self.ema is not None:
            self.ema.update_parameters(self.student)
        return {"loss": float(loss.detach()), "lr": self.optimizer.param_groups[0]["lr"],
                "grad_norm": float(grad_norm), **parts}

    def trained_model(self) -> nn.Module:
        """The EMA weights when EMA is on (usually the better model), else the student; in the
        default memory format, as every consumer of a saved model expects."""
        model = self.ema.module if self.ema is not None else self.student
        return model.to(memory_format=torch.contiguous_format)


def init_distributed_from_env() -> tuple[int, int]:
    """Start torch.distributed when launched by torchrun (WORLD_SIZE > 1); return (rank, world size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (dist.get_rank(), world_size) if world_size > 1 else (0, 1)
