"""Process entry point shared by the package's nodes: rclpy init, spin, clean shutdown."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.timer import Timer

from prune_perception.ros.parameters import ParameterValidationError

FASTDDS_PROFILE_PATH = Path(__file__).with_name("fastdds_large_images.xml")
"""FastDDS profile with a 16 MiB shared-memory segment plus UDPv4, for camera images."""


def apply_fastdds_large_image_profile() -> None:
    """Use :data:`FASTDDS_PROFILE_PATH` unless the user configured FastDDS transports already.

    With FastDDS's default transports, best-effort images of a few hundred KB or more are mostly
    lost between processes; ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` still lost 28 of 100
    960x540 frames here, while this profile delivered all of them. The variable must be set before
    rclpy creates the participant, in every process that sends or receives images (the launch
    files set it for all of them).
    """
    if "FASTDDS_BUILTIN_TRANSPORTS" not in os.environ and "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(FASTDDS_PROFILE_PATH)


def finish_publishing(node: Node, timer: Timer, summary: str, exit_when_done: bool) -> None:
    """End of a finite publisher (video, bag, simulation): stop its timer, log ``summary``, and
    with ``exit_when_done`` shut the process down after a moment that lets reliable subscribers
    fetch the last samples."""
    timer.cancel()
    node.get_logger().info(summary)
    if exit_when_done:
        time.sleep(0.5)
        node.context.try_shutdown()


def run_node(node_class: type[Node], args: list[str] | None = None) -> int:
    """Init rclpy, spin ``node_class`` until shutdown, clean up; exit code 2 on bad parameters."""
    apply_fastdds_large_image_profile()
    try:
        rclpy.init(args=args)
    except RuntimeError as exc:  # rclpy's RCLError, e.g. a malformed --params-file
        print(f"[{node_class.__name__}] cannot start: {exc}", file=sys.stderr)
        return 2
    node = None
    try:
        node = node_class()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except ParameterValidationError as exc:
        print(f"[{node_class.__name__}] {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return int(getattr(node, "exit_code", 0))  # a node that ended on a failure of its own says so
