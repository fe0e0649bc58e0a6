"""Events as a person reads them (text, optional colour) or as JSON lines."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, is_dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Any

from zchat.client import events as ev
from zchat.client.commands import ACTION_PREFIX

#: Readable ANSI colours on dark and light backgrounds, one picked per name.
PALETTE = (31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96)
DIM, BOLD, RED, RESET = "\x1b[2m", "\x1b[1m", "\x1b[31m", "\x1b[0m"


#: Unicode's Bidi_Control characters: they reorder the text after them, so a line can read as another.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _mark(code: int) -> str:
    """What is shown instead of a character that would steer the terminal."""
    if code == 0x0A:
        # "␤", not a line break: one event stays one line (line mode promises it), so no
        # one's text can start a line of its own with a stamp and a name that look like ours.
        return "\u2424"
    if code == 0x09:
        return " "  # how wide a tab is depends on the column it lands in
    if code < 0x20:
        return chr(0x2400 + code)  # the control pictures: ␛ for ESC, ␍ for CR, ␈ for BS
    if code == 0x7F:
        return "\u2421"
    return f"<U+{code:04X}>"


#: C0, DEL, C1 (some terminals read U+009B as CSI), line and paragraph separators, lone
#: surrogates (no terminal's encoding takes them: writing one would raise) and bidi controls.
_VISIBLE = {
    code: _mark(code)
    for code in (
        *range(0x20),
        *range(0x7F, 0xA0),
        0x2028,
        0x2029,
        *range(0xD800, 0xE000),
        *map(ord, BIDI_CONTROLS),
    )
}


def visible(text: str) -> str:
    """`text` as it may be written to a terminal: what could steer it is shown, not obeyed."""
    return text.translate(_VISIBLE)


def shown(event: ev.Event) -> ev.Event:
    """The event with every text in it visible(): other people's and the broker's alike."""
    result: ev.Event = _shown(event)
    return result


def _shown(value: Any) -> Any:
    if isinstance(value, Enum):
        return value  # ours (State is a str), and compared by identity
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, tuple):
        return tuple(_shown(item) for item in value)
    if not is_dataclass(value) or isinstance(value, type):
        return value
    texts = {field.name: _shown(getattr(value, field.name)) for field in fields(value)}
    if isinstance(value, ev.Message) and value.text.startswith(ACTION_PREFIX):
        # The one control character that is the renderer's to read: the action's marker.
        texts["text"] = ACTION_PREFIX + visible(value.text[len(ACTION_PREFIX) :])
    return replace(value, **texts)


def colour_of(name: str) -> int:
    digest = hashlib.blake2s(name.lower().encode(), digest_size=2).digest()
    return PALETTE[int.from_bytes(digest, "big") % len(PALETTE)]


class Renderer:
    """Formats events for one user; `colour` adds ANSI escapes."""

    def __init__(self, me: str, colour: bool = False) -> None:
        self.me = me
        self.colour = colour

    def line(self, event: ev.Event) -> str | None:
        """One line for a person, or None when there is nothing to show.

        Every text in the event goes through visible() first, so the only escapes
        written are the colours added here.
        """
        return self._line(shown(event))

    def _line(self, event: ev.Event) -> str | None:
        if isinstance(event, ev.Message):
            return self._message(event)
        if isinstance(event, ev.Presence):
            return self._presence(event)
        if isinstance(event, ev.Ack):
            return self._ack(event)
        if isinstance(event, ev.Receipt):
            what = f": {event.text}" if event.text else f" (id {event.msg_id})"
            return self._dim(f"{self._time(event.time)} ✓ delivered to {self._name(event.recipient)}{what}")
        if isinstance(event, ev.RoomList):
            return self._rooms(event)
        if isinstance(event, ev.History):
            if not event.messages:
                return self._dim(f"-- no earlier messages in {event.room}")
            return self._dim(f"-- {len(event.messages)} earlier message(s) of {event.room} above")
        if isinstance(event, ev.Found):
            if not event.messages:
                return "found nothing"
            return "\n".join([f"found {len(event.messages)}, newest first:",
                              *(f"  {self._message(m)}" for m in event.messages)])  # fmt: skip
        if isinstance(event, ev.Refusal):
            what = f"not sent to {event.target}" if event.target and event.target != "*" else "not sent"
            if event.code == ev.USAGE:
                what = "error"
            return self._error(f"!! {what}: {event.text} ({event.code})")
        if isinstance(event, ev.Users):
            where = f"in {event.room}" if event.room else "online"
            return f"{where} ({len(event.names)}): {', '.join(event.names) or 'nobody'}"
        mark = "!!" if event.state in (ev.State.RECONNECTING, ev.State.OFFLINE) else "--"
        return self._dim(f"{mark} {event.detail}") if mark == "--" else self._error(f"{mark} {event.detail}")

    def _message(self, m: ev.Message) -> str:
        stamp = self._time(m.time, dated=m.history)
        if m.history:
            stamp += " " + self._dim("[history]")
        action = m.text.startswith(ACTION_PREFIX)
        said = m.text[len(ACTION_PREFIX) :] if action else m.text
        body = f"* {self._name(m.sender)} {said}" if action else f"<{self._name(m.sender)}> {said}"
        if m.private:
            said = f"* {said}" if action else said
            if m.sender.lower() == self.me.lower() and m.target.lower() != self.me.lower():
                return f"{stamp} {self._private_tag()} you -> {self._name(m.target)}: {said}"  # found
            return f"{stamp} {self._private_tag()} {self._name(m.sender)} -> you: {said}"
        if m.room != "*":
            return f"{stamp} {m.room} {body}"
        return f"{stamp} {body}"

    def _presence(self, p: ev.Presence) -> str | None:
        if p.room != "*" and p.name.lower() == self.me.lower():
            return None  # our own entering and leaving: the Ack to /join or /leave says it
        where = "" if p.room == "*" else f" {p.room}"
        verb = f"joined{where}" if p.event == "join" else f"left{where} ({p.reason})"
        return self._dim(f"{self._time(p.time)} -- {self._name(p.name)} {verb}")

    def _ack(self, a: ev.Ack) -> str | None:
        if a.command == "enter":
            return self._dim(f"-- you joined {a.target}")
        if a.command == "exit":
            return self._dim(f"-- you left {a.target}")
        if a.command != "send" or ev.is_room(a.target):
            return None  # our own room message comes back from the broker: that line shows it
        line = f"{self._time(a.time)} {self._private_tag()} you -> {self._name(a.target)}: {a.text}"
        if a.status == "stored":
            line += self._dim(f" (stored: {a.target} is offline)")
        return line

    def _rooms(self, rooms: ev.RoomList) -> str:
        if not rooms.sizes:
            return "rooms: none yet; /join #name makes one"
        mine = {room.lower() for room in rooms.mine}
        listed = [
            f"{room} ({count}{', yours' if room.lower() in mine else ''})" for room, count in rooms.sizes
        ]
        return f"rooms ({len(listed)}): {', '.join(listed)}"

    def _time(self, t: datetime, dated: bool = False) -> str:
        local = t.astimezone()
        today = datetime.now(local.tzinfo).date() == local.date()
        return self._dim(local.strftime("[%H:%M:%S]" if today or not dated else "[%Y-%m-%d %H:%M:%S]"))

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
    return json.dumps(to_data(event), ensure_ascii=False)


def to_data(event: ev.Event) -> dict[str, Any]:
    """The event as `--json` writes it, before encoding (the web gateway sends the same)."""
    data: dict[str, Any]
    if isinstance(event, ev.Message):
        data = message_json(event)
    elif isinstance(event, ev.Presence):
        data = {"type": "presence", "event": event.event, "name": event.name, "room": event.room,
                "time": iso(event.time)}  # fmt: skip
        if event.reason:
            data["reason"] = event.reason
    elif isinstance(event, ev.Ack):
        data = {"type": "ack", "id": event.msg_id, "to": event.target, "status": event.status,
                "time": iso(event.time)}  # fmt: skip
        if event.command != "send":
            data["command"] = event.command
        if event.text:
            data["text"] = event.text
    elif isinstance(event, ev.Receipt):
        data = {"type": "receipt", "id": event.msg_id, "to": event.recipient, "time": iso(event.time)}
        if event.text:
            data["text"] = event.text
    elif isinstance(event, ev.RoomList):
        data = {"type": "rooms", "rooms": [{"room": room, "members": count} for room, count in event.sizes],
                "mine": list(event.mine)}  # fmt: skip
    elif isinstance(event, ev.History):
        data = {
            "type": "history",
            "room": event.room,
            "count": len(event.messages),
            "last_seq": event.last_seq,
        }
    elif isinstance(event, ev.Found):
        data = {"type": "found", "messages": [message_json(m) for m in event.messages]}
    elif isinstance(event, ev.Refusal):
        data = {"type": "error", "id": event.msg_id, "code": event.code, "text": event.text}
        if event.target:
            data["to"] = event.target
    elif isinstance(event, ev.Users):
        data = {"type": "users", "names": list(event.names)}
        if event.room:
            data["room"] = event.room
    else:
        data = {"type": "status", "state": event.state.value, "text": event.detail}
    return data


def message_json(m: ev.Message) -> dict[str, Any]:
    kind = "private" if m.private else "broadcast" if m.room == "*" else "room"
    data: dict[str, Any] = {"type": "message", "kind": kind, "id": m.msg_id, "from": m.sender, "to": m.target,
                            "room": m.room, "time": iso(m.time)}  # fmt: skip
    if m.text.startswith(ACTION_PREFIX):
        data.update(text=m.text[len(ACTION_PREFIX) :], action=True)
    else:
        data["text"] = m.text
    if m.history:
        data["history"] = True
        data["seq"] = m.seq
    return data
