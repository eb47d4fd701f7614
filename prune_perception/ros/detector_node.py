"""ROS 2 node: camera images in, vision_msgs/Detection2DArray out, latency measured on every frame.

Data path of one frame::

    image_raw (Image) ──callback──> LatestFrameSlot ──worker thread──> raw_image_to_array
        -> Detector.detect (preprocess, inference, postprocess) -> detections_to_msg -> publish

The subscription callback only stores the message (newest wins; older unprocessed frames are
dropped and counted), so inference never blocks the executor and latency cannot build up in a
queue. Everything model-related lives in ``prune_perception.runtime``; this file only wires ROS.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64
from vision_msgs.msg import Detection2DArray

from prune_perception.data.image_codec import compressed_image_to_array, raw_image_to_array, to_bgr
from prune_perception.errors import ImageFormatError, InferenceError, PrunePerceptionError
from prune_perception.eval.health import HealthLevel, HealthThresholds, evaluate_health
from prune_perception.eval.latency import STAGES, FrameStatistics
from prune_perception.ros.detection_messages import detections_to_msg
from prune_perception.ros.diagnostics import build_status
from prune_perception.ros.image_conversion import array_to_image_msg
from prune_perception.ros.node_main import run_node
from prune_perception.ros.parameters import (
    DETECTOR_PARAMETERS,
    ParameterValidationError,
    declare_parameters,
    spec_by_name,
)
from prune_perception.ros.qos import image_qos
from prune_perception.runtime.annotate import draw_detections
from prune_perception.runtime.detector import Detector, DetectorConfig
from prune_perception.runtime.latest_frame import LatestFrameSlot

IMAGE_TOPIC = "image_raw"
COMPRESSED_IMAGE_TOPIC = "image_raw/compressed"
DETECTIONS_TOPIC = "detections"
LATENCY_TOPICS = tuple(f"{stage}_ms" for stage in STAGES) + ("in_node_ms", "end_to_end_ms")
"""Per-frame std_msgs/Float64 topics under ``~/debug/``."""

_DETECTOR_CONFIG_PARAMETERS = ("score_threshold", "nms_threshold", "max_detections")
_HEALTH_PARAMETERS = ("warn_deadline_miss_rate", "error_deadline_miss_rate", "warn_drop_rate")


@dataclass
class _ReceivedFrame:
    msg: Image | CompressedImage
    received_s: float  # time.perf_counter() when the callback ran


class DetectorNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("detector_node", **kwargs)
        self.params = declare_parameters(self, DETECTOR_PARAMETERS)
        if not self.params["model_path"]:
            raise ParameterValidationError("invalid parameters:\n  - model_path is required (path to a .onnx/.engine/.pt model)")
        self._health_thresholds = self._make_health_thresholds(self.params)
        self.stats = FrameStatistics(
            self.params["latency_budget_ms"], self.params["statistics_window_s"], self.params["deadline_reference"]
        )
        self._stats_lock = threading.Lock()
        self._slot: LatestFrameSlot[_ReceivedFrame] = LatestFrameSlot()
        self.detector: Detector | None = None
        self.model_error: str | None = "model not loaded yet"
        self._last_input_error: str | None = None
        self._last_logged: dict[str, float] = {}
        self._stop = threading.Event()

        self._detections_pub = self.create_publisher(Detection2DArray, DETECTIONS_TOPIC, 10)
        self._latency_pubs = {name: self.create_publisher(Float64, f"~/debug/{name}", 10) for name in LATENCY_TOPICS}
        self._debug_image_pub = (
            self.create_publisher(Image, "~/debug/image", 1) if self.params["publish_debug_image"] else None
        )
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        qos = image_qos(self.params["qos_reliability"], self.params["qos_depth"])
        if self.params["input_transport"] == "compressed":
            self._subscription = self.create_subscription(CompressedImage, COMPRESSED_IMAGE_TOPIC, self._on_image, qos)
        else:
            self._subscription = self.create_subscription(Image, IMAGE_TOPIC, self._on_image, qos)

        self.add_on_set_parameters_callback(self._validate_parameter_changes)
        self.add_post_set_parameters_callback(self._apply_parameter_changes)
        # Steady clock: health keeps being reported when the sim clock is paused or not running yet.
        self._diagnostics_timer = self.create_timer(
            self.params["diagnostics_period_s"], self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        self._worker = threading.Thread(target=self._run_worker, name="inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"subscribed to {self._subscription.topic_name} ({self.params['qos_reliability']}, depth "
            f"{self.params['qos_depth']}); publishing {self._detections_pub.topic_name}; budget "
            f"{self.params['latency_budget_ms']:g} ms ({self.params['deadline_reference']})"
        )

    # ----------------------------------------------------------------- parameters
    @staticmethod
    def _make_health_thresholds(values: dict[str, Any]) -> HealthThresholds:
        return HealthThresholds(**{name: values[name] for name in _HEALTH_PARAMETERS})

    def _validate_parameter_changes(self, parameters: list[Parameter]) -> SetParametersResult:
        specs = spec_by_name(DETECTOR_PARAMETERS)
        candidate = dict(self.params)
        for parameter in parameters:
            spec = specs.get(parameter.name)
            if spec is None:
                continue  # e.g. use_sim_time, handled by rclpy
            problem = spec.check(parameter.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
            candidate[parameter.name] = parameter.value
        try:
            self._make_health_thresholds(candidate)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameter_changes(self, parameters: list[Parameter]) -> None:
        changed = {p.name: p.value for p in parameters if p.name in self.params}
        self.params.update(changed)
        if self.detector is not None and changed.keys() & set(_DETECTOR_CONFIG_PARAMETERS):
            self.detector.update_config(**{k: self.params[k] for k in _DETECTOR_CONFIG_PARAMETERS})
        if changed.keys() & set(_HEALTH_PARAMETERS):
            self._health_thresholds = self._make_health_thresholds(self.params)
        if changed.keys() & {"latency_budget_ms", "deadline_reference"}:
            with self._stats_lock:
                self.stats.set_budget(self.params["latency_budget_ms"], self.params["deadline_reference"])
        if changed:
            self.get_logger().info(f"parameters changed: {changed}")

    # ----------------------------------------------------------------- model
    def _load_model(self) -> bool:
        try:
            detector = Detector(
                self.params["model_path"],
                backend=self.params["backend"],
                device=self.params["device"],
                config=DetectorConfig(**{k: self.params[k] for k in _DETECTOR_CONFIG_PARAMETERS}),
                intra_op_threads=self.params["intra_op_threads"],
            )
            if self.params["warmup_runs"]:
                detector.warmup(self.params["warmup_runs"])
        except (PrunePerceptionError, ValueError) as exc:
            self.model_error = str(exc)
            retry = self.params["model_retry_period_s"]
            self.get_logger().error(
                f"cannot run the model: {exc}" + (f" (retrying every {retry:g} s)" if retry > 0 else "")
            )
            return False
        self.detector, self.model_error = detector, None
        metadata = detector.metadata
        self.get_logger().info(
            f"model {detector.model_path.name} on {detector.backend_name}/{detector.device}: input "
            f"{metadata.input.width}x{metadata.input.height}, {metadata.num_classes} classes "
            f"(metadata from {metadata.source})"
        )
        return True

    # ----------------------------------------------------------------- data path
    def _on_image(self, msg: Image | CompressedImage) -> None:
        received = time.perf_counter()
        replaced_unprocessed = self._slot.put(_ReceivedFrame(msg, received))
        with self._stats_lock:
            self.stats.record_input(received)
            if replaced_unprocessed:
                self.stats.record_drop(received)

    def _run_worker(self) -> None:
        while not self._stop.is_set():
            if self.detector is None:
                if not self._load_model():
                    retry = self.params["model_retry_period_s"]
                    self._stop.wait(retry if retry > 0 else None)
                    continue
            frame = self._slot.take(timeout_s=0.2)
            if frame is not None:
                self._process(frame)

    def _process(self, frame: _ReceivedFrame) -> None:
        assert self.detector is not None
        msg = frame.msg
        start = time.perf_counter()
        try:
            if isinstance(msg, CompressedImage):
                image, pixel_format = compressed_image_to_array(msg)
            else:
                image, pixel_format = raw_image_to_array(msg)
            converted = time.perf_counter()
            result = self.detector.detect(image, pixel_format)
            detected = time.perf_counter()
        except ImageFormatError as exc:
            self._last_input_error = str(exc)
            with self._stats_lock:
                self.stats.record_input_error(time.perf_counter())
            self._log_error_throttled(f"dropping bad image (frame_id '{msg.header.frame_id}'): {exc}", str(exc))
            return
        except InferenceError as exc:
            with self._stats_lock:
                self.stats.record_inference_error(time.perf_counter())
            self._log_error_throttled(f"inference failed: {exc}", "inference")
            return

        detections_msg = detections_to_msg(result.detections, msg.header, self.params["class_id_format"])
        self._detections_pub.publish(detections_msg)
        published = time.perf_counter()
        end_to_end_ms = (self.get_clock().now() - Time.from_msg(msg.header.stamp)).nanoseconds / 1e6
        in_node_ms = (published - frame.received_s) * 1e3
        timings = result.timings
        stage_ms = {
            "image_conversion": (converted - start) * 1e3,
            "preprocess": timings.preprocess_ms,
            "inference": timings.inference_ms,
            "postprocess": timings.postprocess_ms,
            "publish": (published - detected) * 1e3,  # message building + publish()
        }
        with self._stats_lock:
            missed = self.stats.record_output(published, stage_ms, end_to_end_ms, in_node_ms)
        for name, value in zip(LATENCY_TOPICS, [*stage_ms.values(), in_node_ms, end_to_end_ms]):
            self._latency_pubs[name].publish(Float64(data=value))
        if missed:
            self.get_logger().warn(
                f"deadline miss: {end_to_end_ms:.1f} ms end to end, {in_node_ms:.1f} ms in node, budget "
                f"{self.params['latency_budget_ms']:g} ms", throttle_duration_sec=5.0,
            )
        if self._debug_image_pub is not None:
            self._publish_debug_image(image, pixel_format, result.detections, msg, in_node_ms, end_to_end_ms)

    def _log_error_throttled(self, message: str, reason: str, period_s: float = 2.0) -> None:
        """Log at most every ``period_s`` per kind of problem (the text before its first ':'),
        so that a stream of bad frames cannot flood the log but each new problem is seen."""
        kind = reason.split(":", 1)[0]
        now = time.monotonic()
        if now - self._last_logged.get(kind, -period_s) >= period_s:
            self._last_logged[kind] = now
            self.get_logger().error(message)

    def _publish_debug_image(self, image, pixel_format, detections, msg, in_node_ms: float, end_to_end_ms: float) -> None:
        bgr = to_bgr(image, pixel_format)
        status = f"{len(detections)} det | in-node {in_node_ms:.1f} ms | e2e {end_to_end_ms:.1f} ms"
        self._debug_image_pub.publish(array_to_image_msg(draw_detections(bgr, detections, status), "bgr8", msg.header))

    # ----------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        with self._stats_lock:
            report = self.stats.report(time.perf_counter())
        level, message = evaluate_health(report, self._health_thresholds, self.model_error, self._last_input_error)
        detector = self.detector
        extra = {
            "model_path": self.params["model_path"],
            "backend": detector.backend_name if detector else self.params["backend"],
            "device": detector.device if detector else self.params["device"],
            "model_ready": str(detector is not None).lower(),
        }
        if self.model_error:
            extra["model_error"] = self.model_error
        if self._last_input_error:
            extra["last_input_error"] = self._last_input_error
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [
            build_status(
                f"{self.get_fully_qualified_name()}: detector", f"{extra['backend']}:{extra['device']}",
                level, message, report, extra,
            )
        ]
        self._diagnostics_pub.publish(array)
        if level == HealthLevel.ERROR:
            self.get_logger().error(message, throttle_duration_sec=10.0)

    def destroy_node(self) -> None:
        self._stop.set()
        self._slot.close()
        self._worker.join(timeout=5.0)
        if self.detector is not None:
            self.detector.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(DetectorNode, args))


if __name__ == "__main__":
    main()
