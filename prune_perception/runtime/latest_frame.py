"""A one-item mailbox between a subscription callback and an inference thread.

The producer never blocks; when it puts a new item before the consumer took the previous one,
the previous one is dropped (and counted). The consumer therefore always works on the newest
frame, and latency cannot grow by queueing when frames arrive faster than the model runs.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    """Example:
        >>> slot = LatestFrameSlot()
        >>> slot.put("frame 1"), slot.put("frame 2")
        (False, True)
        >>> slot.take(timeout_s=0.0), slot.dropped
        ('frame 2', 1)
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; return True if it replaced an item nobody took (a dropped frame)."""
        with self._condition:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._condition.notify()
        return replaced

    def take(self, timeout_s: float | None = None) -> T | None:
        """The newest item, waiting up to ``timeout_s``; None on timeout or once closed."""
        with self._condition:
            if self._item is None and not self._closed:
                self._condition.wait(timeout_s)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake a waiting consumer for shutdown."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
