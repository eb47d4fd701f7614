"""PyTorch backend: a ``torch.export`` program (.pt2), TorchScript, or a checkpoint naming its factory."""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from prune_perception.errors import BackendUnavailableError, InferenceError, ModelLoadError
from prune_perception.files import atomic_stream
from prune_perception.runtime.backends.base import InferenceBackend, parse_device
from prune_perception.runtime.metadata import ModelMetadata

CHECKPOINT_FORMAT = "prune_perception.torch_checkpoint/1"


def save_torch_checkpoint(
    path: str | Path, factory: str, state_dict: dict[str, Any], factory_kwargs: dict[str, Any] | None = None
) -> None:
    """Save a checkpoint the torch backend can load without pickled code.

    Args:
        factory: ``"package.module:callable"`` that builds the ``nn.Module`` from ``factory_kwargs``;
            the module's forward must return the detector's raw output ``[1, N, 5 + C]``.
        state_dict: the weights, loaded with ``load_state_dict(strict=True)``.
    """
    import torch

    payload = {
        "format": CHECKPOINT_FORMAT,
        "factory": factory,
        "factory_kwargs": dict(factory_kwargs or {}),
        "state_dict": state_dict,
    }
    with atomic_stream(path) as stream:
        torch.save(payload, stream)


class TorchBackend(InferenceBackend):
    """Runs a PyTorch model on the CPU or a CUDA GPU.

    Accepted files: an exported program (``torch.export.save``, ``.pt2``), a TorchScript archive
    (``torch.jit.save``, deprecated by PyTorch but still common), or a checkpoint written by
    :func:`save_torch_checkpoint`. Checkpoints load with ``weights_only=True``: no pickled code runs.
    """

    name = "torch"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        metadata: ModelMetadata | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        super().__init__(model_path, device)
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError("the torch backend needs PyTorch, which is not installed") from exc
        self._torch = torch
        kind, index = parse_device(device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device!r} requested but torch sees no CUDA GPU")
        use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
        self.torch_device = torch.device(f"cuda:{index}" if use_cuda else "cpu")
        self.device = str(self.torch_device)
        if intra_op_threads > 0:
            torch.set_num_threads(intra_op_threads)
        self.model = load_torch_model(self.model_path).to(self.torch_device)
        self._host_input: Any = None  # pinned staging buffer for CUDA copies

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        torch = self._torch
        try:
            with torch.inference_mode():
                inputs = torch.from_numpy(tensor)
                if self.torch_device.type == "cuda":
                    if self._host_input is None or self._host_input.shape != inputs.shape:
                        self._host_input = torch.empty(inputs.shape, dtype=inputs.dtype, pin_memory=True)
                    self._host_input.copy_(inputs)
                    inputs = self._host_input.to(self.torch_device, non_blocking=True)
                outputs = self.model(inputs)
                if isinstance(outputs, (tuple, list)):
                    outputs = outputs[0]
                return outputs.float().cpu().numpy()
        except Exception as exc:
            raise InferenceError(f"torch model failed on input of shape {tensor.shape}: {exc}") from exc


def load_torch_model(path: str | Path) -> Any:
    """The ``nn.Module`` in a ``.pt2``, TorchScript or checkpoint file, in eval mode on the CPU.

    Pruned checkpoints (``models.pruned_checkpoint``) are rebuilt from the factory
    they name, then reshaped to the pruned layers.

    Raises:
        ModelLoadError: unreadable file, unknown format, missing factory or weights that do not fit.
    """
    import torch

    path = Path(path)
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module()  # exported graphs are already in eval mode
        if _is_torchscript(path):
            return torch.jit.load(str(path), map_location="cpu").eval()
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt archives
        raise ModelLoadError(f"cannot load torch model {path}: {exc}") from exc
    from prune_perception.models.pruned_checkpoint import PRUNED_CHECKPOINT_FORMAT, apply_pruned_state

    formats = (CHECKPOINT_FORMAT, PRUNED_CHECKPOINT_FORMAT)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") not in formats:
        raise ModelLoadError(
            f"{path} is neither TorchScript nor a checkpoint of format {formats} "
            "(see save_torch_checkpoint and models.pruned_checkpoint.save_pruned_checkpoint)"
        )
    factory = _import_factory(checkpoint["factory"])
    model = factory(**checkpoint.get("factory_kwargs", {}))
    try:
        if checkpoint["format"] == PRUNED_CHECKPOINT_FORMAT:
            apply_pruned_state(model, checkpoint["pruned_state"])  # reshapes the layers, then loads
        else:
            model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"{path}: weights do not fit {checkpoint['factory']}: {exc}") from exc
    return model.eval()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _import_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelLoadError(f"cannot import the model factory {spec!r}: {exc}") from exc
