"""Mean compensation and activation-energy importance: exact on 1x1 consumers, and on the real
YOLOX-Nano far less damaging than cutting channels by weight magnitude."""

import cv2
import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from prune_perception.compress.channel_statistics import ChannelStatistics
from prune_perception.compress.prune import PruneConfig, PruningError, prune_model
from prune_perception.eval.detector_eval import fidelity_to_teacher
from prune_perception.export.onnx_export import export_onnx
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.class_names import COCO_CLASSES
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor

SPEC = InputSpec(width=416, height=416)


class ConstantChannelNet(nn.Module):
    """conv(3x3) -> BN -> SiLU -> 1x1 conv -> BN; channel 2 of the first conv is a constant (zero
    weights, large BN bias), the case where magnitude pruning goes wrong."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.SiLU()
        self.conv2 = nn.Conv2d(8, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.conv1.weight[2] = 0.0
            self.bn1.bias[2] = 5.0
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


def _prune_channels(model: nn.Module, channels: list[int], statistics: ChannelStatistics | None, images) -> None:
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=images[:1])
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=channels)
    if statistics is not None:
        statistics.compensate(group)
    group.prune()


def test_compensated_pruning_equals_replacing_channels_by_their_mean():
    images = torch.randn(6, 3, 12, 12)
    model = ConstantChannelNet().eval()
    with torch.no_grad():
        reference = model(images)
        activations = model.act(model.bn1(model.conv1(images)))
        mean = activations.mean(dim=(0, 2, 3))
        substituted = activations.clone()
        substituted[:, [2, 5]] = mean[[2, 5]].view(1, -1, 1, 1)
        expected = model.bn2(model.conv2(substituted))

    statistics = ChannelStatistics(images)
    statistics.measure(model)
    assert torch.allclose(statistics.statistics[model.conv2].mean, mean, atol=1e-5)
    _prune_channels(model, [2, 5], statistics, images)
    assert model.conv2.in_channels == 6 and statistics.statistics[model.conv2].mean.numel() == 6
    with torch.no_grad():
        pruned = model(images)
    assert torch.allclose(pruned, expected, atol=1e-5)

    # The constant channel costs nothing once compensated; cut without compensation it does.
    constant_only = ConstantChannelNet().eval()
    statistics = ChannelStatistics(images)
    statistics.measure(constant_only)
    _prune_channels(constant_only, [2], statistics, images)
    cut = ConstantChannelNet().eval()
    _prune_channels(cut, [2], None, images)
    with torch.no_grad():
        assert torch.allclose(constant_only(images), reference, atol=1e-4)
        assert (cut(images) - reference).abs().max() > 0.5


def test_energy_importance_ranks_the_constant_channel_last_and_prune_model_removes_it():
    images = torch.randn(6, 3, 12, 12)
    model = ConstantChannelNet().eval()
    statistics = ChannelStatistics(images)
    statistics.measure(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=images[:1])
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(8)))
    energy = statistics.energy(group)
    assert energy.shape == (8,) and energy[2] < 1e-8 < energy[[0, 1, 3, 4, 5, 6, 7]].min()
    with pytest.raises(PruningError, match="energy importance needs calibration"):
        prune_model(ConstantChannelNet(), PruneConfig(importance="energy", channel_ratio=0.1), images[:1])


@pytest.fixture(scope="module")
def nano_and_images(yolox_nano_path, coco128_dir):
    model = load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).eval()
    preprocess = Preprocessor(SPEC)
    frames = [cv2.imread(str(p)) for p in sorted((coco128_dir / "images").glob("*.jpg"))[:24]]
    calibration = torch.from_numpy(np.concatenate([preprocess(frame)[0] for frame in frames[:8]]))
    return model.state_dict(), calibration, frames[8:]


def test_energy_with_compensation_keeps_yolox_nano_far_closer_to_the_teacher(nano_and_images, yolox_nano_path, tmp_path):
    state, calibration, held_out = nano_and_images

    def fidelity(importance: str, compensate: bool) -> float:
        model = build_yolox("yolox_nano")
        model.load_state_dict(state)
        config = PruneConfig(importance=importance, channel_ratio=0.03, round_to=1)
        prune_model(model, config, torch.zeros(1, 3, 416, 416), calibration=calibration if compensate else None)
        path = tmp_path / f"{importance}_{compensate}.onnx"
        export_onnx(model.eval(), path, COCO_CLASSES, SPEC, sample_inputs=[calibration[:1].numpy()])
        return fidelity_to_teacher(path, yolox_nano_path, held_out, progress=False).ap

    magnitude = fidelity("l2", compensate=False)
    compensated = fidelity("l2", compensate=True)
    energy = fidelity("energy", compensate=True)
    # Measured (AP against the teacher's detections on 16 held-out COCO images): 0.00001 / 0.38 / 0.70.
    assert compensated > magnitude + 0.2
    assert energy > compensated + 0.15
