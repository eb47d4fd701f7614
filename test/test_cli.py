import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "prune_perception.cli.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_live_demo_names_exactly_what_is_missing(tmp_path):
    result = run_cli("live-demo", "--model", str(tmp_path / "none.onnx"), "--video", str(tmp_path / "none.mp4"),
                     "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"model: {tmp_path / 'none.onnx'}" in result.stderr
    assert f"video: {tmp_path / 'none.mp4'}" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_detect_prints_json_lines(yolox_nano_path, coco128_dir, tmp_path):
    images = sorted((coco128_dir / "images").glob("*.jpg"))[:2]
    unreadable = tmp_path / "broken.jpg"
    unreadable.write_bytes(b"not an image")
    result = run_cli("detect", "--model", str(yolox_nano_path), *map(str, images), str(unreadable))
    assert result.returncode == 1 and f"cannot read image {unreadable}" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    assert lines[0]["detections"] and {"class_name", "score", "box_xyxy"} <= set(lines[0]["detections"][0])


def test_detect_reports_a_missing_model_without_a_traceback(tmp_path):
    result = run_cli("detect", "--model", str(tmp_path / "absent.onnx"), "x.jpg")
    assert result.returncode == 1
    assert "model file not found" in result.stderr and "Traceback" not in result.stderr
