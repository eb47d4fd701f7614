"""The file format of a structurally pruned model: the unpruned model's factory and its
arguments, plus Torch-Pruning's state (the pruned layer shapes and the weights).

The compressor writes it; the torch runtime backend reads it. Neither needs the other: a model
file carries everything needed to rebuild the pruned network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prune_perception.files import atomic_stream

PRUNED_CHECKPOINT_FORMAT = "prune_perception.pruned_checkpoint/1"


def save_pruned_checkpoint(path: str | Path, model: nn.Module, factory: str, factory_kwargs: dict[str, Any]) -> None:
    """Save a pruned model so that the torch backend rebuilds it:
    the unpruned factory, plus Torch-Pruning's state (weights and the pruned shapes)."""
    state = tp.state_dict(model)
    # tp.state_dict copies every module's __dict__, child modules included: a pickle of the code.
    # Keep per module its parameters, buffers and primitive attributes (channel counts, groups,
    # features); the factory rebuilds the module tree. The file then loads with weights_only=True.
    state["full_state_dict"] = {
        name: {key: value for key, value in entries.items() if key in ("_parameters", "_buffers") or _is_primitive(value)}
        for name, entries in state["full_state_dict"].items()
    }
    state["attributions"] = {
        name: {key: value for key, value in attributes.items() if _is_primitive(value)}
        for name, attributes in state["attributions"].items()
    }
    payload = {
        "format": PRUNED_CHECKPOINT_FORMAT,
        "factory": factory,
        "factory_kwargs": dict(factory_kwargs),
        "pruned_state": state,
    }
    with atomic_stream(path) as stream:
        torch.save(payload, stream)


def _is_primitive(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_primitive(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str))


def apply_pruned_state(model: nn.Module, pruned_state: dict[str, Any]) -> nn.Module:
    """Reshape an unpruned ``model`` to the pruned one and load its weights (in place)."""
    tp.load_state_dict(model, state_dict=pruned_state)
    return model
