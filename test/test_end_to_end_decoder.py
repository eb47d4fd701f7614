"""End-to-end detectors (NMS in the graph, output [1, K, 6]): a small ONNX model built here with a
real NonMaxSuppression node, run by the real onnxruntime through the Detector."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from prune_perception.errors import InferenceError
from prune_perception.runtime.decoders import EndToEndDecoder
from prune_perception.runtime.detector import Detector

# three boxes at a 64x64 input: A and B overlap (IoU 0.68), C is apart
BOXES = np.array([[[10, 10, 30, 30], [12, 12, 32, 32], [40, 40, 60, 60]]], np.float32)
SCORES = np.array([[[0.9, 0.8, 0.0], [0.0, 0.0, 0.7]]], np.float32)  # [1, classes, boxes]


def end_to_end_model(path, class_ids_offset=0.0, names="{0: 'car', 1: 'person'}"):
    """images -> NonMaxSuppression over constant boxes/scores (scaled by 1 + 0 * mean(images), so
    the graph reads its input) -> [1, K, 6] rows of x1, y1, x2, y2, score, class."""
    init = [numpy_helper.from_array(BOXES, "boxes"), numpy_helper.from_array(SCORES, "scores_const"),
            numpy_helper.from_array(np.array([10], np.int64), "max_out"),
            numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
            numpy_helper.from_array(np.array([0.1], np.float32), "score_threshold"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(class_ids_offset, np.float32), "offset"),
            numpy_helper.from_array(np.array([-1], np.int64), "flat"),
            numpy_helper.from_array(np.array([-1, 1], np.int64), "column"),
            numpy_helper.from_array(np.array([1, -1, 6], np.int64), "rows"),
            numpy_helper.from_array(np.array([-1, 4], np.int64), "box_rows"),
            numpy_helper.from_array(np.array(1, np.int64), "one_index"),
            numpy_helper.from_array(np.array(2, np.int64), "two_index")]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "one"], ["factor"]),
        helper.make_node("Mul", ["scores_const", "factor"], ["scores"]),
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_threshold"], ["selected"]),
        helper.make_node("Gather", ["selected", "one_index"], ["class_index"], axis=1),
        helper.make_node("Gather", ["selected", "two_index"], ["box_index"], axis=1),
        helper.make_node("Reshape", ["boxes", "box_rows"], ["box_table"]),
        helper.make_node("Gather", ["box_table", "box_index"], ["kept_boxes"], axis=0),
        helper.make_node("GatherND", ["scores", "selected"], ["kept_scores"]),
        helper.make_node("Reshape", ["kept_scores", "column"], ["score_column"]),
        helper.make_node("Cast", ["class_index"], ["class_float"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["class_float", "offset"], ["class_shifted"]),
        helper.make_node("Reshape", ["class_shifted", "column"], ["class_column"]),
        helper.make_node("Concat", ["kept_boxes", "score_column", "class_column"], ["table"], axis=1),
        helper.make_node("Reshape", ["table", "rows"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "end_to_end", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                  [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, "K", 6])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in {"author": "Ultralytics", "task": "detect", "names": names, "imgsz": "[64, 64]",
                       "stride": "32", "end2end": "True"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_the_graph_s_own_nms_is_kept_and_boxes_map_to_the_frame(tmp_path):
    detector = Detector(end_to_end_model(tmp_path / "e2e.onnx"), device="cpu")
    assert detector.metadata.decoder.type == "end_to_end" and detector.metadata.class_names == ("car", "person")
    frame = np.zeros((128, 128, 3), np.uint8)  # twice the input: boxes come back doubled
    detections = list(detector.detect(frame).detections)
    assert [(d.class_name, round(d.score, 3)) for d in detections] == [("car", 0.9), ("person", 0.7)]
    np.testing.assert_allclose(detections[0].box_xyxy, (20, 20, 60, 60), atol=1e-4)
    np.testing.assert_allclose(detections[1].box_xyxy, (80, 80, 120, 120), atol=1e-4)
    detector.update_config(score_threshold=0.8, nms_threshold=0.01)  # a second NMS would change nothing here
    assert [d.class_name for d in detector.detect(frame).detections] == ["car"]
    detector.update_config(score_threshold=0.1, max_detections=1)
    assert len(detector.detect(frame).detections) == 1


def test_boxes_the_model_kept_are_not_suppressed_again():
    decoder = EndToEndDecoder(num_classes=1)
    from prune_perception.runtime.postprocess import postprocess
    from prune_perception.runtime.metadata import InputSpec
    from prune_perception.runtime.preprocess import letterbox_geometry

    raw = np.array([[[0, 0, 10, 10, 0.9, 0], [1, 1, 11, 11, 0.8, 0], [0, 0, 0, 0, 0.0, 0]]], np.float32)
    geometry = letterbox_geometry(64, 64, InputSpec(width=64, height=64))
    detections = postprocess(raw, decoder, geometry, ("car",), 0.3, 0.45, 100)
    assert len(detections) == 2  # overlapping (IoU 0.68), both kept as the model's NMS decided; the padding row dropped


def test_class_ids_beyond_the_metadata_are_a_clear_error(tmp_path):
    detector = Detector(end_to_end_model(tmp_path / "e2e.onnx", class_ids_offset=5.0), device="cpu")
    with pytest.raises(InferenceError, match="class ids .* but the metadata names 2 classes"):
        detector.detect(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InferenceError, match="must be \\[1, K, 6\\]"):
        EndToEndDecoder(2).candidates(np.zeros((1, 3, 7), np.float32), 0.3)
