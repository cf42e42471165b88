"""Render the figures that the fault and hostile-input tests recorded ($AEDR_RELIABILITY_REPORT,
JSON lines) as the Markdown table of docs/RELIABILITY.md.

    AEDR_RELIABILITY_REPORT=docs/reliability-run.jsonl make test
    .venv/bin/python scripts/reliability_table.py docs/reliability-run.jsonl
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print("| fault or input class | trials | events produced | lost | duplicated | dead-lettered | scored | worker restarts |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        scored = r.get("scored", r["produced"] - r.get("dead_lettered", 0))
        print(f"| {r['fault']} | {r['trials']} | {r['produced']} | {r['lost']} | {r['duplicated']} | "
              f"{r.get('dead_lettered', 0)} | {scored} | {r['restarts']} |")


if __name__ == "__main__":
    main(sys.argv[1])
