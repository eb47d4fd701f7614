"""`prune-perception compress` end to end on a tiny configuration, and its output in the runtime
and in a real detector_node process."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prune_perception.compress.config import ConfigError, load_compress_config
from prune_perception.optional import modelopt_unavailable_reason
from prune_perception.export.tensorrt_engine import tensorrt_unavailable_reason
from prune_perception.runtime.detector import Detector

ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(output_dir, yolox_nano_path, coco128_dir, dashcam_path):
    return [
        f"output_dir={output_dir}", f"teacher.onnx={yolox_nano_path}", f"data.labelled={coco128_dir / 'images'}",
        f"data.unlabelled=[{dashcam_path}]", "data.unlabelled_max_frames=24", "data.max_labelled=24",
        "data.fidelity_frames=6", "prune.ratios=[0.3]", "train.steps=4", "train.batch_size=2",
        "train.checkpoint_every=2", "evaluate.latency_runs=3",
        "export.int8_calibration_images=8", "export.int8_max_float_fraction=0.1",
    ]


def run_compress(overrides, command_name="compress"):
    command = [sys.executable, "-m", "prune_perception.cli.main", command_name, "--config",
               str(ROOT / "config" / "compress.yaml"), "--no-progress"]
    command += [item for override in overrides for item in ("--set", override)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, yolox_nano_path, coco128_dir, dashcam_path):
    output = tmp_path_factory.mktemp("compress")
    overrides = tiny_overrides(output, yolox_nano_path, coco128_dir, dashcam_path) + ["prune.sparsity=2:4"]
    started = time.monotonic()
    result = run_compress(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, overrides, time.monotonic() - started


def test_compress_writes_models_and_report(compressed):
    output, _, _ = compressed
    folder = output / "ratio_0.30"
    for name in ("pruned.pt", "pruned.onnx", "student.pt", "student.onnx", "student.onnx.json", "student_int8.onnx",
                 "student_int8.onnx.json", "train/train_checkpoint.pt", "training_history.json"):
        assert (folder / name).exists(), name
    for name in ("report.md", "report.json", "pareto.png", "training_curves.png", "config.yaml", "teacher/teacher.onnx"):
        assert (output / name).exists(), name
    report = json.loads((output / "report.json").read_text())
    kinds = [model["kind"] for model in report["models"]]
    quantized = ["int8"] + (["int8_modelopt"] if modelopt_unavailable_reason() is None else [])
    assert kinds == ["as_given", "teacher"] + 2 * (["pruned", "distilled"] + quantized)
    teacher, pruned, distilled, int8 = report["models"][1:5]
    assert teacher["ap"] > 0.2 and teacher["speedup"] == pytest.approx(1.0)
    assert distilled["params"] < 0.6 * teacher["params"] and distilled["macs"] < 0.6 * teacher["macs"]
    assert distilled["latency_p50_ms"] > 0 and int8["file_mb"] < distilled["file_mb"]
    # the teacher file as given, in a default onnxruntime session, timed in the same run
    as_given = report["teacher_as_given"]
    assert as_given["onnx"].endswith("yolox_nano.onnx") and as_given["latency_p50_ms"] > 0
    assert as_given["teacher_speedup"] == pytest.approx(as_given["latency_p50_ms"] / teacher["latency_p50_ms"])
    assert "against the file as given" in (output / "report.md").read_text()
    sparse = {model["name"]: model for model in report["models"]}["sparse_2to4 distilled"]
    assert sparse["params"] == teacher["params"] and sparse["macs"] == teacher["macs"]  # dense shapes
    assert (output / "sparse_2to4" / "student.onnx").exists()
    assert "2:4 in" in report["sparsity"]["students"][0] and "after training" in report["sparsity"]["students"][0]
    assert "sparse tensor cores" in report["sparsity"]["note"] and report["tensorrt"]
    if modelopt_unavailable_reason() is None:
        assert any("ModelOpt Q/DQ for TensorRT" in note for note in report["int8"])
    assert not list(output.rglob("*.tmp"))  # no half-written files


def test_compressed_model_loads_in_the_detector_and_the_node(compressed, dashcam_frames, rclpy_session):
    output, _, _ = compressed
    student = output / "ratio_0.30" / "student.onnx"
    detector = Detector(student, device="cpu")
    assert detector.metadata.source == "sidecar" and detector.metadata.num_classes == 80
    detector.detect(dashcam_frames[0])

    from prune_perception.ros.live_session import DETECTOR_MODULE, LiveRecorder, NodeProcess, ros_arguments

    node = NodeProcess(DETECTOR_MODULE, ros_arguments({"model_path": str(student)}, namespace="/compressed"),
                       output / "node.log").start()
    recorder = LiveRecorder(detector_name="compressed/detector_node")
    try:
        ready = recorder.spin_until(
            lambda: any(d.values.get("model_ready") == "true" for d in recorder.diagnostics), 60, [node])
        assert ready, node.log_text()
        assert "metadata from sidecar" in node.log_text()
    finally:
        recorder.destroy_node()
        node.stop()


def test_second_run_resumes_instead_of_retraining(compressed):
    output, overrides, first_duration = compressed
    before = (output / "ratio_0.30" / "student.pt").stat().st_mtime_ns
    result = run_compress(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "ratio_0.30" / "student.pt").stat().st_mtime_ns == before  # not trained again
    report = json.loads((output / "report.json").read_text())
    assert report["int8"] and "convs kept in float" in report["int8"][0]  # the INT8 result survives a resume


def test_bad_configuration_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown option.*train.stpes"):
        load_compress_config(None, ["train.stpes=3"])
    with pytest.raises(ConfigError, match="prune: importance must be one of"):  # raised by PruneConfig
        load_compress_config(None, ["prune.importance=entropy"])
    with pytest.raises(ConfigError, match="channel_ratio must be in"):
        load_compress_config(None, ["prune.ratios=[1.5]"])
    result = subprocess.run([sys.executable, "-m", "prune_perception.cli.main", "compress", "--config",
                             str(tmp_path / "missing.yaml")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "cannot read" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.timeout(600)  # five stages, each a process, and a pinned prune
def test_stages_run_one_by_one_with_a_measured_latency_target(tmp_path, yolox_nano_path, coco128_dir, dashcam_path):
    overrides = tiny_overrides(tmp_path, yolox_nano_path, coco128_dir, dashcam_path) + [
        "prune.target_speedup=1.2", "prune.latency_refine_points=3", "prune.reconstruct=false", "evaluate.latency_runs=10", "export.int8=false",
        "export.modelopt_int8=false"]
    early = run_compress(overrides, "distill")
    assert early.returncode == 1 and "pruned.pt is missing: run `prune-perception prune" in early.stderr
    assert "Traceback" not in early.stderr
    for stage in ("prune", "distill", "export", "build-engine", "evaluate"):
        result = run_compress(overrides, stage)
        assert result.returncode == 0, (stage, result.stderr[-3000:])
    folder = tmp_path / "speedup_1.20"
    record = json.loads((folder / "pruning.json").read_text())
    # measured with onnxruntime, interleaved with the teacher; a close call timed again, and decided
    # on the 95% interval of its timings
    reached = [step["speedup_ci95"][1] >= 1.2 for step in record["steps"]]
    assert reached[-1] and not any(reached[:-1])
    for step in record["steps"]:
        assert len(step["speedup_samples"]) in (1, 5) and step["speedup_ci95"][0] <= step["speedup"]
        if abs(step["speedup_samples"][0] - 1.2) <= 0.05 * 1.2:
            assert len(step["speedup_samples"]) == 5  # a close call is repeated
    # the student kept: the least pruned ratio that reached 1.2x, the search's step or a refinement between
    chosen = [t for t in record["refinement"] if t["speedup_ci95"][1] >= 1.2] or [record["steps"][-1]]
    assert record["measured_speedup"] == chosen[0]["speedup"] and record["channel_ratio"] == chosen[0]["channel_ratio"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher as given", "teacher", "speedup_1.20 pruned",
                                                     "speedup_1.20 distilled"]
    assert "latency target: " in report["models"][2]["notes"]
    # the architecture pinned: another run prunes to exactly these channels, without a search
    pinned_dir = tmp_path / "pinned"
    pinned = run_compress([o for o in overrides if not o.startswith("output_dir=")] + [
        f"output_dir={pinned_dir}", f"prune.channels_from={folder / 'pruning.json'}"], "prune")
    assert pinned.returncode == 0, pinned.stderr[-3000:]
    again = json.loads((pinned_dir / "speedup_1.20" / "pruning.json").read_text())
    assert again["channels"] == record["channels"] and again["pinned_from"] == str(folder / "pruning.json")
    assert "speedup" not in again["steps"][-1]  # nothing was timed
    engines = json.loads((tmp_path / "engines.json").read_text())
    reason = tensorrt_unavailable_reason()
    assert (reason in engines[0]) if reason else engines[0].startswith("teacher")

    single = subprocess.run([sys.executable, "-m", "prune_perception.cli.main", "build-engine", "--onnx",
                             str(folder / "student.onnx")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if reason:
        assert single.returncode == 3 and "skipped" in single.stderr and "Traceback" not in single.stderr
    else:
        assert single.returncode == 0 and (folder / "student.engine").exists()


def test_report_says_when_int8_is_slower_than_its_fp32_model():
    from prune_perception.eval.compress_report import _int8_speed_notes

    rows = [{"name": "ratio_0.30 distilled", "kind": "distilled", "latency_p50_ms": 5.2},
            {"name": "ratio_0.30 int8", "kind": "int8", "latency_p50_ms": 7.6},
            {"name": "ratio_0.50 distilled", "kind": "distilled", "latency_p50_ms": 4.0},
            {"name": "ratio_0.50 int8", "kind": "int8", "latency_p50_ms": 3.5}]
    notes = _int8_speed_notes(rows)
    assert len(notes) == 1 and notes[0].startswith("ratio_0.30 int8 is slower") and "7.60 against 5.20" in notes[0]
