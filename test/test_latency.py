import threading
import time

import numpy as np
import pytest

from prune_perception.eval.health import HealthLevel, HealthThresholds, evaluate_health
from prune_perception.eval.latency import FrameStatistics, LatencySummary, SlidingWindow
from prune_perception.runtime.frame_batcher import FrameBatcher


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


def test_windows_stay_bounded_when_nobody_reads_them():
    # The soak found this: a single-camera node recorded cycles it never reported, 0.33 MB/min.
    from prune_perception.eval.latency import CycleStatistics

    window, cycles = SlidingWindow(window_s=5.0), CycleStatistics(window_s=5.0)
    for i in range(30 * 600):  # ten minutes at 30 Hz, never read
        window.add(i / 30.0)
        cycles.record(i / 30.0, batch_size=1, cycle_ms=10.0)
    assert len(window._samples) <= 5 * 30 + 1 and len(cycles._cycles._samples) <= 5 * 30 + 1
    assert cycles.histogram == {1: 30 * 600}


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


def test_frame_slot_keeps_only_the_newest():
    slot = FrameBatcher(["camera"])
    assert slot.put("camera", 1) is False
    assert slot.put("camera", 2) is True and slot.put("camera", 3) is True
    assert slot.take(timeout_s=0) == {"camera": 3} and slot.dropped("camera") == 2
    assert slot.take(timeout_s=0.01) == {}


def test_frame_slot_under_a_fast_producer_and_slow_consumer():
    slot = FrameBatcher(["camera"])
    taken = []

    def consume():
        while True:
            batch = slot.take(timeout_s=1.0)
            if not batch:
                return
            taken.append(batch["camera"])
            time.sleep(0.005)  # a slow "model"

    consumer = threading.Thread(target=consume)
    consumer.start()
    for item in range(1, 2001):
        slot.put("camera", item)
        if item % 50 == 0:
            time.sleep(0.001)
    slot.close()
    consumer.join(5)
    assert taken == sorted(taken)  # never an older frame after a newer one
    assert taken[-1] == 2000  # the newest frame is always processed
    assert len(taken) + slot.dropped("camera") == 2000  # every frame is either processed or counted as dropped
    assert slot.dropped("camera") > 1000


def test_a_cycle_waits_for_the_live_cameras_at_most_the_batch_wait():
    batcher = FrameBatcher(["front", "left", "rear"], batch_wait_s=0.2, live_window_s=1.0)
    for camera in ("front", "left", "rear"):
        batcher.put(camera, f"{camera}0")
    assert batcher.take(timeout_s=0) == {"front": "front0", "left": "left0", "rear": "rear0"}
    # a cycle goes as soon as every live camera has a frame
    batcher.put("rear", "rear1")
    threading.Timer(0.02, batcher.put, ("front", "front1")).start()
    threading.Timer(0.04, batcher.put, ("left", "left1")).start()
    started = time.monotonic()
    assert batcher.take(timeout_s=1.0) == {"front": "front1", "left": "left1", "rear": "rear1"}
    assert time.monotonic() - started < 0.15
    # a camera that is late goes in the next cycle: this one waited its batch_wait, not more
    batcher.put("front", "front2")
    batcher.put("rear", "rear2")
    started = time.monotonic()
    assert batcher.take(timeout_s=1.0) == {"front": "front2", "rear": "rear2"}
    assert 0.15 < time.monotonic() - started < 0.6


def test_a_camera_that_stopped_costs_the_others_no_wait():
    batcher = FrameBatcher(["front", "rear"], batch_wait_s=0.5, live_window_s=0.05)
    batcher.put("rear", "rear0")
    batcher.put("front", "front0")
    batcher.take(timeout_s=0)
    time.sleep(0.1)  # rear falls silent: out of the live window
    batcher.put("front", "front1")
    started = time.monotonic()
    assert batcher.take(timeout_s=1.0) == {"front": "front1"}
    assert time.monotonic() - started < 0.1
    batcher.close()
    assert batcher.take(timeout_s=1.0) == {}
    batcher.reopen()
    time.sleep(0.1)  # front out of the live window too
    batcher.put("rear", "rear1")
    assert batcher.take(timeout_s=0) == {"rear": "rear1"}
