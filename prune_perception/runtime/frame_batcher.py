"""Newest-frame slots for several cameras, gathered into one batch per inference cycle.

Each camera has a one-frame slot: a frame that arrives before the previous one was taken
replaces it (a drop, counted for that camera), so latency cannot build up in a queue. An
inference cycle takes the newest waiting frame of every camera that has one. It waits at most
``batch_wait_s`` after the oldest waiting frame arrived for the other cameras, and never for a
camera that has sent nothing for ``live_window_s``: a camera that stops cannot stall the others.

With one camera it is the single-slot mailbox of a one-camera node (a cycle takes the frame as
soon as it is there).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Generic, Sequence, TypeVar

T = TypeVar("T")


@dataclass
class _Slot(Generic[T]):
    item: T | None = None
    waiting_since: float = 0.0  # when the waiting item arrived
    last_arrival: float = float("-inf")
    dropped: int = 0


class FrameBatcher(Generic[T]):
    """Example:
        >>> batcher = FrameBatcher(["front", "rear"], batch_wait_s=0.01)
        >>> batcher.put("front", "f1"), batcher.put("front", "f2"), batcher.put("rear", "r1")
        (False, True, False)
        >>> batcher.take(timeout_s=0.0), batcher.dropped("front")
        ({'front': 'f2', 'rear': 'r1'}, 1)
    """

    def __init__(self, cameras: Sequence[str], batch_wait_s: float = 0.0, live_window_s: float = 1.0) -> None:
        if not cameras:
            raise ValueError("a frame batcher needs at least one camera")
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"camera names must be unique, got {list(cameras)}")
        self.cameras = tuple(cameras)
        self.batch_wait_s = batch_wait_s
        self.live_window_s = live_window_s
        self._slots: dict[str, _Slot[T]] = {camera: _Slot() for camera in self.cameras}
        self._condition = threading.Condition()
        self._closed = False

    def put(self, camera: str, item: T, now: float | None = None) -> bool:
        """Store ``camera``'s newest frame; True if it replaced one nobody took (a dropped frame)."""
        now = time.monotonic() if now is None else now
        with self._condition:
            slot = self._slots[camera]
            replaced = slot.item is not None
            if replaced:
                slot.dropped += 1
            else:
                slot.waiting_since = now
            slot.item = item
            slot.last_arrival = now
            self._condition.notify_all()
        return replaced

    def dropped(self, camera: str) -> int:
        with self._condition:
            return self._slots[camera].dropped

    def take(self, timeout_s: float | None = None) -> dict[str, T]:
        """The newest frame of each camera that has one, in camera order, once the cycle is ready
        (every live camera has a frame, or ``batch_wait_s`` has passed since the oldest waiting
        frame arrived). Empty on timeout; once closed, whatever is waiting, without waiting."""
        give_up = None if timeout_s is None else time.monotonic() + timeout_s
        with self._condition:
            while not self._closed:
                waiting = [slot for slot in self._slots.values() if slot.item is not None]
                now = time.monotonic()
                if waiting:
                    ready_at = min(slot.waiting_since for slot in waiting) + self.batch_wait_s
                    live = [slot for slot in self._slots.values() if now - slot.last_arrival <= self.live_window_s]
                    if now >= ready_at or all(slot.item is not None for slot in live):
                        return self._pop_all()
                    wake = ready_at
                else:
                    wake = None
                if give_up is not None:
                    if now >= give_up:
                        return {}
                    wake = give_up if wake is None else min(wake, give_up)
                self._condition.wait(None if wake is None else max(wake - now, 0.0))
            return self._pop_all()

    def _pop_all(self) -> dict[str, T]:
        batch: dict[str, T] = {}
        for camera, slot in self._slots.items():
            if slot.item is not None:
                batch[camera], slot.item = slot.item, None
        return batch

    def close(self) -> None:
        """Wake a waiting consumer for shutdown; later takes return nothing."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def reopen(self) -> None:
        """Accept frames again after :meth:`close` (a managed node re-activated); waiting frames
        from before are discarded."""
        with self._condition:
            self._closed = False
            for slot in self._slots.values():
                slot.item = None
