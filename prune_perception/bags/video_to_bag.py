"""``prune-perception video-to-bag``: a video, an image folder or a synthetic drive -> a camera bag.

- video: one frame per video frame, stamped at the video's frame rate (or ``fps``);
- image folder: sorted by name, at ``fps``; with YOLO labels beside it (``../labels``) and
  ``class_names``, its ground truth is written as a Detection2DArray topic;
- synthetic: :class:`SceneGenerator` frames with their exact ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from prune_perception.bags.camera_bag import BagError, CameraBagWriter, CameraTopics
from prune_perception.data.datasets import load_yolo_dataset
from prune_perception.data.frame_source import iter_frames, source_frame_rate
from prune_perception.sim.scenes import SCENE_CLASSES, SceneConfig, SceneGenerator


@dataclass(frozen=True)
class BagSummary:
    path: Path
    frames: int
    fps: float
    ground_truth: bool


def _labelled_folder(folder: Path, max_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    for index, item in enumerate(load_yolo_dataset(folder)):
        if max_frames and index >= max_frames:
            return
        yield item.read(), item.boxes_xyxy, item.class_ids


def video_to_bag(source: str | Path | None, output: str | Path, *, fps: float = 0.0, max_frames: int = 0,
                 storage: str = "mcap", compressed: bool = False, image_topic: str = "/camera/image_raw",
                 frame_id: str = "camera", class_names: Sequence[str] = (), ground_truth: bool = True,
                 synthetic_frames: int = 0, seed: int = 0, scene: SceneConfig = SceneConfig(),
                 start_time_ns: int = 1_700_000_000_000_000_000, overwrite: bool = False,
                 progress: bool = True) -> BagSummary:
    """Write the bag; ``source=None`` with ``synthetic_frames`` writes a synthetic drive."""
    topics = CameraTopics.for_image_topic(image_topic, compressed)
    focal = None
    if source is None:
        if synthetic_frames < 1:
            raise BagError("give a source, or synthetic_frames > 0 for a synthetic drive")
        generator = SceneGenerator(scene, seed=seed)
        rate = fps or scene.fps
        focal = generator.focal
        class_names = SCENE_CLASSES
        frames: Iterator = ((f.image, f.boxes_xyxy, f.class_ids) for f in (generator.next_frame() for _ in range(synthetic_frames)))
        total: int | None = synthetic_frames
    else:
        source = Path(source)
        if not source.exists():
            raise BagError(f"source {source} does not exist")
        rate = fps or source_frame_rate(source)
        labelled = source.is_dir() and ground_truth and (source.parent / "labels").is_dir()
        if labelled:
            frames = _labelled_folder(source, max_frames)
        else:
            frames = ((image, None, None) for image in iter_frames(source, max_frames=max_frames))
        total = max_frames or None
    period_ns = int(round(1e9 / rate))
    with CameraBagWriter(output, rate, topics, frame_id, storage, compressed, class_names=class_names,
                         focal_px=focal, overwrite=overwrite) as writer:
        for index, (image, boxes, class_ids) in enumerate(tqdm(frames, total=total, desc="video-to-bag",
                                                               disable=not progress, unit="frame")):
            writer.write(image, start_time_ns + index * period_ns, boxes if ground_truth else None, class_ids)
        if writer.frames == 0:
            raise BagError(f"{source} gave no frames")
    return BagSummary(Path(output), writer.frames, rate, writer.has_ground_truth)
