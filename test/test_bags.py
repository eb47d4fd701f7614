"""Camera bags (MCAP and sqlite3) and offline eval-bag, with real rosbags files."""

import json
import shutil

import cv2
import numpy as np
import pytest
from tiny_models import constant_detector

from prune_perception.bags.camera_bag import (
    BagError,
    CameraBagWriter,
    image_topic_of,
    iter_camera_frames,
    read_ground_truth,
)
from prune_perception.bags.video_to_bag import video_to_bag
from prune_perception.cli.main import main
from prune_perception.eval.bag_eval import TruthSource, evaluate_bag_offline
from prune_perception.eval.bag_report import write_bag_report
from prune_perception.sim.datasets import scene_frames, write_yolo_dataset
from prune_perception.sim.scenes import SCENE_CLASSES, SceneConfig, SceneGenerator

SMALL_SCENE = SceneConfig(width=160, height=96)
START_NS = 1_700_000_000_000_000_000


@pytest.mark.parametrize("storage,compressed", [("mcap", False), ("sqlite3", False), ("mcap", True)])
def test_synthetic_drive_round_trips_through_a_bag(tmp_path, storage, compressed):
    bag = tmp_path / "drive"
    summary = video_to_bag(None, bag, synthetic_frames=12, seed=3, scene=SMALL_SCENE, storage=storage,
                           compressed=compressed, progress=False)
    assert summary.frames == 12 and summary.fps == SMALL_SCENE.fps and summary.ground_truth
    assert list(bag.glob("*.mcap" if storage == "mcap" else "*.db3"))
    expected = list(scene_frames(SMALL_SCENE, [3], 12))
    frames = list(iter_camera_frames(bag))
    assert [f.index for f in frames] == list(range(12))
    period = int(round(1e9 / SMALL_SCENE.fps))
    assert [f.stamp_ns for f in frames] == [START_NS + i * period for i in range(12)]
    assert all(f.receive_ns == f.stamp_ns for f in frames)
    for frame, original in zip(frames, expected):
        difference = np.abs(frame.image.astype(int) - original.image.astype(int))
        if compressed:
            assert difference.mean() < 4  # JPEG
        else:
            assert difference.max() == 0
    truth = read_ground_truth(bag, SCENE_CLASSES)
    assert sorted(truth) == [f.stamp_ns for f in frames]
    for frame, original in zip(frames, expected):
        np.testing.assert_allclose(truth[frame.stamp_ns].boxes_xyxy, original.boxes_xyxy, atol=1e-4)
        np.testing.assert_array_equal(truth[frame.stamp_ns].class_ids, original.class_ids)


def test_video_becomes_a_bag_at_its_frame_rate(tmp_path, dashcam_path):
    bag = tmp_path / "dashcam"
    summary = video_to_bag(dashcam_path, bag, max_frames=8, compressed=True, progress=False)
    assert summary.frames == 8 and summary.fps == pytest.approx(25.0, abs=0.5) and not summary.ground_truth
    frames = list(iter_camera_frames(bag))
    assert len(frames) == 8 and frames[0].image.shape == (540, 960, 3)
    assert frames[1].stamp_ns - frames[0].stamp_ns == int(round(1e9 / summary.fps))
    assert image_topic_of(bag) == "/camera/image_raw/compressed"


def test_labelled_folder_writes_its_ground_truth(tmp_path):
    dataset = write_yolo_dataset(scene_frames(SMALL_SCENE, [5], 6), tmp_path / "scenes")
    bag = tmp_path / "labelled"
    summary = video_to_bag(tmp_path / "scenes" / "images", bag, fps=5, class_names=SCENE_CLASSES, progress=False)
    assert summary.ground_truth and summary.frames == 6
    truth = read_ground_truth(bag, SCENE_CLASSES)
    for item, stamp in zip(dataset, sorted(truth)):
        np.testing.assert_allclose(truth[stamp].boxes_xyxy, item.boxes_xyxy, atol=1e-3)  # 6-digit YOLO txt


def test_bad_bags_give_clear_errors_and_no_partial_output(tmp_path):
    with pytest.raises(BagError, match="does not exist"):
        list(iter_camera_frames(tmp_path / "nothing"))
    bag = tmp_path / "drive"
    video_to_bag(None, bag, synthetic_frames=4, scene=SMALL_SCENE, progress=False)
    with pytest.raises(BagError, match="does not exist"):
        list(iter_camera_frames(bag, "/no/such/topic"))
    with pytest.raises(BagError, match="sensor_msgs/msg/CameraInfo, not a image topic"):
        list(iter_camera_frames(bag, "/camera/camera_info"))
    with pytest.raises(BagError, match="exists"):
        video_to_bag(None, bag, synthetic_frames=4, scene=SMALL_SCENE, progress=False)

    truncated = tmp_path / "truncated"
    shutil.copytree(bag, truncated)
    mcap = next(truncated.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    with pytest.raises(BagError):
        list(iter_camera_frames(truncated))
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"not a bag at all" * 100)
    with pytest.raises(BagError, match="cannot read bag"):
        list(iter_camera_frames(garbage))

    empty_folder = tmp_path / "empty_images"
    empty_folder.mkdir()
    with pytest.raises(Exception):
        video_to_bag(empty_folder, tmp_path / "from_empty", progress=False)
    assert not (tmp_path / "from_empty").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_offline_eval_bag_matches_a_hand_computed_ap(tmp_path):
    box_a, box_b = (8.0, 8.0, 32.0, 32.0), (40.0, 40.0, 60.0, 60.0)
    bag = tmp_path / "known"
    with CameraBagWriter(bag, fps=10, class_names=("thing", "other")) as writer:
        for index in range(4):  # box A on frames 0-2, box B on frame 3
            image = np.full((64, 64, 3), 90, np.uint8)
            box = box_a if index < 3 else box_b
            cv2.rectangle(image, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), (255, 255, 255), -1)
            writer.write(image, START_NS + index * 100_000_000, np.array([box]), np.array([0]))
    model = constant_detector(tmp_path / "constant.onnx", box_a, 0.9)
    results, facts = evaluate_bag_offline(bag, {"constant": model}, TruthSource("topic"), progress=False)
    # Predictions (all score 0.9, image order): TP, TP, TP, FP; 4 ground-truth boxes. Precision is 1
    # up to recall 0.75 and recall never passes 0.75: 76 of the 101 COCO recall points -> 76/101,
    # at every IoU threshold (the box is exact).
    metrics = results[0].metrics
    assert metrics.ap == pytest.approx(76 / 101, abs=1e-6) and metrics.ap50 == pytest.approx(76 / 101, abs=1e-6)
    assert facts["frames_evaluated"] == 4 and len(results[0].frames) == 4
    assert all(frame.detections == 1 and frame.total_ms > 0 for frame in results[0].frames)

    report = write_bag_report(tmp_path / "report", results, facts, budget_ms=50.0)
    assert report["models"][0]["deadline_misses"] == 0 and report["models"][0]["frames_processed"] == 4
    for name in ("report.md", "report.json", "frames.csv", "latency_over_time.png", "latency_histogram.png",
                 "precision_recall.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert len((tmp_path / "report" / "frames.csv").read_text().splitlines()) == 5


def test_eval_bag_command_compares_models_and_writes_an_output_bag(tmp_path, capsys):
    bag = tmp_path / "drive"
    video_to_bag(None, bag, synthetic_frames=6, scene=SMALL_SCENE, progress=False)
    first = constant_detector(tmp_path / "a.onnx", (10, 10, 30, 30), 0.8, classes=SCENE_CLASSES)
    second = constant_detector(tmp_path / "b.onnx", (50, 20, 70, 60), 0.6, classes=SCENE_CLASSES)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-bag", str(bag), "--model", f"first={first}", "--model", f"second={second}", "--output",
              str(tmp_path / "out"), "--output-bag", "--budget-ms", "30", "--no-progress"])
    assert exit_info.value.code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["first", "second"]
    assert "| first |" in capsys.readouterr().out
    output_frames = list(iter_camera_frames(tmp_path / "out" / "detections_bag"))
    assert len(output_frames) == 6
    detections = read_ground_truth(tmp_path / "out" / "detections_bag", SCENE_CLASSES, "/detections/first")
    assert all(len(t.boxes_xyxy) == 1 for t in detections.values())


def test_eval_bag_errors_are_one_line_messages(tmp_path, capsys):
    bag = tmp_path / "drive"
    video_to_bag(None, bag, synthetic_frames=2, scene=SMALL_SCENE, progress=False)
    model = constant_detector(tmp_path / "m.onnx", (10, 10, 30, 30), 0.8, classes=("thing",))
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-bag", str(bag), "--model", str(model), "--output", str(tmp_path / "out"), "--no-progress"])
    assert exit_info.value.code == 1
    assert "not one of the model's classes" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-bag", str(tmp_path / "missing_bag"), "--model", str(model), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2


def test_scene_generator_is_deterministic_and_its_boxes_match_the_drawing():
    first = [SceneGenerator(SMALL_SCENE, seed=11).next_frame() for _ in range(1)][0]
    again = SceneGenerator(SMALL_SCENE, seed=11).next_frame()
    other = SceneGenerator(SMALL_SCENE, seed=12).next_frame()
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.boxes_xyxy, again.boxes_xyxy)
    assert not np.array_equal(first.image, other.image)
    generator = SceneGenerator(SceneConfig(), seed=4)
    for _ in range(40):
        frame = generator.next_frame()
        boxes = frame.boxes_xyxy
        assert ((boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= 640) & (boxes[:, 3] <= 384)).all()
        assert ((boxes[:, 2] - boxes[:, 0] >= 6) & (boxes[:, 3] - boxes[:, 1] >= 6)).all()
