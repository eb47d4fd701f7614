"""Labelled and unlabelled image sources for evaluation, distillation and fine-tuning.

- Labelled: YOLO txt (``images/*.jpg`` + ``labels/*.txt``) and COCO json.
- Unlabelled frames (for distillation) come from :mod:`prune_perception.bags.frame_sources`, which
  reads bags beside image folders and videos.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from prune_perception.data.frame_source import IMAGE_SUFFIXES, FrameSourceError
from prune_perception.data.yolo_labels import label_path_for, read_yolo_labels



@dataclass(frozen=True)
class LabelledImage:
    path: Path
    width: int
    height: int
    boxes_xyxy: np.ndarray  # (N, 4) pixels
    class_ids: np.ndarray  # (N,) 0-based

    def read(self) -> np.ndarray:
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise FrameSourceError(f"cannot read image {self.path}")
        return image


def load_yolo_dataset(images_dir: str | Path) -> list[LabelledImage]:
    """Images of ``images_dir`` with their YOLO labels from the sibling ``labels`` folder (an
    image without a label file has no objects)."""
    images_dir = Path(images_dir)
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if images_dir.is_dir() else []
    if not paths:
        raise FrameSourceError(f"no images in {images_dir}")
    items = []
    for path in paths:
        height, width = _image_size(path)
        boxes, class_ids = read_yolo_labels(label_path_for(path), width, height)
        items.append(LabelledImage(path, width, height, boxes, class_ids))
    return items


def load_coco_json(annotation_path: str | Path, images_dir: str | Path) -> tuple[list[LabelledImage], list[str]]:
    """A COCO detection json: its images (found in ``images_dir``) and the category names.

    Categories are renumbered to contiguous 0-based class ids in the order of their ids.
    """
    data = json.loads(Path(annotation_path).read_text())
    categories = sorted(data["categories"], key=lambda c: c["id"])
    class_of = {category["id"]: index for index, category in enumerate(categories)}
    boxes: dict[int, list] = {image["id"]: [] for image in data["images"]}
    for annotation in data.get("annotations", []):
        if annotation.get("iscrowd", 0):
            continue
        x, y, w, h = annotation["bbox"]
        boxes[annotation["image_id"]].append((x, y, x + w, y + h, class_of[annotation["category_id"]]))
    items = []
    for image in data["images"]:
        rows = np.asarray(boxes[image["id"]], np.float64).reshape(-1, 5)
        items.append(LabelledImage(Path(images_dir) / image["file_name"], int(image["width"]), int(image["height"]),
                                   rows[:, :4], rows[:, 4].astype(np.int64)))
    return items, [category["name"] for category in categories]


def load_labelled_source(path: str | Path, images_dir: str | Path | None = None
                         ) -> tuple[list[LabelledImage], list[str] | None]:
    """A labelled source: a COCO json (its images in ``images_dir``, default ``images`` beside it)
    with its category names, or a YOLO images folder (names: None, the ids are the model's).

    Raises:
        FrameSourceError: the path does not exist, or is neither a json nor an images folder.
    """
    path = Path(path)
    if not path.exists():
        raise FrameSourceError(f"labelled source {path} does not exist")
    if path.suffix.lower() == ".json":
        try:
            return load_coco_json(path, images_dir or path.parent / "images")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FrameSourceError(f"{path} is not a readable COCO detection json: {exc}") from exc
    return load_yolo_dataset(path), None


def split_by_name(items: Sequence[LabelledImage], pattern: str) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, validation): the images whose file name matches ``pattern`` (a regex) are the
    validation split, e.g. every frame of one camera never trained on."""
    import re

    expression = re.compile(pattern)
    validation = [item for item in items if expression.search(item.path.name)]
    train = [item for item in items if not expression.search(item.path.name)]
    return train, validation


def evenly_spaced(items: Sequence, count: int) -> list:
    """At most ``count`` items spread over the whole sequence (0: all)."""
    if not count or len(items) <= count:
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]


def split_dataset(items: Sequence, validation_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic (train, validation) split."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    count = int(round(len(items) * validation_fraction))
    validation = sorted(order[:count])
    train = sorted(order[count:])
    return [items[i] for i in train], [items[i] for i in validation]


def _image_size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FrameSourceError(f"cannot read image {path}")
    return image.shape[0], image.shape[1]
