"""Faults the offline tools survive: `compress` killed with SIGKILL in every stage and resumed,
and a disk that fills up while an ONNX model, a report or a bag is written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_compress_pipeline import ROOT, run_compress, tiny_overrides

from prune_perception.files import file_sha256

KILL_POINTS = (
    # (the stage the kill lands in, the file whose appearance triggers it)
    ("prune", "teacher/teacher.onnx"),
    ("distill, before the first checkpoint", "ratio_0.30/pruned.onnx"),
    ("distill, between checkpoints", "ratio_0.30/train/train_checkpoint.pt"),
    ("export", "ratio_0.30/student.pt"),
    ("INT8", "ratio_0.30/student.onnx"),
    ("evaluate", "ratio_0.30/int8_result.json"),
)
ARTIFACTS = ("teacher/teacher.onnx", "ratio_0.30/pruned.pt", "ratio_0.30/pruned.onnx", "ratio_0.30/student.pt",
             "ratio_0.30/student.onnx", "ratio_0.30/student.onnx.json", "ratio_0.30/student_int8.onnx",
             "ratio_0.30/pruning.json", "ratio_0.30/reconstruction.json")
"""Every model a resumed run writes is byte for byte the uninterrupted run's: pruning and the refit
are deterministic, training resumes exactly from its checkpoint (batches are a function of seed and
step), and checkpoints are saved through a stream, so that no temporary name lands in the bytes."""


def compress_command(overrides):
    command = [sys.executable, "-m", "prune_perception.cli.main", "compress", "--config",
               str(ROOT / "config" / "compress.yaml"), "--no-progress"]
    return command + [item for override in overrides for item in ("--set", override)]


def kill_when(output: Path, overrides, trigger: str, log: Path) -> None:
    with open(log, "w") as stream:
        process = subprocess.Popen(compress_command(overrides), cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (output / trigger).exists():
        assert process.poll() is None, f"compress ended before {trigger} appeared:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(30)


def accuracy(report: dict) -> dict[str, dict]:
    """Every accuracy figure of every row, nested tables (AP by size and band per set) flattened."""
    flat: dict[str, dict] = {}
    for row in report["models"]:
        values: dict[str, float] = {}
        for key, value in row.items():
            if not key.startswith(("ap", "fidelity")):
                continue
            if isinstance(value, dict):
                for name, inner in value.items():
                    for band, number in (inner.items() if isinstance(inner, dict) else [("", inner)]):
                        if number is not None:
                            values[f"{key}.{name}.{band}"] = number
            elif value is not None:
                values[key] = value
        flat[row["name"]] = values
    return flat


def test_compress_killed_in_every_stage_resumes_to_the_same_artifacts(tmp_path, yolox_nano_path, coco128_dir,
                                                                      dashcam_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    result = run_compress(tiny_overrides(straight, yolox_nano_path, coco128_dir, dashcam_path))
    assert result.returncode == 0, result.stderr[-3000:]

    overrides = tiny_overrides(interrupted, yolox_nano_path, coco128_dir, dashcam_path)
    for index, (stage, trigger) in enumerate(KILL_POINTS):
        kill_when(interrupted, overrides, trigger, tmp_path / f"killed_{index}.log")
    result = run_compress(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(interrupted.rglob(".*.tmp")), "a half-written file survived the resume"

    for name in ARTIFACTS:
        assert file_sha256(straight / name) == file_sha256(interrupted / name), name
    int8_a, int8_b = (json.loads((folder / "ratio_0.30" / "int8_result.json").read_text()) for folder in (straight, interrupted))
    assert {**int8_a, "path": None} == {**int8_b, "path": None}  # the INT8 search's choices and scores
    killed_logs = "".join(path.read_text() for path in sorted(tmp_path.glob("killed_*.log")))
    assert "resumed training from step 2 of 4" in result.stderr + killed_logs
    report_a = json.loads((straight / "report.json").read_text())
    report_b = json.loads((interrupted / "report.json").read_text())
    a, b = accuracy(report_a), accuracy(report_b)
    assert a.keys() == b.keys() and len(a) >= 4
    for name in a:
        for key, value in a[name].items():
            assert b[name][key] == pytest.approx(value, abs=0.01), (name, key)


# ----------------------------------------------------------------------------- disk full
TMPFS_SCRIPT = textwrap.dedent("""
    set -e
    mount -t tmpfs -o size={size_kb}k tmpfs {mount}
    exec {python} -c "$PAYLOAD"
""")


def run_on_small_disk(tmp_path: Path, payload: str, size_kb: int) -> subprocess.CompletedProcess:
    """Run Python ``payload`` with a ``size_kb`` tmpfs mounted on tmp_path/disk, in a user and
    mount namespace of its own (no root needed where unprivileged user namespaces are allowed)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    mount = tmp_path / "disk"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mount}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (unshare -rm: {probe.stderr.strip()})")
    script = TMPFS_SCRIPT.format(size_kb=size_kb, mount=mount, python=sys.executable)
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PAYLOAD": payload})


DISK_FULL_PAYLOAD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    from prune_perception.errors import OutputWriteError
    disk = Path({disk!r})
    outcome = {{}}

    def attempt(name, write, target):
        earlier = target.read_bytes() if target.exists() else None
        try:
            write()
        except OutputWriteError as exc:
            leftovers = sorted(p.name for p in disk.rglob(".*") if p.name != target.name)
            outcome[name] = {{"error": str(exc), "leftovers": leftovers,
                             "earlier_intact": earlier is None or target.read_bytes() == earlier}}
        else:
            outcome[name] = {{"error": None}}

    # a report: an earlier good one first, then one too large for what is left
    from prune_perception.files import write_json_atomic
    report = disk / "report.json"
    write_json_atomic(report, {{"ok": True}})
    attempt("report", lambda: write_json_atomic(report, {{"rows": ["x" * 1000] * 400}}), report)

    # an ONNX model: the shared YOLOX-Nano (3.7 MB) exported onto a disk too small for it
    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.models.weights import load_onnx_weights
    from prune_perception.models.yolox import build_yolox
    from prune_perception.runtime.class_names import COCO_CLASSES
    from prune_perception.runtime.metadata import InputSpec
    model = load_onnx_weights(build_yolox("yolox_nano"), {model!r}, input_size=416).eval()
    onnx_path = disk / "student.onnx"
    attempt("onnx", lambda: export_onnx(model, onnx_path, COCO_CLASSES, InputSpec(width=416, height=416)), onnx_path)

    # a bag of frames
    from prune_perception.bags.camera_bag import CameraBagWriter
    bag = disk / "drive_bag"
    def write_bag():
        with CameraBagWriter(bag, fps=10.0) as writer:
            for index in range(40):
                writer.write(np.full((540, 960, 3), index, np.uint8), stamp_ns=index * 100_000_000)
    attempt("bag", write_bag, bag / "metadata.yaml")
    outcome["bag"]["bag_exists"] = bag.exists()
    print("OUTCOME " + json.dumps(outcome))
""")


def test_disk_full_is_a_clear_error_with_no_partial_file_and_the_earlier_one_intact(tmp_path, yolox_nano_path):
    payload = DISK_FULL_PAYLOAD.format(disk=str(tmp_path / "disk"), model=str(yolox_nano_path))
    result = run_on_small_disk(tmp_path, payload, size_kb=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("OUTCOME "))
    outcome = json.loads(line[len("OUTCOME "):])
    for name in ("report", "onnx", "bag"):
        case = outcome[name]
        assert case["error"] and "no space left on the device while writing" in case["error"], (name, case)
        assert case["leftovers"] == [], (name, case)  # no temporary file, no staging folder
        assert case["earlier_intact"], name
    assert "the earlier file is unchanged" in outcome["report"]["error"]
    assert "nothing was written" in outcome["onnx"]["error"]
    assert not outcome["bag"]["bag_exists"]
    assert "Traceback" not in result.stderr
