"""Reloading the watchlist without a restart: on SIGHUP, or when the mounted config file changes
(a Kubernetes ConfigMap update replaces the file's contents).

The loop asks `Reloader.wanted()` every turn. When it is, the loop starts no new batch, finishes
and commits the ones in flight, and then calls `load()`. It reads the config again and loads the
new watchlist (new models, new calibrations, changed modes); a model whose files did not change
is not loaded again. Events already received are prepared again for the new watchlist, so
nothing is lost or scored twice. A reload that fails (a missing model, a calibration for other
weights) keeps the old watchlist, logs one line, and counts `aedr_reloads_total{outcome="failed"}`.

Only the watchlist is reloaded: a change to another section is logged as needing a restart.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable

from .clock import Clock
from .config import Settings, load_settings
from .errors import AedrError
from .metrics import Metrics

log = logging.getLogger(__name__)


class Reloader:
    def __init__(self, path: str | Path | None, settings: Settings, requested: threading.Event, clock: Clock,
                 metrics: Metrics, load: Callable[[Settings], object], check_interval_s: float = 5.0):
        self.path = Path(path) if path else None
        self.settings = settings
        self.requested = requested  # set by the SIGHUP handler
        self.clock = clock
        self.metrics = metrics
        self._load = load  # new settings -> the new scoring pool (the composition root knows how)
        self.check_interval_s = check_interval_s
        self._digest = self._read_digest()
        self._next_check = 0.0

    def _read_digest(self) -> str | None:
        if self.path is None:
            return None
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None  # gone for a moment (an atomic ConfigMap swap): looked at again later

    def wanted(self) -> bool:
        """A reload was asked for (SIGHUP), or the config file's contents changed."""
        if self.requested.is_set():
            return True
        now = self.clock.monotonic()
        if self.path is None or now < self._next_check:
            return False
        self._next_check = now + self.check_interval_s
        digest = self._read_digest()
        if digest is not None and digest != self._digest:
            log.info("config file %s changed", self.path)
            self.requested.set()
        return self.requested.is_set()

    def load(self) -> object | None:
        """The new scoring pool, or None (the old watchlist stays) when the reload failed."""
        self.requested.clear()
        self._digest = self._read_digest()
        try:
            settings = load_settings(self.path)
            pool = self._load(settings)
        except (AedrError, OSError, ValueError) as exc:
            self.metrics.reloads.labels("failed").inc()
            log.error("reload failed, the watchlist stays as it was: %s", str(exc).splitlines()[0] if str(exc) else exc)
            return None
        changed = [f.name for f in fields(Settings)
                   if f.name != "watchlist" and getattr(settings, f.name) != getattr(self.settings, f.name)]
        if changed:
            log.warning("reload: [%s] changed; only the watchlist is reloaded: restart to apply the rest",
                        ", ".join(changed))
        self.settings = replace(self.settings, watchlist=settings.watchlist)  # what now runs
        self.metrics.reloads.labels("ok").inc()
        return pool
