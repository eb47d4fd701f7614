"""ROS 2 node: publish a video file or an image folder as a camera topic, at a chosen rate.

Frames are decoded and packed into messages once at start-up, so the publish rate is limited by
DDS, not by decoding. Each message is stamped with the node clock at publish time.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import cv2
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from prune_perception.data.frame_source import FrameSourceError, iter_frames, source_frame_rate
from prune_perception.ros.image_conversion import ENCODINGS, array_to_compressed_msg, array_to_image_msg
from prune_perception.ros.node_main import finish_publishing, run_node
from prune_perception.ros.parameters import ParameterSpec, ParameterValidationError, declare_parameters
from prune_perception.ros.qos import RELIABILITIES, image_qos

_TO_ENCODING = {
    "bgr8": None,
    "rgb8": cv2.COLOR_BGR2RGB,
    "mono8": cv2.COLOR_BGR2GRAY,
    "bgra8": cv2.COLOR_BGR2BGRA,
    "rgba8": cv2.COLOR_BGR2RGBA,
}

VIDEO_PUBLISHER_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("source", "", "Video file or image folder.", read_only=True, pattern_hint="existing path"),
    ParameterSpec("frame_rate_hz", 0.0, "Publish rate; 0 uses the video's own frame rate.",
                  minimum=0.0, maximum=10000.0, read_only=True),
    ParameterSpec("max_frames", 0, "Frames to load from the source (0: all).", minimum=0, maximum=100000, read_only=True),
    ParameterSpec("loop", False, "Start over after the last frame, forever.", read_only=True),
    ParameterSpec("total_frames", 0, "Publish this many frames, cycling through the loaded ones "
                  "(0: each loaded frame once).", minimum=0, maximum=10000000, read_only=True),
    ParameterSpec("width", 0, "Resize frames to this width (0: keep).", minimum=0, maximum=8192, read_only=True),
    ParameterSpec("height", 0, "Resize frames to this height (0: keep).", minimum=0, maximum=8192, read_only=True),
    ParameterSpec("encoding", "bgr8", "Encoding of raw images.", choices=tuple(ENCODINGS), read_only=True),
    ParameterSpec("transport", "raw", "raw publishes Image on image_raw; compressed publishes JPEG "
                  "CompressedImage on image_raw/compressed.", choices=("raw", "compressed"), read_only=True),
    ParameterSpec("jpeg_quality", 90, "JPEG quality of compressed frames.", minimum=1, maximum=100, read_only=True),
    ParameterSpec("frame_id", "camera", "header.frame_id of every frame.", read_only=True),
    ParameterSpec("qos_reliability", "best_effort", "Publisher reliability.", choices=RELIABILITIES,
                  read_only=True),
    ParameterSpec("qos_depth", 5, "Publisher history depth.", minimum=1, maximum=1000, read_only=True),
    ParameterSpec("start_delay_s", 1.0, "Wait this long before the first frame, so subscribers can connect.",
                  minimum=0.0, maximum=600.0, read_only=True),
    ParameterSpec("wait_for_subscribers", 0, "Before the first frame, also wait until this many subscribers "
                  "are matched (best-effort frames sent before discovery are lost).", minimum=0, maximum=100,
                  read_only=True),
    ParameterSpec("exit_when_done", True, "Shut the node down after the last frame (when not looping).",
                  read_only=True),
)


class VideoPublisherNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("video_publisher", **kwargs)
        self.params = declare_parameters(self, VIDEO_PUBLISHER_PARAMETERS)
        size = None
        if self.params["width"] and self.params["height"]:
            size = (self.params["width"], self.params["height"])
        try:
            self._messages = [self._to_msg(frame) for frame in iter_frames(self.params["source"], self.params["max_frames"], size)]
        except FrameSourceError as exc:
            raise ParameterValidationError(f"invalid parameters:\n  - source: {exc}") from exc
        rate = self.params["frame_rate_hz"] or source_frame_rate(self.params["source"])
        compressed = self.params["transport"] == "compressed"
        qos = image_qos(self.params["qos_reliability"], self.params["qos_depth"])
        self._publisher = self.create_publisher(
            CompressedImage if compressed else Image, "image_raw/compressed" if compressed else "image_raw", qos
        )
        self._index = 0
        self.published = 0
        self._first_publish: float | None = None
        self._start_at = time.monotonic() + self.params["start_delay_s"]
        self._timer = self.create_timer(1.0 / rate, self._tick)
        self.get_logger().info(
            f"publishing {len(self._messages)} frames of {self.params['source']} on {self._publisher.topic_name} at "
            f"{rate:g} Hz{' (looping)' if self.params['loop'] else ''}"
        )

    def _to_msg(self, frame) -> Image | CompressedImage:
        header = Header(frame_id=self.params["frame_id"])
        if self.params["transport"] == "compressed":
            return array_to_compressed_msg(frame, header, "jpeg", self.params["jpeg_quality"])
        conversion = _TO_ENCODING[self.params["encoding"]]
        image = frame if conversion is None else cv2.cvtColor(frame, conversion)
        return array_to_image_msg(image, self.params["encoding"], header)

    def _tick(self) -> None:
        now = time.monotonic()
        if now < self._start_at:
            return
        if self.published == 0 and self._publisher.get_subscription_count() < self.params["wait_for_subscribers"]:
            self.get_logger().info(
                f"waiting for {self.params['wait_for_subscribers']} subscriber(s) on {self._publisher.topic_name}",
                throttle_duration_sec=5.0,
            )
            return
        total = self.params["total_frames"]
        if (total and self.published >= total) or (not total and self._index >= len(self._messages) and not self.params["loop"]):
            self._finish()
            return
        if self._index >= len(self._messages):
            self._index = 0
        msg = self._messages[self._index]
        msg.header.stamp = self.get_clock().now().to_msg()
        self._publisher.publish(msg)
        self._first_publish = self._first_publish or now
        self._index += 1
        self.published += 1

    def _finish(self) -> None:
        elapsed = time.monotonic() - (self._first_publish or time.monotonic())
        rate = (self.published - 1) / elapsed if elapsed > 0 and self.published > 1 else 0.0
        finish_publishing(self, self._timer, f"published {self.published} frames in {elapsed:.2f} s ({rate:.1f} Hz)",
                          self.params["exit_when_done"])


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(VideoPublisherNode, args))


if __name__ == "__main__":
    main()
