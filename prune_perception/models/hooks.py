"""Forward passes with temporary hooks (statistics, refits, tracing) that leave the model as it was."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@contextlib.contextmanager
def hooked_eval(model: nn.Module, handles: Iterable[RemovableHandle]) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; then remove ``handles`` and restore its mode."""
    handles = list(handles)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


@torch.no_grad()
def input_channel_statistics(model: nn.Module, modules: Sequence[nn.Module], batches: Iterable[torch.Tensor],
                             ) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Per module of ``modules``: the mean and (biased) variance of each channel of its input over
    all ``batches`` and positions, from one eval-mode pass (accumulated in float64)."""
    sums: dict[nn.Module, list[torch.Tensor]] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].double()
        parts = [x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)),
                 torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64, device=x.device)]
        previous = sums.get(module)
        sums[module] = parts if previous is None else [a + b for a, b in zip(previous, parts)]

    device = next(model.parameters()).device
    with hooked_eval(model, [module.register_forward_pre_hook(hook) for module in modules]):
        for batch in batches:
            model(batch.to(device))
    statistics = {}
    for module, (channel_sum, channel_squares, count) in sums.items():
        mean = channel_sum / count
        statistics[module] = (mean.float(), (channel_squares / count - mean * mean).clamp(min=0).float())
    return statistics
