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

ENV_PREFIX = "AEDR_"
# The autoencoder families a watchlist entry's `kind` may name: the kinds of worker.models.FAMILIES,
# spelt out here so that settings and `aedr --help` need no torch import (a unit test keeps the
# two equal). Empty `kind` means "from the model's config.json".
AUTOENCODER_KINDS = ("kl", "vq", "tiny", "flux2", "qwenimage", "qwenimage21", "wan", "dc", "hunyuanimage")


class ConfigError(AedrError, ValueError):
    """The configuration is missing, malformed or inconsistent; one line says which key."""


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "uploads"
    group_id: str = "aedr"
    alerts_topic: str = "aedr.alerts"
    dlq_topic: str = "uploads.dlq"
    client_id: str = "aedr-worker"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    max_partition_fetch_bytes: int = 32 * 1024 * 1024
    max_request_size: int = 32 * 1024 * 1024
    max_alert_bytes: int = 1_000_000  # alerts' metadata is cut (and marked) to fit; brokers default to ~1 MB
    auto_offset_reset: str = "earliest"


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///aedr.sqlite"
    url_file: str = ""  # read the URL from this file instead (a mounted secret)

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
    # Batches in flight per scorer. 1: score, then store and commit, with nothing running beside
    # the model; 2: store and commit one batch while the next is scored. -1 = auto (1 on CPU, 2 on CUDA).
    inflight: int = -1

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


@dataclass(frozen=True)
class ScoringSettings:
    device: str = "auto"
    devices: tuple[str, ...] = ()  # several GPUs: one scorer per device, e.g. ("cuda:0", "cuda:1")
    batch_size: int = 16  # images per autoencoder call (a micro-batch is split into these)
    threads: int = 0  # torch intra-op threads; 0 = torch's default (all cores)
    compile: str = "off"  # torch.compile mode: off | default | reduce-overhead | max-autotune
    channels_last: bool = True  # NHWC memory format for the autoencoders
    max_batch_pixels: int = -1  # pixels per autoencoder call: -1 = auto (131 072 on CPU, none on CUDA), 0 = none
    # Fixed glibc malloc thresholds, so the scoring thread reuses its buffers instead of faulting
    # fresh pages each batch (worker/allocator.py); off leaves malloc to MALLOC_* or LD_PRELOAD.
    malloc_tuning: bool = True


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
class WatchlistEntry:
    name: str
    model: str
    calibration: str
    subfolder: str = ""
    kind: str = ""
    dtype: str = "fp32"


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
    elif origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    raise ConfigError(f"{where}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


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
    ("scoring", "batch_size", 1), ("scoring", "threads", 0),
    ("kafka", "max_request_size", 1024), ("kafka", "max_alert_bytes", 1024),
    ("kafka", "session_timeout_ms", 1), ("kafka", "heartbeat_interval_ms", 1),
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
    if settings.guard.dead_letter_fraction > 1:
        raise ConfigError(f"guard.dead_letter_fraction must be ≤ 1, got {settings.guard.dead_letter_fraction}")
    if settings.metrics.port > 65535:
        raise ConfigError(f"metrics.port must be ≤ 65535, got {settings.metrics.port}")
    for i, entry in enumerate(settings.watchlist):
        if not entry.name.strip() or not entry.model.strip() or not entry.calibration.strip():
            raise ConfigError(f"watchlist[{i}]: name, model and calibration must not be empty")


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
        if has_password:
            raise ConfigError(
                "database.url in the config file contains a password; set AEDR_DATABASE__URL "
                "or database.url_file (a secret file) instead"
            )
    if raw.get("kafka", {}).get("sasl_password"):
        raise ConfigError("kafka.sasl_password must not be in the config file; set AEDR_KAFKA__SASL_PASSWORD")


def mask_url(url: str) -> str:
    """A database URL with its password replaced by ***, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database url>"
