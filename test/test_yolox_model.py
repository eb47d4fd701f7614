"""The PyTorch YOLOX: weight import from the BN-folded ONNX and from official checkpoints."""

import cv2
import numpy as np
import pytest
import torch

from prune_perception.models.weights import WeightImportError, load_official_checkpoint, load_onnx_weights
from prune_perception.models.yolox import Focus, build_yolox, focus_weight_as_strided, strided_weight_as_focus
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.postprocess import YoloxDecoder
from prune_perception.runtime.preprocess import Preprocessor


def real_inputs(coco128_dir, count=4, size=416):
    preprocessor = Preprocessor(InputSpec(width=size, height=size))
    paths = sorted((coco128_dir / "images").glob("*.jpg"))[:count]
    return [preprocessor(cv2.imread(str(path)))[0] for path in paths]


def relative_error(output, reference):
    return float(np.abs(output - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def imported_nano(yolox_nano_path):
    return load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).eval()


def test_onnx_import_matches_onnxruntime_on_real_images(imported_nano, yolox_nano_path, coco128_dir):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(yolox_nano_path), providers=["CPUExecutionProvider"])
    for tensor in real_inputs(coco128_dir):
        reference = session.run(None, {"images": tensor})[0]
        with torch.no_grad():
            output = imported_nano(torch.from_numpy(tensor)).numpy()
        assert output.shape == reference.shape == (1, 3549, 85)
        assert relative_error(output, reference) <= 1e-4  # measured: <= 3.6e-5


def test_official_checkpoint_and_bn_folded_onnx_give_identical_outputs(tmp_path, coco128_dir):
    torch.manual_seed(0)
    original = build_yolox("yolox_nano", num_classes=5)
    for module in original.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    original.eval()
    checkpoint = tmp_path / "yolox_nano_official.pth"
    torch.save({"model": original.state_dict(), "start_epoch": 300}, checkpoint)
    onnx_path = tmp_path / "yolox_nano_folded.onnx"
    torch.onnx.export(original, torch.zeros(1, 3, 416, 416), onnx_path, opset_version=17, dynamo=False,
                      input_names=["images"], output_names=["output"], do_constant_folding=True)
    import onnx

    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(onnx_path)).graph.node)  # BN folded

    from_checkpoint = load_official_checkpoint(build_yolox("yolox_nano", num_classes=5), checkpoint).eval()
    from_onnx = load_onnx_weights(build_yolox("yolox_nano", num_classes=5), onnx_path, input_size=416).eval()
    tensor = torch.from_numpy(real_inputs(coco128_dir, count=1)[0])
    with torch.no_grad():
        expected, a, b = original(tensor), from_checkpoint(tensor), from_onnx(tensor)
    assert torch.equal(a, expected)
    assert relative_error(b.numpy(), expected.numpy()) <= 1e-4


def test_import_into_another_architecture_fails_clearly(yolox_nano_path, tmp_path):
    with pytest.raises(WeightImportError, match="convolutions"):
        load_onnx_weights(build_yolox("yolox_tiny"), yolox_nano_path, input_size=416)
    with pytest.raises(WeightImportError, match="does not fit the model"):
        load_onnx_weights(build_yolox("yolox_nano", num_classes=20), yolox_nano_path, input_size=416)
    bad = tmp_path / "bad.pth"
    torch.save({"model": build_yolox("yolox_nano", num_classes=3).state_dict()}, bad)
    with pytest.raises(WeightImportError, match="does not fit"):
        load_official_checkpoint(build_yolox("yolox_nano"), bad)


def test_training_mode_returns_logits_per_level():
    model = build_yolox("yolox_nano", num_classes=3).train()
    levels = model(torch.zeros(2, 3, 128, 160))
    assert [tuple(level.shape) for level in levels] == [(2, 8, 16, 20), (2, 8, 8, 10), (2, 8, 4, 5)]


def test_decode_in_graph_matches_the_runtime_decoder(imported_nano, coco128_dir):
    tensor = torch.from_numpy(real_inputs(coco128_dir, count=1)[0])
    decoded_model = build_yolox("yolox_nano", decode_in_graph=True)
    decoded_model.load_state_dict(imported_nano.state_dict())
    decoded_model.eval()
    with torch.no_grad():
        raw, decoded = imported_nano(tensor).numpy(), decoded_model(tensor).numpy()
    runtime = YoloxDecoder(416, 416, (8, 16, 32)).candidates(raw, 0.3)
    in_graph = YoloxDecoder(416, 416, (8, 16, 32), decoded_in_graph=True).candidates(decoded, 0.3)
    assert len(runtime.scores) > 0
    np.testing.assert_allclose(in_graph.boxes_xyxy, runtime.boxes_xyxy, rtol=1e-4, atol=1e-3)


def test_torch_backend_runs_the_imported_model(imported_nano, yolox_nano_path, dashcam_frames, tmp_path):
    from prune_perception.runtime.backends.torch_backend import save_torch_checkpoint
    from prune_perception.runtime.detector import Detector

    checkpoint = tmp_path / "nano.pt"
    save_torch_checkpoint(checkpoint, "prune_perception.models.yolox:build_yolox", imported_nano.state_dict(),
                          {"variant": "yolox_nano"})
    frame = dashcam_frames[0]
    from_torch = Detector(checkpoint, device="cpu", metadata=Detector(yolox_nano_path).metadata).detect(frame).detections
    from_onnx = Detector(yolox_nano_path, device="cpu").detect(frame).detections
    assert len(from_onnx) > 0
    np.testing.assert_array_equal(from_torch.class_ids, from_onnx.class_ids)
    np.testing.assert_allclose(from_torch.boxes_xyxy, from_onnx.boxes_xyxy, atol=0.05)


def test_our_own_simplified_export_imports_back_by_module_path(tmp_path):
    """onnxslim may reorder nodes (the PAFPN's bottom-up convs move between the head's); the import
    pairs convs by the module paths in the node names, so order does not matter."""
    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.models.weights import load_onnx_weights
    from prune_perception.runtime.metadata import InputSpec

    torch.manual_seed(0)
    original = build_yolox("yolox_nano", num_classes=6).eval()
    exported = export_onnx(original, tmp_path / "m.onnx", [f"c{i}" for i in range(6)], InputSpec(width=320, height=320))
    restored = load_onnx_weights(build_yolox("yolox_nano", num_classes=6), exported.path, input_size=320).eval()
    images = torch.rand(1, 3, 320, 320) * 255
    with torch.no_grad():
        torch.testing.assert_close(restored(images), original(images), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ksize", [1, 3])
def test_focus_deployment_form_is_the_same_function(ksize):
    """Focus (space-to-depth, then a k x k conv) equals one 2k x 2k stride-2 conv on the image."""
    torch.manual_seed(ksize)
    focus = Focus(3, 16, ksize)
    focus.conv.bn.running_mean.uniform_(-1, 1)
    focus.conv.bn.running_var.uniform_(0.5, 2)
    focus.conv.bn.weight.data.uniform_(0.5, 2)
    focus.eval()
    deployed = focus.deployment_form()
    assert not deployed.training
    assert deployed.conv.conv.kernel_size == (2 * ksize, 2 * ksize) and deployed.conv.conv.stride == (2, 2)
    images = torch.rand(2, 3, 64, 96) * 255
    with torch.no_grad():
        torch.testing.assert_close(deployed(images), focus(images), atol=1e-4, rtol=1e-5)
    assert torch.equal(strided_weight_as_focus(focus_weight_as_strided(focus.conv.conv.weight)), focus.conv.conv.weight)
