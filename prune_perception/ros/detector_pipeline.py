"""The detector's frame path, shared by ``detector_node`` and ``managed_detector_node``: one
implementation, two shells.

Data path of one inference cycle::

    <camera>/image_raw (Image) ──callback──> FrameBatcher (newest frame per camera)
        ──worker thread──> raw_image_to_array, per camera
        -> Detector.detect_batch (each image letterboxed on its own, one model call)
        -> detections_to_msg -> <camera>/detections, with that image's header

The subscription callbacks only store the message (newest wins; older unprocessed frames are
dropped and counted per camera), so inference never blocks the executor and latency cannot build
up in a queue. With no ``cameras`` there is one camera whose topics are ``image_raw`` and
``detections``. Everything model-related lives in ``prune_perception.runtime``; this module only
wires ROS. The model sits in a :class:`~prune_perception.runtime.model_slot.ModelSlot`: a new
``model_path`` set at run time loads beside the serving model and replaces it between two cycles.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
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
from prune_perception.eval.latency import DEADLINE_REFERENCES, STAGES, CycleStatistics, FrameStatistics
from prune_perception.ros.detection_messages import detections_to_msg
from prune_perception.ros.diagnostics import build_status, make_status
from prune_perception.ros.image_conversion import array_to_image_msg
from prune_perception.ros.parameters import ParameterSpec, ParameterValidationError, spec_by_name
from prune_perception.ros.qos import RELIABILITIES, image_qos
from prune_perception.runtime.annotate import draw_detections
from prune_perception.runtime.backends import BACKEND_CHOICES, resolve_backend_name
from prune_perception.runtime.backends.base import DEVICE_PATTERN, require_model_file
from prune_perception.runtime.detector import DetectionResult, Detector, DetectorConfig
from prune_perception.runtime.frame_batcher import FrameBatcher
from prune_perception.runtime.metadata import load_sidecar
from prune_perception.runtime.model_slot import ModelSlot, ModelSwapError, SwapOutcome

IMAGE_TOPIC = "image_raw"
COMPRESSED_IMAGE_TOPIC = "image_raw/compressed"
DETECTIONS_TOPIC = "detections"
LATENCY_TOPICS = tuple(f"{stage}_ms" for stage in STAGES) + ("in_node_ms", "end_to_end_ms")
"""Per-frame std_msgs/Float64 topics under ``~/debug/`` (``~/<camera>/debug/`` with cameras)."""
CAMERA_LIVE_WINDOW_S = 1.0
"""A camera that sent nothing for this long is not waited for by an inference cycle."""
_CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")
_DETECTOR_CONFIG_PARAMETERS = ("score_threshold", "nms_threshold", "max_detections")
_HEALTH_PARAMETERS = ("warn_deadline_miss_rate", "error_deadline_miss_rate", "warn_drop_rate", "input_timeout_s")


def _check_device(value: Any) -> str | None:
    return None if DEVICE_PATTERN.match(str(value)) else f"device={value!r} must be auto, cpu, cuda or cuda:N"


def _check_cameras(value: Any) -> str | None:
    names = list(value)
    bad = [name for name in names if not _CAMERA_NAME.match(name)]
    if bad:
        return f"cameras: {bad} are not valid ROS names (letters, digits, _ and /, starting with a letter)"
    if len(set(names)) != len(names):
        return f"cameras: {names} names a camera twice"
    return None


DETECTOR_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("model_path", "", "Model file: .onnx, TensorRT .engine/.plan, or torch .pt2/.pt/.pth. "
                  "Its metadata sidecar (e.g. yolox.onnx.json) is read when present. Set at run time, the new model "
                  "loads in the background while the old one serves; a model that fails to load is refused and the "
                  "parameter reverts.", pattern_hint="non-empty path"),
    ParameterSpec("backend", "auto", "Inference runtime; auto chooses by the model file's suffix.",
                  choices=BACKEND_CHOICES, read_only=True),
    ParameterSpec("device", "auto", "auto uses a CUDA GPU when the backend can, else the CPU.",
                  read_only=True, pattern_hint="auto, cpu, cuda or cuda:N", validator=_check_device),
    ParameterSpec("intra_op_threads", 0, "CPU threads per inference; 0 lets the runtime decide.",
                  minimum=0, maximum=256, read_only=True),
    ParameterSpec("warmup_runs", 2, "Inferences on a blank frame before the first real one.",
                  minimum=0, maximum=100, read_only=True),
    ParameterSpec("model_retry_period_s", 5.0, "While the model cannot be loaded, retry this often "
                  "(diagnostics stay ERROR meanwhile); 0 never retries.", minimum=0.0, maximum=3600.0, read_only=True),
    ParameterSpec("score_threshold", 0.3, "Minimum objectness x class score of a published detection.",
                  minimum=0.0, maximum=1.0),
    ParameterSpec("nms_threshold", 0.45, "IoU above which same-class boxes are suppressed.", minimum=0.0, maximum=1.0),
    ParameterSpec("max_detections", 100, "Most detections published per image.", minimum=1, maximum=10000),
    ParameterSpec("class_id_format", "name", "ObjectHypothesis.class_id as the class name or its numeric id.",
                  choices=("name", "id")),
    ParameterSpec("latency_budget_ms", 100.0, "Real-time budget of one frame; frames over it count as "
                  "deadline misses.", minimum=0.1, maximum=60000.0),
    ParameterSpec("deadline_reference", "end_to_end", "Latency checked against the budget: end_to_end "
                  "(publish time minus header.stamp) or in_node (publish minus receive).", choices=DEADLINE_REFERENCES),
    ParameterSpec("cameras", (), "Camera namespaces, e.g. [front, rear]: subscribes <camera>/image_raw and "
                  "publishes <camera>/detections for each, their frames run as one batch. Empty: one camera on "
                  "image_raw -> detections.", read_only=True, pattern_hint="unique ROS names", validator=_check_cameras),
    ParameterSpec("batch_wait_ms", 10.0, "With several cameras: how long an inference cycle waits, after its "
                  "oldest frame arrived, for the other cameras' frames (a camera silent for 1 s is not waited for).",
                  minimum=0.0, maximum=1000.0, read_only=True),
    ParameterSpec("input_transport", "raw", "raw subscribes sensor_msgs/Image on image_raw; compressed "
                  "subscribes sensor_msgs/CompressedImage on image_raw/compressed.",
                  choices=("raw", "compressed"), read_only=True),
    ParameterSpec("qos_reliability", "best_effort", "Image subscription reliability (best_effort is the "
                  "sensor-data profile).", choices=RELIABILITIES, read_only=True),
    ParameterSpec("qos_depth", 5, "Image subscription history depth. Only the newest frame is ever "
                  "processed.", minimum=1, maximum=1000, read_only=True),
    ParameterSpec("publish_debug_image", False, "Publish the image with boxes and latency drawn on "
                  "~/debug/image.", read_only=True),
    ParameterSpec("diagnostics_period_s", 1.0, "Period of /diagnostics messages.", minimum=0.05, maximum=60.0,
                  read_only=True),
    ParameterSpec("statistics_window_s", 5.0, "Sliding window of the latency percentiles, rates and miss "
                  "rate in /diagnostics.", minimum=0.5, maximum=3600.0, read_only=True),
    ParameterSpec("warn_deadline_miss_rate", 0.05, "Deadline miss rate in the window from which "
                  "diagnostics are WARN.", minimum=0.0, maximum=1.0),
    ParameterSpec("error_deadline_miss_rate", 0.25, "Deadline miss rate in the window from which "
                  "diagnostics are ERROR.", minimum=0.0, maximum=1.0),
    ParameterSpec("warn_drop_rate", 0.5, "Fraction of received frames dropped (input faster than the "
                  "model) from which diagnostics are WARN.", minimum=0.0, maximum=1.0),
    ParameterSpec("input_timeout_s", 3.0, "A camera that sent no frame for this long (or, with use_sim_time, a "
                  "/clock that stopped advancing) makes diagnostics WARN; 0 never warns.", minimum=0.0, maximum=3600.0),
)


def require_model_path(params: dict[str, Any]) -> None:
    if not params["model_path"]:
        raise ParameterValidationError("invalid parameters:\n  - model_path is required (path to a .onnx/.engine/.pt model)")


def check_new_model_path(path: str, backend: str) -> str | None:
    """Why a model_path set at run time is refused at once (None: it may be loaded): the quick
    checks, before the background load that finds the rest (a corrupt graph, wrong outputs)."""
    if not path:
        return "model_path must not be empty"
    try:
        require_model_file(path)
        resolve_backend_name(path, backend)
        load_sidecar(Path(path))
    except PrunePerceptionError as exc:
        return f"model_path refused: {exc}"
    return None


class _ClockWatch:
    """How long (steady time) the ROS clock has not moved: a stopped /clock under use_sim_time."""

    def __init__(self) -> None:
        self._last_ns: int | None = None
        self._moved_s = time.monotonic()

    def observe(self, now_ns: int) -> tuple[float, float]:
        """(seconds since the clock last moved, the clock in seconds)."""
        steady = time.monotonic()
        if now_ns != self._last_ns:
            self._last_ns, self._moved_s = now_ns, steady
        return steady - self._moved_s, now_ns / 1e9


@dataclass
class _ReceivedFrame:
    camera: "_Camera"
    msg: Image | CompressedImage
    received_s: float  # time.perf_counter() when the callback ran


@dataclass
class _ConvertedFrame:
    camera: "_Camera"
    frame: _ReceivedFrame
    image: Any
    pixel_format: str
    conversion_ms: float


class _Camera:
    """One camera's topics, publishers and statistics (name "" for the single-camera node)."""

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name = name
        prefix = f"{name}/" if name else ""
        transport = COMPRESSED_IMAGE_TOPIC if params["input_transport"] == "compressed" else IMAGE_TOPIC
        self.image_topic = prefix + transport
        self.detections_topic = prefix + DETECTIONS_TOPIC
        self.debug_namespace = f"~/{name}/debug" if name else "~/debug"
        self.stats = FrameStatistics(params["latency_budget_ms"], params["statistics_window_s"], params["deadline_reference"])
        self.last_input_error: str | None = None
        self.subscription: Any = None
        self.detections_pub: Any = None
        self.latency_pubs: dict[str, Any] = {}
        self.debug_image_pub: Any = None


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
        self.cameras = [_Camera(name, params) for name in (params["cameras"] or ("",))]
        self.multi_camera = bool(params["cameras"])
        self.cycles = CycleStatistics(params["statistics_window_s"])
        self._health_thresholds = self._make_health_thresholds(params)
        self._stats_lock = threading.Lock()
        self._batcher: FrameBatcher[_ReceivedFrame] = FrameBatcher(
            [camera.name for camera in self.cameras], params["batch_wait_ms"] / 1e3, CAMERA_LIVE_WINDOW_S)
        self.model = ModelSlot(self._build_detector)
        self._restoring_model_path = False
        self.model_error: str | None = "model not loaded yet"
        self.state_note: str | None = None
        """Set by a managed shell: its lifecycle state, shown in diagnostics."""
        self._last_logged: dict[str, float] = {}
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._subscribed_s = time.perf_counter()
        self._sim_clock = _ClockWatch()
        self._diagnostics_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
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
        return HealthThresholds(**{name: values[name] for name in _HEALTH_PARAMETERS})

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
        if self.detector is not None and changed.keys() & set(_DETECTOR_CONFIG_PARAMETERS):
            self.detector.update_config(**self._config_values())
        if changed.keys() & set(_HEALTH_PARAMETERS):
            self._health_thresholds = self._make_health_thresholds(self.params)
        if changed.keys() & {"latency_budget_ms", "deadline_reference"}:
            with self._stats_lock:
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
        return {k: self.params[k] for k in _DETECTOR_CONFIG_PARAMETERS}

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
        return True

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
        self._subscribed_s = time.perf_counter()
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
    def _on_image(self, camera: _Camera, msg: Image | CompressedImage) -> None:
        received = time.perf_counter()
        replaced_unprocessed = self._batcher.put(camera.name, _ReceivedFrame(camera, msg, received))
        with self._stats_lock:
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

    def _process(self, batch: dict[str, _ReceivedFrame]) -> None:
        started = time.perf_counter()
        converted: list[_ConvertedFrame] = []
        for frame in batch.values():
            camera, name = frame.camera, frame.camera.name
            start = time.perf_counter()
            try:
                msg = frame.msg
                image, pixel_format = (compressed_image_to_array(msg) if isinstance(msg, CompressedImage)
                                       else raw_image_to_array(msg))
            except ImageFormatError as exc:
                camera.last_input_error = str(exc)
                with self._stats_lock:
                    camera.stats.record_input_error(time.perf_counter())
                where = f"camera '{name}', " if name else ""
                self._log_error_throttled(f"dropping bad image ({where}frame_id '{frame.msg.header.frame_id}'): {exc}",
                                          f"{name}{exc}")
                continue
            converted.append(_ConvertedFrame(camera, frame, image, pixel_format, (time.perf_counter() - start) * 1e3))
        if not converted:
            return
        try:
            with self.model.use() as detector:  # a model swap waits until this call is done
                if detector is None:
                    raise InferenceError("the model was released")
                results = detector.detect_batch([(item.image, item.pixel_format) for item in converted])
        except Exception as exc:  # whatever a backend raises, only this cycle's frames fail
            with self._stats_lock:
                for item in converted:
                    item.camera.stats.record_inference_error(time.perf_counter())
            what = str(exc) if isinstance(exc, InferenceError) else f"{type(exc).__name__}: {exc}"
            self._log_error_throttled(f"inference failed: {what}", "inference")
            return
        detected = time.perf_counter()
        for item, result in zip(converted, results):
            self._publish(item, result, detected)
        done = time.perf_counter()
        with self._stats_lock:
            self.cycles.record(done, len(converted), (done - started) * 1e3)

    def _publish(self, item: _ConvertedFrame, result: DetectionResult, detected: float) -> None:
        camera, msg = item.camera, item.frame.msg
        camera.detections_pub.publish(detections_to_msg(result.detections, msg.header, self.params["class_id_format"]))
        published = time.perf_counter()
        end_to_end_ms = (self.node.get_clock().now() - Time.from_msg(msg.header.stamp)).nanoseconds / 1e6
        in_node_ms = (published - item.frame.received_s) * 1e3
        timings = result.timings
        stage_ms = {
            "image_conversion": item.conversion_ms,
            "preprocess": timings.preprocess_ms,
            "inference": timings.inference_ms,  # the whole model call, shared by the cycle's cameras
            "postprocess": timings.postprocess_ms,
            "publish": (published - detected) * 1e3,  # message building + publish(), after the cameras before it
        }
        with self._stats_lock:
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

    def _node_warnings(self, values: dict[str, str]) -> list[str]:
        """Problems of the whole node, not of one camera: a stopped sim clock, a refused model swap.
        Each also goes into ``values``."""
        warnings = []
        timeout = self.params["input_timeout_s"]
        if self.node.get_parameter("use_sim_time").value:
            stalled_s, sim_now_s = self._sim_clock.observe(self.node.get_clock().now().nanoseconds)
            values["sim_time_s"] = f"{sim_now_s:.3f}"
            if timeout > 0 and stalled_s >= timeout:
                problem = (f"use_sim_time is set but no /clock arrived for {stalled_s:.1f} s" if sim_now_s == 0 else
                           f"sim clock stopped: /clock has not advanced for {stalled_s:.1f} s (at {sim_now_s:.3f} s)")
                values["sim_clock"] = problem
                warnings.append(problem)
        if self.model.loading is not None:
            values["model_swap"] = f"loading {self.model.loading}"
        elif (swap := self.model.last_swap) is not None:
            values["model_swap"] = swap.message
            if not swap.succeeded and time.monotonic() - swap.finished_s < self.params["statistics_window_s"]:
                warnings.append(swap.message)
        return warnings

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
        now = time.perf_counter()
        detector = self.detector
        extra = {
            "model_path": str(detector.model_path) if detector else self.params["model_path"],
            "backend": detector.backend_name if detector else self.params["backend"],
            "device": detector.device if detector else self.params["device"],
            "model_ready": str(detector is not None).lower(),
        }
        if self.state_note:
            extra["lifecycle_state"] = self.state_note
        if self.model_error:
            extra["model_error"] = self.model_error
        warnings = self._node_warnings(extra)
        hardware = f"{extra['backend']}:{extra['device']}"
        fqn = self.node.get_fully_qualified_name()
        statuses: list[DiagnosticStatus] = []
        errors: list[str] = []
        for camera in self.cameras:
            with self._stats_lock:
                report = camera.stats.report(now)
            silence = None
            if self.running:  # not subscribed (inactive): no input is expected
                silence = now - max(camera.stats.last_input_s or self._subscribed_s, self._subscribed_s)
            level, message = evaluate_health(report, self._health_thresholds, self.model_error, camera.last_input_error,
                                             silence, warnings)
            values = dict(extra)
            if camera.last_input_error:
                values["last_input_error"] = camera.last_input_error
            if camera.name:
                values.update(camera=camera.name, image_topic=camera.image_topic,
                              detections_topic=camera.detections_topic)
            name = f"{fqn}: camera {camera.name}" if camera.name else f"{fqn}: detector"
            statuses.append(build_status(name, hardware, level, message, report, values))
            if level == HealthLevel.ERROR:
                errors.append(f"camera {camera.name}: {message}" if camera.name else message)
        if self.multi_camera:
            with self._stats_lock:
                cycle_values = self.cycles.values(now)
            batch = "n/a" if detector is None else ("dynamic" if detector.max_batch is None else detector.max_batch)
            statuses.append(make_status(
                f"{fqn}: batcher", hardware, HealthLevel.OK,
                f"{cycle_values['cycle_rate_hz']:.1f} cycles/s, mean batch {cycle_values['mean_batch_size']:.2f}",
                {"cameras": len(self.cameras), "model_max_batch": batch, "batch_wait_ms": self.params["batch_wait_ms"],
                 **cycle_values}))
        array = DiagnosticArray()
        array.header.stamp = self.node.get_clock().now().to_msg()
        array.status = statuses
        self._diagnostics_pub.publish(array)
        if errors:
            self.node.get_logger().error("; ".join(errors), throttle_duration_sec=10.0)
