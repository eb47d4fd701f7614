"""Several 960x540 cameras at 10 Hz each, over real DDS: one batched detector_node for the whole
rig against one detector_node process per camera, in one run.

This process publishes every camera's frames (the dashcam clip, stamped at publication) on
``/bench/<camera>/image_raw`` and records each processed frame's end-to-end latency from the
nodes' ``end_to_end_ms`` topics. The batched node runs with ``cameras: [cam0, ...]``; the separate
nodes each run in the namespace ``/bench/<camera>``, so both read the same topics. Both use a
batch-capable export of the shared YOLOX-Nano (dynamic batch axis; one call per cycle for the
batched node, batches of one for the others).

Per configuration: aggregate frames/s processed, per-camera end-to-end p50/p99 (the worst camera),
frames not processed (dropped by the node or lost), and deadline misses against the budget.
Target on the 2-core CPU: at 6 cameras the batched node processes >= 1.2x the frames/s of separate
nodes, with per-camera p99 within the budget.

    .venv/bin/python benchmarks/multi_camera.py --cameras 1,2,4,6 --duration 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Float64, Header

from prune_perception.data.frame_source import iter_frames
from prune_perception.export.onnx_export import export_onnx
from prune_perception.files import write_json_atomic
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.ros.image_conversion import array_to_image_msg
from prune_perception.ros.live_session import DETECTOR_MODULE, NodeProcess, ros_arguments
from prune_perception.ros.node_main import apply_fastdds_large_image_profile
from prune_perception.runtime.class_names import COCO_CLASSES
from prune_perception.runtime.metadata import InputSpec

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGET_SPEEDUP = 1.2
NAMESPACE = "/bench"


class RigFeeder(Node):
    """Publishes every camera at ``rate_hz`` and records the end-to-end latencies the nodes publish."""

    def __init__(self, cameras: list[str], frames: list[np.ndarray], debug_topics: dict[str, str]) -> None:
        super().__init__("rig_feeder")
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.cameras, self.frames = cameras, frames
        self.pubs = {camera: self.create_publisher(Image, f"{NAMESPACE}/{camera}/image_raw", qos) for camera in cameras}
        self.latencies: dict[str, list[float]] = {camera: [] for camera in cameras}
        reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.debug_topics = list(debug_topics.values())
        for camera, topic in debug_topics.items():
            self.create_subscription(Float64, topic, lambda msg, camera=camera: self.latencies[camera].append(msg.data),
                                     reliable)
        self.ready: set[str] = set()  # diagnostic statuses whose model is loaded
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(NAMESPACE) and any(kv.key == "model_ready" and kv.value == "true" for kv in status.values):
                self.ready.add(status.name)

    def wait_for_nodes(self, processes: list[NodeProcess], timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(pub.get_subscription_count() > 0 for pub in self.pubs.values()) and len(self.ready) >= len(self.cameras) \
                    and all(self.count_publishers(topic) > 0 for topic in self.debug_topics):
                return
            for process in processes:
                if process.returncode is not None:
                    raise RuntimeError(f"{process.module} exited:\n{process.log_text()[-3000:]}")
            rclpy.spin_once(self, timeout_sec=0.1)
        raise RuntimeError("the detector nodes did not come up in time")

    def feed(self, rate_hz: float, duration_s: float, warmup_s: float) -> int:
        """Publish for ``warmup_s`` + ``duration_s``; latencies of the warm-up are discarded.
        Returns the frames published per camera after the warm-up."""
        period, index, sent = 1.0 / rate_hz, 0, 0
        start = time.monotonic()
        next_tick = start
        measuring = False
        while time.monotonic() < start + warmup_s + duration_s:
            if not measuring and time.monotonic() >= start + warmup_s:
                measuring, sent = True, 0
                for values in self.latencies.values():
                    values.clear()
            stamp = self.get_clock().now().to_msg()
            for camera in self.cameras:
                self.pubs[camera].publish(array_to_image_msg(self.frames[index % len(self.frames)], "bgr8",
                                                             Header(stamp=stamp, frame_id=camera)))
            index, sent = index + 1, sent + 1
            next_tick += period
            while time.monotonic() < next_tick:
                rclpy.spin_once(self, timeout_sec=max(0.0, min(0.01, next_tick - time.monotonic())))
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle:
            rclpy.spin_once(self, timeout_sec=0.01)
        return sent


def batch_capable_model(output: Path, height: int, width: int) -> Path:
    path = output / f"yolox_nano_{height}x{width}_batch.onnx"
    if not path.exists():
        model = load_onnx_weights(build_yolox("yolox_nano"), SHARED / "models" / "yolox_nano.onnx", input_size=416).eval()
        export_onnx(model, path, COCO_CLASSES, InputSpec(width=width, height=height), dynamic_batch=True)
    return path


def run_configuration(mode: str, cameras: list[str], model: Path, frames: list[np.ndarray], args) -> dict:
    log_dir = args.output / f"{mode}_{len(cameras)}"
    common = {"model_path": str(model), "latency_budget_ms": args.budget_ms, "intra_op_threads": args.threads,
              "qos_depth": 1, "device": "cpu"}
    if mode == "batched":
        params = {**common, "cameras": cameras, "batch_wait_ms": args.batch_wait_ms}
        processes = [NodeProcess(DETECTOR_MODULE, ros_arguments(params, namespace=NAMESPACE), log_dir / "node.log")]
        debug = {c: f"{NAMESPACE}/detector_node/{c}/debug/end_to_end_ms" for c in cameras}
    else:
        processes = [NodeProcess(DETECTOR_MODULE, ros_arguments(common, namespace=f"{NAMESPACE}/{c}"), log_dir / f"{c}.log")
                     for c in cameras]
        debug = {c: f"{NAMESPACE}/{c}/detector_node/debug/end_to_end_ms" for c in cameras}
    feeder = RigFeeder(cameras, frames, debug)
    try:
        for process in processes:
            process.start()
        feeder.wait_for_nodes(processes)
        sent = feeder.feed(args.rate, args.duration, args.warmup)
        latencies = {c: np.asarray(v) for c, v in feeder.latencies.items()}
    finally:
        for process in processes:
            process.stop()
        feeder.destroy_node()
    processed = sum(len(v) for v in latencies.values())
    per_camera = {c: {"processed": int(len(v)), "p50_ms": float(np.percentile(v, 50)) if len(v) else float("nan"),
                      "p99_ms": float(np.percentile(v, 99)) if len(v) else float("nan"),
                      "misses": int((v > args.budget_ms).sum())} for c, v in latencies.items()}
    return {
        "mode": mode, "cameras": len(cameras), "sent_per_camera": sent, "fps": processed / args.duration,
        "offered_fps": len(cameras) * sent / args.duration,
        "not_processed": len(cameras) * sent - processed, "misses": sum(c["misses"] for c in per_camera.values()),
        "worst_p50_ms": max(c["p50_ms"] for c in per_camera.values()),
        "worst_p99_ms": max(c["p99_ms"] for c in per_camera.values()), "per_camera": per_camera,
    }


def plot(results: list[dict], path: Path, budget_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (fps_axis, p99_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, marker in (("batched", "o-"), ("separate", "s--")):
        rows = [r for r in results if r["mode"] == mode]
        counts = [r["cameras"] for r in rows]
        fps_axis.plot(counts, [r["fps"] for r in rows], marker, label=f"{mode} node{'s' if mode == 'separate' else ''}")
        p99_axis.plot(counts, [r["worst_p99_ms"] for r in rows], marker, label=mode)
    rows = [r for r in results if r["mode"] == "batched"]
    fps_axis.plot([r["cameras"] for r in rows], [r["offered_fps"] for r in rows], ":", color="gray", label="offered")
    p99_axis.axhline(budget_ms, color="red", linestyle=":", label="budget")
    fps_axis.set(xlabel="cameras (10 Hz each)", ylabel="frames/s processed", title="throughput")
    p99_axis.set(xlabel="cameras", ylabel="worst camera's end-to-end p99 (ms)", title="latency")
    fps_axis.legend()
    p99_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", default="1,2,4,6", help="camera counts to run")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second per camera")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per configuration")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds fed before measuring")
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--batch-wait-ms", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of every node (0: runtime default)")
    parser.add_argument("--input", default="416x416", help="network input HxW of the batch-capable export")
    parser.add_argument("--output", type=Path, default=Path("runs/bench_multi_camera"))
    args = parser.parse_args()
    video = SHARED / "video" / "solidWhiteRight.mp4"
    for needed in (video, SHARED / "models" / "yolox_nano.onnx"):
        if not needed.exists():
            print(f"missing input: {needed} (../shared/data beside the repository)", file=sys.stderr)
            return 2
    args.output.mkdir(parents=True, exist_ok=True)
    height, width = (int(v) for v in args.input.lower().split("x"))
    model = batch_capable_model(args.output, height, width)
    frames = list(iter_frames(video, max_frames=50))
    counts = [int(c) for c in args.cameras.split(",")]
    apply_fastdds_large_image_profile()
    rclpy.init()
    results = []
    started = time.monotonic()
    try:
        for count in counts:  # interleaved: each count runs both modes back to back
            cameras = [f"cam{i}" for i in range(count)]
            for mode in ("batched", "separate"):
                result = run_configuration(mode, cameras, model, frames, args)
                results.append(result)
                print(f"{mode:8s} {count} cameras: {result['fps']:.1f} frames/s of {result['offered_fps']:.0f} offered, "
                      f"worst p99 {result['worst_p99_ms']:.1f} ms", flush=True)
    finally:
        rclpy.try_shutdown()
    wall = time.monotonic() - started
    print(f"\n{len(counts)} rig sizes x 2 modes, {args.duration:g} s measured each, {wall / 60:.1f} min wall, "
          f"{args.rate:g} Hz per camera, 960x540 frames, {model.name}, onnxruntime CPU, budget {args.budget_ms:g} ms\n")
    print("| cameras | mode | frames/s | offered | not processed | worst p50 ms | worst p99 ms | misses |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['cameras']} | {r['mode']} | {r['fps']:.1f} | {r['offered_fps']:.0f} | {r['not_processed']} | "
              f"{r['worst_p50_ms']:.1f} | {r['worst_p99_ms']:.1f} | {r['misses']} |")
    largest = max(counts)
    batched = next(r for r in results if r["mode"] == "batched" and r["cameras"] == largest)
    separate = next(r for r in results if r["mode"] == "separate" and r["cameras"] == largest)
    ratio = batched["fps"] / max(separate["fps"], 1e-9)
    met = ratio >= TARGET_SPEEDUP and batched["worst_p99_ms"] <= args.budget_ms
    print(f"\nat {largest} cameras: batched {ratio:.2f}x the frames/s of separate nodes, worst p99 "
          f"{batched['worst_p99_ms']:.1f} ms (budget {args.budget_ms:g}); target >= {TARGET_SPEEDUP}x within the budget: "
          f"{'met' if met else 'NOT met'}")
    write_json_atomic(args.output / "results.json", {"settings": {k: str(v) for k, v in vars(args).items()},
                                                     "wall_s": wall, "results": results})
    plot(results, args.output / "multi_camera.png", args.budget_ms)
    print(f"wrote {args.output / 'results.json'} and {args.output / 'multi_camera.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
