"""The detector nodes' parameters: one table (:data:`DETECTOR_PARAMETERS`) that both shells declare,
validate and document (``scripts/parameter_tables.py`` writes the README's tables from it), and the
checks of a ``model_path`` set at run time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prune_perception.errors import PrunePerceptionError
from prune_perception.eval.latency import DEADLINE_REFERENCES
from prune_perception.ros.parameters import ParameterSpec, ParameterValidationError
from prune_perception.ros.qos import RELIABILITIES
from prune_perception.runtime.backends import BACKEND_CHOICES, resolve_backend_name
from prune_perception.runtime.backends.base import DEVICE_PATTERN, require_model_file
from prune_perception.runtime.metadata import load_sidecar
from prune_perception.runtime.tracking import TRACKERS, TrackerConfig

CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")
DETECTOR_CONFIG_PARAMETERS = ("score_threshold", "nms_threshold", "max_detections")
HEALTH_PARAMETERS = ("warn_deadline_miss_rate", "error_deadline_miss_rate", "warn_drop_rate", "input_timeout_s")


def _check_device(value: Any) -> str | None:
    return None if DEVICE_PATTERN.match(str(value)) else f"device={value!r} must be auto, cpu, cuda or cuda:N"


def _check_cameras(value: Any) -> str | None:
    names = list(value)
    bad = [name for name in names if not CAMERA_NAME.match(name)]
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
    ParameterSpec("tracker", "none", "Multi-object tracking per camera: none, or bytetrack (each Detection2D's id "
                  "is then its track id, stable while the object stays tracked and never reused within a run).",
                  choices=TRACKERS, read_only=True),
    ParameterSpec("track_activation_threshold", 0.5, "bytetrack: score from which an unmatched detection starts "
                  "a new track.", minimum=0.0, maximum=1.0, read_only=True),
    ParameterSpec("track_high_threshold", 0.6, "bytetrack: detections at or above it are matched first; those "
                  "below only extend existing tracks.", minimum=0.0, maximum=1.0, read_only=True),
    ParameterSpec("track_match_iou", 0.1, "bytetrack: IoU from which a detection may match a track's predicted "
                  "box.", minimum=0.0, maximum=1.0, read_only=True),
    ParameterSpec("track_lost_s", 1.0, "bytetrack: seconds (of header.stamp) a track survives without a match; "
                  "a stamp that goes backwards resets the camera's tracks.", minimum=0.01, maximum=3600.0,
                  read_only=True),
    ParameterSpec("track_frame_rate", 30.0, "bytetrack: the camera's nominal frame rate (the motion model's "
                  "step).", minimum=0.1, maximum=1000.0, read_only=True),
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


def tracker_config(params: dict[str, Any]) -> TrackerConfig | None:
    """The camera trackers' settings, or None with ``tracker: none``."""
    if params["tracker"] == "none":
        return None
    return TrackerConfig(track_activation_threshold=params["track_activation_threshold"],
                         high_conf_det_threshold=params["track_high_threshold"],
                         minimum_iou_threshold=params["track_match_iou"], lost_track_s=params["track_lost_s"],
                         frame_rate=params["track_frame_rate"])
