"""Unlabelled frames for distillation and calibration: image folders, video files and the image
topics of rosbag2 bags (sqlite3 or MCAP, read with ``rosbags``; no ROS installation needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from prune_perception.bags.camera_bag import iter_camera_frames
from prune_perception.data.frame_source import iter_frames

BAG_SUFFIXES = (".db3", ".mcap")


def iter_unlabelled_frames(
    sources: Sequence[str | Path], max_frames_per_source: int = 0, stride: int = 1, topic: str | None = None
) -> Iterator[np.ndarray]:
    """BGR frames from image folders, videos and rosbag2 bags (every ``stride``-th frame).

    Args:
        topic: the bag's image topic; by default the only Image/CompressedImage topic of the bag.
    """
    for source in sources:
        source = Path(source)
        if _is_bag(source):
            frames = iter_bag_frames(source, topic)
        else:
            frames = iter_frames(source)
        taken = 0
        for index, frame in enumerate(frames):
            if index % stride:
                continue
            yield frame
            taken += 1
            if max_frames_per_source and taken >= max_frames_per_source:
                break


def _is_bag(path: Path) -> bool:
    return path.suffix in BAG_SUFFIXES or (path.is_dir() and (path / "metadata.yaml").exists())


def iter_bag_frames(bag: str | Path, topic: str | None = None) -> Iterator[np.ndarray]:
    """BGR frames of one image topic of a rosbag2 bag (folder, ``.db3`` or ``.mcap``).

    Raises:
        FrameSourceError: unreadable bag, no such topic, or a topic that is not an image.
    """
    for frame in iter_camera_frames(bag, topic):
        yield frame.image
