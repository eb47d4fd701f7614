"""ROS 2 node: a simulated camera. Procedural driving scenes, with ground truth and ``/clock``.

Frames come from :class:`SceneGenerator` (deterministic by ``seed``). Simulation time starts at
0 and runs at ``real_time_factor`` times the wall clock; ``/clock`` is published
``clock_rate_hz`` times a second, and frame k is stamped k / ``frame_rate_hz`` seconds of sim
time. With the detector node on ``use_sim_time``, its end-to-end latency is measured in sim time,
as it would be against CARLA or Gazebo.

Topics (relative, so a namespace or remapping places them): ``image_raw`` (bgr8),
``camera_info`` and ``ground_truth`` (Detection2DArray, same header stamp as the image).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from prune_perception.ros.detection_messages import detections_to_msg
from prune_perception.ros.image_conversion import array_to_image_msg
from prune_perception.ros.node_main import finish_publishing, run_node
from prune_perception.ros.parameters import ParameterSpec, declare_parameters
from prune_perception.ros.qos import RELIABILITIES, image_qos
from prune_perception.ros.sim_clock import ClockPublisher
from prune_perception.runtime.postprocess import Detections
from prune_perception.sim.scenes import SCENE_CLASSES, SceneConfig, SceneGenerator, pinhole_intrinsics
from prune_perception.stamps import ns_to_sec_nanosec

SIM_CAMERA_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("width", 640, "Image width.", minimum=64, maximum=4096, read_only=True),
    ParameterSpec("height", 384, "Image height.", minimum=64, maximum=4096, read_only=True),
    ParameterSpec("frame_rate_hz", 10.0, "Frames per second of simulation time.", minimum=0.1, maximum=1000.0,
                  read_only=True),
    ParameterSpec("real_time_factor", 1.0, "Simulation seconds per wall second.", minimum=0.01, maximum=100.0,
                  read_only=True),
    ParameterSpec("seed", 0, "Scene seed: the same seed gives the same frames.", minimum=0, maximum=2**31 - 1,
                  read_only=True),
    ParameterSpec("max_objects", 10, "Objects in the scene at a time.", minimum=0, maximum=100, read_only=True),
    ParameterSpec("noise_sigma", 4.0, "Gaussian pixel noise.", minimum=0.0, maximum=100.0, read_only=True),
    ParameterSpec("total_frames", 0, "Stop after this many frames (0: run forever).", minimum=0, maximum=10000000,
                  read_only=True),
    ParameterSpec("publish_clock", True, "Publish the simulation time on /clock.", read_only=True),
    ParameterSpec("clock_rate_hz", 500.0, "/clock messages per wall second.", minimum=1.0, maximum=5000.0,
                  read_only=True),
    ParameterSpec("frame_id", "camera", "header.frame_id of every message.", read_only=True),
    ParameterSpec("qos_reliability", "best_effort", "Image publisher reliability.", choices=RELIABILITIES,
                  read_only=True),
    ParameterSpec("qos_depth", 5, "Image publisher history depth.", minimum=1, maximum=1000, read_only=True),
    ParameterSpec("wait_for_subscribers", 0, "Hold the first frame until this many image subscribers match.",
                  minimum=0, maximum=100, read_only=True),
    ParameterSpec("wait_for_truth_subscribers", 0, "Also hold it until this many ground_truth subscribers match.",
                  minimum=0, maximum=100, read_only=True),
    ParameterSpec("exit_when_done", True, "Shut down after total_frames.", read_only=True),
)


class SimCameraNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("sim_camera", **kwargs)
        self.params = p = declare_parameters(self, SIM_CAMERA_PARAMETERS)
        self.scene = SceneConfig(width=p["width"], height=p["height"], fps=p["frame_rate_hz"],
                                 max_objects=p["max_objects"], noise_sigma=p["noise_sigma"])
        self.generator = SceneGenerator(self.scene, seed=p["seed"])
        qos = image_qos(p["qos_reliability"], p["qos_depth"])
        self._image_pub = self.create_publisher(Image, "image_raw", qos)
        self._info_pub = self.create_publisher(CameraInfo, "camera_info", qos)
        self._truth_pub = self.create_publisher(Detection2DArray, "ground_truth", QoSProfile(depth=100))
        self._sim_clock = ClockPublisher(self, p["publish_clock"])
        self.frames = 0
        self._started: float | None = None
        self._timer = self.create_timer(1.0 / p["clock_rate_hz"], self._tick)
        self.get_logger().info(f"simulating {p['width']}x{p['height']} at {p['frame_rate_hz']:g} Hz (seed {p['seed']}, "
                               f"x{p['real_time_factor']:g} real time) on {self._image_pub.topic_name}")

    def _sim_ns(self, wall: float) -> int:
        return 0 if self._started is None else int((wall - self._started) * self.params["real_time_factor"] * 1e9)

    def _tick(self) -> None:
        wall = time.monotonic()
        if self._started is None:
            if (self._image_pub.get_subscription_count() < self.params["wait_for_subscribers"]
                    or self._truth_pub.get_subscription_count() < self.params["wait_for_truth_subscribers"]):
                self._sim_clock.publish(0)
                return
            self._started = wall
        now_ns = self._sim_ns(wall)
        self._sim_clock.publish(now_ns)
        frame_ns = int(round(self.frames * 1e9 / self.params["frame_rate_hz"]))
        if now_ns < frame_ns:
            return
        total = self.params["total_frames"]
        if total and self.frames >= total:
            self._finish()
            return
        frame = self.generator.next_frame()
        header = Header(frame_id=self.params["frame_id"])
        header.stamp.sec, header.stamp.nanosec = ns_to_sec_nanosec(frame_ns)
        self._image_pub.publish(array_to_image_msg(frame.image, "bgr8", header))
        self._info_pub.publish(self._camera_info(header))
        truth = Detections(frame.boxes_xyxy, np.ones(len(frame.class_ids), np.float32), frame.class_ids, SCENE_CLASSES)
        self._truth_pub.publish(detections_to_msg(truth, header))
        self.frames += 1

    def _camera_info(self, header: Header) -> CameraInfo:
        width, height = self.scene.width, self.scene.height
        info = CameraInfo(header=header, width=width, height=height, distortion_model="plumb_bob")
        info.d = [0.0] * 5
        info.k, info.p = pinhole_intrinsics(self.generator.focal, width, height)
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        return info

    def _finish(self) -> None:
        finish_publishing(self, self._timer, f"simulated {self.frames} frames", self.params["exit_when_done"])


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(SimCameraNode, args))


if __name__ == "__main__":
    main()
