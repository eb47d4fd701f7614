"""Run detector_node and video_publisher as separate processes over real DDS, and record outputs.

Used by ``prune-perception live-demo``, the latency benchmark and the integration tests, so that
all three measure the node exactly as it runs on a vehicle: its own process, a camera publisher
in another, and this process as a subscriber of detections, latency topics and /diagnostics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64
from vision_msgs.msg import Detection2DArray

from prune_perception.errors import PrunePerceptionError
from prune_perception.ros.camera_streams import LATENCY_TOPICS
from prune_perception.ros.node_main import apply_fastdds_large_image_profile
from prune_perception.stamps import stamp_to_ns

DETECTOR_MODULE = "prune_perception.ros.detector_node"
VIDEO_PUBLISHER_MODULE = "prune_perception.ros.video_publisher_node"


class LiveSessionError(PrunePerceptionError):
    """A node process failed to start, died, or never became ready."""


def ros_arguments(params: dict[str, Any], params_files: list[Path] = (), remaps: dict[str, str] | None = None,
                  node_name: str | None = None, namespace: str | None = None) -> list[str]:
    """``--ros-args`` for a node process: params files first, then ``-p`` overrides, then remaps."""
    args = ["--ros-args"]
    for path in params_files:
        args += ["--params-file", str(path)]
    for name, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["-p", f"{name}:={text}"]
    for source, target in (remaps or {}).items():
        args += ["-r", f"{source}:={target}"]
    if node_name:
        args += ["-r", f"__node:={node_name}"]
    if namespace:
        args += ["-r", f"__ns:={namespace}"]
    return args


class NodeProcess:
    """One node in its own Python process (``python -m <module> --ros-args ...``), logging to a file."""

    def __init__(self, module: str, ros_args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.module, self.ros_args, self.log_path = module, ros_args, Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> "NodeProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.ros_args], stdout=log, stderr=subprocess.STDOUT, env=self.env
        )
        log.close()
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGINT (clean rclpy shutdown), then SIGKILL if it does not exit in ``timeout_s``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass
class ReceivedDetections:
    stamp_ns: int
    frame_id: str
    received_s: float  # time.time() at reception here
    msg: Detection2DArray


@dataclass
class DiagnosticSnapshot:
    received_s: float
    level: int
    message: str
    values: dict[str, str]


class LiveRecorder(Node):
    """Subscribes to a detector's outputs and keeps everything it receives."""

    def __init__(self, detector_name: str = "detector_node", detections_topic: str = "/detections") -> None:
        super().__init__(f"live_recorder_{os.getpid()}")
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.detector_name = detector_name
        self.detections: list[ReceivedDetections] = []
        self.latencies: dict[str, list[float]] = {name: [] for name in LATENCY_TOPICS}
        self.diagnostics: list[DiagnosticSnapshot] = []
        self.create_subscription(Detection2DArray, detections_topic, self._on_detections, reliable)
        for name in LATENCY_TOPICS:
            self.create_subscription(
                Float64, f"/{detector_name}/debug/{name}", lambda msg, name=name: self.latencies[name].append(msg.data), reliable
            )
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 100)

    def _on_detections(self, msg: Detection2DArray) -> None:
        self.detections.append(ReceivedDetections(stamp_to_ns(msg.header.stamp), msg.header.frame_id, time.time(), msg))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f"/{self.detector_name}:"):
                values = {kv.key: kv.value for kv in status.values}
                self.diagnostics.append(DiagnosticSnapshot(time.time(), status.level[0], status.message, values))

    def latest_diagnostics(self) -> DiagnosticSnapshot | None:
        return self.diagnostics[-1] if self.diagnostics else None

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rclpy.spin_once(self, timeout_sec=min(0.05, max(deadline - time.monotonic(), 0.0)))

    def spin_until(self, condition, timeout_s: float, watch: list[NodeProcess] = ()) -> bool:
        """Spin until ``condition()`` holds; False on timeout. Raises if a watched process died."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            for process in watch:
                if process.returncode is not None and process.returncode != 0:
                    raise LiveSessionError(
                        f"{process.module} exited with code {process.returncode}:\n{process.log_text()[-3000:]}"
                    )
            rclpy.spin_once(self, timeout_sec=0.05)
        return condition()


@dataclass
class LiveRunResult:
    frames_published: int
    detections: list[ReceivedDetections]
    latencies: dict[str, list[float]]
    final_diagnostics: DiagnosticSnapshot | None
    diagnostics: list[DiagnosticSnapshot]
    node_log: str
    publisher_log: str
    settings: dict[str, Any] = field(default_factory=dict)


def run_live_session(
    model_path: str | Path,
    video: str | Path,
    output_dir: str | Path,
    *,
    detector_params: dict[str, Any] | None = None,
    detector_params_files: list[Path] = (),
    frame_rate_hz: float = 0.0,
    max_frames: int = 0,
    total_frames: int = 0,
    width: int = 0,
    height: int = 0,
    expected_subscribers: int = 1,
    ready_timeout_s: float = 90.0,
    settle_s: float = 1.5,
    recorder: LiveRecorder | None = None,
) -> LiveRunResult:
    """Start a detector_node process, wait until its model is ready, play the video through it
    from a video_publisher process, and return what the node published.

    The publisher starts once ``expected_subscribers`` image subscribers are matched (the node,
    plus any the caller added). rclpy must be initialised in this process before calling.
    """
    output_dir = Path(output_dir)
    publisher_params = {
        "source": str(video), "frame_rate_hz": float(frame_rate_hz), "max_frames": max_frames,
        "total_frames": total_frames,
        "width": width, "height": height, "start_delay_s": 0.5, "qos_reliability": "best_effort",
        "wait_for_subscribers": expected_subscribers,
    }
    publisher = NodeProcess(VIDEO_PUBLISHER_MODULE, ros_arguments(publisher_params), output_dir / "video_publisher.log")
    result = run_with_player(model_path, publisher, output_dir, detector_params=detector_params,
                             detector_params_files=detector_params_files, ready_timeout_s=ready_timeout_s,
                             settle_s=settle_s, recorder=recorder)
    result.frames_published = _published_count(result.publisher_log)
    result.settings.update({"video": str(video), "frame_rate_hz": frame_rate_hz, "max_frames": max_frames,
                            "total_frames": total_frames, "width": width, "height": height})
    return result


def run_with_player(
    model_path: str | Path,
    player: NodeProcess,
    output_dir: str | Path,
    *,
    detector_params: dict[str, Any] | None = None,
    detector_params_files: list[Path] = (),
    detector_remaps: dict[str, str] | None = None,
    ready_timeout_s: float = 90.0,
    settle_s: float = 1.5,
    recorder: LiveRecorder | None = None,
) -> LiveRunResult:
    """Start a detector_node process, wait until its model is ready, then run ``player`` (a
    process that publishes images and exits when done) and return what the node published.
    ``frames_published`` is left 0: how to count depends on the player."""
    output_dir = Path(output_dir)
    apply_fastdds_large_image_profile()
    params = {"model_path": str(model_path), **(detector_params or {})}
    node = NodeProcess(DETECTOR_MODULE, ros_arguments(params, list(detector_params_files), detector_remaps),
                       output_dir / "detector_node.log")
    own_recorder = recorder is None
    recorder = recorder or LiveRecorder()
    try:
        with node:
            ready = recorder.spin_until(
                lambda: any(d.values.get("model_ready") == "true" for d in recorder.diagnostics), ready_timeout_s, [node]
            )
            if not ready:
                last = recorder.latest_diagnostics()
                raise LiveSessionError(
                    "detector_node did not become ready in time"
                    + (f": {last.message}" if last else " (no diagnostics received)")
                    + f"\n{node.log_text()[-3000:]}"
                )
            recorder.detections.clear()
            for values in recorder.latencies.values():
                values.clear()
            with player:
                recorder.spin_until(lambda: player.returncode is not None, 3600.0, [node, player])
                if player.returncode:
                    raise LiveSessionError(f"{player.module} exited with code {player.returncode}:\n"
                                           f"{player.log_text()[-3000:]}")
            recorder.spin_for(settle_s)
            published_before = len(recorder.diagnostics)
            recorder.spin_until(lambda: len(recorder.diagnostics) > published_before, 5.0, [node])
        return LiveRunResult(
            frames_published=0,
            detections=list(recorder.detections),
            latencies={name: list(values) for name, values in recorder.latencies.items()},
            final_diagnostics=recorder.latest_diagnostics(),
            diagnostics=list(recorder.diagnostics),
            node_log=node.log_text(),
            publisher_log=player.log_text(),
            settings={"model_path": str(model_path), **params},
        )
    finally:
        if own_recorder:
            recorder.destroy_node()


def _published_count(log: str) -> int:
    """The count from video_publisher's final 'published N frames' log line (0 if absent)."""
    for line in reversed(log.splitlines()):
        marker = "published "
        if marker in line and " frames in " in line:
            return int(line.split(marker, 1)[1].split()[0])
    return 0
