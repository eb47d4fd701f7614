"""Accuracy of a model file as deployed: the runtime Detector over a dataset, COCO metrics.

Class ids are compared as the node publishes them: a model specialized to some of its teacher's
classes reports the teacher's ids (its sidecar's ``class_ids``), so a student and its teacher are
scored on the same ground truth. A dataset that labels only some classes (``classes``) is scored on
those only: a correct detection of another class is not an error there. ``agnostic`` scores every
labelled class as one (a set whose car/bus/truck labels are not reliable apart).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from prune_perception.data.datasets import LabelledImage
from prune_perception.errors import PrunePerceptionError
from prune_perception.eval.coco_eval import CocoMetrics, ImageBoxes, evaluate_detections
from prune_perception.runtime.detector import Detector, DetectorConfig
from prune_perception.runtime.postprocess import Detections

# COCO evaluation keeps low-score detections: AP integrates over the whole precision/recall curve.
EVAL_CONFIG = DetectorConfig(score_threshold=0.001, nms_threshold=0.65, max_detections=100)
AGNOSTIC_NAME = "object"


def _name_table(names: dict[int, str]) -> list[str]:
    return [names.get(i, f"class_{i}") for i in range(max(names) + 1)]


def _restricted(boxes: np.ndarray, ids: np.ndarray, scores: np.ndarray | None, keep: Sequence[int] | None,
                agnostic: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    ids = np.asarray(ids, np.int64)
    mask = np.isin(ids, np.asarray(keep, np.int64)) if keep is not None else np.ones(len(ids), bool)
    ids = np.zeros(int(mask.sum()), np.int64) if agnostic else ids[mask]
    return np.asarray(boxes).reshape(-1, 4)[mask], ids, None if scores is None else np.asarray(scores)[mask]


def _scored(detections: Detections, keep: Sequence[int] | None = None, agnostic: bool = False,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Boxes, published class ids and scores of ``detections``, restricted to ``keep``."""
    return _restricted(detections.boxes_xyxy, detections.published_ids(), detections.scores, keep, agnostic)


def evaluate_on_dataset(model_path: str | Path, dataset: Sequence[LabelledImage], progress: bool = True,
                        config: DetectorConfig = EVAL_CONFIG, device: str = "cpu", classes: Sequence[int] | None = None,
                        agnostic: bool = False) -> CocoMetrics:
    """COCO AP of ``model_path`` on labelled images.

    Args:
        classes: the class ids the dataset labels (None: all); ground truth and detections of
            other classes are left out.
        agnostic: score all those classes as one.

    Raises:
        PrunePerceptionError: none of ``classes`` is a class the model predicts.
    """
    detector = Detector(model_path, device=device, config=config)
    names = detector.metadata.names_by_id
    if classes is not None and not set(classes) & set(names):
        raise PrunePerceptionError(
            f"{Path(model_path).name} predicts none of the classes this set labels ({sorted(classes)}); it predicts "
            f"{', '.join(f'{i} {n}' for i, n in names.items())}")
    # A class the set labels but the model does not predict counts at AP 0 (compress refuses such sets
    # for a specialized student before any work starts).
    table = [AGNOSTIC_NAME] if agnostic else _name_table({i: f"class_{i}" for i in classes or ()} | names)
    ground_truth, predictions = [], []
    try:
        for image_id, item in enumerate(tqdm(dataset, desc=f"evaluate {Path(model_path).name}", disable=not progress)):
            boxes, ids, scores = _scored(detector.detect(item.read()).detections, classes, agnostic)
            truth_boxes, truth_ids, _ = _restricted(item.boxes_xyxy, item.class_ids, None, classes, agnostic)
            ground_truth.append(ImageBoxes(image_id, item.width, item.height, truth_boxes, truth_ids))
            predictions.append(ImageBoxes(image_id, item.width, item.height, boxes, ids, scores))
    finally:
        detector.close()
    return evaluate_detections(ground_truth, predictions, table)


def fidelity_to_teacher(model_path: str | Path, teacher_path: str | Path, frames: Sequence[np.ndarray],
                        teacher_score_threshold: float = 0.3, progress: bool = True, device: str = "cpu") -> CocoMetrics:
    """AP of ``model_path`` against the teacher's detections (score >= threshold) as ground truth,
    for unlabelled video: how faithfully a compressed model reproduces its teacher. For a student
    specialized to some classes, only the teacher's detections of those classes count."""
    teacher = Detector(teacher_path, device=device, config=DetectorConfig(score_threshold=teacher_score_threshold))
    student = Detector(model_path, device=device, config=EVAL_CONFIG)
    kept = sorted(student.metadata.names_by_id)
    table = _name_table(teacher.metadata.names_by_id | student.metadata.names_by_id)
    ground_truth, predictions = [], []
    try:
        for image_id, frame in enumerate(tqdm(frames, desc=f"fidelity {Path(model_path).name}", disable=not progress)):
            height, width = frame.shape[:2]
            reference_boxes, reference_ids, _ = _scored(teacher.detect(frame).detections, kept)
            boxes, ids, scores = _scored(student.detect(frame).detections)
            ground_truth.append(ImageBoxes(image_id, width, height, reference_boxes, reference_ids))
            predictions.append(ImageBoxes(image_id, width, height, boxes, ids, scores))
    finally:
        teacher.close()
        student.close()
    return evaluate_detections(ground_truth, predictions, table)
