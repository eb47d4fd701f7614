"""Least-squares reconstruction of pruned layers, and the channel tracking it relies on."""

import copy

import cv2
import pytest
import torch
from torch import nn

from prune_perception.compress.prune import PruneConfig, prune_model
from prune_perception.compress.reconstruct import conv_batchnorm_pairs, reconstruct_pruned
from prune_perception.models.weights import load_onnx_weights
from prune_perception.models.yolox import build_yolox
from prune_perception.runtime.metadata import InputSpec
from prune_perception.runtime.preprocess import Preprocessor


class TwoLayers(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, hidden, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.act = nn.SiLU()
        self.out = nn.Conv2d(hidden, 4, 1)

    def forward(self, x):
        return self.out(self.act(self.bn(self.conv(x))))


@torch.no_grad()
def test_a_removed_duplicate_channel_is_reconstructed_exactly():
    torch.manual_seed(0)
    teacher = TwoLayers(8).eval()
    teacher.bn.running_mean.uniform_(-1, 1)
    teacher.bn.running_var.uniform_(0.5, 2)
    teacher.conv.weight[5] = teacher.conv.weight[2]  # channel 5 duplicates channel 2
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(teacher.bn, name)[5] = getattr(teacher.bn, name)[2]
    kept = [0, 1, 2, 3, 4, 6, 7]
    student = TwoLayers(7).eval()
    student.conv.weight.copy_(teacher.conv.weight[kept])
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(student.bn, name).copy_(getattr(teacher.bn, name)[kept])
    student.out.weight.copy_(teacher.out.weight[:, kept])
    student.out.bias.copy_(teacher.out.bias)
    images = torch.randn(4, 3, 16, 16)
    assert (student(images) - teacher(images)).abs().max() > 0.05  # channel 5's contribution is missing

    result = reconstruct_pruned(student, teacher, {"conv": kept}, images, ridge=1e-10)
    assert result.layers == 2
    assert result.relative_error_before["out"] > 0.05 and result.relative_error_after["out"] < 1e-6
    torch.testing.assert_close(student(images), teacher(images), atol=1e-5, rtol=1e-5)
    assert conv_batchnorm_pairs(teacher) == {"conv": "bn"}


@pytest.fixture(scope="module")
def nano_and_images(yolox_nano_path, coco128_dir):
    model = load_onnx_weights(build_yolox("yolox_nano"), yolox_nano_path, input_size=416).eval()
    preprocessor = Preprocessor(InputSpec(width=416, height=416))
    paths = sorted((coco128_dir / "images").glob("*.jpg"))[:20]
    images = torch.cat([torch.from_numpy(preprocessor(cv2.imread(str(p)))[0]) for p in paths])
    return model, images[:16], images[16:]


def test_pruning_reports_which_teacher_channels_survive(nano_and_images):
    teacher, _, _ = nano_and_images
    student = copy.deepcopy(teacher)
    kept = prune_model(student, PruneConfig(channel_ratio=0.3), torch.zeros(1, 3, 416, 416)).kept_output_channels
    teacher_modules, student_modules = dict(teacher.named_modules()), dict(student.named_modules())
    pruned_somewhere = False
    for conv_name, bn_name in conv_batchnorm_pairs(teacher).items():
        indices = kept[conv_name]
        assert len(indices) == student_modules[conv_name].out_channels
        pruned_somewhere |= len(indices) < teacher_modules[conv_name].out_channels
        # BatchNorm parameters are copied, not changed, by pruning: they identify the channels
        torch.testing.assert_close(student_modules[bn_name].bias, teacher_modules[bn_name].bias[indices], rtol=0, atol=0)
    stem = "backbone.backbone.stem.conv.conv"  # its input (the image) is never pruned: its weights are rows of the teacher's
    torch.testing.assert_close(student_modules[stem].weight, teacher_modules[stem].weight[kept[stem]], rtol=0, atol=0)
    assert pruned_somewhere


def test_reconstruction_brings_a_pruned_nano_closer_to_its_teacher(nano_and_images):
    teacher, calibration, held_out = nano_and_images
    student = copy.deepcopy(teacher)
    kept = prune_model(student, PruneConfig(channel_ratio=0.2), torch.zeros(1, 3, 416, 416)).kept_output_channels
    with torch.no_grad():
        target = teacher(held_out)
        error_pruned = (student(held_out) - target).pow(2).mean().item()
        result = reconstruct_pruned(student, teacher, kept, calibration)
        error_refitted = (student(held_out) - target).pow(2).mean().item()
    assert result.layers > 100
    assert all(result.relative_error_after[name] <= result.relative_error_before[name] + 1e-6
               for name in result.relative_error_before)
    assert result.mean_error_after < 0.8 * result.mean_error_before
    assert error_refitted < 0.5 * error_pruned  # measured on images the fit never saw


@torch.no_grad()
def test_reconstruction_of_an_unpruned_model_changes_nothing(nano_and_images):
    teacher, calibration, held_out = nano_and_images
    student = copy.deepcopy(teacher)
    result = reconstruct_pruned(student, teacher, {}, calibration[:4])
    assert result.mean_error_before < 1e-6
    torch.testing.assert_close(student(held_out), teacher(held_out), atol=1e-4, rtol=1e-3)
