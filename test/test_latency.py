import threading
import time

import numpy as np
import pytest

from prune_perception.eval.health import HealthLevel, HealthThresholds, evaluate_health
from prune_perception.eval.latency import FrameStatistics, LatencySummary, SlidingWindow
from prune_perception.runtime.latest_frame import LatestFrameSlot


def test_latency_summary_matches_numpy():
    values = np.random.default_rng(0).gamma(2.0, 10.0, 1000)
    summary = LatencySummary.of(values)
    assert summary.count == 1000
    assert summary.p50_ms == pytest.approx(np.percentile(values, 50))
    assert summary.p99_ms == pytest.approx(np.percentile(values, 99))
    assert summary.max_ms == pytest.approx(values.max()) and summary.mean_ms == pytest.approx(values.mean())
    empty = LatencySummary.of([])
    assert empty.count == 0 and np.isnan(empty.p50_ms)


def test_sliding_window_expires_old_samples_and_measures_rate():
    window = SlidingWindow(window_s=2.0)
    for i in range(50):
        window.add(i * 0.1, float(i))  # 10 Hz for 5 s
    assert window.values(now_s=4.9) == [float(i) for i in range(29, 50)]
    assert window.rate_hz(now_s=4.9) == pytest.approx(21 / 2.0)
    assert window.count(now_s=100.0) == 0 and window.rate_hz(100.0) == 0.0


def test_deadline_misses_against_budget_and_reference():
    stats = FrameStatistics(budget_ms=50.0, window_s=10.0)
    for i, end_to_end in enumerate([10.0, 49.9, 50.0, 50.1, 120.0]):
        stats.record_input(i * 0.1)
        stats.record_output(i * 0.1 + 0.01, {"inference": 5.0}, end_to_end_ms=end_to_end, in_node_ms=20.0)
    report = stats.report(now_s=0.5)
    assert report.deadline_misses == 2 and report.deadline_miss_rate == pytest.approx(0.4)
    assert report.end_to_end.max_ms == 120.0 and report.stages["inference"].p50_ms == 5.0
    stats.set_budget(25.0, "in_node")  # in-node time is 20 ms: no further misses
    assert stats.record_output(0.6, {}, end_to_end_ms=500.0, in_node_ms=20.0) is False
    assert stats.record_output(0.7, {}, end_to_end_ms=5.0, in_node_ms=30.0) is True
    assert stats.report(0.7).total_deadline_misses == 3
    with pytest.raises(ValueError):
        stats.set_budget(0.0)
    with pytest.raises(ValueError):
        stats.set_budget(10.0, "wall_clock")


def test_drops_and_errors_are_counted_in_window_and_total():
    stats = FrameStatistics(budget_ms=100.0, window_s=1.0)
    for i in range(10):
        stats.record_input(i * 0.1)
    stats.record_drop(0.2, count=3)
    stats.record_input_error(0.3)
    report = stats.report(now_s=0.95)
    assert (report.frames_in, report.dropped, report.input_errors) == (10, 3, 1)
    assert report.drop_rate == pytest.approx(0.3)
    later = stats.report(now_s=5.0)
    assert later.dropped == 0 and later.total_dropped == 3 and later.total_input_errors == 1


def report_with(**overrides):
    stats = FrameStatistics(budget_ms=50.0, window_s=10.0)
    outputs = overrides.pop("outputs", [])
    for i, end_to_end in enumerate(outputs):
        stats.record_input(i * 0.01)
        stats.record_output(i * 0.01, {}, end_to_end, end_to_end)
    for _ in range(overrides.pop("drops", 0)):
        stats.record_input(0.5)
        stats.record_drop(0.5)
    for _ in range(overrides.pop("input_errors", 0)):
        stats.record_input_error(0.5)
    for _ in range(overrides.pop("inference_errors", 0)):
        stats.record_inference_error(0.5)
    return stats.report(1.0)


def test_health_levels():
    thresholds = HealthThresholds(warn_deadline_miss_rate=0.1, error_deadline_miss_rate=0.5, warn_drop_rate=0.5)
    level, message = evaluate_health(report_with(outputs=[10.0] * 20), thresholds)
    assert level == HealthLevel.OK and "Hz" in message
    assert evaluate_health(report_with(), thresholds) == (HealthLevel.OK, "waiting for images")
    level, message = evaluate_health(report_with(outputs=[10.0] * 8 + [90.0] * 2), thresholds)
    assert level == HealthLevel.WARN and "2/10 frames over the 50 ms budget" in message
    level, _ = evaluate_health(report_with(outputs=[10.0] * 5 + [90.0] * 5), thresholds)
    assert level == HealthLevel.ERROR
    level, message = evaluate_health(report_with(outputs=[10.0] * 4, input_errors=1), thresholds, last_input_error="bad")
    assert level == HealthLevel.WARN and "last: bad" in message
    level, message = evaluate_health(report_with(outputs=[10.0] * 2, drops=8), thresholds)
    assert level == HealthLevel.WARN and "dropped" in message
    level, message = evaluate_health(report_with(outputs=[10.0] * 10, inference_errors=1), thresholds)
    assert level == HealthLevel.ERROR and "inference failure" in message
    level, message = evaluate_health(report_with(), thresholds, model_error="model file not found: x.onnx")
    assert level == HealthLevel.ERROR and message == "model cannot run: model file not found: x.onnx"


def test_health_thresholds_are_validated():
    with pytest.raises(ValueError):
        HealthThresholds(warn_deadline_miss_rate=0.6, error_deadline_miss_rate=0.5)
    with pytest.raises(ValueError):
        HealthThresholds(warn_drop_rate=1.5)


def test_latest_frame_slot_keeps_only_the_newest():
    slot = LatestFrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.take(timeout_s=0) == 3 and slot.dropped == 2
    assert slot.take(timeout_s=0.01) is None


def test_latest_frame_slot_under_a_fast_producer_and_slow_consumer():
    slot = LatestFrameSlot()
    taken = []

    def consume():
        while True:
            item = slot.take(timeout_s=1.0)
            if item is None:
                return
            taken.append(item)
            time.sleep(0.005)  # a slow "model"

    consumer = threading.Thread(target=consume)
    consumer.start()
    for item in range(1, 2001):
        slot.put(item)
        if item % 50 == 0:
            time.sleep(0.001)
    slot.close()
    consumer.join(5)
    assert taken == sorted(taken)  # never an older frame after a newer one
    assert taken[-1] == 2000  # the newest frame is always processed
    assert len(taken) + slot.dropped == 2000  # every frame is either processed or counted as dropped
    assert slot.dropped > 1000
