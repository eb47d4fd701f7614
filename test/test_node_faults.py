"""Faults that detector_node survives, each with real processes over real DDS: a camera driver
killed and restarted, a model swapped at run time (good, missing and corrupt), a backend that
raises in the middle of a frame, and a /clock that stops under use_sim_time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from builtin_interfaces.msg import Time as TimeMsg
from node_probe import Probe, stamped, start_detector, wait_ready
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rosgraph_msgs.msg import Clock

from prune_perception.ros.image_conversion import array_to_image_msg
from prune_perception.ros.live_session import VIDEO_PUBLISHER_MODULE, NodeProcess, ros_arguments

pytestmark = pytest.mark.ros
TEST_DIR = Path(__file__).resolve().parent
FAST_DIAGNOSTICS = {"diagnostics_period_s": 0.5, "statistics_window_s": 2.0}


def received_secs(probe) -> set[int]:
    return {m.header.stamp.sec for m in probe.detections}


def start_camera(tmp_path, namespace, dashcam_path, name) -> NodeProcess:
    arguments = ros_arguments({"source": str(dashcam_path), "frame_rate_hz": 10.0, "loop": True, "max_frames": 20,
                               "qos_reliability": "reliable", "start_delay_s": 0.2}, namespace=namespace)
    return NodeProcess(VIDEO_PUBLISHER_MODULE, arguments, tmp_path / f"{name}.log").start()


def set_parameter(probe, client, name, value):
    future = client.set_parameters([Parameter(name, value=value)])
    assert probe.spin_until(future.done, 20), f"no answer to setting {name}"
    return future.result().results[0]


def get_parameter(probe, client, name):
    future = client.get_parameters([name])
    assert probe.spin_until(future.done, 20)
    return future.result().values[0].string_value


def test_camera_killed_then_restarted_warns_and_resumes(rclpy_session, yolox_nano_path, dashcam_path, tmp_path):
    node = start_detector(tmp_path, "/camkill", model_path=str(yolox_nano_path), input_timeout_s=1.5, **FAST_DIAGNOSTICS)
    probe = Probe("/camkill")
    camera = start_camera(tmp_path, "/camkill", dashcam_path, "camera_1")
    try:
        wait_ready(probe, node)
        assert probe.spin_until(lambda: len(probe.detections) >= 5, 30, node), camera.log_text()[-2000:]
        assert probe.spin_until(lambda: probe.diagnostics().level == 0, 10, node), probe.diagnostics()

        camera.process.kill()  # the camera driver dies without a goodbye
        camera.process.wait(10)
        assert probe.spin_until(lambda: "no input for" in probe.diagnostics().message, 10, node), probe.diagnostics()
        silent = probe.diagnostics()
        assert silent.level == 1 and float(silent.message.split("no input for ")[1].split(" s")[0]) >= 1.5
        count = len(probe.detections)

        camera = start_camera(tmp_path, "/camkill", dashcam_path, "camera_2")  # the driver comes back
        assert probe.spin_until(lambda: len(probe.detections) >= count + 5, 30, node), node.log_text()[-2000:]
        assert probe.spin_until(lambda: probe.diagnostics().level == 0, 10, node), probe.diagnostics()
        assert node.returncode is None
    finally:
        camera.stop()
        probe.destroy()
        assert node.stop() == 0, node.log_text()[-2000:]


def test_hot_model_swap_serves_throughout_and_refuses_bad_models(
    rclpy_session, yolox_nano_path, batched_yolox_path, good_frame, tmp_path
):
    node = start_detector(tmp_path, "/swap", model_path=str(yolox_nano_path), **FAST_DIAGNOSTICS)
    probe = Probe("/swap")
    client = AsyncParameterClient(probe, "/swap/detector_node")
    try:
        wait_ready(probe, node)
        assert client.wait_for_services(timeout_sec=10)

        # A good new model: frames keep flowing at 10 Hz while it loads; at most one is lost.
        sent, answer = [], None
        for sec in range(1, 61):
            probe.image_pub.publish(array_to_image_msg(good_frame, "bgr8", stamped(sec)))
            sent.append(sec)
            if sec == 10:
                answer = set_parameter(probe, client, "model_path", str(batched_yolox_path))
            probe.spin_until(lambda: False, 0.1, node)
            if sec > 20 and probe.diagnostics().values["model_path"] == str(batched_yolox_path):
                break
        assert answer is not None and answer.successful, answer
        assert probe.diagnostics().values["model_path"] == str(batched_yolox_path), node.log_text()[-3000:]
        probe.spin_until(lambda: max(received_secs(probe)) == sent[-1], 10, node)
        lost = sorted(set(sent) - received_secs(probe))
        assert len(lost) <= 1, f"frames lost across the swap: {lost}"
        assert f"model swapped from {yolox_nano_path} to {batched_yolox_path}" in node.log_text()

        # A missing file is refused at once; the serving model stays.
        answer = set_parameter(probe, client, "model_path", str(tmp_path / "missing.onnx"))
        assert not answer.successful and "model file not found" in answer.reason, answer

        # A corrupt file passes the quick checks, fails to load, and the parameter reverts.
        corrupt = tmp_path / "corrupt.onnx"
        corrupt.write_bytes(b"\x08\x07 not an onnx model" * 200)
        answer = set_parameter(probe, client, "model_path", str(corrupt))
        assert answer.successful, answer
        assert probe.spin_until(lambda: f"model swap to {corrupt} failed" in node.log_text(), 20, node), node.log_text()
        assert probe.spin_until(lambda: get_parameter(probe, client, "model_path") == str(batched_yolox_path), 10, node)
        assert probe.spin_until(lambda: "failed" in probe.diagnostics().values.get("model_swap", ""), 5, node)
        assert "cannot load ONNX model" in probe.diagnostics().values["model_swap"]
        probe.image_pub.publish(array_to_image_msg(good_frame, "bgr8", stamped(100)))
        assert probe.spin_until(lambda: 100 in received_secs(probe), 10, node)  # the old model still serves
        assert probe.diagnostics().values["model_path"] == str(batched_yolox_path)
    finally:
        probe.destroy()
        assert node.stop() == 0, node.log_text()[-2000:]


def test_backend_failing_mid_frame_costs_only_those_frames(rclpy_session, yolox_nano_path, good_frame, tmp_path):
    fault = tmp_path / "fail_now"
    env = {"PRUNE_PERCEPTION_FAULT_FILE": str(fault),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TEST_DIR), os.environ.get("PYTHONPATH")]))}
    node = start_detector(tmp_path, "/fault", module="fault_injection_node", env=env, model_path=str(yolox_nano_path),
                          input_timeout_s=0.0, **FAST_DIAGNOSTICS)
    probe = Probe("/fault")

    def send(secs):
        for sec in secs:
            probe.image_pub.publish(array_to_image_msg(good_frame, "bgr8", stamped(sec)))
            probe.spin_until(lambda: False, 0.3, node)

    try:
        wait_ready(probe, node)
        send([1, 2, 3])
        assert probe.spin_until(lambda: {1, 2, 3} <= received_secs(probe), 10, node)

        fault.touch()
        send([4, 5, 6])
        assert probe.spin_until(lambda: probe.diagnostics().values["total_inference_errors"] == "3", 5, node), \
            probe.diagnostics()
        failing = probe.diagnostics()
        assert failing.level == 2 and "inference failure(s) in the last 2 s" in failing.message, failing
        assert not {4, 5, 6} & received_secs(probe)

        fault.unlink()
        send([7, 8, 9])
        assert probe.spin_until(lambda: {7, 8, 9} <= received_secs(probe), 10, node)
        send(range(10, 20))  # keep frames coming until the failures leave the 2 s window
        assert probe.spin_until(lambda: probe.diagnostics().level == 0, 5, node), probe.diagnostics()
        assert "inference failed: RuntimeError: injected backend fault" in node.log_text()
        assert node.returncode is None
    finally:
        probe.destroy()
        assert node.stop() == 0, node.log_text()[-2000:]


def test_stopped_sim_clock_is_reported_on_the_steady_clock(rclpy_session, yolox_nano_path, good_frame, tmp_path):
    node = start_detector(tmp_path, "/clockstop", model_path=str(yolox_nano_path), use_sim_time=True,
                          input_timeout_s=1.0, latency_budget_ms=60000.0, **FAST_DIAGNOSTICS)
    probe = Probe("/clockstop")
    sim_ns = 5_000_000_000

    def run(seconds, clock_running):
        nonlocal sim_ns
        for step in range(int(seconds / 0.05)):
            if clock_running:
                sim_ns += 50_000_000
                probe.clock_pub.publish(Clock(clock=TimeMsg(sec=sim_ns // 10**9, nanosec=sim_ns % 10**9)))
            if step % 4 == 0:
                probe.image_pub.publish(array_to_image_msg(
                    good_frame, "bgr8", stamped(sim_ns // 10**9, sim_ns % 10**9)))
            probe.spin_until(lambda: False, 0.05, node)

    try:
        wait_ready(probe, node)
        run(3.0, clock_running=True)
        assert "sim clock" not in probe.diagnostics().message and probe.diagnostics().level == 0, probe.diagnostics()

        detections, diagnostics = len(probe.detections), len(probe.recorder.diagnostics)
        run(3.0, clock_running=False)  # the simulator stalls; frames keep coming
        stalled = probe.diagnostics()
        assert stalled.level == 1 and "sim clock stopped: /clock has not advanced for" in stalled.message, stalled
        assert stalled.values["sim_time_s"] == f"{sim_ns / 1e9:.3f}"
        assert len(probe.recorder.diagnostics) >= diagnostics + 4  # diagnostics run on the steady clock
        assert len(probe.detections) >= detections + 10  # and frames are still processed

        run(2.0, clock_running=True)
        assert "sim clock" not in probe.diagnostics().message, probe.diagnostics()
    finally:
        probe.destroy()
        assert node.stop() == 0, node.log_text()[-2000:]
