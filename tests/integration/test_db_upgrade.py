"""`aedr db upgrade` through the real command, on Postgres and on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import create_engine, inspect

from worker.harness import REPO, postgres_database

EXPECTED = {
    "events": {"event_id", "topic", "partition", "offset", "status", "error", "received_at", "scored_at", "best_match"},
    "attributions": {"event_id", "model", "loss1", "loss2", "ratio", "homogeneity", "score", "threshold", "belongs", "scored_at",
                     "mode", "weights_sha256", "calibration_sha256"},
    "calibrations": {"model", "weights_sha256", "alpha", "threshold", "n", "preprocessing_sha256", "calibrated_at", "recorded_at",
                     "calibration_sha256"},
    "published": {"event_id", "key", "published_at"},
    "replays": {"fingerprint", "source", "reason", "replayed_at"},
    "provenance_signals": {"event_id", "idx", "kind", "strength", "generator", "generative", "alerted", "detail"},
    "provenance_errors": {"event_id", "idx", "kind", "reason", "message"},
}


def upgrade_via_cli(url: str, tmp_path) -> subprocess.CompletedProcess:
    config = tmp_path / "w.toml"
    config.write_text('[database]\nurl = "sqlite:///not-this-one.sqlite"\n')
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "db", "upgrade", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "AEDR_DATABASE__URL": url},
    )


def check_schema(url: str) -> None:
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        for table, columns in EXPECTED.items():
            assert {c["name"] for c in inspector.get_columns(table)} == columns
        assert inspector.get_pk_constraint("attributions")["constrained_columns"] == ["event_id", "model",
                                                                                      "calibration_sha256"]
        assert inspector.get_pk_constraint("calibrations")["constrained_columns"] == ["model", "calibration_sha256"]
        assert inspector.get_pk_constraint("published")["constrained_columns"] == ["event_id", "key"]
        assert inspector.get_pk_constraint("events")["constrained_columns"] == ["event_id"]
        for table in ("provenance_signals", "provenance_errors"):
            assert inspector.get_pk_constraint(table)["constrained_columns"] == ["event_id", "idx"]
            (fk,) = inspector.get_foreign_keys(table)
            assert (fk["referred_table"], fk["constrained_columns"]) == ("events", ["event_id"])
    finally:
        engine.dispose()


def test_db_upgrade_on_postgres(pg_server_url, tmp_path):
    with postgres_database(pg_server_url, "aedr_up", migrate=False) as url:
        result = upgrade_via_cli(url, tmp_path)
        assert result.returncode == 0, result.stderr
        check_schema(url)
        again = upgrade_via_cli(url, tmp_path)  # idempotent
        assert again.returncode == 0, again.stderr


def test_db_upgrade_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'aedr.sqlite'}"
    result = upgrade_via_cli(url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "not-this-one" not in result.stderr and "latest migration" in result.stderr
    check_schema(url)


def _rows_at_0001(url: str) -> dict[str, list[tuple]]:
    """Migrate to 0001 (the schema before provenance) and store one batch there, as a deployed
    worker would have: an event with its attributions, a dead letter, a calibration."""
    from sqlalchemy import text

    from worker.storage import upgrade

    upgrade(url, "0001")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO events (event_id, topic, partition, \"offset\", status, error, received_at, scored_at, best_match) "
                "VALUES ('old-1', 'uploads', 0, 7, 'scored', NULL, '2026-11-01 10:00:00+00', '2026-11-01 10:00:01+00', 'sd15'), "
                "('old-2', 'uploads', 1, 8, 'failed', 'decode: not an image', '2026-11-01 10:00:02+00', NULL, NULL)"))
            conn.execute(text(
                "INSERT INTO attributions (event_id, model, loss1, loss2, ratio, homogeneity, score, threshold, belongs, scored_at) "
                "VALUES ('old-1', 'sd15', 0.001, 0.0009, 1.1, 0.5, 0.55, 1.2, true, '2026-11-01 10:00:01+00')"))
            conn.execute(text(
                "INSERT INTO calibrations (model, weights_sha256, alpha, threshold, n, preprocessing_sha256, calibrated_at) "
                "VALUES ('sd15', 'ab', 0.05, 1.2, 100, 'cd', '2026-10-01T00:00:00Z')"))
        return _snapshot(engine)
    finally:
        engine.dispose()


# The columns of 0001, whose values must come through every later migration unchanged.
COLUMNS_0001 = {
    "events": '"event_id", "topic", "partition", "offset", "status", "error", "received_at", "scored_at", "best_match"',
    "attributions": '"event_id", "model", "loss1", "loss2", "ratio", "homogeneity", "score", "threshold", "belongs", '
                    '"scored_at"',
    "calibrations": '"model", "weights_sha256", "alpha", "threshold", "n", "preprocessing_sha256", "calibrated_at"',
}


def _snapshot(engine) -> dict[str, list[tuple]]:
    from sqlalchemy import text

    with engine.connect() as conn:
        return {table: sorted(tuple(str(v) for v in row) for row in conn.execute(text(f"SELECT {cols} FROM {table}")))
                for table, cols in COLUMNS_0001.items()}


def _check_carried_forward(url: str, before: dict[str, list[tuple]]) -> None:
    from datetime import datetime, timezone

    from worker.storage import EventOutcome, ProvenanceRecord, SqlStore

    check_schema(url)
    store = SqlStore.from_url(url)
    try:
        assert _snapshot(store.engine) == before and len(before["events"]) == 2
        assert store.provenance_signals() == [] and store.provenance_errors() == []
        (old,) = store.attributions()  # a verdict from before: judged in mode alert, calibration unknown
        assert (old["mode"], old["calibration_sha256"], old["weights_sha256"]) == ("alert", "legacy", "")
        (calibration,) = store.calibrations()
        assert calibration["calibration_sha256"].startswith("legacy-") and calibration["weights_sha256"] == "ab"
        now = datetime(2026, 11, 29, tzinfo=timezone.utc)
        new = EventOutcome("new-1", "uploads", 0, 9, "scored", now, now,
                           provenance=(ProvenanceRecord(0, "c2pa", "trusted", "stable-diffusion-xl", True, True, "{}"),))
        store.save([new])
        store.save([new])
        assert [(r["event_id"], r["kind"]) for r in store.provenance_signals()] == [("new-1", "c2pa")]
        assert store.count_events() == 3
    finally:
        store.close()


def test_db_upgrade_from_0001_carries_rows_forward_on_postgres(pg_server_url, tmp_path):
    with postgres_database(pg_server_url, "aedr_up2", migrate=False) as url:
        before = _rows_at_0001(url)
        result = upgrade_via_cli(url, tmp_path)
        assert result.returncode == 0, result.stderr
        _check_carried_forward(url, before)


def test_db_upgrade_from_0001_carries_rows_forward_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    before = _rows_at_0001(url)
    result = upgrade_via_cli(url, tmp_path)
    assert result.returncode == 0, result.stderr
    _check_carried_forward(url, before)
