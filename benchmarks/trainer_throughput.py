"""Training throughput of the driving recipe's recovery step, one change at a time (prints numbers;
not a test).

It loads the recipe's data (``config/compress_driving.yaml`` on ../shared/data) once, states the
memory the decoded images take, builds the recipe's teacher and a student pruned 20% uniformly
(the architecture the recipe's speed-up search chose), and then:

1. **profiles one step** of today's trainer (fp32, contiguous, batch prepared in the loop): the
   augmentation's parts, the teacher's forward pass, the student's forward and backward passes,
   the loss, the optimizer and the EMA;
2. **times the trainer settings one change at a time**, each added to the one above (fp32 ->
   channels_last -> bf16 autocast -> batches prepared on a worker thread -> torch.compile),
   interleaved: every setting runs a few steps in turn, repeated, so that the CPU's drift falls on
   all of them alike. Images per second are over the timed steps only;
3. times the teacher's forward pass in torch (the run's precision) against ONNX Runtime on the
   same batch (``--teacher-backends``), to choose where the teacher runs.

    python benchmarks/trainer_throughput.py [--rounds 4] [--steps-per-round 5] [--compile]
        [--max-labelled 0] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from prune_perception.compress.config import load_compress_config
from prune_perception.compress.pipeline import CompressionRun
from prune_perception.compress.prune import PruneConfig, prune_model
from prune_perception.compress.class_subset import select_teacher_classes
from prune_perception.compress.losses import distillation_loss
from prune_perception.compress.train import Trainer, batch_for_step
from prune_perception.data import augment as augment_module

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "config" / "compress_driving.yaml"
# one change at a time, each on top of the one before
LADDER = [
    ("today: fp32, contiguous, batch in the loop", dict(precision="fp32", channels_last=False, prefetch=False)),
    ("+ channels_last", dict(precision="fp32", channels_last=True, prefetch=False)),
    ("+ bf16 autocast", dict(precision="bf16", channels_last=True, prefetch=False)),
    ("+ batch prepared on a worker thread", dict(precision="bf16", channels_last=True, prefetch=True)),
]
COMPILED = ("+ torch.compile (student)", dict(precision="bf16", channels_last=True, prefetch=True, compile=True))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profile_step(run: CompressionRun, student: torch.nn.Module, steps: int) -> dict[str, float]:
    """Mean seconds per step of each part of today's trainer step."""
    config = dataclasses.replace(run.config.train, precision="fp32", channels_last=False, prefetch=False)
    trainer = Trainer(copy.deepcopy(student), run.teacher, run.data.train_samples, config, tempfile.mkdtemp(),
                      run.augment, run.config.distill, teacher_classes=run.subset.teacher_ids if run.subset else None)
    totals: dict[str, float] = defaultdict(float)
    originals = {}
    for name in ("mosaic", "letterbox", "random_affine", "horizontal_flip", "hsv_jitter"):
        original = getattr(augment_module, name)
        originals[name] = original

        def timed(*args, _original=original, _name=name, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[f"data: {_name}"] += time.perf_counter() - started

        setattr(augment_module, name, timed)
    try:
        for step in range(steps + 1):
            record = {} if step == 0 else totals  # step 0 warms up
            clock = time.perf_counter()

            def lap(name: str) -> None:
                nonlocal clock
                now = time.perf_counter()
                record[name] = record.get(name, 0.0) + now - clock
                clock = now

            images, targets, exhaustive = batch_for_step(trainer.samples, step, config, trainer.augment_config)
            lap("data: whole batch")
            trainer.student.train()
            with torch.no_grad():
                teacher_levels = trainer.teacher.logits(images)
                if trainer.teacher_classes is not None:
                    teacher_levels = select_teacher_classes(teacher_levels, trainer.teacher_classes)
            lap("teacher forward")
            levels = trainer.student(images)
            lap("student forward")
            loss, _ = distillation_loss(levels, teacher_levels, trainer.distill_config)
            lap("loss")
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lap("student backward")
            torch.nn.utils.clip_grad_norm_(trainer.student.parameters(), config.grad_clip_norm)
            trainer.optimizer.step()
            trainer.scheduler.step()
            lap("optimizer")
            trainer.ema.update_parameters(trainer.student)
            lap("EMA")
    finally:
        for name, original in originals.items():
            setattr(augment_module, name, original)
    return {name: value / steps for name, value in totals.items()}


def interleaved_throughput(run: CompressionRun, student: torch.nn.Module, settings: list[tuple[str, dict]],
                           rounds: int, steps_per_round: int) -> dict[str, dict[str, float]]:
    """Images per second of each trainer setting, timed in turn ``rounds`` times."""
    trainers = {}
    setup_s = {}
    for label, changes in settings:
        config = dataclasses.replace(run.config.train, checkpoint_every=10**9, **changes)
        started = time.perf_counter()
        trainer = Trainer(copy.deepcopy(student), copy.deepcopy(run.teacher), run.data.train_samples, config,
                          tempfile.mkdtemp(), run.augment, run.config.distill,
                          teacher_classes=run.subset.teacher_ids if run.subset else None)
        trainer.fit(progress=False, stop_after=2)  # warm-up (and compilation) outside the timed rounds
        setup_s[label] = time.perf_counter() - started
        trainers[label] = trainer
    seconds: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for label, trainer in trainers.items():
            started = time.perf_counter()
            trainer.fit(progress=False, stop_after=steps_per_round)
            seconds[label].append((time.perf_counter() - started) / steps_per_round)
    batch = run.config.train.batch_size
    return {label: {"s_per_step": float(np.median(values)), "images_per_s": batch / float(np.median(values)),
                    "spread": (max(values) - min(values)) / float(np.median(values)), "warmup_s": setup_s[label]}
            for label, values in seconds.items()}


def teacher_backends(run: CompressionRun, repeats: int) -> dict[str, float]:
    """Seconds per batch of the teacher's forward pass: torch fp32, torch bf16 + channels_last, ONNX Runtime."""
    import onnxruntime as ort

    config = run.config.train
    images, _, _ = batch_for_step(run.data.train_samples, 0, config, run.augment)
    teacher = copy.deepcopy(run.teacher).eval()
    results = {}

    def time_it(call) -> float:
        call()
        values = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            values.append(time.perf_counter() - started)
        return float(np.median(values))

    with torch.no_grad():
        results["torch fp32"] = time_it(lambda: teacher.logits(images))
        fast = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
        fast_images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results["torch bf16 channels_last"] = time_it(lambda: fast.logits(fast_images))

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return tuple(self.model.logits(x))

    path = Path(tempfile.mkdtemp()) / "teacher_logits.onnx"
    torch.onnx.export(Logits(teacher), (images,), str(path), dynamo=False, opset_version=17, input_names=["images"])
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    array = images.numpy()
    results["onnxruntime fp32"] = time_it(lambda: session.run(None, {"images": array}))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    parser.add_argument("--max-labelled", type=int, default=0, help="at most this many images per labelled set "
                        "(0: all, as the recipe)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    if not Path("../shared/data/models/yolox_nano.onnx").exists():
        print("missing ../shared/data (run from the repository root)", file=sys.stderr)
        return 2
    config = load_compress_config(RECIPE, [f"output_dir={tempfile.mkdtemp()}",
                                           f"data.max_labelled={args.max_labelled}", *args.set])
    run = CompressionRun(config, progress=False)
    before = rss_mb()
    started = time.perf_counter()
    data = run.data
    pixels = sum(sample.image.nbytes for sample in data.train_samples)
    print(f"data: {len(data.train_samples)} training images decoded once in {time.perf_counter() - started:.0f} s; "
          f"their pixels {pixels / 2**20:.0f} MiB; peak RSS {before:.0f} -> {rss_mb():.0f} MiB")
    student = run.pruner.unpruned_student()
    hw = run.shape.hw
    prune_model(student, PruneConfig(channel_ratio=0.2), torch.zeros(1, 3, *hw))
    print(f"student: the recipe's classes, 20% of the channels pruned uniformly, input {hw[0]}x{hw[1]}, "
          f"batch {config.train.batch_size}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")

    parts = profile_step(run, student, args.profile_steps)
    total = sum(v for k, v in parts.items() if not k.startswith("data: ") or k == "data: whole batch")
    print(f"\n## One step of today's trainer (fp32), mean of {args.profile_steps} steps")
    print("| part | ms | share of the step |\n|---|---:|---:|")
    for name, value in parts.items():
        share = "" if name.startswith("data: ") and name != "data: whole batch" else f"{value / total:.0%}"
        print(f"| {name} | {1000 * value:.1f} | {share} |")
    print(f"| **step** | {1000 * total:.1f} | 100% |")

    settings = LADDER + ([COMPILED] if args.compile else [])
    results = interleaved_throughput(run, student, settings, args.rounds, args.steps_per_round)
    baseline = results[LADDER[0][0]]["images_per_s"]
    print(f"\n## Trainer throughput, one change at a time (interleaved, {args.rounds} rounds x "
          f"{args.steps_per_round} steps, median)")
    print("| setting | s/step | images/s | vs today | spread | warm-up s |\n|---|---:|---:|---:|---:|---:|")
    for label, result in results.items():
        print(f"| {label} | {result['s_per_step']:.3f} | {result['images_per_s']:.1f} | "
              f"{result['images_per_s'] / baseline:.2f}x | {result['spread']:.0%} | {result['warmup_s']:.1f} |")

    backends = teacher_backends(run, repeats=10)
    print(f"\n## The teacher's forward pass on one batch of {config.train.batch_size}")
    print("| where | ms |\n|---|---:|")
    for name, value in backends.items():
        print(f"| {name} | {1000 * value:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
