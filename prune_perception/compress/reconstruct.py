"""Layer-wise least-squares reconstruction: repair a pruned network from the teacher, without training.

Removing channels changes every later layer's input. Each surviving convolution can be refitted so
that, given the pruned network's actual input, it reproduces the teacher's output for the same
channels (pre-activation, i.e. after its BatchNorm) as closely as possible in the least-squares
sense. Fitting layer by layer in execution order, each layer also absorbs the remaining error of
the layers before it. This is the channel-pruning reconstruction of He et al. (2017) and ThiNet,
done in one forward pass over a batch of calibration images:

- dense convolutions (any kernel, via ``unfold``): a ridge regression of the teacher's output
  channels on the student's input patches, regularized toward the pruned weights;
- depthwise convolutions: the same, per channel (k*k weights and an offset each);
- the offset of a convolution followed by a BatchNorm goes into the BN's running mean, so the
  module structure and BN scales stay as they were (training and BN-scale importance still work).

Measured on YOLOX-Nano (COCO val split): see README "Compression".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from prune_perception.models.hooks import hooked_eval

LOGGER = logging.getLogger(__name__)


@dataclass
class ReconstructionResult:
    layers: int
    relative_error_before: dict[str, float] = field(default_factory=dict)
    relative_error_after: dict[str, float] = field(default_factory=dict)

    @property
    def mean_error_before(self) -> float:
        return _mean(self.relative_error_before.values())

    @property
    def mean_error_after(self) -> float:
        return _mean(self.relative_error_after.values())


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def conv_batchnorm_pairs(model: nn.Module) -> dict[str, str]:
    """Conv2d name -> name of the BatchNorm2d registered right after it in the same parent
    (YOLOX ``BaseConv``: conv, bn, act; ``nn.Sequential(conv, bn, ...)``)."""
    pairs = {}
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (name, child), (next_name, next_child) in zip(children, children[1:]):
            if isinstance(child, nn.Conv2d) and isinstance(next_child, nn.BatchNorm2d):
                prefix = f"{parent_name}." if parent_name else ""
                pairs[prefix + name] = prefix + next_name
    return pairs


def _convolutions(model: nn.Module) -> Iterator[tuple[str, nn.Conv2d]]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            yield name, module


def _sample_positions(output: torch.Tensor, max_positions: int, generator: torch.Generator) -> torch.Tensor:
    count = output.shape[0] * output.shape[2] * output.shape[3]
    if count <= max_positions:
        return torch.arange(count)
    return torch.randperm(count, generator=generator)[:max_positions]


def _rows(output: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [P, C] at flat (b, y, x) positions."""
    return output.permute(0, 2, 3, 1).reshape(-1, output.shape[1])[positions]


def _patches(conv: nn.Conv2d, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The conv's input patches at its output positions: [P, C_in * k * k]."""
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in ((0, 0), 0):
        return _rows(x, positions)
    columns = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [B, C*k*k, L]
    return columns.permute(0, 2, 1).reshape(-1, columns.shape[1])[positions]


def _ridge(inputs: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin ||[X 1] W - Y||^2 + ridge * tr(X'X)/d * ||W - prior||^2 (last row of W: the offset)."""
    design = torch.cat([inputs, torch.ones(inputs.shape[0], 1, dtype=inputs.dtype)], dim=1)
    gram = design.T @ design
    strength = ridge * torch.diagonal(gram).mean().clamp(min=1e-12)
    system = gram + strength * torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(system, design.T @ targets + strength * prior)


@torch.no_grad()
def reconstruct_pruned(
    student: nn.Module,
    teacher: nn.Module,
    kept_output_channels: dict[str, list[int]],
    images: torch.Tensor,
    ridge: float = 1e-3,
    max_positions: int = 16384,
    seed: int = 0,
) -> ReconstructionResult:
    """Refit every convolution of the pruned ``student`` to the ``teacher`` (in place).

    Args:
        kept_output_channels: per conv name, the teacher's indices of the student's output
            channels (:attr:`PruneResult.kept_output_channels`); a conv not listed kept all.
        images: calibration batch ``[N, 3, H, W]`` (about 16-32 images is enough).
        ridge: regularization toward the pruned weights, relative to the input energy.
        max_positions: output positions sampled per layer for the fit.
    """
    pairs = conv_batchnorm_pairs(teacher)
    teacher_modules = dict(teacher.named_modules())
    student_modules = dict(student.named_modules())
    generator = torch.Generator().manual_seed(seed)
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            positions = _sample_positions(output, max_positions, generator)
            targets[name] = (positions, _rows(output, positions).double())
        return hook

    recorders = [teacher_modules[pairs.get(name, name)].register_forward_hook(record(name))
                 for name, _conv in _convolutions(teacher)]
    with hooked_eval(teacher, recorders):
        teacher(images)

    result = ReconstructionResult(layers=0)

    def refit(name: str):
        def hook(conv: nn.Conv2d, inputs: tuple[torch.Tensor, ...]) -> None:
            positions, teacher_rows = targets[name]
            kept = kept_output_channels.get(name)
            wanted = teacher_rows[:, kept] if kept is not None else teacher_rows
            bn = student_modules[pairs[name]] if name in pairs else None
            if bn is not None:  # the teacher's BN output -> the pre-BN value the student's BN maps to it
                scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                usable = scale.abs() > 1e-8
                wanted = (wanted - bn.bias.double()) / torch.where(usable, scale, torch.ones_like(scale)) + bn.running_mean.double()
            else:
                usable = torch.ones(conv.out_channels, dtype=torch.bool)
            patches = _patches(conv, inputs[0].double(), positions)
            weight = conv.weight.double()
            offset = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
            before = _current_output(conv, patches, weight, offset)
            if conv.groups == 1:
                prior = torch.cat([weight.reshape(conv.out_channels, -1), offset[:, None]], dim=1).T
                solution = _ridge(patches, wanted, prior, ridge).T  # [C_out, d + 1]
                new_weight, new_offset = solution[:, :-1].reshape(weight.shape), solution[:, -1]
            elif conv.groups == conv.in_channels == conv.out_channels:
                new_weight, new_offset = _refit_depthwise(conv, patches, wanted, weight, offset, ridge)
            else:
                return  # grouped but not depthwise: left as pruned
            new_weight = torch.where(usable[:, None, None, None], new_weight, weight)
            new_offset = torch.where(usable, new_offset, offset)
            after = _current_output(conv, patches, new_weight, new_offset)
            scale_of_target = wanted.norm().clamp(min=1e-12)
            result.relative_error_before[name] = float((before - wanted).norm() / scale_of_target)
            result.relative_error_after[name] = float((after - wanted).norm() / scale_of_target)
            conv.weight.copy_(new_weight.to(conv.weight.dtype))
            if conv.bias is not None:
                conv.bias.copy_(new_offset.to(conv.bias.dtype))
            else:  # the conv has no bias: the BN subtracts its running mean, so move the offset there
                bn.running_mean.sub_(new_offset.to(bn.running_mean.dtype))
            result.layers += 1
        return hook

    refits = [conv.register_forward_pre_hook(refit(name)) for name, conv in _convolutions(student)
              if name in targets and (conv.bias is not None or name in pairs)]
    with hooked_eval(student, refits):
        student(images)
    LOGGER.info("reconstructed %d layers: mean relative error %.3f -> %.3f", result.layers,
                result.mean_error_before, result.mean_error_after)
    return result


def _current_output(conv: nn.Conv2d, patches: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    if conv.groups == 1:
        return patches @ weight.reshape(conv.out_channels, -1).T + offset
    per_channel = patches.reshape(patches.shape[0], conv.out_channels, -1)
    return (per_channel * weight.reshape(conv.out_channels, -1)).sum(-1) + offset


def _refit_depthwise(conv: nn.Conv2d, patches: torch.Tensor, wanted: torch.Tensor, weight: torch.Tensor,
                     offset: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One small ridge regression per channel, batched: [C, P, k*k + 1] -> [C, k*k + 1]."""
    channels = conv.out_channels
    per_channel = patches.reshape(patches.shape[0], channels, -1).permute(1, 0, 2)
    design = torch.cat([per_channel, torch.ones(channels, per_channel.shape[1], 1, dtype=patches.dtype)], dim=2)
    gram = design.transpose(1, 2) @ design
    strength = ridge * torch.diagonal(gram, dim1=1, dim2=2).mean(dim=1).clamp(min=1e-12)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    prior = torch.cat([weight.reshape(channels, -1), offset[:, None]], dim=1)
    rhs = design.transpose(1, 2) @ wanted.T[:, :, None] + strength[:, None, None] * prior[:, :, None]
    solution = torch.linalg.solve(gram + strength[:, None, None] * eye, rhs)[..., 0]
    return solution[:, :-1].reshape(weight.shape), solution[:, -1]
