"""The zchat wire protocol, ZCHAT/2: one message table, typed values both ways.

docs/PROTOCOL.md is the specification; this module follows it. Every message
is one ZeroMQ frame holding a MessagePack array: the command, then its fields
in the order of the table below (MESSAGES), which drives both the decoders
and the encoder. On PUB the frame starts with the topic. Decoders return a
typed value or raise ProtocolError; `encode` is their inverse. Nothing here
touches a socket.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any, NamedTuple

import msgpack

#: The protocol version, carried by HELLO (PROTOCOL.md 10).
VERSION = "ZCHAT/2"
SIGNATURE = VERSION.encode()
OTHER_VERSION_RE = re.compile(rb"ZCHAT/[0-9]{1,3}")
#: The signature frame of a ZCHAT/1 message: the version before this one, answered in its framing.
OLD_SIGNATURE = b"ZCHAT/1"

#: The target of a broadcast to everyone (the lobby) and its PUB topic.
EVERYONE = "*"
LOBBY_TOPIC = b"*\x00"
#: The ZAP status a broker gives an address it turns away after a flood: the
#: client's handshake fails with it (section 8).
TURNED_AWAY_STATUS = 400

NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
ROOM_RE = re.compile(r"#[A-Za-z0-9_.\-]{1,32}")
#: The ranges of number fields (PROTOCOL.md 3.2). A `number` is what a signed 64-bit
#: integer holds (SQLite's INTEGER, and most languages' widest plain integer).
MAX_NUMBER = 2**63 - 1
#: The latest `time`, 9999-12-31T23:59:59.999Z: the last instant common date types hold.
MAX_TIME_MS = 253_402_300_799_999
#: Durations in milliseconds and max-body: what a signed 32-bit integer (a timer) holds.
MAX_INT32 = 2**31 - 1
#: The codes ERROR carries; 600-699 are left to clients and never cross the wire.
MIN_ERROR_CODE, MAX_ERROR_CODE = 400, 599
#: Messages one HISTORY may ask for, and records one HISTORY or FOUND may carry.
MAX_HISTORY = 500
#: Matches one SEARCH is answered with, the newest.
MAX_FOUND = 50
#: Message ids one RECEIVED may confirm: each costs the broker a store write.
MAX_RECEIVED_IDS = 500
MSG_ID_RE = re.compile(rb"[\x21-\x7e]{1,64}")
MAX_REASON_BYTES = 256
#: HELLO's client kind: a short word (PROTOCOL.md 4.1).
MAX_CLIENT_BYTES = 32
#: JOINs and LEAVEs one PRESENCE may carry (PROTOCOL.md 6.4).
MAX_PRESENCE = 1000
#: AWAY's text and a room's subject, in UTF-8 bytes (PROTOCOL.md 13.7): longer is refused 413.
MAX_AWAY_BYTES = 160
MAX_SUBJECT_BYTES = 300


class Code(IntEnum):
    """Error codes carried by ERROR; PROTOCOL.md has the table."""

    MALFORMED = 400
    NAME_OWNED = 401
    NOT_REGISTERED = 403
    UNKNOWN_RECIPIENT = 404
    UNKNOWN_COMMAND = 405
    NAME_TAKEN = 409
    ALREADY_REGISTERED = 410
    TOO_LARGE = 413
    BAD_ENCODING = 415
    INVALID_NAME = 422
    NOT_MEMBER = 423
    BAD_VERSION = 426
    RATE_LIMITED = 429
    INTERNAL = 500
    SHUTTING_DOWN = 503
    FENCED = 504
    RECIPIENT_BUSY = 507
    STORE_FAILED = 508
    TOO_MANY = 509


class ProtocolError(Exception):
    """A message that breaks the protocol; `msg_id` is empty when unknown."""

    def __init__(self, code: Code, text: str, msg_id: bytes = b"") -> None:
        super().__init__(f"{int(code)} {code.name}: {text}")
        self.code = code
        self.text = text
        self.msg_id = msg_id


# --- commands a client sends (DEALER -> ROUTER) ------------------------------


class Hello(NamedTuple):
    msg_id: bytes
    name: str
    token: str
    #: The version the client speaks: a broker that does not speak it answers 426.
    version: str = VERSION
    #: Optional (PROTOCOL.md 4.1): the kind of client ("terminal", "web"...), for the broker's
    #: figures only; "" when left out.
    client: str = ""


class Send(NamedTuple):
    msg_id: bytes
    target: str
    body: bytes  # opaque, valid UTF-8: forwarded as received


class Who(NamedTuple):
    msg_id: bytes


class Ping(NamedTuple):
    msg_id: bytes


class Sync(NamedTuple):
    msg_id: bytes
    #: Optional (PROTOCOL.md 4.5): SYNCED then goes to sync_topic(name, tag).
    tag: bytes = b""


class Ready(NamedTuple):
    msg_id: bytes


class Bye(NamedTuple):
    msg_id: bytes


class Enter(NamedTuple):
    msg_id: bytes
    room: str


class Exit(NamedTuple):
    msg_id: bytes
    room: str


class Rooms(NamedTuple):
    msg_id: bytes


class Names(NamedTuple):
    msg_id: bytes
    room: str


class HistoryRequest(NamedTuple):
    msg_id: bytes
    room: str
    before: int  # 0: up to now
    limit: int
    #: Optional (PROTOCOL.md 13.1): only messages above this sequence number, for a gap.
    after: int = 0


class Search(NamedTuple):
    msg_id: bytes
    words: str


class Received(NamedTuple):
    msg_id: bytes
    sender: str
    ids: tuple[bytes, ...]


class Away(NamedTuple):
    msg_id: bytes
    text: str  # "": back, no longer away


class SubjectRequest(NamedTuple):
    msg_id: bytes
    room: str


class SetSubject(NamedTuple):
    msg_id: bytes
    room: str
    text: str  # "": no subject


ClientCommand = (
    Hello
    | Send
    | Who
    | Ping
    | Sync
    | Ready
    | Bye
    | Enter
    | Exit
    | Rooms
    | Names
    | HistoryRequest
    | Search
    | Received
    | Away
    | SubjectRequest
    | SetSubject
)

# --- what the broker sends to one client (ROUTER -> DEALER) ------------------


class Welcome(NamedTuple):
    msg_id: bytes
    name: str
    token: str
    pub_endpoint: str
    heartbeat_ms: int
    timeout_ms: int
    max_body: int
    time_ms: int
    #: Flood control (PROTOCOL.md 8): messages a minute after a burst; 0: none.
    rate_per_minute: int = 0
    burst: int = 0


class Ack(NamedTuple):
    msg_id: bytes
    time_ms: int
    status: str
    #: Further messages of the same sender answered by this one ACK.
    more_ids: tuple[bytes, ...] = ()

    def ids(self) -> tuple[bytes, ...]:
        return (self.msg_id, *self.more_ids)


class Error(NamedTuple):
    msg_id: bytes
    code: int
    text: str
    #: For code 429 (PROTOCOL.md 8): wait this long before sending again; 0 otherwise.
    retry_after_ms: int = 0


class Users(NamedTuple):
    msg_id: bytes
    names: tuple[str, ...]
    #: Optional (PROTOCOL.md 13.7): [name, text] of those among `names` who are away.
    away: tuple[tuple[str, str], ...] = ()


class Pong(NamedTuple):
    msg_id: bytes
    time_ms: int


class Message(NamedTuple):
    msg_id: bytes
    sender: str
    target: str  # a name for a private message, EVERYONE for a broadcast
    time_ms: int
    body: bytes


class AwayNotice(NamedTuple):
    """The recipient of the private message `msg_id` is away (PROTOCOL.md 13.7)."""

    msg_id: bytes
    name: str
    text: str


class Subject(NamedTuple):
    """SUBJECT's answer: the room's subject, who set it and when ("", "", 0: none)."""

    msg_id: bytes
    room: str
    text: str
    setter: str
    time_ms: int


class Shutdown(NamedTuple):
    reason: str


class Replaced(NamedTuple):
    """This connection's session was taken over by another connection of the same user."""

    reason: str


# --- what the broker publishes (PUB -> SUB), after topic and sequence --------


class Join(NamedTuple):
    name: str
    time_ms: int
    room: str = EVERYONE


class Leave(NamedTuple):
    name: str
    time_ms: int
    reason: str
    room: str = EVERYONE


class Change(NamedTuple):
    """One JOIN or LEAVE inside a PRESENCE: an empty reason means the user joined."""

    name: str
    time_ms: int
    reason: str


class Presence(NamedTuple):
    """A run of JOINs and LEAVEs on one topic, in one message: the first takes the
    message's sequence number, each next one the number after (PROTOCOL.md 6.4)."""

    room: str
    changes: tuple[Change, ...]

    def events(self) -> tuple[Join | Leave, ...]:
        """The changes as the JOIN and LEAVE each stands for, in order."""
        room = self.room
        return tuple(
            Join(c.name, c.time_ms, room) if not c.reason else Leave(c.name, c.time_ms, c.reason, room)
            for c in self.changes
        )


class Synced(NamedTuple):
    msg_id: bytes


class SubjectChanged(NamedTuple):
    """Published on the room's PUB topic when a member sets its subject (PROTOCOL.md 13.7)."""

    room: str
    text: str
    setter: str
    time_ms: int


class Record(NamedTuple):
    """A stored message, in HISTORY and FOUND (PROTOCOL.md 13.2)."""

    seq: int
    msg_id: bytes
    sender: str
    target: str
    time_ms: int
    body: bytes


class RoomList(NamedTuple):
    msg_id: bytes
    sizes: tuple[tuple[str, int], ...]
    mine: tuple[str, ...]


class History(NamedTuple):
    msg_id: bytes
    room: str
    last_seq: int
    records: tuple[Record, ...]


class Found(NamedTuple):
    msg_id: bytes
    records: tuple[Record, ...]


class Receipt(NamedTuple):
    recipient: str
    time_ms: int
    msg_ids: tuple[bytes, ...]


ServerEvent = (
    Welcome
    | Ack
    | Error
    | Users
    | Pong
    | Message
    | Shutdown
    | Replaced
    | RoomList
    | History
    | Found
    | Receipt
    | AwayNotice
    | Subject
)
PublishedEvent = Message | Join | Leave | Presence | Synced | Shutdown | SubjectChanged


class Published(NamedTuple):
    topic: bytes
    seq: int
    event: PublishedEvent


# --- helpers -----------------------------------------------------------------


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def valid_room(room: str) -> bool:
    return ROOM_RE.fullmatch(room) is not None


def topic_of(room: str) -> bytes:
    """A room's PUB topic: its name and a NUL, so prefixes never match."""
    return room.encode() + b"\x00"


def name_key(name: str) -> str:
    """Names are unique without regard to case; this is the comparison key."""
    return name.lower()


def private_topic(name: str) -> bytes:
    """The PUB topic a client subscribes to for its own SYNCED replies."""
    return b"@" + name.encode() + b"\x00"


def sync_topic(name: str, tag: bytes) -> bytes:
    """A topic of one SYNC round's own, which no earlier subscription matches."""
    return b"@" + name.encode() + b"\x01" + tag + b"\x00"


def now_ms(now: float) -> int:
    return int(now * 1000)


def is_utf8(data: bytes) -> bool:
    if data.isascii():  # fast path: no decoding for plain ASCII
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- field readers: one wire value in, one typed value out (PROTOCOL.md 3.2) ---
#
# Strings arrive as bytes (MessagePack str or bin alike: the reader checks what
# they must hold), numbers as int. A reader gets the message id, for its error.

Reader = Callable[[Any, bytes], Any]


def _string(value: Any, what: str, msg_id: bytes) -> bytes:
    if type(value) is not bytes:
        raise ProtocolError(Code.MALFORMED, f"{what} must be a string", msg_id)
    return value


def _id(value: Any, msg_id: bytes) -> bytes:
    if type(value) is not bytes or MSG_ID_RE.fullmatch(value) is None:
        raise ProtocolError(Code.MALFORMED, "a message id must be 1-64 visible ASCII characters", msg_id)
    return value


def _error_id(value: Any, msg_id: bytes) -> bytes:
    """ERROR's id: empty when the request's could not be read."""
    return value if value == b"" else _id(value, msg_id)


def _name(value: Any, msg_id: bytes) -> str:
    name = _string(value, "a name", msg_id).decode("latin-1")  # a non-ASCII name is invalid, not garbled
    if not valid_name(name):
        raise ProtocolError(Code.INVALID_NAME, "a name is 1-32 letters, digits, '_', '-' or '.'", msg_id)
    return name


def _token(value: Any, msg_id: bytes) -> str:
    token = _string(value, "the resume token", msg_id)
    if len(token) > 64 or not token.isascii():
        raise ProtocolError(Code.MALFORMED, "resume token must be at most 64 ASCII bytes", msg_id)
    return token.decode("ascii")


def _version(value: Any, msg_id: bytes) -> str:
    if value == SIGNATURE:
        return VERSION
    if type(value) is bytes and OTHER_VERSION_RE.fullmatch(value):
        raise ProtocolError(Code.BAD_VERSION, version_mismatch(value.decode()), msg_id)
    raise ProtocolError(Code.MALFORMED, f"HELLO's last field is the protocol version, {VERSION}", msg_id)


def _client(value: Any, msg_id: bytes) -> str:
    kind = _string(value, "the client kind", msg_id)
    if len(kind) > MAX_CLIENT_BYTES or not kind.isascii():
        raise ProtocolError(Code.MALFORMED, f"the client kind must be at most {MAX_CLIENT_BYTES} ASCII bytes",
                            msg_id)  # fmt: skip
    return kind.decode("ascii")


def version_mismatch(theirs: str) -> str:
    """What a broker of this version tells a client of another (PROTOCOL.md 10)."""
    return f"this broker speaks {VERSION}, the client {theirs}: use a client and a broker of one version"


def _target(value: Any, msg_id: bytes) -> str:
    target = _string(value, "the target", msg_id)
    if not target.isascii():  # an address, not a name field: it reaches nobody (PROTOCOL.md 4.2)
        raise ProtocolError(Code.UNKNOWN_RECIPIENT, "no such user", msg_id)
    return target.decode("ascii")


def _body(value: Any, msg_id: bytes) -> bytes:
    body = _string(value, "the message text", msg_id)
    if not is_utf8(body):
        raise ProtocolError(Code.BAD_ENCODING, "message text is not valid UTF-8", msg_id)
    return body  # forwarded as received


def _text(value: Any, msg_id: bytes, what: str = "text") -> str:
    try:
        return _string(value, what, msg_id).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(Code.BAD_ENCODING, f"{what} is not valid UTF-8", msg_id) from None


def _room_reader(lobby: bool) -> Reader:
    def read(value: Any, msg_id: bytes) -> str:
        room = _string(value, "the room", msg_id).decode("latin-1").lower()
        if not (valid_room(room) or (lobby and room == EVERYONE)):
            raise ProtocolError(
                Code.MALFORMED, "a room is '#' and 1-32 letters, digits, '_', '-' or '.'", msg_id
            )
        return room

    return read


def _number(what: str, low: int = 0, high: int = MAX_NUMBER) -> Reader:
    """A `number` from `low` to `high`: anything else is malformed (ERROR 400)."""

    def read(value: Any, msg_id: bytes) -> int:
        if type(value) is not int or not low <= value <= high:  # type(): True is no number
            raise ProtocolError(Code.MALFORMED, f"{what} must be a whole number from {low} to {high}", msg_id)
        return value

    return read


_time = _number("a time", high=MAX_TIME_MS)


def _tag(value: Any, msg_id: bytes) -> bytes:
    tag = _string(value, "a SYNC tag", msg_id)
    if tag and MSG_ID_RE.fullmatch(tag) is None:
        raise ProtocolError(Code.MALFORMED, "a SYNC tag must be 1-64 visible ASCII characters", msg_id)
    return tag


def _array(value: Any, what: str, msg_id: bytes, low: int = 0, high: int = MAX_NUMBER) -> list[Any]:
    if type(value) is not list or not low <= len(value) <= high:
        raise ProtocolError(Code.MALFORMED, f"{what} must be an array of {low} to {high} items", msg_id)
    return value


#: Message ids joined by a byte none may hold: an ACK's or a RECEIVED's ids checked in one match.
_IDS_RE = re.compile(rb"[\x21-\x7e]{1,64}(?:\n[\x21-\x7e]{1,64})*")


def _ids_reader(low: int, high: int = MAX_RECEIVED_IDS) -> Reader:
    def read(value: Any, msg_id: bytes) -> tuple[bytes, ...]:
        ids = _array(value, "the message ids", msg_id, low, high)
        if not ids:
            return ()
        try:
            joined = b"\n".join(ids)
        except TypeError:  # not all strings
            pass
        else:  # as many ids as the match finds: none holds the byte that joins them
            if _IDS_RE.fullmatch(joined) is not None and joined.count(b"\n") == len(ids) - 1:
                return tuple(ids)
        return tuple(_id(i, msg_id) for i in ids)  # raises, naming what is wrong

    return read


def _names(value: Any, msg_id: bytes) -> tuple[str, ...]:
    return tuple(_text(n, msg_id, "a name") for n in _array(value, "the names", msg_id))


def _rooms(value: Any, msg_id: bytes) -> tuple[str, ...]:
    return tuple(_text(r, msg_id, "a room") for r in _array(value, "the rooms", msg_id))


_member_count = _number("a member count", low=1)


def _sizes(value: Any, msg_id: bytes) -> tuple[tuple[str, int], ...]:
    pairs = []
    for pair in _array(value, "the rooms", msg_id):
        room, count = _array(pair, "a room and its member count", msg_id, 2, 2)
        pairs.append((_text(room, msg_id, "a room"), _member_count(count, msg_id)))
    return tuple(pairs)


_seq = _number("a sequence number")


def _records_reader(high: int) -> Reader:
    def read(value: Any, msg_id: bytes) -> tuple[Record, ...]:
        records = []
        for item in _array(value, "the records", msg_id, 0, high):
            seq, record_id, sender, target, time_ms, body = _array(item, "a record", msg_id, 6, 6)
            records.append(Record(
                _seq(seq, msg_id), _id(record_id, msg_id), _text(sender, msg_id, "a sender"),
                _text(target, msg_id, "a target"), _time(time_ms, msg_id), _body(body, msg_id),
            ))  # fmt: skip
        return tuple(records)

    return read


def _changes(value: Any, msg_id: bytes) -> tuple[Change, ...]:
    # Up to 1,000 a message for every subscriber of the room: the checks of _text and _time
    # inline, their readers called only to say what is wrong.
    changes = []
    for item in _array(value, "the changes", msg_id, 1, MAX_PRESENCE):
        try:
            name, time_ms, reason = item
            if type(item) is list and type(time_ms) is int and 0 <= time_ms <= MAX_TIME_MS:
                changes.append(Change(name.decode(), time_ms, reason.decode()))
                continue
        except (TypeError, ValueError, AttributeError):  # not 3 items, not bytes, not UTF-8
            pass
        name, time_ms, reason = _array(item, "a change", msg_id, 3, 3)
        changes.append(Change(_text(name, msg_id, "a name"), _time(time_ms, msg_id), _reason(reason, msg_id)))
    return tuple(changes)


def _reason(value: Any, msg_id: bytes) -> str:
    return _text(value, msg_id, "the reason")


def _words(value: Any, msg_id: bytes) -> str:
    return _text(value, msg_id, "words")


def _bounded_text(what: str, limit: int) -> Reader:
    """Text of at most `limit` UTF-8 bytes: longer is refused 413, not cut."""

    def read(value: Any, msg_id: bytes) -> str:
        text = _text(value, msg_id, what)
        if len(value) > limit:
            raise ProtocolError(Code.TOO_LARGE, f"{what} is {len(value)} bytes, the limit is {limit}", msg_id)
        return text

    return read


def _away_pairs(value: Any, msg_id: bytes) -> tuple[tuple[str, str], ...]:
    pairs = []
    for pair in _array(value, "the away users", msg_id):
        name, text = _array(pair, "a name and its away text", msg_id, 2, 2)
        pairs.append((_text(name, msg_id, "a name"), _text(text, msg_id, "an away text")))
    return tuple(pairs)


# --- the message table --------------------------------------------------------


class Field(NamedTuple):
    name: str
    read: Reader
    #: Left out by the sender, it takes the typed value's default (later additions, options).
    optional: bool = False


class Kind(NamedTuple):
    """One message of the protocol: its command string, its typed value, its fields in order."""

    command: bytes
    type: type
    fields: tuple[Field, ...]
    #: Derived from the fields: the typed value from a message's items, from the given index
    #: on (later items are ignored, PROTOCOL.md 3.3; _reader).
    read: Callable[[list[Any], int], Any]


def _kind(command: str, cls: Any, *fields: Field) -> Kind:
    assert tuple(f.name for f in fields) == cls._fields, command  # the table and the types agree
    optional = [f.optional for f in fields]
    assert optional == sorted(optional), f"{command}: only trailing fields may be optional"
    kind = Kind(command.encode(), cls, fields, lambda items, first: None)
    return kind._replace(read=_reader(kind))


_new_tuple = tuple.__new__  # a NamedTuple from its values, without its Python-level __new__


def _missing(kind: Kind, values: list[Any]) -> ProtocolError:
    has_id = bool(kind.fields) and kind.fields[0] is ID
    msg_id = values[0] if values and has_id and type(values[0]) is bytes else b""
    needed = ", ".join(f.name.removeprefix("msg_") for f in kind.fields if not f.optional)
    return ProtocolError(Code.MALFORMED, f"{kind.command.decode()} needs its fields: {needed}",
                         msg_id if MSG_ID_RE.fullmatch(msg_id) else b"")  # fmt: skip


def _reader(kind: Kind) -> Callable[[list[Any], int], Any]:
    """A decoder for `kind`, generated from its fields as namedtuple and dataclasses make
    their methods: one call per field and no loop over them (decode_command of a SEND in
    1.1 us instead of 1.8, of a MESSAGE 1.3 instead of 2.2; most of what is left is the
    readers' own checks).

    The message id is read first, when the kind has one: every other field's error carries it.
    """
    fields, cls = kind.fields, kind.type
    defaults: dict[str, Any] = cls._field_defaults  # type: ignore[attr-defined]  # a NamedTuple's
    has_id = bool(fields) and fields[0] is ID
    scope: dict[str, Any] = {"_new": _new_tuple, "_cls": cls, "_kind": kind, "_missing": _missing}
    required = sum(not f.optional for f in fields)
    lines = [
        "def read(items, first):",
        "    present = len(items) - first",
        f"    if present < {required}:",
        f"        raise _missing(_kind, items[first : first + {len(fields)}])",
    ]
    values = []
    id_arg = "msg_id" if has_id else "b''"
    for i, f in enumerate(fields):
        scope[f"_r{i}"] = f.read
        item = f"items[first + {i}]"
        if i == 0 and has_id:
            lines.append(f"    msg_id = _r0({item}, b'')")
            values.append("msg_id")
            continue
        call = f"_r{i}({item}, {id_arg})"
        if f.optional:
            scope[f"_d{i}"] = defaults.get(f.name)
            call = f"{call} if present > {i} else _d{i}"
        lines.append(f"    v{i} = {call}")
        values.append(f"v{i}")
    lines.append(f"    return _new(_cls, ({', '.join(values)}{',' if len(values) == 1 else ''}))")
    exec("\n".join(lines), scope)  # the source is made here, from the table alone
    read: Callable[[list[Any], int], Any] = scope["read"]
    return read


ID = Field("msg_id", _id)
_duration_ms = _number("a duration", low=1, high=MAX_INT32)
_any_number = _number("a number")

#: What a client sends (DEALER -> ROUTER), PROTOCOL.md 4 and 13.1.
COMMANDS: tuple[Kind, ...] = (
    _kind("SEND", Send, ID, Field("target", _target), Field("body", _body)),
    _kind("PING", Ping, ID),
    _kind(
        "HELLO",
        Hello,
        ID,
        Field("name", _name),
        Field("token", _token),
        Field("version", _version),
        Field("client", _client, optional=True),
    ),
    _kind("WHO", Who, ID),
    _kind("SYNC", Sync, ID, Field("tag", _tag, optional=True)),
    _kind("READY", Ready, ID),
    _kind("BYE", Bye, ID),
    _kind("ENTER", Enter, ID, Field("room", _room_reader(lobby=False))),
    _kind("EXIT", Exit, ID, Field("room", _room_reader(lobby=True))),  # EXIT of the lobby: refused later
    _kind("ROOMS", Rooms, ID),
    _kind("NAMES", Names, ID, Field("room", _room_reader(lobby=True))),
    _kind(
        "HISTORY",
        HistoryRequest,
        ID,
        Field("room", _room_reader(lobby=True)),
        Field("before", _number("before")),
        Field("limit", _number("count", high=MAX_HISTORY)),
        Field("after", _number("after"), optional=True),
    ),
    _kind("SEARCH", Search, ID, Field("words", _words)),
    _kind("RECEIVED", Received, ID, Field("sender", _name), Field("ids", _ids_reader(1))),
    _kind("AWAY", Away, ID, Field("text", _bounded_text("the away text", MAX_AWAY_BYTES))),
    _kind("SUBJECT", SubjectRequest, ID, Field("room", _room_reader(lobby=False))),
    _kind(
        "SETSUBJECT",
        SetSubject,
        ID,
        Field("room", _room_reader(lobby=False)),
        Field("text", _bounded_text("the subject", MAX_SUBJECT_BYTES)),
    ),
)
#: What the broker sends to one client (ROUTER -> DEALER), PROTOCOL.md 5 and 13.2.
REPLIES: tuple[Kind, ...] = (
    _kind(
        "WELCOME",
        Welcome,
        ID,
        Field("name", _reason),
        Field("token", _token),
        Field("pub_endpoint", _reason),
        Field("heartbeat_ms", _duration_ms),
        Field("timeout_ms", _duration_ms),
        Field("max_body", _duration_ms),
        Field("time_ms", _time),
        Field("rate_per_minute", _any_number),
        Field("burst", _any_number),
    ),
    _kind(
        "ACK",
        Ack,
        ID,
        Field("time_ms", _time),
        Field("status", _reason),
        Field("more_ids", _ids_reader(0, MAX_NUMBER), optional=True),
    ),
    _kind(
        "ERROR",
        Error,
        Field("msg_id", _error_id),
        Field("code", _number("a code", MIN_ERROR_CODE, MAX_ERROR_CODE)),
        Field("text", _reason),
        Field("retry_after_ms", _number("retry-after", high=MAX_INT32)),
    ),
    _kind("USERS", Users, ID, Field("names", _names), Field("away", _away_pairs, optional=True)),
    _kind("PONG", Pong, ID, Field("time_ms", _time)),
    _kind(
        "MESSAGE",
        Message,
        ID,
        Field("sender", _reason),
        Field("target", _reason),
        Field("time_ms", _time),
        Field("body", _body),
    ),
    _kind("SHUTDOWN", Shutdown, Field("reason", _reason)),
    _kind("REPLACED", Replaced, Field("reason", _reason)),
    _kind("ROOMS", RoomList, ID, Field("sizes", _sizes), Field("mine", _rooms)),
    _kind(
        "HISTORY",
        History,
        ID,
        Field("room", _reason),
        Field("last_seq", _seq),
        Field("records", _records_reader(MAX_HISTORY)),
    ),
    _kind("FOUND", Found, ID, Field("records", _records_reader(MAX_HISTORY))),
    _kind(
        "RECEIPT",
        Receipt,
        Field("recipient", _reason),
        Field("time_ms", _time),
        Field("msg_ids", _ids_reader(1, MAX_NUMBER)),
    ),
    _kind("AWAY", AwayNotice, ID, Field("name", _reason), Field("text", _reason)),
    _kind(
        "SUBJECT",
        Subject,
        ID,
        Field("room", _reason),
        Field("text", _reason),
        Field("setter", _reason),
        Field("time_ms", _time),
    ),
)
#: What the broker publishes (PUB -> SUB), after the topic and the sequence number, PROTOCOL.md 6.
PUBLISHED: tuple[Kind, ...] = (
    next(k for k in REPLIES if k.type is Message),
    _kind("JOIN", Join, Field("name", _reason), Field("time_ms", _time), Field("room", _reason)),
    _kind(
        "LEAVE",
        Leave,
        Field("name", _reason),
        Field("time_ms", _time),
        Field("reason", _reason),
        Field("room", _reason),
    ),
    _kind("PRESENCE", Presence, Field("room", _reason), Field("changes", _changes)),
    _kind("SYNCED", Synced, ID),
    next(k for k in REPLIES if k.type is Shutdown),
    _kind(
        "SUBJECT",
        SubjectChanged,
        Field("room", _reason),
        Field("text", _reason),
        Field("setter", _reason),
        Field("time_ms", _time),
    ),
)

_COMMANDS = {k.command: k for k in COMMANDS}
_REPLIES = {k.command: k for k in REPLIES}
_PUBLISHED = {k.command: k for k in PUBLISHED}
_COMMAND_OF = {k.type: k.command for k in (*COMMANDS, *REPLIES, *PUBLISHED)}


# --- decoding -------------------------------------------------------------------


def _unpack(data: bytes | memoryview, what: str) -> list[Any]:
    try:
        items = msgpack.unpackb(data, raw=True, use_list=True)
    except Exception:  # any way the bytes are not one MessagePack value
        raise ProtocolError(
            Code.MALFORMED, f"{what} is not a {VERSION} message (one MessagePack array)"
        ) from None
    if type(items) is not list or not items:
        raise ProtocolError(Code.MALFORMED, f"{what} is not a {VERSION} message (one MessagePack array)")
    return items


def _old_version(frames: Sequence[bytes]) -> bytes | None:
    """The signature of a message in ZCHAT/1 framing (several frames, a signature first)."""
    if len(frames) > 1 and frames[0] != SIGNATURE and OTHER_VERSION_RE.fullmatch(frames[0]):
        return frames[0]
    return None


def decode_command(frames: Sequence[bytes]) -> ClientCommand:
    """Decode one client message (one frame)."""
    if not frames:
        raise ProtocolError(Code.MALFORMED, "empty message")
    old = _old_version(frames)
    if old is not None:
        msg_id = frames[2] if len(frames) > 2 and MSG_ID_RE.fullmatch(frames[2]) else b""
        raise ProtocolError(Code.BAD_VERSION, version_mismatch(old.decode()), msg_id)
    if len(frames) > 1:
        raise ProtocolError(Code.MALFORMED, f"a {VERSION} message is one frame, not {len(frames)}")
    items = _unpack(frames[0], "the message")
    kind = _COMMANDS.get(items[0]) if type(items[0]) is bytes else None
    if kind is None:
        msg_id = (
            items[1] if len(items) > 1 and type(items[1]) is bytes and MSG_ID_RE.fullmatch(items[1]) else b""
        )
        shown = items[0][:32].decode("ascii", "replace") if type(items[0]) is bytes else repr(items[0])[:32]
        raise ProtocolError(Code.UNKNOWN_COMMAND, f"unknown command {shown!r}", msg_id)
    command: ClientCommand = kind.read(items, 1)
    return command


def decode_event(frames: Sequence[bytes]) -> ServerEvent | PublishedEvent:
    """Decode a message from the broker's ROUTER."""
    if not frames:
        raise ProtocolError(Code.MALFORMED, "empty message")
    old = _old_version(frames)
    if old is not None:  # an older broker refusing what it cannot read
        raise ProtocolError(Code.BAD_VERSION, f"the broker speaks {old.decode()}, this client {VERSION}")
    items = _unpack(frames[0], "the broker's message")
    kind = _REPLIES.get(items[0]) if type(items[0]) is bytes else None
    if kind is None:
        raise ProtocolError(Code.UNKNOWN_COMMAND, f"unknown command {items[0]!r:.32}")
    event: ServerEvent = kind.read(items, 1)
    return event


def decode_published(frames: Sequence[bytes]) -> Published:
    """Decode a PUB message: the topic (up to its NUL), then [sequence, command, fields...]."""
    if not frames:
        raise ProtocolError(Code.MALFORMED, "empty message")
    frame = frames[0]
    end = frame.find(b"\x00") + 1
    if end == 0:
        raise ProtocolError(Code.MALFORMED, "a published message starts with a topic ending in NUL")
    items = _unpack(memoryview(frame)[end:], "the published message")
    if len(items) < 2:
        raise ProtocolError(Code.MALFORMED, "a published message needs a sequence number and a command")
    kind = _PUBLISHED.get(items[1]) if type(items[1]) is bytes else None
    if kind is None:
        raise ProtocolError(Code.UNKNOWN_COMMAND, f"{items[1]!r:.32} is never published")
    return Published(frame[:end], _seq(items[0], b""), kind.read(items, 2))


# --- encoding -------------------------------------------------------------------

_packers = threading.local()  # a Packer is not thread-safe, and the library runs a thread per client


def _pack(value: object) -> bytes:
    try:
        packer = _packers.packer
    except AttributeError:
        # Strings and bytes alike go out as MessagePack str: every string field is text.
        packer = _packers.packer = msgpack.Packer(use_bin_type=False)
    data: bytes = packer.pack(value)
    return data


def command_of(message: ClientCommand | ServerEvent | PublishedEvent) -> bytes:
    """The command string of a typed value on the wire (b"SEND" for a Send)."""
    return _COMMAND_OF[type(message)]


def encode(message: ClientCommand | ServerEvent | PublishedEvent) -> list[bytes]:
    """The one frame of any typed command, reply or event: the inverse of the decoders."""
    return [_pack((_COMMAND_OF[type(message)], *message))]


def encode_published(published: Published) -> list[bytes]:
    """A PUB message, one frame: the topic, then [sequence, command, fields...]."""
    event = published.event
    return [published.topic + _pack((published.seq, _COMMAND_OF[type(event)], *event))]


def encode_old_error(msg_id: bytes, code: Code, text: str) -> list[bytes]:
    """ERROR in ZCHAT/1 framing, for a client of that version (PROTOCOL.md 10)."""
    return [OLD_SIGNATURE, b"ERROR", msg_id, str(int(code)).encode(), text.encode()]


# --- shorthands for clients and tests -----------------------------------------


def encode_hello(msg_id: bytes, name: str, token: str = "") -> list[bytes]:
    return encode(Hello(msg_id, name, token))


def encode_send(msg_id: bytes, target: str, text: str) -> list[bytes]:
    return encode(Send(msg_id, target, text.encode()))


def encode_simple(command: bytes, msg_id: bytes) -> list[bytes]:
    """WHO, PING, SYNC (without a tag), READY, BYE and ROOMS carry only a message id."""
    return [_pack((command, msg_id))]


def encode_command(command: bytes, *fields: Any) -> list[bytes]:
    """Any command from its fields as they go on the wire, checked by nothing: for tests and tools."""
    return [_pack((command, *fields))]
