"""Latency of detector_node measured live: a video_publisher process sends the dashcam clip at
its native 960x540 and 25 fps over DDS, the node runs onnxruntime on the CPU, and this process
records the node's per-frame stage timings.

Prints, per stage and end to end, the median and p99, and the ratio of in-node time (message
received -> detections published) to inference time, within the same run. Target: <= 1.15.

    python benchmarks/detector_node_latency.py --model ../shared/data/models/yolox_nano.onnx \
        --video ../shared/data/video/solidWhiteRight.mp4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rclpy

from prune_perception.eval.latency_report import format_summary, summarize_latency_run, write_latency_report
from prune_perception.ros.live_session import run_live_session
from prune_perception.ros.node_main import apply_fastdds_large_image_profile

TARGET_RATIO = 1.15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--frame-rate", type=float, default=0.0, help="0: the video's own rate")
    parser.add_argument("--runs", type=int, default=2, help="live runs of the whole clip")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    parser.add_argument("--output", type=Path, default=Path("runs/bench_detector_node"))
    args = parser.parse_args()
    for path in (args.model, args.video):
        if not path.exists():
            print(f"missing input: {path}", file=sys.stderr)
            return 2

    apply_fastdds_large_image_profile()
    rclpy.init()
    latencies: dict[str, list[float]] = {}
    counters: dict[str, float] = {}
    published = 0
    try:
        for run in range(args.runs):
            result = run_live_session(
                args.model, args.video, args.output / f"run{run}", frame_rate_hz=args.frame_rate,
                detector_params={"intra_op_threads": args.threads, "latency_budget_ms": 50.0, "device": "cpu"},
            )
            published += result.frames_published
            for name, values in result.latencies.items():
                latencies.setdefault(name, []).extend(values[5:])  # first frames of a run: warm-up
            diagnostics = result.final_diagnostics.values if result.final_diagnostics else {}
            for key in ("total_frames_in", "total_dropped_frames", "total_input_errors"):
                counters[key] = counters.get(key, 0.0) + float(diagnostics.get(key, 0.0))
            print(f"run {run}: {len(result.latencies['end_to_end_ms'])} frames processed, "
                  f"{diagnostics.get('total_dropped_frames', '?')} dropped")
    finally:
        rclpy.try_shutdown()

    summary = summarize_latency_run(latencies, published, 50.0, node_counters={k: str(v) for k, v in counters.items()})
    title = f"detector_node on {args.video.name} ({args.model.name}, onnxruntime CPU)"
    write_latency_report(summary, latencies, args.output, title)
    print(format_summary(summary, title))
    in_node, inference = np.asarray(latencies["in_node_ms"]), np.asarray(latencies["inference_ms"])
    ratio = summary["in_node_over_inference_p50"]
    print(f"\nnode overhead on top of inference: {np.median(in_node - inference):.2f} ms median per frame")
    print(f"in-node / inference (medians): {ratio:.3f}  target <= {TARGET_RATIO}: "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}")
    print(f"mean of per-frame ratios: {np.mean(in_node / inference):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
