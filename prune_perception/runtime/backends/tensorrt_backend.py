"""TensorRT backend: deserialize an engine and run it with ``execute_async_v3`` on a CUDA stream.

Written against the name-based tensor API shared by TensorRT 10.x and 11.x
(``num_io_tensors``, ``get_tensor_name/mode/shape/dtype``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). It avoids what 11.x removed
(``ICudaEngine.device_memory_size``, the binding API). I/O buffers are allocated once: pinned
host memory and device memory through pycuda or cuda-python (``cuda_memory``), and
``infer()`` only copies in, executes and copies out, asynchronously on one stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

try:  # this module is only imported when the tensorrt backend is chosen
    import tensorrt as trt
except ImportError:  # import_tensorrt() explains what is missing
    trt = None  # type: ignore[assignment]

from prune_perception.errors import BackendUnavailableError, InferenceError, ModelLoadError
from prune_perception.runtime.backends.base import InferenceBackend, parse_device
from prune_perception.runtime.backends.cuda_memory import CudaDevice, open_cuda_device
from prune_perception.runtime.metadata import EngineInfo, ModelMetadata

SUPPORTED_MAJOR_VERSIONS = (10, 11)


def import_tensorrt() -> ModuleType:
    """Import the TensorRT runtime, or raise a clear error.

    ``tensorrt-stubs`` installs a ``tensorrt`` folder with only ``.pyi`` files, which imports as
    an empty namespace package; that is reported as "not installed", not used.
    """
    if trt is None:
        raise BackendUnavailableError(
            "the tensorrt backend needs the TensorRT Python runtime (pip install tensorrt, or "
            "python3-libnvinfer on JetPack), and it is not importable here"
        )
    if not hasattr(trt, "Runtime"):
        raise BackendUnavailableError(
            "the tensorrt backend needs the TensorRT Python runtime; only type stubs are installed here"
        )
    major = _version_numbers(trt.__version__)[:1]
    if major and major[0] not in SUPPORTED_MAJOR_VERSIONS:
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} is not supported; this backend supports major versions {SUPPORTED_MAJOR_VERSIONS}"
        )
    return trt


def _version_numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:4])


def check_engine_platform(
    engine_path: Path, info: EngineInfo | None, tensorrt_version: str, gpu_name: str, compute_capability: str
) -> None:
    """Refuse an engine whose sidecar names another TensorRT version or GPU.

    Engines are specific to the TensorRT version and the GPU model they were built on; running
    one elsewhere fails to deserialize at best. Nothing is checked when there is no sidecar.

    Raises:
        ModelLoadError: with both platforms named and how to fix it.
    """
    if info is None:
        return
    problems = []
    recorded, running = _version_numbers(info.tensorrt_version), _version_numbers(tensorrt_version)
    common = min(len(recorded), len(running))  # "10.3.0" names every 10.3.0.x build
    if common < 3 or recorded[:common] != running[:common]:
        problems.append(f"TensorRT {info.tensorrt_version} (this machine has {tensorrt_version})")
    if info.compute_capability != compute_capability or info.gpu_name != gpu_name:
        problems.append(
            f"GPU '{info.gpu_name}' sm_{info.compute_capability.replace('.', '')} "
            f"(this machine has '{gpu_name}' sm_{compute_capability.replace('.', '')})"
        )
    if problems:
        raise ModelLoadError(
            f"engine {engine_path} was built for " + " and ".join(problems)
            + "; rebuild it on this machine from its ONNX file with `prune-perception build-engine`"
        )


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    """TensorRT ``Dims`` as a tuple (indexing is what both 10.x and 11.x declare)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


@dataclass
class _IOBuffer:
    name: str
    shape: tuple[int, ...]
    host: np.ndarray
    device: Any


class TensorRTBackend(InferenceBackend):
    """Runs a serialized TensorRT engine on a CUDA GPU.

    Example:
        >>> backend = TensorRTBackend("yolox_nano.engine", device="cuda:0", metadata=metadata)
        >>> output = backend.infer(tensor)
    """

    name = "tensorrt"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        metadata: ModelMetadata | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        super().__init__(model_path, device)
        import_tensorrt()
        kind, index = parse_device(device)
        if kind == "cpu":
            raise BackendUnavailableError("TensorRT runs only on a CUDA GPU; use device 'cuda' or backend 'onnxruntime'")
        self._cuda: CudaDevice = open_cuda_device(index)
        self.device = f"cuda:{index}"
        check_engine_platform(
            self.model_path, metadata.engine if metadata else None,
            trt.__version__, self._cuda.name, self._cuda.compute_capability,
        )
        self._logger = trt.Logger(trt.Logger.WARNING)
        with self._cuda.activated():
            self._runtime: trt.Runtime = trt.Runtime(self._logger)
            engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
            if engine is None:
                raise ModelLoadError(
                    f"TensorRT {trt.__version__} could not deserialize {self.model_path}: the file is corrupt, "
                    "or it was built by another TensorRT version or for another GPU"
                )
            self._engine: trt.ICudaEngine = engine
            self._context: trt.IExecutionContext = engine.create_execution_context()
            self._stream = self._cuda.create_stream()
            self._inputs, self._outputs = self._allocate_buffers(metadata)
        output_name = metadata.decoder.output_name if metadata else None
        self._result = next((b for b in self._outputs if b.name == output_name), self._outputs[0])

    def _allocate_buffers(self, metadata: ModelMetadata | None) -> tuple[list[_IOBuffer], list[_IOBuffer]]:
        engine, context = self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(input_names) != 1 or not output_names:
            raise ModelLoadError(f"expected an engine with one input and at least one output, got {names}")

        self._max_batch = 1
        for name in input_names:
            shape = _dims(engine.get_tensor_shape(name))
            if any(dim < 0 for dim in shape):  # dynamic: the profile's largest batch at the metadata's size
                if metadata is None:
                    raise ModelLoadError(f"engine input {name!r} has dynamic shape {shape}; a sidecar must give the size")
                self._max_batch = _dims(engine.get_tensor_profile_shape(name, 0)[2])[0] if shape[0] < 0 else shape[0]
                spec = metadata.input
                image = (3, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, 3)
                shape = (self._max_batch, *image)
                if not context.set_input_shape(name, shape):
                    raise ModelLoadError(f"engine input {name!r} does not accept shape {shape}")
            else:
                self._max_batch = shape[0]
        self._batch = self._max_batch

        buffers: dict[str, _IOBuffer] = {}
        for name in names:
            shape = _dims(context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            host = self._cuda.pinned_empty(shape, dtype)
            allocation = self._cuda.device_alloc(host.nbytes)
            if not context.set_tensor_address(name, self._cuda.device_pointer(allocation)):
                raise ModelLoadError(f"TensorRT refused the address of tensor {name!r}")
            buffers[name] = _IOBuffer(name, shape, host, allocation)
        return [buffers[n] for n in input_names], [buffers[n] for n in output_names]

    def input_shape(self) -> tuple[int, ...] | None:
        return (1, *self._inputs[0].shape[1:]) if self._max_batch > 1 else self._inputs[0].shape

    def output_shape(self) -> tuple[int, ...] | None:
        return (1, *self._result.shape[1:]) if self._max_batch > 1 else self._result.shape

    def max_batch(self) -> int | None:
        """The largest batch of the engine's optimization profile (1 for a fixed-batch engine)."""
        return self._max_batch

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        source = self._inputs[0]
        batch = tensor.shape[0]
        if tensor.shape[1:] != source.shape[1:] or not 1 <= batch <= self._max_batch:
            raise InferenceError(f"engine input {source.name!r} takes shape {source.shape} (batch 1 to "
                                 f"{self._max_batch}), got {tensor.shape}")
        with self._cuda.activated():
            if batch != self._batch:  # buffers hold the largest batch; run a smaller one in their first rows
                if not self._context.set_input_shape(source.name, (batch, *source.shape[1:])):
                    raise InferenceError(f"engine input {source.name!r} refused batch {batch}")
                self._batch = batch
            np.copyto(source.host[:batch], tensor, casting="same_kind")  # casts to fp16 for fp16-I/O engines
            self._cuda.copy_to_device_async(source.device, source.host[:batch], self._stream)
            if not self._context.execute_async_v3(self._cuda.stream_handle(self._stream)):
                raise InferenceError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            for output in self._outputs:
                self._cuda.copy_to_host_async(output.host[:batch], output.device, self._stream)
            self._cuda.synchronize(self._stream)
        return self._result.host[:batch].astype(np.float32, copy=True)

    def close(self) -> None:
        # Drop TensorRT objects before the memory they point at; the CUDA library frees the rest.
        for attribute in ("_context", "_engine", "_runtime"):
            if hasattr(self, attribute):
                delattr(self, attribute)
