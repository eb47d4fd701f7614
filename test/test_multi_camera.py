"""detector_node with several cameras in one process, over real DDS: one batched model call per
cycle, each camera's detections with its own header and in its own pixels, a camera that stops
costs the others nothing, and bad input is counted on its own camera."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from prune_perception.ros.image_conversion import array_to_image_msg
from prune_perception.ros.live_session import DETECTOR_MODULE, NodeProcess, ros_arguments

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
CAMERAS = ("front", "left", "rear")
NAMESPACE = "/surround"


class SurroundProbe(Node):
    """Publishes each camera's images and records its detections and the node's diagnostics."""

    def __init__(self) -> None:
        super().__init__("surround_probe")
        self.image_pubs = {c: self.create_publisher(Image, f"{NAMESPACE}/{c}/image_raw", RELIABLE) for c in CAMERAS}
        self.detections: dict[str, list[Detection2DArray]] = {c: [] for c in CAMERAS}
        for camera in CAMERAS:
            self.create_subscription(Detection2DArray, f"{NAMESPACE}/{camera}/detections",
                                     lambda msg, camera=camera: self.detections[camera].append(msg), RELIABLE)
        self.statuses: dict[str, dict[str, str]] = {}
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f"{NAMESPACE}/detector_node:"):
                self.statuses[status.name.split(": ", 1)[1]] = {kv.key: kv.value for kv in status.values}

    def spin_until(self, condition, timeout_s: float, process: NodeProcess) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not condition():
            rclpy.spin_once(self, timeout_sec=0.02)
            if process.returncode is not None:
                raise AssertionError(f"node exited with {process.returncode}:\n{process.log_text()[-3000:]}")
        return condition()

    def stamps(self, camera: str) -> set[int]:
        return {m.header.stamp.sec for m in self.detections[camera]}


def header(camera: str, sec: int) -> Header:
    return Header(stamp=TimeMsg(sec=sec), frame_id=f"{camera}_optical")


@pytest.fixture(scope="module")
def camera_frames(dashcam_frames):
    """front and left: the 960x540 clip; rear: the same frames at 640x360."""
    return {"front": dashcam_frames[:12], "left": dashcam_frames[:12],
            "rear": [cv2.resize(f, (640, 360), interpolation=cv2.INTER_AREA) for f in dashcam_frames[:12]]}


@pytest.fixture(scope="module")
def surround(rclpy_session, batched_yolox_path, tmp_path_factory):
    arguments = ros_arguments({"model_path": str(batched_yolox_path), "intra_op_threads": 1, "qos_reliability": "reliable",
                               "cameras": list(CAMERAS), "batch_wait_ms": 50.0, "statistics_window_s": 60.0},
                              namespace=NAMESPACE)
    process = NodeProcess(DETECTOR_MODULE, arguments, tmp_path_factory.mktemp("surround") / "node.log").start()
    probe = SurroundProbe()
    ready = probe.spin_until(lambda: probe.statuses.get("camera front", {}).get("model_ready") == "true", 60, process)
    assert ready, process.log_text()[-3000:]
    assert probe.spin_until(lambda: all(p.get_subscription_count() for p in probe.image_pubs.values()), 10, process)
    yield process, probe
    probe.destroy_node()
    assert process.stop() == 0, process.log_text()[-3000:]


def test_each_camera_gets_its_own_detections_from_one_batched_call(surround, camera_frames):
    process, probe = surround
    for second in range(1, 7):
        for camera in CAMERAS:
            probe.image_pubs[camera].publish(array_to_image_msg(camera_frames[camera][second], "bgr8", header(camera, second)))
        assert probe.spin_until(lambda: all(second in probe.stamps(c) for c in CAMERAS), 20, process), second
    for camera in CAMERAS:
        for msg in probe.detections[camera]:
            assert msg.header.frame_id == f"{camera}_optical"  # each image's own header
    width, height = 640, 360
    for second in range(1, 7):
        front = next(m for m in probe.detections["front"] if m.header.stamp.sec == second)
        rear = next(m for m in probe.detections["rear"] if m.header.stamp.sec == second)
        assert front.detections and rear.detections
        for detection in rear.detections:  # in the rear camera's own 640x360 pixels
            assert 0 <= detection.bbox.center.position.x <= width and 0 <= detection.bbox.center.position.y <= height
        # the same scene at 2/3 the size: the best detection is the same object at 2/3 the coordinates
        best_front = max(front.detections, key=lambda d: d.results[0].hypothesis.score)
        best_rear = max(rear.detections, key=lambda d: d.results[0].hypothesis.score)
        np.testing.assert_allclose([best_rear.bbox.center.position.x, best_rear.bbox.center.position.y],
                                   [best_front.bbox.center.position.x * 2 / 3, best_front.bbox.center.position.y * 2 / 3],
                                   atol=12.0)
    assert probe.spin_until(lambda: int(probe.statuses.get("batcher", {}).get("batch_size_3", "0")) >= 3, 5, process)
    batcher = probe.statuses["batcher"]
    assert batcher["cameras"] == "3" and batcher["model_max_batch"] == "dynamic"
    assert "batch_size_3" in batcher and int(batcher["total_cycles"]) >= 6


def test_a_camera_that_stops_does_not_slow_the_others(surround, camera_frames):
    process, probe = surround
    time.sleep(1.5)  # every camera out of the live window: rear now stays silent
    sent = []
    started = time.monotonic()
    for second in range(100, 110):
        for camera in ("front", "left"):
            probe.image_pubs[camera].publish(array_to_image_msg(camera_frames[camera][second % 12], "bgr8",
                                                                header(camera, second)))
        sent.append(second)
        probe.spin_until(lambda: False, 0.2, process)  # 5 Hz
    assert probe.spin_until(lambda: all(set(sent) <= probe.stamps(c) for c in ("front", "left")), 10, process)
    assert time.monotonic() - started < 6.0
    assert not {s for s in probe.stamps("rear") if s >= 100}
    assert probe.spin_until(lambda: int(probe.statuses["camera front"]["total_frames_out"]) >= 16, 5, process)
    assert probe.statuses["camera front"]["dropped_frames"] == "0"


def test_bad_input_on_one_camera_is_counted_on_that_camera_only(surround, camera_frames):
    process, probe = surround
    truncated = Image(header=header("left", 200), height=540, width=960, encoding="bgr8", step=2880, data=bytes(1000))
    probe.image_pubs["left"].publish(truncated)
    for camera in ("front", "rear"):
        probe.image_pubs[camera].publish(array_to_image_msg(camera_frames[camera][0], "bgr8", header(camera, 200)))
    assert probe.spin_until(lambda: all(200 in probe.stamps(c) for c in ("front", "rear")), 20, process)
    assert probe.spin_until(lambda: probe.statuses["camera left"]["total_input_errors"] == "1", 5, process)
    assert 200 not in probe.stamps("left")
    assert "truncated image" in probe.statuses["camera left"]["last_input_error"]
    assert probe.statuses["camera front"]["total_input_errors"] == "0"
    assert probe.statuses["camera rear"]["total_input_errors"] == "0"
    assert "camera 'left'" in process.log_text()
