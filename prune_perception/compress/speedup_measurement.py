"""Measured speed-ups with their noise: a close call is timed again, and decided on an interval.

On a small, shared CPU one timing of a pruned model against its teacher moves by several percent
from run to run. A search that compares one timing with its target lets that noise pick the
architecture: the same config pruned to 65.7% of the MACs on one day and to 52.0% on the next,
because 0.20 had timed 1.29x against a 1.30x target. Here a timing that reaches the target, or
comes within ``margin`` of it, is repeated, and the step counts as reaching the target when the
target lies within (or below) the 95% confidence interval of the repeated timings' mean and their
median lies within ``margin`` of it: a step within the measured noise of the target reaches it, and
one wild timing cannot (measured: a step that times 1.22x timed once 1.64x against a 1.40x target).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

# two-sided 95% Student t quantiles by degrees of freedom
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


@dataclass(frozen=True)
class SpeedupMeasurement:
    """One or more timings of the same model against the same reference."""

    samples: tuple[float, ...]
    margin: float = 0.05
    """How far (relative) below the target the median may lie when the interval reaches it."""

    @property
    def speedup(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% confidence interval of the mean (a point for a single timing)."""
        if len(self.samples) < 2:
            return self.speedup, self.speedup
        half = _T95.get(len(self.samples) - 1, 1.96) * statistics.stdev(self.samples) / math.sqrt(len(self.samples))
        return self.speedup - half, self.speedup + half

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def reaches(self, target: float) -> bool:
        """Whether the target is reached, or lies within the noise of the timings; the median must
        come within ``margin`` of it too, so that a single outlier cannot carry the decision."""
        return self.interval[1] >= target and self.median >= target * (1 - self.margin)

    def to_dict(self) -> dict[str, float | list[float]]:
        low, high = self.interval
        spread = (max(self.samples) - min(self.samples)) / self.speedup if len(self.samples) > 1 else 0.0
        return {"speedup": self.speedup, "speedup_samples": list(self.samples), "speedup_ci95": [low, high],
                "speedup_spread": spread}


def as_measurement(value: float | SpeedupMeasurement) -> SpeedupMeasurement:
    return value if isinstance(value, SpeedupMeasurement) else SpeedupMeasurement((float(value),))


def repeat_close_calls(measure: Callable[..., float], target: float, margin: float = 0.05,
                       repeats: int = 5) -> Callable[..., SpeedupMeasurement]:
    """``measure`` timed once, and ``repeats`` times in all where that timing reaches ``target`` or
    lands within ``margin`` (relative) of it: every timing that could end the search is confirmed."""

    def measured(*args, **kwargs) -> SpeedupMeasurement:
        samples = [float(measure(*args, **kwargs))]
        if samples[0] >= target * (1 - margin):
            samples += [float(measure(*args, **kwargs)) for _ in range(repeats - 1)]
        return SpeedupMeasurement(tuple(samples), margin)

    return measured
