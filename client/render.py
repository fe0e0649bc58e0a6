"""Events as a person reads them (text, optional colour) or as JSON lines."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from zchat.client import events as ev
from zchat.client.commands import ACTION_PREFIX

#: Readable ANSI colours on dark and light backgrounds, one picked per name.
PALETTE = (31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96)
DIM, BOLD, RED, RESET = "\x1b[2m", "\x1b[1m", "\x1b[31m", "\x1b[0m"


def colour_of(name: str) -> int:
    digest = hashlib.blake2s(name.lower().encode(), digest_size=2).digest()
    return PALETTE[int.from_bytes(digest, "big") % len(PALETTE)]


class Renderer:
    """Formats events for one user; `colour` adds ANSI escapes."""

    def __init__(self, me: str, colour: bool = False) -> None:
        self.me = me
        self.colour = colour

    def line(self, event: ev.Event) -> str | None:
        """One line for a person, or None when there is nothing to show."""
        if isinstance(event, ev.Message):
            return self._message(event)
        if isinstance(event, ev.Presence):
            verb = "joined" if event.event == "join" else f"left ({event.reason})"
            return self._dim(f"{self._time(event.time)} -- {self._name(event.name)} {verb}")
        if isinstance(event, ev.Ack):
            if event.target == "*":
                return None  # our own broadcast comes back from the broker: that line shows it
            return f"{self._time(event.time)} {self._private_tag()} you -> {self._name(event.target)}: {event.text}"
        if isinstance(event, ev.Refusal):
            what = f"not sent to {event.target}" if event.target and event.target != "*" else "not sent"
            if event.code == ev.USAGE:
                what = "error"
            return self._error(f"!! {what}: {event.text} ({event.code})")
        if isinstance(event, ev.Users):
            return f"online ({len(event.names)}): {', '.join(event.names) or 'nobody'}"
        mark = "!!" if event.state in (ev.State.RECONNECTING, ev.State.OFFLINE) else "--"
        return self._dim(f"{mark} {event.detail}") if mark == "--" else self._error(f"{mark} {event.detail}")

    def _message(self, m: ev.Message) -> str:
        stamp = self._time(m.time)
        if m.text.startswith(ACTION_PREFIX):
            body = f"* {self._name(m.sender)} {m.text[len(ACTION_PREFIX) :]}"
        else:
            body = f"<{self._name(m.sender)}> {m.text}"
        if m.private:
            return f"{stamp} {self._private_tag()} {self._name(m.sender)} -> you: {m.text}"
        return f"{stamp} {body}"

    def _time(self, t: datetime) -> str:
        return self._dim(t.astimezone().strftime("[%H:%M:%S]"))

    def _name(self, name: str) -> str:
        if not self.colour:
            return name
        return f"\x1b[{colour_of(name)}m{name}{RESET}"

    def _private_tag(self) -> str:
        return f"{BOLD}[private]{RESET}" if self.colour else "[private]"

    def _dim(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.colour else text

    def _error(self, text: str) -> str:
        return f"{RED}{text}{RESET}" if self.colour else text


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(event: ev.Event) -> str:
    """One JSON object for `--json`; README lists the fields."""
    data: dict[str, Any]
    if isinstance(event, ev.Message):
        data = {"type": "message", "kind": "private" if event.private else "broadcast",
                "id": event.msg_id, "from": event.sender, "to": event.target, "time": iso(event.time)}  # fmt: skip
        if event.text.startswith(ACTION_PREFIX):
            data.update(text=event.text[len(ACTION_PREFIX) :], action=True)
        else:
            data["text"] = event.text
    elif isinstance(event, ev.Presence):
        data = {"type": "presence", "event": event.event, "name": event.name, "time": iso(event.time)}
        if event.reason:
            data["reason"] = event.reason
    elif isinstance(event, ev.Ack):
        data = {"type": "ack", "id": event.msg_id, "to": event.target, "status": event.status,
                "time": iso(event.time)}  # fmt: skip
    elif isinstance(event, ev.Refusal):
        data = {"type": "error", "id": event.msg_id, "code": event.code, "text": event.text}
        if event.target:
            data["to"] = event.target
    elif isinstance(event, ev.Users):
        data = {"type": "users", "names": list(event.names)}
    else:
        data = {"type": "status", "state": event.state.value, "text": event.detail}
    return json.dumps(data, ensure_ascii=False)
