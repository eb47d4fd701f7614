"""PyTorch detector -> one ONNX file the runtime loads: opset 17, BatchNorm folded, modules in
their deployment form, optionally the box decode in the graph, simplified with onnxslim, checked
against PyTorch, with its sidecar.

Nothing is written unless the exported model reproduces the PyTorch outputs: the max absolute
difference, relative to the largest output magnitude (raw logits are O(1), decoded boxes O(input
size)), must stay within ``parity_threshold``. The file and its sidecar are written atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from prune_perception.errors import PrunePerceptionError
from prune_perception.files import atomic_output
from prune_perception.runtime.metadata import DecoderSpec, InputSpec, ModelMetadata, write_sidecar

LOGGER = logging.getLogger(__name__)
OPSET = 17


class ExportParityError(PrunePerceptionError):
    """The exported model does not reproduce the PyTorch model's outputs."""


@dataclass(frozen=True)
class OnnxExportResult:
    path: Path
    sidecar: Path
    max_abs_diff: float
    relative_diff: float
    parity_threshold: float
    nodes_before_simplify: int
    nodes_after_simplify: int


def deployment_form(model: nn.Module) -> nn.Module:
    """``model``, or a copy of it in which every submodule that offers a ``deployment_form()``
    (the same function as a faster graph, e.g. YOLOX's Focus as one strided convolution) is
    replaced by it. The export's parity check compares the ONNX file against ``model`` itself."""
    names = [name for name, module in model.named_modules() if name and hasattr(module, "deployment_form")]
    if not names:
        return model
    deployed = copy.deepcopy(model)
    for name in names:
        deployed.set_submodule(name, deployed.get_submodule(name).deployment_form())
    return deployed


def export_onnx(
    model: nn.Module,
    output_path: str | Path,
    class_names: Sequence[str],
    input_spec: InputSpec,
    *,
    strides: Sequence[int] = (8, 16, 32),
    decode_in_graph: bool = False,
    simplify: bool = True,
    sample_inputs: Sequence[np.ndarray] = (),
    parity_threshold: float = 1e-3,
    class_ids: Sequence[int] | None = None,
    dynamic_batch: bool = False,
) -> OnnxExportResult:
    """Export ``model`` (a YOLOX-layout detector) to ``output_path`` and write its sidecar.

    Args:
        input_spec: how images become the model input (written to the sidecar for the runtime).
        decode_in_graph: put the grid decode into the graph (the model must have ``decode_in_graph``).
        sample_inputs: preprocessed ``[1, 3, H, W]`` float32 tensors for the parity check (real
            images are best); a random tensor is used when none is given.
        parity_threshold: the largest accepted ``max |onnx - torch| / max |torch|``.
        class_ids: for a model specialized to some of its teacher's classes, each class's id in the
            teacher (recorded in the sidecar, so the node's numeric class ids keep their meaning).
        dynamic_batch: give the input and output a dynamic batch axis, so that one call runs the
            frames of several cameras (checked with a batch of two as well).

    Raises:
        ExportParityError: the exported model disagrees with PyTorch; nothing is written.
    """
    import onnx
    import onnxruntime

    output_path = Path(output_path)
    was_training, previous_decode = model.training, getattr(model, "decode_in_graph", False)
    if decode_in_graph and not hasattr(model, "decode_in_graph"):
        raise PrunePerceptionError(f"{type(model).__name__} cannot put the decode in the graph")
    model.eval()
    if hasattr(model, "decode_in_graph"):
        model.decode_in_graph = decode_in_graph
    try:
        shape = (1, 3, input_spec.height, input_spec.width)
        samples = [np.asarray(s, np.float32) for s in sample_inputs] or [
            np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
        ]
        input_name = input_spec.name or "images"
        if dynamic_batch:
            samples.append(np.concatenate([samples[0], samples[-1]]))
        with atomic_output(output_path) as tmp:
            with torch.no_grad():
                torch.onnx.export(
                    deployment_form(model), torch.from_numpy(samples[0]), str(tmp), opset_version=OPSET, dynamo=False,
                    input_names=[input_name], output_names=["output"], do_constant_folding=True,
                    dynamic_axes={input_name: {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None,
                )
            graph = onnx.load(str(tmp))
            nodes_before = len(graph.graph.node)
            if simplify:
                import onnxslim

                graph = onnxslim.slim(graph)
                onnx.save(graph, str(tmp))
            nodes_after = len(graph.graph.node)
            session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            max_abs_diff, largest = 0.0, 0.0
            for sample in samples:
                with torch.no_grad():
                    expected = model(torch.from_numpy(sample)).numpy()
                actual = session.run(None, {session.get_inputs()[0].name: sample})[0]
                max_abs_diff = max(max_abs_diff, float(np.abs(actual - expected).max()))
                largest = max(largest, float(np.abs(expected).max()))
            relative_diff = max_abs_diff / max(largest, 1e-12)
            if not relative_diff <= parity_threshold:
                raise ExportParityError(
                    f"ONNX export differs from PyTorch by {max_abs_diff:.3g} ({relative_diff:.3g} of the output range, "
                    f"threshold {parity_threshold:g}); {output_path} was not written"
                )
            # The sidecar first, the model last: a run killed in between leaves no model without
            # its sidecar (a resumed pipeline takes an existing model file as done).
            metadata = ModelMetadata(
                input=dataclasses.replace(input_spec, name=input_name),
                decoder=DecoderSpec(strides=tuple(strides), decoded_in_graph=decode_in_graph, output_name="output"),
                class_names=tuple(class_names),
                class_ids=tuple(int(i) for i in class_ids) if class_ids is not None else None,
            )
            sidecar = write_sidecar(output_path, metadata, model_file=tmp)
    finally:
        model.train(was_training)
        if hasattr(model, "decode_in_graph"):
            model.decode_in_graph = previous_decode
    LOGGER.info("exported %s: %d -> %d nodes, max |onnx - torch| = %.3g (%.3g relative)",
                output_path, nodes_before, nodes_after, max_abs_diff, relative_diff)
    return OnnxExportResult(output_path, sidecar, max_abs_diff, relative_diff, parity_threshold, nodes_before, nodes_after)
