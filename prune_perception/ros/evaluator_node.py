"""ROS 2 node: online evaluation of a detector against a ground-truth topic.

Detections and ground truth (both ``vision_msgs/Detection2DArray``) are matched by header
stamp. Over the last ``window_frames`` ground-truth frames it computes COCO AP/AP50 with
faster-coco-eval; a ground-truth frame whose detections have not arrived ``match_timeout_s``
after it counts as missed (no detections: every object is a false negative), as a dropped
frame does on the vehicle. Latency is arrival time at this node minus ``header.stamp`` on the
node clock (sim time with ``use_sim_time``). Published on ``/diagnostics`` once a second, and
the running AP50 on ``~/ap50``.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict, deque
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64
from vision_msgs.msg import Detection2DArray

from prune_perception.eval.coco_eval import ImageBoxes, evaluate_detections
from prune_perception.eval.health import HealthLevel
from prune_perception.eval.latency import LatencySummary
from prune_perception.ros.detection_messages import msg_to_arrays
from prune_perception.ros.diagnostics import make_status
from prune_perception.ros.node_main import run_node
from prune_perception.ros.parameters import ParameterSpec, declare_parameters
from prune_perception.stamps import stamp_to_ns

EVALUATOR_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("window_frames", 300, "Ground-truth frames the running AP covers.", minimum=1, maximum=100000,
                  read_only=True),
    ParameterSpec("match_timeout_s", 1.0, "A frame whose detections are this late counts as missed (node clock).",
                  minimum=0.01, maximum=60.0, read_only=True),
    ParameterSpec("image_width", 640, "Image width, for COCO area ranges.", minimum=1, maximum=16384, read_only=True),
    ParameterSpec("image_height", 384, "Image height.", minimum=1, maximum=16384, read_only=True),
    ParameterSpec("diagnostics_period_s", 1.0, "Seconds between diagnostics (steady clock).", minimum=0.05,
                  maximum=60.0, read_only=True),
)


class EvaluatorNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("evaluator", **kwargs)
        self.params = declare_parameters(self, EVALUATOR_PARAMETERS)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Detection2DArray, "detections", self._on_detections, reliable)
        self.create_subscription(Detection2DArray, "ground_truth", self._on_truth, reliable)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._ap_pub = self.create_publisher(Float64, "~/ap50", 10)
        self.class_names: list[str] = []
        self.pending_truth: OrderedDict[int, tuple[Detection2DArray, float]] = OrderedDict()
        self.early_detections: dict[int, Detection2DArray] = {}
        self.window: deque[tuple[ImageBoxes, ImageBoxes]] = deque(maxlen=self.params["window_frames"])
        self.latencies_ms: deque[float] = deque(maxlen=self.params["window_frames"])
        self.matched = 0
        self.missed = 0
        self.unmatched_detections = 0
        self.metrics = None
        self._diagnostics_timer = self.create_timer(self.params["diagnostics_period_s"], self._publish_diagnostics,
                                                    clock=self._steady_clock())

    @staticmethod
    def _steady_clock():
        from rclpy.clock import Clock, ClockType

        return Clock(clock_type=ClockType.STEADY_TIME)

    def _ids(self, labels: list[str]) -> np.ndarray:
        for label in labels:
            if label not in self.class_names:
                self.class_names.append(label)
        return np.array([self.class_names.index(label) for label in labels], np.int64)

    def _boxes(self, msg: Detection2DArray, index: int) -> ImageBoxes:
        boxes, scores, labels = msg_to_arrays(msg)
        return ImageBoxes(index, self.params["image_width"], self.params["image_height"], boxes, self._ids(labels), scores)

    def _on_truth(self, msg: Detection2DArray) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        detections = self.early_detections.pop(stamp, None)
        if detections is not None:
            self._record(msg, detections)
        else:
            self.pending_truth[stamp] = (msg, time.monotonic())
        self._expire()

    def _on_detections(self, msg: Detection2DArray) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        self.latencies_ms.append((self.get_clock().now().nanoseconds - stamp) / 1e6)
        pending = self.pending_truth.pop(stamp, None)
        if pending is not None:
            self._record(pending[0], msg)
        else:
            self.early_detections[stamp] = msg
            while len(self.early_detections) > 1000:
                self.early_detections.pop(next(iter(self.early_detections)))
                self.unmatched_detections += 1

    def _record(self, truth: Detection2DArray, detections: Detection2DArray | None) -> None:
        index = self.matched + self.missed
        truth_boxes = self._boxes(truth, index)
        if detections is None:
            self.missed += 1
            predicted = ImageBoxes(index, truth_boxes.width, truth_boxes.height, np.zeros((0, 4)), np.zeros(0, np.int64),
                                   np.zeros(0))
        else:
            self.matched += 1
            predicted = self._boxes(detections, index)
        self.window.append((truth_boxes, predicted))

    def _expire(self) -> None:
        deadline = time.monotonic() - self.params["match_timeout_s"]
        while self.pending_truth:
            stamp, (msg, arrived) = next(iter(self.pending_truth.items()))
            if arrived > deadline:
                break
            self.pending_truth.pop(stamp)
            self._record(msg, None)

    def evaluate(self):
        if not self.window:
            return None
        truth, predictions = zip(*self.window)
        self.metrics = evaluate_detections(list(truth), list(predictions), list(self.class_names))
        return self.metrics

    def _publish_diagnostics(self) -> None:
        self._expire()
        metrics = self.evaluate()
        latency = LatencySummary.of(self.latencies_ms)
        values = {
            "frames_matched": self.matched, "frames_missed": self.missed, "window_frames": len(self.window),
            "ap": metrics.ap if metrics else float("nan"), "ap50": metrics.ap50 if metrics else float("nan"),
            "latency_p50_ms": latency.p50_ms, "latency_p99_ms": latency.p99_ms, "latency_max_ms": latency.max_ms,
            "unmatched_detections": self.unmatched_detections,
        }
        if metrics is None:
            level, message = HealthLevel.WARN, "waiting for ground truth and detections"
        else:
            level, message = HealthLevel.OK, f"AP50 {metrics.ap50:.3f} over {len(self.window)} frames"
            self._ap_pub.publish(Float64(data=float(metrics.ap50)))
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [make_status(f"{self.get_fully_qualified_name()}: evaluation", "online AP", level, message, values)]
        self._diagnostics_pub.publish(array)


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(EvaluatorNode, args))


if __name__ == "__main__":
    main()
