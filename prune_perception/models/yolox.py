"""YOLOX in plain PyTorch: CSPDarknet backbone, PAFPN neck, decoupled head.

Module attribute names follow the official YOLOX implementation, so official ``state_dict``
checkpoints load with ``strict=True``. The code is written for structured pruning with
Torch-Pruning: channel splits use slicing-free parallel 1x1 convs (no ``chunk()``), and every
concatenation is an explicit ``torch.cat`` the dependency graph can follow.

Output layout (eval mode), the same as the official ONNX export and ``yolox_nano.onnx``:
``[B, N, 5 + C]`` over the 8/16/32 grids, rows ``(dx, dy, log w, log h, objectness, classes)``
with sigmoid applied to objectness and classes; ``decode_in_graph=True`` turns the first four
into ``(cx, cy, w, h)`` in input pixels. In training mode the head returns per-level logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class YoloxConfig:
    """Size of a YOLOX model. ``yolox_nano``: depth 0.33, width 0.25, depthwise, 416 input."""

    num_classes: int = 80
    depth: float = 0.33
    width: float = 0.25
    depthwise: bool = False
    strides: tuple[int, ...] = (8, 16, 32)
    input_size: int = 640


VARIANTS = {
    "yolox_nano": YoloxConfig(depth=0.33, width=0.25, depthwise=True, input_size=416),
    "yolox_tiny": YoloxConfig(depth=0.33, width=0.375, input_size=416),
    "yolox_s": YoloxConfig(depth=0.33, width=0.50),
    "yolox_m": YoloxConfig(depth=0.67, width=0.75),
    "yolox_l": YoloxConfig(depth=1.0, width=1.0),
}


class BaseConv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, ksize, stride, (ksize - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1 (each a BaseConv)."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int, stride: int = 1) -> None:
        super().__init__()
        self.dconv = BaseConv(in_channels, in_channels, ksize, stride, groups=in_channels)
        self.pconv = BaseConv(in_channels, out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


def conv_block(depthwise: bool):
    return DWConv if depthwise else BaseConv


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True, expansion: float = 0.5,
                 depthwise: bool = False) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1, 1)
        self.conv2 = conv_block(depthwise)(hidden, out_channels, 3, 1)
        self.use_add = shortcut and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """Cross-stage partial block: two parallel 1x1 branches (instead of a split), n bottlenecks."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, shortcut: bool = True,
                 expansion: float = 0.5, depthwise: bool = False) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1, 1)
        self.conv2 = BaseConv(in_channels, hidden, 1, 1)
        self.conv3 = BaseConv(2 * hidden, out_channels, 1, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, 1.0, depthwise) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Order as in the official model: exported weights are matched in execution order.
        x_1 = self.conv1(x)
        x_2 = self.conv2(x)
        return self.conv3(torch.cat([self.m(x_1), x_2], dim=1))


class SPPBottleneck(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = BaseConv(in_channels, hidden, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes])
        self.conv2 = BaseConv(hidden * (len(kernel_sizes) + 1), out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))


FOCUS_PHASES = ((0, 0), (1, 0), (0, 1), (1, 1))
YOLOX_FACTORY = "prune_perception.models.yolox:build_yolox"
"""How a saved model names the function that rebuilds its module tree (see :mod:`pruned_checkpoint`)."""
"""(row, column) offsets of the pixel phases in the order Focus concatenates them."""


class Focus(nn.Module):
    """Space-to-depth (2x2 pixels -> 4 channels), then a BaseConv."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int = 1) -> None:
        super().__init__()
        self.conv = BaseConv(in_channels * 4, out_channels, ksize, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x[..., dy::2, dx::2] for dy, dx in FOCUS_PHASES], dim=1))

    def deployment_form(self) -> "StridedFocus":
        """The same function as one convolution reading the image directly, for export.

        A k x k convolution over the four pixel phases is a 2k x 2k convolution with stride 2
        and padding 2 * (k // 2) over the image: phase (dy, dx) of kernel tap (a, b) is image
        tap (2a + dy, 2b + dx). It drops the four strided slices and the concatenation, which
        onnxruntime runs as separate full-resolution copies (measured at 416 on a 2-core CPU:
        1.28 ms for slices, concat and conv against 0.72 ms for the one convolution).
        """
        conv = self.conv.conv
        out_channels, _, k, _ = conv.weight.shape
        deployed = StridedFocus(conv.in_channels // 4, out_channels, k).to(conv.weight.device)
        with torch.no_grad():
            deployed.conv.conv.weight.copy_(focus_weight_as_strided(conv.weight.detach()))
        deployed.conv.bn.load_state_dict(self.conv.bn.state_dict())
        deployed.conv.bn.eps = self.conv.bn.eps
        return deployed.train(self.training)


class StridedFocus(nn.Module):
    """Focus in its deployment form: one 2k x 2k stride-2 BaseConv on the image. Its conv keeps
    the module path ``<focus>.conv.conv``, so exports of either form import by name."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int) -> None:
        super().__init__()
        self.conv = BaseConv(in_channels, out_channels, 2 * ksize, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def focus_weight_as_strided(weight: torch.Tensor) -> torch.Tensor:
    """Focus conv weights ``[O, 4C, k, k]`` -> the strided conv's ``[O, C, 2k, 2k]``."""
    out_channels, phase_channels, k, _ = weight.shape
    channels = phase_channels // 4
    strided = weight.new_zeros(out_channels, channels, 2 * k, 2 * k)
    for phase, (dy, dx) in enumerate(FOCUS_PHASES):
        strided[:, :, dy::2, dx::2] = weight[:, phase * channels:(phase + 1) * channels]
    return strided


def strided_weight_as_focus(weight: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`focus_weight_as_strided`."""
    return torch.cat([weight[:, :, dy::2, dx::2] for dy, dx in FOCUS_PHASES], dim=1)


class CSPDarknet(nn.Module):
    def __init__(self, depth: float, width: float, depthwise: bool = False) -> None:
        super().__init__()
        Conv = conv_block(depthwise)
        base_channels = int(width * 64)
        base_depth = max(round(depth * 3), 1)
        self.stem = Focus(3, base_channels, ksize=3)
        self.dark2 = nn.Sequential(
            Conv(base_channels, base_channels * 2, 3, 2),
            CSPLayer(base_channels * 2, base_channels * 2, n=base_depth, depthwise=depthwise),
        )
        self.dark3 = nn.Sequential(
            Conv(base_channels * 2, base_channels * 4, 3, 2),
            CSPLayer(base_channels * 4, base_channels * 4, n=base_depth * 3, depthwise=depthwise),
        )
        self.dark4 = nn.Sequential(
            Conv(base_channels * 4, base_channels * 8, 3, 2),
            CSPLayer(base_channels * 8, base_channels * 8, n=base_depth * 3, depthwise=depthwise),
        )
        self.dark5 = nn.Sequential(
            Conv(base_channels * 8, base_channels * 16, 3, 2),
            SPPBottleneck(base_channels * 16, base_channels * 16),
            CSPLayer(base_channels * 16, base_channels * 16, n=base_depth, shortcut=False, depthwise=depthwise),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dark2(self.stem(x))
        dark3 = self.dark3(x)
        dark4 = self.dark4(dark3)
        dark5 = self.dark5(dark4)
        return dark3, dark4, dark5


class YOLOPAFPN(nn.Module):
    """Top-down then bottom-up path aggregation over dark3/dark4/dark5."""

    def __init__(self, depth: float, width: float, depthwise: bool = False,
                 in_channels: tuple[int, int, int] = (256, 512, 1024)) -> None:
        super().__init__()
        Conv = conv_block(depthwise)
        c3, c4, c5 = (int(c * width) for c in in_channels)
        n = round(3 * depth)
        self.backbone = CSPDarknet(depth, width, depthwise)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(c5, c4, 1, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False, depthwise=depthwise)
        self.reduce_conv1 = BaseConv(c4, c3, 1, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False, depthwise=depthwise)
        self.bu_conv2 = Conv(c3, c3, 3, 2)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False, depthwise=depthwise)
        self.bu_conv1 = Conv(c4, c4, 3, 2)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False, depthwise=depthwise)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dark3, dark4, dark5 = self.backbone(x)
        fpn_out0 = self.lateral_conv0(dark5)
        f_out0 = self.C3_p4(torch.cat([self.upsample(fpn_out0), dark4], dim=1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat([self.upsample(fpn_out1), dark3], dim=1))
        pan_out1 = self.C3_n3(torch.cat([self.bu_conv2(pan_out2), fpn_out1], dim=1))
        pan_out0 = self.C3_n4(torch.cat([self.bu_conv1(pan_out1), fpn_out0], dim=1))
        return pan_out2, pan_out1, pan_out0


class YOLOXHead(nn.Module):
    """Decoupled head: per level a stem, then separate class and box/objectness branches."""

    def __init__(self, num_classes: int, width: float, strides: tuple[int, ...] = (8, 16, 32),
                 in_channels: tuple[int, int, int] = (256, 512, 1024), depthwise: bool = False) -> None:
        super().__init__()
        Conv = conv_block(depthwise)
        hidden = int(256 * width)
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.stems = nn.ModuleList()
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.cls_preds = nn.ModuleList()
        self.reg_preds = nn.ModuleList()
        self.obj_preds = nn.ModuleList()
        for channels in in_channels:
            self.stems.append(BaseConv(int(channels * width), hidden, 1, 1))
            self.cls_convs.append(nn.Sequential(Conv(hidden, hidden, 3, 1), Conv(hidden, hidden, 3, 1)))
            self.reg_convs.append(nn.Sequential(Conv(hidden, hidden, 3, 1), Conv(hidden, hidden, 3, 1)))
            self.cls_preds.append(nn.Conv2d(hidden, num_classes, 1))
            self.reg_preds.append(nn.Conv2d(hidden, 4, 1))
            self.obj_preds.append(nn.Conv2d(hidden, 1, 1))
        self.initialize_biases()

    def initialize_biases(self, prior_probability: float = 0.01) -> None:
        """Start class and objectness scores near ``prior_probability`` (as YOLOX does)."""
        bias = -torch.log(torch.tensor((1 - prior_probability) / prior_probability)).item()
        for conv in list(self.cls_preds) + list(self.obj_preds):
            nn.init.constant_(conv.bias, bias)

    def forward(self, features: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Per level ``[B, 4 + 1 + C, H, W]`` logits: box, objectness, classes."""
        levels = []
        for k, x in enumerate(features):
            x = self.stems[k](x)
            cls_feat = self.cls_convs[k](x)
            cls_output = self.cls_preds[k](cls_feat)
            reg_feat = self.reg_convs[k](x)
            reg_output = self.reg_preds[k](reg_feat)
            obj_output = self.obj_preds[k](reg_feat)
            levels.append(torch.cat([reg_output, obj_output, cls_output], dim=1))
        return levels


class YOLOX(nn.Module):
    """Backbone + neck + head. ``forward`` returns per-level logits in training mode and the
    export layout ``[B, N, 5 + C]`` in eval mode."""

    def __init__(self, config: YoloxConfig = YoloxConfig(), decode_in_graph: bool = False) -> None:
        super().__init__()
        self.config = config
        self.decode_in_graph = decode_in_graph
        self.backbone = YOLOPAFPN(config.depth, config.width, config.depthwise)
        self.head = YOLOXHead(config.num_classes, config.width, config.strides, depthwise=config.depthwise)

    def forward(self, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        levels = self.head(self.backbone(images))
        if self.training:
            return levels
        return levels_to_rows(levels, self.config.strides if self.decode_in_graph else None)

    def logits(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per-level logits whatever the mode (a teacher in eval mode, for distillation)."""
        return self.head(self.backbone(images))

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Neck outputs (P3, P4, P5), e.g. for feature imitation."""
        return self.backbone(images)


def levels_to_rows(levels: list[torch.Tensor], strides: tuple[int, ...] | None = None) -> torch.Tensor:
    """Per-level logits -> ``[B, N, 5 + C]`` rows with sigmoid on objectness and classes; with
    ``strides``, also decode the boxes to (cx, cy, w, h) in input pixels."""
    rows = []
    for k, level in enumerate(levels):
        batch, channels, height, width = level.shape
        box, scores = level[:, :4], level[:, 4:].sigmoid()
        if strides is not None:
            stride = strides[k]
            grid_y, grid_x = torch.meshgrid(
                torch.arange(height, device=level.device, dtype=level.dtype),
                torch.arange(width, device=level.device, dtype=level.dtype), indexing="ij",
            )
            grid = torch.stack([grid_x, grid_y], dim=0)[None]
            box = torch.cat([(box[:, :2] + grid) * stride, box[:, 2:4].exp() * stride], dim=1)
        rows.append(torch.cat([box, scores], dim=1).flatten(start_dim=2))
    return torch.cat(rows, dim=2).permute(0, 2, 1)


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of the residual bottlenecks (``x + f(x)``), in execution order: the blocks that can be
    removed without changing any shape."""
    return [name for name, module in model.named_modules() if isinstance(module, Bottleneck) and module.use_add]


def drop_residual_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Replace each named residual bottleneck by the identity (in place): ``x + f(x)`` becomes ``x``."""
    allowed = set(residual_blocks(model))
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"not residual blocks of this model: {', '.join(unknown)}; removable: {', '.join(sorted(allowed))}")
    for name in names:
        model.set_submodule(name, nn.Identity())
    return model


def build_yolox(variant: str = "yolox_nano", num_classes: int = 80, decode_in_graph: bool = False,
                removed_blocks: Sequence[str] = ()) -> YOLOX:
    """A YOLOX of a named size, e.g. ``build_yolox("yolox_nano")``. Usable as a checkpoint factory:
    ``prune_perception.models.yolox:build_yolox``; ``removed_blocks`` names residual blocks dropped
    from it (a depth-compressed student)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown YOLOX variant {variant!r}; choose from {sorted(VARIANTS)}")
    base = VARIANTS[variant]
    config = YoloxConfig(num_classes, base.depth, base.width, base.depthwise, base.strides, base.input_size)
    model = YOLOX(config, decode_in_graph=decode_in_graph)
    return drop_residual_blocks(model, removed_blocks) if removed_blocks else model
