"""One camera of a detector node: its topics, publishers and statistics, and the frames that pass
through it (as received, then converted to an array)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sensor_msgs.msg import CompressedImage, Image

from prune_perception.eval.latency import STAGES, FrameStatistics
from prune_perception.runtime.tracking import DetectionTracker, TrackerConfig

IMAGE_TOPIC = "image_raw"
COMPRESSED_IMAGE_TOPIC = "image_raw/compressed"
DETECTIONS_TOPIC = "detections"
LABEL_INFO_TOPIC = "label_info"
"""vision_msgs/LabelInfo, latched: the serving model's class ids and names (one per node)."""
LATENCY_TOPICS = tuple(f"{stage}_ms" for stage in STAGES) + ("in_node_ms", "end_to_end_ms")
"""Per-frame std_msgs/Float64 topics under ``~/debug/`` (``~/<camera>/debug/`` with cameras)."""
CAMERA_LIVE_WINDOW_S = 1.0
"""A camera that sent nothing for this long is not waited for by an inference cycle."""


class ClockWatch:
    """How long (steady time) the ROS clock has not moved: a stopped /clock under use_sim_time."""

    def __init__(self) -> None:
        self._last_ns: int | None = None
        self._moved_s = time.monotonic()

    def observe(self, now_ns: int) -> tuple[float, float]:
        """(seconds since the clock last moved, the clock in seconds)."""
        steady = time.monotonic()
        if now_ns != self._last_ns:
            self._last_ns, self._moved_s = now_ns, steady
        return steady - self._moved_s, now_ns / 1e9


@dataclass
class ReceivedFrame:
    camera: "CameraStream"
    msg: Image | CompressedImage
    received_s: float  # time.perf_counter() when the callback ran


@dataclass
class ConvertedFrame:
    camera: "CameraStream"
    frame: ReceivedFrame
    image: Any
    pixel_format: str
    conversion_ms: float


class CameraStream:
    """One camera's topics, publishers and statistics (name "" for the single-camera node)."""

    def __init__(self, name: str, params: dict[str, Any], tracker: TrackerConfig | None = None) -> None:
        self.name = name
        self.tracker = DetectionTracker(tracker) if tracker is not None else None
        """This camera's own tracker (track state never crosses cameras); None: no tracking."""
        prefix = f"{name}/" if name else ""
        transport = COMPRESSED_IMAGE_TOPIC if params["input_transport"] == "compressed" else IMAGE_TOPIC
        self.image_topic = prefix + transport
        self.detections_topic = prefix + DETECTIONS_TOPIC
        self.debug_namespace = f"~/{name}/debug" if name else "~/debug"
        self.stats = FrameStatistics(params["latency_budget_ms"], params["statistics_window_s"], params["deadline_reference"])
        self.last_input_error: str | None = None
        self.subscription: Any = None
        self.detections_pub: Any = None
        self.latency_pubs: dict[str, Any] = {}
        self.debug_image_pub: Any = None
