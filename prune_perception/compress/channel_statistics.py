"""Data-aware channel pruning: what a removed channel carried, measured on calibration images.

Removing a channel removes its activation from every convolution that reads it. Two things follow
from the activation's statistics there (mean ``m`` and variance ``v`` per input channel, measured at
each convolution's input, after concatenations, residual adds and pooling):

- **Mean compensation.** The channel's average contribution, ``sum_k W[:, c, k] * m_c``, is a
  constant that can be folded into the consumer's bias (or its BatchNorm's running mean), so the
  consumer's output keeps its level. Without it, magnitude pruning is ruinous on BN-folded
  detectors: their smallest-weight channels are nearly constant ones with large biases (YOLOX-Nano:
  removing the single lowest-L2 channel of ``dark2.0.dconv`` moved a class score by 0.86).
- **Activation-energy importance** (``importance: energy``). After compensation, what is lost is the
  channel's variance through the consumer's weights: ``sum_o s_o^2 * ||W[o, c]||^2 * v_c``, with
  ``s_o`` the consumer's BatchNorm scale (so energies of different layers compare, for global
  pruning). A channel is cheap to remove when it barely varies or is barely read, whatever the
  size of its own weights.

Both are exact for 1x1 consumers; for kxk consumers they ignore the zero padding at the border.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from prune_perception.compress.reconstruct import conv_batchnorm_pairs
from prune_perception.models.hooks import input_channel_statistics

LOGGER = logging.getLogger(__name__)


@dataclass
class InputStatistics:
    """Per input channel of one convolution: mean and variance over images and positions."""

    mean: torch.Tensor
    variance: torch.Tensor

    def remove(self, indices: list[int]) -> None:
        keep = torch.ones(self.mean.numel(), dtype=torch.bool)
        keep[indices] = False
        self.mean, self.variance = self.mean[keep], self.variance[keep]


def _is_dense(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups == 1


def _following_batchnorms(model: nn.Module) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    modules = dict(model.named_modules())
    return {modules[conv]: modules[bn] for conv, bn in conv_batchnorm_pairs(model).items()}


class ChannelStatistics:
    """Input-channel statistics of every dense convolution, kept in step with pruning.

    Call :meth:`measure` before a pruning step, then for every group the pruner yields, call
    :meth:`compensate` *before* ``group.prune()``: it folds the removed channels' means into the
    consumers and drops them from the statistics, so that later groups of the same step still see
    statistics aligned with the convolutions' current inputs.
    """

    def __init__(self, images: torch.Tensor, batch_size: int = 8) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"calibration images must be a non-empty [N, 3, H, W] batch, got {tuple(images.shape)}")
        self.images = images
        self.batch_size = batch_size
        self.statistics: dict[nn.Conv2d, InputStatistics] = {}
        self._batchnorms: dict[nn.Conv2d, nn.BatchNorm2d] = {}

    def measure(self, model: nn.Module) -> None:
        batches = torch.split(self.images, self.batch_size)
        convs = [m for m in model.modules() if _is_dense(m)]
        self.statistics = {conv: InputStatistics(mean.cpu(), variance.cpu())
                           for conv, (mean, variance) in input_channel_statistics(model, convs, batches).items()}
        self._batchnorms = _following_batchnorms(model)

    def output_scale(self, conv: nn.Conv2d) -> torch.Tensor:
        """Per output channel, the factor by which the following BatchNorm scales the conv's output."""
        bn = self._batchnorms.get(conv)
        if bn is None:
            return torch.ones(conv.out_channels)
        return (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps)).cpu()

    def consumers(self, group) -> list[tuple[nn.Conv2d, list[int], list[int]]]:
        """(dense conv, its removed input indices, their root indices) for every conv reading the group."""
        found = []
        for item in group:
            dep, idxs = item.dep, item.idxs
            conv = dep.target.module
            if dep.handler != tp.prune_conv_in_channels or not _is_dense(conv) or conv not in self.statistics:
                continue
            stats = self.statistics[conv]
            if stats.mean.numel() != conv.in_channels:
                LOGGER.warning("channel statistics out of step with %s (%d vs %d inputs); skipped",
                               type(conv).__name__, stats.mean.numel(), conv.in_channels)
                continue
            found.append((conv, [int(getattr(i, "idx", i)) for i in idxs], list(item.root_idxs or [])))
        return found

    @torch.no_grad()
    def compensate(self, group) -> None:
        """Fold the mean of every channel the group removes into its consumers' bias, then forget them."""
        for conv, removed, _roots in self.consumers(group):
            removed = sorted(set(removed))
            stats = self.statistics[conv]
            mean = stats.mean[removed].to(conv.weight.device, conv.weight.dtype)
            shift = conv.weight[:, removed].sum(dim=(2, 3)) @ mean  # [out]: the removed average input
            if conv.bias is not None:
                conv.bias += shift
            elif conv in self._batchnorms:
                self._batchnorms[conv].running_mean -= shift
            else:
                conv.bias = nn.Parameter(shift.clone())
            stats.remove(removed)

    @torch.no_grad()
    def energy(self, group) -> torch.Tensor | None:
        """Per root index of ``group``: the output energy its removal costs (after compensation)."""
        consumers = self.consumers(group)
        if not consumers:
            return None
        energy = torch.zeros(len(group[0].idxs), dtype=torch.float64)
        measured = False
        for conv, idxs, roots in consumers:
            if len(roots) != len(idxs) or any(root is None for root in roots):
                continue
            measured = True
            scale = self.output_scale(conv).to(torch.float64)
            weight = conv.weight.detach().cpu().to(torch.float64)[:, idxs]  # [out, n, k, k]
            reads = (weight.pow(2).sum(dim=(2, 3)) * scale.pow(2)[:, None]).sum(dim=0)  # [n]
            variance = self.statistics[conv].variance[idxs].to(torch.float64)
            energy.scatter_add_(0, torch.tensor(roots), reads * variance)
        return energy.float() if measured else None  # None: Torch-Pruning leaves the group alone


class ActivationEnergyImportance(tp.importance.Importance):
    """Torch-Pruning importance from :meth:`ChannelStatistics.energy` (re-measured every step)."""

    def __init__(self, statistics: ChannelStatistics) -> None:
        self.statistics = statistics

    def __call__(self, group) -> torch.Tensor | None:
        return self.statistics.energy(group)
