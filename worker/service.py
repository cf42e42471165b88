"""The composition root of a running worker: `build` makes every part, in one place and in one
order, and `Service` only runs and closes them. `aedr serve` and `aedr demo` both go through
here, so the demo exercises exactly the production wiring.

Constructors of the parts do no I/O; what does (the metrics server, model loading, the database
and broker clients) happens here, visibly. Process-wide settings (malloc thresholds, torch
threads, the matplotlib backend) are applied once by `configure_process`, before anything else.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Callable

from prometheus_client import CollectorRegistry

from .clock import SystemClock
from .completion import Completion, OffsetLedger, ProducerSlot
from .config import ScoringSettings, Settings, mask_url
from .cores import usable_cores
from .fetch import Fetcher
from .health import Health
from .lag import LagMonitor
from .kafka_io import make_consumer, make_producer
from .metrics import Metrics, MetricsServer
from .outcomes import Publishing
from .pipeline import Worker
from .prepare import prepare
from .provenance_step import load as load_provenance
from .scoring_pool import ScoringPool
from .storage import SqlStore, reaching
from .reload import Reloader
from .watchlist import LoadInterrupted, Watchlist

log = logging.getLogger(__name__)

DECODE_SLOTS = 2  # full-resolution decodes at once on a CPU, whatever the number of scorers


def scoring_layout(scoring: ScoringSettings) -> tuple[tuple[str, ...], int]:
    """`ScoringSettings.layout` on this machine: the scorers' devices and torch's threads.
    Raises `DeviceNotAvailable` for a device the machine does not have."""
    from .models import pick_device

    on_gpu = not scoring.devices and pick_device(scoring.device).type == "cuda"
    return scoring.layout(on_gpu, usable_cores())


def torch_threads() -> int:
    """Torch's intra-op threads in this process (set once by `configure_process`)."""
    import torch

    return torch.get_num_threads()


def configure_process(scoring: ScoringSettings) -> None:
    """Process-wide settings, applied once at start-up (never at import)."""
    import matplotlib
    import torch

    from .allocator import keep_freed_memory

    matplotlib.use("Agg", force=True)  # plots are files; no display on a server
    if scoring.malloc_tuning:
        keep_freed_memory()
    _, threads = scoring_layout(scoring)
    if threads > 0:
        torch.set_num_threads(threads)


@dataclass
class Service:
    """A built worker: run it, then close it. Made only by `build`."""

    settings: Settings
    metrics: Metrics
    health: Health
    server: MetricsServer
    store: SqlStore
    watchlist: Watchlist
    worker: Worker
    closers: tuple[Callable[[], None], ...]  # in the order they run: the reverse of opening

    def run(self, until: Callable[[], bool] | None = None) -> int:
        """Run until stopped; 0, or 1 when the worker stopped on a fault of its own."""
        self.worker.run(until)
        return 1 if self.worker.fault else 0

    def close(self) -> None:
        self.worker.stop.set()
        for close in self.closers:
            try:
                close()
            except Exception as exc:  # closing must not hide the reason we are closing
                log.warning("while closing: %s", exc)


def load_scoring(settings: Settings, entries, *, stop: threading.Event, loaded: dict, store: SqlStore,
                 database_url: str, fetcher: Fetcher, provenance, metrics: Metrics | None = None) -> ScoringPool:
    """The scorers (`scoring_layout`: one per device, or one per core on a CPU) of watchlist
    `entries`, with their calibrations recorded, and how a message is prepared for them. `serve`
    (at start and on every reload) and `rescan` make theirs here. Scorers on one device share
    the calibrations and each image model's weights (`Watchlist.sibling`)."""
    scoring = settings.scoring
    devices, _ = scoring_layout(scoring)  # torch's threads were set from the same layout at start-up
    by_device: dict[str, Watchlist] = {}
    scorers = []
    for device in devices:  # one load per device; the other scorers there are its siblings
        if device in by_device:
            scorers.append(by_device[device].sibling())
        else:
            by_device[device] = Watchlist.load(entries, device, scoring.batch_size, scoring.compile,
                                               scoring.channels_last, scoring.max_batch_pixels,
                                               interrupted=stop.is_set, loaded=loaded)
            scorers.append(by_device[device])
    watchlist = scorers[0]
    with reaching(database_url):
        store.record_calibrations(watchlist.calibration_records())
    if metrics is not None:
        metrics.models_loaded.set(len(watchlist.entries))
        metrics.scorers.set(len(scorers))
        metrics.scoring_threads.set(torch_threads())
    log.info("watchlist: %s; %d scorer(s) on %s",
             ", ".join(f"{e.name} (τ={e.threshold:.4g}{', ' + e.mode if e.mode != 'alert' else ''})"
                       for e in watchlist.entries), len(scorers),
             ", ".join(str(w.entries[0].model.device) for w in scorers))
    images = settings.images
    # Decoding a hostile upload near images.max_pixels takes hundreds of MB for a moment: a few
    # at a time, however many scorers (or, on a GPU, prepare threads) decode.
    on_gpu = scorers[0].entries[0].model.device.type == "cuda"
    decoding = threading.BoundedSemaphore(max(DECODE_SLOTS, settings.batch.resolved(on_gpu).prepare_threads))
    return ScoringPool(scorers, lambda message, scorer: prepare(message, fetcher, images, scorer.prepare,
                                                                inspect=provenance.inspect, decoding=decoding))


def build(settings: Settings, stop: threading.Event, registry: CollectorRegistry | None = None,
          config_path: str | None = None, reload: threading.Event | None = None) -> Service | None:
    """Every part of a worker, in order. The metrics server comes first, so /readyz answers 503
    while the models load. Returns None when `stop` is set while the models load; on an error,
    what was started is stopped before the error goes up."""
    opened: list[Callable[[], None]] = []
    try:
        return _build(settings, stop, registry, opened, config_path, reload)
    except LoadInterrupted:
        log.info("stopped while loading the models")
        _close_all(opened)
        return None
    except BaseException:
        _close_all(opened)
        raise


def _close_all(opened: list[Callable[[], None]]) -> None:
    for close in reversed(opened):
        try:
            close()
        except Exception as exc:
            log.warning("while closing after a failed start: %s", exc)
def _build(settings: Settings, stop: threading.Event, registry: CollectorRegistry | None,
           opened: list[Callable[[], None]], config_path: str | None, reload: threading.Event | None) -> Service | None:
    provenance = load_provenance(settings.provenance)  # trust anchors read once; a bad one stops us here
    metrics = Metrics(registry or CollectorRegistry())
    clock = SystemClock()
    health = Health(metrics, clock, settings.guard.stall_s)
    server = MetricsServer(metrics, settings.metrics.host, settings.metrics.port, health.ready, health.alive)
    server.start()
    opened.append(server.stop)
    database_url = settings.database.resolved_url()  # reads the secret file once
    log.info("metrics on http://%s:%d/metrics; database %s", settings.metrics.host, server.port, mask_url(database_url))
    log.info("provenance: %s", f"{', '.join(settings.provenance.kinds)}; {provenance.anchors.count} trust anchor(s)"
             if provenance.enabled else "off")
    if provenance.enabled and "c2pa" in settings.provenance.kinds and provenance.anchors.count == 0:
        log.warning("provenance: no trust anchors (provenance.trust_anchor_paths): no C2PA credential can be trusted, "
                    "so none alerts by default")
    with reaching(database_url):
        store = SqlStore.from_url(database_url, settings.database)
        opened.append(store.close)
        store.ping()  # fail fast, in one line, when the database is not there
    # The broker next, before the (possibly minutes-long) model loading: a broker that cannot be
    # reached or refuses our TLS or credentials is one line within kafka.connect_timeout_ms.
    # Neither client joins the group or sends anything until the loop polls and publishes.
    ledger = OffsetLedger()
    consumer = make_consumer(settings.kafka, ledger)  # raises ServiceUnavailable, one line
    opened.append(consumer.close)
    producers = ProducerSlot(partial(make_producer, settings.kafka))
    opened.append(partial(producers.close, timeout_s=10))
    producers.producer  # made now, so that a broker refusing it is one line at start, not a retry loop
    fetcher = Fetcher(settings.fetch, settings.images.max_bytes)
    loaded: dict = {}  # models by identity: a reload does not load unchanged ones again

    def scoring_pool(new: Settings) -> ScoringPool:
        # Only the watchlist is reloaded (worker.reload): the rest stays as the process started.
        return load_scoring(settings, new.watchlist, stop=stop, loaded=loaded, store=store, database_url=database_url,
                            fetcher=fetcher, provenance=provenance, metrics=metrics)

    pool = scoring_pool(settings)
    opened.append(pool.close)
    watchlist = pool.scorers[0]
    batch = settings.batch.resolved(on_gpu=watchlist.entries[0].model.device.type == "cuda")
    prepare_pool = (ThreadPoolExecutor(batch.prepare_threads, thread_name_prefix="prepare")
                    if batch.prepare_threads > 0 else None)
    if prepare_pool is not None:
        opened.append(partial(prepare_pool.shutdown, wait=False, cancel_futures=True))
    kafka = settings.kafka
    publishing = Publishing(kafka.alerts_topic, kafka.dlq_topic, kafka.max_alert_bytes, kafka.max_request_size,
                            kafka.forward_headers)
    completion = Completion(store, producers, consumer, metrics, clock, health, publishing, settings.retry, ledger)
    lag = LagMonitor(consumer, kafka.topic, ledger, metrics, clock)
    reloader = Reloader(config_path, settings, reload or threading.Event(), clock, metrics, scoring_pool)
    # One thread stores and publishes a batch while the next one is scored (a far database does
    # not set the pace); offsets are still committed by the loop, in order, after both.
    completer = ThreadPoolExecutor(1, thread_name_prefix="complete")
    opened.append(partial(completer.shutdown, wait=False, cancel_futures=True))
    worker = Worker(consumer, pool, completion, publishing, batch, settings.retry, clock, metrics, health, stop,
                    prepare_pool, guard=settings.guard, lag=lag, reloader=reloader, complete_executor=completer)
    opened.append(worker.close)  # the scoring pool in use at the end (a reload replaces the first)
    health.loaded()
    return Service(settings, metrics, health, server, store, watchlist, worker, tuple(reversed(opened)))
