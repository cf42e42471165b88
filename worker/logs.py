"""How `aedr serve` logs: text for people, or one JSON object per line for log pipelines
(`[logging] format = "json"`).

A JSON line has `time` (RFC 3339, UTC), `level`, `logger`, `message`, `exc_info` when there is a
traceback, and every field the call passed with `extra=`: the worker passes `event_id`, `topic`,
`partition`, `offset` (and `partitions` on a rebalance) where it logs about them, so a pipeline
can search by them without parsing messages. Configured once, by `configure`, in main.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(format: str = "text", level: str = "INFO") -> None:
    """The root logger writes to stderr in `format` ("text" or "json") at `level`."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
