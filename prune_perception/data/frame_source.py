"""Frames from a video file or an image folder, as BGR arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from prune_perception.errors import PrunePerceptionError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class FrameSourceError(PrunePerceptionError):
    """The video or image folder is missing, empty or unreadable."""


def iter_frames(source: str | Path, max_frames: int = 0, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Yield BGR frames of a video file or of the images of a folder (sorted by name).

    Args:
        max_frames: stop after this many frames (0: all).
        size: ``(width, height)`` to resize every frame to, or None to keep it.
    """
    source = Path(source)
    count = 0
    for frame in _iter_folder(source) if source.is_dir() else _iter_video(source):
        if size is not None and (frame.shape[1], frame.shape[0]) != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        yield frame
        count += 1
        if max_frames and count >= max_frames:
            return
    if count == 0:
        raise FrameSourceError(f"no frames could be read from {source}")


def source_frame_rate(source: str | Path, default: float = 10.0) -> float:
    """The video's frame rate; ``default`` for image folders or videos that do not say."""
    source = Path(source)
    if source.is_dir():
        return default
    capture = cv2.VideoCapture(str(source))
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    capture.release()
    return fps if fps and fps > 0 else default


def _iter_video(path: Path) -> Iterator[np.ndarray]:
    if not path.is_file():
        raise FrameSourceError(f"video file not found: {path}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FrameSourceError(f"OpenCV cannot open the video {path}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def _iter_folder(folder: Path) -> Iterator[np.ndarray]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FrameSourceError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
    for path in paths:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise FrameSourceError(f"cannot read image {path}")
        yield frame
