"""Fuzz harness: the bag reader (frames and ground truth) on mutated MCAP bag files. The seed is
a small camera bag with ground truth, written by the project's own bag writer."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import atheris
import numpy as np
import rosbags.highlevel  # noqa: F401  imported before instrumentation: only this project's code is instrumented

with atheris.instrument_imports(include=["prune_perception"]):
    from prune_perception.bags.camera_bag import CameraBagWriter, iter_camera_frames, read_ground_truth
    from prune_perception.errors import PrunePerceptionError

_FOLDER = Path(tempfile.mkdtemp(prefix="fuzz_bag_"))
SEED_BAG = _FOLDER / "seed"
BAG = _FOLDER / "fuzzed"


def _write_seed() -> bytes:
    if not SEED_BAG.exists():
        with CameraBagWriter(SEED_BAG, fps=10.0, class_names=("car", "person")) as writer:
            for index in range(3):
                frame = np.full((12, 16, 3), 40 * index, np.uint8)
                writer.write(frame, stamp_ns=1_000_000_000 + index * 100_000_000,
                             boxes_xyxy=np.array([[1, 1, 8, 6]], np.float32), class_ids=np.array([index % 2]))
        shutil.copytree(SEED_BAG, BAG, dirs_exist_ok=True)
    (storage,) = SEED_BAG.glob("*.mcap")
    return storage.read_bytes()


SEED = _write_seed()
(STORAGE,) = BAG.glob("*.mcap")


def test_one_input(data: bytes) -> None:
    STORAGE.write_bytes(data)
    try:
        for _ in iter_camera_frames(BAG):
            pass
        read_ground_truth(BAG, ("car", "person"))
    except PrunePerceptionError:
        pass


def seeds() -> list[bytes]:
    return [SEED]


if __name__ == "__main__":
    from common import fuzz_main

    fuzz_main(test_one_input, seeds)
