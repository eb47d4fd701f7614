"""The main job, scaled down: synthetic drive -> sample teacher -> compress -> live replay -> report.
No shared data and no GPU are used."""

import json

import pytest

from prune_perception.cli.main import main
from prune_perception.mission import SAMPLE_TEACHER
from prune_perception.runtime.metadata import load_sidecar
from prune_perception.sim.scenes import SCENE_CLASSES


def test_the_sample_teacher_ships_with_its_sidecar_and_report():
    metadata = load_sidecar(SAMPLE_TEACHER)  # verifies the sha256 of the committed weights
    assert metadata is not None and metadata.class_names == SCENE_CLASSES
    report = json.loads(SAMPLE_TEACHER.with_name("training_report.json").read_text())
    assert report["ap50"] > 0.3  # on held-out synthetic scenes (other seeds than training)


def test_quick_main_job_end_to_end(tmp_path, capsys):
    output = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--output", str(output), "--no-progress"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "Mission summary" in printed and "| teacher |" in printed and "| teacher camera |" in printed

    compression = json.loads((output / "compress" / "report.json").read_text())
    kinds = [row["kind"] for row in compression["models"]]
    assert kinds == ["as_given", "teacher", "teacher_camera", "pruned", "distilled", "int8"]  # the ladder
    rows = compression["models"]
    assert rows[2]["input_hw"] == "192x320" and rows[2]["macs"] < rows[1]["macs"]  # the 640x384 drive camera
    assert rows[4]["macs"] < rows[2]["macs"] and rows[4]["previous"] == "teacher camera"
    replay = json.loads((output / "replay" / "report.json").read_text())
    assert replay["mode"] == "live" and replay["frames_evaluated"] == 30 and not replay["fidelity_mode"]
    for model in replay["models"]:
        assert model["frames_processed"] + model["frames_dropped"] == 30
        assert model["frames_processed"] >= 20
        assert model["latency_ms"]["end_to_end_ms"]["count"] == model["frames_processed"]
    names = [model["name"] for model in replay["models"]]
    student = f"pruned {rows[4]['channel_ratio']:.2f}"  # the ratio the run pruned at, not a default
    assert names == ["teacher", "teacher camera", student, f"{student} int8"]
    teacher = replay["models"][0]
    assert teacher["ap50"] > 0.2  # the sample teacher finds the synthetic objects in the live replay
    for name in ("summary.md", "replay/latency_over_time.png", "replay/precision_recall.png", "compress/pareto.png",
                 "drive_bag/metadata.yaml"):
        assert (output / name).exists(), name
