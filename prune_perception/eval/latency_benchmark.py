"""Measured model latency, several models interleaved in one run so that they see the same
machine state; results are best read as ratios to a reference model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from prune_perception.eval.latency import LatencySummary
from prune_perception.runtime.backends import create_backend


def measure_latency(
    models: Mapping[str, str | Path],
    inputs: Sequence[np.ndarray],
    runs: int = 50,
    warmup: int = 5,
    backend: str = "auto",
    device: str = "cpu",
    intra_op_threads: int = 0,
    loaded: Mapping[str, Any] | None = None,
) -> dict[str, LatencySummary]:
    """Inference latency of each model (model call only, no pre/postprocessing).

    Every round runs each model once on the same input, in rotating order; onnxruntime sessions
    do not spin between runs, so one model's idle threads do not slow the next. ``loaded``:
    backends loaded with other options, timed in the same rounds (and closed like the others).
    """
    backends = {name: create_backend(path, backend, device, intra_op_threads=intra_op_threads) for name, path in models.items()}
    backends.update(loaded or {})
    try:
        return measure_backend_latency(backends, inputs, runs, warmup)
    finally:
        for item in backends.values():
            item.close()


def measure_backend_latency(backends: Mapping[str, Any], inputs: Sequence[np.ndarray] | Mapping[str, Sequence[np.ndarray]],
                            runs: int = 50, warmup: int = 5) -> dict[str, LatencySummary]:
    """Inference latency of loaded backends (anything with ``infer(tensor)``), interleaved as in
    :func:`measure_latency`. ``inputs``: one list for all, or a list per backend name (models of
    different input shapes, each fed the same frames preprocessed for it)."""
    names = list(backends)
    per_model = inputs if isinstance(inputs, Mapping) else {name: inputs for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            tensor = per_model[name][round_index % len(per_model[name])]
            start = time.perf_counter()
            backends[name].infer(tensor)
            elapsed_ms = (time.perf_counter() - start) * 1e3
            if round_index >= warmup:
                samples[name].append(elapsed_ms)
    return {name: LatencySummary.of(values) for name, values in samples.items()}
