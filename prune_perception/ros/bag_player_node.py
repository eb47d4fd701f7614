"""ROS 2 node: play a rosbag2 file (MCAP or sqlite3, read with rosbags) with ``/clock``.

For machines without rosbag2's player (``ros2 bag play``): it republishes the recorded,
serialized messages unchanged (so header stamps are the recorded ones) at the recorded rate, at
``rate`` times it, or paced by a consumer: with ``rate`` 0 each image waits until a message with
that image's stamp (or later) arrives on ``pace_topic`` (e.g. the detector's detections), or
``pace_timeout_s`` passes. ``/clock`` carries the bag time, published ``clock_rate_hz`` times a
second, so nodes with ``use_sim_time`` see the recording's time, and the latency they measure
from ``header.stamp`` is real elapsed time scaled by ``rate``.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any, Iterator

from rclpy.node import Node
from rclpy.qos import QoSProfile
from vision_msgs.msg import Detection2DArray

from prune_perception.bags.camera_bag import COMPRESSED_TYPE, IMAGE_TYPE, BagError, open_bag
from prune_perception.ros.node_main import finish_publishing, run_node
from prune_perception.ros.parameters import ParameterSpec, ParameterValidationError, declare_parameters
from prune_perception.ros.qos import RELIABILITIES, image_qos
from prune_perception.ros.sim_clock import ClockPublisher
from prune_perception.stamps import stamp_to_ns

BAG_PLAYER_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("bag", "", "rosbag2 folder, .mcap or .db3 file.", read_only=True, pattern_hint="existing bag"),
    ParameterSpec("topics", "", "Comma-separated topics to play (empty: every topic whose message type is "
                  "installed).", read_only=True),
    ParameterSpec("rate", 1.0, "Playback speed relative to the recording; 0 paces each image on pace_topic.",
                  minimum=0.0, maximum=1000.0, read_only=True),
    ParameterSpec("pace_topic", "/detections", "With rate 0: the Detection2DArray topic whose stamps "
                  "release the next image.", read_only=True),
    ParameterSpec("pace_timeout_s", 2.0, "With rate 0: publish the next image anyway after this long.",
                  minimum=0.01, maximum=600.0, read_only=True),
    ParameterSpec("publish_clock", True, "Publish the bag time on /clock.", read_only=True),
    ParameterSpec("clock_rate_hz", 500.0, "/clock messages per second (the resolution of sim time).",
                  minimum=1.0, maximum=5000.0, read_only=True),
    ParameterSpec("image_qos_reliability", "best_effort", "Reliability of image topics (others are reliable).",
                  choices=RELIABILITIES, read_only=True),
    ParameterSpec("qos_depth", 5, "History depth of image topics.", minimum=1, maximum=1000, read_only=True),
    ParameterSpec("start_delay_s", 1.0, "Wait this long before the first message.", minimum=0.0, maximum=600.0,
                  read_only=True),
    ParameterSpec("wait_for_subscribers", 0, "Before the first message, also wait until this many subscribers "
                  "are matched on the image topic.", minimum=0, maximum=100, read_only=True),
    ParameterSpec("max_images", 0, "Stop after this many images (0: the whole bag).", minimum=0, maximum=10000000,
                  read_only=True),
    ParameterSpec("exit_when_done", True, "Shut the node down after the last message.", read_only=True),
)


def message_class(msgtype: str) -> Any | None:
    """``sensor_msgs/msg/Image`` -> the installed rclpy message class (None if not installed)."""
    package, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        return None


class BagPlayerNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("bag_player", **kwargs)
        self.params = declare_parameters(self, BAG_PLAYER_PARAMETERS)
        try:
            self._reader = open_bag(self.params["bag"])
        except BagError as exc:
            raise ParameterValidationError(f"invalid parameters:\n  - bag: {exc}") from exc
        wanted = {t.strip() for t in self.params["topics"].split(",") if t.strip()}
        available = {c.topic: c.msgtype for c in self._reader.connections}
        missing = sorted(wanted - set(available))
        if missing:
            self._reader.close()
            raise ParameterValidationError(f"invalid parameters:\n  - topics: {missing} not in the bag ({available})")
        self._outputs: dict[str, Any] = {}
        connections = []
        for connection in self._reader.connections:
            if wanted and connection.topic not in wanted or connection.topic in self._outputs:
                continue
            msg_class = message_class(connection.msgtype)
            if msg_class is None:
                self.get_logger().warning(f"skipping {connection.topic}: {connection.msgtype} is not installed")
                continue
            is_image = connection.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE)
            qos = image_qos(self.params["image_qos_reliability"], self.params["qos_depth"]) if is_image else QoSProfile(depth=100)
            self._outputs[connection.topic] = (self.create_publisher(msg_class, connection.topic, qos), is_image)
            connections.append(connection)
        if not connections:
            raise ParameterValidationError(f"invalid parameters:\n  - bag: nothing to play in {self.params['bag']}")
        self._image_publishers = [pub for pub, is_image in self._outputs.values() if is_image]
        self._messages: Iterator = self._reader.messages(connections=connections)
        self.exit_code = 0
        self._next = self._read_next()
        self._bag_start = self._next[1] if self._next else 0
        self._sim_clock = ClockPublisher(self, self.params["publish_clock"])
        self._pace_stamp = -1
        if self.params["rate"] == 0:
            self.create_subscription(Detection2DArray, self.params["pace_topic"], self._on_pace, 10)
        self._started_wall: float | None = None
        self._ready_at = time.monotonic() + self.params["start_delay_s"]
        self._last_image_stamp = self._bag_start
        self._last_image_wall = 0.0
        self.images = 0
        self.messages = 0
        self._timer = self.create_timer(1.0 / self.params["clock_rate_hz"], self._tick)
        rate = self.params["rate"]
        self.get_logger().info(f"playing {self.params['bag']} ({', '.join(self._outputs)}) "
                               + (f"at {rate:g}x" if rate else f"paced by {self.params['pace_topic']}"))

    def _on_pace(self, msg: Detection2DArray) -> None:
        self._pace_stamp = max(self._pace_stamp, stamp_to_ns(msg.header.stamp))

    def _bag_now(self, wall: float) -> int:
        if self._started_wall is None:
            return self._bag_start
        if self.params["rate"] > 0:
            return self._bag_start + int((wall - self._started_wall) * self.params["rate"] * 1e9)
        return self._last_image_stamp + int((wall - self._last_image_wall) * 1e9)

    def _due(self, wall: float, receive_ns: int, is_image: bool) -> bool:
        if self.params["rate"] > 0:
            return receive_ns <= self._bag_now(wall)
        if not is_image or self.images == 0:
            return True
        answered = self._pace_stamp >= self._last_image_stamp
        return answered or wall - self._last_image_wall >= self.params["pace_timeout_s"]

    def _tick(self) -> None:
        wall = time.monotonic()
        if self._started_wall is None:
            waiting = wall < self._ready_at or any(
                p.get_subscription_count() < self.params["wait_for_subscribers"] for p in self._image_publishers)
            if waiting:
                self._sim_clock.publish(self._bag_start)
                return
            self._started_wall = self._last_image_wall = wall
        self._sim_clock.publish(self._bag_now(wall))
        while self._next is not None:
            connection, receive_ns, rawdata = self._next
            publisher, is_image = self._outputs[connection.topic]
            if not self._due(wall, receive_ns, is_image):
                break
            if is_image and self.params["max_images"] and self.images >= self.params["max_images"]:
                self._next = None
                break
            if is_image and self.params["rate"] == 0:
                self._last_image_stamp, self._last_image_wall = receive_ns, wall
                self._sim_clock.publish(receive_ns)
            publisher.publish(bytes(rawdata))
            self.messages += 1
            self.images += int(is_image)
            self._next = self._read_next()
        if self._next is None:
            self._finish(wall)

    def _read_next(self) -> Any:
        """The next message, or None at the end of the bag, or when the rest cannot be read (a
        bag truncated or damaged while it plays): then the node ends with exit code 1 and says
        how far it got, so that nothing downstream takes the bag as played in full."""
        try:
            return next(self._messages, None)
        except Exception as exc:  # rosbags raises several error types for a damaged file
            self.exit_code = 1
            self.get_logger().error(
                f"cannot read {self.params['bag']} after {self.messages} messages ({self.images} images): "
                f"{type(exc).__name__}: {exc}; {STOPPED_EARLY}")
            return None

    def _finish(self, wall: float) -> None:
        self._reader.close()
        elapsed = wall - (self._started_wall or wall)
        finish_publishing(self, self._timer, f"played {self.messages} messages ({self.images} images) in {elapsed:.2f} s",
                          self.params["exit_when_done"])


# What a process that started this node reads back from its log: the two lines are written above.
STOPPED_EARLY = "the bag is truncated or damaged, playback stops here"


def playback_failure(log: str) -> str | None:
    """The player's own error line (a bag it could not read to the end), if it logged one."""
    for line in reversed(log.splitlines()):
        if STOPPED_EARLY in line:
            return line.split("]: ", 1)[-1]
    return None


def played_images(log: str) -> int:
    """The image count of the player's final 'played N messages (M images)' line; 0 without one."""
    for line in reversed(log.splitlines()):
        if "played " in line and " images)" in line:
            return int(line.split("(", 1)[1].split()[0])
    return 0


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(BagPlayerNode, args))


if __name__ == "__main__":
    main()
