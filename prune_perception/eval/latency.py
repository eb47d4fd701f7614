"""Latency statistics over a sliding time window, frame rates, drops and deadline misses.

ROS-free: the node feeds it timestamps and durations; tests and reports read summaries.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

STAGES = ("image_conversion", "preprocess", "inference", "postprocess", "tracking", "publish")
"""Per-frame stages timed inside the node, in pipeline order."""

DEADLINE_REFERENCES = ("end_to_end", "in_node")


@dataclass(frozen=True)
class LatencySummary:
    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, values_ms: Iterable[float]) -> "LatencySummary":
        values = np.asarray(list(values_ms), dtype=np.float64)
        if values.size == 0:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan)
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return cls(int(values.size), float(values.mean()), float(p50), float(p95), float(p99), float(values.max()))


class SlidingWindow:
    """Timestamped samples of the last ``window_s`` seconds (timestamps in seconds, any clock)."""

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, timestamp_s: float, value: float = 1.0) -> None:
        self._samples.append((timestamp_s, value))
        self._expire(timestamp_s)  # bounded even if nobody reads it (found by the soak: 0.33 MB/min)

    def _expire(self, now_s: float) -> None:
        horizon = now_s - self.window_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()

    def values(self, now_s: float) -> list[float]:
        self._expire(now_s)
        return [value for _, value in self._samples]

    def count(self, now_s: float) -> int:
        self._expire(now_s)
        return len(self._samples)

    def rate_hz(self, now_s: float) -> float:
        """Events per second over the window (0 until two events are seen)."""
        self._expire(now_s)
        if len(self._samples) < 2:
            return 0.0
        span = now_s - self._samples[0][0]
        return len(self._samples) / max(span, 1e-9) if span > 0 else 0.0


@dataclass(frozen=True)
class FrameReport:
    """What happened in the last window, plus totals since start."""

    window_s: float
    input_rate_hz: float
    output_rate_hz: float
    frames_in: int
    frames_out: int
    dropped: int
    deadline_misses: int
    deadline_miss_rate: float
    input_errors: int
    inference_errors: int
    total_frames_in: int
    total_frames_out: int
    total_dropped: int
    total_deadline_misses: int
    total_input_errors: int
    total_inference_errors: int
    budget_ms: float
    deadline_reference: str
    end_to_end: LatencySummary
    in_node: LatencySummary
    stages: dict[str, LatencySummary] = field(default_factory=dict)

    @property
    def drop_rate(self) -> float:
        return self.dropped / self.frames_in if self.frames_in else 0.0


class FrameStatistics:
    """Counts frames in and out, drops, errors and deadline misses, and keeps latency windows.

    A frame misses its deadline when its ``deadline_reference`` latency (``end_to_end``:
    publish time minus the image's ``header.stamp``; ``in_node``: publish minus receive) exceeds
    ``budget_ms``. Dropped frames are counted apart: they never produced an output.

    Example:
        >>> stats = FrameStatistics(budget_ms=50.0, window_s=5.0)
        >>> stats.record_input(0.0)
        >>> missed = stats.record_output(0.03, {"inference": 20.0}, end_to_end_ms=30.0, in_node_ms=25.0)
        >>> stats.report(0.03).deadline_misses
        0
    """

    def __init__(self, budget_ms: float, window_s: float = 5.0, deadline_reference: str = "end_to_end") -> None:
        self.window_s = window_s
        self.set_budget(budget_ms, deadline_reference)
        self._inputs = SlidingWindow(window_s)
        self._outputs = SlidingWindow(window_s)
        self._drops = SlidingWindow(window_s)
        self._misses = SlidingWindow(window_s)
        self._input_errors = SlidingWindow(window_s)
        self._inference_errors = SlidingWindow(window_s)
        self._end_to_end = SlidingWindow(window_s)
        self._in_node = SlidingWindow(window_s)
        self._stages = {stage: SlidingWindow(window_s) for stage in STAGES}
        self.totals = {"in": 0, "out": 0, "dropped": 0, "misses": 0, "input_errors": 0, "inference_errors": 0}
        self.last_input_s: float | None = None
        """When the newest frame arrived (None before the first)."""

    def set_budget(self, budget_ms: float, deadline_reference: str | None = None) -> None:
        if budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
        if deadline_reference is not None:
            if deadline_reference not in DEADLINE_REFERENCES:
                raise ValueError(f"deadline_reference must be one of {DEADLINE_REFERENCES}, got {deadline_reference!r}")
            self.deadline_reference = deadline_reference
        self.budget_ms = budget_ms

    def record_input(self, now_s: float) -> None:
        self.last_input_s = now_s
        self._inputs.add(now_s)
        self.totals["in"] += 1

    def record_drop(self, now_s: float, count: int = 1) -> None:
        for _ in range(count):
            self._drops.add(now_s)
        self.totals["dropped"] += count

    def record_input_error(self, now_s: float) -> None:
        self._input_errors.add(now_s)
        self.totals["input_errors"] += 1

    def record_inference_error(self, now_s: float) -> None:
        self._inference_errors.add(now_s)
        self.totals["inference_errors"] += 1

    def is_deadline_miss(self, end_to_end_ms: float, in_node_ms: float) -> bool:
        latency = end_to_end_ms if self.deadline_reference == "end_to_end" else in_node_ms
        return latency > self.budget_ms

    def record_output(
        self, now_s: float, stage_ms: dict[str, float], end_to_end_ms: float, in_node_ms: float
    ) -> bool:
        """Record one published frame; return whether it missed its deadline."""
        self._outputs.add(now_s)
        self.totals["out"] += 1
        for stage, value in stage_ms.items():
            self._stages[stage].add(now_s, value)
        self._end_to_end.add(now_s, end_to_end_ms)
        self._in_node.add(now_s, in_node_ms)
        missed = self.is_deadline_miss(end_to_end_ms, in_node_ms)
        if missed:
            self._misses.add(now_s)
            self.totals["misses"] += 1
        return missed

    def report(self, now_s: float) -> FrameReport:
        frames_out = self._outputs.count(now_s)
        misses = self._misses.count(now_s)
        return FrameReport(
            window_s=self.window_s,
            input_rate_hz=self._inputs.rate_hz(now_s),
            output_rate_hz=self._outputs.rate_hz(now_s),
            frames_in=self._inputs.count(now_s),
            frames_out=frames_out,
            dropped=self._drops.count(now_s),
            deadline_misses=misses,
            deadline_miss_rate=misses / frames_out if frames_out else 0.0,
            input_errors=self._input_errors.count(now_s),
            inference_errors=self._inference_errors.count(now_s),
            total_frames_in=self.totals["in"],
            total_frames_out=self.totals["out"],
            total_dropped=self.totals["dropped"],
            total_deadline_misses=self.totals["misses"],
            total_input_errors=self.totals["input_errors"],
            total_inference_errors=self.totals["inference_errors"],
            budget_ms=self.budget_ms,
            deadline_reference=self.deadline_reference,
            end_to_end=LatencySummary.of(self._end_to_end.values(now_s)),
            in_node=LatencySummary.of(self._in_node.values(now_s)),
            stages={stage: LatencySummary.of(window.values(now_s)) for stage, window in self._stages.items()},
        )


class CycleStatistics:
    """Inference cycles of a batching node: how many images each model call ran, and how long a
    cycle took from taking its frames to publishing the last camera's detections.

    Example:
        >>> cycles = CycleStatistics(window_s=5.0)
        >>> cycles.record(0.1, batch_size=3, cycle_ms=40.0)
        >>> cycles.values(0.1)["batch_size_3"]
        1
    """

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._cycles = SlidingWindow(window_s)
        self._sizes = SlidingWindow(window_s)
        self.histogram: dict[int, int] = {}
        """Cycles per batch size since the start."""

    def record(self, now_s: float, batch_size: int, cycle_ms: float) -> None:
        self._cycles.add(now_s, cycle_ms)
        self._sizes.add(now_s, batch_size)
        self.histogram[batch_size] = self.histogram.get(batch_size, 0) + 1

    def values(self, now_s: float) -> dict[str, float | int]:
        """Key/values for diagnostics: cycle rate and latency and mean batch in the window, and
        the lifetime batch-size histogram (``batch_size_N``: cycles that ran N images)."""
        cycle = LatencySummary.of(self._cycles.values(now_s))
        sizes = self._sizes.values(now_s)
        values: dict[str, float | int] = {
            "window_s": self.window_s,
            "cycle_rate_hz": self._cycles.rate_hz(now_s),
            "mean_batch_size": float(np.mean(sizes)) if sizes else 0.0,
            "cycle_p50_ms": cycle.p50_ms,
            "cycle_p99_ms": cycle.p99_ms,
            "total_cycles": sum(self.histogram.values()),
        }
        values.update({f"batch_size_{size}": count for size, count in sorted(self.histogram.items())})
        return values
