"""COCO-style detection metrics with faster-coco-eval (same numbers as pycocotools, ~7x faster).

Inputs are plain arrays per image; this module builds the COCO structures. Class ids are
0-based in this package and become category ids ``class_id + 1`` inside COCO.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ImageBoxes:
    """Boxes of one image: ground truth (``scores`` None) or predictions."""

    image_id: int
    width: int
    height: int
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray | None = None


@dataclass(frozen=True)
class CocoMetrics:
    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar100: float
    per_class_ap: dict[str, float] = field(default_factory=dict)
    """AP@[.5:.95] of every class that has ground truth."""
    num_images: int = 0
    num_ground_truth: int = 0
    num_predictions: int = 0
    precision_at_iou50: tuple[float, ...] = ()
    """Precision at IoU 0.5 at the 101 COCO recall points 0.00..1.00, mean over the classes
    with ground truth (NaN where no class reaches that recall): the precision-recall curve."""

    @classmethod
    def empty(cls) -> "CocoMetrics":
        """Not evaluated (yet): every metric NaN."""
        return cls(*(math.nan,) * 7)


def _to_coco(images: Sequence[ImageBoxes], class_names: Sequence[str]) -> dict:
    annotations = []
    for image in images:
        for box, class_id in zip(np.asarray(image.boxes_xyxy, float).reshape(-1, 4), image.class_ids):
            width, height = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(image.image_id), "category_id": int(class_id) + 1,
                "bbox": [float(box[0]), float(box[1]), width, height], "area": width * height, "iscrowd": 0,
            })
    return {
        "info": {"description": "prune_perception evaluation"},
        "images": [{"id": int(i.image_id), "width": int(i.width), "height": int(i.height)} for i in images],
        "annotations": annotations,
        "categories": [{"id": index + 1, "name": name} for index, name in enumerate(class_names)],
    }


def _predictions(images: Sequence[ImageBoxes]) -> list[dict]:
    results = []
    for image in images:
        boxes = np.asarray(image.boxes_xyxy, float).reshape(-1, 4)
        for box, class_id, score in zip(boxes, image.class_ids, image.scores):
            results.append({
                "image_id": int(image.image_id), "category_id": int(class_id) + 1, "score": float(score),
                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
            })
    return results


def evaluate_detections(
    ground_truth: Sequence[ImageBoxes], predictions: Sequence[ImageBoxes], class_names: Sequence[str]
) -> CocoMetrics:
    """COCO bbox metrics of ``predictions`` against ``ground_truth`` (matched by ``image_id``)."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO()
    gt.dataset = _to_coco(ground_truth, class_names)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    results = _predictions(predictions)
    num_gt = len(gt.dataset["annotations"])
    if not results or not num_gt:
        nan_or_zero = 0.0 if num_gt else math.nan
        return CocoMetrics(nan_or_zero, nan_or_zero, nan_or_zero, nan_or_zero, nan_or_zero, nan_or_zero, nan_or_zero,
                           {}, len(ground_truth), num_gt, len(results))
    with contextlib.redirect_stdout(io.StringIO()):
        detections = gt.loadRes(results)
        evaluator = COCOeval_faster(gt, detections, iouType="bbox", print_function=lambda *_: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats[:9]]
    # precision: [iou thresholds, recall points, categories, area ranges, max detections]
    precision = np.asarray(evaluator.eval["precision"])
    present = {a["category_id"] for a in gt.dataset["annotations"]}
    per_class = {}
    for index, category in enumerate(evaluator.params.catIds):
        if category in present:
            values = precision[:, :, index, 0, -1]
            values = values[values > -1]
            per_class[class_names[category - 1]] = float(values.mean()) if values.size else 0.0
    present_index = [i for i, category in enumerate(evaluator.params.catIds) if category in present]
    at_iou50 = precision[0, :, :, 0, -1][:, present_index]  # [recall points, classes]
    curve = tuple(float(np.mean(row[row > -1])) if (row > -1).any() else math.nan for row in at_iou50)
    return CocoMetrics(
        ap=_clean(stats[0]), ap50=_clean(stats[1]), ap75=_clean(stats[2]), ap_small=_clean(stats[3]),
        ap_medium=_clean(stats[4]), ap_large=_clean(stats[5]), ar100=_clean(stats[8]), per_class_ap=per_class,
        num_images=len(ground_truth), num_ground_truth=num_gt, num_predictions=len(results),
        precision_at_iou50=curve,
    )


def _clean(value: float) -> float:
    """COCO reports -1 where an area range has no ground truth."""
    return math.nan if value < 0 else value
