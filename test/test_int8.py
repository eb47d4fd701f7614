"""INT8 QDQ through onnxruntime on the real YOLOX-Nano (exported by this package)."""

import sys

import cv2
import onnx
import pytest

from prune_perception.errors import PrunePerceptionError
from prune_perception.export.int8 import output_agreement, quantize_int8_qdq
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


@pytest.fixture(scope="module")
def int8(exported):
    fp32, calibration, _ = exported
    return quantize_int8_qdq(fp32, fp32.with_name("nano_int8.onnx"), calibration, target_score_cosine=0.97)


def test_int8_runs_and_agrees_with_fp32_on_real_images(exported, int8, coco128_dir):
    fp32, _, held_out = exported
    graph = onnx.load(str(int8.path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 100  # really quantized
    assert load_sidecar(int8.path).class_names == tuple(COCO_CLASSES)
    # SiLUs are quantized with their convs: the integer chain is not broken at every activation
    producers = {output: node for node in graph.node for output in node.output}
    quantized_sigmoids = [n for n in graph.node if n.op_type == "Sigmoid" and producers[n.input[0]].op_type == "DequantizeLinear"]
    assert len(quantized_sigmoids) >= int8.total_convs - int8.float_convs - 10  # the head's outputs have no SiLU
    # Measured on the held-out calibration images: score cosine 0.96 with 8 and 0.98 with 32 of 113 convs in float
    assert int8.float_convs <= 0.3 * int8.total_convs and int8.score_cosine >= 0.95, int8
    output_cosine, score_cosine = output_agreement(fp32, int8.path, held_out)  # images unseen in calibration
    assert output_cosine >= 0.9 and score_cosine >= 0.9, (output_cosine, score_cosine, int8)
    image = cv2.imread(str(sorted((coco128_dir / "images").glob("*.jpg"))[0]))
    assert len(Detector(int8.path, device="cpu").detect(image).detections) > 0


def test_sensitivity_finds_the_stem_and_the_depthwise_conv_reading_it(int8):
    """Measured: quantized alone, the stem costs 0.95 of the score cosine and the depthwise conv
    that reads its output (its 16 channels span 0.25 to 114) 0.73; no other conv costs 0.1."""
    ranked = sorted(int8.sensitivity, key=lambda name: -int8.sensitivity[name])
    assert set(ranked[:2]) == {"/backbone/backbone/stem/conv/conv/Conv", "/backbone/backbone/dark2/dark2.0/dconv/conv/Conv"}
    assert min(int8.sensitivity[name] for name in ranked[:2]) > 0.3 > int8.sensitivity[ranked[3]]
    assert list(int8.float_nodes) == ranked[:int8.float_convs]


def test_modelopt_qdq_for_tensorrt_runs_in_a_subprocess(exported, int8):
    """NVIDIA ModelOpt's TensorRT-targeted Q/DQ, for real (requirements/modelopt.txt)."""
    from prune_perception.export.modelopt_int8 import quantize_int8_modelopt, reading_convs
    from prune_perception.optional import modelopt_unavailable_reason

    reason = modelopt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    fp32, calibration, held_out = exported
    float_convs = list(int8.float_nodes)  # what the QDQ search kept in float
    readers = reading_convs(fp32, float_convs)
    assert "/backbone/backbone/dark2/dark2.0/dconv/conv/Conv" in reading_convs(fp32, ["/backbone/backbone/stem/conv/conv/Conv"])
    result = quantize_int8_modelopt(fp32, fp32.with_name("nano_modelopt.onnx"), calibration[:12], method="max",
                                    float_convs=float_convs)
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
