"""The store contract, run on every implementation: SqlStore on the real Postgres (one
multi-row statement per table) and on SQLite, and the in-memory MemoryStore that the fast
unit tests use. What is saved reads back exactly, and a batch that comes again adds nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from worker.storage import (
    Stored,
    AttributionRecord, CalibrationRecord, EventOutcome, MemoryStore, ProvenanceErrorRecord, ProvenanceRecord, SqlStore,
    upgrade,
)


def outcomes(first: int, n: int) -> list[EventOutcome]:
    t0 = datetime(2026, 11, 28, 4, 0, 0, 123000, tzinfo=timezone.utc)
    out = []
    for i in range(first, first + n):
        received = t0 + timedelta(seconds=i)
        if i % 3 == 2:  # a dead letter: no scores, an error with quotes, a percent sign and non-ASCII
            out.append(EventOutcome(f"ev-{i}", "uploads", i % 2, i, "failed", received,
                                    error=f"bad_json: it's 100% \"broken\" — ünïcode {i}",
                                    provenance_errors=(ProvenanceErrorRecord(0, "iptc", "malformed", f"DTD refused — {i}%"),)
                                    if i % 2 else ()))
            continue
        provenance = (
            ProvenanceRecord(0, "c2pa", "trusted", "stable-diffusion-xl", True, True,
                             '{"actions":[{"action":"c2pa.created"}],"signer":"it\'s \\u00fc 100%"}'),
            ProvenanceRecord(1, "watermark", "unsigned", None, True, i % 2 == 0, '{"matching_bits":%d}' % (40 + i % 9)),
        )[: i % 5 % 3]  # none, one or two signals
        attributions = tuple(
            AttributionRecord(m, 1e-3 * (i + 1), 1e-4 * (i + 2), 10.0 + i / 7, 0.25 + i / 1000, (10.0 + i / 7) * 0.25,
                              2.5, i % 2 == 0)
            for m in ("sd15", "flux")
        )
        out.append(EventOutcome(f"ev-{i}", "uploads", i % 2, i, "scored", received, received + timedelta(milliseconds=40),
                                best_match="sd15" if i % 2 == 0 else None, attributions=attributions,
                                provenance=provenance,
                                provenance_errors=(ProvenanceErrorRecord(0, "file", "limit", "10000 chunks; limit 256"),)
                                if i % 4 == 0 else ()))
    return out


@pytest.fixture(params=["postgres", "sqlite", "memory"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'aedr.sqlite'}"
        upgrade(url)
    s = SqlStore.from_url(url)
    yield s
    s.close()


def test_saved_rows_read_back_exactly_and_redelivery_adds_nothing(store):
    store.save(outcomes(0, 16))
    store.save(outcomes(8, 16))  # half of it again (a redelivered batch), half new
    events = {r["event_id"]: r for r in store.events()}
    assert sorted(events) == sorted(f"ev-{i}" for i in range(24))
    attributions = {(r["event_id"], r["model"]): r for r in store.attributions()}
    signals = {(r["event_id"], r["idx"]): r for r in store.provenance_signals()}
    errors = {(r["event_id"], r["idx"]): r for r in store.provenance_errors()}
    assert len(signals) == len(store.provenance_signals()) and len(errors) == len(store.provenance_errors())
    expected = outcomes(0, 24)
    assert sum(len(o.provenance) for o in expected) == len(signals) > 10
    assert sum(len(o.provenance_errors) for o in expected) == len(errors) > 5
    assert len(attributions) == 2 * sum(1 for o in expected if o.status == "scored")
    for o in expected:
        row = events[o.event_id]
        assert (row["topic"], row["partition"], row["offset"], row["status"]) == (o.topic, o.partition, o.offset, o.status)
        assert row["error"] == o.error and row["best_match"] == o.best_match
        assert row["received_at"].replace(tzinfo=timezone.utc) == o.received_at  # SQLite drops the zone
        assert (row["scored_at"] and row["scored_at"].replace(tzinfo=timezone.utc)) == o.scored_at
        for a in o.attributions:
            stored = attributions[(o.event_id, a.model)]
            assert (stored["loss1"], stored["loss2"], stored["ratio"], stored["homogeneity"], stored["score"],
                    stored["threshold"], stored["belongs"]) == (a.loss1, a.loss2, a.ratio, a.homogeneity, a.score,
                                                                a.threshold, a.belongs)
        for p in o.provenance:
            got = signals.pop((o.event_id, p.idx))
            assert (got["kind"], got["strength"], got["generator"], got["generative"], got["alerted"], got["detail"]) == \
                (p.kind, p.strength, p.generator, p.generative, p.alerted, p.detail)
        for e in o.provenance_errors:
            got = errors.pop((o.event_id, e.idx))
            assert (got["kind"], got["reason"], got["message"]) == (e.kind, e.reason, e.message)
    assert signals == {} and errors == {}  # nothing beyond what was saved, once


def test_provenance_rows_of_an_event_are_stored_with_it_in_one_transaction(store):
    """A batch whose signal rows the database refuses stores nothing at all, its events rows
    included (one transaction); saved again correctly, it is stored once."""
    if isinstance(store, MemoryStore):
        pytest.skip("the in-memory store has no constraint to break")
    good = outcomes(0, 2)
    broken = [good[0], EventOutcome("ev-x", "uploads", 0, 99, "scored", good[0].received_at, good[0].scored_at,
                                    provenance=(ProvenanceRecord(0, "c2pa", "trusted", None, True, True, None),))]
    with pytest.raises(Exception, match="(?i)null"):
        store.save(broken)  # detail is NOT NULL
    assert store.count_events() == 0 and store.provenance_signals() == []
    store.save(good)
    store.save(good)
    assert store.count_events() == 2 and len(store.provenance_signals()) == 1


def test_calibration_records_are_kept_once(store):
    record = CalibrationRecord("sd15", "ab" * 32, 0.05, 2.5, 200, "cd" * 32, "2026-11-28T04:00:00Z")
    store.record_calibrations([record])
    store.record_calibrations([record])
    rows = store.calibrations()
    assert len(rows) == 1 and rows[0]["threshold"] == 2.5 and rows[0]["n"] == 200


def test_counts_match_what_was_stored(store):
    assert store.count_events() == 0
    store.save(outcomes(0, 5))
    store.save(outcomes(3, 4))
    assert store.count_events() == 7 == len(store.events())


def _scored(event_id: str, when: datetime, *verdicts: tuple[str, float, float, str, str]) -> EventOutcome:
    """verdicts: (model, score, threshold, mode, calibration)"""
    rows = tuple(AttributionRecord(m, 1e-3, 1e-3, 1.0, 0.5, score, tau, score < tau, mode, "w" * 64, cal)
                 for m, score, tau, mode, cal in verdicts)
    return EventOutcome(event_id, "uploads", 0, 1, "scored", when, when, attributions=rows)


def test_the_record_stays_true_when_an_event_comes_again(store):
    t0 = datetime(2026, 11, 28, 4, 0, tzinfo=timezone.utc)
    failed = EventOutcome("e1", "uploads", 0, 1, "failed", t0, error="too_large: image is 30 MB")
    (first,) = store.save([failed])
    assert first == Stored(existed=False, published=frozenset())
    store.mark_published([("e1", "dlq")])
    # replayed after the limit was raised: it scores now; a shadow model matches better
    later = _scored("e1", t0 + timedelta(hours=1), ("sd15", 0.8, 1.0, "alert", "c1"), ("new", 0.1, 1.0, "shadow", "n1"))
    (again,) = store.save([later])
    assert again == Stored(existed=True, published=frozenset({"dlq"}))
    row = {r["event_id"]: r for r in store.events()}["e1"]
    assert (row["status"], row["error"], row["best_match"]) == ("scored", None, "sd15")  # shadow never best
    # a rescan under a new calibration of sd15 (no longer a match) and a new alerting model
    rescan = _scored("e1", t0 + timedelta(hours=2), ("sd15", 0.8, 0.5, "alert", "c2"), ("flux", 0.3, 1.0, "alert", "f1"))
    store.save([rescan], published=[("e1", "alert:sd15@c1")])
    rows = {(a["model"], a["calibration_sha256"]) for a in store.attributions() if a["event_id"] == "e1"}
    assert rows == {("sd15", "c1"), ("new", "n1"), ("sd15", "c2"), ("flux", "f1")}  # every verdict kept
    assert {r["event_id"]: r for r in store.events()}["e1"]["best_match"] == "flux"  # from the current ones
    (third,) = store.save([rescan])
    assert third.published == {"dlq", "alert:sd15@c1"}
    # a redelivery that fails now does not undo the scored record
    store.save([EventOutcome("e1", "uploads", 0, 1, "failed", t0 + timedelta(hours=3), error="fetch: timeout")])
    row = {r["event_id"]: r for r in store.events()}["e1"]
    assert (row["status"], row["error"], row["best_match"]) == ("scored", None, "flux")
