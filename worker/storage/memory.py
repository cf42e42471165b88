"""The store in memory, for fast unit tests: the same rules (worker.storage.records) and the
same read API as `SqlStore`; both pass tests/integration/test_storage.py."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from .records import CHILDREN, CalibrationRecord, EventOutcome, Stored, child_rows, columns, settle


@dataclass
class MemoryStore:
    """`fail_next` makes the next N saves (and pings) raise, as an unreachable database would;
    `refuse` names outcomes the database refuses as data."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # events, by event_id
    children: dict[tuple[str, str], dict[tuple, dict[str, Any]]] = field(default_factory=dict)
    calibration_rows: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    published_keys: dict[str, set[str]] = field(default_factory=dict)
    saves: int = 0
    fail_next: int = 0
    refuse: Callable[[EventOutcome], bool] = lambda outcome: False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    _KEYS = {"attributions": ("model", "calibration_sha256"), "provenance": ("idx",), "provenance_errors": ("idx",)}

    def save(self, outcomes: Sequence[EventOutcome], published: Sequence[tuple[str, str]] = ()) -> list[Stored]:
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("memory store: simulated outage")
            refused = [o.event_id for o in outcomes if self.refuse(o)]
            if refused:
                raise ValueError(f"memory store: rows refused as data: {refused[:3]}")
            self.saves += 1
            self._mark(published)
            result = []
            for o in outcomes:
                existed = o.event_id in self.rows
                if not existed:
                    self.rows[o.event_id] = columns(o, skip=CHILDREN)
                for name, rows in zip(CHILDREN, child_rows(o)):
                    table = self.children.setdefault((name, o.event_id), {})
                    for row in rows:
                        table.setdefault(tuple(row[k] for k in self._KEYS[name]), row)
                if existed:
                    attributions = self.children.get(("attributions", o.event_id), {}).values()
                    self.rows[o.event_id].update(settle(self.rows[o.event_id], o, attributions))
                result.append(Stored(existed, frozenset(self.published_keys.get(o.event_id, ()))))
            return result

    def mark_published(self, published: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            self._mark(published)

    def _mark(self, published: Sequence[tuple[str, str]]) -> None:
        for event_id, key in published:
            self.published_keys.setdefault(event_id, set()).add(key)

    def record_calibrations(self, records: Sequence[CalibrationRecord]) -> None:
        with self._lock:
            for r in records:
                self.calibration_rows.setdefault((r.model, r.calibration_sha256),
                                                 {**columns(r), "recorded_at": datetime.now(timezone.utc)})

    def ping(self) -> None:
        if self.fail_next:
            raise ConnectionError("memory store: simulated outage")

    def is_data_error(self, exc: Exception) -> bool:
        return isinstance(exc, ValueError)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.rows.values()]

    def attributions(self) -> list[dict[str, Any]]:
        return self._children("attributions")

    def provenance_signals(self) -> list[dict[str, Any]]:
        return self._children("provenance")

    def provenance_errors(self) -> list[dict[str, Any]]:
        return self._children("provenance_errors")

    def published(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"event_id": e, "key": k} for e, keys in self.published_keys.items() for k in sorted(keys)]

    def _children(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for (kind, _), table in self.children.items() if kind == name for row in table.values()]

    def calibrations(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.calibration_rows.values()]

    def count_events(self) -> int:
        with self._lock:
            return len(self.rows)

    def close(self) -> None:
        pass
