"""Small models for tests: a YOLOX-shaped torch model (importable as a checkpoint factory) and an ONNX
'detector' with a known, constant output."""

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from prune_perception.runtime.metadata import DecoderSpec, InputSpec, ModelMetadata, write_sidecar


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


def constant_detector(path, box_xyxy, score, classes=("thing", "other"), size=64):
    """An ONNX 'detector' that reports the same single box (decoded in graph) on every image."""
    rows = (size // 8) ** 2 + (size // 16) ** 2 + (size // 32) ** 2
    table = np.zeros((1, rows, 5 + len(classes)), np.float32)
    x0, y0, x1, y1 = box_xyxy
    table[0, 0, :5] = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, 1.0]
    table[0, 0, 5] = score
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "constant", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, rows, 5 + len(classes)])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    write_sidecar(path, ModelMetadata(InputSpec(width=size, height=size), DecoderSpec(decoded_in_graph=True), tuple(classes)))
    return path
