"""Typed settings: a TOML file, then `AEDR_<SECTION>__<KEY>` environment overrides.

Read once in `main` and passed down; nothing else reads the environment. Secrets (the database
password) come from the environment or a file (`database.url_file`, e.g. a mounted Kubernetes
Secret), never need to sit in the TOML, and are masked wherever settings are printed.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import AedrError
from .provenance.settings import ProvenanceSettings
from .overlap import STORE_BESIDE_MODES

ENV_PREFIX = "AEDR_"
# The autoencoder families a watchlist entry's `kind` may name: the kinds of worker.models.FAMILIES,
# spelt out here so that settings and `aedr --help` need no torch import (a unit test keeps the
# two equal). Empty `kind` means "from the model's config.json".
AUTOENCODER_KINDS = ("kl", "vq", "tiny", "flux2", "qwenimage", "qwenimage21", "wan", "dc", "hunyuanimage")


class ConfigError(AedrError, ValueError):
    """The configuration is missing, malformed or inconsistent; one line says which key."""


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
ASSIGNMENT_STRATEGIES = ("range", "roundrobin", "sticky", "cooperative-sticky")


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach the cluster and what to read and write there.

    Connection keys follow the client's own names (kafka-python's `security_protocol`,
    `ssl_cafile`, `sasl_mechanism`, …). Secrets (`sasl_password`, `ssl_password`,
    `sasl_oauth_token`) come from the environment (`AEDR_KAFKA__SASL_PASSWORD`) or from a file
    (`sasl_password_file`: a mounted Secret, read each time a client connects), never from the
    TOML. Any other client option goes in `consumer_options`, `producer_options` or
    `admin_options`, checked against the client's option names at start.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "uploads"
    group_id: str = "aedr"
    alerts_topic: str = "aedr.alerts"
    dlq_topic: str = "uploads.dlq"
    client_id: str = "aedr-worker"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    ssl_cafile: str = ""  # PEM bundle of the CAs that sign the brokers' certificates; "" = the system's
    ssl_certfile: str = ""  # client certificate (PEM), for brokers that require mutual TLS
    ssl_keyfile: str = ""  # its private key (PEM)
    ssl_password: str = field(default="", repr=False)  # the key's passphrase: environment only
    ssl_password_file: str = ""  # or a file holding it
    ssl_crlfile: str = ""  # certificate revocation list (PEM)
    ssl_check_hostname: bool = True  # the broker's certificate must name the host dialled
    sasl_mechanism: str = ""  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 | OAUTHBEARER
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)  # environment only
    sasl_password_file: str = ""  # or a file holding it
    sasl_oauth_token: str = field(default="", repr=False)  # OAUTHBEARER: a bearer token, environment only
    sasl_oauth_token_file: str = ""  # or a file, read at every (re)connection so a rotated token is used
    connect_timeout_ms: int = 30_000  # a client that cannot bootstrap within this is one `aedr: error:` line
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    max_partition_fetch_bytes: int = 32 * 1024 * 1024
    max_request_size: int = 32 * 1024 * 1024
    max_alert_bytes: int = 1_000_000  # alerts' metadata is cut (and marked) to fit; brokers default to ~1 MB
    auto_offset_reset: str = "earliest"
    # Preferred first; list two to move a running group from one to the other (KIP-429).
    partition_assignment_strategy: tuple[str, ...] = ("range", "roundrobin")
    group_instance_id: str = ""  # static membership (KIP-345): a stable id per replica, e.g. a StatefulSet pod name
    forward_headers: tuple[str, ...] = ()  # input headers copied onto alerts, e.g. ["traceparent", "x-request-id"]
    consumer_options: dict[str, Any] = field(default_factory=dict)  # any other KafkaConsumer option
    producer_options: dict[str, Any] = field(default_factory=dict)  # any other KafkaProducer option
    admin_options: dict[str, Any] = field(default_factory=dict)  # any other KafkaAdminClient option

    def secret(self, name: str) -> str:
        """`sasl_password`, `ssl_password` or `sasl_oauth_token`: its value, or the content of
        `<name>_file` (read now, so a rotated secret is picked up at the next connection)."""
        value, path = getattr(self, name), getattr(self, f"{name}_file")
        if value or not path:
            return value
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"kafka.{name}_file {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class DatabaseSettings:
    """Where rows go. TLS and other libpq settings go in the URL's query string
    (`?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem`); the password belongs in the
    environment (`AEDR_DATABASE__URL`) or in `url_file`, never in the TOML."""

    url: str = "sqlite:///aedr.sqlite"
    url_file: str = ""  # read the URL from this file instead (a mounted secret)
    pool_size: int = 2  # connections kept open (Postgres); a worker stores one batch at a time
    max_overflow: int = 2  # extra connections under a burst, closed when returned
    pool_timeout_s: float = 30.0  # wait for a free connection at most this long
    pool_recycle_s: float = 1800.0  # reopen connections older than this (proxies and firewalls drop idle ones); 0 = never
    connect_timeout_s: float = 10.0  # a new connection gives up after this (libpq connect_timeout)

    def resolved_url(self) -> str:
        if self.url_file:
            try:
                return Path(self.url_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"database.url_file {self.url_file}: {exc.strerror}") from None
        return self.url


@dataclass(frozen=True)
class RetrySettings:
    """Backoff for a batch whose store, publish or scoring failed: initial_s, doubling, at most
    max_s between attempts; nothing is committed meanwhile."""

    initial_s: float = 0.5
    max_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds before retry number `attempt` (1, 2, …); capped, and never overflows."""
        return min(self.max_s, self.initial_s * 2.0 ** min(max(attempt - 1, 0), 60))


@dataclass(frozen=True)
class BatchSettings:
    max_size: int = 16
    max_wait_ms: int = 50
    max_buffered: int = 64  # partitions are paused while this many events wait
    prepare_threads: int = -1  # fetch/decode/GLCM threads; 0 = on the scoring thread; -1 = auto (0 on CPU, 4 on CUDA)
    # Batches being scored per scorer. 1: the loop waits while every scorer is busy; 2: it polls,
    # prepares and completes beside the device. -1 = auto (1 on CPU, 2 on CUDA). At most twice
    # this many batches per scorer are held, scored or not, while an older one is completed.
    inflight: int = -1
    # With a single CPU scorer (inflight = 1), whether a scored batch is stored and published
    # beside the next batch's scoring: auto | always | never (worker.overlap; auto: only when
    # storing is slow). With several, a batch is stored while the other scorers work.
    store_beside: str = "auto"

    def resolved(self, on_gpu: bool) -> "BatchSettings":
        """The automatic values made concrete. A GPU computes while the CPU prepares, stores and
        commits beside it; on a CPU, torch's threads fill the cores and anything running beside
        them slows them more than it saves (docs/PERFORMANCE.md)."""
        return dataclasses.replace(
            self,
            prepare_threads=self.prepare_threads if self.prepare_threads >= 0 else (4 if on_gpu else 0),
            inflight=self.inflight if self.inflight > 0 else (2 if on_gpu else 1),
        )


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "0.0.0.0"
    port: int = 9108


@dataclass(frozen=True)
class ImageSettings:
    """Limits on an upload, checked before any pixel is decoded."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 8


@dataclass(frozen=True)
class FetchSettings:
    allowed_schemes: tuple[str, ...] = ()  # e.g. ("https",); "file" needs file_root too
    allowed_hosts: tuple[str, ...] = ()  # exact host names; empty = none over the network
    allow_private_addresses: bool = False
    file_root: str = ""  # file:// URLs are served only from under this directory
    timeout_s: float = 10.0
    max_redirects: int = 3


# On a CPU, at most this many automatic scorers: each holds a batch's activations and images.
MAX_AUTO_CPU_SCORERS = 8
MAX_SCORERS = 256  # an explicit scoring.scorers above this is a typo, not a machine


@dataclass(frozen=True)
class ScoringSettings:
    device: str = "auto"
    devices: tuple[str, ...] = ()  # several GPUs: one scorer per device, e.g. ("cuda:0", "cuda:1")
    batch_size: int = 16  # images per autoencoder call (a micro-batch is split into these)
    threads: int = 0  # torch intra-op threads per scorer; 0 = auto (see layout)
    scorers: int = 0  # scorers side by side on one device, each on a thread of its own; 0 = auto (see layout)
    compile: str = "off"  # torch.compile mode: off | default | reduce-overhead | max-autotune
    channels_last: bool = True  # NHWC memory format for the autoencoders
    max_batch_pixels: int = -1  # pixels per autoencoder call: -1 = auto (131 072 on CPU, none on CUDA), 0 = none
    # Fixed glibc malloc thresholds, so the scoring thread reuses its buffers instead of faulting
    # fresh pages each batch (worker/allocator.py); off leaves malloc to MALLOC_* or LD_PRELOAD.
    malloc_tuning: bool = True

    def layout(self, on_gpu: bool, cores: int) -> tuple[tuple[str, ...], int]:
        """The scorers' devices (one scorer each) and torch's intra-op threads (0 = torch's
        default), made concrete for a machine with `cores` usable cores.

        On a CPU the default is one scorer per core, each with one torch thread: at the zoo's
        sizes torch's intra-op threads leave much of each extra core unused, while whole batches
        side by side keep every core busy (docs/PERFORMANCE.md, "One process or N processes").
        Past `MAX_AUTO_CPU_SCORERS` cores each scorer gets ceil(cores / 8) intra-op threads, and
        there are as many scorers as fill the cores with them (12 cores: 6 × 2), so that the
        memory held (a batch's activations per scorer) stays bounded. An explicit `threads`
        alone keeps the single scorer of earlier versions; `scorers` alone shares the cores out.
        A device list (several GPUs) is taken as it is: one scorer per entry.
        """
        if self.devices:
            return tuple(self.devices), self.threads
        if on_gpu:
            return (self.device,) * max(1, self.scorers), self.threads
        cores = max(1, cores)
        if self.scorers:
            return (self.device,) * self.scorers, self.threads or max(1, cores // self.scorers)
        if self.threads:
            return (self.device,), self.threads
        threads = -(-cores // MAX_AUTO_CPU_SCORERS)  # ceil: at most MAX_AUTO_CPU_SCORERS scorers
        return (self.device,) * (cores // threads), threads


@dataclass(frozen=True)
class GuardSettings:
    """When the worker stops trusting itself.

    `fault_exit_s`: while the models cannot score (or the dead-letter guard holds), nothing is
    dead-lettered or committed and /readyz fails; after this long the worker exits with status 1
    so that the orchestrator restarts it. 0 = never exit.
    `stall_s`, `unassigned_exit_s`: see below.
    `dead_letter_fraction`: when more than this fraction of the last `dead_letter_window` events
    would be dead-lettered, the worker holds (commits nothing) as for a fault of its own. 0 = off,
    the default: a flood of bad input is the producer's fault, and any producer could otherwise
    stop the partition. Turn it on where a burst of dead letters more likely means our own
    misconfiguration (a fetch allowlist, a decoder) than bad uploads.
    """

    fault_exit_s: float = 300.0
    dead_letter_fraction: float = 0.0
    dead_letter_window: int = 1000
    # Liveness (/healthz): fails when work is waiting and nothing was finished for stall_s (a
    # stuck loop); and when the worker owns no partition while the topic has a backlog for
    # unassigned_exit_s (a stuck group), after which the worker also exits 1 to rejoin afresh.
    stall_s: float = 600.0
    unassigned_exit_s: float = 300.0


@dataclass(frozen=True)
class LoggingSettings:
    """`format = "json"`: one JSON object per line (time, level, logger, message, and fields
    such as `event_id`, `topic`, `partition`, `offset` where the code passes them), for log
    pipelines; "text" (the default) for people. `level`: DEBUG, INFO, WARNING, ERROR."""

    format: str = "text"
    level: str = "INFO"


@dataclass(frozen=True)
class WatchlistEntry:
    name: str
    model: str
    calibration: str
    subfolder: str = ""
    kind: str = ""
    dtype: str = "fp32"
    # alert: matches alert and set best_match; shadow: scored and stored, never alerts nor sets
    # best_match (to read a new model's rate on real traffic first); off: not loaded at all.
    mode: str = "alert"


WATCHLIST_MODES = ("alert", "shadow", "off")


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    images: ImageSettings = field(default_factory=ImageSettings)
    fetch: FetchSettings = field(default_factory=FetchSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    # Provenance signals (C2PA, IPTC, generator metadata, SD/SDXL watermark): the keys, their
    # defaults and what each means are in worker/provenance/settings.py; README "Provenance".
    provenance: ProvenanceSettings = field(default_factory=ProvenanceSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    watchlist: tuple[WatchlistEntry, ...] = ()

    def replace(self, **sections: Any) -> "Settings":
        return dataclasses.replace(self, **sections)


_SECTIONS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "watchlist"}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif annotation in (int, float):
        accepted = (int,) if annotation is int else (int, float)  # an int is a valid float
        if isinstance(value, accepted) and not isinstance(value, bool):
            return annotation(value)
        if isinstance(value, str):
            try:
                return annotation(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is dict:
        if isinstance(value, str):  # from the environment: a JSON object
            import json

            try:
                value = json.loads(value)
            except ValueError:
                pass
        if isinstance(value, dict):
            return dict(value)
    elif origin is tuple:
        if isinstance(value, str) and value.lstrip().startswith("["):  # from the environment: a JSON list
            import json

            try:
                value = json.loads(value)
            except ValueError:
                if '"' in value:  # meant as JSON ("[::1]" alone is a host)
                    raise ConfigError(f"{where}: not a JSON list: {value!r}") from None
        if isinstance(value, str):  # from the environment: comma-separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    expected = "a table" if origin is dict else getattr(annotation, "__name__", annotation)
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")


def _build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ValueError as exc:  # a section's own consistency check (ProvenanceSettings.__post_init__)
        text = str(exc)
        raise ConfigError(text if text.startswith(where) else f"{where}: {text}") from None


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from a TOML file (optional) with `AEDR_<SECTION>__<KEY>` overrides from `env`."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    unknown = set(raw) - set(_SECTIONS) - {"watchlist"}
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))}")
    _refuse_secrets_in_file(raw)
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX):].lower().partition("__")
        if section not in _SECTIONS:
            continue
        raw.setdefault(section, {})[name] = value
    sections = {
        name: _build(f.default_factory, raw.get(name, {}), name)  # type: ignore[misc]
        for name, f in _SECTIONS.items()
    }
    entries = raw.get("watchlist", [])
    if not isinstance(entries, list):
        raise ConfigError("watchlist: expected [[watchlist]] tables")
    watchlist = tuple(_build(WatchlistEntry, e, f"watchlist[{i}]") for i, e in enumerate(entries))
    for i, w in enumerate(watchlist):
        if w.mode not in WATCHLIST_MODES:
            raise ConfigError(f"watchlist[{i}].mode: {w.mode!r} is not one of {', '.join(WATCHLIST_MODES)}")
        if w.kind and w.kind not in AUTOENCODER_KINDS:
            raise ConfigError(f"watchlist[{i}].kind: unknown family {w.kind!r}; expected one of {', '.join(AUTOENCODER_KINDS)}")
    names = [w.name for w in watchlist]
    if len(set(names)) != len(names):
        raise ConfigError(f"watchlist: duplicate model names in {names}")
    settings = Settings(**sections, watchlist=watchlist)
    _check_ranges(settings)
    return settings


# (section, key, smallest allowed value): every count, size and duration that has a floor.
_MINIMA = (
    ("batch", "max_size", 1), ("batch", "max_wait_ms", 0), ("batch", "max_buffered", 1),
    ("retry", "initial_s", 0), ("retry", "max_s", 0),
    ("images", "max_bytes", 1), ("images", "max_pixels", 1), ("images", "min_side", 1),
    ("fetch", "timeout_s", 0.001), ("fetch", "max_redirects", 0),
    ("scoring", "batch_size", 1), ("scoring", "threads", 0), ("scoring", "scorers", 0),
    ("kafka", "max_request_size", 1024), ("kafka", "max_alert_bytes", 1024),
    ("kafka", "session_timeout_ms", 1), ("kafka", "heartbeat_interval_ms", 1), ("kafka", "connect_timeout_ms", 1),
    ("database", "pool_size", 1), ("database", "max_overflow", 0), ("database", "pool_timeout_s", 0.001),
    ("database", "pool_recycle_s", 0), ("database", "connect_timeout_s", 1),
    ("metrics", "port", 0),
    ("guard", "fault_exit_s", 0), ("guard", "dead_letter_fraction", 0), ("guard", "dead_letter_window", 1),
    ("guard", "stall_s", 1), ("guard", "unassigned_exit_s", 0),
)


def _check_ranges(settings: Settings) -> None:
    for section, key, minimum in _MINIMA:
        value = getattr(getattr(settings, section), key)
        if value < minimum:
            raise ConfigError(f"{section}.{key} must be ≥ {minimum}, got {value}")
    if settings.batch.max_buffered < settings.batch.max_size:
        raise ConfigError("batch.max_buffered must be ≥ batch.max_size")
    if settings.batch.store_beside not in STORE_BESIDE_MODES:
        raise ConfigError(f"batch.store_beside must be one of {', '.join(STORE_BESIDE_MODES)}, "
                          f"got {settings.batch.store_beside!r}")
    if settings.scoring.scorers > MAX_SCORERS:
        raise ConfigError(f"scoring.scorers must be ≤ {MAX_SCORERS}, got {settings.scoring.scorers}")
    if settings.scoring.scorers and settings.scoring.devices:
        raise ConfigError("scoring.scorers and scoring.devices are both set: devices already lists one scorer per "
                          "entry; set one of them")
    if settings.guard.dead_letter_fraction > 1:
        raise ConfigError(f"guard.dead_letter_fraction must be ≤ 1, got {settings.guard.dead_letter_fraction}")
    if settings.metrics.port > 65535:
        raise ConfigError(f"metrics.port must be ≤ 65535, got {settings.metrics.port}")
    _check_kafka(settings.kafka)
    if settings.logging.format not in ("text", "json"):
        raise ConfigError(f"logging.format must be text or json, got {settings.logging.format!r}")
    if settings.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"logging.level must be DEBUG, INFO, WARNING or ERROR, got {settings.logging.level!r}")
    for i, entry in enumerate(settings.watchlist):
        if not entry.name.strip() or not entry.model.strip() or not entry.calibration.strip():
            raise ConfigError(f"watchlist[{i}]: name, model and calibration must not be empty")


def _check_kafka(kafka: KafkaSettings) -> None:
    """The connection keys agree with each other, and every pass-through option is one the
    client knows (checked against kafka-python's own option names, in worker.kafka_io)."""
    if kafka.security_protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"kafka.security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                          f"got {kafka.security_protocol!r}")
    sasl = kafka.security_protocol.startswith("SASL_")
    if sasl and kafka.sasl_mechanism not in SASL_MECHANISMS:
        raise ConfigError(f"kafka.sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)} with "
                          f"{kafka.security_protocol}, got {kafka.sasl_mechanism!r}")
    if not sasl and kafka.sasl_mechanism:
        raise ConfigError(f"kafka.sasl_mechanism is set but kafka.security_protocol is {kafka.security_protocol}: "
                          "use SASL_SSL (or SASL_PLAINTEXT)")
    if sasl and kafka.sasl_mechanism == "OAUTHBEARER":
        if not (kafka.sasl_oauth_token or kafka.sasl_oauth_token_file):
            raise ConfigError("kafka.sasl_mechanism OAUTHBEARER needs kafka.sasl_oauth_token_file "
                              "(or AEDR_KAFKA__SASL_OAUTH_TOKEN)")
    elif sasl:
        if not kafka.sasl_username or not (kafka.sasl_password or kafka.sasl_password_file):
            raise ConfigError(f"kafka.sasl_mechanism {kafka.sasl_mechanism} needs kafka.sasl_username and "
                              "AEDR_KAFKA__SASL_PASSWORD (or kafka.sasl_password_file)")
    if (kafka.ssl_certfile or kafka.ssl_keyfile) and not kafka.ssl_certfile:
        raise ConfigError("kafka.ssl_keyfile is set without kafka.ssl_certfile")
    ssl_keys = [k for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_crlfile") if getattr(kafka, k)]
    if ssl_keys and kafka.security_protocol not in ("SSL", "SASL_SSL"):
        raise ConfigError(f"kafka.{ssl_keys[0]} is set but kafka.security_protocol is {kafka.security_protocol}: "
                          "use SSL or SASL_SSL")
    for key in ssl_keys:
        if not Path(getattr(kafka, key)).is_file():
            raise ConfigError(f"kafka.{key} {getattr(kafka, key)}: no such file")
    strategies = kafka.partition_assignment_strategy
    unknown = [s for s in strategies if s not in ASSIGNMENT_STRATEGIES]
    if not strategies or unknown:
        raise ConfigError(f"kafka.partition_assignment_strategy: each must be one of "
                          f"{', '.join(ASSIGNMENT_STRATEGIES)}, got {list(strategies)}")
    from .kafka_io import check_client_options  # kafka_io is the only module that imports kafka-python

    for role in ("consumer", "producer", "admin"):
        check_client_options(role, getattr(kafka, f"{role}_options"))


_SECRET_KEYS = ("sasl_password", "ssl_password", "sasl_oauth_token")


def _refuse_secrets_in_file(raw: dict[str, Any]) -> None:
    """Passwords come from the environment or a secret file, never from the TOML (which ends up
    in ConfigMaps, repositories and support tickets)."""
    from sqlalchemy.engine import make_url

    url = raw.get("database", {}).get("url")
    if isinstance(url, str) and url:
        try:
            has_password = make_url(url).password is not None
        except Exception:
            has_password = False
        if has_password or _query_secret(url):
            raise ConfigError(
                "database.url in the config file contains a password; set AEDR_DATABASE__URL "
                "or database.url_file (a secret file) instead"
            )
    kafka = raw.get("kafka", {})
    if not isinstance(kafka, dict):
        return
    for key in _SECRET_KEYS:
        if kafka.get(key):
            raise ConfigError(f"kafka.{key} must not be in the config file; set AEDR_KAFKA__{key.upper()} "
                              f"or kafka.{key}_file (a secret file)")
    for table in ("consumer_options", "producer_options", "admin_options"):
        options = kafka.get(table)
        for key in options if isinstance(options, dict) else ():
            if "password" in key or "token" in key:
                raise ConfigError(f"kafka.{table}.{key} must not be in the config file; use kafka.sasl_password_file, "
                                  "kafka.ssl_password_file or kafka.sasl_oauth_token_file")


# libpq and psycopg2 take these in a URL's query string too (`?password=…`).
_SECRET_QUERY_KEYS = ("password", "sslpassword")


def _query_secret(url: str) -> bool:
    import urllib.parse

    query = urllib.parse.urlsplit(url).query if "?" in url else ""
    return any(k.lower() in _SECRET_QUERY_KEYS and v for k, v in urllib.parse.parse_qsl(query))


def mask_url(url: str) -> str:
    """A database URL with its password replaced by ***, for logs: the `user:password@` form
    and `?password=` / `?sslpassword=` in the query string alike."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return "<unparseable database url>"
    query = {k: ("***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def database_secrets(url: str) -> list[str]:
    """Every password-like value in a database URL (as written and URL-decoded), so that an error
    message that quotes the URL or a part of it can be scrubbed (`scrub`)."""
    import urllib.parse

    found: list[str] = []
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.password:
            found.append(str(parsed.password))
        for key, value in parsed.query.items():
            if key.lower() in _SECRET_QUERY_KEYS:
                found += [value] if isinstance(value, str) else list(value)
    except Exception:
        pass
    userinfo = url.partition("://")[2].rpartition("@")[0]
    if ":" in userinfo:  # also for a URL SQLAlchemy cannot parse
        found.append(userinfo.partition(":")[2])
    for key, value in urllib.parse.parse_qsl(url.partition("?")[2]):
        if key.lower() in _SECRET_QUERY_KEYS:
            found.append(value)
    found += [urllib.parse.quote(s, safe="") for s in found] + [urllib.parse.unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (an error message) with every password of the database URL `url` replaced by ***."""
    for secret in database_secrets(url):
        text = text.replace(secret, "***")
    return text
