"""The images of a compression run: training samples, validation sets, fidelity frames and
calibration tensors, loaded once from the ``data`` section.

Every labelled set has its own validation split (a random fraction, or the images whose names
match a pattern, e.g. a camera never trained on), and is scored on the classes it labels. The
validation images are never trained on; unlabelled sources lose their last frames to fidelity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from prune_perception.compress.class_subset import ClassSubset, resolve_classes
from prune_perception.bags.frame_sources import iter_unlabelled_frames
from prune_perception.compress.config import CompressConfig, DataConfig, LabelledSet
from prune_perception.data.augment import Sample
from prune_perception.data.datasets import (
    LabelledImage,
    evenly_spaced,
    load_coco_json,
    load_labelled_source,
    load_yolo_dataset,
    split_by_name,
    split_dataset,
)
from prune_perception.errors import PrunePerceptionError
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationSet:
    """Held-out labelled images, scored on ``classes`` (teacher ids; None: all)."""

    name: str
    items: list[LabelledImage]
    classes: tuple[int, ...] | None
    agnostic: bool = False

    def describe(self, class_names: Sequence[str]) -> str:
        labelled = "all classes" if self.classes is None else ", ".join(class_names[i] for i in self.classes)
        return f"{self.name}: {len(self.items)} images, {labelled}{' (class-agnostic)' if self.agnostic else ''}"


@dataclass
class CompressData:
    train_samples: list[Sample]
    validation: list[ValidationSet]
    fidelity_frames: list[np.ndarray]
    calibration: list[np.ndarray]
    train_label_classes: list[tuple[int, ...] | None]
    """Per training sample, the student classes its labels box (None: an unlabelled frame)."""


def set_classes(labelled: LabelledSet, class_names: Sequence[str], subset: ClassSubset | None) -> tuple[int, ...] | None:
    """The teacher ids a set is scored on. With a class subset, every class it labels must be kept.

    Raises:
        PrunePerceptionError: a class the teacher lacks, or one the students do not keep.
    """
    ids = resolve_classes(labelled.classes, class_names).teacher_ids if labelled.classes is not None else None
    if subset is None:
        return ids
    outside = sorted(set(ids if ids is not None else range(len(class_names))) - set(subset.teacher_ids))
    if outside:
        raise PrunePerceptionError(
            f"data set {labelled.name!r} labels {', '.join(class_names[i] for i in outside)}, which classes.keep leaves "
            f"out: its AP would count them as missed. Add them to classes.keep or list the set's classes in its "
            "'classes' (only the kept ones are then scored)")
    return ids if ids is not None else subset.teacher_ids


def _sets_of(data: DataConfig) -> list[LabelledSet]:
    if data.sets:
        return list(data.sets)
    if data.labelled or data.coco_json:
        return [LabelledSet(name="labelled", path=data.coco_json or data.labelled,
                            images=data.labelled if data.coco_json else None,
                            validation_fraction=data.validation_fraction)]
    return []


def check_sources(config: CompressConfig, class_names: Sequence[str], subset: ClassSubset | None) -> None:
    """Everything about the data that can be checked without reading images, before any work."""
    from pathlib import Path

    for labelled in _sets_of(config.data):
        for path in _paths(labelled):
            if not Path(path).exists():
                raise PrunePerceptionError(f"data set {labelled.name!r}: {path} does not exist")
        set_classes(labelled, class_names, subset)
    for key in ("unlabelled", "fidelity_sources"):
        for source in getattr(config.data, key):
            if not Path(source).exists():
                raise PrunePerceptionError(f"data.{key}: {source} does not exist")


def _paths(labelled: LabelledSet) -> list[str]:
    return [labelled.path] if isinstance(labelled.path, str) else list(labelled.path)


def _load_set(labelled: LabelledSet, class_names: Sequence[str], data: DataConfig) -> list[LabelledImage]:
    if not data.sets:
        if data.coco_json:
            items, names = load_coco_json(data.coco_json, data.labelled)
            _check_categories(data.coco_json, names, class_names)
            return items
        return load_yolo_dataset(data.labelled)
    items = []
    for path in _paths(labelled):
        part, names = load_labelled_source(path, labelled.images)
        _check_categories(path, names, class_names)
        items += part
    return items


def _check_categories(path: str, names: Sequence[str] | None, class_names: Sequence[str]) -> None:
    if names is not None and len(names) != len(class_names):
        raise PrunePerceptionError(f"{path} has {len(names)} categories, the teacher {len(class_names)}")


def load_run_data(config: CompressConfig, spec: InputSpec, class_names: Sequence[str], subset: ClassSubset | None,
                  progress: bool = True) -> CompressData:
    data = config.data
    validation: list[ValidationSet] = []
    training: list[Sample] = []
    label_classes: list[tuple[int, ...] | None] = []
    labelled_count = 0
    cap = 2 * max(spec.width, spec.height)  # keep memory bounded; augmentation scales further anyway
    for labelled in _sets_of(data):
        items = _load_set(labelled, class_names, data)
        if data.max_labelled:
            items = items[: data.max_labelled]
        if labelled.validation_match:
            train, held_out = split_by_name(items, labelled.validation_match)
            if not held_out:
                raise PrunePerceptionError(f"data set {labelled.name!r}: no image name matches validation_match "
                                           f"{labelled.validation_match!r}")
        else:
            train, held_out = split_dataset(items, labelled.validation_fraction, config.seed)
        held_out = evenly_spaced(held_out, labelled.max_validation or config.evaluate.max_validation_images)
        classes = set_classes(labelled, class_names, subset)
        if held_out:
            validation.append(ValidationSet(labelled.name, held_out, classes, labelled.agnostic))
        if not labelled.train:
            continue
        # A set that labels only some of the classes the student predicts is not exhaustive: the
        # label loss takes its boxes but not its unboxed cells as background. A class-agnostic
        # set's boxes carry no class (-1).
        exhaustive = classes is None or (subset is not None and set(classes) >= set(subset.teacher_ids))
        covered = _student_classes(classes, subset, len(class_names))
        for item in tqdm(train, desc=f"load {labelled.name}", disable=not progress):
            class_ids = np.full(len(item.class_ids), -1, np.int64) if labelled.agnostic else item.class_ids
            sample = Sample(item.read(), item.boxes_xyxy.astype(np.float32), class_ids, True, exhaustive)
            training.append(_bounded(relabel_to_subset(sample, subset), cap))
            label_classes.append(covered)
        labelled_count += len(train)
    frames = list(tqdm(iter_unlabelled_frames(data.unlabelled, data.unlabelled_max_frames, data.unlabelled_stride,
                                              data.bag_topic), desc="load unlabelled", disable=not progress)
                  ) if data.unlabelled else []
    if data.fidelity_sources:
        fidelity_frames = evenly_spaced(list(iter_unlabelled_frames(data.fidelity_sources, 0, 1, data.bag_topic)),
                                        data.fidelity_frames)
        held_out_frames = 0
    else:
        held_out_frames = min(data.fidelity_frames, len(frames) // 4)
        fidelity_frames = frames[len(frames) - held_out_frames:] if held_out_frames else []
    unlabelled = [_bounded(Sample.unlabelled(frame), cap) for frame in frames[: len(frames) - held_out_frames]]
    training += unlabelled
    label_classes += [None] * len(unlabelled)
    if not training:
        raise PrunePerceptionError("no training images: set data.sets (or data.labelled) and/or data.unlabelled")
    if config.train.label_weight > 0 and not labelled_count:
        raise PrunePerceptionError("train.label_weight > 0 needs labelled training images (data.sets)")
    preprocessor = Preprocessor(spec)
    rng = np.random.default_rng(config.seed)
    wanted = max(config.export.int8_calibration_images, config.prune.calibration_images)
    calibration = [preprocessor(training[i].image)[0] for i in rng.permutation(len(training))[:wanted]]
    LOGGER.info("data: %d training images (%d with labels in the loss), %d fidelity frames; validation: %s",
                len(training), labelled_count, len(fidelity_frames),
                "; ".join(v.describe(class_names) for v in validation) or "none")
    return CompressData(training, validation, fidelity_frames, calibration, label_classes)


def _student_classes(classes: tuple[int, ...] | None, subset: ClassSubset | None, num_classes: int) -> tuple[int, ...]:
    """The student class indices of a set's labelled teacher ``classes`` (None: all)."""
    if subset is None:
        return tuple(range(num_classes)) if classes is None else tuple(classes)
    return tuple(i for i, teacher_id in enumerate(subset.teacher_ids) if classes is None or teacher_id in classes)


def relabel_to_subset(sample: Sample, subset: ClassSubset | None) -> Sample:
    """Labels in the student's class indices (the subset's order); other classes' boxes dropped,
    class-agnostic boxes (-1) kept."""
    if subset is None or not len(sample.class_ids):
        return sample
    index = {teacher_id: position for position, teacher_id in enumerate(subset.teacher_ids)}
    index[-1] = -1
    keep = np.asarray([int(c) in index for c in sample.class_ids], bool)
    ids = np.asarray([index[int(c)] for c in sample.class_ids[keep]], np.int64)
    return replace(sample, boxes_xyxy=sample.boxes_xyxy[keep], class_ids=ids)


def _bounded(sample: Sample, longest_side: int) -> Sample:
    """The sample resized so that its longest side is at most ``longest_side`` (boxes scaled too)."""
    height, width = sample.image.shape[:2]
    scale = longest_side / max(height, width)
    if scale >= 1:
        return sample
    size = (int(round(width * scale)), int(round(height * scale)))
    image = cv2.resize(sample.image, size, interpolation=cv2.INTER_AREA)
    return replace(sample, image=image, boxes_xyxy=sample.boxes_xyxy * scale)
