"""What the deployment path alone gains, before any pruning: the same detector, same weights,
same outputs, timed three ways interleaved in one run on onnxruntime's CPU provider.

1. the ONNX file as given, with onnxruntime's default graph optimizations (worker threads not
   spinning between runs, as for every model timed here);
2. the same file in prune_perception's onnxruntime backend, which turns off the QuickGelu
   fusion (it wraps every SiLU in two NCHWc layout reorders);
3. our own export of the imported weights (``prune-perception export``), where YOLOX's Focus is
   one 6x6 stride-2 convolution instead of four strided slices and a concatenation.

Prints p50/p99 and speed-ups against (1), and the largest output difference on real images.
Every compression report times its models as (3); this script shows how (3) relates to (1).

    python benchmarks/deployment_benchmark.py --shared ../shared/data [--runs 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from prune_perception.eval.latency_benchmark import measure_backend_latency
from prune_perception.export.onnx_export import export_onnx
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from prune_perception.runtime.class_names import COCO_CLASSES
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--variant", default="yolox_nano")
    parser.add_argument("--input-size", type=int, default=416)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--output", type=Path, default=Path("runs/bench_deployment"))
    args = parser.parse_args()
    model_path, images = args.shared / "models" / f"{args.variant}.onnx", args.shared / "coco128" / "images"
    if not model_path.exists() or not images.is_dir():
        print(f"missing shared data: {model_path} or {images}", file=sys.stderr)
        return 2
    spec = InputSpec(width=args.input_size, height=args.input_size)
    preprocess = Preprocessor(spec)
    inputs = [preprocess(cv2.imread(str(path)))[0] for path in sorted(images.glob("*.jpg"))[:16]]
    model = load_onnx_weights(build_yolox(args.variant), model_path, input_size=args.input_size)
    exported = export_onnx(model, args.output / f"{args.variant}.onnx", COCO_CLASSES, spec, sample_inputs=inputs[:4])

    backends = {
        "as given, onnxruntime defaults": OnnxRuntimeBackend(model_path, device="cpu", fuse_silu=True),
        "as given, prune_perception backend": OnnxRuntimeBackend(model_path, device="cpu"),
        "our export, prune_perception backend": OnnxRuntimeBackend(exported.path, device="cpu"),
    }
    outputs = {name: [backend.infer(tensor) for tensor in inputs] for name, backend in backends.items()}
    reference = outputs["as given, onnxruntime defaults"]
    latency = measure_backend_latency(backends, inputs, runs=args.runs, warmup=10)
    baseline = latency["as given, onnxruntime defaults"].p50_ms
    print(f"\n{args.variant} at {args.input_size}, onnxruntime CPU, {args.runs} interleaved runs each")
    print(f"{'':40s} {'p50 ms':>8} {'p99 ms':>8} {'speed-up':>9} {'max |output - as given|':>24}")
    for name, summary in latency.items():
        difference = max(float(np.abs(a - b).max()) for a, b in zip(outputs[name], reference))
        print(f"{name:40s} {summary.p50_ms:8.2f} {summary.p99_ms:8.2f} {baseline / summary.p50_ms:8.2f}x {difference:24.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
