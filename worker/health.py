"""What the probes answer, from state the worker keeps current: no probe does I/O.

Readiness (/readyz, the `aedr_ready` gauge): the models are loaded, the last attempt to store a
batch succeeded, and the models can score. The loop reports each of these as it happens, and
the gauge changes with them, whether or not anything calls /readyz.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Sequence

from .metrics import Metrics


class DeadLetterWindow:
    """The fraction of the last `size` events that were dead-lettered."""

    def __init__(self, size: int):
        self.size = size
        self._flags: deque[bool] = deque(maxlen=size)

    def fraction_with(self, dead: Sequence[bool]) -> float:
        """The fraction if these events were added (nothing is added)."""
        window = (list(self._flags) + list(dead))[-self.size:]
        return sum(window) / len(window) if window else 0.0

    def full_with(self, dead: Sequence[bool]) -> bool:
        return len(self._flags) + len(dead) >= self.size

    def add(self, dead: Sequence[bool]) -> None:
        self._flags.extend(dead)


class Health:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        self._lock = threading.Lock()
        self._loaded = False
        self._store_ok = True
        self._scoring_ok = True
        self._publish()

    def loaded(self) -> None:
        self._set(loaded=True)

    def store(self, ok: bool) -> None:
        self._set(store_ok=ok)

    def scoring(self, ok: bool) -> None:
        self._set(scoring_ok=ok)

    def ready(self) -> bool:
        with self._lock:
            return self._loaded and self._store_ok and self._scoring_ok

    def alive(self) -> bool:
        return True

    def _set(self, loaded: bool | None = None, store_ok: bool | None = None, scoring_ok: bool | None = None) -> None:
        with self._lock:
            self._loaded = self._loaded if loaded is None else loaded
            self._store_ok = self._store_ok if store_ok is None else store_ok
            self._scoring_ok = self._scoring_ok if scoring_ok is None else scoring_ok
        self._publish()

    def _publish(self) -> None:
        self._metrics.ready.set(1 if self.ready() else 0)
