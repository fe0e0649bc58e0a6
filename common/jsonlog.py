"""Log lines as JSON, one object a line, for log collectors (`zchat broker --log-format json`).

Each line holds the time (UTC, ISO 8601, milliseconds), the level, the
logger, the event and its fields, and the readable message. A log call names
its event and fields with `extra=fields("joined", name=..., online=...)`;
one that does not has its message template as event and its arguments as
fields["args"], so nothing it said is lost.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any


def fields(event: str, **values: object) -> dict[str, Any]:
    """What a log call gives as `extra` to name its event and fields."""
    return {"event": event, "fields": values}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        named = getattr(record, "fields", None)
        if isinstance(named, dict):
            values = dict(named)
        elif isinstance(record.args, tuple) and record.args:
            values = {"args": list(record.args)}
        else:
            values = {}
        when = datetime.fromtimestamp(record.created, timezone.utc)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or str(record.msg),
            "fields": values,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str, log_format: str) -> None:
    """The root logger on stderr, as text (the default) or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
