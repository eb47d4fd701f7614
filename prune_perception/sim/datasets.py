"""Labelled datasets from the scene generator: YOLO txt folders and in-memory training samples."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2

from prune_perception.data.augment import Sample
from prune_perception.data.datasets import LabelledImage
from prune_perception.data.yolo_labels import format_yolo_labels, label_path_for
from prune_perception.files import atomic_output, write_text_atomic
from prune_perception.sim.scenes import SceneConfig, SceneFrame, SceneGenerator


def scene_frames(config: SceneConfig, seeds: list[int], frames_per_seed: int, stride: int = 1) -> Iterator[SceneFrame]:
    """Every ``stride``-th frame of one sequence per seed (consecutive frames are near-duplicates)."""
    for seed in seeds:
        generator = SceneGenerator(config, seed=seed)
        for index in range(frames_per_seed * stride):
            frame = generator.next_frame()
            if index % stride == 0:
                yield frame


def scene_samples(config: SceneConfig, seeds: list[int], frames_per_seed: int, stride: int = 1) -> list[Sample]:
    return [Sample(f.image, f.boxes_xyxy, f.class_ids) for f in scene_frames(config, seeds, frames_per_seed, stride)]


def write_yolo_dataset(frames: Iterator[SceneFrame], output_dir: str | Path, prefix: str = "frame") -> list[LabelledImage]:
    """``<output_dir>/images/<prefix>_000000.jpg`` and ``labels/<prefix>_000000.txt`` per frame,
    numbered in order (frames of several sequences share frame indices)."""
    images_dir = Path(output_dir) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    dataset = []
    for number, frame in enumerate(frames):
        image_path = images_dir / f"{prefix}_{number:06d}.jpg"
        height, width = frame.image.shape[:2]
        ok, encoded = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise OSError(f"cannot encode {image_path}")
        with atomic_output(image_path) as tmp:
            tmp.write_bytes(encoded.tobytes())
        label_path = label_path_for(image_path)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(label_path, format_yolo_labels(frame.boxes_xyxy, frame.class_ids, width, height))
        dataset.append(LabelledImage(image_path, width, height, frame.boxes_xyxy, frame.class_ids))
    return dataset
