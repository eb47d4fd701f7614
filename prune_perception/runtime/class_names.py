"""Class name tables used when a model comes without a metadata sidecar, and subsets of them
(the classes a specialized model keeps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from prune_perception.errors import PrunePerceptionError

# The 80 COCO detection classes in the contiguous order used by YOLOX and most COCO detectors.
COCO_CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorbike",
    "aeroplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "sofa",
    "pottedplant",
    "bed",
    "diningtable",
    "toilet",
    "tvmonitor",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """COCO names for an 80-class model, otherwise ``class_0 .. class_{n-1}``."""
    if num_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    return tuple(f"class_{index}" for index in range(num_classes))


class ClassSubsetError(PrunePerceptionError):
    """A requested class does not exist in the teacher, or the subset is malformed."""


@dataclass(frozen=True)
class ClassSubset:
    """The classes a student keeps: their indices in the teacher's output, and their names."""

    teacher_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.teacher_ids)

    def to_dict(self) -> dict[str, object]:
        return {"teacher_ids": list(self.teacher_ids), "names": list(self.names)}


COCO_ALIASES = {"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
                "dining table": "diningtable", "tv": "tvmonitor"}
"""The official COCO category names where this table (YOLOX's) spells them otherwise."""


def resolve_classes(requested: Sequence[str | int], teacher_names: Sequence[str]) -> ClassSubset:
    """Names (or teacher indices) -> the subset, in the teacher's order.

    Raises:
        ClassSubsetError: a name or index the teacher does not have, a duplicate, or an empty list.
    """
    if not requested:
        raise ClassSubsetError("the class list is empty: give at least one class, or none to keep all")
    lookup = {name: index for index, name in enumerate(teacher_names)}
    ids = []
    for item in requested:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ClassSubsetError(f"a class must be a name or an index, got {item!r}")
        if isinstance(item, int):
            if not 0 <= item < len(teacher_names):
                raise ClassSubsetError(f"class index {item} is outside the teacher's {len(teacher_names)} classes")
            ids.append(item)
        elif item in lookup:
            ids.append(lookup[item])
        elif COCO_ALIASES.get(item) in lookup:
            ids.append(lookup[COCO_ALIASES[item]])
        else:
            close = [name for name in teacher_names if item.lower() in name.lower() or name.lower() in item.lower()]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ClassSubsetError(f"unknown class {item!r}{hint}; the model's classes: {', '.join(teacher_names)}")
    if len(set(ids)) != len(ids):
        raise ClassSubsetError(f"the class list names a class twice: {list(requested)}")
    ordered = tuple(sorted(ids))
    return ClassSubset(ordered, tuple(teacher_names[i] for i in ordered))
