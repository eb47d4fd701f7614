"""The compression benchmark: the driving recipe (``config/compress_driving.yaml``) on ../shared/data.

It prints two tables, every number measured in the runs it starts (re-running resumes them):

1. **Pruning quality** at 416x416 with all 80 classes, one student per speed-up target (1.25x, 1.5x,
   2.0x against our exported teacher, measured on onnxruntime CPU): AP before and after recovery on
   each validation set. Target: >= 1.5x with at most 1.5 AP points lost on the driving sets (highway
   and CCTV); the cost on all 80 COCO classes is printed beside it.
2. **Deployment ladder** for a 960x540 camera: teacher file as given, our export, camera shape,
   pruned and recovered, INT8, each against the file as given and the row above. Target: >= 2.5x
   against the file as given with at most 1.5 AP points lost on the 16:9 CCTV split, and fidelity
   on a held-out 16:9 clip.

    python benchmarks/compression_benchmark.py [--steps 3000] [--targets 1.25,1.5,2.0] [--device cuda]
        [--only quality|ladder] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import torch

from prune_perception.compress.config import load_compress_config
from prune_perception.compress.pipeline import CompressionRun

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "config" / "compress_driving.yaml"
DRIVING_SETS = ("cctv", "highway")
QUALITY = {"speedup": 1.5, "points": 1.5}
LADDER = {"speedup": 2.5, "points": 1.5, "set": "cctv"}


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="any other compress option, for every run (repeatable)")


def shared_data_present() -> bool:
    """Whether the recipe's data is beside the repository (says what is missing if not)."""
    missing = [path for path in ("../shared/data/models/yolox_nano.onnx", "../shared/data/driving") if not Path(path).exists()]
    if missing:
        print(f"missing shared data (run from the repository root, ../shared/data beside it): {', '.join(missing)}",
              file=sys.stderr)
    return not missing


def _ap(row: dict, name: str) -> str:
    value = row["ap_by_set"].get(name)
    return "  n/a" if value is None else f"{value:.3f}"


def _lost(row: dict, teacher: dict, name: str) -> float:
    return 100 * (teacher["ap_by_set"][name] - row["ap_by_set"][name])


def pruning_quality(args: argparse.Namespace) -> bool:
    targets = [float(t) for t in args.targets.split(",")]
    config = load_compress_config(RECIPE, [
        f"output_dir={args.output / 'quality'}", "input.camera=null", "classes.keep=null", "export.int8=false",
        f"prune.target_speedup=[{', '.join(map(str, targets))}]", f"train.steps={args.steps}", f"device={args.device}",
        *args.set,
    ])
    # the recipe scores its coco set on the 8 classes it keeps; here on all 80
    sets = [dataclasses.replace(s, classes=None) if s.name == "coco" else s for s in config.data.sets]
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, sets=sets))
    report = CompressionRun(config).run()
    rows = {row["name"]: row for row in report["models"]}
    teacher = rows["teacher"]
    sets = ("cctv", "highway", "coco")
    print("\n## Pruning quality at 416x416, all 80 classes (AP per validation set; speed-up against our export)")
    print(f"{'target':>7} {'measured':>9} {'MACs':>5} | " + " | ".join(f"{s + (' (80)' if s == 'coco' else ''):>17}"
                                                            for s in sets) + " | points lost: cctv, highway, coco")
    print(f"{'teacher':>7} {'1.00x':>9} {'100%':>5} | " + " | ".join(f"{_ap(teacher, s):>17}" for s in sets) + " |")
    met = False
    for target in targets:
        label = config.prune.target_label(target)
        pruned, recovered = rows[f"{label} pruned"], rows[f"{label} distilled"]
        lost = {s: _lost(recovered, teacher, s) for s in sets}
        hit = recovered["speedup"] >= QUALITY["speedup"] and all(lost[s] <= QUALITY["points"] for s in DRIVING_SETS)
        met |= hit
        print(f"{target:>6.2f}x {recovered['speedup']:>8.2f}x {recovered['macs'] / teacher['macs']:>5.0%} | "
              + " | ".join(f"{_ap(pruned, s)} -> {_ap(recovered, s)}" for s in sets)
              + f" | {lost['cctv']:+.1f}, {lost['highway']:+.1f}, {lost['coco']:+.1f}  {'met' if hit else 'not met'}")
    print(f"target (>= {QUALITY['speedup']}x with <= {QUALITY['points']} AP points lost on cctv and highway): "
          f"{'met' if met else 'not met'}; report: {Path(config.output_dir) / 'report.md'}")
    return met


def deployment_ladder(args: argparse.Namespace) -> bool:
    config = load_compress_config(RECIPE, [f"output_dir={args.output / 'ladder'}",
                                           f"train.steps={args.ladder_steps or args.steps}",
                                           f"device={args.device}", *args.set])
    report = CompressionRun(config).run()
    rows = report["models"]
    by_name = {row["name"]: row for row in rows}
    reference = by_name.get("teacher camera", by_name["teacher"])
    sets = list(rows[0]["ap_by_set"])
    print(f"\n## Deployment ladder for a {config.input.camera} camera ({', '.join(config.classes.keep or ['all classes'])})")
    print(f"{'model':<28} {'input':>8} {'p50 ms':>7} {'vs given':>9} {'vs above':>9} | "
          + " | ".join(f"AP {s:>8}" for s in sets) + " | fidelity")
    met = False
    for row in rows:
        if row["kind"] == "pruned":
            continue
        lost = _lost(row, reference, LADDER["set"]) if row["kind"] in ("distilled", "int8") else None
        hit = lost is not None and row["speedup_vs_given"] >= LADDER["speedup"] and lost <= LADDER["points"]
        met |= hit
        above = f"{row['speedup_vs_previous']:.2f}x" if row["speedup_vs_previous"] else "-"
        fidelity = f"{row['fidelity_ap']:.3f}" if row["fidelity_ap"] is not None else "-"
        print(f"{row['name']:<28} {row['input_hw']:>8} {row['latency_p50_ms']:>7.2f} {row['speedup_vs_given']:>8.2f}x "
              f"{above:>9} | " + " | ".join(f"{_ap(row, s):>11}" for s in sets) + f" | {fidelity}"
              + (f"  ({LADDER['set']} {-lost:+.1f} points: {'met' if hit else 'not met'})" if lost is not None else ""))
    print(f"target (>= {LADDER['speedup']}x against the file as given with <= {LADDER['points']} AP points lost on "
          f"{LADDER['set']}): {'met' if met else 'not met'}")
    print(f"report: {Path(config.output_dir) / 'report.md'}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="recovery training steps per student")
    parser.add_argument("--ladder-steps", type=int, default=0, help="recovery steps of the ladder's student "
                        "(default: --steps)")
    parser.add_argument("--targets", default="1.25,1.5,2.0", help="speed-up targets of the pruning-quality table")
    parser.add_argument("--device", default="cpu", help="training device (cpu, cuda)")
    parser.add_argument("--only", choices=["quality", "ladder"], default=None)
    parser.add_argument("--output", type=Path, default=Path("runs/bench_driving"))
    add_set_option(parser)
    args = parser.parse_args()
    if not shared_data_present():
        return 2
    started = time.monotonic()
    if args.only in (None, "quality"):
        pruning_quality(args)
    if args.only in (None, "ladder"):
        deployment_ladder(args)
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    where += f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() and args.device.startswith("cuda") else ", no GPU"
    print(f"\nwall time {(time.monotonic() - started) / 60:.1f} min on {where}; training device {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
