"""Generated sections of the project's Markdown docs: the text between `<!-- BEGIN name -->` and
`<!-- END name -->` is replaced by what a script or benchmark measured, and the hand-written
prose around it is kept. One copy for scripts/ and bench/ (nothing here runs in production)."""

from __future__ import annotations

from pathlib import Path


def write_section(doc: Path, name: str, text: str, *, create: bool = False) -> None:
    """Put `text` between the markers of section `name` in `doc`. A missing section is appended
    at the end with `create` (the file too), else it is a ValueError that names the markers."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    body = doc.read_text() if doc.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    start = body.find(begin)
    stop = body.find(end, start + len(begin)) if start >= 0 else -1
    if start >= 0 and stop >= 0:
        body = body[:start] + block + body[stop + len(end):]
    elif create:
        body = body.rstrip("\n") + f"\n\n{block}\n"
    else:
        raise ValueError(f"{doc} has no {begin} … {end} section")
    doc.write_text(body)
