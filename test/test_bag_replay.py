"""Live bag replay: the bag_player node and a real detector_node process over DDS, with /clock."""

import json
import math

import pytest
from tiny_models import constant_detector

from prune_perception.bags.video_to_bag import video_to_bag
from prune_perception.cli.main import main
from prune_perception.eval.bag_eval import TruthSource
from prune_perception.ros.bag_live_eval import evaluate_bag_live
from prune_perception.ros.live_session import LiveSessionError, NodeProcess, ros_arguments, run_with_player
from prune_perception.sim.scenes import SCENE_CLASSES, SceneConfig

SCENE = SceneConfig(width=320, height=192)


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay")
    bag = folder / "drive"
    video_to_bag(None, bag, synthetic_frames=20, scene=SCENE, progress=False)
    model = constant_detector(folder / "constant.onnx", (20, 20, 60, 60), 0.8, classes=SCENE_CLASSES)
    return bag, model


@pytest.mark.parametrize("rate", [2.0, 0.0])
def test_live_replay_through_detector_node(drive, tmp_path, rate):
    bag, model = drive
    results, facts = evaluate_bag_live(bag, {"constant": model}, TruthSource("topic"), tmp_path, rate=rate, budget_ms=40)
    result = results[0]
    assert facts["mode"] == "live" and facts["frames_evaluated"] == 20
    assert len(result.frames) + result.dropped == 20
    if rate == 0:  # paced by the detections: nothing may be dropped
        assert result.dropped == 0
    assert len(result.frames) >= 15
    assert len(result.end_to_end_ms) == len(result.frames)
    assert all(math.isfinite(v) and v >= 0 for v in result.end_to_end_ms)
    assert all(f.inference_ms > 0 and f.total_ms >= f.inference_ms for f in result.frames)
    assert [f.stamp_ns for f in result.frames] == sorted(f.stamp_ns for f in result.frames)
    assert result.metrics.num_images == 20 and result.metrics.num_ground_truth > 0
    played = (tmp_path / "live" / "constant" / "bag_player.log").read_text()
    assert "played 20 messages (20 images)" in played


def test_eval_bag_live_command_writes_the_report(drive, tmp_path):
    bag, model = drive
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-bag", str(bag), "--model", f"a={model}", "--model", f"b={model}", "--mode", "live", "--rate", "4",
              "--output", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["a", "b"]
    assert all("end_to_end_ms" in m["latency_ms"] for m in report["models"])
    assert (tmp_path / "frames.csv").read_text().count("\n") == 1 + sum(m["frames_processed"] for m in report["models"])


def test_bag_player_rejects_a_broken_bag(tmp_path):
    broken = tmp_path / "broken.mcap"
    broken.write_bytes(b"\x89MCAP0\r\n" + b"garbage" * 50)
    with NodeProcess("prune_perception.ros.bag_player_node", ros_arguments({"bag": str(broken)}), tmp_path / "p.log") as player:
        player.process.wait(timeout=60)
    assert player.returncode == 2
    assert "cannot read bag" in player.log_text()


def test_a_player_failure_is_reported_not_hidden(drive, tmp_path):
    import rclpy

    _, model = drive
    player = NodeProcess("prune_perception.ros.bag_player_node", ros_arguments({"bag": str(tmp_path / "no_bag")}),
                         tmp_path / "player.log")
    owns_context = not rclpy.ok()
    if owns_context:
        rclpy.init()
    try:
        with pytest.raises(LiveSessionError, match="exited with code 2"):
            run_with_player(model, player, tmp_path)
    finally:
        if owns_context:
            rclpy.try_shutdown()


def test_a_bag_truncated_during_live_replay_is_an_error_and_no_report(tmp_path):
    import os
    import subprocess
    import sys
    import time

    bag = tmp_path / "long_drive"
    video_to_bag(None, bag, synthetic_frames=80, fps=10.0, scene=SCENE, progress=False)
    model = constant_detector(tmp_path / "constant.onnx", (20, 20, 60, 60), 0.8, classes=SCENE_CLASSES)
    output = tmp_path / "report"
    player_log = output / "live" / "m" / "bag_player.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "prune_perception.cli.main", "eval-bag", str(bag), "--model", f"m={model}", "--mode",
         "live", "--rate", "1", "--output", str(output), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (player_log.exists() and "playing" in player_log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # a few frames played; then the disk loses the rest of the file
    (storage,) = bag.glob("*.mcap")
    with open(storage, "r+b") as stream:
        stream.truncate(os.path.getsize(storage) // 3)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "stopped: cannot read" in stderr and "the bag is truncated or damaged" in stderr, stderr
    assert "No report was written" in stderr and "Traceback" not in stderr
    assert not (output / "report.json").exists() and not (output / "report.md").exists()
