"""INT8 QDQ through onnxruntime on the real YOLOX-Nano (exported by this package)."""

import sys

import cv2
import onnx
import pytest

from prune_perception.errors import PrunePerceptionError
from prune_perception.export.int8 import output_agreement, quantize_int8_qdq, range_starvation
from prune_perception.export.onnx_export import export_onnx
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.class_names import COCO_CLASSES
from prune_perception.runtime.detector import Detector
from prune_perception.runtime.metadata import InputSpec, load_sidecar
from prune_perception.runtime.preprocess import Preprocessor

SPEC = InputSpec(width=416, height=416)


@pytest.fixture(scope="module")
def exported(yolox_nano_path, coco128_dir, tmp_path_factory):
    preprocessor = Preprocessor(SPEC)
    paths = sorted((coco128_dir / "images").glob("*.jpg"))
    calibration = [preprocessor(cv2.imread(str(p)))[0] for p in paths[:32]]
    held_out = [preprocessor(cv2.imread(str(p)))[0] for p in paths[100:108]]
    model = load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416)
    path = tmp_path_factory.mktemp("int8") / "nano.onnx"
    export_onnx(model, path, COCO_CLASSES, SPEC, sample_inputs=calibration[:1])
    return path, calibration, held_out


def test_int8_runs_and_agrees_with_fp32_on_real_images(exported, coco128_dir):
    fp32, calibration, held_out = exported
    result = quantize_int8_qdq(fp32, fp32.with_name("nano_int8.onnx"), calibration, max_float_fraction=0.5)
    graph = onnx.load(str(result.path)).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 20  # really quantized
    assert load_sidecar(result.path).class_names == tuple(COCO_CLASSES)
    # Measured: whole-output cosine 0.993 and score cosine 0.979 with 48 of 113 convs in float.
    output_cosine, score_cosine = output_agreement(fp32, result.path, held_out)  # images unseen in calibration
    assert output_cosine >= 0.99 and score_cosine >= 0.95, (output_cosine, score_cosine, result)
    image = cv2.imread(str(sorted((coco128_dir / "images").glob("*.jpg"))[0]))
    assert len(Detector(result.path, device="cpu").detect(image).detections) > 0


def test_range_starvation_finds_the_stem(exported):
    fp32, calibration, _ = exported
    starvation = range_starvation(fp32, calibration[:4])
    worst = max(starvation, key=starvation.get)
    assert "/stem/" in worst and starvation[worst] > 0.3  # channels spanning 0.4 to 108 after BN folding


def test_modelopt_qdq_for_tensorrt_runs_in_a_subprocess(exported):
    """NVIDIA ModelOpt's TensorRT-targeted Q/DQ, for real (requirements/modelopt.txt)."""
    from prune_perception.export.modelopt_int8 import (
        modelopt_unavailable_reason,
        quantize_int8_modelopt,
        reading_convs,
    )

    reason = modelopt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    fp32, calibration, held_out = exported
    starvation = range_starvation(fp32, calibration[:4])
    starved = sorted(starvation, key=lambda name: -starvation[name])[:8]  # what the QDQ search keeps in float
    readers = reading_convs(fp32, starved)
    assert "/backbone/backbone/dark2/dark2.0/dconv/conv/Conv" in reading_convs(fp32, ["/backbone/backbone/stem/conv/conv/Conv"])
    result = quantize_int8_modelopt(fp32, fp32.with_name("nano_modelopt.onnx"), calibration[:12], method="max",
                                    starved_convs=starved)
    graph = onnx.load(str(result.path)).graph
    assert result.total_convs == sum(n.op_type == "Conv" for n in graph.node)
    assert 0 < len(readers) and result.quantized_convs == result.total_convs - len(readers)
    producers = {output: node.op_type for node in graph.node for output in node.output}
    assert all(producers.get(node.input[0]) != "DequantizeLinear" for node in graph.node if node.name in readers)
    assert load_sidecar(result.path).class_names == tuple(COCO_CLASSES)
    assert -1 <= result.score_cosine <= 1 and result.output_cosine > 0.5  # measured, whatever it is
    assert "modelopt" not in sys.modules  # its calibrator patches stayed in the child process
    with pytest.raises(PrunePerceptionError, match="calibration must be one of"):
        quantize_int8_modelopt(fp32, fp32.with_name("x.onnx"), calibration, method="percentile")
