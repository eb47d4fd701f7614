"""``detector_node`` whose ONNX Runtime backend fails on demand, for test_node_faults.py.

The backend is the real one, except that:

- ``infer`` raises a RuntimeError while the file named by ``$PRUNE_PERCEPTION_FAULT_FILE`` exists:
  a runtime failing in the middle of a frame, as a CUDA error or an out-of-memory would;
- each ``infer`` keeps ``$PRUNE_PERCEPTION_LEAK_KB`` KB that are never freed: a leak, which the
  soak must catch.

Run as ``python -m fault_injection_node --ros-args ...`` with
this folder on PYTHONPATH.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prune_perception.runtime import backends
from prune_perception.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

FAULT_FILE = os.environ.get("PRUNE_PERCEPTION_FAULT_FILE")
LEAK_BYTES = int(float(os.environ.get("PRUNE_PERCEPTION_LEAK_KB", "0")) * 1024)
_leaked: list[bytearray] = []


class FaultInjectingBackend(OnnxRuntimeBackend):
    def infer(self, tensor: np.ndarray) -> np.ndarray:
        if FAULT_FILE and Path(FAULT_FILE).exists():
            raise RuntimeError("injected backend fault (the runtime failed mid-frame)")
        if LEAK_BYTES:
            _leaked.append(bytearray(b"\x01" * LEAK_BYTES))  # touched, so that it is resident
        return super().infer(tensor)


if __name__ == "__main__":
    backends._REGISTRY["onnxruntime"] = (__name__, FaultInjectingBackend.__name__)
    from prune_perception.ros.detector_node import main

    main()
