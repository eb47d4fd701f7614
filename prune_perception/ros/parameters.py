"""Declared ROS parameters: one table that the node, ``config/*.yaml`` and the README all follow.

Each :class:`ParameterSpec` becomes a declared parameter with a descriptor (description, range,
allowed values, read-only). :func:`declare_parameters` declares a whole table and reports every
invalid value at once, with the parameter name, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node

from prune_perception.errors import PrunePerceptionError
from prune_perception.eval.latency import DEADLINE_REFERENCES
from prune_perception.ros.qos import RELIABILITIES
from prune_perception.runtime.backends import BACKEND_CHOICES
from prune_perception.runtime.backends.base import DEVICE_PATTERN


class ParameterValidationError(PrunePerceptionError):
    """One or more parameters have invalid values; the message lists each of them."""


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: bool | int | float | str
    description: str
    minimum: float | int | None = None
    maximum: float | int | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = False
    pattern_hint: str | None = None  # for strings checked by a custom rule (see _check_string)

    @property
    def type_name(self) -> str:
        return {bool: "bool", int: "int", float: "double", str: "string"}[type(self.default)]

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(description=self.description, read_only=self.read_only)
        if isinstance(self.default, float):
            descriptor.type = ParameterType.PARAMETER_DOUBLE
            if self.minimum is not None:
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=float(self.minimum), to_value=float(self.maximum), step=0.0)
                ]
        elif isinstance(self.default, bool):
            descriptor.type = ParameterType.PARAMETER_BOOL
        elif isinstance(self.default, int):
            descriptor.type = ParameterType.PARAMETER_INTEGER
            if self.minimum is not None:
                descriptor.integer_range = [
                    IntegerRange(from_value=int(self.minimum), to_value=int(self.maximum), step=1)
                ]
        else:
            descriptor.type = ParameterType.PARAMETER_STRING
        if self.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(self.choices)
        elif self.pattern_hint:
            descriptor.additional_constraints = self.pattern_hint
        return descriptor

    def range_text(self) -> str:
        if self.choices:
            return " \\| ".join(f"`{choice}`" for choice in self.choices)
        if self.minimum is not None:
            return f"[{self.minimum}, {self.maximum}]"
        return self.pattern_hint or ""

    def check(self, value: Any) -> str | None:
        """A reason the value is invalid, or None. Ranges and types are also enforced by rclpy."""
        if self.choices and value not in self.choices:
            return f"{self.name}={value!r} is not one of {list(self.choices)}"
        if self.minimum is not None and not self.minimum <= value <= self.maximum:
            return f"{self.name}={value!r} is outside [{self.minimum}, {self.maximum}]"
        if self.name == "device" and not DEVICE_PATTERN.match(str(value)):
            return f"device={value!r} must be auto, cpu, cuda or cuda:N"
        return None


DETECTOR_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("model_path", "", "Model file: .onnx, TensorRT .engine/.plan, or torch .pt2/.pt/.pth. "
                  "Its metadata sidecar (e.g. yolox.onnx.json) is read when present.", read_only=True,
                  pattern_hint="non-empty path"),
    ParameterSpec("backend", "auto", "Inference runtime; auto chooses by the model file's suffix.",
                  choices=BACKEND_CHOICES, read_only=True),
    ParameterSpec("device", "auto", "auto uses a CUDA GPU when the backend can, else the CPU.",
                  read_only=True, pattern_hint="auto, cpu, cuda or cuda:N"),
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
)


def spec_by_name(specs: Sequence[ParameterSpec]) -> dict[str, ParameterSpec]:
    return {spec.name: spec for spec in specs}


def declare_parameters(node: Node, specs: Sequence[ParameterSpec]) -> dict[str, Any]:
    """Declare every parameter of ``specs`` on ``node`` and return their values.

    Raises:
        ParameterValidationError: listing every invalid value (wrong type, out of range, not an
            allowed choice), so that a bad params file is fixed in one go.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec in specs:
        try:
            value = node.declare_parameter(spec.name, spec.default, spec.descriptor()).value
        except InvalidParameterTypeException as exc:
            hint = " (write a decimal point, e.g. 50.0)" if isinstance(spec.default, float) else ""
            problems.append(f"{spec.name} must be of type {spec.type_name}{hint}: {exc}")
            continue
        except InvalidParameterValueException:
            problems.append(f"{spec.name} is outside its allowed range {spec.range_text()}")
            continue
        problem = spec.check(value)
        if problem:
            problems.append(problem)
        values[spec.name] = value
    if problems:
        raise ParameterValidationError("invalid parameters:\n  - " + "\n  - ".join(problems))
    return values


def markdown_table(specs: Sequence[ParameterSpec]) -> str:
    """The README's parameter table for ``specs`` (a test checks the README contains it)."""

    def default_text(value: Any) -> str:
        return f"`{str(value).lower()}`" if isinstance(value, bool) else (f"`{value!r}`" if isinstance(value, str) else f"`{value}`")

    rows = ["| Name | Type | Default | Range | Run-time | Description |", "|---|---|---|---|---|---|"]
    for spec in specs:
        rows.append(
            f"| `{spec.name}` | {spec.type_name} | {default_text(spec.default)} | {spec.range_text()} | "
            f"{'no' if spec.read_only else 'yes'} | {spec.description} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # print the README tables: python -m prune_perception.ros.parameters
    from prune_perception.ros.bag_player_node import BAG_PLAYER_PARAMETERS
    from prune_perception.ros.evaluator_node import EVALUATOR_PARAMETERS
    from prune_perception.ros.sim_camera_node import SIM_CAMERA_PARAMETERS
    from prune_perception.ros.video_publisher_node import VIDEO_PUBLISHER_PARAMETERS

    for name, table in (("detector_node", DETECTOR_PARAMETERS), ("video_publisher", VIDEO_PUBLISHER_PARAMETERS),
                        ("bag_player", BAG_PLAYER_PARAMETERS), ("sim_camera", SIM_CAMERA_PARAMETERS),
                        ("evaluator", EVALUATOR_PARAMETERS)):
        print(f"{name}\n\n{markdown_table(table)}\n")
