"""A second, stronger detector used only as a source of targets (``distill.teacher``).

The model being compressed stays the teacher of record: the ladder, the speed-ups and the AP lost
are measured against it. The second teacher is any detector file the runtime loads (an ONNX of
another family, e.g. an Ultralytics YOLOv8 export with its own metadata). It costs several times
a student step per image, so it never runs in the training loop. Instead:

- its detections on every training image are computed **once per run**, each image seen as the
  student sees it (resized to fit the student's input), and cached in
  ``<output_dir>/distill_teacher/``. The cache is written in parts, so a killed run resumes it; it
  is rebuilt when the data, the teacher file, the input shape or the threshold change, and a
  corrupt part is named in a warning and recomputed, never used;
- they become **pseudo-labels**, boxes in the image's pixels, so that they follow every geometric
  augmentation (mosaic, affine, flip) like the ground truth: for the classes a labelled set does
  not label, and for every class on the unlabelled frames. A sample so completed boxes every class
  the student predicts, so the label loss may take its unboxed cells as background.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from prune_perception.data.augment import Sample
from prune_perception.errors import PrunePerceptionError
from prune_perception.files import atomic_stream, write_json_atomic
from prune_perception.runtime.class_names import COCO_ALIASES
from prune_perception.runtime.metadata import InputSpec, ModelMetadata
from prune_perception.runtime.preprocess import letterbox_geometry

LOGGER = logging.getLogger(__name__)
CACHE_VERSION = 1
PART_SIZE = 256


class DistillTeacherError(PrunePerceptionError):
    """The distillation teacher is missing, unreadable, or does not predict the kept classes."""


def _canonical(name: str) -> str:
    """One spelling per COCO class: the official names as the teacher of record spells them."""
    name = name.strip().lower()
    return COCO_ALIASES.get(name, name)


def class_map(teacher_names: Sequence[str], student_names: Sequence[str]) -> dict[int, int]:
    """Teacher class index -> student class index, matched by name (COCO's variant names agree).

    Raises:
        DistillTeacherError: a student class the teacher does not predict.
    """
    index = {_canonical(name): position for position, name in enumerate(teacher_names)}
    missing = [name for name in student_names if _canonical(name) not in index]
    if missing:
        raise DistillTeacherError(
            f"the distillation teacher does not predict {', '.join(missing)} (its classes: "
            f"{', '.join(list(teacher_names)[:12])}{', ...' if len(teacher_names) > 12 else ''}); "
            "choose a teacher whose classes cover classes.keep")
    return {index[_canonical(name)]: student for student, name in enumerate(student_names)}


@dataclass(frozen=True)
class TeacherPredictions:
    """Per training image, the teacher's boxes (image pixels), scores and student class indices."""

    boxes: list[np.ndarray]
    scores: list[np.ndarray]
    classes: list[np.ndarray]


class DistillTeacher:
    """The second teacher, loaded and checked before any training (a bad file is an error then).

    Args:
        path: a detector file the runtime loads (with a sidecar, or metadata of its own).
        student_names: the classes the students predict, in their order.
        score_threshold: the least score a detection needs to become a pseudo-label.
    """

    def __init__(self, path: str | Path, student_names: Sequence[str], score_threshold: float = 0.4,
                 nms_threshold: float = 0.6) -> None:
        from prune_perception.runtime.detector import Detector, DetectorConfig

        self.path = Path(path)
        if not self.path.is_file():
            raise DistillTeacherError(f"distill.teacher: {self.path} does not exist")
        try:
            self.detector = Detector(self.path, backend="auto", device="cpu",
                                     config=DetectorConfig(score_threshold=score_threshold, nms_threshold=nms_threshold,
                                                           max_detections=300))
        except PrunePerceptionError as exc:
            raise DistillTeacherError(f"distill.teacher {self.path} cannot be used: {exc}") from exc
        self.metadata: ModelMetadata = self.detector.metadata
        self.classes = class_map(self.metadata.class_names, student_names)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self._sha256: str | None = None

    def describe(self) -> str:
        spec = self.metadata.input
        return (f"{self.path.name} ({self.metadata.decoder.type}, {spec.width}x{spec.height}, "
                f"{self.metadata.num_classes} classes, score >= {self.score_threshold})")

    def fingerprint(self) -> str:
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return self._sha256

    def predict(self, image: np.ndarray, student_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The teacher's detections of the kept classes on ``image`` seen at the student's input
        size, as boxes in ``image``'s pixels."""
        height, width = image.shape[:2]
        geometry = letterbox_geometry(width, height, InputSpec(width=student_hw[1], height=student_hw[0]))
        scale = geometry.scale
        seen = image if scale >= 1 else cv2.resize(image, (geometry.resized_width, geometry.resized_height),
                                                    interpolation=cv2.INTER_AREA)
        detections = self.detector.detect(seen).detections
        keep = np.asarray([int(c) in self.classes for c in detections.class_ids], bool)
        boxes = detections.boxes_xyxy[keep] / np.float32(min(scale, 1.0))
        classes = np.asarray([self.classes[int(c)] for c in detections.class_ids[keep]], np.int64)
        return boxes.astype(np.float32), detections.scores[keep].astype(np.float32), classes


def data_fingerprint(samples: Sequence[Sample]) -> str:
    """A digest of every training image's pixels (what the cache was computed on)."""
    digest = hashlib.blake2b(digest_size=16)
    for sample in samples:
        digest.update(np.asarray(sample.image.shape, np.int64).tobytes())
        digest.update(np.ascontiguousarray(sample.image).data)
    return digest.hexdigest()


def cached_predictions(teacher: DistillTeacher, samples: Sequence[Sample], student_hw: tuple[int, int],
                       folder: Path, progress: bool = True) -> TeacherPredictions:
    """The teacher's predictions on every sample, from ``folder``'s cache where it is this run's,
    computed (and cached part by part) where not."""
    folder.mkdir(parents=True, exist_ok=True)
    key = {"version": CACHE_VERSION, "teacher_sha256": teacher.fingerprint(), "data": data_fingerprint(samples),
           "images": len(samples), "input_hw": list(student_hw), "score_threshold": teacher.score_threshold,
           "nms_threshold": teacher.nms_threshold, "classes": {str(k): v for k, v in sorted(teacher.classes.items())}}
    manifest = folder / "cache.json"
    if manifest.exists():
        try:
            stale = json.loads(manifest.read_text()) != key
        except (OSError, ValueError):
            stale = True
        if stale:
            LOGGER.info("distillation teacher cache in %s is for other data, teacher, shape or threshold: rebuilt",
                        folder)
            for part in folder.glob("part_*.npz"):
                part.unlink()
    write_json_atomic(manifest, key)
    boxes: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    classes: list[np.ndarray] = []
    parts = range(0, len(samples), PART_SIZE)
    bar = tqdm(total=len(samples), desc="distillation teacher", disable=not progress)
    for first in parts:
        chunk = samples[first:first + PART_SIZE]
        path = folder / f"part_{first // PART_SIZE:05d}.npz"
        loaded = _load_part(path, len(chunk))
        if loaded is None:
            predicted = [teacher.predict(sample.image, student_hw) for sample in chunk]
            loaded = ([p[0] for p in predicted], [p[1] for p in predicted], [p[2] for p in predicted])
            _save_part(path, *loaded)
        boxes += loaded[0]
        scores += loaded[1]
        classes += loaded[2]
        bar.update(len(chunk))
    bar.close()
    return TeacherPredictions(boxes, scores, classes)


def _save_part(path: Path, boxes: list[np.ndarray], scores: list[np.ndarray], classes: list[np.ndarray]) -> None:
    counts = np.asarray([len(b) for b in boxes], np.int64)
    with atomic_stream(path) as stream:
        np.savez(stream, counts=counts, boxes=np.concatenate(boxes).reshape(-1, 4).astype(np.float32),
                 scores=np.concatenate(scores).astype(np.float32), classes=np.concatenate(classes).astype(np.int64))


def _load_part(path: Path, expected: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] | None:
    """A cached part, or None where it is absent or cannot be trusted (then it is recomputed)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            counts, boxes, scores, classes = data["counts"], data["boxes"], data["scores"], data["classes"]
        if len(counts) != expected or int(counts.sum()) != len(boxes) or not len(boxes) == len(scores) == len(classes):
            raise ValueError(f"{len(counts)} images and {len(boxes)} boxes where {expected} images were cached")
    except Exception as exc:  # a truncated or foreign file: whatever numpy makes of it
        LOGGER.warning("distillation teacher cache %s is corrupt (%s: %s): recomputed, not used",
                       path, type(exc).__name__, exc)
        return None
    split = np.cumsum(counts)[:-1]
    return np.split(boxes, split), np.split(scores, split), np.split(classes, split)


def with_pseudo_labels(samples: Sequence[Sample], label_classes: Sequence[tuple[int, ...] | None],
                       predictions: TeacherPredictions, num_classes: int, label_sets: bool = True,
                       label_frames: bool = True) -> tuple[list[Sample], dict[str, int]]:
    """The samples with the teacher's boxes added where their own labels leave classes out.

    Args:
        label_classes: per sample, the student classes its labels cover (None: an unlabelled frame).
        label_sets: add boxes of the classes a labelled set does not label.
        label_frames: label the unlabelled frames with the teacher's boxes of every class.

    A sample whose labels then cover every class is exhaustive: its unboxed cells are background.
    """
    everything = set(range(num_classes))
    result, added = [], {"labelled_images": 0, "unlabelled_frames": 0, "boxes": 0}
    for sample, covered, boxes, classes in zip(samples, label_classes, predictions.boxes, predictions.classes):
        if covered is None and label_frames:
            result.append(Sample(sample.image, boxes, classes, labelled=True, exhaustive=True))
            added["unlabelled_frames"] += 1
            added["boxes"] += len(boxes)
        elif covered is not None and label_sets and set(covered) != everything:
            missing = np.asarray([int(c) not in covered for c in classes], bool)
            result.append(replace(sample, boxes_xyxy=np.concatenate([sample.boxes_xyxy, boxes[missing]]).astype(np.float32),
                                  class_ids=np.concatenate([sample.class_ids, classes[missing]]), exhaustive=True))
            added["labelled_images"] += 1
            added["boxes"] += int(missing.sum())
        else:
            result.append(sample)
    return result, added

