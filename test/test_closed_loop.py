"""Simulation in the loop: sim_camera -> detector_node -> evaluator, three processes over DDS."""

import math
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from tiny_models import constant_detector
from vision_msgs.msg import Detection2DArray

from prune_perception.ros.live_session import NodeProcess, ros_arguments
from prune_perception.ros.node_main import apply_fastdds_large_image_profile
from prune_perception.sim.scenes import SCENE_CLASSES, SceneConfig, SceneGenerator

WIDTH, HEIGHT, FRAMES = 320, 192, 30


class Listener(Node):
    def __init__(self):
        super().__init__("closed_loop_listener")
        self.images, self.infos, self.truth, self.evaluations = [], [], [], []
        self.create_subscription(Image, "image_raw", self.images.append, qos_profile_sensor_data)
        self.create_subscription(CameraInfo, "camera_info", self.infos.append, qos_profile_sensor_data)
        self.create_subscription(Detection2DArray, "ground_truth", self.truth.append, 100)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 100)

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.startswith("/evaluator"):
                self.evaluations.append({kv.key: kv.value for kv in status.values})

    def spin_until(self, condition, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not condition():
            rclpy.spin_once(self, timeout_sec=0.05)
        return condition()


@pytest.fixture(scope="module")
def listener(rclpy_session):
    apply_fastdds_large_image_profile()
    node = Listener()
    yield node
    node.destroy_node()


def test_sim_detector_evaluator_loop(listener, tmp_path):
    model = constant_detector(tmp_path / "constant.onnx", (100, 60, 140, 100), 0.9, classes=SCENE_CLASSES)
    sim_params = {"width": WIDTH, "height": HEIGHT, "frame_rate_hz": 10.0, "seed": 5, "total_frames": FRAMES,
                  "wait_for_subscribers": 2, "wait_for_truth_subscribers": 2, "exit_when_done": False}
    detector = NodeProcess("prune_perception.ros.detector_node",
                           ros_arguments({"model_path": str(model), "use_sim_time": True, "score_threshold": 0.05}),
                           tmp_path / "detector.log")
    evaluator = NodeProcess("prune_perception.ros.evaluator_node",
                            ros_arguments({"use_sim_time": True, "image_width": WIDTH, "image_height": HEIGHT,
                                           "diagnostics_period_s": 0.5}), tmp_path / "evaluator.log")
    sim = NodeProcess("prune_perception.ros.sim_camera_node", ros_arguments(sim_params), tmp_path / "sim.log")
    with detector, evaluator:
        time.sleep(2.0)  # the detector loads its model before the simulation starts
        with sim:
            done = listener.spin_until(
                lambda: any(int(e["frames_matched"]) + int(e["frames_missed"]) >= FRAMES for e in listener.evaluations), 60)
            assert done, f"evaluator saw: {listener.evaluations[-1:]}\n{evaluator.log_text()[-2000:]}"
    final = listener.evaluations[-1]
    assert int(final["frames_matched"]) >= FRAMES - 3  # frames before the first detection may be missed
    assert 0.0 <= float(final["ap50"]) <= 1.0
    latency = float(final["latency_p50_ms"])
    assert math.isfinite(latency) and 0 <= latency < 1000  # sim-time latency of the whole loop

    # what the simulator published: one camera_info and one ground truth per frame, same stamps,
    # and boxes that are the generator's (deterministic by seed), all inside the image
    assert len(listener.truth) == FRAMES and len(listener.infos) >= FRAMES - 2
    generator = SceneGenerator(SceneConfig(width=WIDTH, height=HEIGHT, fps=10.0), seed=5)
    for index, msg in enumerate(listener.truth):
        expected = generator.next_frame()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        assert stamp == index * 100_000_000
        boxes = np.array([[d.bbox.center.position.x - d.bbox.size_x / 2, d.bbox.center.position.y - d.bbox.size_y / 2,
                           d.bbox.center.position.x + d.bbox.size_x / 2, d.bbox.center.position.y + d.bbox.size_y / 2]
                          for d in msg.detections]).reshape(-1, 4)
        np.testing.assert_allclose(boxes, expected.boxes_xyxy, atol=1e-3)
        assert [d.results[0].hypothesis.class_id for d in msg.detections] == [SCENE_CLASSES[c] for c in expected.class_ids]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= WIDTH).all() and (boxes[:, 3] <= HEIGHT).all()
    if listener.images:
        np.testing.assert_array_equal(np.frombuffer(listener.images[0].data, np.uint8).reshape(HEIGHT, WIDTH, 3),
                                      SceneGenerator(SceneConfig(width=WIDTH, height=HEIGHT, fps=10.0), seed=5).next_frame().image)
