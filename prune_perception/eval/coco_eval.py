"""COCO-style detection metrics with faster-coco-eval (same numbers as pycocotools, ~7x faster).

Inputs are plain arrays per image; this module builds the COCO structures. Class ids are
0-based in this package and become category ids ``class_id + 1`` inside COCO.

Beside the overall AP it gives AP by object size (COCO's small < 32^2 <= medium < 96^2 <= large
pixels of area) and by image band: the lower, middle and upper thirds of the image, each box in
the band that holds its centre. With a forward camera the band is a proxy for distance (near
objects low in the image), and a vehicle team cares more about a near pedestrian than a far car.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


BANDS = ("lower", "middle", "upper")
"""The image's thirds from the bottom (near, for a forward camera) to the top."""
SIZES_AND_BANDS = ("small", "medium", "large", *BANDS)
"""The columns of :meth:`CocoMetrics.by_size_and_band`."""


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
    ap_by_band: dict[str, float] = field(default_factory=dict)
    """AP@[.5:.95] of the boxes centred in the image's ``lower``, ``middle`` and ``upper`` third
    (NaN for a band with no ground truth)."""

    def by_size_and_band(self) -> dict[str, float | None]:
        """The size and band APs as one table row: small, medium, large, lower, middle, upper (None
        where that size or band has no ground truth: JSON has no NaN, and NaN is unequal to itself)."""
        values = {"small": self.ap_small, "medium": self.ap_medium, "large": self.ap_large,
                  **{band: self.ap_by_band.get(band, math.nan) for band in BANDS}}
        return {name: None if math.isnan(value) else value for name, value in values.items()}

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
    """COCO bbox metrics of ``predictions`` against ``ground_truth`` (matched by ``image_id``),
    with the AP of each image band."""
    metrics = _evaluate(ground_truth, predictions, class_names)
    bands = {band: _evaluate([_in_band(image, band) for image in ground_truth],
                             [_in_band(image, band) for image in predictions], class_names).ap for band in BANDS}
    return dataclasses.replace(metrics, ap_by_band=bands)


def _in_band(image: ImageBoxes, band: str) -> ImageBoxes:
    """``image`` with only the boxes whose centre lies in ``band`` (a third of its height)."""
    boxes = np.asarray(image.boxes_xyxy, float).reshape(-1, 4)
    centre = (boxes[:, 1] + boxes[:, 3]) / 2 / max(image.height, 1)
    low, high = {"upper": (0.0, 1 / 3), "middle": (1 / 3, 2 / 3), "lower": (2 / 3, math.inf)}[band]
    keep = (centre >= low) & (centre < high) if band != "upper" else centre < high
    return ImageBoxes(image.image_id, image.width, image.height, boxes[keep], np.asarray(image.class_ids)[keep],
                      None if image.scores is None else np.asarray(image.scores)[keep])


def _evaluate(
    ground_truth: Sequence[ImageBoxes], predictions: Sequence[ImageBoxes], class_names: Sequence[str]
) -> CocoMetrics:
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
