"""Pinned host buffers, device buffers, streams and copies, over pycuda or cuda-python.

TensorRT needs raw device pointers and a CUDA stream; whichever of pycuda and cuda-python is
installed provides them. ``open_cuda_device`` prefers pycuda.
"""

from __future__ import annotations

import contextlib
import ctypes
from abc import ABC, abstractmethod
from typing import Any, Iterator

import numpy as np

from prune_perception.errors import BackendUnavailableError


class CudaDevice(ABC):
    """One CUDA GPU with the few memory operations an inference loop needs."""

    name: str
    compute_capability: str  # "major.minor", e.g. "8.7" for Orin

    @abstractmethod
    def activated(self) -> contextlib.AbstractContextManager[None]:
        """Make this device current on the calling thread (node worker threads differ)."""

    @abstractmethod
    def create_stream(self) -> Any: ...

    @abstractmethod
    def stream_handle(self, stream: Any) -> int: ...

    @abstractmethod
    def synchronize(self, stream: Any) -> None: ...

    @abstractmethod
    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A page-locked host array, so that async copies really are asynchronous."""

    @abstractmethod
    def device_alloc(self, nbytes: int) -> Any: ...

    @abstractmethod
    def device_pointer(self, allocation: Any) -> int: ...

    @abstractmethod
    def copy_to_device_async(self, allocation: Any, host: np.ndarray, stream: Any) -> None: ...

    @abstractmethod
    def copy_to_host_async(self, host: np.ndarray, allocation: Any, stream: Any) -> None: ...


class PycudaDevice(CudaDevice):
    def __init__(self, index: int) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        cuda.init()
        count = cuda.Device.count()
        if index >= count:
            raise BackendUnavailableError(f"CUDA device {index} requested, but {count} GPU(s) are visible")
        device = cuda.Device(index)
        self.name = device.name()
        self.compute_capability = "{}.{}".format(*device.compute_capability())
        # The primary context is the one the CUDA runtime (and so TensorRT) uses.
        self._context = device.retain_primary_context()

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def create_stream(self) -> Any:
        return self._cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self._cuda.pagelocked_empty(shape, dtype)

    def device_alloc(self, nbytes: int) -> Any:
        return self._cuda.mem_alloc(max(nbytes, 1))

    def device_pointer(self, allocation: Any) -> int:
        return int(allocation)

    def copy_to_device_async(self, allocation: Any, host: np.ndarray, stream: Any) -> None:
        self._cuda.memcpy_htod_async(allocation, host, stream)

    def copy_to_host_async(self, host: np.ndarray, allocation: Any, stream: Any) -> None:
        self._cuda.memcpy_dtoh_async(host, allocation, stream)


class CudaPythonDevice(CudaDevice):
    def __init__(self, index: int) -> None:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python
        self._cudart = cudart
        self._index = index
        count = self._check(cudart.cudaGetDeviceCount())
        if index >= count:
            raise BackendUnavailableError(f"CUDA device {index} requested, but {count} GPU(s) are visible")
        self._check(cudart.cudaSetDevice(index))
        props = self._check(cudart.cudaGetDeviceProperties(index))
        raw_name = props.name
        self.name = (raw_name.split(b"\0", 1)[0].decode() if isinstance(raw_name, bytes) else str(raw_name)).strip()
        self.compute_capability = f"{props.major}.{props.minor}"
        self._host_buffers: list[int] = []

    def _check(self, result: tuple) -> Any:
        """cuda-python returns ``(error, value...)``; turn errors into exceptions."""
        error, *values = result
        if int(error) != 0:
            _, message = self._cudart.cudaGetErrorString(error)
            raise BackendUnavailableError(f"CUDA error {int(error)}: {message.decode() if isinstance(message, bytes) else message}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        self._check(self._cudart.cudaSetDevice(self._index))
        yield

    def create_stream(self) -> Any:
        return self._check(self._cudart.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._check(self._cudart.cudaStreamSynchronize(stream))

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        pointer = self._check(self._cudart.cudaMallocHost(nbytes))
        self._host_buffers.append(pointer)
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(pointer))
        return raw[: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)

    def device_alloc(self, nbytes: int) -> Any:
        return self._check(self._cudart.cudaMalloc(max(nbytes, 1)))

    def device_pointer(self, allocation: Any) -> int:
        return int(allocation)

    def copy_to_device_async(self, allocation: Any, host: np.ndarray, stream: Any) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._cudart.cudaMemcpyAsync(int(allocation), host.ctypes.data, host.nbytes, kind, stream))

    def copy_to_host_async(self, host: np.ndarray, allocation: Any, stream: Any) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._cudart.cudaMemcpyAsync(host.ctypes.data, int(allocation), host.nbytes, kind, stream))


def open_cuda_device(index: int = 0) -> CudaDevice:
    """The GPU ``index`` through pycuda, else cuda-python.

    Raises:
        BackendUnavailableError: neither library is installed, or there is no such GPU.
    """
    errors = []
    for device_class in (PycudaDevice, CudaPythonDevice):
        try:
            return device_class(index)
        except ImportError as exc:
            errors.append(f"{device_class.__name__}: {exc}")
        except BackendUnavailableError:
            raise
        except Exception as exc:  # e.g. pycuda's LogicError when no driver or GPU is present
            raise BackendUnavailableError(f"no usable CUDA GPU {index}: {exc}") from exc
    raise BackendUnavailableError(
        "CUDA memory for TensorRT needs pycuda or cuda-python, and neither imports here (" + "; ".join(errors) + ")"
    )
