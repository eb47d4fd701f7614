"""The peers our pruning step is measured against: the same teacher, camera shape, classes, MACs
and recovery, only the way channels are chosen differs.

- ``torch_pruning``: Torch-Pruning's own recipe, as its benchmarks run it (``progressive_pruning``
  in its ImageNet and detector examples): :class:`torch_pruning.pruner.MetaPruner` with group L2
  magnitude importance, stepped in many small iterative steps until the MACs reach the target,
  importance re-measured after every step. Nothing is compensated or refitted: its recipe recovers
  by training alone. It keeps our constraints (the head's output layers and the narrow layers
  untouched, channels in multiples of ``round_to``, no layer cut by more than ``max_layer_ratio``),
  so that the comparison is about which channels go, not about rounding.
- ``modelopt_fastnas``: NVIDIA Model Optimizer's FastNAS (``modelopt.torch.prune``, mode
  ``fastnas``): it converts the model to a search space of channel counts, ranks every choice by
  ``score_func`` (a sensitivity analysis), and searches the subnet that fits a FLOPs constraint
  with the best score, recalibrating BatchNorm on ``data_loader`` batches.

Both return a plain ``nn.Module`` with smaller convolutions, which the run saves, recovers,
exports and times exactly as its own students (``prune.method`` in a compress config;
``benchmarks/pruning_peers.py`` runs all three at equal MACs and equal recovery steps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from prune_perception.compress.prune import PrunedSize, PruningError, count_macs_params, protected_layers
from prune_perception.optional import modelopt_unavailable_reason

LOGGER = logging.getLogger(__name__)
PEER_METHODS = ("torch_pruning", "modelopt_fastnas")
PRUNE_METHODS = ("prune_perception", *PEER_METHODS)


@dataclass
class PeerResult(PrunedSize):
    method: str = ""
    steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "macs_fraction": self.macs_fraction, "params_fraction": self.params_fraction,
                "macs": self.macs_after, "params": self.params_after, "pruning_steps": self.steps,
                "history": self.history}


def prune_as_peer(method: str, model: nn.Module, example_inputs: torch.Tensor, macs_fraction: float,
                  calibration: torch.Tensor, checkpoint: Path, round_to: int = 8, max_layer_ratio: float = 0.9,
                  iterative_steps: int = 100, batch_size: int = 8) -> tuple[nn.Module, PeerResult]:
    """``model`` pruned by the peer ``method`` (one of :data:`PEER_METHODS`) to ``macs_fraction``.

    ``calibration`` (N x 3 x H x W) feeds FastNAS: its BatchNorm recalibration batches and its
    score, which is how close the candidate's score maps stay to ``model``'s own on those images.
    """
    if method == "torch_pruning":
        return model, torch_pruning_peer(model, example_inputs, macs_fraction, round_to, max_layer_ratio,
                                         iterative_steps)
    if method == "modelopt_fastnas":
        batches = list(torch.split(calibration, batch_size))
        return modelopt_fastnas_peer(model, example_inputs, macs_fraction, batches,
                                     output_agreement(model, calibration), checkpoint)
    raise PruningError(f"unknown peer method {method!r}: one of {PEER_METHODS}")


def output_agreement(reference: nn.Module, images: torch.Tensor) -> Callable[[nn.Module], float]:
    """A score for a candidate subnet: minus the mean squared difference of its objectness and class
    scores from ``reference``'s (as they are now) on ``images``; 0 is a perfect match."""
    reference.eval()
    with torch.no_grad():
        target = reference(images)[..., 4:].clone()

    def score(candidate: nn.Module) -> float:
        with torch.no_grad():
            return -float(torch.mean((candidate(images)[..., 4:] - target) ** 2))

    return score


def torch_pruning_peer(model: nn.Module, example_inputs: torch.Tensor, macs_fraction: float, round_to: int = 8,
                       max_layer_ratio: float = 0.9, iterative_steps: int = 100) -> PeerResult:
    """Torch-Pruning's progressive pruning of ``model`` in place, to at most ``macs_fraction`` of its MACs.

    ``iterative_steps`` is the resolution of its schedule (its benchmarks use 400; each step costs a
    MAC count, seconds on a CPU): each step removes 1/iterative_steps of the channels and re-ranks the
    rest by group L2 magnitude.
    """
    if not 0 < macs_fraction < 1:
        raise PruningError(f"macs_fraction must be in (0, 1), got {macs_fraction}")
    model.eval()
    macs_before, params_before = count_macs_params(model, example_inputs)
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=1.0,
        max_pruning_ratio=max_layer_ratio, iterative_steps=iterative_steps,
        ignored_layers=protected_layers(model, round_to), round_to=round_to)
    macs, params = macs_before, params_before
    history: list[dict[str, Any]] = []
    for step in range(1, iterative_steps + 1):
        pruner.step()
        macs, params = count_macs_params(model, example_inputs)
        history.append({"step": step, "macs": macs, "params": params})
        if macs <= macs_fraction * macs_before:
            break
    else:
        raise PruningError(f"Torch-Pruning could not reach {macs_fraction:.1%} of the MACs with at most "
                           f"{max_layer_ratio:.0%} of each layer pruned (reached {macs / macs_before:.1%})")
    model.zero_grad(set_to_none=True)
    LOGGER.info("Torch-Pruning (MetaPruner, group L2): %d of %d steps, MACs %.1f%%", len(history), iterative_steps,
                100 * macs / macs_before)
    return PeerResult(macs_before, macs, params_before, params, method="torch_pruning", steps=len(history),
                      history=history)


def modelopt_fastnas_peer(model: nn.Module, example_inputs: torch.Tensor, macs_fraction: float,
                          batches: Sequence[torch.Tensor], score_func: Callable[[nn.Module], float],
                          checkpoint: Path, max_batches: int = 8) -> tuple[nn.Module, PeerResult]:
    """ModelOpt FastNAS to at most ``macs_fraction`` of ``model``'s FLOPs (its MACs x 2; the fraction
    is the same). Returns the searched subnet (``model`` itself, exported in place to plain modules)
    and the result. ``checkpoint`` keeps the search's sensitivity scan, so an interrupted run resumes it.
    """
    if not 0 < macs_fraction < 1:
        raise PruningError(f"macs_fraction must be in (0, 1), got {macs_fraction}")
    reason = modelopt_unavailable_reason("torch.prune")
    if reason is not None:
        raise PruningError(f"prune.method modelopt_fastnas: {reason}")
    import modelopt.torch.prune as mtp

    model.eval()
    macs_before, params_before = count_macs_params(model, example_inputs)
    loader = [(batch,) for batch in batches]  # its forward loop passes a batch's first element
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"data_loader": loader, "score_func": score_func, "checkpoint": str(checkpoint),
                              "max_iter_data_loader": max_batches}
    subnet, _ = mtp.prune(model, mode="fastnas", constraints={"flops": f"{100 * macs_fraction:.2f}%"},
                          dummy_input=example_inputs, config=config)
    subnet.eval()
    macs, params = count_macs_params(subnet, example_inputs)
    LOGGER.info("ModelOpt FastNAS: MACs %.1f%%, params %.1f%%", 100 * macs / macs_before, 100 * params / params_before)
    return subnet, PeerResult(macs_before, macs, params_before, params, method="modelopt_fastnas", steps=1)
