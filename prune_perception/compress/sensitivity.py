"""Per-group pruning sensitivity: how much the model's outputs change when only one dependency
group is pruned, at a few keep levels (NetAdapt and HALP rank layers the same way).

A dependency group is the set of layers Torch-Pruning must cut together when one convolution
loses output channels (its BatchNorm, the depthwise conv and every conv reading it, across
concatenations and residual adds). Pruning a group with mean compensation is the same function as
replacing each removed channel, at the input of every dense convolution that reads it, by its mean
on the calibration images (:mod:`channel_statistics`). So the scan needs no pruned copies: per
group and level, forward pre-hooks substitute the means, and the damage is measured on the
calibration images, as the relative squared change of the scores plus that of the boxes where the
teacher sees objects:

    damage = ||s' - s||^2 / ||s||^2 + ||o (b' - b)||^2 / ||o b||^2

with ``s`` the objectness and class scores of every grid cell, ``b`` the raw box regression and
``o`` the teacher's objectness. The channels removed at each level are
the ones the pruner itself removes (the lowest activation energy).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch_pruning as tp
from torch import nn
from tqdm import tqdm

from prune_perception.compress.channel_statistics import ActivationEnergyImportance, ChannelStatistics
from prune_perception.compress.prune import protected_layers
from prune_perception.models.hooks import hooked_eval

LOGGER = logging.getLogger(__name__)


@dataclass
class GroupLevel:
    keep: int
    """Output channels of the root convolution left at this level."""
    damage: float


@dataclass
class GroupSensitivity:
    """One dependency group: its root convolution, the layers it changes, and its damage per level."""

    root: str
    channels: int
    min_keep: int
    out_convs: list[str] = field(default_factory=list)
    """Convolutions whose output channels the group removes."""
    in_convs: list[str] = field(default_factory=list)
    """Convolutions whose input channels the group removes (readers of the removed channels)."""
    levels: list[GroupLevel] = field(default_factory=list)

    def damage_at(self, keep: int) -> float:
        """Damage at ``keep`` channels, linear between the scanned levels (0 at the full width)."""
        points = sorted([(self.channels, 0.0)] + [(level.keep, level.damage) for level in self.levels])
        if keep >= points[-1][0]:
            return 0.0
        if keep <= points[0][0]:
            low_keep, low_damage = points[0]
            if len(points) < 2:
                return low_damage
            high_keep, high_damage = points[1]
            slope = (high_damage - low_damage) / max(high_keep - low_keep, 1)
            return low_damage + slope * (keep - low_keep)
        for (low_keep, low_damage), (high_keep, high_damage) in zip(points, points[1:]):
            if low_keep <= keep <= high_keep:
                weight = (keep - low_keep) / max(high_keep - low_keep, 1)
                return low_damage + weight * (high_damage - low_damage)
        return points[-1][1]


@dataclass
class SensitivityScan:
    groups: list[GroupSensitivity]
    ratios: tuple[float, ...]
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": list(self.ratios), "images": self.images, "groups": [asdict(g) for g in self.groups]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SensitivityScan":
        groups = [GroupSensitivity(**{**g, "levels": [GroupLevel(**level) for level in g["levels"]]}) for g in data["groups"]]
        return cls(groups, tuple(data["ratios"]), int(data["images"]))


def keep_levels(channels: int, ratio: float, round_to: int, max_layer_ratio: float) -> int:
    """The channels Torch-Pruning keeps of ``channels`` at ``ratio``, rounded down to ``round_to``,
    never below ``(1 - max_layer_ratio)`` of them (and one multiple of ``round_to``)."""
    keep = int(channels * (1 - ratio))
    keep -= keep % round_to
    floor = int(channels * (1 - max_layer_ratio) + 0.999999)
    floor += (-floor) % round_to
    return max(keep, floor, round_to)


def dependency_groups(model: nn.Module, example_inputs: torch.Tensor, round_to: int) -> tuple[tp.DependencyGraph, list]:
    """Torch-Pruning's dependency graph of ``model`` and its prunable groups (the head's outputs and
    the narrowest layers protected, as in :func:`prune.prune_model`)."""
    with hooked_eval(model, ()):
        graph = tp.DependencyGraph().build_dependency(model, example_inputs)
    groups = list(graph.get_all_groups(ignored_layers=protected_layers(model, round_to), root_module_types=[nn.Conv2d]))
    return graph, groups


def group_layers(group: Any, names: dict[nn.Module, str], graph: tp.DependencyGraph) -> tuple[list[str], list[str]]:
    """(convolutions losing output channels, convolutions losing input channels) of a group."""
    outs, ins = [], []
    for dependency, _ in group:
        module = dependency.target.module
        if not isinstance(module, nn.Conv2d):
            continue
        name = names[module]
        if graph.is_out_channel_pruning_fn(dependency.handler) and name not in outs:
            outs.append(name)
        elif graph.is_in_channel_pruning_fn(dependency.handler) and name not in ins:
            ins.append(name)
    return outs, ins


def model_outputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """The eval-mode outputs of ``model`` on ``batches``, concatenated."""
    with hooked_eval(model, ()), torch.no_grad():
        return torch.cat([model(batch) for batch in batches])


def output_damage(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative change of the scores, plus that of the boxes weighted by the reference objectness."""
    scores, reference_scores = outputs[..., 4:], reference[..., 4:]
    weight = reference[..., 4:5]
    boxes, reference_boxes = outputs[..., :4] * weight, reference[..., :4] * weight
    score_change = float((scores - reference_scores).pow(2).sum()) / max(float(reference_scores.pow(2).sum()), 1e-12)
    box_change = float((boxes - reference_boxes).pow(2).sum()) / max(float(reference_boxes.pow(2).sum()), 1e-12)
    return score_change + box_change


def scan_sensitivity(model: nn.Module, images: torch.Tensor, ratios: Sequence[float] = (0.3, 0.6),
                     round_to: int = 8, max_layer_ratio: float = 0.9, batch_size: int = 8,
                     progress: bool = True) -> SensitivityScan:
    """Damage of pruning each dependency group alone, at each of ``ratios`` (see the module doc).

    Args:
        model: the model to be pruned (not modified).
        images: calibration images ``[N, 3, H, W]`` at the network input.
    """
    model = model.eval()
    statistics = ChannelStatistics(images, batch_size)
    statistics.measure(model)
    importance = ActivationEnergyImportance(statistics)
    graph, groups = dependency_groups(model, images[:1], round_to)
    names = {module: name for name, module in model.named_modules()}
    batches = torch.split(images, batch_size)
    reference = model_outputs(model, batches)
    results = []
    for group in tqdm(groups, desc="sensitivity scan", disable=not progress):
        root_dependency = group[0].dep
        root = root_dependency.target.module
        scores = importance(group)
        if scores is None:
            continue
        channels = len(scores)
        outs, ins = group_layers(group, names, graph)
        record = GroupSensitivity(names[root], channels, keep_levels(channels, max_layer_ratio, round_to, max_layer_ratio),
                                  outs, ins)
        order = torch.argsort(scores.cpu())
        for ratio in ratios:
            keep = keep_levels(channels, ratio, round_to, max_layer_ratio)
            if keep >= channels or any(level.keep == keep for level in record.levels):
                continue
            removed = order[: channels - keep].tolist()
            probed = graph.get_pruning_group(root, root_dependency.handler, idxs=removed)
            handles = [_substitute_means(dependency.target.module, [int(getattr(i, "idx", i)) for i in indices], statistics)
                       for dependency, indices in probed
                       if isinstance(dependency.target.module, nn.Conv2d) and dependency.target.module.groups == 1
                       and graph.is_in_channel_pruning_fn(dependency.handler)]
            try:
                damage = output_damage(model_outputs(model, batches), reference)
            finally:
                for handle in handles:
                    handle.remove()
            record.levels.append(GroupLevel(keep, damage))
        if record.levels:
            results.append(record)
    LOGGER.info("sensitivity scan: %d groups at ratios %s on %d images", len(results), list(ratios), len(images))
    return SensitivityScan(results, tuple(ratios), len(images))


def _substitute_means(conv: nn.Conv2d, channels: list[int], statistics: ChannelStatistics) -> Any:
    """A pre-hook on ``conv`` that replaces the given input channels by their calibration means."""
    means = statistics.statistics[conv].mean[channels].to(conv.weight.dtype)
    index = torch.as_tensor(channels)

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0].clone()
        x[:, index] = means.to(x.device)[None, :, None, None]
        return (x,)

    return conv.register_forward_pre_hook(hook)
