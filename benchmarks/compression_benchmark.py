"""The compression benchmark: YOLOX-Nano from ../shared/data pruned at several channel ratios,
recovered by distillation on the coco128 images plus the dashcam frames, quantized to INT8.

It runs ``prune-perception compress`` with ``config/compress.yaml`` (its held-out coco128 split
is the validation set) and prints, per ratio: AP before and after distillation, the AP lost
against the teacher, and the measured onnxruntime CPU speed-up against the teacher, timed
interleaved in the same run (FP32 and INT8). Target: >= 1.5x with <= 2 AP points lost.
Re-running resumes (training checkpoints, finished stages).

    python benchmarks/compression_benchmark.py --shared ../shared/data [--steps 600] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prune_perception.compress.config import load_compress_config
from prune_perception.compress.pipeline import CompressionRun

ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 1.5
TARGET_AP_LOSS_POINTS = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--ratios", default="0.2,0.3,0.5")
    parser.add_argument("--steps", type=int, default=600, help="recovery training steps per ratio")
    parser.add_argument("--device", default="cpu", help="training device (cpu, cuda)")
    parser.add_argument("--output", type=Path, default=Path("runs/bench_compress"))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="any other compress option (repeatable)")
    args = parser.parse_args()
    model, coco, video = (args.shared / "models" / "yolox_nano.onnx", args.shared / "coco128" / "images",
                          args.shared / "video" / "solidWhiteRight.mp4")
    missing = [str(path) for path in (model, coco, video) if not path.exists()]
    if missing:
        print(f"missing shared data: {', '.join(missing)}", file=sys.stderr)
        return 2
    config = load_compress_config(ROOT / "config" / "compress.yaml", [
        f"output_dir={args.output}", f"teacher.onnx={model}", f"data.labelled={coco}", f"data.unlabelled=[{video}]",
        f"prune.ratios=[{args.ratios}]", f"train.steps={args.steps}", f"device={args.device}", *args.set,
    ])
    report = CompressionRun(config).run()
    rows = {row["name"]: row for row in report["models"]}
    teacher = rows["teacher"]
    print(f"\nteacher: AP {teacher['ap']:.3f}  AP50 {teacher['ap50']:.3f}  p50 {teacher['latency_p50_ms']:.2f} ms "
          f"(onnxruntime CPU, {config.evaluate.latency_runs} interleaved runs)")
    print(f"{'ratio':>6} {'MACs':>6} {'AP pruned':>10} {'AP distilled':>13} {'AP lost':>8} {'speed-up':>9} "
          f"{'AP int8':>8} {'int8 speed-up':>14}  target")
    met = False
    for ratio in config.prune.targets():
        label = config.prune.target_label(ratio)
        pruned, distilled = rows[f"{label} pruned"], rows[f"{label} distilled"]
        int8 = rows.get(f"{label} int8", {})
        lost = 100 * (teacher["ap"] - distilled["ap"])
        candidates = [(distilled["speedup"], distilled["ap"])] + ([(int8["speedup"], int8["ap"])] if int8 else [])
        hit = any(speed >= TARGET_SPEEDUP and 100 * (teacher["ap"] - ap) <= TARGET_AP_LOSS_POINTS for speed, ap in candidates)
        met |= hit
        print(f"{label:>6} {distilled['macs'] / teacher['macs']:>6.0%} {pruned['ap']:>10.3f} {distilled['ap']:>13.3f} "
              f"{lost:>8.1f} {distilled['speedup']:>8.2f}x {int8.get('ap', float('nan')):>8.3f} "
              f"{int8.get('speedup', float('nan')):>13.2f}x  {'met' if hit else 'not met'}")
    print(f"\ntarget (>= {TARGET_SPEEDUP}x with <= {TARGET_AP_LOSS_POINTS} AP points lost): {'met' if met else 'not met'}")
    print(f"report: {Path(config.output_dir) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
