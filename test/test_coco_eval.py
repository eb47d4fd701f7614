"""COCO evaluation: a hand-computed AP, and agreement with pycocotools."""

import contextlib
import io

import numpy as np
import pytest

from prune_perception.eval.coco_eval import ImageBoxes, _predictions, _to_coco, evaluate_detections

NAMES = ("car", "person")


def gt(image_id, boxes, classes, size=(200, 100)):
    return ImageBoxes(image_id, size[0], size[1], np.asarray(boxes, float), np.asarray(classes))


def pred(image_id, boxes, classes, scores, size=(200, 100)):
    return ImageBoxes(image_id, size[0], size[1], np.asarray(boxes, float), np.asarray(classes), np.asarray(scores))


def test_hand_computed_ap():
    # Two cars; one found exactly (score 0.9), one false positive ranked second (0.8), one car missed.
    # Precision/recall: (1.0, 0.5) then (0.5, 0.5). With COCO's 101 recall points, interpolated
    # precision is 1 for recall 0..0.5 (51 points) and 0 above: AP = 51/101 at every IoU threshold.
    ground_truth = [gt(1, [[10, 10, 50, 50], [100, 20, 160, 80]], [0, 0])]
    predictions = [pred(1, [[10, 10, 50, 50], [60, 60, 90, 90]], [0, 0], [0.9, 0.8])]
    metrics = evaluate_detections(ground_truth, predictions, NAMES)
    assert metrics.ap == pytest.approx(51 / 101)
    assert metrics.ap50 == pytest.approx(51 / 101) and metrics.ap75 == pytest.approx(51 / 101)
    assert metrics.per_class_ap == {"car": pytest.approx(51 / 101)}  # no person in the ground truth
    assert metrics.ar100 == pytest.approx(0.5)


def test_perfect_and_empty_predictions():
    ground_truth = [gt(1, [[10, 10, 50, 50]], [1])]
    assert evaluate_detections(ground_truth, [pred(1, [[10, 10, 50, 50]], [1], [0.5])], NAMES).ap == pytest.approx(1.0)
    assert evaluate_detections(ground_truth, [pred(1, np.zeros((0, 4)), [], [])], NAMES).ap == 0.0


def test_agrees_with_pycocotools():
    pycocotools = pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    ground_truth, predictions = [], []
    for image_id in range(1, 9):
        centers = rng.uniform(20, 180, (6, 2))
        sizes = rng.uniform(8, 60, (6, 2))
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
        classes = rng.integers(0, 2, 6)
        ground_truth.append(gt(image_id, boxes, classes, size=(200, 200)))
        jitter = boxes + rng.normal(0, 4, boxes.shape)
        noise = np.concatenate([rng.uniform(0, 150, (3, 2)), rng.uniform(0, 150, (3, 2)) + 40], axis=1)
        predictions.append(pred(image_id, np.vstack([jitter, noise]), np.concatenate([classes, rng.integers(0, 2, 3)]),
                                rng.uniform(0.05, 1.0, 9), size=(200, 200)))
    ours = evaluate_detections(ground_truth, predictions, NAMES)

    with contextlib.redirect_stdout(io.StringIO()):
        reference_gt = COCO()
        reference_gt.dataset = _to_coco(ground_truth, NAMES)
        reference_gt.createIndex()
        evaluator = COCOeval(reference_gt, reference_gt.loadRes(_predictions(predictions)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert pycocotools is not None
    np.testing.assert_allclose([ours.ap, ours.ap50, ours.ap75, ours.ar100],
                               [evaluator.stats[0], evaluator.stats[1], evaluator.stats[2], evaluator.stats[8]], atol=1e-9)
    assert 0.1 < ours.ap < ours.ap50 < 1.0  # a non-trivial case: jittered boxes plus false positives


def test_ap_by_image_band_and_size():
    """A 200x100 image: a car low in the image found exactly, a person high in it missed, nothing in
    the middle third. The lower band scores 1, the upper 0, the middle has no ground truth (NaN)."""
    ground_truth = [gt(1, [[10, 70, 50, 95], [120, 5, 140, 25]], [0, 1])]
    predictions = [pred(1, [[10, 70, 50, 95], [150, 60, 160, 64]], [0, 1], [0.9, 0.5])]
    metrics = evaluate_detections(ground_truth, predictions, NAMES)
    assert metrics.ap_by_band["lower"] == pytest.approx(1.0)
    assert metrics.ap_by_band["upper"] == pytest.approx(0.0)
    assert np.isnan(metrics.ap_by_band["middle"])
    row = metrics.by_size_and_band()
    assert list(row) == ["small", "medium", "large", "lower", "middle", "upper"]
    assert row["small"] == metrics.ap_small and row["large"] is None and row["middle"] is None  # no such boxes
