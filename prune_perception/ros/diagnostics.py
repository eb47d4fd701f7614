"""FrameReport + health -> diagnostic_msgs/DiagnosticStatus key/values."""

from __future__ import annotations

import math

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from prune_perception.eval.health import HealthLevel
from prune_perception.eval.latency import FrameReport, LatencySummary


def _format(value: float | int | str) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _latency_values(prefix: str, summary: LatencySummary) -> list[tuple[str, float]]:
    return [
        (f"{prefix}_p50_ms", summary.p50_ms),
        (f"{prefix}_p95_ms", summary.p95_ms),
        (f"{prefix}_p99_ms", summary.p99_ms),
        (f"{prefix}_max_ms", summary.max_ms),
    ]


def frame_report_values(report: FrameReport) -> list[tuple[str, float | int | str]]:
    """All numbers of a report as (key, value), latency keys ending in ``_ms``."""
    values: list[tuple[str, float | int | str]] = [
        ("window_s", report.window_s),
        ("latency_budget_ms", report.budget_ms),
        ("deadline_reference", report.deadline_reference),
        ("input_rate_hz", report.input_rate_hz),
        ("output_rate_hz", report.output_rate_hz),
        ("frames_in", report.frames_in),
        ("frames_out", report.frames_out),
        ("dropped_frames", report.dropped),
        ("deadline_misses", report.deadline_misses),
        ("deadline_miss_rate", report.deadline_miss_rate),
        ("input_errors", report.input_errors),
        ("inference_errors", report.inference_errors),
        ("total_frames_in", report.total_frames_in),
        ("total_frames_out", report.total_frames_out),
        ("total_dropped_frames", report.total_dropped),
        ("total_deadline_misses", report.total_deadline_misses),
        ("total_input_errors", report.total_input_errors),
        ("total_inference_errors", report.total_inference_errors),
    ]
    values += _latency_values("end_to_end", report.end_to_end)
    values += _latency_values("in_node", report.in_node)
    for stage, summary in report.stages.items():
        values += _latency_values(stage, summary)
    return values


def build_status(
    name: str,
    hardware_id: str,
    level: HealthLevel,
    message: str,
    report: FrameReport,
    extra: dict[str, str] | None = None,
) -> DiagnosticStatus:
    return make_status(name, hardware_id, level, message, list((extra or {}).items()) + frame_report_values(report))


def make_status(name: str, hardware_id: str, level: HealthLevel, message: str,
                values: dict[str, float | int | str] | list[tuple[str, float | int | str]]) -> DiagnosticStatus:
    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    status.level = bytes([int(level)])
    status.message = message
    pairs = values.items() if isinstance(values, dict) else values
    status.values = [KeyValue(key=key, value=_format(value)) for key, value in pairs]
    return status
