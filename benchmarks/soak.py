"""Soak: detector_node for a long time (default 30 min) at 30 Hz on 960x540 frames of the dashcam
clip over real DDS. Every ``--sample-every`` seconds it samples the node process's RSS, open file
descriptors and threads, and the latency percentiles and drop and deadline-miss counts from
/diagnostics. Writes soak.csv, soak.png (RSS and latency over time), soak.json and soak.md, and
prints the verdict. Exit code 0 when every limit held, 1 when one did not.

Targets: RSS growth after warm-up <= 20 MB; no growth in fds or threads; p99 in the last 5 minutes
within 1.2x of the first 5 (after warm-up).

    python benchmarks/soak.py --model ../shared/data/models/yolox_nano.onnx \
        --video ../shared/data/video/solidWhiteRight.mp4 [--duration 1800] [--rate 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import rclpy

from prune_perception.eval.soak import SoakLimits
from prune_perception.ros.soak_session import SoakSettings, run_soak

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "yolox_nano.onnx")
    parser.add_argument("--video", type=Path, default=SHARED / "video" / "solidWhiteRight.mp4")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of input after warm-up starts")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frame rate (Hz)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds not judged at the start")
    parser.add_argument("--latency-window", type=float, default=300.0,
                        help="p99 of the first and the last this many seconds are compared")
    parser.add_argument("--budget-ms", type=float, default=100.0, help="the node's latency budget")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=20.0)
    parser.add_argument("--max-p99-ratio", type=float, default=1.2)
    parser.add_argument("--output", type=Path, default=Path("runs/soak"))
    args = parser.parse_args()
    for path in (args.model, args.video):
        if not path.exists():
            print(f"missing input: {path}", file=sys.stderr)
            return 2
    if args.duration < args.warmup + 4 * args.sample_every:
        print("--duration must leave at least 4 samples after --warmup", file=sys.stderr)
        return 2

    settings = SoakSettings(
        model=args.model, video=args.video, output_dir=args.output, duration_s=args.duration, rate_hz=args.rate,
        sample_every_s=args.sample_every, warmup_s=args.warmup,
        latency_window_s=min(args.latency_window, (args.duration - args.warmup) / 2),
        latency_budget_ms=args.budget_ms, detector_params={"intra_op_threads": args.threads, "device": "cpu"},
    )
    limits = SoakLimits(max_rss_growth_mb=args.max_rss_growth_mb, max_p99_ratio=args.max_p99_ratio)

    def show(sample):
        print(f"{sample.elapsed_s:7.0f} s  RSS {sample.rss_mb:7.1f} MB  fds {sample.fds:4d}  threads {sample.threads:3d}  "
              f"in {sample.frames_in:7d}  out {sample.frames_out:7d}  dropped {sample.dropped:7d}  "
              f"misses {sample.deadline_misses:6d}  p99 {sample.window_p99_ms:7.1f} ms", flush=True)

    rclpy.init()
    try:
        verdict = run_soak(settings, limits, show)
    finally:
        rclpy.try_shutdown()
    print()
    print((args.output / "soak.md").read_text())
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
