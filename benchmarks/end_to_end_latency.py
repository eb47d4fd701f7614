"""End-to-end latency of detectors on real camera frames, as the node runs them: the project's
runtime (``Detector``: letterbox and normalization, the model call, decode, NMS and boxes back to
the frame) on each frame of a clip, the models taking turns frame by frame (interleaved, so that
the noise of a shared CPU falls on all of them alike).

    python benchmarks/end_to_end_latency.py --model given=../shared/data/models/yolox_nano.onnx \\
        --model student=runs/recipe/ladder/speedup_1.30/student.onnx [--clip ../shared/data/video/solidWhiteRight.mp4]
        [--frames 100] [--rounds 3]

Prints p50/p95 of the total per model, each stage's p50, and every model's speed-up against the
first. A model without a sidecar gets the runtime's defaults (the file as given).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from prune_perception.data.frame_source import iter_frames
from prune_perception.runtime.detector import Detector


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--clip", type=Path, default=Path("../shared/data/video/solidWhiteRight.mp4"))
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the frames")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    models = dict(item.split("=", 1) for item in args.model)
    missing = [path for path in [args.clip, *map(Path, models.values())] if not Path(path).exists()]
    if missing:
        print(f"missing: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    frames = list(iter_frames(args.clip, max_frames=args.frames))
    detectors = {name: Detector(path, backend="onnxruntime", device="cpu", intra_op_threads=args.threads)
                 for name, path in models.items()}
    for detector in detectors.values():
        detector.warmup(5)
    totals: dict[str, list[float]] = {name: [] for name in detectors}
    stages: dict[str, list[tuple[float, float, float]]] = {name: [] for name in detectors}
    names = list(detectors)
    for round_index in range(args.rounds):
        for index, frame in enumerate(frames):
            order = names[(index + round_index) % len(names):] + names[:(index + round_index) % len(names)]
            for name in order:  # rotating order: no model always runs right after another
                timings = detectors[name].detect(frame).timings
                totals[name].append(timings.total_ms)
                stages[name].append((timings.preprocess_ms, timings.inference_ms, timings.postprocess_ms))
    height, width = frames[0].shape[:2]
    reference = float(np.median(totals[names[0]]))
    print(f"\n## End to end on {len(frames)} {width}x{height} frames of {args.clip.name}, {args.rounds} rounds, "
          f"interleaved ({platform.processor() or platform.machine()})")
    print(f"{'model':<12} {'p50 ms':>7} {'p95 ms':>7} {'pre':>6} {'infer':>6} {'post':>6} {'speed-up':>9}")
    results = {}
    for name in names:
        p50, p95 = np.percentile(totals[name], [50, 95])
        pre, infer, post = np.median(np.array(stages[name]), axis=0)
        results[name] = {"path": models[name], "p50_ms": p50, "p95_ms": p95, "preprocess_p50_ms": pre,
                         "inference_p50_ms": infer, "postprocess_p50_ms": post, "speedup": reference / p50}
        print(f"{name:<12} {p50:>7.2f} {p95:>7.2f} {pre:>6.2f} {infer:>6.2f} {post:>6.2f} {reference / p50:>8.2f}x")
    for detector in detectors.values():
        detector.close()
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"clip": str(args.clip), "frames": len(frames), "rounds": args.rounds,
                                           "models": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
