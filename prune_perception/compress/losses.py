"""Losses for recovering a pruned detector: distillation from a teacher, and YOLOX-style
detection loss on labels. Both read per-level logits ``[B, 5 + C, H, W]`` (box, objectness,
classes), the training-mode output of the YOLOX models here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DistillConfig:
    """Weights of the distillation terms.

    - objectness: BCE of the student's objectness logits against the teacher's probabilities,
      summed over cells and divided by the teacher's total objectness.
    - classes: BCE against the teacher's class probabilities, weighted per cell by the teacher's
      objectness (background cells carry no class information).
    - box: smooth L1 (Huber, quadratic below ``box_beta``) on the raw box regression where the
      teacher is confident (objectness x best class >= ``box_confidence``). Plain L1 would push
      with full force however close the student is: its gradient is the sign of the difference.
      Measured: an unpruned YOLOX-Nano distilled into itself lost all AP within 10 SGD steps,
      because from one step to the next the 1e-7 differences turned into a gradient norm of 127.
    - feature: MSE between student neck features (through 1x1 adapters) and the teacher's.
    """

    objectness_weight: float = 1.0
    class_weight: float = 1.0
    box_weight: float = 2.0
    box_confidence: float = 0.3
    box_beta: float = 0.1
    feature_weight: float = 0.0
    temperature: float = 1.0


def flatten_levels(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-level ``[B, K, H, W]`` -> ``[B, sum(H W), K]``, in the runtime's row order."""
    return torch.cat([level.flatten(start_dim=2) for level in levels], dim=2).permute(0, 2, 1)


def distillation_loss(
    student_levels: Sequence[torch.Tensor],
    teacher_levels: Sequence[torch.Tensor],
    config: DistillConfig,
    student_features: Sequence[torch.Tensor] = (),
    teacher_features: Sequence[torch.Tensor] = (),
    adapters: nn.ModuleList | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dense output distillation (plus optional feature imitation); returns (loss, parts)."""
    student, teacher = flatten_levels(student_levels), flatten_levels(teacher_levels).detach()
    temperature = config.temperature
    teacher_objectness = torch.sigmoid(teacher[..., 4] / temperature)
    teacher_classes = torch.sigmoid(teacher[..., 5:] / temperature)

    # Normalised by the teacher's total objectness (its "number of objects"), as YOLOX normalises by
    # positives: a mean over all cells would let ~10^4 background cells drown the few objects.
    objects = teacher_objectness.sum().clamp(min=1.0)
    objectness = F.binary_cross_entropy_with_logits(
        student[..., 4] / temperature, teacher_objectness, reduction="sum") / objects
    per_cell = F.binary_cross_entropy_with_logits(student[..., 5:] / temperature, teacher_classes, reduction="none").mean(-1)
    classes = (per_cell * teacher_objectness).sum() / teacher_objectness.sum().clamp(min=1e-6)
    confident = teacher_objectness * teacher_classes.max(dim=-1).values >= config.box_confidence
    if confident.any():
        box = F.smooth_l1_loss(student[..., :4][confident], teacher[..., :4][confident], beta=config.box_beta)
    else:
        box = student.new_zeros(())
    total = config.objectness_weight * objectness + config.class_weight * classes + config.box_weight * box
    parts = {"distill_objectness": _value(objectness), "distill_classes": _value(classes), "distill_box": _value(box)}
    if config.feature_weight > 0:
        if adapters is None or not student_features:
            raise ValueError("feature imitation needs the neck features and adapters")
        feature = sum(F.mse_loss(adapter(s), t.detach()) for adapter, s, t in zip(adapters, student_features, teacher_features))
        feature = feature / len(adapters)
        total = total + config.feature_weight * feature
        parts["distill_feature"] = _value(feature)
    return total, parts


def feature_adapters(student_channels: Sequence[int], teacher_channels: Sequence[int]) -> nn.ModuleList:
    """1x1 convolutions mapping each student neck level onto the teacher's channel count."""
    return nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(student_channels, teacher_channels))


def _grid(levels: Sequence[torch.Tensor], strides: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell top-left grid coordinates (N, 2) and strides (N,) in row order."""
    grids, cell_strides = [], []
    for level, stride in zip(levels, strides):
        height, width = level.shape[-2:]
        y, x = torch.meshgrid(torch.arange(height, device=level.device), torch.arange(width, device=level.device),
                              indexing="ij")
        grids.append(torch.stack([x.flatten(), y.flatten()], dim=1))
        cell_strides.append(torch.full((height * width,), float(stride), device=level.device))
    return torch.cat(grids).float(), torch.cat(cell_strides)


def decode_boxes(rows: torch.Tensor, grid: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Raw ``(dx, dy, log w, log h)`` -> xyxy pixels."""
    centers = (rows[..., :2] + grid) * strides[:, None]
    sizes = torch.exp(rows[..., 2:4].clamp(max=12)) * strides[:, None]
    return torch.cat([centers - sizes / 2, centers + sizes / 2], dim=-1)


def _iou_and_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top_left, bottom_right = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(dim=1), (b[:, 2:] - b[:, :2]).prod(dim=1)
    union = (area_a + area_b - intersection).clamp(min=1e-9)
    iou = intersection / union
    enclosing = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(dim=1).clamp(min=1e-9)
    return iou, iou - (enclosing - union) / enclosing


def assign_targets(boxes: torch.Tensor, grid: torch.Tensor, strides: torch.Tensor, radius: float = 2.5) -> torch.Tensor:
    """Ground-truth index of each cell, or -1 (background).

    Center sampling, a documented simplification of YOLOX's SimOTA: a cell is positive for a box
    when its center lies inside the box and within ``radius`` strides of the box center; a cell
    claimed by several boxes takes the smallest. A box too small to contain a cell center gets
    the cells within ``radius`` strides of its center.
    """
    if len(boxes) == 0:
        return torch.full((len(grid),), -1, dtype=torch.long, device=grid.device)
    centers = (grid + 0.5) * strides[:, None]  # (N, 2)
    box_centers = (boxes[:, :2] + boxes[:, 2:]) / 2  # (M, 2)
    inside_box = ((centers[:, None] > boxes[None, :, :2]) & (centers[:, None] < boxes[None, :, 2:])).all(-1)
    near_center = ((centers[:, None] - box_centers[None]).abs() < radius * strides[:, None, None]).all(-1)
    candidate = inside_box & near_center  # (N, M)
    empty = ~candidate.any(dim=0)
    candidate[:, empty] = near_center[:, empty]
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    cost = torch.where(candidate, areas[None].expand_as(candidate), torch.full_like(candidate, float("inf"), dtype=areas.dtype))
    best_cost, best = cost.min(dim=1)
    return torch.where(torch.isfinite(best_cost), best, torch.full_like(best, -1))


def detection_loss(
    levels: Sequence[torch.Tensor], targets: Sequence[torch.Tensor | None], strides: Sequence[int], box_weight: float = 5.0,
    exhaustive: Sequence[bool] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """YOLOX-style loss on labels: GIoU on positive boxes, BCE objectness on every cell, BCE
    classes on positives with IoU-scaled one-hot targets; normalised by the number of positives.

    Args:
        targets: per image a ``(M, 5)`` tensor of ``class, x1, y1, x2, y2`` in input pixels, or
            None for an unlabelled image, which then takes no part in this loss. Class -1 is a
            box of unknown class: it takes part in the box and objectness terms only.
        exhaustive: per image, whether its labels box every object of every predicted class
            (default: all). A partially labelled image has objectness loss on its positive cells
            only: its unboxed cells may hold objects of classes it does not label.
    """
    rows = flatten_levels(levels)
    grid, cell_strides = _grid(levels, strides)
    num_classes = rows.shape[-1] - 5
    predicted = decode_boxes(rows, grid, cell_strides)
    box_terms, class_terms, objectness_targets = [], [], torch.zeros_like(rows[..., 4])
    positives = 0
    # the cells whose objectness is scored: all of an exhaustively labelled image, the positive
    # cells of a partially labelled one, none of an unlabelled one
    scored = torch.zeros_like(rows[..., 4], dtype=torch.bool)
    for index, target in enumerate(targets):
        if target is None:
            continue
        if exhaustive is None or exhaustive[index]:
            scored[index] = True
        assigned = assign_targets(target[:, 1:5], grid, cell_strides)
        foreground = assigned >= 0
        count = int(foreground.sum())
        if count == 0:
            continue
        positives += count
        objectness_targets[index, foreground] = 1.0
        scored[index, foreground] = True
        matched = target[assigned[foreground]]
        iou, giou = _iou_and_giou(predicted[index, foreground], matched[:, 1:5])
        box_terms.append((1 - giou).sum())
        known = matched[:, 0] >= 0
        class_target = F.one_hot(matched[known, 0].long(), num_classes).float() * iou.detach().clamp(min=0)[known, None]
        class_terms.append(F.binary_cross_entropy_with_logits(rows[index, foreground][known, 5:], class_target,
                                                              reduction="sum"))
    normaliser = max(positives, 1)
    if not scored.any():
        zero = rows.sum() * 0.0
        return zero, {"label_box": 0.0, "label_objectness": 0.0, "label_classes": 0.0, "label_positives": 0.0}
    objectness = F.binary_cross_entropy_with_logits(rows[..., 4][scored], objectness_targets[scored],
                                                    reduction="sum") / normaliser
    box = torch.stack(box_terms).sum() / normaliser if box_terms else rows.new_zeros(())
    classes = torch.stack(class_terms).sum() / normaliser if class_terms else rows.new_zeros(())
    total = box_weight * box + objectness + classes
    return total, {"label_box": _value(box), "label_objectness": _value(objectness), "label_classes": _value(classes),
                   "label_positives": float(positives)}


def _value(tensor: torch.Tensor) -> float:
    return float(tensor.detach())
