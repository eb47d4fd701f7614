"""Specialization to the classes a vehicle needs: a student that predicts a subset of the
teacher's classes.

The student's class convolutions keep only the kept classes' output channels (their weights are
the teacher's, so nothing is lost at the start), distillation reads the teacher's scores for those
classes only, and the exported sidecar records each class's name with its id in the teacher, so
that a node publishing numeric class ids (``class_id_format: id``) means the same class whether it
runs the teacher or the student.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn

from prune_perception.runtime.class_names import ClassSubset, ClassSubsetError, resolve_classes

__all__ = ["ClassSubset", "ClassSubsetError", "class_prediction_convs", "resolve_classes", "select_teacher_classes",
           "specialize_head"]


def class_prediction_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The per-level convolutions whose output channels are the class scores."""
    head = getattr(model, "head", None)
    if head is None or not hasattr(head, "cls_preds"):
        raise ClassSubsetError(f"{type(model).__name__} has no head.cls_preds to specialize")
    return list(head.cls_preds)


def specialize_head(model: nn.Module, subset: ClassSubset) -> nn.Module:
    """Keep only ``subset``'s class channels in the head (in place): a structural cut that
    Torch-Pruning's checkpoint format records, so the student saves and reloads as usual."""
    for conv in class_prediction_convs(model):
        if conv.out_channels <= max(subset.teacher_ids):
            raise ClassSubsetError(f"the head predicts {conv.out_channels} classes; cannot keep index "
                                   f"{max(subset.teacher_ids)}")
        removed = [index for index in range(conv.out_channels) if index not in set(subset.teacher_ids)]
        if removed:
            tp.prune_conv_out_channels(conv, removed)
    head = model.head
    if hasattr(head, "num_classes"):
        head.num_classes = len(subset)
    return model


def select_teacher_classes(levels: Sequence[torch.Tensor], teacher_ids: Sequence[int]) -> list[torch.Tensor]:
    """Per-level teacher logits ``[B, 5 + C, H, W]`` -> ``[B, 5 + K, H, W]``: box and objectness, then
    the kept classes' scores, in the student's order."""
    index = torch.as_tensor([0, 1, 2, 3, 4, *(5 + i for i in teacher_ids)], device=levels[0].device)
    return [level.index_select(1, index) for level in levels]
