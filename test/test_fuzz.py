"""Fuzzing: a bounded smoke run of every atheris harness (what a longer `scripts/fuzz.py` run does
for minutes), and every input a fuzzer ever crashed on, replayed as a regression test."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"
HARNESSES = ("image_conversion", "sidecar", "compress_config", "bag_reader")
SMOKE_RUNS = {"image_conversion": 20000, "sidecar": 5000, "compress_config": 3000, "bag_reader": 600}
REGRESSIONS = sorted((FUZZ / "regressions").glob("*/*"))


def test_every_harness_survives_a_smoke_run(tmp_path):
    results = {}
    for name in HARNESSES:
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--harness", name, "--runs", str(SMOKE_RUNS[name]),
             "--output", str(tmp_path), "--seed", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr[-4000:]
        (summary,) = json.loads((tmp_path / "summary.json").read_text())
        results[name] = summary
    for name, summary in results.items():
        assert summary["runs"] is not None and summary["runs"] >= SMOKE_RUNS[name], summary
        assert not summary["findings"], summary


@pytest.mark.parametrize("path", REGRESSIONS, ids=[f"{p.parent.name}/{p.name}" for p in REGRESSIONS])
def test_inputs_that_once_crashed_a_harness_are_handled(path):
    sys.path.insert(0, str(FUZZ))
    try:
        harness = importlib.import_module(f"fuzz_{path.parent.name}")
    finally:
        sys.path.remove(str(FUZZ))
    harness.test_one_input(path.read_bytes())  # a result or the project's own error, nothing else
