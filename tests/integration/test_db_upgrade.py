"""`aedr db upgrade` through the real command, on Postgres and on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import create_engine, inspect

from worker.harness import REPO, postgres_database

EXPECTED = {
    "events": {"event_id", "topic", "partition", "offset", "status", "error", "received_at", "scored_at", "best_match"},
    "attributions": {"event_id", "model", "loss1", "loss2", "ratio", "homogeneity", "score", "threshold", "belongs", "scored_at"},
    "calibrations": {"model", "weights_sha256", "alpha", "threshold", "n", "preprocessing_sha256", "calibrated_at", "recorded_at"},
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
        assert inspector.get_pk_constraint("attributions")["constrained_columns"] == ["event_id", "model"]
        assert inspector.get_pk_constraint("events")["constrained_columns"] == ["event_id"]
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
