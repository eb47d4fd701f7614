"""ONNX export: parity with PyTorch, onnxslim, sidecar, and loading in the runtime Detector."""

import cv2
import numpy as np
import onnx
import pytest
import torch

from prune_perception.export.onnx_export import ExportParityError, export_onnx
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.class_names import COCO_CLASSES
from prune_perception.runtime.detector import Detector
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor

SPEC = InputSpec(width=416, height=416)


@pytest.fixture(scope="module")
def nano(yolox_nano_path):
    return load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416)


@pytest.fixture(scope="module")
def coco_image(coco128_dir):
    return cv2.imread(str(sorted((coco128_dir / "images").glob("*.jpg"))[0]))


@pytest.mark.parametrize("decode_in_graph", [False, True])
def test_export_reproduces_the_shared_model_in_the_detector(nano, yolox_nano_path, coco_image, tmp_path, decode_in_graph):
    sample, _ = Preprocessor(SPEC)(coco_image)
    result = export_onnx(nano, tmp_path / "nano.onnx", COCO_CLASSES, SPEC, sample_inputs=[sample],
                         decode_in_graph=decode_in_graph)
    assert result.relative_diff <= 1e-4 and result.nodes_after_simplify < result.nodes_before_simplify
    graph = onnx.load(str(result.path))
    assert graph.opset_import[0].version == 17
    assert not any(n.op_type == "BatchNormalization" for n in graph.graph.node)
    # Focus in its deployment form: the image goes straight into one 6x6 stride-2 conv
    readers = [n for n in graph.graph.node if graph.graph.input[0].name in n.input]
    assert [n.op_type for n in readers] == ["Conv"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in readers[0].attribute}
    assert attributes["kernel_shape"] == [6, 6] and attributes["strides"] == [2, 2]
    assert (result.path.stat().st_mode & 0o777) == 0o644

    exported = Detector(result.path, device="cpu")
    assert exported.metadata.source == "sidecar" and exported.metadata.decoder.decoded_in_graph == decode_in_graph
    ours = exported.detect(coco_image).detections
    reference = Detector(yolox_nano_path, device="cpu").detect(coco_image).detections
    assert len(ours) == len(reference) > 0
    np.testing.assert_array_equal(ours.class_ids, reference.class_ids)
    np.testing.assert_allclose(ours.boxes_xyxy, reference.boxes_xyxy, atol=0.05)
    assert nano.training and not nano.decode_in_graph  # the model is left as it was (train mode, no decode)


def test_failed_parity_writes_nothing(nano, tmp_path):
    class Drifting(torch.nn.Module):
        """Differs between calls, as a model with live randomness (a global generator) would."""

        calls = 0  # on the class: the export traces a deployment copy of the model

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            Drifting.calls += 1
            return self.model(x) + Drifting.calls

    with pytest.raises(ExportParityError, match="was not written"):
        export_onnx(Drifting(nano), tmp_path / "drift.onnx", COCO_CLASSES, SPEC)
    assert list(tmp_path.iterdir()) == []
