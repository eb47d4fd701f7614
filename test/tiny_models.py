"""A small YOLOX-shaped torch model for backend tests (importable as a checkpoint factory)."""

import torch
from torch import nn


class TinyYoloxHead(nn.Module):
    """Three strided conv branches emitting YOLOX rows ``[1, N, 5 + C]`` (sigmoid on obj/cls)."""

    def __init__(self, num_classes: int = 3, strides=(8, 16, 32)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3, 8, kernel_size=s, stride=s), nn.ReLU(), nn.Conv2d(8, 5 + num_classes, 1))
            for s in strides
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rows = []
        for branch in self.branches:
            out = branch(images / 255.0)
            rows.append(out.flatten(2).transpose(1, 2))
        rows = torch.cat(rows, dim=1)
        return torch.cat([rows[..., :4], rows[..., 4:].sigmoid()], dim=2)
