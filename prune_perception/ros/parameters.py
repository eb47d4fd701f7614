"""Declared ROS parameters: one table that the node, ``config/*.yaml`` and the README all follow.

Each :class:`ParameterSpec` becomes a declared parameter with a descriptor (description, range,
allowed values, read-only). :func:`declare_parameters` declares a whole table and reports every
invalid value at once, with the parameter name, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from prune_perception.errors import PrunePerceptionError


class ParameterValidationError(PrunePerceptionError):
    """One or more parameters have invalid values; the message lists each of them."""


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: bool | int | float | str | tuple[str, ...]
    """A tuple of strings declares a string array."""
    description: str
    minimum: float | int | None = None
    maximum: float | int | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = False
    pattern_hint: str | None = None  # what ``validator`` accepts, for the descriptor and the README
    validator: Callable[[Any], str | None] | None = None
    """A further rule: the reason a value is invalid, or None."""

    @property
    def type_name(self) -> str:
        return {bool: "bool", int: "int", float: "double", str: "string", tuple: "string[]"}[type(self.default)]

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(description=self.description, read_only=self.read_only)
        if isinstance(self.default, tuple):
            descriptor.type = ParameterType.PARAMETER_STRING_ARRAY
        elif isinstance(self.default, float):
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
        if self.validator is not None:
            return self.validator(value)
        return None


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
            if isinstance(spec.default, tuple):
                # Declared by type: rclpy reads an empty default list as a byte array. Not set in a
                # params file or on the command line, it stays unset and means the default.
                value = node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, spec.descriptor()).value
                value = spec.default if value is None else tuple(value)
            else:
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
        if isinstance(value, tuple):
            return f"`{list(value)!r}`"
        return f"`{str(value).lower()}`" if isinstance(value, bool) else (f"`{value!r}`" if isinstance(value, str) else f"`{value}`")

    rows = ["| Name | Type | Default | Range | Run-time | Description |", "|---|---|---|---|---|---|"]
    for spec in specs:
        rows.append(
            f"| `{spec.name}` | {spec.type_name} | {default_text(spec.default)} | {spec.range_text()} | "
            f"{'no' if spec.read_only else 'yes'} | {spec.description} |"
        )
    return "\n".join(rows)
