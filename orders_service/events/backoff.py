"""The relay's pause after a failure: doubling from half a second, capped."""

from __future__ import annotations

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0


class Backoff:
    """0.5 s, 1 s, 2 s, 4 s, 5 s, 5 s, … until ``reset``."""

    def __init__(self, first: float = BACKOFF_FIRST, maximum: float = BACKOFF_MAX) -> None:
        self.first, self.maximum = first, maximum
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.first
