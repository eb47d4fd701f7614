"""Forward passes with temporary hooks (statistics, refits, tracing) that leave the model as it was."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

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
