"""Load detector weights from other formats onto the PyTorch YOLOX.

- :func:`load_onnx_weights`: from an ONNX export whose BatchNorms were folded into the convs
  (e.g. ``yolox_nano.onnx``). Convs are paired by module path where the export kept it in the node
  names, else in execution order; every pair is checked for shape, stride, padding and groups, so
  a model of another size or layout fails loudly.
- :func:`load_official_checkpoint`: from an official YOLOX ``.pth`` (``{"model": state_dict}``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from prune_perception.errors import ModelLoadError
from prune_perception.models.hooks import hooked_eval
from prune_perception.models.yolox import BaseConv, Focus, strided_weight_as_focus


class WeightImportError(ModelLoadError):
    """The weights do not fit the model (another size, layout or class count)."""


def convs_in_execution_order(model: nn.Module, input_size: int) -> list[nn.Conv2d]:
    """Every Conv2d of ``model`` in the order a forward pass runs them."""
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_pre_hook(lambda m, _: order.append(m)) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with hooked_eval(model, hooks), torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    return order


def _onnx_convs(onnx_path: Path):
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as exc:  # protobuf decode errors and missing files
        raise ModelLoadError(f"cannot read ONNX model {onnx_path}: {exc}") from exc
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:  # exporters deduplicate equal tensors through Identity or Constant nodes
        if node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
        elif node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = numpy_helper.to_array(value.t)
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        missing = [name for name in node.input[1:] if name and name not in constants]
        if missing:
            raise WeightImportError(f"ONNX conv {node.name} reads non-constant weights {missing}")
        weight = constants[node.input[1]]
        bias = constants[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        convs.append((node.name, weight, bias, attributes))
    return convs


def _fold_into(module_conv: nn.Conv2d, parent: nn.Module | None, weight: np.ndarray, bias: np.ndarray | None) -> None:
    module_conv.weight.data.copy_(torch.from_numpy(np.array(weight)))
    bias_tensor = torch.from_numpy(np.array(bias)) if bias is not None else torch.zeros(weight.shape[0])
    if isinstance(parent, BaseConv):
        # conv(x) + b  ==  BN(conv(x)) with gamma 1, beta b, mean 0, var 1 - eps.
        bn = parent.bn
        bn.weight.data.fill_(1.0)
        bn.bias.data.copy_(bias_tensor)
        bn.running_mean.data.zero_()
        bn.running_var.data.fill_(1.0 - bn.eps)
    elif module_conv.bias is not None:
        module_conv.bias.data.copy_(bias_tensor)
    elif bias is not None and np.any(bias):
        raise WeightImportError("ONNX conv has a bias but the model's conv has neither bias nor BatchNorm")


def load_onnx_weights(model: nn.Module, onnx_path: str | Path, input_size: int) -> nn.Module:
    """Copy the weights of a BN-folded ONNX export onto ``model`` (in place) and return it.

    Raises:
        WeightImportError: when the convs do not pair up one to one (count, shapes, strides,
            padding or groups differ): the ONNX is of another model.
    """
    onnx_path = Path(onnx_path)
    torch_convs = convs_in_execution_order(model, input_size)
    onnx_convs = _onnx_convs(onnx_path)
    if len(torch_convs) != len(onnx_convs):
        raise WeightImportError(
            f"{onnx_path.name} has {len(onnx_convs)} convolutions, the model {len(torch_convs)}: another architecture"
        )
    onnx_convs = _paired_by_name(model, torch_convs, onnx_convs)
    parents = {child: parent for parent in model.modules() for child in parent.children()}
    for index, (conv, (name, weight, bias, attributes)) in enumerate(zip(torch_convs, onnx_convs)):
        expected = {
            "shape": tuple(conv.weight.shape), "stride": list(conv.stride),
            "group": conv.groups, "pads": [conv.padding[0], conv.padding[1]] * 2,
        }
        found = {
            "shape": tuple(weight.shape), "stride": list(attributes.get("strides", [1, 1])),
            "group": attributes.get("group", 1), "pads": list(attributes.get("pads", [0, 0, 0, 0])),
        }
        if isinstance(parents.get(parents.get(conv)), Focus) and found["shape"] != expected["shape"]:
            # our own exports write Focus as one 2k x 2k stride-2 conv (Focus.deployment_form)
            weight = strided_weight_as_focus(torch.from_numpy(np.array(weight))).numpy()
            pads = [conv.padding[0], conv.padding[1]] * 2
            found = {**found, "shape": tuple(weight.shape), "stride": [s // 2 for s in found["stride"]],
                     "pads": pads if found["pads"] == [2 * p for p in pads] else found["pads"]}
        if expected != found:
            raise WeightImportError(
                f"conv #{index} ({name}) of {onnx_path.name} does not fit the model: expected {expected}, found {found}"
            )
        _fold_into(conv, parents.get(conv), weight, bias)
    return model


def _paired_by_name(model: nn.Module, torch_convs: list[nn.Conv2d], onnx_convs: list) -> list:
    """ONNX convs in the order of ``torch_convs``: by name when the export kept the module paths
    (``torch.onnx.export`` names a conv ``/backbone/stem/conv/conv/Conv``), which holds whatever
    order the exporter or a simplifier put the nodes in; otherwise in graph order."""
    module_names = {module: name for name, module in model.named_modules()}
    by_path = {_module_path(item[0]): item for item in onnx_convs}
    wanted = [module_names[conv] for conv in torch_convs]
    if len(by_path) == len(onnx_convs) and all(name in by_path for name in wanted):
        return [by_path[name] for name in wanted]
    return onnx_convs


def _module_path(node_name: str) -> str:
    """``/head/cls_convs.0/cls_convs.0.0/dconv/conv/Conv`` -> ``head.cls_convs.0.0.dconv.conv``: the
    exporter's scopes, where a container's child repeats the container's name with ``.<index>``."""
    parts: list[str] = []
    for segment in node_name.strip("/").split("/")[:-1]:
        if parts and segment.startswith(parts[-1] + "."):
            parts[-1] = segment
        else:
            parts.append(segment)
    return ".".join(parts)


def load_official_checkpoint(model: nn.Module, checkpoint_path: str | Path) -> nn.Module:
    """Load an official YOLOX checkpoint (``{"model": state_dict, ...}`` or a bare state_dict)."""
    checkpoint_path = Path(checkpoint_path)
    try:
        checkpoint = torch.load(str(checkpoint_path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load checkpoint {checkpoint_path}: {exc}") from exc
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise WeightImportError(f"{checkpoint_path} holds no state_dict")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise WeightImportError(f"{checkpoint_path} does not fit the model: {exc}") from exc
    return model
