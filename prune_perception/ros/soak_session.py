"""A soak run: detector_node fed by a looping video_publisher for a long time, its process
sampled every few seconds, and the verdict of :mod:`prune_perception.eval.soak`.

The monitor keeps only what the verdict needs (a float per published frame and the newest
diagnostics), so that a 30-minute run does not grow the monitor itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64

from prune_perception.eval.soak import ProcessSample, SoakLimits, SoakVerdict, judge, read_process, write_soak_report
from prune_perception.ros.live_session import (
    DETECTOR_MODULE,
    VIDEO_PUBLISHER_MODULE,
    LiveSessionError,
    NodeProcess,
    ros_arguments,
)
from prune_perception.ros.node_main import apply_fastdds_large_image_profile


@dataclass
class SoakSettings:
    model: Path
    video: Path
    output_dir: Path
    duration_s: float = 1800.0
    rate_hz: float = 30.0
    width: int = 960
    height: int = 540
    sample_every_s: float = 10.0
    warmup_s: float = 60.0
    latency_window_s: float = 300.0
    latency_budget_ms: float = 100.0
    preloaded_frames: int = 150
    detector_params: dict[str, Any] = field(default_factory=dict)
    node_module: str = DETECTOR_MODULE
    node_env: dict[str, str] | None = None


class SoakMonitor(Node):
    def __init__(self, detector_name: str = "detector_node") -> None:
        super().__init__("soak_monitor")
        self.started = time.monotonic()
        self.latencies: list[tuple[float, float]] = []
        self.diagnostics: dict[str, str] = {}
        self.level = -1
        self._prefix = f"/{detector_name}:"
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Float64, f"/{detector_name}/debug/end_to_end_ms", self._on_latency, reliable)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_latency(self, msg: Float64) -> None:
        self.latencies.append((time.monotonic() - self.started, msg.data))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(self._prefix):
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.level = status.level[0]

    def value(self, key: str, default: float = 0.0) -> float:
        try:
            return float(self.diagnostics.get(key, default))
        except ValueError:
            return default


def run_soak(settings: SoakSettings, limits: SoakLimits,
             progress: Callable[[ProcessSample], None] | None = None) -> SoakVerdict:
    """Run the soak and write soak.csv/png/json/md; rclpy must be initialised in this process."""
    apply_fastdds_large_image_profile()
    out = Path(settings.output_dir)
    params = {"model_path": str(settings.model), "latency_budget_ms": settings.latency_budget_ms, **settings.detector_params}
    node = NodeProcess(settings.node_module, ros_arguments(params), out / "detector_node.log", settings.node_env)
    publisher = NodeProcess(VIDEO_PUBLISHER_MODULE, ros_arguments({
        "source": str(settings.video), "frame_rate_hz": settings.rate_hz, "loop": True,
        "max_frames": settings.preloaded_frames, "width": settings.width, "height": settings.height,
        "qos_reliability": "best_effort", "wait_for_subscribers": 1, "start_delay_s": 0.5,
    }), out / "video_publisher.log")
    monitor = SoakMonitor()
    samples: list[ProcessSample] = []
    try:
        with node:
            deadline = time.monotonic() + 120.0
            while monitor.diagnostics.get("model_ready") != "true":
                if time.monotonic() > deadline or node.returncode is not None:
                    raise LiveSessionError(f"detector_node did not become ready:\n{node.log_text()[-3000:]}")
                rclpy.spin_once(monitor, timeout_sec=0.1)
            with publisher:
                monitor.started = started = time.monotonic()
                monitor.latencies.clear()
                next_sample = started
                while (now := time.monotonic()) < started + settings.duration_s + 1e-3:
                    for process in (node, publisher):
                        if process.returncode is not None:
                            raise LiveSessionError(
                                f"{process.module} exited with {process.returncode} after {now - started:.0f} s:\n"
                                f"{process.log_text()[-3000:]}")
                    if now >= next_sample:
                        assert node.process is not None
                        rss_mb, fds, threads = read_process(node.process.pid)
                        sample = ProcessSample(
                            elapsed_s=now - started, rss_mb=rss_mb, fds=fds, threads=threads,
                            frames_in=int(monitor.value("total_frames_in")),
                            frames_out=int(monitor.value("total_frames_out")),
                            dropped=int(monitor.value("total_dropped_frames")),
                            deadline_misses=int(monitor.value("total_deadline_misses")),
                            inference_errors=int(monitor.value("total_inference_errors")),
                            window_p50_ms=monitor.value("end_to_end_p50_ms", float("nan")),
                            window_p99_ms=monitor.value("end_to_end_p99_ms", float("nan")),
                            level=monitor.level,
                        )
                        samples.append(sample)
                        if progress is not None:
                            progress(sample)
                        next_sample += settings.sample_every_s
                    rclpy.spin_once(monitor, timeout_sec=min(0.1, max(next_sample - now, 0.0)))
    finally:
        monitor.destroy_node()
    verdict = judge(samples, monitor.latencies, settings.warmup_s, settings.latency_window_s, limits)
    report_settings = {
        "model": str(settings.model), "video": str(settings.video), "duration_s": settings.duration_s,
        "rate_hz": settings.rate_hz, "width": settings.width, "height": settings.height,
        "sample_every_s": settings.sample_every_s, "warmup_s": settings.warmup_s,
        "latency_budget_ms": settings.latency_budget_ms, "detector_params": settings.detector_params,
        "node_module": settings.node_module,
    }
    write_soak_report(out, verdict, samples, monitor.latencies, report_settings, limits)
    return verdict
