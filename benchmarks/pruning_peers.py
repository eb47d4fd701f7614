"""Our pruning against its peers at equal compute, on the driving recipe (``config/compress_driving.yaml``).

Every method prunes the same camera-shaped, class-specialized YOLOX-Nano to the same fraction of
its MACs, and is recovered with the same distillation for the same number of steps; only the way
channels are chosen differs (``prune.method``, :mod:`prune_perception.compress.peers`):

- ``prune_perception``: ours (output-energy importance, mean compensation, least-squares refit);
- ``torch_pruning``: Torch-Pruning's progressive MetaPruner with group L2 magnitude importance;
- ``modelopt_fastnas``: NVIDIA Model Optimizer's FastNAS search under a FLOPs constraint.

Then every recovered student and the camera-shaped teacher are timed in one interleaved ONNX
Runtime run (the speed-up column), and the table gives AP on each validation split (frames never
trained on), the points lost against the teacher and each method's wall minutes (prune + recover +
export + evaluate). Re-running resumes the runs it finds.

    python benchmarks/pruning_peers.py [--macs-fraction 0.66 | --from runs/recipe/ladder/speedup_1.30/pruning.json]
        [--steps 1000] [--methods prune_perception,torch_pruning,modelopt_fastnas] [--output runs/peers]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from compression_benchmark import RECIPE, add_set_option, shared_data_present

from prune_perception.compress.config import load_compress_config
from prune_perception.compress.peers import PRUNE_METHODS
from prune_perception.compress.pipeline import CompressionRun
from prune_perception.eval.latency_benchmark import measure_latency
from prune_perception.files import write_json_atomic
from prune_perception.optional import modelopt_unavailable_reason


def run_method(method: str, args: argparse.Namespace) -> tuple[CompressionRun, dict, float]:
    config = load_compress_config(RECIPE, [
        f"output_dir={args.output / method}", "prune.target_speedup=null", f"prune.macs_fraction={args.macs_fraction}",
        f"prune.method={method}", f"train.steps={args.steps}", "export.int8=false", f"device={args.device}",
        "evaluate.latency_runs=20", *args.set])
    timing = args.output / method / "wall_minutes.json"
    started = time.monotonic()
    run = CompressionRun(config)
    report = run.run()
    minutes = (time.monotonic() - started) / 60
    if timing.exists():  # a resumed run: keep the minutes of the run that did the work
        minutes = json.loads(timing.read_text())["minutes"]
    else:
        write_json_atomic(timing, {"minutes": minutes})
    return run, report, minutes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--macs-fraction", type=float, default=None, help="the MACs every method prunes to")
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="take the MACs fraction from a pruning.json (e.g. the recipe's own student)")
    parser.add_argument("--steps", type=int, default=1000, help="recovery training steps, the same for every method")
    parser.add_argument("--methods", default=",".join(PRUNE_METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--output", type=Path, default=Path("runs/peers"))
    add_set_option(parser)
    args = parser.parse_args()
    if not shared_data_present():
        return 2
    if args.macs_fraction is None:
        args.macs_fraction = json.loads(args.source.read_text())["macs_fraction"] if args.source else 0.66
    args.macs_fraction = round(float(args.macs_fraction), 4)
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    unknown = sorted(set(methods) - set(PRUNE_METHODS))
    if unknown:
        print(f"unknown methods {unknown}: choose from {PRUNE_METHODS}", file=sys.stderr)
        return 2
    skipped: dict[str, str] = {}
    if "modelopt_fastnas" in methods and (reason := modelopt_unavailable_reason("torch.prune")):
        skipped["modelopt_fastnas"] = reason
        methods.remove("modelopt_fastnas")

    rows: dict[str, dict] = {}
    run = None
    for method in methods:
        try:
            run, report, minutes = run_method(method, args)
        except Exception as exc:  # a peer that fails is a row that says why, not a lost benchmark
            skipped[method] = f"{type(exc).__name__}: {exc}"
            print(f"{method}: failed: {skipped[method]}", file=sys.stderr)
            continue
        by_name = {row["name"]: row for row in report["models"]}
        label = run.config.prune.target_label(None)
        rows[method] = {"teacher": by_name.get("teacher camera", by_name["teacher"]),
                        "pruned": by_name[f"{label} pruned"], "student": by_name[f"{label} distilled"],
                        "onnx": args.output / method / label / "student.onnx", "minutes": minutes}
    if run is None:
        print(f"no method ran: {skipped}", file=sys.stderr)
        return 1

    first = next(iter(rows.values()))
    models = {"teacher camera": Path(first["teacher"]["onnx"])} | {method: row["onnx"] for method, row in rows.items()}
    threads = run.config.evaluate.latency_threads
    summaries = measure_latency(models, run.data.calibration[:4], runs=args.latency_runs, warmup=10,
                                backend="onnxruntime", intra_op_threads=threads)
    teacher_ms = summaries["teacher camera"].p50_ms
    sets = list(first["teacher"]["ap_by_set"])
    print(f"\n## Pruning peers at {args.macs_fraction:.1%} of the MACs, {args.steps} recovery steps each "
          f"({run.config.input.camera} camera, {run.shape.describe()}, {len(run.student_names)} classes)")
    print(f"{'method':<18} {'MACs':>6} {'p50 ms':>7} {'speed-up':>8} | " + " | ".join(f"AP {s:>8}" for s in sets)
          + " | points lost " + ", ".join(sets) + " | wall min")
    print(f"{'teacher camera':<18} {'100%':>6} {teacher_ms:>7.2f} {'1.00x':>8} | "
          + " | ".join(f"{first['teacher']['ap_by_set'][s]:>11.3f}" for s in sets) + " |")
    results = {"macs_fraction": args.macs_fraction, "steps": args.steps, "teacher_p50_ms": teacher_ms,
               "teacher_ap_by_set": first["teacher"]["ap_by_set"], "methods": {}, "skipped": skipped}
    for method, row in rows.items():
        student, teacher = row["student"], row["teacher"]
        lost = {s: 100 * (teacher["ap_by_set"][s] - student["ap_by_set"][s]) for s in sets}
        speedup = teacher_ms / summaries[method].p50_ms
        print(f"{method:<18} {student['macs'] / teacher['macs']:>6.1%} {summaries[method].p50_ms:>7.2f} {speedup:>7.2f}x | "
              + " | ".join(f"{student['ap_by_set'][s]:>11.3f}" for s in sets) + " | "
              + ", ".join(f"{-lost[s]:+.1f}" for s in sets) + f" | {row['minutes']:.1f}")
        results["methods"][method] = {
            "macs_fraction": student["macs"] / teacher["macs"], "p50_ms": summaries[method].p50_ms, "speedup": speedup,
            "ap_by_set": student["ap_by_set"], "ap_by_set_before_training": row["pruned"]["ap_by_set"],
            "points_lost": lost, "wall_minutes": row["minutes"]}
    for method, reason in skipped.items():
        print(f"{method:<18} did not run: {reason}")
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    print(f"\nAP on each validation split (never trained on); speed-ups from one interleaved onnxruntime run of "
          f"{args.latency_runs} rounds on {where}")
    write_json_atomic(args.output / "peers.json", results)
    print(f"results: {args.output / 'peers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
