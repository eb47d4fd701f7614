"""A test node that publishes images into one (namespaced) detector process and records what
comes back, and the helpers the node-process tests share."""

from __future__ import annotations

import time

from builtin_interfaces.msg import Time as TimeMsg
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from prune_perception.ros.live_session import DETECTOR_MODULE, LiveRecorder, NodeProcess, ros_arguments

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class Probe(Node):
    """Publishes images into one namespaced detector and records what comes back."""

    def __init__(self, namespace: str, compressed: bool = False) -> None:
        super().__init__(f"probe_{namespace.strip('/')}")
        self.namespace = namespace
        self.image_pub = self.create_publisher(
            CompressedImage if compressed else Image,
            f"{namespace}/image_raw/compressed" if compressed else f"{namespace}/image_raw", RELIABLE,
        )
        self.clock_pub = self.create_publisher(Clock, "/clock", RELIABLE)
        self.detections = []
        self.end_to_end = []
        self.debug_images = []
        self.create_subscription(Image, f"{namespace}/detector_node/debug/image", self.debug_images.append, RELIABLE)
        from std_msgs.msg import Float64
        from vision_msgs.msg import Detection2DArray

        self.create_subscription(Detection2DArray, f"{namespace}/detections", self.detections.append, RELIABLE)
        self.create_subscription(Float64, f"{namespace}/detector_node/debug/end_to_end_ms",
                                 lambda m: self.end_to_end.append(m.data), RELIABLE)
        self.recorder = LiveRecorder(detector_name=f"{namespace.strip('/')}/detector_node",
                                     detections_topic=f"{namespace}/detections")

    def spin_until(self, condition, timeout_s, process=None):
        import rclpy

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not condition():
            rclpy.spin_once(self, timeout_sec=0.02)
            rclpy.spin_once(self.recorder, timeout_sec=0.02)
            if process is not None and process.returncode is not None:
                raise AssertionError(f"node exited with {process.returncode}:\n{process.log_text()[-3000:]}")
        return condition()

    def diagnostics(self):
        return self.recorder.latest_diagnostics()

    def destroy(self):
        self.recorder.destroy_node()
        self.destroy_node()


def stamped(sec: int, nanosec: int = 0) -> Header:
    return Header(stamp=TimeMsg(sec=sec, nanosec=nanosec), frame_id="probe")


def start_detector(tmp_path, namespace, module=DETECTOR_MODULE, env=None, **params) -> NodeProcess:
    arguments = ros_arguments({"model_retry_period_s": 1.0, "intra_op_threads": 1, "qos_reliability": "reliable", **params},
                              namespace=namespace)
    return NodeProcess(module, arguments, tmp_path / f"{namespace.strip('/')}.log", env).start()


def wait_ready(probe, process, timeout_s=60):
    ready = probe.spin_until(lambda: (d := probe.diagnostics()) is not None and d.values.get("model_ready") == "true",
                             timeout_s, process)
    assert ready, process.log_text()[-3000:]
