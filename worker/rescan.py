"""`aedr rescan`: score past uploads again with some watchlist models (a new generator on the
watchlist, a recalibrated model), through exactly the loop, stages and record of `aedr serve`.

It reads the input topic through a `worker.window.Window` (from the offsets for `--since` to the
end as it stood when the rescan started), under a consumer group of its own
(`<kafka.group_id>.rescan`) and without joining the workers' group, so it runs beside them.
What it does to the record (worker.storage.records): each event gets the named models' verdicts
under their current calibrations (a verdict already there is kept), its `best_match` and status
are settled again from all its current verdicts (a dead letter that now scores becomes
`scored`), and an alert goes out only for a match not alerted before, marked `"rescan": true`.
A dead letter is not sent again.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Sequence

from prometheus_client import CollectorRegistry

from .clock import SystemClock
from .completion import Completion, OffsetLedger, ProducerSlot
from .config import ConfigError, Settings
from .fetch import Fetcher
from .health import Health
from .kafka_io import make_producer, make_reader
from .metrics import Metrics
from .outcomes import Publishing
from .pipeline import Worker
from .provenance_step import load as load_provenance
from .service import load_scoring
from .storage import SqlStore, reaching
from .window import Window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RescanReport:
    models: tuple[str, ...]
    events: int  # events scored again or rejected again
    alerts: int  # alerts published (new matches only)
    skipped: int  # records of the window's offsets that were older than --since
    seconds: float

    def as_dict(self) -> dict:
        return {"models": list(self.models), "events": self.events, "alerts": self.alerts,
                "skipped_older_than_since": self.skipped, "seconds": round(self.seconds, 1)}


def watched(settings: Settings, names: Sequence[str]):
    """The `[[watchlist]]` entries named, or a ConfigError naming what is not there."""
    by_name = {e.name: e for e in settings.watchlist}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"--model {', '.join(unknown)}: not in the config's watchlist "
                          f"({', '.join(by_name) or 'empty'})")
    off = [n for n in names if by_name[n].mode == "off"]
    if off:
        raise ConfigError(f"--model {', '.join(off)}: mode is off in the config; set it to shadow or alert first")
    return tuple(by_name[n] for n in dict.fromkeys(names))


def run_rescan(settings: Settings, names: Sequence[str], since: datetime, until: datetime | None,
               stop: threading.Event, progress: bool = False) -> RescanReport:
    import time

    started = time.monotonic()
    entries = watched(settings, names)
    kafka = settings.kafka
    clock = SystemClock()
    metrics = Metrics(CollectorRegistry())
    health = Health(metrics, clock)
    database_url = settings.database.resolved_url()
    closers = []
    try:
        with reaching(database_url):
            store = SqlStore.from_url(database_url, settings.database)
            closers.append(store.close)
            store.ping()
        reader = make_reader(kafka, kafka.topic, f"{kafka.group_id}.rescan")
        closers.append(reader.close)
        opened_ms = int(clock.time() * 1000)
        window = Window(reader, kafka.topic, int(since.timestamp() * 1000),
                        int(until.timestamp() * 1000) if until else None, opened_ms)
        producers = ProducerSlot(partial(make_producer, kafka))
        closers.append(partial(producers.close, timeout_s=10))
        provenance = load_provenance(settings.provenance)
        pool = load_scoring(settings, entries, stop=stop, loaded={}, store=store, database_url=database_url,
                            fetcher=Fetcher(settings.fetch, settings.images.max_bytes), provenance=provenance,
                            metrics=metrics)
        closers.append(pool.close)
        health.loaded()
        publishing = Publishing(kafka.alerts_topic, kafka.dlq_topic, kafka.max_alert_bytes, kafka.max_request_size,
                                kafka.forward_headers, rescan=True)
        ledger = OffsetLedger()
        completion = Completion(store, producers, window, metrics, clock, health, publishing, settings.retry, ledger)
        batch = settings.batch.resolved(on_gpu=pool.scorers[0].entries[0].model.device.type == "cuda")
        worker = Worker(window, pool, completion, publishing, batch, settings.retry, clock, metrics, health, stop,
                        guard=settings.guard)
        bar = _bar(window.total, progress)
        done = 0

        def finished() -> bool:
            nonlocal done
            if bar is not None and completion.committed_events > done:
                bar.update(completion.committed_events - done)
                done = completion.committed_events
            return window.finished() and worker.idle

        worker.run(until=finished)
        completion.flush_published()
        if bar is not None:
            bar.close()
        alerts = sum(s.value for f in metrics.registry.collect() if f.name == "aedr_alerts"
                     for s in f.samples if s.name == "aedr_alerts_total")
        return RescanReport(tuple(e.name for e in entries), completion.committed_events, int(alerts), window.skipped,
                            time.monotonic() - started)
    finally:
        for close in reversed(closers):
            try:
                close()
            except Exception as exc:
                log.warning("while closing: %s", exc)


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="event", file=sys.stderr, dynamic_ncols=True, desc="rescan")


def parse_time(text: str) -> datetime:
    """RFC 3339 / ISO 8601 (a date alone is midnight UTC; no zone is UTC)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r} is not a time: use RFC 3339, e.g. 2026-11-28T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
