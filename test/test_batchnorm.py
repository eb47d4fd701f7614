"""BN statistics for imported BN-folded models: exact re-parameterization, and recalibration."""

import copy

import cv2
import pytest
import torch

from prune_perception.compress.batchnorm import recalibrate_batchnorm, reparameterize_batchnorm
from prune_perception.compress.prune import PruneConfig, prune_model
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor


@pytest.fixture(scope="module")
def nano_and_batches(yolox_nano_path, coco128_dir):
    model = load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).eval()
    preprocessor = Preprocessor(InputSpec(width=416, height=416))
    images = [torch.from_numpy(preprocessor(cv2.imread(str(p)))[0]) for p in sorted((coco128_dir / "images").glob("*.jpg"))[:8]]
    return model, [torch.cat(images[:4]), torch.cat(images[4:])]


def test_reparameterization_keeps_the_function_and_sets_real_statistics(nano_and_batches):
    model, batches = nano_and_batches
    reparameterized = reparameterize_batchnorm(copy.deepcopy(model), batches)
    with torch.no_grad():
        torch.testing.assert_close(reparameterized(batches[0]), model(batches[0]), rtol=1e-3, atol=2e-4)
    bn = reparameterized.backbone.backbone.dark3[1].conv1.bn
    assert bn.running_mean.abs().max() > 0.01 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_recalibration_restores_channel_statistics_after_pruning(nano_and_batches):
    model, batches = nano_and_batches
    student = reparameterize_batchnorm(copy.deepcopy(model), batches)
    prune_model(student, PruneConfig(channel_ratio=0.2), torch.zeros(1, 3, 416, 416))
    recalibrate_batchnorm(student, batches)
    inputs = {}
    bn = student.backbone.lateral_conv0.bn
    handle = bn.register_forward_pre_hook(lambda m, i: inputs.setdefault("x", i[0]))
    with torch.no_grad():
        student.eval()(torch.cat(batches))
    handle.remove()
    x = inputs["x"].double()
    torch.testing.assert_close(bn.running_mean.double(), x.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
