"""The hot model swap's core (no ROS): the old model serves until the new one is ready, the
exchange happens between model calls, and a model that fails to load changes nothing."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from prune_perception.runtime.detector import Detector
from prune_perception.runtime.model_slot import ModelSlot, ModelSwapError

SAMPLE = Path(__file__).resolve().parents[1] / "prune_perception" / "samples" / "sample_teacher.onnx"


@pytest.fixture
def two_models(tmp_path):
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.onnx"
        shutil.copy(SAMPLE, path)
        shutil.copy(SAMPLE.with_name(SAMPLE.name + ".json"), path.with_name(path.name + ".json"))
        paths.append(path)
    return paths


def build(path: Path) -> Detector:
    detector = Detector(path, device="cpu", intra_op_threads=1)
    detector.warmup(1)
    return detector


def test_swap_serves_every_call_and_exchanges_between_calls(two_models):
    a, b = two_models
    slot = ModelSlot(build)
    first = slot.load(a)
    served, errors, stop = [], [], threading.Event()
    frame = np.zeros((120, 160, 3), np.uint8)

    def serve():
        while not stop.is_set():
            try:
                with slot.use() as detector:
                    detector.detect(frame)
                    served.append(detector.model_path)
            except Exception as exc:  # noqa: BLE001 - any failure here is the test's failure
                errors.append(exc)

    worker = threading.Thread(target=serve)
    worker.start()
    outcomes = []
    try:
        slot.swap_in_background(b, done=outcomes.append)
        with pytest.raises(ModelSwapError, match="still loading"):
            slot.swap_in_background(a)
        slot.wait_for_swap(30)
        count, deadline = len(served), time.monotonic() + 30
        while len(served) < count + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join(10)
    assert not errors, errors
    assert outcomes and outcomes[0].succeeded and f"from {a} to {b}" in outcomes[0].message
    switch = served.index(b)
    assert set(served[:switch]) == {a} and set(served[switch:]) == {b} and switch > 0
    assert slot.detector is not first and slot.detector.model_path == b
    slot.close()
    assert slot.detector is None


def test_a_model_that_fails_to_load_leaves_the_old_one_serving(two_models, tmp_path):
    a, _ = two_models
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model" * 100)
    slot = ModelSlot(build)
    serving = slot.load(a)
    outcomes = []
    slot.swap_in_background(corrupt, done=outcomes.append)
    slot.wait_for_swap(30)
    (outcome,) = outcomes
    assert not outcome.succeeded and f"model swap to {corrupt} failed" in outcome.message
    assert f"still serving {a}" in outcome.message and "cannot load ONNX model" in outcome.message
    assert slot.detector is serving and slot.loading is None and slot.last_swap is outcome
    with slot.use() as detector:
        assert len(detector.detect(np.zeros((64, 64, 3), np.uint8)).detections) >= 0
    slot.close()
