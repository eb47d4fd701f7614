"""ROS 2 node: camera images in, vision_msgs/Detection2DArray out, latency measured on every frame.

The plain shell of :class:`~prune_perception.ros.detector_pipeline.DetectorPipeline`: it declares
the parameters (a bad value ends the process with exit code 2), subscribes at once, and its
inference worker loads the model, retrying while it cannot. ``managed_detector_node`` is the
lifecycle shell of the same frame path.
"""

from __future__ import annotations

import sys
from typing import Any

from rclpy.node import Node

from prune_perception.ros.detector_parameters import DETECTOR_PARAMETERS, require_model_path
from prune_perception.ros.detector_pipeline import DetectorPipeline
from prune_perception.ros.node_main import run_node
from prune_perception.ros.parameters import declare_parameters


class DetectorNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("detector_node", **kwargs)
        params = declare_parameters(self, DETECTOR_PARAMETERS)
        require_model_path(params)
        self.pipeline = DetectorPipeline(self, params)
        self.pipeline.start()

    def destroy_node(self) -> None:
        self.pipeline.destroy()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(DetectorNode, args))


if __name__ == "__main__":
    main()
