"""TensorRT: platform checks (pure logic), clear errors without TensorRT, a real engine where
TensorRT imports, and a type check of the backend against tensorrt-stubs."""

import subprocess
import sys
from pathlib import Path

import pytest

from prune_perception.errors import BackendUnavailableError, ModelLoadError
from prune_perception.runtime.backends.tensorrt_backend import check_engine_platform, import_tensorrt
from prune_perception.runtime.metadata import EngineInfo

ROOT = Path(__file__).resolve().parents[1]
ORIN = EngineInfo(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", precision="fp16")


def tensorrt_or_none():
    try:
        return import_tensorrt()
    except BackendUnavailableError:
        return None


def test_engine_for_this_platform_is_accepted():
    check_engine_platform(Path("a.engine"), ORIN, "10.3.0.26", "Orin", "8.7")
    check_engine_platform(Path("a.engine"), None, "11.0.0", "NVIDIA H100", "9.0")  # no sidecar: nothing to check


def test_engine_for_another_tensorrt_is_refused():
    with pytest.raises(ModelLoadError, match=r"TensorRT 10\.3\.0 \(this machine has 10\.13\.0\).*build-engine"):
        check_engine_platform(Path("a.engine"), ORIN, "10.13.0", "Orin", "8.7")


def test_engine_for_another_gpu_is_refused():
    with pytest.raises(ModelLoadError, match=r"GPU 'Orin' sm_87 \(this machine has 'NVIDIA H100 80GB HBM3' sm_90\)"):
        check_engine_platform(Path("a.engine"), ORIN, "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")


def test_missing_tensorrt_is_a_clear_error(tmp_path):
    if tensorrt_or_none() is not None:
        pytest.skip("TensorRT is installed here")
    from prune_perception.runtime.detector import Detector

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    with pytest.raises(BackendUnavailableError, match="TensorRT Python runtime"):
        Detector(engine)


def test_missing_engine_file_is_reported_before_tensorrt(tmp_path):
    from prune_perception.runtime.backends.tensorrt_backend import TensorRTBackend

    with pytest.raises(ModelLoadError, match="model file not found"):
        TensorRTBackend(tmp_path / "absent.engine")


def test_corrupt_engine_is_refused_by_real_tensorrt(tmp_path):
    trt = tensorrt_or_none()
    if trt is None:
        pytest.skip("TensorRT runtime not installed here (the builder is not installable on these machines)")
    from prune_perception.runtime.backends.tensorrt_backend import TensorRTBackend

    engine = tmp_path / "corrupt.engine"
    engine.write_bytes(b"\x00" * 4096)
    with pytest.raises((ModelLoadError, BackendUnavailableError)):
        TensorRTBackend(engine, device="cuda")


def test_backend_type_checks_against_tensorrt_stubs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "typecheck_tensorrt.py")], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout
