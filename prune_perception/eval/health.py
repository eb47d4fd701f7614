"""OK / WARN / ERROR for a running detector, from its frame report and configurable thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Sequence

from prune_perception.eval.latency import FrameReport


class HealthLevel(IntEnum):
    """Same values as ``diagnostic_msgs/DiagnosticStatus`` OK, WARN, ERROR."""

    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class HealthThresholds:
    """Rates are fractions over the statistics window."""

    warn_deadline_miss_rate: float = 0.05
    error_deadline_miss_rate: float = 0.25
    warn_drop_rate: float = 0.5
    input_timeout_s: float = 3.0
    """An input (a camera, or /clock under use_sim_time) silent this long is WARN; 0: never."""

    def __post_init__(self) -> None:
        if self.input_timeout_s < 0:
            raise ValueError(f"input_timeout_s must be >= 0, got {self.input_timeout_s}")
        for name in ("warn_deadline_miss_rate", "error_deadline_miss_rate", "warn_drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.warn_deadline_miss_rate > self.error_deadline_miss_rate:
            raise ValueError("warn_deadline_miss_rate must not exceed error_deadline_miss_rate")


def evaluate_health(
    report: FrameReport, thresholds: HealthThresholds, model_error: str | None = None, last_input_error: str | None = None,
    input_silence_s: float | None = None, warnings: Sequence[str] = (),
) -> tuple[HealthLevel, str]:
    """The worst applicable level and a one-line reason.

    ERROR: the model cannot run (``model_error``), inference failed in the window, or the deadline
    miss rate reached ``error_deadline_miss_rate``. WARN: no input for ``input_timeout_s``
    (``input_silence_s``: seconds since the last frame, or since subscribing; None when not
    subscribed), the miss rate reached ``warn_deadline_miss_rate``, bad input frames arrived, too
    many frames were dropped, or any of the caller's ``warnings`` (e.g. a stopped sim clock).
    """
    if model_error:
        return HealthLevel.ERROR, f"model cannot run: {model_error}"
    if report.inference_errors:
        return HealthLevel.ERROR, f"{report.inference_errors} inference failure(s) in the last {report.window_s:g} s"
    miss_text = (
        f"{report.deadline_misses}/{report.frames_out} frames over the {report.budget_ms:g} ms budget "
        f"({report.deadline_reference})"
    )
    if report.frames_out and report.deadline_miss_rate >= thresholds.error_deadline_miss_rate:
        return HealthLevel.ERROR, miss_text
    reasons = []
    if input_silence_s is not None and 0 < thresholds.input_timeout_s <= input_silence_s:
        reasons.append(f"no input for {input_silence_s:.1f} s")
    if report.frames_out and report.deadline_miss_rate >= thresholds.warn_deadline_miss_rate:
        reasons.append(miss_text)
    if report.input_errors:
        reasons.append(f"{report.input_errors} bad input frame(s)" + (f", last: {last_input_error}" if last_input_error else ""))
    if report.frames_in and report.drop_rate >= thresholds.warn_drop_rate:
        reasons.append(f"{report.dropped}/{report.frames_in} frames dropped: input faster than the model")
    reasons += warnings
    if reasons:
        return HealthLevel.WARN, "; ".join(reasons)
    if report.frames_in == 0:
        return HealthLevel.OK, "waiting for images"
    return HealthLevel.OK, f"{report.output_rate_hz:.1f} Hz, end-to-end p99 {report.end_to_end.p99_ms:.1f} ms"
