"""Prometheus metrics on a given registry, and the HTTP endpoint: /metrics, /healthz, /readyz.

The metric names here are a contract with deploy/ (Grafana dashboards, alert rules, KEDA); tests
scrape a running worker and check every name those files use. The standard process, platform and
garbage-collector metrics are registered on the same registry. Labels carry only bounded values
(outcome, model name, stage, reason, partition, provenance kind and strength): never an event id,
URL, generator name or secret.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .provenance.signals import C2PA, ERROR_KINDS, ERROR_REASONS, KINDS, STRENGTHS, UNSIGNED

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    """All the worker's metrics, registered on `registry` (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        # The standard process metrics (process_resident_memory_bytes, process_cpu_seconds_total,
        # process_open_fds, python_gc_*, python_info), on this registry rather than the global one.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.events = Counter(
            "aedr_events", "Events finished, by outcome (scored | dead_lettered).", ["outcome"], registry=registry
        )
        self.verdicts = Counter(
            "aedr_verdicts", "Verdicts per watchlist model (match | no_match) and mode (alert | shadow).",
            ["model", "verdict", "mode"], registry=registry
        )
        self.batch_size = Histogram(
            "aedr_batch_size", "Events per scored micro-batch.", buckets=BATCH_BUCKETS, registry=registry
        )
        self.batch_max_size = Gauge("aedr_batch_max_size", "Configured micro-batch size.", registry=registry)
        self.event_latency = Histogram(
            "aedr_event_latency_seconds", "From receipt by the consumer to offset commit.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.stage = Histogram(
            "aedr_stage_seconds", "Time per stage (fetch, decode, provenance per event; score, store per batch).",
            ["stage"], buckets=STAGE_BUCKETS, registry=registry,
        )
        self.dlq = Counter("aedr_dlq", "Events sent to the dead-letter topic, by reason.", ["reason"], registry=registry)
        self.alerts = Counter("aedr_alerts", "Alerts published (events with at least one match).", registry=registry)
        self.lag = Gauge(
            "aedr_consumer_lag", "Broker end offset minus committed offset, per partition this worker owns.",
            ["topic", "partition"], registry=registry,
        )
        self.group_lag = Gauge(
            "aedr_group_lag", "Broker end offset minus the group's committed offset, summed over the topic.",
            ["topic"], registry=registry,
        )
        self.assigned_partitions = Gauge(
            "aedr_assigned_partitions", "Partitions this worker owns.", registry=registry,
        )
        self.store_errors = Counter(
            "aedr_store_errors", "Failed attempts to store a micro-batch (retried).", registry=registry
        )
        self.models_loaded = Gauge("aedr_models_loaded", "Watchlist models loaded.", registry=registry)
        self.scorers = Gauge("aedr_scorers", "Scorers side by side (one per device; on a CPU, one per core).",
                             registry=registry)
        self.scoring_threads = Gauge("aedr_scoring_threads", "Torch intra-op threads of each scorer on a CPU.",
                                     registry=registry)
        self.reloads = Counter("aedr_reloads", "Watchlist reloads (outcome: ok | failed).", ["outcome"], registry=registry)
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome)
        self.ready = Gauge("aedr_ready", "1 when models are loaded and the database is reachable.", registry=registry)
        self.faulted = Gauge(
            "aedr_faulted", "1 while the worker holds work for a fault of its own (cause: models, dead_letters, input).",
            ["cause"], registry=registry,
        )
        self.dead_letter_fraction = Gauge(
            "aedr_dead_letter_fraction", "Fraction of the last guard.dead_letter_window events that were dead-lettered.",
            registry=registry,
        )
        for cause in ("models", "dead_letters", "input"):
            self.faulted.labels(cause).set(0)
        self.last_commit = Gauge(
            "aedr_last_commit_timestamp_seconds", "Unix time of the last offset commit.", registry=registry
        )
        # Provenance (issue 17), counted when a batch is committed. Every (kind, strength) and
        # (kind, reason) the extractors can produce starts at 0, so rates exist before the first.
        self.provenance_signals = Counter(
            "aedr_provenance_signals", "Provenance signals found in committed events, by kind and strength.",
            ["kind", "strength"], registry=registry,
        )
        self.provenance_errors = Counter(
            "aedr_provenance_errors", "Provenance that could not be read (recorded, never fatal), by kind and reason.",
            ["kind", "reason"], registry=registry,
        )
        self.provenance_alerts = Counter(
            "aedr_provenance_alerts", "Alerts raised (also or only) by a provenance signal.", registry=registry
        )
        self.provenance_skips = Counter(
            "aedr_provenance_skips", "Events not reconstructed because a trusted credential named the generator.",
            registry=registry,
        )
        for kind in KINDS:
            for strength in STRENGTHS if kind == C2PA else (UNSIGNED,):
                self.provenance_signals.labels(kind, strength)
        for kind in ERROR_KINDS:
            for reason in ERROR_REASONS:
                self.provenance_errors.labels(kind, reason)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """A small threaded HTTP server; `ready()` decides /readyz and `alive()` /healthz (200 or
    503). Constructing it binds nothing: `start()` does."""

    def __init__(self, metrics: Metrics, host: str, port: int, ready: Callable[[], bool],
                 alive: Callable[[], bool] = lambda: True):
        self._handler = _make_handler(metrics, ready, alive)
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    def start(self) -> "MetricsServer":
        self._server = ThreadingHTTPServer(self._address, self._handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _make_handler(metrics: Metrics, ready: Callable[[], bool], alive: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = _safe(alive)
                self._reply(200 if ok else 503, b"ok\n" if ok else b"stuck\n")
            elif path == "/readyz":
                ok = _safe(ready)
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # scrapes every 15 s: keep logs quiet
            pass

    return Handler


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False
