"""Events as a person reads them (text, optional colour) or as JSON lines."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable
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


#: Where a line's text starts, in the renderer's lines before they are wrapped: wrapped
#: lines are indented to it. visible() shows a NUL in anyone's text as "␀", so it is ours.
TEXT = "\x00"
#: Below this many columns times are shorter ("12:34", no seconds, no brackets).
NARROW = 60
#: Plain words for the broker's LEAVE reasons (PROTOCOL.md 6.3); "left" says nothing more.
LEAVE_REASONS = {"quit": "", "left": "", "timeout": "connection lost", "flooding": "sent too fast",
                 "stuck": "stopped reading", "replaced": "signed in elsewhere"}  # fmt: skip
_OUR_ESCAPE = re.compile(r"(\x1b\[[0-9;]*m)")


def width_of(text: str) -> int:
    """Columns `text` takes in a terminal: our colours none, wide (East Asian) characters two."""
    return sum(_char_width(char) for char in _OUR_ESCAPE.sub("", text))


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def wrap(line: str, width: int) -> str:
    """`line` broken at spaces into rows of at most `width` columns, the rows after the
    first indented to where its text starts (TEXT), as irssi does; a word longer than a
    row is cut."""
    prefix, marked, text = line.partition(TEXT)
    if not marked:
        prefix, text = "", line
    indent = width_of(prefix)
    if indent > width // 2:  # a long prefix in a narrow terminal: the text under a short indent
        indent = min(4, width // 4)
    rows: list[str] = []
    row, used, empty = prefix, width_of(prefix), True  # empty: no word on this row yet

    def next_row() -> None:
        nonlocal row, used, empty
        rows.append(row.rstrip(" "))
        row, used, empty = " " * indent, indent, True

    for word in text.split(" "):
        size = width_of(word)
        gap = 0 if empty else 1
        if used + gap + size > width and (not empty or (used > indent and size <= width - indent)):
            next_row()
            gap = 0
        while used + size > width:  # wider than a whole row: cut it
            head, word = _cut(word, width - used)
            row, used, empty = row + head, used + width_of(head), False
            next_row()
            size = width_of(word)
        row, used, empty = row + " " * gap + word, used + gap + size, False
    rows.append(row.rstrip(" "))
    return "\n".join(rows)


def _cut(word: str, columns: int) -> tuple[str, str]:
    """The first `columns` columns of `word` (at least one character; our escapes kept
    whole), and the rest."""
    head, rest, used = "", word, 0
    while rest:
        escape = _OUR_ESCAPE.match(rest)
        if escape:
            head, rest = head + escape.group(), rest[escape.end() :]
            continue
        size = _char_width(rest[0])
        if used + size > columns and used:
            break
        head, rest, used = head + rest[0], rest[1:], used + size
    return head, rest


class Renderer:
    """Formats events for one user; `colour` adds ANSI escapes.

    With `width` (the terminal's columns, asked for each line) long lines are
    wrapped with their text indented, and narrow terminals get short times.
    """

    def __init__(self, me: str, colour: bool = False, width: Callable[[], int] | None = None) -> None:
        self.me = me
        self.colour = colour
        self.width = width
        self._columns = 0  # of the line being made; 0: not wrapped

    def line(self, event: ev.Event) -> str | None:
        """One line for a person, or None when there is nothing to show.

        Every text in the event goes through visible() first, so the only escapes
        written are the colours added here.
        """
        if type(event) is ev.Presences:  # a run of joins and leaves: a line each
            lines = [line for one in event.each() if (line := self.line(one)) is not None]
            return "\n".join(lines) or None
        self._columns = self.width() if self.width is not None else 0
        line = self._line(shown(event))
        if line is None:
            return None
        if not self._columns:
            return line.replace(TEXT, "")
        return "\n".join(wrap(row, self._columns - 1) for row in line.split("\n"))

    def _line(self, event: ev.Event) -> str | None:
        if isinstance(event, ev.Message):
            return self._message(event)
        if isinstance(event, ev.Presence):
            return self._presence(event)
        if isinstance(event, ev.Ack):
            return self._ack(event)
        if isinstance(event, ev.Receipt):
            what = f": {event.text}" if event.text else ": a message this client no longer has"
            return self._status(f"✓ delivered to {self._name(event.recipient)}{what}", event.time)
        if isinstance(event, ev.RoomList):
            return self._status(self._rooms(event))
        if isinstance(event, ev.History):
            if not event.messages:
                return self._status(f"no earlier messages in {self._where(event.room)}")
            return self._status(f"{len(event.messages)} message(s) of {self._where(event.room)} above")
        if isinstance(event, ev.Found):
            if not event.messages:
                return self._status("found nothing")
            return "\n".join([self._status(f"found {len(event.messages)}, newest first:"),
                              *(f"  {self._message(m)}" for m in event.messages)])  # fmt: skip
        if isinstance(event, ev.Refusal):
            if event.code == ev.USAGE or not event.target or event.target == "*":
                return self._status(event.text, error=True)
            return self._status(f"not sent to {event.target}: {event.text}", error=True)
        if isinstance(event, ev.Users):
            if not event.names:
                return self._status(f"nobody in {event.room} is online" if event.room else "nobody is online")
            where = f"in {event.room}" if event.room else "online"
            away = {name.lower(): text for name, text in event.away}
            names = [f"{n} (away: {away[n.lower()]})" if n.lower() in away else n for n in event.names]
            return self._status(f"{where} ({len(event.names)}): {', '.join(names)}")
        if isinstance(event, ev.Away):
            return self._status(f"{self._name(event.name)} is away: {event.text}")
        if isinstance(event, ev.Topic):
            return self._topic(event)
        if isinstance(event, ev.Presences):  # line() gives each its line
            return None
        return self._status(event.detail, error=event.state in (ev.State.RECONNECTING, ev.State.OFFLINE))

    def _status(self, text: str, when: datetime | None = None, error: bool = False) -> str:
        """A line of the client's own: its time, "--" ("!!" for trouble), the text."""
        stamp = self._time(when or datetime.now().astimezone())
        if error:
            return f"{stamp} {self._error('!! ' + TEXT + text)}"
        return f"{stamp} {self._dim('-- ' + TEXT + text)}"

    @staticmethod
    def _where(room: str) -> str:
        return "the lobby" if room == "*" else room

    def _message(self, m: ev.Message) -> str:
        stamp = self._time(m.time, dated=m.history)
        if m.history:
            stamp += " " + self._dim("[history]")
        action = m.text.startswith(ACTION_PREFIX)
        said = m.text[len(ACTION_PREFIX) :] if action else m.text
        body = (
            f"* {self._name(m.sender)} {TEXT}{said}" if action else f"<{self._name(m.sender)}> {TEXT}{said}"
        )
        if m.private:
            said = f"* {said}" if action else said
            if m.sender.lower() == self.me.lower() and m.target.lower() != self.me.lower():
                return f"{stamp} {self._private_tag()} you -> {self._name(m.target)}: {TEXT}{said}"  # found
            return f"{stamp} {self._private_tag()} {self._name(m.sender)} -> you: {TEXT}{said}"
        if m.room != "*":
            return f"{stamp} {m.room} {body}"
        return f"{stamp} {body}"

    def _presence(self, p: ev.Presence) -> str | None:
        if p.room != "*" and p.name.lower() == self.me.lower():
            return None  # our own entering and leaving: the Ack to /join or /leave says it
        where = "" if p.room == "*" else f" {p.room}"
        reason = LEAVE_REASONS.get(p.reason, p.reason)
        verb = f"joined{where}" if p.event == "join" else f"left{where}" + (f" ({reason})" if reason else "")
        return self._status(f"{self._name(p.name)} {verb}", p.time)

    def _topic(self, t: ev.Topic) -> str:
        if t.changed:
            if not t.text:
                return self._status(f"{self._name(t.setter)} cleared the topic of {t.room}", t.time)
            return self._status(f"{self._name(t.setter)} set the topic of {t.room}: {t.text}", t.time)
        if not t.text:
            return self._status(f"{t.room} has no topic")
        when = f", {t.time.astimezone():%Y-%m-%d %H:%M}" if t.time else ""
        return self._status(f"topic of {t.room}: {t.text} (set by {self._name(t.setter)}{when})")

    def _ack(self, a: ev.Ack) -> str | None:
        if a.command == "away":
            return self._status(
                f"you are away: {a.text}" if a.text else "you are back (no longer away)", a.time
            )
        if a.command == "enter":
            return self._status(f"you joined {a.target}", a.time)
        if a.command == "exit":
            return self._status(f"you left {a.target}", a.time)
        if a.command != "send" or ev.is_room(a.target):
            return None  # our own room message comes back from the broker: that line shows it
        line = f"{self._time(a.time)} {self._private_tag()} you -> {self._name(a.target)}: {TEXT}{a.text}"
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
        narrow = 0 < self._columns < NARROW
        if narrow:
            return self._dim(local.strftime("%H:%M" if today or not dated else "%m-%d %H:%M"))
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
    """One JSON object for `--json` (a line each for a run of joins and leaves); README lists the fields."""
    if type(event) is ev.Presences:
        return "\n".join(to_json(one) for one in event.each())
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
        if event.away:
            data["away"] = dict(event.away)
    elif isinstance(event, ev.Away):
        data = {"type": "away", "id": event.msg_id, "name": event.name, "text": event.text}
    elif isinstance(event, ev.Topic):
        data = {"type": "topic", "room": event.room, "text": event.text, "by": event.setter,
                "changed": event.changed}  # fmt: skip
        if event.time is not None:
            data["time"] = iso(event.time)
    elif isinstance(event, ev.Presences):
        raise TypeError("a run of joins and leaves is several JSON objects: to_data each of event.each()")
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
