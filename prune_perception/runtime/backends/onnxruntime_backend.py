"""ONNX Runtime backend: CPU by default, the CUDA execution provider when available."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prune_perception.errors import BackendUnavailableError, InferenceError, ModelLoadError
from prune_perception.runtime.backends.base import InferenceBackend, parse_device
from prune_perception.runtime.metadata import ModelMetadata

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
CPU_DISABLED_OPTIMIZERS = ("QuickGeluFusion",)
"""onnxruntime fuses SiLU (``x * sigmoid(x)``) into a QuickGelu kernel that has no blocked (NCHWc)
layout, so on the CPU every SiLU of a conv net is wrapped in two layout reorders. Measured on
YOLOX-Nano at 416 (2-core x86): 10.6 ms with the fusion, 8.9 ms without (1.2x), identical outputs:
the Sigmoid and Mul then stay in the convolutions' blocked layout."""


class OnnxRuntimeBackend(InferenceBackend):
    """Runs an ONNX model with onnxruntime.

    Args:
        model_path: the ``.onnx`` file.
        device: ``auto`` (CUDA provider if this onnxruntime has it, else CPU), ``cpu``, ``cuda[:N]``.
        metadata: names the input and output tensors to use (the first of each by default).
        intra_op_threads: CPU threads for one inference; 0 lets onnxruntime decide.
        allow_spinning: keep worker threads spinning between runs. Off by default: on a small
            CPU shared with a ROS executor, spinning threads steal the cores the node needs.
        fuse_silu: keep onnxruntime's QuickGelu fusion of SiLU on the CPU (its default; see
            ``CPU_DISABLED_OPTIMIZERS``). Off by default; on to time a model as plain onnxruntime runs it.

    Example:
        >>> backend = OnnxRuntimeBackend("yolox_nano.onnx", device="cpu")
        >>> output = backend.infer(np.zeros((1, 3, 416, 416), np.float32))
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        metadata: ModelMetadata | None = None,
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
        fuse_silu: bool = False,
    ) -> None:
        super().__init__(model_path, device)
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
            raise BackendUnavailableError("onnxruntime is not installed") from exc

        kind, index = parse_device(device)
        available = ort.get_available_providers()
        if kind == "cpu":
            providers: list = [CPU_PROVIDER]
        elif CUDA_PROVIDER in available:
            providers = [(CUDA_PROVIDER, {"device_id": index}), CPU_PROVIDER]
        elif kind == "cuda":
            raise BackendUnavailableError(
                f"device {device!r} needs onnxruntime's {CUDA_PROVIDER}, but this onnxruntime only has "
                f"{available}; install onnxruntime-gpu or use device 'cpu'"
            )
        else:
            providers = [CPU_PROVIDER]

        options = session_options(intra_op_threads, allow_spinning)
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=providers,
                disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS) if providers == [CPU_PROVIDER] and not fuse_silu else None)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load ONNX model {self.model_path}: {reason}") from exc

        self._input = _pick(self.session.get_inputs(), metadata.input.name if metadata else None, "input")
        self._output = _pick(self.session.get_outputs(), metadata.decoder.output_name if metadata else None, "output")
        self.input_name, self.output_name = self._input.name, self._output.name
        self.device = f"cuda:{index}" if self.session.get_providers()[0] == CUDA_PROVIDER else "cpu"

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: tensor})[0]
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed on input of shape {tensor.shape}: {exc}") from exc

    def input_shape(self) -> tuple[int, ...] | None:
        return _static_shape(self._input.shape)

    def model_properties(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def output_shape(self) -> tuple[int, ...] | None:
        return _static_shape(self._output.shape)

    def max_batch(self) -> int | None:
        batch = self._input.shape[0] if self._input.shape else None
        return batch if isinstance(batch, int) and batch > 0 else None


def session_options(intra_op_threads: int = 0, allow_spinning: bool = False):
    """The onnxruntime session options of this backend (full graph optimization, no spinning)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return options


def cpu_session(model: str | Path | bytes, intra_op_threads: int = 0):
    """A CPU session over a model file or serialized model, as this backend makes it (used to time
    single layers the way the backend runs them)."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=session_options(intra_op_threads), providers=[CPU_PROVIDER],
                                disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))


def _pick(values, name: str | None, kind: str):
    if name is None:
        return values[0]
    for value in values:
        if value.name == name:
            return value
    raise ModelLoadError(f"the model has no {kind} named {name!r}; it has {[v.name for v in values]}")


def _static_shape(shape) -> tuple[int, ...] | None:
    """The shape, with a dynamic batch axis read as one image; None if another axis is dynamic."""
    if shape and not (isinstance(shape[0], int) and shape[0] > 0):
        shape = [1, *shape[1:]]
    if all(isinstance(dim, int) and dim > 0 for dim in shape):
        return tuple(shape)
    return None
