"""Render the figures that the fault and hostile-input tests recorded ($AEDR_RELIABILITY_REPORT,
JSON lines) as the Markdown table of docs/RELIABILITY.md. Every cell is a figure a test counted
from the data (tests/integration/conftest.py, `delivery`): "–" where a scenario did not measure
it.

    AEDR_RELIABILITY_REPORT=docs/reliability-run.jsonl .venv/bin/python -m pytest -s <the tests>
    .venv/bin/python scripts/reliability_table.py docs/reliability-run.jsonl
"""

from __future__ import annotations

import json
import sys

COLUMNS = [
    ("trials", "trials"),
    ("produced", "events produced"),
    ("stored", "events stored"),
    ("lost", "lost"),
    ("duplicated", "duplicated rows"),
    ("dead_lettered", "dead-lettered"),
    ("scored", "scored"),
    ("alerts", "alerts published / distinct"),
    ("dead_letters", "dead letters published / distinct"),
    ("processed_more_than_once", "events processed more than once"),
    ("restarts", "worker restarts"),
]


def cell(row: dict, key: str) -> str:
    if key in ("alerts", "dead_letters"):
        published, distinct = row.get(f"{key}_published"), row.get(f"{key}_distinct")
        if published is None:
            return "–"
        return f"{published} / {distinct}" if distinct is not None else str(published)
    value = row.get(key)
    return "–" if value is None else str(value)


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print("| fault or input class | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for r in rows:
        print(f"| {r['fault']} | " + " | ".join(cell(r, key) for key, _ in COLUMNS) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
