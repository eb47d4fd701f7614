"""Weight sparsity that keeps the dense shapes: unstructured magnitude pruning and 2:4
semi-structured sparsity (NVIDIA's Automatic SParsity pattern).

Neither makes a model faster on its own. Zeros in a dense weight tensor cost the same time as
any other value on onnxruntime's CPU kernels, cuDNN and TensorRT's dense kernels. Only TensorRT
on sparse tensor cores (Ampere or newer GPUs, with ``BuilderFlag.SPARSE_WEIGHTS``) runs 2:4
weights faster, and then only for the layers where its timing picks a sparse kernel. For
unstructured sparsity no runtime here gains anything: it only shrinks a compressed file. The
compression report says so next to the measured numbers.

2:4 pattern (what TensorRT checks): for every output channel and kernel position, each run of 4
consecutive input channels holds at most 2 non-zero weights. Only convolutions whose input
channels per group are a multiple of 4 qualify; depthwise convolutions (one input channel per
group) cannot hold the pattern and stay dense.

The masks are kept (:class:`SparsityMasks`) so that recovery training re-applies them after
every optimizer step: the fine-tuned model keeps its zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from prune_perception.compress.prune import protected_layers
from prune_perception.errors import PrunePerceptionError

SPARSITY_MODES = ("unstructured", "2:4")


class SparsityError(PrunePerceptionError):
    """The sparsity request is malformed."""


@dataclass
class SparsityMasks:
    """Per Conv2d name, the 0/1 mask of its weight."""

    mode: str
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the masked weights of ``model`` (in place)."""
        modules = dict(model.named_modules())
        for name, mask in self.masks.items():
            weight = modules[name].weight
            weight.mul_(mask.to(weight.device, weight.dtype))

    @classmethod
    def from_zeros(cls, model: nn.Module, mode: str) -> "SparsityMasks":
        """The masks of a model sparsified before (and saved): its zero weights in the layers that
        ``mode`` makes sparse. Trained weights are never exactly zero by chance."""
        return cls(mode, {name: (conv.weight.detach() != 0).float() for name, conv in sparse_candidates(model, mode).items()})

    def summary(self, model: nn.Module) -> dict[str, float]:
        """The zero fraction of the masked layers, and the share of all conv weights they hold."""
        convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        total = sum(m.weight.numel() for m in convs.values())
        masked = sum(convs[name].weight.numel() for name in self.masks)
        zeros = sum(int((convs[name].weight == 0).sum()) for name in self.masks)
        return {
            "mode": self.mode,
            "sparse_layers": len(self.masks),
            "conv_layers": len(convs),
            "sparse_weight_share": masked / total if total else 0.0,
            "zero_fraction_in_sparse_layers": zeros / masked if masked else 0.0,
            "zero_fraction_of_conv_weights": zeros / total if total else 0.0,
        }


def sparse_candidates(model: nn.Module, mode: str) -> dict[str, nn.Conv2d]:
    """The convolutions that get sparse weights: not the head's output convs, not those that
    export in another layout (inside a module with a ``deployment_form``, such as YOLOX's Focus,
    whose 12-channel conv becomes a 3-channel 6x6 one), and for 2:4 only those with a multiple
    of 4 input channels per group."""
    protected = {id(m) for m in protected_layers(model, round_to=1)}
    protected |= {id(conv) for module in model.modules() if hasattr(module, "deployment_form")
                  for conv in module.modules() if isinstance(conv, nn.Conv2d)}
    candidates = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or id(module) in protected:
            continue
        if mode == "2:4" and (module.in_channels // module.groups) % 4 != 0:
            continue
        candidates[name] = module
    return candidates


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask of a conv weight ``[out, in, kh, kw]``: in every run of 4 input channels (per
    output channel and kernel position) the 2 largest magnitudes are kept."""
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    if in_channels % 4:
        raise SparsityError(f"2:4 needs a multiple of 4 input channels, got {in_channels}")
    runs = weight.detach().abs().permute(0, 2, 3, 1).reshape(-1, 4)  # input channels innermost
    keep = runs.topk(2, dim=1).indices
    mask = torch.zeros_like(runs).scatter_(1, keep, 1.0)
    return mask.reshape(out_channels, kernel_h, kernel_w, in_channels).permute(0, 3, 1, 2).contiguous()


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether ``weight`` holds at most 2 non-zeros in every run of 4 input channels."""
    if weight.shape[1] % 4:
        return False
    runs = (weight.detach() != 0).permute(0, 2, 3, 1).reshape(-1, 4)
    return bool((runs.sum(dim=1) <= 2).all())


def sparsify(model: nn.Module, mode: str, amount: float = 0.5) -> SparsityMasks:
    """Give ``model``'s convolutions sparse weights (in place) and return the masks.

    Args:
        mode: ``2:4`` (half of every run of 4 input weights) or ``unstructured`` (global magnitude:
            the ``amount`` smallest weights, ranked over all candidate layers).
        amount: the zero fraction for ``unstructured`` (2:4 is always 0.5 of its layers).
    """
    if mode not in SPARSITY_MODES:
        raise SparsityError(f"sparsity mode must be one of {SPARSITY_MODES}, got {mode!r}")
    if not 0 < amount < 1:
        raise SparsityError(f"sparsity amount must be in (0, 1), got {amount}")
    candidates = sparse_candidates(model, mode)
    if not candidates:
        raise SparsityError(f"no convolution of {type(model).__name__} can hold {mode} sparsity")
    masks = SparsityMasks(mode)
    if mode == "2:4":
        masks.masks = {name: two_four_mask(conv.weight) for name, conv in candidates.items()}
    else:
        magnitudes = torch.cat([conv.weight.detach().abs().flatten() for conv in candidates.values()])
        count = int(amount * magnitudes.numel())
        threshold = magnitudes.kthvalue(max(count, 1)).values if count else magnitudes.new_tensor(-1.0)
        masks.masks = {name: (conv.weight.detach().abs() > threshold).float() for name, conv in candidates.items()}
    masks.apply(model)
    return masks
