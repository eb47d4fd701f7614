"""How much of the per-layer latency table the greedy allocation can save before it stops.

The greedy (``compress/allocation.py``) takes the step with the least damage per millisecond saved
until no group has a step the table times as faster. On small inputs, layer times are mostly launch
overhead and a noisy table shows plateaus; this prints, per input size and fresh table, the share
of the table's summed layer time that the greedy saves with and without the longer steps it tries
on a plateau. Both are run on the same table, so the comparison is within one measurement.

    python benchmarks/allocation_headroom.py [--shared ../shared/data] [--sizes 128x224,256x416] [--repeats 2] [--runs 30]

Needs ../shared/data (YOLOX-Nano ONNX and a dashcam clip); exits 2 with the reason without it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from prune_perception.compress.allocation import LayerLatencyTable, conv_shapes, greedy_allocation
from prune_perception.compress.batchnorm import reparameterize_batchnorm
from prune_perception.compress.sensitivity import scan_sensitivity
from prune_perception.data.frame_source import iter_frames
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sizes", default="128x224,256x416", help="HxW input sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="fresh tables per size")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per layer")
    args = parser.parse_args()
    model_path, clip = args.shared / "models" / "yolox_nano.onnx", args.shared / "video" / "solidWhiteRight.mp4"
    missing = [str(p) for p in (model_path, clip) if not p.exists()]
    if missing:
        print(f"allocation_headroom: missing {', '.join(missing)} (the shared data)", file=sys.stderr)
        return 2
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]

    model = load_onnx_weights(build_yolox("yolox_nano"), model_path, input_size=416).eval()
    preprocessor = Preprocessor(InputSpec(width=sizes[0][1], height=sizes[0][0]))
    frames = list(iter_frames(clip, max_frames=48))[::6]
    images = torch.from_numpy(np.concatenate([preprocessor(frame)[0] for frame in frames]))
    reparameterize_batchnorm(model, [images])
    scan = scan_sensitivity(model, images[:4], ratios=(0.3, 0.6), progress=False)

    print("| input | table sum ms | saved, ordinary steps | saved, with longer steps | timing s |")
    print("|---|---:|---:|---:|---:|")
    for _ in range(args.repeats):
        for height, width in sizes:
            start = time.perf_counter()
            shapes = conv_shapes(model, torch.zeros(1, 3, height, width))
            table = LayerLatencyTable(None, runs=args.runs, warmup=3)
            total = sum(table(shape) for shape in shapes.values())
            shares = [greedy_allocation(scan, shapes, table, total, best_effort=True, longer_steps=longer)
                      .estimated_saving_ms / total for longer in (False, True)]
            print(f"| {height}x{width} | {total:.2f} | {shares[0]:.0%} | {shares[1]:.0%} | "
                  f"{time.perf_counter() - start:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
