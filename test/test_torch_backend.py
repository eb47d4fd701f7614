"""The torch backend against onnxruntime on the same model: same outputs, same detections."""

import warnings

import numpy as np
import pytest
import torch
from tiny_models import TinyYoloxHead

from prune_perception.errors import ModelLoadError
from prune_perception.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from prune_perception.runtime.backends.torch_backend import TorchBackend, save_torch_checkpoint
from prune_perception.runtime.detector import Detector, DetectorConfig
from prune_perception.runtime.metadata import DecoderSpec, InputSpec, ModelMetadata, write_sidecar

SIZE = 64


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return TinyYoloxHead().eval()


@pytest.fixture(scope="module")
def model_files(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    example = torch.rand(1, 3, SIZE, SIZE) * 255
    onnx_path = folder / "tiny.onnx"
    torch.onnx.export(tiny_model, example, onnx_path, input_names=["images"], output_names=["output"],
                      opset_version=17, dynamo=False)
    script_path = folder / "tiny.torchscript"
    with warnings.catch_warnings():  # TorchScript is deprecated, but users still bring such files
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(tiny_model, example), script_path)
    exported_path = folder / "tiny.pt2"
    torch.export.save(torch.export.export(tiny_model, (example,)), exported_path)
    checkpoint_path = folder / "tiny.pt"
    save_torch_checkpoint(checkpoint_path, "tiny_models:TinyYoloxHead", tiny_model.state_dict(), {"num_classes": 3})
    metadata = ModelMetadata(InputSpec(width=SIZE, height=SIZE), DecoderSpec(), ("car", "person", "bike"))
    for path in (onnx_path, script_path, exported_path, checkpoint_path):
        write_sidecar(path, metadata)
    return onnx_path, script_path, exported_path, checkpoint_path


def test_exported_torchscript_and_checkpoint_match_onnxruntime(model_files):
    onnx_path, *torch_paths = model_files
    tensor = np.random.default_rng(0).uniform(0, 255, (1, 3, SIZE, SIZE)).astype(np.float32)
    reference = OnnxRuntimeBackend(onnx_path, device="cpu").infer(tensor)
    assert reference.shape == (1, 64 + 16 + 4, 8)
    for path in torch_paths:
        backend = TorchBackend(path, device="cpu")
        assert backend.device == "cpu"
        np.testing.assert_allclose(backend.infer(tensor), reference, rtol=1e-4, atol=1e-5)


def test_detector_on_torch_gives_the_onnx_detections(model_files):
    onnx_path, *_, checkpoint_path = model_files
    image = np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    config = DetectorConfig(score_threshold=0.05, nms_threshold=0.5)
    onnx = Detector(onnx_path, device="cpu", config=config).detect(image).detections
    torch_result = Detector(checkpoint_path, device="cpu", config=config).detect(image).detections
    assert len(onnx) > 0
    np.testing.assert_allclose(torch_result.boxes_xyxy, onnx.boxes_xyxy, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(torch_result.class_ids, onnx.class_ids)


def test_torch_model_errors(tmp_path, tiny_model):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="cannot load torch model"):
        TorchBackend(bogus, device="cpu")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": tiny_model.state_dict()}, plain)
    with pytest.raises(ModelLoadError, match="neither TorchScript nor"):
        TorchBackend(plain, device="cpu")
    wrong_factory = tmp_path / "wrong.pt"
    save_torch_checkpoint(wrong_factory, "tiny_models:NoSuchModel", tiny_model.state_dict())
    with pytest.raises(ModelLoadError, match="cannot import the model factory"):
        TorchBackend(wrong_factory, device="cpu")
    wrong_shape = tmp_path / "shape.pt"
    save_torch_checkpoint(wrong_shape, "tiny_models:TinyYoloxHead", tiny_model.state_dict(), {"num_classes": 5})
    with pytest.raises(ModelLoadError, match="weights do not fit"):
        TorchBackend(wrong_shape, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch on this machine")
def test_torch_cuda_matches_cpu(model_files):
    *_, checkpoint_path = model_files
    tensor = np.random.default_rng(2).uniform(0, 255, (1, 3, SIZE, SIZE)).astype(np.float32)
    cpu = TorchBackend(checkpoint_path, device="cpu").infer(tensor)
    cuda = TorchBackend(checkpoint_path, device="cuda")
    assert cuda.device == "cuda:0"
    np.testing.assert_allclose(cuda.infer(tensor), cpu, rtol=1e-3, atol=1e-3)
