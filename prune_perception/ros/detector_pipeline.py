"""The detector's frame path, shared by ``detector_node`` and ``managed_detector_node``: one
implementation, two shells.

Data path of one inference cycle::

    <camera>/image_raw (Image) ──callback──> FrameBatcher (newest frame per camera)
        ──worker thread──> raw_image_to_array, per camera
        -> Detector.detect_batch (each image letterboxed on its own, one model call)
        -> the camera's tracker, where ``tracker`` is set (track ids by header.stamp)
        -> detections_to_msg -> <camera>/detections, with that image's header

The subscription callbacks only store the message (newest wins; older unprocessed frames are
dropped and counted per camera), so inference never blocks the executor and latency cannot build
up in a queue. With no ``cameras`` there is one camera whose topics are ``image_raw`` and
``detections``. Everything model-related lives in ``prune_perception.runtime``; this module only
wires ROS. The model sits in a :class:`~prune_perception.runtime.model_slot.ModelSlot`: a new
``model_path`` set at run time loads beside the serving model and replaces it between two cycles.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, Header
from vision_msgs.msg import Detection2DArray, LabelInfo

from prune_perception.data.image_codec import compressed_image_to_array, raw_image_to_array, to_bgr
from prune_perception.errors import ImageFormatError, InferenceError, PrunePerceptionError
from prune_perception.eval.health import HealthThresholds
from prune_perception.eval.latency import CycleStatistics
from prune_perception.ros.camera_streams import (
    CAMERA_LIVE_WINDOW_S,
    LABEL_INFO_TOPIC,
    LATENCY_TOPICS,
    CameraStream,
    ClockWatch,
    ConvertedFrame,
    ReceivedFrame,
)
from prune_perception.ros.detection_messages import detections_to_msg, label_info_msg
from prune_perception.ros.detector_diagnostics import detector_statuses
from prune_perception.ros.image_conversion import array_to_image_msg
from prune_perception.ros.detector_parameters import (
    DETECTOR_CONFIG_PARAMETERS,
    DETECTOR_PARAMETERS,
    HEALTH_PARAMETERS,
    check_new_model_path,
    tracker_config,
)
from prune_perception.ros.parameters import spec_by_name
from prune_perception.ros.qos import LATCHED, image_qos
from prune_perception.runtime.annotate import draw_detections
from prune_perception.runtime.detector import DetectionResult, Detector, DetectorConfig
from prune_perception.runtime.frame_batcher import FrameBatcher
from prune_perception.runtime.model_slot import ModelSlot, ModelSwapError, SwapOutcome

class DetectorPipeline:
    """The frame path of a detector node: parameters, model, subscriptions, batching, publishing
    and diagnostics. The shell (a plain or a lifecycle node) decides when each part runs.

    - :meth:`load_model` loads and warms the model (the plain node's worker retries it).
    - :meth:`start` creates the publishers and subscriptions and starts the worker.
    - :meth:`stop` removes them and stops the worker; the model stays loaded.
    - :meth:`release_model` closes the model.
    Diagnostics are published from construction to :meth:`destroy`, whatever runs.
    """

    def __init__(self, node: Node, params: dict[str, Any], worker_loads_model: bool = True) -> None:
        self.node = node
        self.params = params
        self.worker_loads_model = worker_loads_model
        """The plain node's worker loads the model (and retries); a managed node loads it at configure."""
        tracking = tracker_config(params)
        self.cameras = [CameraStream(name, params, tracking) for name in (params["cameras"] or ("",))]
        self.multi_camera = bool(params["cameras"])
        self.cycles = CycleStatistics(params["statistics_window_s"])
        self.health_thresholds = self._make_health_thresholds(params)
        self.stats_lock = threading.Lock()
        self._batcher: FrameBatcher[ReceivedFrame] = FrameBatcher(
            [camera.name for camera in self.cameras], params["batch_wait_ms"] / 1e3, CAMERA_LIVE_WINDOW_S)
        self.model = ModelSlot(self._build_detector)
        self._restoring_model_path = False
        self.model_error: str | None = "model not loaded yet"
        self.state_note: str | None = None
        """Set by a managed shell: its lifecycle state, shown in diagnostics."""
        self._last_logged: dict[str, float] = {}
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.subscribed_s = time.perf_counter()
        self.sim_clock = ClockWatch()
        self._diagnostics_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # latched: a subscriber that comes later still gets the class table of the model that serves
        self._label_info_pub = node.create_publisher(LabelInfo, LABEL_INFO_TOPIC, LATCHED)
        # Steady clock: health keeps being reported when the sim clock is paused or not running yet.
        self._diagnostics_timer = node.create_timer(
            params["diagnostics_period_s"], self.publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME))
        node.add_on_set_parameters_callback(self._validate_parameter_changes)
        node.add_post_set_parameters_callback(self._apply_parameter_changes)

    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def detector(self) -> Detector | None:
        """The serving model (None until loaded); :attr:`model` runs it and swaps it."""
        return self.model.detector

    # ----------------------------------------------------------------- parameters
    @staticmethod
    def _make_health_thresholds(values: dict[str, Any]) -> HealthThresholds:
        return HealthThresholds(**{name: values[name] for name in HEALTH_PARAMETERS})

    def _validate_parameter_changes(self, parameters: list[Parameter]) -> SetParametersResult:
        specs = spec_by_name(DETECTOR_PARAMETERS)
        candidate = dict(self.params)
        for parameter in parameters:
            spec = specs.get(parameter.name)
            if spec is None:
                continue  # e.g. use_sim_time, handled by rclpy
            problem = spec.check(parameter.value)
            if problem is None and parameter.name == "model_path" and not self._restoring_model_path:
                problem = self._check_model_swap(parameter.value)
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
        if "model_path" in changed and not self._restoring_model_path:
            self._start_model_swap(changed["model_path"])
        if self.detector is not None and changed.keys() & set(DETECTOR_CONFIG_PARAMETERS):
            self.detector.update_config(**self._config_values())
        if changed.keys() & set(HEALTH_PARAMETERS):
            self.health_thresholds = self._make_health_thresholds(self.params)
        if changed.keys() & {"latency_budget_ms", "deadline_reference"}:
            with self.stats_lock:
                for camera in self.cameras:
                    camera.stats.set_budget(self.params["latency_budget_ms"], self.params["deadline_reference"])
        if changed:
            self.node.get_logger().info(f"parameters changed: {changed}")

    # ----------------------------------------------------------------- model
    def _build_detector(self, path: Path) -> Detector:
        detector = Detector(
            path,
            backend=self.params["backend"],
            device=self.params["device"],
            config=DetectorConfig(**self._config_values()),
            intra_op_threads=self.params["intra_op_threads"],
        )
        try:
            if self.params["warmup_runs"]:
                detector.warmup(self.params["warmup_runs"])
        except BaseException:
            detector.close()
            raise
        return detector

    def _config_values(self) -> dict[str, Any]:
        return {k: self.params[k] for k in DETECTOR_CONFIG_PARAMETERS}

    def load_model(self) -> bool:
        """Load and warm the model; on failure keep the reason (diagnostics show it) and log it."""
        try:
            detector = self.model.load(Path(self.params["model_path"]))
        except Exception as exc:  # whatever a model file makes a runtime raise, the node reports it and lives
            self.model_error = str(exc) if isinstance(exc, (PrunePerceptionError, ValueError)) else f"{type(exc).__name__}: {exc}"
            retry = self.params["model_retry_period_s"]
            self.node.get_logger().error(
                f"cannot run the model: {self.model_error}" + (f" (retrying every {retry:g} s)" if retry > 0 and self.worker_loads_model else "")
            )
            return False
        self.model_error = None
        self._log_model(detector)
        self._publish_label_info(detector)
        return True

    def _publish_label_info(self, detector: Detector) -> None:
        header = Header(stamp=self.node.get_clock().now().to_msg(), frame_id="")
        self._label_info_pub.publish(label_info_msg(detector.metadata, detector.config.score_threshold, header))

    def _log_model(self, detector: Detector) -> None:
        metadata = detector.metadata
        batch = detector.max_batch
        self.node.get_logger().info(
            f"model {detector.model_path.name} on {detector.backend_name}/{detector.device}: input "
            f"{metadata.input.width}x{metadata.input.height}, {metadata.num_classes} classes, batch "
            f"{'dynamic' if batch is None else batch} (metadata from {metadata.source})"
        )
        if self.multi_camera and batch is not None and batch < len(self.cameras):
            self.node.get_logger().info(
                f"{detector.model_path.name} takes a batch of at most {batch}, so a cycle of {len(self.cameras)} cameras "
                f"runs {-(-len(self.cameras) // batch)} model calls; for one call, export it with a dynamic batch axis "
                "(prune-perception compress with export.max_batch > 1)"
            )

    def release_model(self) -> None:
        self.model.close()

    # ----------------------------------------------------------------- hot model swap
    def _check_model_swap(self, path: str) -> str | None:
        problem = check_new_model_path(path, self.params["backend"])
        if problem is None and self.model.loading is not None:
            problem = f"model_path refused: a swap to {self.model.loading} is still loading"
        return problem

    def _start_model_swap(self, path: str) -> None:
        """A new model_path: with a model serving, load the new one beside it and swap; with none
        (not loaded yet, or unconfigured), the next load takes the new path."""
        if self.detector is None:
            return
        self.node.get_logger().info(f"loading {path} in the background; {self.detector.model_path} serves meanwhile")
        try:
            self.model.swap_in_background(Path(path), prepare=lambda new: new.update_config(**self._config_values()),
                                          done=self._on_model_swapped)
        except ModelSwapError as exc:  # validated against, so only a race of two parameter sets
            self.node.get_logger().error(str(exc))

    def _on_model_swapped(self, outcome: SwapOutcome) -> None:
        logger = self.node.get_logger()
        detector = self.detector
        if outcome.succeeded:
            logger.info(outcome.message)
            if detector is not None:
                self._log_model(detector)
                self._publish_label_info(detector)  # the new model's classes
            return
        logger.error(outcome.message)
        if detector is not None:  # the parameter tells what serves: put it back
            self._restoring_model_path = True
            try:
                self.node.set_parameters([Parameter("model_path", value=str(detector.model_path))])
            finally:
                self._restoring_model_path = False

    # ----------------------------------------------------------------- start / stop
    def start(self) -> None:
        """Create the cameras' publishers and subscriptions and start the inference worker."""
        if self.running:
            return
        node, params = self.node, self.params
        qos = image_qos(params["qos_reliability"], params["qos_depth"])
        message_type = CompressedImage if params["input_transport"] == "compressed" else Image
        for camera in self.cameras:
            camera.detections_pub = node.create_publisher(Detection2DArray, camera.detections_topic, 10)
            camera.latency_pubs = {name: node.create_publisher(Float64, f"{camera.debug_namespace}/{name}", 10)
                                   for name in LATENCY_TOPICS}
            camera.debug_image_pub = (node.create_publisher(Image, f"{camera.debug_namespace}/image", 1)
                                      if params["publish_debug_image"] else None)
            camera.subscription = node.create_subscription(
                message_type, camera.image_topic, lambda msg, camera=camera: self._on_image(camera, msg), qos)
        self._batcher.reopen()
        self.subscribed_s = time.perf_counter()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run_worker, args=(self._stop,), name="inference", daemon=True)
        self._worker.start()
        topics = ", ".join(camera.subscription.topic_name for camera in self.cameras)
        node.get_logger().info(
            f"subscribed to {topics} ({params['qos_reliability']}, depth {params['qos_depth']}); publishing "
            f"{', '.join(camera.detections_pub.topic_name for camera in self.cameras)}; budget "
            f"{params['latency_budget_ms']:g} ms ({params['deadline_reference']})"
        )

    def stop(self) -> None:
        """Stop processing: no subscription, no publisher, no worker. The model stays loaded."""
        if not self.running:
            return
        self._stop.set()
        self._batcher.close()
        assert self._worker is not None
        self._worker.join(timeout=10.0)
        self._worker = None
        for camera in self.cameras:
            if camera.subscription is not None:
                self.node.destroy_subscription(camera.subscription)
            for publisher in (camera.detections_pub, camera.debug_image_pub, *camera.latency_pubs.values()):
                if publisher is not None:
                    self.node.destroy_publisher(publisher)
            camera.subscription = camera.detections_pub = camera.debug_image_pub = None
            camera.latency_pubs = {}

    def destroy(self) -> None:
        self.stop()
        self.release_model()
        self._diagnostics_timer.cancel()

    # ----------------------------------------------------------------- data path
    def _on_image(self, camera: CameraStream, msg: Image | CompressedImage) -> None:
        received = time.perf_counter()
        replaced_unprocessed = self._batcher.put(camera.name, ReceivedFrame(camera, msg, received))
        with self.stats_lock:
            camera.stats.record_input(received)
            if replaced_unprocessed:
                camera.stats.record_drop(received)

    def _run_worker(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.model.detector is None:
                retry = self.params["model_retry_period_s"]
                if not self.worker_loads_model or not self.load_model():
                    stop.wait(retry if retry > 0 else None)
                    continue
            batch = self._batcher.take(timeout_s=0.2)
            if batch and not stop.is_set():
                try:
                    self._process(batch)
                except Exception as exc:  # a bug must cost its frames, never the worker
                    self._log_error_throttled(f"frame processing failed: {type(exc).__name__}: {exc}", "processing")

    def _process(self, batch: dict[str, ReceivedFrame]) -> None:
        started = time.perf_counter()
        converted: list[ConvertedFrame] = []
        for frame in batch.values():
            camera, name = frame.camera, frame.camera.name
            start = time.perf_counter()
            try:
                msg = frame.msg
                image, pixel_format = (compressed_image_to_array(msg) if isinstance(msg, CompressedImage)
                                       else raw_image_to_array(msg))
            except ImageFormatError as exc:
                camera.last_input_error = str(exc)
                with self.stats_lock:
                    camera.stats.record_input_error(time.perf_counter())
                where = f"camera '{name}', " if name else ""
                self._log_error_throttled(f"dropping bad image ({where}frame_id '{frame.msg.header.frame_id}'): {exc}",
                                          f"{name}{exc}")
                continue
            converted.append(ConvertedFrame(camera, frame, image, pixel_format, (time.perf_counter() - start) * 1e3))
        if not converted:
            return
        try:
            with self.model.use() as detector:  # a model swap waits until this call is done
                if detector is None:
                    raise InferenceError("the model was released")
                results = detector.detect_batch([(item.image, item.pixel_format) for item in converted])
        except Exception as exc:  # whatever a backend raises, only this cycle's frames fail
            with self.stats_lock:
                for item in converted:
                    item.camera.stats.record_inference_error(time.perf_counter())
            what = str(exc) if isinstance(exc, InferenceError) else f"{type(exc).__name__}: {exc}"
            self._log_error_throttled(f"inference failed: {what}", "inference")
            return
        detected = time.perf_counter()
        for item, result in zip(converted, results):
            self._publish(item, result, detected)
        done = time.perf_counter()
        with self.stats_lock:
            self.cycles.record(done, len(converted), (done - started) * 1e3)

    def _publish(self, item: ConvertedFrame, result: DetectionResult, detected: float) -> None:
        camera, msg = item.camera, item.frame.msg
        track_ids, tracking_started = None, time.perf_counter()
        if camera.tracker is not None:
            stamp = msg.header.stamp
            track_ids = camera.tracker.update(result.detections, stamp.sec + stamp.nanosec * 1e-9)
        tracked = time.perf_counter()
        camera.detections_pub.publish(detections_to_msg(result.detections, msg.header, self.params["class_id_format"],
                                                        track_ids))
        published = time.perf_counter()
        end_to_end_ms = (self.node.get_clock().now() - Time.from_msg(msg.header.stamp)).nanoseconds / 1e6
        in_node_ms = (published - item.frame.received_s) * 1e3
        timings = result.timings
        stage_ms = {
            "image_conversion": item.conversion_ms,
            "preprocess": timings.preprocess_ms,
            "inference": timings.inference_ms,  # the whole model call, shared by the cycle's cameras
            "postprocess": timings.postprocess_ms,
            "tracking": (tracked - tracking_started) * 1e3,
            # message building + publish(), after the cameras before it in this cycle
            "publish": (published - tracked + tracking_started - detected) * 1e3,
        }
        with self.stats_lock:
            missed = camera.stats.record_output(published, stage_ms, end_to_end_ms, in_node_ms)
        for name, value in zip(LATENCY_TOPICS, [*stage_ms.values(), in_node_ms, end_to_end_ms]):
            camera.latency_pubs[name].publish(Float64(data=value))
        if missed:
            where = f" on camera '{camera.name}'" if camera.name else ""
            self.node.get_logger().warn(
                f"deadline miss{where}: {end_to_end_ms:.1f} ms end to end, {in_node_ms:.1f} ms in node, budget "
                f"{self.params['latency_budget_ms']:g} ms", throttle_duration_sec=5.0,
            )
        if camera.debug_image_pub is not None:
            bgr = to_bgr(item.image, item.pixel_format)
            status = f"{len(result.detections)} det | in-node {in_node_ms:.1f} ms | e2e {end_to_end_ms:.1f} ms"
            camera.debug_image_pub.publish(
                array_to_image_msg(draw_detections(bgr, result.detections, status), "bgr8", msg.header))

    def _log_error_throttled(self, message: str, reason: str, period_s: float = 2.0) -> None:
        """Log at most every ``period_s`` per kind of problem (the text before its first ':'),
        so that a stream of bad frames cannot flood the log but each new problem is seen."""
        kind = reason.split(":", 1)[0]
        now = time.monotonic()
        if now - self._last_logged.get(kind, -period_s) >= period_s:
            self._last_logged[kind] = now
            self.node.get_logger().error(message)

    # ----------------------------------------------------------------- diagnostics
    def publish_diagnostics(self) -> None:
        statuses, errors = detector_statuses(self, time.perf_counter())
        array = DiagnosticArray()
        array.header.stamp = self.node.get_clock().now().to_msg()
        array.status = statuses
        self._diagnostics_pub.publish(array)
        if errors:
            self.node.get_logger().error("; ".join(errors), throttle_duration_sec=10.0)
