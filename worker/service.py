"""Assembling a running worker from `Settings`: the one place where every part is built.

`aedr serve` and `aedr demo` both go through `Service`, so the demo exercises exactly the
production wiring (real broker client, real database, real HTTP metrics).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable

import torch
from prometheus_client import CollectorRegistry

from .allocator import keep_freed_memory
from .config import Settings, mask_url
from .fetch import Fetcher
from .images import ImageLimits
from .kafka_io import make_consumer, make_producer
from .metrics import Metrics, MetricsServer
from .pipeline import Topics, Worker
from .storage import SqlStore
from .watchlist import Watchlist

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None,
                 stop: threading.Event | None = None):
        self.settings = settings
        self.stop = stop or threading.Event()
        self.metrics = Metrics(registry or CollectorRegistry())
        database_url = settings.database.resolved_url()  # reads the secret file once
        self.store = SqlStore.from_url(database_url)
        self._ready_cache = (0.0, False)
        self.watchlist: Watchlist | None = None  # /readyz answers 503 until the models are loaded
        self.server = MetricsServer(self.metrics, settings.metrics.host, settings.metrics.port, self.ready).start()
        log.info("metrics on http://%s:%d/metrics; database %s", settings.metrics.host, self.server.port,
                 mask_url(database_url))
        scoring = settings.scoring
        if scoring.malloc_tuning:
            keep_freed_memory()
        if scoring.threads > 0:
            torch.set_num_threads(scoring.threads)
        devices = scoring.devices or (scoring.device,)
        scorers = [Watchlist.load(settings.watchlist, d, scoring.batch_size, scoring.compile, scoring.channels_last,
                                  scoring.max_batch_pixels) for d in devices]
        self.watchlist = scorers[0]
        log.info("watchlist: %s; %d scorer(s) on %s", ", ".join(f"{e.name} (τ={e.threshold:.4g})" for e in self.watchlist.entries),
                 len(scorers), ", ".join(str(w.entries[0].model.device) for w in scorers))
        self.store.record_calibrations(self.watchlist.calibration_records())
        limits = ImageLimits(settings.images.max_bytes, settings.images.max_pixels, settings.images.min_side)
        batch = settings.batch.resolved(on_gpu=self.watchlist.entries[0].model.device.type == "cuda")
        self.worker = Worker(
            consumer=None,  # type: ignore[arg-type]  # set below: the listener needs the worker
            producer=make_producer(settings.kafka),
            store=self.store,
            watchlist=self.watchlist,
            fetcher=Fetcher(settings.fetch, limits.max_bytes),
            metrics=self.metrics,
            topics=Topics(settings.kafka.alerts_topic, settings.kafka.dlq_topic),
            batch=batch,
            database=settings.database,
            image_limits=limits,
            stop_event=self.stop,
            scorers=scorers,
            producer_factory=lambda: make_producer(settings.kafka),
        )
        self.worker.consumer = make_consumer(
            settings.kafka, self.worker.on_partitions_revoked, self.worker.on_partitions_assigned
        )

    def ready(self) -> bool:
        """Models loaded and the database reachable (checked at most every 2 s)."""
        checked_at, ok = self._ready_cache
        if time.monotonic() - checked_at < 2.0:
            return ok
        ok = self.watchlist is not None
        if ok:
            try:
                self.store.ping()
            except Exception:
                ok = False
        self._ready_cache = (time.monotonic(), ok)
        self.metrics.ready.set(1 if ok else 0)
        return ok

    def run(self, until: Callable[[], bool] | None = None) -> None:
        self.worker.run(until)

    def close(self) -> None:
        self.stop.set()
        for step in (self.worker.consumer.close, lambda: self.worker.producer.close(timeout=10), self.server.stop,
                     self.store.close):
            try:
                step()
            except Exception as exc:  # closing must not hide the reason we are closing
                log.warning("while closing: %s", exc)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM/SIGINT set `stop`: the worker finishes its batch, commits and exits 0. Installed
    before anything slow (model loading), so a stop during start-up is clean too."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
