"""The model a running detector serves, and its replacement while it keeps serving. No ROS here.

A hot swap loads and warms the new model on a thread of its own while the old one keeps running
frames. Only when the new one is ready does :class:`ModelSlot` exchange them, between two model
calls (the call in flight finishes on the old model), and then closes the old one. A new model
that cannot be loaded changes nothing: the old one keeps serving and the failure is kept for
diagnostics.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from prune_perception.errors import PrunePerceptionError
from prune_perception.runtime.detector import Detector


class ModelSwapError(PrunePerceptionError):
    """A swap that cannot start (another one is loading)."""


@dataclass(frozen=True)
class SwapOutcome:
    path: Path
    succeeded: bool
    message: str
    finished_s: float  # time.monotonic()


class ModelSlot:
    """Holds the serving :class:`Detector`; :meth:`use` lends it to one model call at a time.

    Args:
        build: loads (and warms) a detector for a model path; raises on a bad model.
    """

    def __init__(self, build: Callable[[Path], Detector]) -> None:
        self._build = build
        self._lock = threading.Lock()  # held during a model call and during the exchange
        self._state_lock = threading.Lock()  # guards _loading and last_swap: never waits for a model call
        self._detector: Detector | None = None
        self._loading: Path | None = None
        self._thread: threading.Thread | None = None
        self.last_swap: SwapOutcome | None = None

    @property
    def detector(self) -> Detector | None:
        """The serving detector (None before the first load): read it for its attributes only; run it through :meth:`use`."""
        return self._detector

    @property
    def loading(self) -> Path | None:
        """The model a swap is loading now, if any."""
        return self._loading

    @contextmanager
    def use(self) -> Iterator[Detector | None]:
        """The serving detector, which no swap replaces until the block ends."""
        with self._lock:
            yield self._detector

    def load(self, path: Path) -> Detector:
        """Load ``path`` and serve it from now (blocking); a detector served before is closed."""
        detector = self._build(Path(path))
        self._exchange(detector)
        return detector

    def swap_in_background(self, path: Path, prepare: Callable[[Detector], None] | None = None,
                           done: Callable[[SwapOutcome], None] | None = None) -> None:
        """Load ``path`` on a thread; serve it once ready. ``prepare`` runs on the new detector
        in the exchange, just before it serves (e.g. to apply thresholds changed while it loaded); ``done`` gets
        the outcome either way. Raises :class:`ModelSwapError` while another swap is loading."""
        with self._state_lock:
            if self._loading is not None:
                raise ModelSwapError(f"a swap to {self._loading} is still loading; try again when it is done")
            self._loading = Path(path)
        self._thread = threading.Thread(target=self._swap, args=(Path(path), prepare, done), name="model-swap", daemon=True)
        self._thread.start()

    def _swap(self, path: Path, prepare: Callable[[Detector], None] | None,
              done: Callable[[SwapOutcome], None] | None) -> None:
        old = self._detector
        serving = f"; still serving {old.model_path}" if old is not None else ""
        try:
            detector = self._build(path)
        except Exception as exc:  # any failure of a model file must leave the serving model alone
            reason = exc if isinstance(exc, (PrunePerceptionError, ValueError)) else f"{type(exc).__name__}: {exc}"
            outcome = SwapOutcome(path, False, f"model swap to {path} failed: {reason}{serving}", time.monotonic())
        else:
            self._exchange(detector, prepare)
            previous = f" from {old.model_path}" if old is not None else ""
            outcome = SwapOutcome(path, True, f"model swapped{previous} to {path}", time.monotonic())
        with self._state_lock:
            self._loading = None
            self.last_swap = outcome
        if done is not None:
            done(outcome)

    def _exchange(self, detector: Detector | None, prepare: Callable[[Detector], None] | None = None) -> None:
        with self._lock:
            if detector is not None and prepare is not None:
                prepare(detector)
            old, self._detector = self._detector, detector
        if old is not None:
            old.close()

    def wait_for_swap(self, timeout_s: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def close(self) -> None:
        """Wait for a loading swap, then close the serving model."""
        self.wait_for_swap(30.0)
        self._exchange(None)
