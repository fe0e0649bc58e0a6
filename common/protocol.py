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

NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
MSG_ID_RE = re.compile(rb"[\x21-\x7e]{1,64}")
MAX_REASON_BYTES = 256


class Code(IntEnum):
    """Error codes carried by ERROR; PROTOCOL.md has the table."""

    MALFORMED = 400
    NOT_REGISTERED = 403
    UNKNOWN_RECIPIENT = 404
    UNKNOWN_COMMAND = 405
    NAME_TAKEN = 409
    ALREADY_REGISTERED = 410
    TOO_LARGE = 413
    BAD_ENCODING = 415
    INVALID_NAME = 422
    BAD_VERSION = 426
    RATE_LIMITED = 429
    INTERNAL = 500
    SHUTTING_DOWN = 503
    RECIPIENT_BUSY = 507


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


class Ready(NamedTuple):
    msg_id: bytes


class Bye(NamedTuple):
    msg_id: bytes


ClientCommand = Hello | Send | Who | Ping | Sync | Ready | Bye

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


# --- what the broker publishes (PUB -> SUB), after topic and sequence --------


class Join(NamedTuple):
    name: str
    time_ms: int


class Leave(NamedTuple):
    name: str
    time_ms: int
    reason: str


class Synced(NamedTuple):
    msg_id: bytes


ServerEvent = Welcome | Ack | Error | Users | Pong | Message | Shutdown
PublishedEvent = Message | Join | Leave | Synced | Shutdown


class Published(NamedTuple):
    topic: bytes
    seq: int
    event: PublishedEvent


# --- helpers -----------------------------------------------------------------


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def name_key(name: str) -> str:
    """Names are unique without regard to case; this is the comparison key."""
    return name.lower()


def private_topic(name: str) -> bytes:
    """The PUB topic a client subscribes to for its own SYNCED replies."""
    return b"@" + name.encode() + b"\x00"


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


def _int(frame: bytes, what: str, msg_id: bytes = b"") -> int:
    if not frame.isdigit() or len(frame) > 20:
        raise ProtocolError(Code.MALFORMED, f"{what} must be a decimal number", msg_id)
    return int(frame)


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
        return Sync(_msg_id(frames, "SYNC"))
    if command == b"READY":
        return Ready(_msg_id(frames, "READY"))
    if command == b"BYE":
        return Bye(_msg_id(frames, "BYE"))
    msg_id = frames[2] if len(frames) > 2 and MSG_ID_RE.fullmatch(frames[2]) else b""
    shown = command[:32].decode("ascii", "replace")
    raise ProtocolError(Code.UNKNOWN_COMMAND, f"unknown command {shown!r}", msg_id)


# --- client command encoding (used by clients) -------------------------------


def encode_hello(msg_id: bytes, name: str, token: str = "") -> list[bytes]:
    return [SIGNATURE, b"HELLO", msg_id, name.encode(), token.encode()]


def encode_send(msg_id: bytes, target: str, text: str) -> list[bytes]:
    return [SIGNATURE, b"SEND", msg_id, target.encode(), text.encode()]


def encode_simple(command: bytes, msg_id: bytes) -> list[bytes]:
    """WHO, PING, SYNC, READY and BYE carry only a message id."""
    return [SIGNATURE, command, msg_id]


# --- broker replies: encoding ------------------------------------------------


def encode_welcome(w: Welcome) -> list[bytes]:
    return [
        SIGNATURE, b"WELCOME", w.msg_id, w.name.encode(), w.token.encode(),
        w.pub_endpoint.encode(), str(w.heartbeat_ms).encode(), str(w.timeout_ms).encode(),
        str(w.max_body).encode(), str(w.time_ms).encode(),
    ]  # fmt: skip


def encode_ack(msg_id: bytes, time_ms: bytes, status: bytes = b"accepted") -> list[bytes]:
    return [SIGNATURE, b"ACK", msg_id, time_ms, status]


def encode_error(msg_id: bytes, code: Code, text: str) -> list[bytes]:
    return [SIGNATURE, b"ERROR", msg_id, str(int(code)).encode(), text.encode()]


def encode_users(msg_id: bytes, names: list[str]) -> list[bytes]:
    return [SIGNATURE, b"USERS", msg_id, " ".join(names).encode()]


def encode_pong(msg_id: bytes, time_ms: bytes) -> list[bytes]:
    return [SIGNATURE, b"PONG", msg_id, time_ms]


def encode_message(msg_id: bytes, sender: bytes, target: bytes, time_ms: bytes, body: bytes) -> list[bytes]:
    return [SIGNATURE, b"MESSAGE", msg_id, sender, target, time_ms, body]


def encode_shutdown(reason: str) -> list[bytes]:
    return [SIGNATURE, b"SHUTDOWN", reason.encode()]


def encode_join(name: bytes, time_ms: bytes) -> list[bytes]:
    return [SIGNATURE, b"JOIN", name, time_ms]


def encode_leave(name: bytes, time_ms: bytes, reason: str) -> list[bytes]:
    return [SIGNATURE, b"LEAVE", name, time_ms, reason.encode()]


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
    if isinstance(event, (Welcome, Ack, Error, Users, Pong)):
        raise ProtocolError(Code.MALFORMED, f"{type(event).__name__} is never published")
    return Published(frames[0], _int(frames[1], "sequence"), event)


def _decode_users(f: list[bytes]) -> Users:
    names = _text(f[3], "names")
    return Users(f[2], tuple(names.split()))


_EVENT_DECODERS: dict[bytes, tuple[int, Callable[[list[bytes]], ServerEvent | PublishedEvent]]] = {
    b"WELCOME": (10, lambda f: Welcome(
        f[2], _text(f[3], "name"), _text(f[4], "token"), _text(f[5], "endpoint"),
        _int(f[6], "heartbeat"), _int(f[7], "timeout"), _int(f[8], "max body"), _int(f[9], "time"),
    )),
    b"ACK": (5, lambda f: Ack(f[2], _int(f[3], "time"), _text(f[4], "status"), tuple(f[5:]))),
    b"ERROR": (5, lambda f: Error(f[2], _int(f[3], "code"), _text(f[4], "text"))),
    b"USERS": (4, _decode_users),
    b"PONG": (4, lambda f: Pong(f[2], _int(f[3], "time"))),
    b"MESSAGE": (7, lambda f: Message(
        f[2], _text(f[3], "sender"), _text(f[4], "target"), _int(f[5], "time"), f[6]
    )),
    b"SHUTDOWN": (3, lambda f: Shutdown(_text(f[2], "reason"))),
    b"JOIN": (4, lambda f: Join(_text(f[2], "name"), _int(f[3], "time"))),
    b"LEAVE": (5, lambda f: Leave(_text(f[2], "name"), _int(f[3], "time"), _text(f[4], "reason"))),
    b"SYNCED": (3, lambda f: Synced(f[2])),
}  # fmt: skip
