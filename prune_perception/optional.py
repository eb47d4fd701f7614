"""Optional dependencies: why one cannot be used here, said before anything tries to."""

from __future__ import annotations

import importlib
import importlib.util

MODELOPT_INSTALL_HINT = "pip install -c requirements/constraints.txt -r requirements/modelopt.txt"


def modelopt_unavailable_reason(part: str = "onnx") -> str | None:
    """Why NVIDIA ModelOpt's ``part`` cannot run here, or None where it can.

    ``onnx``: its ONNX quantizer, checked without importing it (importing ``modelopt.onnx`` patches
    onnxruntime for the whole process: it runs in a subprocess). ``torch.prune``: its pruning
    (FastNAS), imported, because its import pulls optional packages and the error names the missing one.
    """
    needed = {"onnx": ("modelopt", "onnx_graphsurgeon"), "torch.prune": ("modelopt",)}[part]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed ({MODELOPT_INSTALL_HINT})"
    if part == "onnx":
        return None
    try:
        importlib.import_module(f"modelopt.{part}")
    except Exception as exc:  # any import-time failure of an optional package is a reason, not a crash
        return f"modelopt.{part} does not import: {type(exc).__name__}: {exc} ({MODELOPT_INSTALL_HINT})"
    return None
