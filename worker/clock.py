"""Time, injected: the loop and the completion step read the clock only through `Clock`, so
their timing (batch waits, backoff, latency) is tested with `worker.testing.FakeClock` and no
sleeps."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float:
        """Unix time (for the last-commit gauge)."""

    def now(self) -> datetime:
        """Wall-clock UTC time (stored with rows)."""

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)
