"""The zchat wire protocol, version 1: frames, commands, error codes.

docs/PROTOCOL.md is the specification; this module follows it. Decoders take
the frames of one ZeroMQ message and return a typed command or raise
ProtocolError; encoders return lists of frames. Nothing here touches a socket.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import IntEnum
from typing import NamedTuple

SIGNATURE = b"ZCHAT/1"
OTHER_VERSION_RE = re.compile(rb"ZCHAT/[0-9]{1,3}")

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


class Pong(NamedTuple):
    msg_id: bytes
    time_ms: int


class Message(NamedTuple):
    msg_id: bytes
    sender: str
    target: str  # a name for a private message, EVERYONE for a broadcast
    time_ms: int
    body: bytes


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


class Synced(NamedTuple):
    msg_id: bytes


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
)
PublishedEvent = Message | Join | Leave | Synced | Shutdown


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


def now_ms(now: float) -> bytes:
    return str(int(now * 1000)).encode()


def is_utf8(data: bytes) -> bool:
    if data.isascii():  # fast path: no decoding for plain ASCII
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _text(frame: bytes, what: str, msg_id: bytes = b"") -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(Code.BAD_ENCODING, f"{what} is not valid UTF-8", msg_id) from None


def _int(frame: bytes, what: str, msg_id: bytes = b"", *, low: int = 0, high: int = MAX_NUMBER) -> int:
    """A `number` field from `low` to `high`: anything else is malformed (ERROR 400)."""
    if not frame.isdigit() or len(frame) > 20:  # bytes.isdigit: ASCII digits only
        raise ProtocolError(Code.MALFORMED, f"{what} must be a decimal number", msg_id)
    value = int(frame)
    if not low <= value <= high:
        raise ProtocolError(Code.MALFORMED, f"{what} must be from {low} to {high}", msg_id)
    return value


def _time(frame: bytes, what: str = "time") -> int:
    return _int(frame, what, high=MAX_TIME_MS)


def _duration(frame: bytes, what: str, low: int = 1) -> int:
    return _int(frame, what, low=low, high=MAX_INT32)


def _check_signature(frames: list[bytes]) -> None:
    if not frames:
        raise ProtocolError(Code.MALFORMED, "empty message")
    signature = frames[0]
    if signature != SIGNATURE:
        # Answer with the request's id when there is a readable one.
        msg_id = frames[2] if len(frames) > 2 and MSG_ID_RE.fullmatch(frames[2]) else b""
        if OTHER_VERSION_RE.fullmatch(signature):
            raise ProtocolError(Code.BAD_VERSION, "this broker speaks ZCHAT/1 only", msg_id)
        raise ProtocolError(Code.MALFORMED, "first frame must be the signature ZCHAT/1", msg_id)
    if len(frames) < 2:
        raise ProtocolError(Code.MALFORMED, "missing command frame")


def _need(frames: list[bytes], count: int, command: str) -> None:
    if len(frames) < count:
        msg_id = frames[2] if len(frames) > 2 and MSG_ID_RE.fullmatch(frames[2]) else b""
        raise ProtocolError(Code.MALFORMED, f"{command} needs {count - 2} frames after the command", msg_id)


def _msg_id(frames: list[bytes], command: str) -> bytes:
    _need(frames, 3, command)
    msg_id = frames[2]
    if MSG_ID_RE.fullmatch(msg_id) is None:
        raise ProtocolError(Code.MALFORMED, "message id must be 1-64 visible ASCII characters")
    return msg_id


# --- client command decoding (used by the broker) ----------------------------


def decode_command(frames: list[bytes]) -> ClientCommand:
    """Decode one client message; frames beyond those defined are ignored."""
    _check_signature(frames)
    command = frames[1]
    if command == b"SEND":  # the hot path comes first
        msg_id = _msg_id(frames, "SEND")
        _need(frames, 5, "SEND")
        target = frames[3]
        if not target.isascii():
            raise ProtocolError(Code.UNKNOWN_RECIPIENT, "no such user", msg_id)
        body = frames[4]
        if not is_utf8(body):
            raise ProtocolError(Code.BAD_ENCODING, "message text is not valid UTF-8", msg_id)
        return Send(msg_id, target.decode("ascii"), body)
    if command == b"PING":
        return Ping(_msg_id(frames, "PING"))
    if command == b"HELLO":
        msg_id = _msg_id(frames, "HELLO")
        _need(frames, 5, "HELLO")
        name = frames[3].decode("latin-1")  # any bytes: a non-ASCII name is invalid, not garbled
        if not valid_name(name):
            raise ProtocolError(Code.INVALID_NAME, "a name is 1-32 letters, digits, '_', '-' or '.'", msg_id)
        token = frames[4]
        if len(token) > 64 or not token.isascii():
            raise ProtocolError(Code.MALFORMED, "resume token must be at most 64 ASCII bytes", msg_id)
        return Hello(msg_id, name, token.decode("ascii"))
    if command == b"WHO":
        return Who(_msg_id(frames, "WHO"))
    if command == b"SYNC":
        msg_id = _msg_id(frames, "SYNC")
        tag = frames[3] if len(frames) > 3 else b""
        if tag and MSG_ID_RE.fullmatch(tag) is None:
            raise ProtocolError(Code.MALFORMED, "a SYNC tag must be 1-64 visible ASCII characters", msg_id)
        return Sync(msg_id, tag)
    if command == b"READY":
        return Ready(_msg_id(frames, "READY"))
    if command == b"BYE":
        return Bye(_msg_id(frames, "BYE"))
    return _decode_room_command(command, frames)


def _room(frames: list[bytes], index: int, msg_id: bytes, lobby: bool = False) -> str:
    room = frames[index].decode("latin-1").lower()
    if not (valid_room(room) or (lobby and room == EVERYONE)):
        raise ProtocolError(Code.MALFORMED, "a room is '#' and 1-32 letters, digits, '_', '-' or '.'", msg_id)
    return room


def _decode_room_command(command: bytes, frames: list[bytes]) -> ClientCommand:
    """The commands of rooms, history and offline delivery (PROTOCOL.md 13)."""
    if command in (b"ENTER", b"EXIT", b"NAMES"):
        name = command.decode()
        msg_id = _msg_id(frames, name)
        _need(frames, 4, name)
        if command == b"NAMES":
            return Names(msg_id, _room(frames, 3, msg_id, lobby=True))
        room = _room(frames, 3, msg_id, lobby=command == b"EXIT")  # EXIT of the lobby: refused later
        return Enter(msg_id, room) if command == b"ENTER" else Exit(msg_id, room)
    if command == b"ROOMS":
        return Rooms(_msg_id(frames, "ROOMS"))
    if command == b"HISTORY":
        msg_id = _msg_id(frames, "HISTORY")
        _need(frames, 6, "HISTORY")
        room = _room(frames, 3, msg_id, lobby=True)
        before = _int(frames[4], "before", msg_id)
        # More than a page is refused, as for RECEIVED, rather than cut short unsaid.
        count = _int(frames[5], "count", msg_id, high=MAX_HISTORY)
        after = _int(frames[6], "after", msg_id) if len(frames) > 6 else 0
        return HistoryRequest(msg_id, room, before, count, after)
    if command == b"SEARCH":
        msg_id = _msg_id(frames, "SEARCH")
        _need(frames, 4, "SEARCH")
        return Search(msg_id, _text(frames[3], "words", msg_id))
    if command == b"RECEIVED":
        msg_id = _msg_id(frames, "RECEIVED")
        _need(frames, 5, "RECEIVED")
        sender = frames[3].decode("latin-1")  # any bytes: a non-ASCII name is invalid, not garbled
        if not valid_name(sender):  # a `name` field: 422 (PROTOCOL.md 3.2), as in HELLO
            raise ProtocolError(Code.INVALID_NAME, "the sender is not a valid name", msg_id)
        ids = tuple(frames[4:])
        if not all(MSG_ID_RE.fullmatch(i) for i in ids):
            raise ProtocolError(Code.MALFORMED, "RECEIVED needs message ids after the sender", msg_id)
        if len(ids) > MAX_RECEIVED_IDS:
            raise ProtocolError(Code.MALFORMED, f"RECEIVED takes at most {MAX_RECEIVED_IDS} ids", msg_id)
        return Received(msg_id, sender, ids)
    msg_id = frames[2] if len(frames) > 2 and MSG_ID_RE.fullmatch(frames[2]) else b""
    shown = command[:32].decode("ascii", "replace")
    raise ProtocolError(Code.UNKNOWN_COMMAND, f"unknown command {shown!r}", msg_id)


# --- client command encoding (used by clients) -------------------------------


def encode_hello(msg_id: bytes, name: str, token: str = "") -> list[bytes]:
    return [SIGNATURE, b"HELLO", msg_id, name.encode(), token.encode()]


def encode_send(msg_id: bytes, target: str, text: str) -> list[bytes]:
    return [SIGNATURE, b"SEND", msg_id, target.encode(), text.encode()]


def encode_simple(command: bytes, msg_id: bytes) -> list[bytes]:
    """WHO, PING, SYNC (without a tag), READY and BYE carry only a message id."""
    return [SIGNATURE, command, msg_id]


# --- broker replies: encoding ------------------------------------------------


def encode_welcome(w: Welcome) -> list[bytes]:
    return [
        SIGNATURE, b"WELCOME", w.msg_id, w.name.encode(), w.token.encode(),
        w.pub_endpoint.encode(), str(w.heartbeat_ms).encode(), str(w.timeout_ms).encode(),
        str(w.max_body).encode(), str(w.time_ms).encode(),
        str(w.rate_per_minute).encode(), str(w.burst).encode(),
    ]  # fmt: skip


def encode_ack(msg_id: bytes, time_ms: bytes, status: bytes = b"accepted") -> list[bytes]:
    return [SIGNATURE, b"ACK", msg_id, time_ms, status]


def encode_error(msg_id: bytes, code: Code, text: str, retry_after_ms: int = 0) -> list[bytes]:
    """ERROR; a 429 carries its retry-after (section 8), within the range of section 3.2."""
    frames = [SIGNATURE, b"ERROR", msg_id, str(int(code)).encode(), text.encode()]
    if code == Code.RATE_LIMITED:
        frames.append(str(min(max(retry_after_ms, 0), MAX_INT32)).encode())
    return frames


def encode_users(msg_id: bytes, names: list[str]) -> list[bytes]:
    return [SIGNATURE, b"USERS", msg_id, " ".join(names).encode()]


def encode_pong(msg_id: bytes, time_ms: bytes) -> list[bytes]:
    return [SIGNATURE, b"PONG", msg_id, time_ms]


def encode_message(msg_id: bytes, sender: bytes, target: bytes, time_ms: bytes, body: bytes) -> list[bytes]:
    return [SIGNATURE, b"MESSAGE", msg_id, sender, target, time_ms, body]


def encode_shutdown(reason: str) -> list[bytes]:
    return [SIGNATURE, b"SHUTDOWN", reason.encode()]


def encode_replaced(reason: str) -> list[bytes]:
    return [SIGNATURE, b"REPLACED", reason.encode()]


def encode_join(name: bytes, time_ms: bytes, room: str = EVERYONE) -> list[bytes]:
    frames = [SIGNATURE, b"JOIN", name, time_ms]
    return frames if room == EVERYONE else [*frames, room.encode()]


def encode_leave(name: bytes, time_ms: bytes, reason: str, room: str = EVERYONE) -> list[bytes]:
    frames = [SIGNATURE, b"LEAVE", name, time_ms, reason.encode()]
    return frames if room == EVERYONE else [*frames, room.encode()]


def encode_command(command: bytes, msg_id: bytes, *fields: str | bytes) -> list[bytes]:
    """Any client command: ENTER, EXIT, NAMES, HISTORY, SEARCH, RECEIVED, ..."""
    return [SIGNATURE, command, msg_id, *(f.encode() if isinstance(f, str) else f for f in fields)]


def encode_rooms(msg_id: bytes, sizes: dict[str, int], mine: set[str]) -> list[bytes]:
    listing = " ".join(f"{room}:{count}" for room, count in sorted(sizes.items()))
    return [SIGNATURE, b"ROOMS", msg_id, listing.encode(), " ".join(sorted(mine)).encode()]


def record_frames(r: Record) -> list[bytes]:
    return [
        str(r.seq).encode(),
        r.msg_id,
        r.sender.encode(),
        r.target.encode(),
        str(r.time_ms).encode(),
        r.body,
    ]


def encode_history(msg_id: bytes, room: str, last_seq: int, records: list[Record]) -> list[bytes]:
    frames = [
        SIGNATURE,
        b"HISTORY",
        msg_id,
        room.encode(),
        str(last_seq).encode(),
        str(len(records)).encode(),
    ]
    for record in records:
        frames += record_frames(record)
    return frames


def encode_found(msg_id: bytes, records: list[Record]) -> list[bytes]:
    frames = [SIGNATURE, b"FOUND", msg_id, str(len(records)).encode()]
    for record in records:
        frames += record_frames(record)
    return frames


def encode_receipt(recipient: bytes, time_ms: bytes, msg_ids: list[bytes]) -> list[bytes]:
    return [SIGNATURE, b"RECEIPT", recipient, time_ms, *msg_ids]


def encode_synced(msg_id: bytes) -> list[bytes]:
    return [SIGNATURE, b"SYNCED", msg_id]


# --- broker replies: decoding (used by clients) ------------------------------


def _field_count(frames: list[bytes], count: int, command: str) -> None:
    if len(frames) < count:
        raise ProtocolError(Code.MALFORMED, f"{command} needs {count - 2} frames after the command")


def decode_event(frames: list[bytes]) -> ServerEvent | PublishedEvent:
    """Decode a message from the broker, without the PUB topic and sequence."""
    _check_signature(frames)
    command = frames[1]
    decoder = _EVENT_DECODERS.get(command)
    if decoder is None:
        raise ProtocolError(Code.UNKNOWN_COMMAND, f"unknown command {command[:32]!r}")
    count, build = decoder
    _field_count(frames, count, command.decode())
    return build(frames)


def decode_published(frames: list[bytes]) -> Published:
    """Decode a PUB message: topic, sequence number, then a broker message."""
    if len(frames) < 4:
        raise ProtocolError(Code.MALFORMED, "a published message needs topic and sequence frames")
    event = decode_event(frames[2:])
    if isinstance(event, (Welcome, Ack, Error, Users, Pong, Replaced, RoomList, History, Found, Receipt)):
        raise ProtocolError(Code.MALFORMED, f"{type(event).__name__} is never published")
    return Published(frames[0], _int(frames[1], "sequence"), event)


def _room_field(f: list[bytes], index: int) -> str:
    return _text(f[index], "room") if len(f) > index else EVERYONE


def _sizes(frame: bytes) -> tuple[tuple[str, int], ...]:
    pairs = []
    for item in _text(frame, "rooms").split():
        room, _, count = item.rpartition(":")
        pairs.append((room, _int(count.encode(), "member count", low=1)))
    return tuple(pairs)


def _records(f: list[bytes], count_at: int) -> tuple[Record, ...]:
    count = _int(f[count_at], "count", high=MAX_HISTORY)
    start = count_at + 1
    if len(f) < start + 6 * count:
        raise ProtocolError(Code.MALFORMED, f"{count} records announced, fewer sent")
    return tuple(
        Record(_int(f[i], "seq"), f[i + 1], _text(f[i + 2], "sender"), _text(f[i + 3], "target"),
               _time(f[i + 4]), f[i + 5])
        for i in range(start, start + 6 * count, 6)
    )  # fmt: skip


def _optional_int(f: list[bytes], index: int, what: str) -> int:
    """A field appended in a later revision: 0 when an older peer leaves it out."""
    return _int(f[index], what) if len(f) > index else 0


def _decode_error(f: list[bytes]) -> Error:
    code = _int(f[3], "code", low=MIN_ERROR_CODE, high=MAX_ERROR_CODE)
    # Only 429 defines the retry-after field: after any other code, a frame there is a later addition.
    retry_after = _duration(f[5], "retry-after", low=0) if code == Code.RATE_LIMITED and len(f) > 5 else 0
    return Error(f[2], code, _text(f[4], "text"), retry_after)


def _decode_users(f: list[bytes]) -> Users:
    names = _text(f[3], "names")
    return Users(f[2], tuple(names.split()))


_EVENT_DECODERS: dict[bytes, tuple[int, Callable[[list[bytes]], ServerEvent | PublishedEvent]]] = {
    b"WELCOME": (10, lambda f: Welcome(
        f[2], _text(f[3], "name"), _text(f[4], "token"), _text(f[5], "endpoint"),
        _duration(f[6], "heartbeat"), _duration(f[7], "timeout"), _duration(f[8], "max body"), _time(f[9]),
        _optional_int(f, 10, "rate"), _optional_int(f, 11, "burst"),
    )),
    b"ACK": (5, lambda f: Ack(f[2], _time(f[3]), _text(f[4], "status"), tuple(f[5:]))),
    b"ERROR": (5, _decode_error),
    b"USERS": (4, _decode_users),
    b"PONG": (4, lambda f: Pong(f[2], _time(f[3]))),
    b"MESSAGE": (7, lambda f: Message(
        f[2], _text(f[3], "sender"), _text(f[4], "target"), _time(f[5]), f[6]
    )),
    b"SHUTDOWN": (3, lambda f: Shutdown(_text(f[2], "reason"))),
    b"REPLACED": (3, lambda f: Replaced(_text(f[2], "reason"))),
    b"JOIN": (4, lambda f: Join(_text(f[2], "name"), _time(f[3]), _room_field(f, 4))),
    b"LEAVE": (5, lambda f: Leave(_text(f[2], "name"), _time(f[3]), _text(f[4], "reason"), _room_field(f, 5))),
    b"ROOMS": (5, lambda f: RoomList(f[2], _sizes(f[3]), tuple(_text(f[4], "rooms").split()))),
    b"HISTORY": (6, lambda f: History(f[2], _text(f[3], "room"), _int(f[4], "last seq"), _records(f, 5))),
    b"FOUND": (4, lambda f: Found(f[2], _records(f, 3))),
    b"RECEIPT": (5, lambda f: Receipt(_text(f[2], "recipient"), _time(f[3]), tuple(f[4:]))),
    b"SYNCED": (3, lambda f: Synced(f[2])),
}  # fmt: skip


# --- typed values to frames, both directions -----------------------------------

_ENCODERS: dict[type, Callable[..., list[bytes]]] = {
    Hello: lambda m: encode_hello(m.msg_id, m.name, m.token),
    Send: lambda m: [SIGNATURE, b"SEND", m.msg_id, m.target.encode(), m.body],
    Who: lambda m: encode_simple(b"WHO", m.msg_id),
    Ping: lambda m: encode_simple(b"PING", m.msg_id),
    Sync: lambda m: encode_command(b"SYNC", m.msg_id, *((m.tag,) if m.tag else ())),
    Ready: lambda m: encode_simple(b"READY", m.msg_id),
    Bye: lambda m: encode_simple(b"BYE", m.msg_id),
    Enter: lambda m: encode_command(b"ENTER", m.msg_id, m.room),
    Exit: lambda m: encode_command(b"EXIT", m.msg_id, m.room),
    Rooms: lambda m: encode_command(b"ROOMS", m.msg_id),
    Names: lambda m: encode_command(b"NAMES", m.msg_id, m.room),
    HistoryRequest: lambda m: encode_command(
        b"HISTORY", m.msg_id, m.room, str(m.before), str(m.limit), *((str(m.after),) if m.after else ())
    ),
    Search: lambda m: encode_command(b"SEARCH", m.msg_id, m.words),
    Received: lambda m: encode_command(b"RECEIVED", m.msg_id, m.sender, *m.ids),
    Welcome: encode_welcome,
    Ack: lambda m: [*encode_ack(m.msg_id, str(m.time_ms).encode(), m.status.encode()), *m.more_ids],
    Error: lambda m: encode_error(m.msg_id, Code(m.code), m.text, m.retry_after_ms),
    Users: lambda m: encode_users(m.msg_id, list(m.names)),
    Pong: lambda m: encode_pong(m.msg_id, str(m.time_ms).encode()),
    Message: lambda m: encode_message(
        m.msg_id, m.sender.encode(), m.target.encode(), str(m.time_ms).encode(), m.body
    ),
    Shutdown: lambda m: encode_shutdown(m.reason),
    Replaced: lambda m: encode_replaced(m.reason),
    RoomList: lambda m: encode_rooms(m.msg_id, dict(m.sizes), set(m.mine)),
    History: lambda m: encode_history(m.msg_id, m.room, m.last_seq, list(m.records)),
    Found: lambda m: encode_found(m.msg_id, list(m.records)),
    Receipt: lambda m: encode_receipt(m.recipient.encode(), str(m.time_ms).encode(), list(m.msg_ids)),
    Join: lambda m: encode_join(m.name.encode(), str(m.time_ms).encode(), m.room),
    Leave: lambda m: encode_leave(m.name.encode(), str(m.time_ms).encode(), m.reason, m.room),
    Synced: lambda m: encode_synced(m.msg_id),
}


def encode(message: ClientCommand | ServerEvent | PublishedEvent) -> list[bytes]:
    """The frames of any typed command, reply or event: the inverse of the decoders."""
    return _ENCODERS[type(message)](message)


def encode_published(published: Published) -> list[bytes]:
    """A PUB message: topic, sequence number, then the event; the inverse of decode_published."""
    return [published.topic, str(published.seq).encode(), *encode(published.event)]
