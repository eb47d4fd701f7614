"""Accuracy of a model file as deployed: the runtime Detector over a dataset, COCO metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from prune_perception.data.datasets import LabelledImage
from prune_perception.eval.coco_eval import CocoMetrics, ImageBoxes, evaluate_detections
from prune_perception.runtime.detector import Detector, DetectorConfig

# COCO evaluation keeps low-score detections: AP integrates over the whole precision/recall curve.
EVAL_CONFIG = DetectorConfig(score_threshold=0.001, nms_threshold=0.65, max_detections=100)


def evaluate_on_dataset(model_path: str | Path, dataset: Sequence[LabelledImage], progress: bool = True,
                        config: DetectorConfig = EVAL_CONFIG, device: str = "cpu") -> CocoMetrics:
    """COCO AP of ``model_path`` on labelled images."""
    detector = Detector(model_path, device=device, config=config)
    ground_truth, predictions = [], []
    for image_id, item in enumerate(tqdm(dataset, desc=f"evaluate {Path(model_path).name}", disable=not progress)):
        detections = detector.detect(item.read()).detections
        ground_truth.append(ImageBoxes(image_id, item.width, item.height, item.boxes_xyxy, item.class_ids))
        predictions.append(ImageBoxes(image_id, item.width, item.height, detections.boxes_xyxy,
                                      detections.class_ids, detections.scores))
    return evaluate_detections(ground_truth, predictions, detector.metadata.class_names)


def fidelity_to_teacher(model_path: str | Path, teacher_path: str | Path, frames: Sequence[np.ndarray],
                        teacher_score_threshold: float = 0.3, progress: bool = True, device: str = "cpu") -> CocoMetrics:
    """AP of ``model_path`` against the teacher's detections (score >= threshold) as ground truth,
    for unlabelled video: how faithfully a compressed model reproduces its teacher."""
    teacher = Detector(teacher_path, device=device, config=DetectorConfig(score_threshold=teacher_score_threshold))
    student = Detector(model_path, device=device, config=EVAL_CONFIG)
    ground_truth, predictions = [], []
    for image_id, frame in enumerate(tqdm(frames, desc=f"fidelity {Path(model_path).name}", disable=not progress)):
        height, width = frame.shape[:2]
        reference = teacher.detect(frame).detections
        detections = student.detect(frame).detections
        ground_truth.append(ImageBoxes(image_id, width, height, reference.boxes_xyxy, reference.class_ids))
        predictions.append(ImageBoxes(image_id, width, height, detections.boxes_xyxy, detections.class_ids,
                                      detections.scores))
    return evaluate_detections(ground_truth, predictions, teacher.metadata.class_names)
