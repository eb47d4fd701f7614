"""Specialization to the classes a vehicle needs: a student that predicts a subset of the
teacher's classes.

The student's class convolutions keep only the kept classes' output channels (their weights are
the teacher's, so nothing is lost at the start), distillation reads the teacher's scores for those
classes only, and the exported sidecar records each class's name with its id in the teacher, so
that a node publishing numeric class ids (``class_id_format: id``) means the same class whether it
runs the teacher or the student.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn

from prune_perception.errors import PrunePerceptionError


class ClassSubsetError(PrunePerceptionError):
    """A requested class does not exist in the teacher, or the subset is malformed."""


@dataclass(frozen=True)
class ClassSubset:
    """The classes a student keeps: their indices in the teacher's output, and their names."""

    teacher_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.teacher_ids)

    def to_dict(self) -> dict[str, object]:
        return {"teacher_ids": list(self.teacher_ids), "names": list(self.names)}


def resolve_classes(requested: Sequence[str | int], teacher_names: Sequence[str]) -> ClassSubset:
    """Names (or teacher indices) -> the subset, in the teacher's order.

    Raises:
        ClassSubsetError: a name or index the teacher does not have, a duplicate, or an empty list.
    """
    if not requested:
        raise ClassSubsetError("the class list is empty: give at least one class, or none to keep all")
    lookup = {name: index for index, name in enumerate(teacher_names)}
    ids = []
    for item in requested:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ClassSubsetError(f"a class must be a name or an index, got {item!r}")
        if isinstance(item, int):
            if not 0 <= item < len(teacher_names):
                raise ClassSubsetError(f"class index {item} is outside the teacher's {len(teacher_names)} classes")
            ids.append(item)
        elif item in lookup:
            ids.append(lookup[item])
        else:
            close = [name for name in teacher_names if item.lower() in name.lower() or name.lower() in item.lower()]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ClassSubsetError(f"the teacher has no class {item!r}{hint}; its classes: {', '.join(teacher_names)}")
    if len(set(ids)) != len(ids):
        raise ClassSubsetError(f"the class list names a class twice: {list(requested)}")
    ordered = tuple(sorted(ids))
    return ClassSubset(ordered, tuple(teacher_names[i] for i in ordered))


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
