"""What goes over the WebSocket: the browser's commands, typed, and the gateway's own replies.

Events from the chat are `zchat connect --json` objects (client/render.py to_data) with an
`eid`; docs/WEB.md lists every field. One table here says which fields each command takes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Refusal codes of the gateway itself, beside the broker's and the library's (docs/WEB.md).
BAD_COMMAND = 620  # not JSON, an unknown type, or a field missing or of the wrong kind
NOT_INVITED = 621  # with a CURVE broker: no valid invitation for that name
FULL = 622  # the gateway holds as many sessions as it may
SIGN_IN_FAILED = 623  # the broker or the library refused the sign-in (the text says why)


@dataclass(frozen=True, slots=True)
class Command:
    """One message from the browser: its type and its fields, checked against FIELDS."""

    type: str
    cid: int  # the page's own counter, 0 for hello/resume/quit: repeats are dropped
    fields: dict[str, Any]

    def text(self, name: str) -> str:
        value: str = self.fields.get(name, "")
        return value

    def number(self, name: str, default: int = 0) -> int:
        value: int = self.fields.get(name, default)
        return value


class BadCommand(Exception):
    """What the browser sent is not a command; the text says why."""


#: type -> (required fields, optional fields, whether it needs a session and a cid), each a name -> type.
FIELDS: dict[str, tuple[dict[str, type], dict[str, type], bool]] = {
    "hello": ({"name": str}, {"invite": str}, False),
    "resume": ({"session": str, "last": int}, {}, False),
    "line": ({"text": str}, {"where": str}, True),
    "send": ({"to": str, "text": str}, {}, True),
    "history": ({"room": str}, {"before": int, "count": int}, True),
    "who": ({}, {}, True),
    "rooms": ({}, {}, True),
    "names": ({"room": str}, {}, True),
    "search": ({"words": str}, {}, True),
    "quit": ({}, {}, False),
}


def parse(raw: str | bytes) -> Command:
    """A browser's message to a Command, or BadCommand saying what is wrong with it."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadCommand("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise BadCommand("not an object with a type")
    kind = data["type"]
    if kind not in FIELDS:
        raise BadCommand(f"unknown type {kind[:40]!r}")
    required, optional, sequenced = FIELDS[kind]
    fields: dict[str, Any] = {}
    for name, expected in (*required.items(), *optional.items()):
        if name not in data:
            if name in required:
                raise BadCommand(f"{kind} needs {name}")
            continue
        value = data[name]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise BadCommand(f"{kind}: {name} must be a {expected.__name__}")
        fields[name] = value
    cid = data.get("cid", 0)
    if sequenced and (not isinstance(cid, int) or isinstance(cid, bool) or cid < 1):
        raise BadCommand(f"{kind} needs cid, a number from 1")
    return Command(kind, cid if sequenced else 0, fields)


def encode(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False)
