"""``/clock`` publishing for the nodes that own simulation time (bag_player, sim_camera)."""

from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import QoSProfile
from rosgraph_msgs.msg import Clock

from prune_perception.stamps import ns_to_sec_nanosec


class ClockPublisher:
    """Publishes a time in nanoseconds on ``/clock``; does nothing when disabled."""

    def __init__(self, node: Node, enabled: bool = True) -> None:
        self._publisher = node.create_publisher(Clock, "/clock", QoSProfile(depth=1)) if enabled else None

    def publish(self, stamp_ns: int) -> None:
        if self._publisher is not None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = ns_to_sec_nanosec(stamp_ns)
            self._publisher.publish(msg)
