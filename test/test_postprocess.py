import numpy as np
import pytest

from prune_perception.errors import InferenceError
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.postprocess import YoloxDecoder, class_aware_nms, postprocess
from prune_perception.runtime.preprocess import letterbox_geometry

NUM_CLASSES = 3
NAMES = ("car", "person", "bike")


def empty_output(decoder):
    return np.zeros((1, decoder.num_cells, 5 + NUM_CLASSES), np.float32)


def cell_index(stride, grid_x, grid_y, input_size, strides=(8, 16, 32)):
    """Row of grid cell (grid_x, grid_y) at ``stride`` in the concatenated output."""
    offset = sum((input_size // s) ** 2 for s in strides[: strides.index(stride)])
    return offset + grid_y * (input_size // stride) + grid_x


def test_grid_layout_matches_yolox_nano():
    decoder = YoloxDecoder(416, 416, (8, 16, 32))
    assert decoder.num_cells == 52 * 52 + 26 * 26 + 13 * 13 == 3549
    # Row 52 is the first cell of the second row at stride 8; the stride-16 grid starts at 2704.
    np.testing.assert_array_equal(decoder.grid[52], [0, 1])
    assert decoder.cell_strides[2703, 0] == 8 and decoder.cell_strides[2704, 0] == 16


def test_decode_known_box():
    decoder = YoloxDecoder(64, 64, (8, 16, 32))  # 64 + 16 + 4 cells
    raw = empty_output(decoder)
    row = cell_index(16, grid_x=2, grid_y=1, input_size=64)
    # dx=0.5, dy=0.25 -> center ((2.5)*16, (1.25)*16) = (40, 20); w = e^1 * 16, h = 16
    raw[0, row, :5] = [0.5, 0.25, 1.0, 0.0, 0.9]
    raw[0, row, 5 + 1] = 0.8
    candidates = decoder.candidates(raw, score_threshold=0.1)
    assert len(candidates.scores) == 1
    width = np.e * 16
    np.testing.assert_allclose(candidates.boxes_xyxy[0], [40 - width / 2, 12, 40 + width / 2, 28], rtol=1e-5)
    assert candidates.scores[0] == pytest.approx(0.72)
    assert candidates.class_ids[0] == 1


def test_score_is_objectness_times_best_class_and_thresholded():
    decoder = YoloxDecoder(64, 64, (8, 16, 32))
    raw = empty_output(decoder)
    raw[0, 0, 4], raw[0, 0, 5:] = 0.5, [0.2, 0.9, 0.1]  # 0.45 -> kept at 0.4
    raw[0, 1, 4], raw[0, 1, 5:] = 0.9, [0.3, 0.1, 0.2]  # 0.27 -> dropped
    candidates = decoder.candidates(raw, score_threshold=0.4)
    np.testing.assert_allclose(candidates.scores, [0.45])


def test_decoded_in_graph_boxes_are_used_as_is():
    decoder = YoloxDecoder(64, 64, (8, 16, 32), decoded_in_graph=True)
    raw = np.zeros((1, 5, 5 + NUM_CLASSES), np.float32)
    raw[0, 2, :5] = [30, 40, 10, 20, 1.0]
    raw[0, 2, 5] = 1.0
    np.testing.assert_allclose(decoder.candidates(raw, 0.5).boxes_xyxy[0], [25, 30, 35, 50])


def test_wrong_row_count_is_a_clear_error():
    decoder = YoloxDecoder(416, 416, (8, 16, 32))
    with pytest.raises(InferenceError, match="3549 grid cells"):
        decoder.candidates(np.zeros((1, 100, 85), np.float32), 0.3)


def test_class_aware_nms_known_boxes():
    boxes = np.array([
        [0, 0, 10, 10],     # car 0.9
        [1, 1, 11, 11],     # car 0.8, IoU 0.68 with the first -> suppressed
        [1, 1, 11, 11],     # person 0.7, other class -> kept
        [50, 50, 60, 60],   # car 0.6, no overlap -> kept
        [0, 0, 10, 5],      # car 0.5, IoU 0.5 with the first -> kept at threshold 0.6
    ], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    classes = np.array([0, 0, 1, 0, 0])
    np.testing.assert_array_equal(class_aware_nms(boxes, scores, classes, 0.6, 100), [0, 2, 3, 4])
    np.testing.assert_array_equal(class_aware_nms(boxes, scores, classes, 0.45, 100), [0, 2, 3])
    np.testing.assert_array_equal(class_aware_nms(boxes, scores, classes, 0.6, 2), [0, 2])
    assert class_aware_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0), 0.5, 10).size == 0


def test_postprocess_maps_to_image_pixels():
    decoder = YoloxDecoder(64, 64, (8, 16, 32))
    raw = empty_output(decoder)
    row = cell_index(8, grid_x=1, grid_y=1, input_size=64)
    raw[0, row, :5] = [0.5, 0.5, np.log(2), np.log(2), 1.0]  # center (12, 12), 16x16 in input pixels
    raw[0, row, 5] = 0.95
    geometry = letterbox_geometry(128, 64, InputSpec(width=64, height=64))  # scale 0.5
    detections = postprocess(raw, decoder, geometry, NAMES, 0.3, 0.45, 10)
    assert len(detections) == 1
    (det,) = list(detections)
    assert det.class_name == "car" and det.score == pytest.approx(0.95)
    np.testing.assert_allclose(det.box_xyxy, [8, 8, 40, 40], rtol=1e-5)


def test_class_count_mismatch_is_a_clear_error():
    decoder = YoloxDecoder(64, 64, (8, 16, 32))
    geometry = letterbox_geometry(64, 64, InputSpec(width=64, height=64))
    with pytest.raises(InferenceError, match="3 classes but the metadata names 2"):
        postprocess(empty_output(decoder), decoder, geometry, NAMES[:2], 0.3, 0.45, 10)


def test_a_specialized_model_s_detections_carry_the_published_id():
    """A student keeping person, car and truck of a COCO teacher: iterating its detections gives
    the teacher's ids (what the node publishes), and the model's own index beside them."""
    from prune_perception.runtime.postprocess import Detections

    detections = Detections(np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32), np.array([0.9, 0.8], np.float32),
                            np.array([2, 1], np.int64), ("person", "car", "truck"), np.array([0, 2, 7], np.int64))
    assert [(d.class_id, d.class_name, d.class_index) for d in detections] == [(7, "truck", 2), (2, "car", 1)]
    assert list(detections.published_ids()) == [7, 2]
    unspecialized = Detections(detections.boxes_xyxy, detections.scores, detections.class_ids, ("a", "b", "c"))
    assert [(d.class_id, d.class_index) for d in unspecialized] == [(2, 2), (1, 1)]
