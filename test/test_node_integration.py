"""detector_node as a real process over real DDS, fed by a video_publisher process or by this
test process. Asserts on detections, headers, diagnostics, overload behaviour and bad input."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time as TimeMsg
from node_probe import Probe, stamped, start_detector, wait_ready
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image

from prune_perception.eval.latency import STAGES
from prune_perception.ros.image_conversion import array_to_compressed_msg, array_to_image_msg
from prune_perception.ros.live_session import LiveRecorder, run_live_session
from prune_perception.runtime.detector import Detector

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def labels_of(msg):
    return [(d.results[0].hypothesis.class_id, d.results[0].hypothesis.score) for d in msg.detections]


def has_car(msg, min_score=0.4):
    return any(label in ("car", "truck") and score >= min_score for label, score in labels_of(msg))


def test_live_dashcam_detections_headers_and_diagnostics(rclpy_session, yolox_nano_path, dashcam_path, tmp_path):
    recorder = LiveRecorder()
    image_stamps = set()
    recorder.create_subscription(
        Image, "/image_raw", lambda m: image_stamps.add((m.header.stamp.sec, m.header.stamp.nanosec)),
        QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT),
    )
    try:
        result = run_live_session(
            yolox_nano_path, dashcam_path, tmp_path, recorder=recorder, frame_rate_hz=10.0, max_frames=40,
            expected_subscribers=2,  # the node and this test's image listener
            # input_timeout_s: the last diagnostics come after the clip ended; silence is not what this checks
            detector_params={"latency_budget_ms": 500.0, "intra_op_threads": 1, "input_timeout_s": 30.0,
                             "tracker": "bytetrack", "track_frame_rate": 10.0},
        )
    finally:
        recorder.destroy_node()

    assert result.frames_published == 40
    messages = [r.msg for r in result.detections]
    assert len(messages) >= 36, result.node_log[-2000:]  # 10 Hz is well below the model's rate
    # The cars of the clip are detected.
    assert sum(has_car(m) for m in messages) >= 0.9 * len(messages)
    # Each output carries the header of the image it was computed from.
    for msg in messages:
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) in image_stamps
        assert msg.header.frame_id == "camera"
        assert all(d.header == msg.header for d in msg.detections)
    stamps = [r.stamp_ns for r in result.detections]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

    # Per-frame latency topics: one value per published frame and stage.
    latencies = result.latencies
    assert len(latencies["inference_ms"]) == len(messages)
    for name in ("inference_ms", "preprocess_ms", "in_node_ms", "end_to_end_ms"):
        assert all(0 < value < 5000 for value in latencies[name]), name
    assert np.median(latencies["end_to_end_ms"]) >= np.median(latencies["in_node_ms"])
    assert np.median(latencies["in_node_ms"]) >= np.median(latencies["inference_ms"])

    # /diagnostics carries the latency statistics and counters.
    diagnostics = result.final_diagnostics
    assert diagnostics is not None and diagnostics.level == 0, diagnostics
    values = diagnostics.values
    for prefix in ("end_to_end", "in_node", *STAGES):
        for suffix in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
            assert f"{prefix}_{suffix}" in values
    for key in ("input_rate_hz", "output_rate_hz", "dropped_frames", "deadline_misses", "deadline_miss_rate"):
        assert key in values
    assert int(values["total_frames_out"]) == len(messages)
    assert values["model_ready"] == "true" and values["backend"] == "onnxruntime"

    # ByteTrack: each Detection2D carries its track id; the clip's cars keep theirs from frame to frame.
    ids = [[d.id for d in msg.detections if d.id] for msg in messages]
    assert sum(bool(frame) for frame in ids) >= 0.8 * len(messages)
    assert all(track.isdigit() for frame in ids for track in frame)
    persisting = [len(set(a) & set(b)) for a, b in zip(ids, ids[1:])]
    assert np.mean([n > 0 for n in persisting]) >= 0.8  # most consecutive frames share a track
    assert int(values["active_tracks"]) >= 1 and int(values["tracks_started"]) >= 1
    assert len(latencies["tracking_ms"]) == len(messages) and max(latencies["tracking_ms"]) < 100


def test_overload_drops_frames_and_latency_stays_bounded(
    rclpy_session, yolox_nano_path, dashcam_path, dashcam_frames, tmp_path
):
    # The model's own rate at the size used, in this process, single-threaded like the node.
    frame = cv2.resize(dashcam_frames[0], (480, 270))
    detector = Detector(yolox_nano_path, device="cpu", intra_op_threads=1)
    detector.warmup()
    model_ms = float(np.median([detector.detect(frame).timings.total_ms for _ in range(15)]))
    publish_hz = min(4.0 * 1000.0 / model_ms, 400.0)
    duration_s = 5.0

    result = run_live_session(
        yolox_nano_path, dashcam_path, tmp_path, frame_rate_hz=publish_hz, max_frames=30,
        total_frames=int(publish_hz * duration_s), width=480, height=270,
        detector_params={"intra_op_threads": 1, "latency_budget_ms": 1000.0, "qos_depth": 5},
    )
    values = result.final_diagnostics.values
    received, processed = int(values["total_frames_in"]), int(values["total_frames_out"])
    dropped = int(values["total_dropped_frames"])
    context = f"model {model_ms:.1f} ms, published {result.frames_published} at {publish_hz:.0f} Hz, " \
              f"received {received}, processed {processed}, dropped {dropped}"
    assert processed > 20, context
    assert dropped > 0 and received >= 2 * processed, context  # overloaded, and the node drops
    assert received == processed + dropped, context  # every frame is either processed or counted as dropped

    # Bounded latency: no queue builds up, so the last frames wait no longer than the first.
    end_to_end = np.asarray(result.latencies["end_to_end_ms"])
    in_node = np.asarray(result.latencies["in_node_ms"])
    third = len(end_to_end) // 3
    first, last = np.median(end_to_end[:third]), np.median(end_to_end[-third:])
    assert last <= 1.5 * first + 20.0, f"{context}; end-to-end median {first:.1f} ms -> {last:.1f} ms"
    # A frame waits at most for the one being processed: under two model runs plus transport.
    assert np.percentile(in_node, 95) < 3 * np.median(in_node) + 50.0, context
    assert end_to_end.max() < 1000.0, context  # a queue of 5 s of input would show up as seconds


def test_bad_raw_images_are_reported_and_good_frames_still_processed(rclpy_session, yolox_nano_path, good_frame, tmp_path):
    process = start_detector(tmp_path, "/bad_raw", model_path=str(yolox_nano_path), publish_debug_image=True)
    probe = Probe("/bad_raw")
    try:
        wait_ready(probe, process)
        bad = [
            Image(header=stamped(1), height=4, width=4, encoding="32FC1", step=16, data=bytes(64)),
            Image(header=stamped(2), height=540, width=960, encoding="bgr8", step=2880, data=bytes(1000)),
            Image(header=stamped(3), height=0, width=0, encoding="bgr8", step=0),
        ]
        for msg in bad:
            probe.image_pub.publish(msg)
            probe.spin_until(lambda: False, 0.3, process)  # let each be processed, not replaced
        probe.image_pub.publish(array_to_image_msg(good_frame, "bgr8", stamped(4)))
        assert probe.spin_until(lambda: any(m.header.stamp.sec == 4 for m in probe.detections), 20, process)
        assert has_car(next(m for m in probe.detections if m.header.stamp.sec == 4))
        assert not any(m.header.stamp.sec in (1, 2, 3) for m in probe.detections)
        # The annotated debug image of the good frame: same header and size, boxes drawn on it.
        assert probe.spin_until(lambda: probe.debug_images, 5, process)
        debug = probe.debug_images[-1]
        assert debug.header.stamp.sec == 4 and (debug.width, debug.height, debug.encoding) == (960, 540, "bgr8")
        drawn = np.frombuffer(debug.data, np.uint8).reshape(540, 960, 3)
        assert np.count_nonzero(np.any(drawn != good_frame, axis=2)) > 1000
        assert probe.spin_until(lambda: int(probe.diagnostics().values["total_input_errors"]) == 3, 5, process)
        diagnostics = probe.diagnostics()
        assert "zero-size image" in diagnostics.values["last_input_error"]
        assert process.returncode is None  # still running
        log = process.log_text()
        for expected in ("unsupported encoding '32FC1'", "truncated image: 1000 bytes", "zero-size image"):
            assert expected in log, log[-3000:]
    finally:
        probe.destroy()
        assert process.stop() == 0, process.log_text()[-2000:]


def test_corrupt_jpeg_is_reported_and_good_jpeg_processed(rclpy_session, yolox_nano_path, good_frame, tmp_path):
    process = start_detector(tmp_path, "/bad_jpeg", model_path=str(yolox_nano_path), input_transport="compressed")
    probe = Probe("/bad_jpeg", compressed=True)
    try:
        wait_ready(probe, process)
        good = array_to_compressed_msg(good_frame, stamped(6))
        probe.image_pub.publish(CompressedImage(header=stamped(5), format="jpeg", data=b"\xff\xd8\xff\xe0" + b"garbage" * 50))
        probe.spin_until(lambda: False, 0.3, process)
        probe.image_pub.publish(good)
        assert probe.spin_until(lambda: any(m.header.stamp.sec == 6 for m in probe.detections), 20, process)
        assert has_car(next(m for m in probe.detections if m.header.stamp.sec == 6))
        assert probe.spin_until(lambda: int(probe.diagnostics().values["total_input_errors"]) == 1, 5, process)
        assert not any(m.header.stamp.sec == 5 for m in probe.detections)
        assert "cannot decode jpeg image" in process.log_text()
        assert process.returncode is None
    finally:
        probe.destroy()
        process.stop()


def test_missing_model_reports_error_keeps_running_and_recovers(rclpy_session, yolox_nano_path, good_frame, tmp_path):
    model = tmp_path / "later.onnx"
    process = start_detector(tmp_path, "/no_model", model_path=str(model))
    probe = Probe("/no_model")
    try:
        assert probe.spin_until(lambda: probe.diagnostics() is not None, 30, process), process.log_text()
        diagnostics = probe.diagnostics()
        assert diagnostics.level == 2 and diagnostics.message.startswith("model cannot run: model file not found")
        probe.image_pub.publish(array_to_image_msg(good_frame, "bgr8", stamped(7)))
        probe.spin_until(lambda: False, 1.0, process)
        assert process.returncode is None and "cannot run the model: model file not found" in process.log_text()

        shutil.copy(yolox_nano_path, model)  # the model appears (e.g. a mounted volume): the node retries
        wait_ready(probe, process, timeout_s=30)
        probe.image_pub.publish(array_to_image_msg(good_frame, "bgr8", stamped(8)))
        assert probe.spin_until(lambda: any(m.header.stamp.sec == 8 for m in probe.detections), 20, process)
    finally:
        probe.destroy()
        process.stop()


def test_corrupt_model_reports_error_and_keeps_running(rclpy_session, tmp_path):
    model = tmp_path / "corrupt.onnx"
    model.write_bytes(b"\x08\x07 this is not an onnx model" * 100)
    process = start_detector(tmp_path, "/corrupt_model", model_path=str(model))
    probe = Probe("/corrupt_model")
    try:
        assert probe.spin_until(lambda: probe.diagnostics() is not None, 30, process), process.log_text()
        diagnostics = probe.diagnostics()
        assert diagnostics.level == 2 and "cannot load ONNX model" in diagnostics.message
        assert diagnostics.values["model_ready"] == "false"
        probe.spin_until(lambda: False, 1.5, process)
        assert process.returncode is None
    finally:
        probe.destroy()
        process.stop()


def test_invalid_parameters_stop_the_node_at_start_up_with_a_clear_message(tmp_path):
    process = start_detector(tmp_path, "/bad_params", model_path="m.onnx", score_threshold=1.5, qos_reliability="sometimes")
    process.process.wait(30)
    assert process.returncode == 2
    log = process.log_text()
    assert "score_threshold is outside its allowed range [0.0, 1.0]" in log
    assert "qos_reliability='sometimes' is not one of ['best_effort', 'reliable']" in log
    assert "Traceback" not in log


def test_sim_time_end_to_end_latency(rclpy_session, yolox_nano_path, good_frame, tmp_path):
    process = start_detector(tmp_path, "/sim", model_path=str(yolox_nano_path), use_sim_time=True)
    probe = Probe("/sim")
    try:
        wait_ready(probe, process)
        clock = Clock()
        clock.clock = TimeMsg(sec=1000, nanosec=500_000_000)
        for _ in range(5):  # the sim clock stands at 1000.5 s while the frame is processed
            probe.clock_pub.publish(clock)
            probe.spin_until(lambda: False, 0.05, process)
        probe.image_pub.publish(array_to_image_msg(good_frame, "bgr8", stamped(1000, 490_000_000)))
        assert probe.spin_until(lambda: probe.end_to_end, 20, process)
        assert probe.end_to_end[0] == pytest.approx(10.0, abs=1e-3)  # 1000.500 - 1000.490 s, in sim time
    finally:
        probe.destroy()
        process.stop()


def test_label_info_reaches_a_late_subscriber(rclpy_session, yolox_nano_path, tmp_path):
    """vision_msgs/LabelInfo on label_info is latched: a subscriber created after the model loaded
    still gets the class table (published ids -> names) and the score threshold."""
    from rclpy.qos import DurabilityPolicy
    from vision_msgs.msg import LabelInfo

    process = start_detector(tmp_path, "/labels", model_path=str(yolox_nano_path), score_threshold=0.35)
    probe = Probe("/labels")
    try:
        wait_ready(probe, process)
        received = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        probe.create_subscription(LabelInfo, "/labels/label_info", received.append, latched)
        assert probe.spin_until(lambda: received, 20, process), process.log_text()[-2000:]
        table = {entry.class_id: entry.class_name for entry in received[0].class_map}
        assert len(table) == 80 and table[0] == "person" and table[2] == "car"
        assert received[0].threshold == pytest.approx(0.35)
    finally:
        probe.destroy()
        process.stop()
