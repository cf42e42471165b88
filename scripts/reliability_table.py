"""Render the figures that the fault, hostile-input and lifecycle tests recorded
($AEDR_RELIABILITY_REPORT, JSON lines) as the Markdown tables of docs/RELIABILITY.md. Every cell
is a figure a test counted from the data (tests/integration/conftest.py, `delivery`): "–" where
a scenario did not measure it. The second table lists what each scenario measured beyond the
common columns (kills that landed mid-batch, store retries during an outage, partitions revoked
in a storm, …), so that the prose of the document needs no figure of its own.

    AEDR_RELIABILITY_REPORT=docs/reliability-run.jsonl .venv/bin/python -m pytest -s <the tests>
    .venv/bin/python scripts/reliability_table.py docs/reliability-run.jsonl [--doc docs/RELIABILITY.md]

With --doc, the tables replace what stands between `<!-- BEGIN reliability -->` and
`<!-- END reliability -->` in that file; otherwise they are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.doc_sections import write_section  # noqa: E402

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
# Keys that are in the first table, or say nothing a reader needs (the bookkeeping of `delivery`).
COMMON = {key for key, _ in COLUMNS} | {"fault", "alerts_published", "alerts_distinct", "dead_letters_published",
                                        "dead_letters_distinct", "alerts_missing", "seed"}


def cell(row: dict, key: str) -> str:
    if key in ("alerts", "dead_letters"):
        published, distinct = row.get(f"{key}_published"), row.get(f"{key}_distinct")
        if published is None:
            return "–"
        return f"{published} / {distinct}" if distinct is not None else str(published)
    value = row.get(key)
    return "–" if value is None else str(value)


def value_text(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
    return str(value)


def tables(rows: list[dict]) -> str:
    lines = ["| fault or input class | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    lines += [f"| {r['fault']} | " + " | ".join(cell(r, key) for key, _ in COLUMNS) + " |" for r in rows]
    extra = [(r["fault"], k.replace("_", " "), value_text(v)) for r in rows for k, v in r.items() if k not in COMMON]
    if extra:
        lines += ["", "What each scenario measured besides (keys as the tests record them):", "",
                  "| scenario | measured | value |", "|---|---|---|"]
        lines += [f"| {fault} | {key} | {value} |" for fault, key, value in extra]
    seeds = sorted({r["seed"] for r in rows if "seed" in r})
    if seeds:
        lines += ["", "Seeds of this run: " + ", ".join(str(s) for s in seeds) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="the JSON lines the tests wrote")
    parser.add_argument("--doc", type=Path, help="write the tables into this Markdown file")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in open(args.report) if line.strip()]
    text = tables(rows)
    if args.doc:
        try:
            write_section(args.doc, "reliability", text)
        except ValueError as exc:
            raise SystemExit(f"reliability_table: {exc}") from None
    else:
        print(text)


if __name__ == "__main__":
    main()
