"""ONNX -> TensorRT engine, for the TensorRT 10.x and 11.x builder APIs.

- 10.x: weakly typed networks; FP16/INT8 by builder flags. INT8 without Q/DQ nodes in the ONNX
  uses an entropy or MinMax calibrator over calibration images (implicit quantization).
- 11.x: strongly typed networks only; the precision flags and calibrators are gone. FP16 comes
  from an ONNX already converted to mixed precision (ModelOpt AutoCast), INT8 from Q/DQ nodes
  (``quantize_int8_qdq`` or ModelOpt); the builder then follows the graph's types.

Both: workspace limit, timing cache file, an optimization profile for the input, optional DLA
core with GPU fallback, optional 2:4 sparse weights (``BuilderFlag.SPARSE_WEIGHTS``). The engine's sidecar records the TensorRT version, GPU name, compute
capability, precision and the ONNX file's sha256, so the runtime refuses it elsewhere.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from prune_perception.errors import BackendUnavailableError, PrunePerceptionError
from prune_perception.files import atomic_output, file_sha256
from prune_perception.runtime.backends.cuda_memory import CudaDevice, open_cuda_device
from prune_perception.runtime.backends.tensorrt_backend import import_tensorrt, trt
from prune_perception.runtime.metadata import EngineInfo, load_sidecar, write_sidecar

LOGGER = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATORS = ("entropy", "minmax")


class EngineBuildError(PrunePerceptionError):
    """TensorRT could not parse the ONNX or build the engine."""


@dataclass(frozen=True)
class EngineBuildConfig:
    precision: str = "fp16"
    workspace_mb: int = 2048
    timing_cache: Path | None = None
    dla_core: int | None = None
    calibrator: str = "entropy"
    calibration_cache: Path | None = None
    device_index: int = 0
    sparse_weights: bool = False
    """Let the builder use 2:4 sparse kernels for weights that hold the pattern (Ampere or newer;
    TensorRT keeps the dense kernel where that one times faster)."""
    max_batch: int = 1
    """The optimization profile's largest batch (and the batch it is tuned for): the camera count
    of a multi-camera node. Above 1 the ONNX needs a dynamic batch axis."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise EngineBuildError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.precision not in PRECISIONS:
            raise EngineBuildError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.calibrator not in CALIBRATORS:
            raise EngineBuildError(f"calibrator must be one of {CALIBRATORS}, got {self.calibrator!r}")


def tensorrt_unavailable_reason() -> str | None:
    """Why engines cannot be built here, or None when they can."""
    try:
        import_tensorrt()
    except BackendUnavailableError as exc:
        return str(exc)
    if not hasattr(trt, "Builder"):
        return "only the lean TensorRT runtime is installed (no builder)"
    try:
        open_cuda_device(0)
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def _major_version() -> int:
    return int(trt.__version__.split(".")[0])


def _has_qdq(onnx_path: Path) -> bool:
    import onnx

    return any(node.op_type == "QuantizeLinear" for node in onnx.load(str(onnx_path)).graph.node)


def _make_calibrator(inputs: Sequence[np.ndarray], kind: str, cache: Path | None, cuda: CudaDevice) -> trt.IInt8Calibrator:
    base = trt.IInt8EntropyCalibrator2 if kind == "entropy" else trt.IInt8MinMaxCalibrator

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._inputs = list(inputs)
            self._index = 0
            self._host = cuda.pinned_empty(self._inputs[0].shape, np.dtype(np.float32))
            self._device = cuda.device_alloc(self._host.nbytes)
            self._stream = cuda.create_stream()

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._index >= len(self._inputs):
                return None
            np.copyto(self._host, self._inputs[self._index])
            self._index += 1
            cuda.copy_to_device_async(self._device, self._host, self._stream)
            cuda.synchronize(self._stream)
            return [cuda.device_pointer(self._device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.exists() else None

        def write_calibration_cache(self, data: bytes) -> None:
            if cache is not None:
                with atomic_output(cache) as tmp:
                    tmp.write_bytes(bytes(data))

    return Calibrator()


def build_engine(
    onnx_path: Path, engine_path: Path, config: EngineBuildConfig = EngineBuildConfig(),
    calibration_inputs: Sequence[np.ndarray] = (),
) -> Path:
    """Build ``engine_path`` from ``onnx_path`` (which must have a sidecar) and write its sidecar."""
    import_tensorrt()
    metadata = load_sidecar(onnx_path)
    if metadata is None:
        raise EngineBuildError(f"{onnx_path} has no sidecar; export it with prune-perception export")
    cuda = open_cuda_device(config.device_index)
    major = _major_version()
    qdq = _has_qdq(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    with cuda.activated():
        builder = trt.Builder(logger)
        strongly_typed = major >= 11 or qdq
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")
        builder_config = builder.create_builder_config()
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
        _set_precision(builder_config, config, major, qdq, calibration_inputs, cuda)
        if config.sparse_weights:
            builder_config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        input_tensor = network.get_input(0)
        spec = metadata.input
        image = (3, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, 3)
        dynamic_batch = int(input_tensor.shape[0]) < 0
        if config.max_batch > 1 and not dynamic_batch:
            raise EngineBuildError(f"max_batch {config.max_batch} needs an ONNX with a dynamic batch axis; {onnx_path} "
                                   f"has batch {int(input_tensor.shape[0])} (export it with --dynamic-batch)")
        smallest = trt.Dims([1, *image])
        largest = trt.Dims([config.max_batch if dynamic_batch else 1, *image])
        profile = builder.create_optimization_profile()
        profile.set_shape(input_tensor.name, smallest, largest, largest)  # min, opt, max
        builder_config.add_optimization_profile(profile)
        if dynamic_batch and config.precision == "int8" and not qdq and major < 11:
            # calibration runs at the profile's opt shape; the calibrator feeds batches of one
            calibration = builder.create_optimization_profile()
            calibration.set_shape(input_tensor.name, smallest, smallest, smallest)
            builder_config.set_calibration_profile(calibration)
        if config.dla_core is not None:
            builder_config.default_device_type = trt.DeviceType.DLA
            builder_config.DLA_core = config.dla_core
            builder_config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        cache_bytes = config.timing_cache.read_bytes() if config.timing_cache and config.timing_cache.exists() else b""
        timing_cache = builder_config.create_timing_cache(cache_bytes)
        builder_config.set_timing_cache(timing_cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, builder_config)
        if serialized is None:
            raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
        with atomic_output(engine_path) as tmp:
            tmp.write_bytes(bytes(serialized))
        if config.timing_cache is not None:
            with atomic_output(config.timing_cache) as tmp:
                tmp.write_bytes(bytes(timing_cache.serialize()))
    engine_info = EngineInfo(
        tensorrt_version=trt.__version__, gpu_name=cuda.name, compute_capability=cuda.compute_capability,
        precision=config.precision, onnx_sha256=file_sha256(onnx_path),
    )
    write_sidecar(engine_path, dataclasses.replace(metadata, engine=engine_info))
    LOGGER.info("built %s (%s, TensorRT %s, %s)", engine_path, config.precision, trt.__version__, cuda.name)
    return engine_path


def _set_precision(builder_config: trt.IBuilderConfig, config: EngineBuildConfig, major: int, qdq: bool,
                   calibration_inputs: Sequence[np.ndarray], cuda: CudaDevice) -> None:
    if major >= 11:
        # 11.x: strongly typed only. The graph's types decide; nothing to set, but say what is needed.
        if config.precision == "int8" and not qdq:
            raise EngineBuildError("TensorRT 11 builds INT8 only from Q/DQ ONNX: quantize it first (quantize_int8_qdq)")
        if config.precision == "fp16" and not qdq:
            LOGGER.warning("TensorRT 11 removed BuilderFlag.FP16: the engine keeps the ONNX's types; convert the "
                           "ONNX to mixed precision with ModelOpt AutoCast for FP16")
        return
    if qdq:
        return  # explicit quantization: the strongly typed network carries the precisions
    if config.precision in ("fp16", "int8"):
        builder_config.set_flag(trt.BuilderFlag.FP16)
    if config.precision == "int8":
        if not calibration_inputs:
            raise EngineBuildError("implicit INT8 needs calibration images (or a Q/DQ ONNX)")
        builder_config.set_flag(trt.BuilderFlag.INT8)
        builder_config.int8_calibrator = _make_calibrator(calibration_inputs, config.calibrator,
                                                          config.calibration_cache, cuda)
