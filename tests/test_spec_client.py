"""An independent ZCHAT/2 client, written from docs/PROTOCOL.md alone, against the real broker.

Nothing here imports or reads the broker's code: `SpecClient` speaks the wire format with
plain pyzmq DEALER and SUB sockets and the `msgpack` library, the way an implementer in
another language would. Section numbers in comments refer to docs/PROTOCOL.md.

No test sleeps to synchronise: every wait polls the sockets against a deadline, and a
negative ("X never arrives") is proven with a marker sent after X over the same path:
ZeroMQ keeps order per connection, so whatever arrives before the marker is all there was.

Whatever the broker sends is checked against the types of section 3.2 as it arrives (one
frame, one MessagePack array of strings, non-negative integers and arrays; every field of
a known command in its range): a message that breaks them fails the test that gets it.
"""

from __future__ import annotations

import itertools
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
import zmq
import zmq.auth
import zmq.utils.monitor

from tests.support import Broker, start_broker

Message = list[Any]  # one decoded ZCHAT/2 message: [command, field, ...]
Q = TypeVar("Q", "Message | Frames", "Published")
Context = zmq.Context[zmq.Socket[bytes]]

VERSION = "ZCHAT/2"
LOBBY = b"*\x00"  # section 6.1
REPLIES = {
    "WELCOME",
    "ACK",
    "ERROR",
    "USERS",
    "PONG",
    "ROOMS",
    "HISTORY",
    "FOUND",
    "SUBJECT",
    "AWAY",
}  # id first (3.4, 13.7)
MAX_NUMBER = 2**63 - 1  # the largest `number` (3.2)
MAX_INT32 = 2**31 - 1  # durations and sizes (3.2)
MAX_TIME = 253402300799999  # 9999-12-31T23:59:59.999Z (3.2)
WAIT = 5.0  # seconds: the deadline for anything the broker should do "now"


# -- the codec (3.1, 3.2) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """An item already encoded as MessagePack, to send what the library would not write."""

    data: bytes


def raw_str(data: bytes) -> Raw:
    """A MessagePack str holding `data` as they are, valid UTF-8 or not."""
    n = len(data)
    if n < 32:
        head = bytes([0xA0 | n])
    elif n < 256:
        head = bytes([0xD9, n])
    else:
        head = bytes([0xDA]) + n.to_bytes(2, "big")
    return Raw(head + data)


def uint_as(size: int, value: int) -> Raw:
    """`value` as a MessagePack uint of `size` bytes (section 3.2: any integer encoding)."""
    head = {1: 0xCC, 2: 0xCD, 4: 0xCE, 8: 0xCF}[size]
    return Raw(bytes([head]) + value.to_bytes(size, "big"))


def int_as(size: int, value: int) -> Raw:
    """`value` as a MessagePack (signed) int of `size` bytes."""
    head = {1: 0xD0, 2: 0xD1, 4: 0xD2, 8: 0xD3}[size]
    return Raw(bytes([head]) + value.to_bytes(size, "big", signed=True))


def encode(items: list[Any]) -> bytes:
    """One frame holding one MessagePack array (section 3.1); strings as str, bytes as bin."""
    if not any(isinstance(item, Raw) for item in items):
        return bytes(msgpack.packb(items, use_bin_type=True))
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_array_header(len(items))]
    parts += [item.data if isinstance(item, Raw) else packer.pack(item) for item in items]
    return b"".join(parts)


def check_types(value: Any, where: object) -> None:
    """Section 3.2: only strings (zchat always sends str), non-negative integers and arrays;
    never a float, a boolean, nil, a map, an extension type or bin."""
    if isinstance(value, list):
        for item in value:
            check_types(item, where)
    elif isinstance(value, bool) or not isinstance(value, (str, int)):
        raise AssertionError(f"{type(value).__name__} {value!r} in {where!r} (section 3.2)")
    elif isinstance(value, int):
        assert 0 <= value <= 2**64 - 1, (value, where)


def decode(frame: bytes) -> Message:
    """One frame from the DEALER: exactly one MessagePack array, a command first (3.1)."""
    try:
        value = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=False, timestamp=0)
    except Exception as error:  # not one MessagePack value, or a str that is not UTF-8
        raise AssertionError(f"not one MessagePack value: {frame!r} ({error})") from error
    assert isinstance(value, list) and value and isinstance(value[0], str), frame
    check_types(value, frame)
    return value


def assert_number(value: Any, top: int = MAX_NUMBER, bottom: int = 0) -> int:
    """An integer (never a boolean) in its range (section 3.2)."""
    assert isinstance(value, int) and not isinstance(value, bool), value
    assert bottom <= value <= top, value
    return value


def assert_stamp(value: Any) -> int:
    """A `time`: a number from 0 to 253402300799999 (section 3.2)."""
    return assert_number(value, MAX_TIME)


def assert_time(value: Any) -> int:
    """A `time` from the broker's clock: on loopback it is close to ours."""
    millis = assert_stamp(value)
    assert abs(millis - time.time() * 1000) < 10_000, value
    return millis


def assert_id(value: Any) -> str:
    """An `id`: 1 to 64 bytes, each 0x21-0x7E (section 3.2)."""
    assert isinstance(value, str) and 1 <= len(value) <= 64, value
    assert all(0x21 <= ord(c) <= 0x7E for c in value), value
    return value


def assert_name(value: Any) -> str:
    """A `name`: 1 to 32 of A-Z a-z 0-9 _ - . (section 3.2)."""
    assert isinstance(value, str) and 1 <= len(value) <= 32, value
    assert value.isascii() and all(c.isalnum() or c in "_-." for c in value), value
    return value


def assert_text(value: Any) -> str:
    assert isinstance(value, str), value  # decoded as UTF-8 already
    return value


def assert_array(value: Any, low: int = 0, high: int | None = None) -> list[Any]:
    assert isinstance(value, list), value
    assert len(value) >= low and (high is None or len(value) <= high), value
    return value


def assert_record(value: Any) -> list[Any]:
    """A record of HISTORY or FOUND: [seq, id, sender, target, time, body] (section 13.2)."""
    record = assert_array(value, 6)
    assert_number(record[0])
    assert_id(record[1])
    assert_name(record[2])
    assert_text(record[3])
    assert_stamp(record[4])
    assert_text(record[5])
    return record[:6]


def check_reply(message: Message) -> None:
    """Section 5 and 13.2: the fields of every command the broker sends on the DEALER, in
    their ranges. Later revisions may append fields (3.3), so only the defined ones count."""
    command = message[0]
    if command in REPLIES:
        assert len(message) >= 2, message
        if command == "ERROR":
            assert message[1] == "" or assert_id(message[1]), message
        else:
            assert_id(message[1])
    if command == "WELCOME":
        assert len(message) >= 11, message  # rate and burst always present (section 10)
        assert_name(message[2])
        assert isinstance(message[3], str) and message[3].isascii() and len(message[3]) <= 64, message
        assert_text(message[4])
        for value in message[5:8]:
            assert_number(value, MAX_INT32, 1)
        assert_stamp(message[8])
        assert_number(message[9])
        assert_number(message[10])
    elif command == "ACK":
        assert len(message) >= 4, message
        assert_stamp(message[2])
        assert_text(message[3])
        if len(message) >= 5:
            for msg_id in assert_array(message[4]):
                assert_id(msg_id)
    elif command == "ERROR":
        assert len(message) >= 5, message  # retry-after always present (section 10)
        assert_number(message[2], 599, 400)
        assert_text(message[3])
        assert_number(message[4], MAX_INT32)
        assert message[2] == 429 or message[4] == 0, message  # "0 after any other code" (5)
    elif command == "USERS":
        assert len(message) >= 3, message
        for name in assert_array(message[2]):
            assert_name(name)
        if len(message) >= 4:  # the away field, a later addition (13.7)
            for pair in assert_array(message[3]):
                assert_array(pair, 2, 2)
                assert assert_name(pair[0]) in message[2], message
                assert_text(pair[1])
    elif command == "SUBJECT":  # 13.7: id, room, text, setter ("" when none), time (0 when none)
        assert len(message) >= 6, message
        assert_text(message[2])
        assert_text(message[3])
        assert message[4] == "" or assert_name(message[4]), message
        assert_stamp(message[5])
    elif command == "AWAY":  # 13.7: the SEND's id, the recipient, the away text
        assert len(message) >= 4, message
        assert_name(message[2])
        assert_text(message[3])
    elif command == "PONG":
        assert len(message) >= 3, message
        assert_stamp(message[2])
    elif command == "MESSAGE":
        assert len(message) >= 6, message
        assert_id(message[1])
        assert_name(message[2])
        assert_name(message[3])
        assert_stamp(message[4])
        assert_text(message[5])
    elif command in ("SHUTDOWN", "REPLACED"):
        assert len(message) >= 2, message
        assert_text(message[1])
    elif command == "ROOMS":
        assert len(message) >= 4, message
        for pair in assert_array(message[2]):
            assert_array(pair, 2)
            assert_text(pair[0])
            assert_number(pair[1], MAX_NUMBER, 1)
        for room in assert_array(message[3]):
            assert_text(room)
    elif command == "HISTORY":
        assert len(message) >= 5, message
        assert_text(message[2])
        assert_number(message[3])
        for record in assert_array(message[4], 0, 500):
            assert_record(record)
    elif command == "FOUND":
        assert len(message) >= 3, message
        for record in assert_array(message[2], 0, 500):
            assert_record(record)
    elif command == "RECEIPT":
        assert len(message) >= 4, message
        assert_name(message[1])
        assert_stamp(message[2])
        for msg_id in assert_array(message[3], 1):
            assert_id(msg_id)


def own_topic(name: str) -> bytes:
    """The client's own topic, `@` + name + NUL (section 6.1)."""
    return b"@" + name.encode() + b"\x00"


def sync_topic(name: str, tag: str) -> bytes:
    """A sync topic, `@` + name + 0x01 + tag + NUL (section 4.5)."""
    return b"@" + name.encode() + b"\x01" + tag.encode() + b"\x00"


def pub_address(pub_endpoint: str, router_endpoint: str) -> str:
    """Section 5.1: a `*` host in the pub endpoint means the host used for the ROUTER."""
    scheme_host, port = pub_endpoint.rsplit(":", 1)
    if scheme_host.endswith("//*"):
        return f"{router_endpoint.rsplit(':', 1)[0]}:{port}"
    return pub_endpoint


@dataclass(frozen=True)
class Welcome:
    """The fields of a WELCOME (section 5.1)."""

    id: str
    name: str
    token: str
    pub_endpoint: str
    heartbeat_ms: int
    timeout_ms: int
    max_body: int
    time: int
    rate_per_minute: int
    burst: int

    @classmethod
    def parse(cls, message: Message) -> Welcome:
        assert message[0] == "WELCOME", message
        check_reply(message)
        msg_id, name, token, pub, heartbeat, timeout, max_body, stamp, rate, burst = message[1:11]
        assert pub.startswith("tcp://") and pub.rsplit(":", 1)[1].isdigit(), pub  # 5.1
        assert timeout > heartbeat, message  # "always longer than heartbeat-ms"
        return cls(msg_id, name, token, pub, heartbeat, timeout, max_body, stamp, rate, burst)


@dataclass(frozen=True)
class Published:
    """A message from the PUB socket: topic NUL [seq, command, field, ...] (section 3.1)."""

    topic: bytes
    seq: int
    command: str
    fields: list[Any]
    frame: bytes

    @classmethod
    def parse(cls, frame: bytes) -> Published:
        end = frame.index(b"\x00")  # the topic ends at the first NUL (3.1)
        try:
            value = msgpack.unpackb(frame[end + 1 :], raw=False, use_list=True, strict_map_key=False)
        except Exception as error:
            raise AssertionError(f"not one MessagePack value after the topic: {frame!r}") from error
        assert isinstance(value, list) and len(value) >= 2, frame
        check_types(value, frame)
        seq, command, fields = assert_number(value[0]), value[1], value[2:]
        assert isinstance(command, str), frame
        if command == "MESSAGE":  # section 6.3 and 13.3
            assert len(fields) >= 5, frame
            assert_id(fields[0])
            assert_name(fields[1])
            assert_text(fields[2])
            assert_stamp(fields[3])
            assert_text(fields[4])
        elif command in ("JOIN", "LEAVE"):
            assert len(fields) >= (3 if command == "JOIN" else 4), frame
            assert_name(fields[0])
            assert_stamp(fields[1])
            assert_text(fields[-1])
            if command == "LEAVE":
                assert_text(fields[2])
        elif command == "SHUTDOWN":
            assert len(fields) >= 1, frame
            assert_text(fields[0])
        elif command == "SYNCED":
            assert len(fields) >= 1, frame
            assert_id(fields[0])
        elif command == "SUBJECT":  # section 13.7: room, text, setter, time
            assert len(fields) >= 4, frame
            assert_text(fields[0])
            assert_text(fields[1])
            assert_name(fields[2])
            assert_stamp(fields[3])
        elif command == "PRESENCE":  # section 6.4
            assert len(fields) >= 2, frame
            assert_text(fields[0])
            assert isinstance(fields[1], list) and 1 <= len(fields[1]) <= 1000, frame
            for change in fields[1]:
                assert isinstance(change, list) and len(change) == 3, frame
                assert_name(change[0])
                assert_stamp(change[1])
                assert_text(change[2])
        return cls(frame[: end + 1], seq, command, fields, frame)

    @classmethod
    def each(cls, frame: bytes) -> list[Published]:
        """The message, or the JOINs and LEAVEs a PRESENCE stands for, numbered on (6.4)."""
        message = cls.parse(frame)
        if message.command != "PRESENCE":
            return [message]
        room, changes = message.fields[:2]
        return [
            cls(message.topic, message.seq + k, "LEAVE" if reason else "JOIN",
                [name, stamp, reason, room] if reason else [name, stamp, room], frame)
            for k, (name, stamp, reason) in enumerate(changes)
        ]  # fmt: skip


@dataclass(frozen=True)
class Curve:
    """A CURVE client's keys, Z85: the broker's public key and a key pair of its own (14)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def new(cls, server_public: bytes) -> Curve:
        public, secret = zmq.curve_keypair()
        return cls(server_public, public, secret)


@dataclass(frozen=True)
class Frames:
    """A message of several frames on the DEALER: ZCHAT/1's framing (section 10)."""

    frames: tuple[bytes, ...]


def answered_ids(message: Message) -> list[str]:
    """The ids a reply answers: its own, and for ACK the further ids (section 5.2)."""
    if message[0] == "ACK" and len(message) >= 5:
        return [message[1], *message[4]]
    return [message[1]]


class SpecClient:
    """A ZCHAT/2 client built from docs/PROTOCOL.md and nothing else.

    One DEALER for commands, replies and private messages; after WELCOME, one SUB for
    the topics it subscribes to. Whatever arrives is queued (`inbox` for the DEALER,
    `feed` for the SUB) until a test takes it. While waiting, a registered client keeps
    its heartbeats going (section 7.1) and swallows the PONGs to them.
    """

    def __init__(self, context: Context, endpoint: str, label: str = "c", curve: Curve | None = None) -> None:
        self.context = context
        self.endpoint = endpoint
        self.curve = curve
        self.dealer = self._socket(zmq.DEALER)
        self.dealer.connect(endpoint)
        self.sub: zmq.Socket[bytes] | None = None
        self.welcome: Welcome | None = None
        self.inbox: deque[Message | Frames] = deque()
        self.feed: deque[Published] = deque()
        self.heartbeats = True
        self._prefix = f"{label}-{secrets.token_hex(3)}-"
        self._counter = itertools.count(1)
        self._pings: set[str] = set()
        self._last_send = time.monotonic()

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        """A socket of `kind`; with CURVE, a CURVE client of the broker's key (section 14)."""
        made = self.context.socket(kind)
        made.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            made.curve_serverkey = self.curve.server_public
            made.curve_publickey = self.curve.public
            made.curve_secretkey = self.curve.secret
        return made

    # -- sending -----------------------------------------------------------------------

    def new_id(self) -> str:
        """Section 3.4: a counter with a random prefix."""
        return self._prefix + str(next(self._counter))

    def send_frames(self, *frames: bytes) -> None:
        self.dealer.send_multipart(list(frames))
        self._last_send = time.monotonic()

    def send_items(self, *items: Any) -> None:
        """One message, one frame: the array of `items` (section 3.1)."""
        self.send_frames(encode(list(items)))

    def send(self, command: Any, *fields: Any) -> str:
        """Send `[command, id, field, ...]` and return the id."""
        msg_id = self.new_id()
        self.send_items(command, msg_id, *fields)
        return msg_id

    # -- receiving -----------------------------------------------------------------------

    def _pump(self, wait: float) -> None:
        """Wait up to `wait` seconds for input on either socket and queue it."""
        if (
            self.heartbeats
            and self.welcome is not None
            and time.monotonic() - self._last_send >= self.welcome.heartbeat_ms / 2000
        ):
            self._pings.add(self.send("PING"))
        poller = zmq.Poller()
        poller.register(self.dealer, zmq.POLLIN)
        if self.sub is not None:
            poller.register(self.sub, zmq.POLLIN)
        ready = dict(poller.poll(int(wait * 1000)))
        if self.dealer in ready:
            while (frames := self._recv_nowait(self.dealer)) is not None:
                if len(frames) > 1:
                    self.inbox.append(Frames(tuple(frames)))
                    continue
                message = decode(frames[0])
                check_reply(message)
                if message[0] == "PONG" and message[1] in self._pings:
                    self._pings.discard(message[1])
                else:
                    self.inbox.append(message)
        if self.sub is not None and self.sub in ready:
            while (frames := self._recv_nowait(self.sub)) is not None:
                assert len(frames) == 1, frames  # one frame on PUB too (3.1)
                self.feed.extend(Published.each(frames[0]))

    @staticmethod
    def _recv_nowait(socket: zmq.Socket[bytes]) -> list[bytes] | None:
        try:
            return socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None

    def _find(self, queue: deque[Q], match: Callable[[Q], bool], timeout: float) -> Q | None:
        """Take the first queued item that `match`es, pumping the sockets until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for item in queue:
                if match(item):
                    queue.remove(item)
                    return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._pump(min(remaining, 0.05))

    def _take(self, queue: deque[Q], match: Callable[[Q], bool], timeout: float, what: str) -> Q:
        item = self._find(queue, match, timeout)
        if item is None:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; "
                f"DEALER: {list(self.inbox)}, SUB: {list(self.feed)}"
            )
        return item

    def next_any(self, timeout: float = WAIT) -> Message | Frames:
        """The next message on the DEALER, whatever its framing."""
        return self._take(self.inbox, lambda _: True, timeout, "any message on the DEALER")

    def next(self, timeout: float = WAIT) -> Message:
        """The next message on the DEALER, which must be ZCHAT/2's: one frame."""
        message = self.next_any(timeout)
        assert isinstance(message, list), message
        return message

    def next_frames(self, timeout: float = WAIT) -> tuple[bytes, ...]:
        """The next message on the DEALER, which must be of several frames (section 10)."""
        message = self.next_any(timeout)
        assert isinstance(message, Frames), message
        return message.frames

    def delivery(self, command: str, timeout: float = WAIT) -> Message:
        """The first unread DEALER message with this command (MESSAGE, SHUTDOWN, ...)."""
        found = self._take(
            self.inbox,
            lambda m: isinstance(m, list) and m[0] == command,
            timeout,
            f"{command!r} on the DEALER",
        )
        assert isinstance(found, list)
        return found

    def reply(self, msg_id: str, timeout: float = WAIT) -> Message:
        """The reply (WELCOME, ACK, ERROR, USERS, PONG, ...) carrying `msg_id` (section 3.4)."""
        found = self._take(
            self.inbox,
            lambda m: isinstance(m, list) and m[0] in REPLIES and msg_id in answered_ids(m),
            timeout,
            f"the reply to {msg_id!r}",
        )
        assert isinstance(found, list)
        if found[0] == "ACK" and len(found) >= 5 and found[4]:  # keep the others' answers for them
            others = [i for i in answered_ids(found) if i != msg_id]
            if others:
                self.inbox.appendleft(["ACK", others[0], found[2], found[3], others[1:]])
            return ["ACK", msg_id, found[2], found[3]]
        return found

    def request(self, command: str, *fields: Any) -> Message:
        return self.reply(self.send(command, *fields))

    def error_code(self, msg_id: str) -> int:
        """Wait for the reply to `msg_id`, which must be ERROR; return its code (section 5)."""
        message = self.reply(msg_id)
        assert message[0] == "ERROR", message
        code: int = message[2]
        return code

    def next_error(self, msg_id: str = "") -> int:
        """The next DEALER message must be ERROR for `msg_id`, or with an empty id when the
        broker could not read one (section 5); return its code."""
        message = self.next()
        assert message[0] == "ERROR", message
        assert message[1] in (msg_id, ""), message
        code: int = message[2]
        return code

    def ack(self, msg_id: str, status: str = "accepted") -> int:
        """Wait for the ACK to `msg_id` (section 5.2); return its time."""
        message = self.reply(msg_id)
        assert message[0] == "ACK", message
        assert message[3] == status, message
        return assert_time(message[2])

    def who(self) -> list[str]:
        """Section 4.3: the online names, as USERS lists them."""
        message = self.request("WHO")
        assert message[0] == "USERS", message
        names: list[str] = message[2]
        return names

    def published(
        self, match: Callable[[Published], bool], timeout: float = WAIT, what: str = "a published message"
    ) -> Published:
        """The first unread SUB message that `match`es."""
        return self._take(self.feed, match, timeout, what)

    def lobby(self, command: str, *fields: Any, timeout: float = WAIT) -> Published:
        """The first unread lobby message with this command and these leading fields."""
        return self.published(
            lambda m: m.topic == LOBBY and m.command == command and m.fields[: len(fields)] == list(fields),
            timeout,
            f"{command!r} {fields!r} on the lobby",
        )

    def published_until(self, match: Callable[[Published], bool]) -> list[Published]:
        """Everything the SUB received up to and including the first message that `match`es."""
        marker = self.published(match, what="the marker")
        before = list(itertools.takewhile(lambda m: m is not marker, self.feed))
        for message in before:
            self.feed.remove(message)
        return [*before, marker]

    # -- the protocol's steps ------------------------------------------------------------

    def hello(self, name: str, token: str = "") -> Welcome:
        """Section 4.1: register `name` (or resume with `token`)."""
        msg_id = self.send("HELLO", name, token, VERSION)
        welcome = Welcome.parse(self.reply(msg_id))
        assert welcome.id == msg_id
        assert_time(welcome.time)
        self.welcome = welcome
        return welcome

    def announce(self) -> None:
        """Section 4.6: READY makes the JOIN public (a SUB is not needed for that)."""
        self.ack(self.send("READY"))

    def subscribe(self, *topics: bytes) -> None:
        """Section 4.5: connect the SUB, subscribe `topics`, own topic last, then SYNC."""
        assert self.welcome is not None, "subscribe after WELCOME"
        mine = own_topic(self.welcome.name)
        self.sub = self._socket(zmq.SUB)
        self.sub.connect(pub_address(self.welcome.pub_endpoint, self.endpoint))
        for topic in [*topics, mine]:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sync_until(mine)

    def sync_until(self, topic: bytes, *tag: str) -> tuple[Published, list[str]]:
        """Resend SYNC (a new id, with `tag` if given) every 100-500 ms until SYNCED comes on
        `topic` (section 4.5); every SYNC sent is ACKed. The SYNCED, and the ids sent."""
        sync_ids: list[str] = []
        synced: Published | None = None
        deadline = time.monotonic() + WAIT
        while synced is None:
            assert time.monotonic() < deadline, f"no SYNCED on {topic!r}"
            sync_ids.append(self.send("SYNC", *tag))
            synced = self._find(self.feed, lambda m: m.topic == topic and m.command == "SYNCED", 0.2)
        assert synced.seq == 0 and synced.fields[0] in sync_ids, synced  # sections 6.2, 4.5
        for sync_id in sync_ids:
            self.ack(sync_id)
        return synced, sync_ids


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def connect(broker: Broker, zmq_context: Context) -> Callable[[], SpecClient]:
    """A new, unregistered spec client on the broker."""
    return lambda: SpecClient(zmq_context, broker.endpoint)


@pytest.fixture
def online(connect: Callable[[], SpecClient]) -> Callable[..., SpecClient]:
    """A spec client registered under `name` and subscribed to `topics` (lobby by default)."""

    made: list[SpecClient] = []

    def make(name: str, *topics: bytes) -> SpecClient:
        client = connect()
        client.hello(name)
        client.subscribe(*(topics or (LOBBY,)))
        client.announce()
        for earlier in made:  # their heartbeats go on while the next ones are set up (7.1)
            earlier._pump(0)
        made.append(client)
        return client

    return make


def broadcast_marker(sender: SpecClient, text: str = "marker") -> str:
    """Send a broadcast and wait for its ACK: whatever was published earlier arrives before it."""
    body = f"{text}-{secrets.token_hex(4)}"
    sender.ack(sender.send("SEND", "*", body))
    return body


def is_marker(body: str) -> Callable[[Published], bool]:
    return lambda m: m.topic == LOBBY and m.command == "MESSAGE" and m.fields[4:5] == [body]


def records_of(reply: Message, at: int) -> list[list[Any]]:
    """The records of a HISTORY (at 4) or FOUND (at 2) reply (section 13.2)."""
    return [assert_record(r) for r in assert_array(reply[at])]


# -- the codec against the spec's own examples (3.1, 12) ---------------------------------------


def test_the_codec_reads_and_writes_the_example_session_of_section_12() -> None:
    # The client's lines, as the codec writes them, are the arrays of section 12.
    assert msgpack.unpackb(encode(["HELLO", "c1-1", "alice", "", "ZCHAT/2"])) == [
        "HELLO", "c1-1", "alice", "", "ZCHAT/2",
    ]  # fmt: skip
    assert encode(["SEND", "c1-3", "bob", "hi bob"]) == b"\x94\xa4SEND\xa4c1-3\xa3bob\xa6hi bob"
    assert encode(["SYNC", "c1-2"]) == encode(["SYNC", raw_str(b"c1-2")])
    assert encode(["X", uint_as(8, 5)]) == b"\x92\xa1X\xcf" + (5).to_bytes(8, "big")
    # The broker's lines pass the checks the client makes on what it gets.
    token = "9f3c" + "0" * 28  # the example abbreviates the token as "9f3c…"
    welcome = Welcome.parse(
        decode(
            encode(
                ["WELCOME", "c1-1", "alice", token, "tcp://127.0.0.1:5556", 2000, 6000, 65536,
                 1795750606134, 1200, 100]
            )
        )
    )  # fmt: skip
    assert (welcome.heartbeat_ms, welcome.timeout_ms, welcome.max_body) == (2000, 6000, 65536)
    assert (welcome.rate_per_minute, welcome.burst) == (1200, 100)
    for line in (
        ["ACK", "c1-2", 1795750606140, "accepted"],
        ["ERROR", "c1-4", 404, "carol is not online and has never been here", 0],
        ["PONG", "c1-6", 1795750608250],
        ["MESSAGE", "c1-3", "alice", "bob", 1795750606201, "hi bob"],
    ):
        check_reply(decode(encode(line)))
    synced = Published.parse(b"@alice\x00" + encode([0, "SYNCED", "c1-2"]))
    assert (synced.topic, synced.seq, synced.command, synced.fields) == (b"@alice\x00", 0, "SYNCED", ["c1-2"])
    said = Published.parse(LOBBY + encode([8, "MESSAGE", "c1-5", "alice", "*", 1795750606250, "hello all"]))
    assert (said.topic, said.seq, said.command) == (LOBBY, 8, "MESSAGE")
    assert said.fields == ["c1-5", "alice", "*", 1795750606250, "hello all"]
    join = Published.parse(LOBBY + encode([7, "JOIN", "alice", 1795750606141, "*"]))
    leave = Published.parse(LOBBY + encode([9, "LEAVE", "alice", 1795750609000, "quit", "*"]))
    assert (join.fields[-1], leave.fields[2:]) == ("*", ["quit", "*"])
    # A run of joins and leaves in one message (6.4): each change takes the next number.
    run = Published.each(LOBBY + encode([7, "PRESENCE", "*", [["alice", 1795750606141, ""],
                                                             ["bob", 1795750609000, "quit"]]]))  # fmt: skip
    assert [(m.seq, m.command, m.fields) for m in run] == [
        (7, "JOIN", join.fields),
        (8, "LEAVE", ["bob", 1795750609000, "quit", "*"]),
    ]
    with pytest.raises(AssertionError):  # no changes at all
        Published.parse(LOBBY + encode([7, "PRESENCE", "*", []]))
    # What section 3.2 forbids from the broker is caught.
    for bad in (["ACK", "x", 1.5, "accepted"], ["ACK", "x", True, "accepted"], ["USERS", "x", None]):
        with pytest.raises(AssertionError):
            check_reply(decode(encode(bad)))
    with pytest.raises(AssertionError):  # two values in one frame
        decode(encode(["WHO", "x"]) + encode(["WHO", "y"]))


# -- registration (4.1, 5.1, 3.5) ------------------------------------------------------------


def test_hello_is_answered_by_welcome_with_every_field(
    broker: Broker, connect: Callable[[], SpecClient]
) -> None:
    client = connect()
    msg_id = client.send("HELLO", "Alice", "", VERSION)
    reply = client.reply(msg_id)
    welcome = Welcome.parse(reply)

    assert len(reply) == 11, reply  # section 5.1: every field, rate and burst included
    assert welcome.id == msg_id
    assert welcome.name == "Alice"
    assert 0 < len(welcome.token) <= 64
    assert pub_address(welcome.pub_endpoint, broker.endpoint) == broker.pub_endpoint
    assert (welcome.heartbeat_ms, welcome.timeout_ms) == (200, 1000)  # the fixture's 0.2 s / 1.0 s
    assert welcome.max_body == 65536  # section 8 default
    assert_time(welcome.time)
    assert connect().who() == ["Alice"]


def test_names_are_unique_without_regard_to_case(connect: Callable[[], SpecClient]) -> None:
    holder = connect()  # kept open: a closed connection would end its session (section 7.1)
    holder.hello("Alice")
    for other in ("alice", "ALICE", "Alice", "aLiCe"):
        client = connect()
        assert client.error_code(client.send("HELLO", other, "", VERSION)) == 409
    assert connect().who() == ["Alice"]  # the name as registered is what others see


@pytest.mark.parametrize(
    "name",
    ["", "a b", "x" * 33, "bob!", "*", "@bob", "#room", "bo\x00b", "zoë", "tab\t"],
    ids=["empty", "space", "33-chars", "bang", "star", "at", "hash", "nul", "non-ascii", "tab"],
)
def test_invalid_names_are_refused_with_422(connect: Callable[[], SpecClient], name: str) -> None:
    client = connect()
    assert client.error_code(client.send("HELLO", name, "", VERSION)) == 422
    assert client.error_code(client.send("PING")) == 403  # not registered
    assert connect().who() == []


def test_name_not_utf8_is_refused_with_422_never_415(connect: Callable[[], SpecClient]) -> None:
    # A name is ASCII (section 3.2): other bytes break its rules, as str or as bin.
    client = connect()
    assert client.error_code(client.send("HELLO", raw_str(b"\xff"), "", VERSION)) == 422
    assert client.error_code(client.send("HELLO", b"al\xffce", "", VERSION)) == 422
    assert client.error_code(client.send("HELLO", "zoë".encode(), "", VERSION)) == 422
    assert connect().who() == []


def test_names_at_the_edges_of_the_rules_are_accepted(connect: Callable[[], SpecClient]) -> None:
    for name in ("x" * 32, "A", "Az09_-.", "..."):
        assert connect().hello(name).name == name


def test_second_hello_in_another_case_welcomes_with_the_name_as_registered(
    connect: Callable[[], SpecClient],
) -> None:
    alice = connect()
    first = alice.hello("Alice")
    again = alice.hello("ALICE", "some other token")  # section 4.1
    assert (again.name, again.token) == ("Alice", first.token)
    assert connect().who() == ["Alice"]


def test_names_are_listed_by_their_lower_case_form(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    names = ["Zed", "_x", "alice", "9z", "Bob", "-a"]
    clients = [online(name) for name in names]
    expected = ["-a", "9z", "_x", "alice", "Bob", "Zed"]  # section 3.5: `_` before the letters
    assert connect().who() == expected
    for client in clients:
        client.ack(client.send("ENTER", "#dev"))
    message = clients[0].request("NAMES", "#dev")
    assert message[0] == "USERS" and message[2] == expected, message
    lobby = clients[0].request("NAMES", "*")  # for `*` everyone online, as WHO (13.1)
    assert lobby[0] == "USERS" and lobby[2] == expected, lobby


def test_second_hello_same_name_welcomes_again_another_name_410(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    alice = online("alice")
    assert alice.hello("alice").name == "alice"
    assert alice.error_code(alice.send("HELLO", "mallory", "", VERSION)) == 410
    assert connect().who() == ["alice"]
    seen = alice.published_until(is_marker(broadcast_marker(alice)))
    assert [m.fields[0] for m in seen if m.command == "JOIN"] == ["alice"]  # nothing else happens (4.1)


def test_a_token_offered_for_a_free_name_becomes_the_new_session_s(connect: Callable[[], SpecClient]) -> None:
    # Section 4.1: a token of at least 16 bytes for a free name is the new session's token ...
    mine = "T" + secrets.token_hex(10)  # 21 bytes of ASCII
    first = connect()
    assert first.hello("alice", mine).token == mine
    # ... so the same HELLO again, on a new connection, resumes that very session.
    again = connect()
    welcome = again.hello("alice", mine)
    assert (welcome.name, welcome.token) == ("alice", mine)
    assert first.delivery("REPLACED")[0] == "REPLACED"
    # A shorter one is replaced by a new token.
    short = connect()
    assert short.hello("bob", "x" * 15).token != "x" * 15


# -- private messages and forging (4.2, 5.3) -------------------------------------------------


def test_private_message_reaches_its_recipient_only(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    bob = online("bob")
    carol = online("carol", b"", b"@bob\x00", b"@alice\x00", LOBBY)  # subscribed to everything

    msg_id = alice.send("SEND", "bob", "secret ✓")
    ack_time = alice.ack(msg_id)

    message = bob.delivery("MESSAGE")
    assert message[:4] == ["MESSAGE", msg_id, "alice", "bob"], message
    assert message[5] == "secret ✓"
    assert assert_time(message[4]) == ack_time  # section 5.2: the ACK's time is the message's

    # Markers sent after the secret, over the same paths: a private one on carol's DEALER and
    # a broadcast on the PUB. Whatever precedes them is everything carol could have received.
    alice.ack(alice.send("SEND", "carol", "private marker"))
    marker = broadcast_marker(alice)
    first = carol.next()
    assert first[0] == "MESSAGE" and first[5] == "private marker", first
    for client in (carol, bob, alice):
        for published in client.published_until(is_marker(marker)):
            assert b"secret" not in published.frame, published
            assert published.command != "MESSAGE" or published.fields[2] == "*", published


def test_private_target_in_any_case_and_to_oneself(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    bob = online("Bob")

    msg_id = alice.send("SEND", "BOB", "hi")
    alice.ack(msg_id)
    message = bob.delivery("MESSAGE")
    assert message[1:3] == [msg_id, "alice"] and message[5] == "hi", message
    assert message[3] == "Bob", message  # the recipient's name as registered (3.5)

    to_self = alice.send("SEND", "alice", "note to self")
    alice.ack(to_self)
    message = alice.delivery("MESSAGE")
    assert message[1:4] == [to_self, "alice", "alice"] and message[5] == "note to self", message


def test_sender_cannot_be_forged(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    bob = online("bob")

    # SEND has no sender field; items after `body` are ignored (section 3.3).
    forged = alice.send("SEND", "bob", "hello", "mallory", "sender=mallory", 7, ["carol"])
    alice.ack(forged)
    message = bob.delivery("MESSAGE")
    assert message[1:4] == [forged, "alice", "bob"] and message[5] == "hello", message

    # A client cannot send MESSAGE (it is not a client command), nor take another name.
    fake = alice.send("MESSAGE", "mallory", "bob", 0, "fake")
    assert alice.error_code(fake) == 405
    assert alice.error_code(alice.send("HELLO", "mallory", "", VERSION)) == 410
    later = alice.send("SEND", "bob", "later")
    alice.ack(later)
    message = bob.next()  # nothing arrived between the two genuine messages
    assert message[:4] == ["MESSAGE", later, "alice", "bob"], message


def test_every_string_may_come_as_bin(online: Callable[..., SpecClient]) -> None:
    # Section 3.2: a receiver MUST accept bin for a string and treat its bytes alike.
    bob = online("bob")
    alice = SpecClient(bob.context, bob.endpoint)
    msg_id = alice.new_id()
    alice.send_items(b"HELLO", msg_id.encode(), b"alice", b"", VERSION.encode())
    alice.welcome = welcome = Welcome.parse(alice.reply(msg_id))
    assert (welcome.id, welcome.name) == (msg_id, "alice")
    said = alice.new_id()
    alice.send_items(b"SEND", said.encode(), b"bob", "café ✓".encode())
    alice.ack(said)
    message = bob.delivery("MESSAGE")
    assert message[1:4] == [said, "alice", "bob"] and message[5] == "café ✓", message
    shout = alice.new_id()
    alice.send_items(b"SEND", shout.encode(), b"*", b"to all")
    alice.ack(shout)
    shouted = bob.lobby("MESSAGE", shout)
    assert shouted.fields[1:3] == ["alice", "*"] and shouted.fields[4] == "to all", shouted
    assert alice.who() == ["alice", "bob"]


# -- broadcast, SYNC and presence (4.5, 6) ----------------------------------------------------


def test_sync_is_acked_and_synced_on_own_topic(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    client.hello("alice")
    client.subscribe(LOBBY)  # asserts ACK + SYNCED on "@alice\0" with seq 0 and the same id
    msg_id = client.send("SYNC")
    client.ack(msg_id)
    synced = client.published(lambda m: m.topic == b"@alice\x00")
    assert (synced.seq, synced.command, synced.fields[:1]) == (0, "SYNCED", [msg_id])


def test_sync_with_a_tag_is_synced_on_that_tag_s_topic_only(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    client.hello("alice")
    client.subscribe(LOBBY)
    # Section 4.5: the sync topic is "@" name 0x01 tag NUL; subscribe it, then SYNC with the tag.
    assert client.sub is not None
    topic = sync_topic("alice", "round-1")
    client.sub.setsockopt(zmq.SUBSCRIBE, topic)
    synced, tagged = client.sync_until(topic, "round-1")
    assert synced.command == "SYNCED"
    marker = broadcast_marker(client)  # what was published before it has arrived by then
    client.published(is_marker(marker))
    assert not [m for m in client.feed if m.topic == b"@alice\x00" and m.fields[0] in tagged]
    longest = "t" * 64  # 1-64 visible ASCII characters, like an id
    client.sub.setsockopt(zmq.SUBSCRIBE, sync_topic("alice", longest))
    client.sync_until(sync_topic("alice", longest), longest)
    for bad in ("bad tag", "t" * 65, "tab\t", "é", 7):
        assert client.error_code(client.send("SYNC", bad)) == 400, bad


def test_an_empty_sync_tag_syncs_on_the_own_topic(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    client.hello("alice")
    client.subscribe(LOBBY)
    msg_id = client.send("SYNC", "")  # section 4.5: the same as no tag
    client.ack(msg_id)
    synced = client.published(lambda m: m.topic == b"@alice\x00" and m.fields[:1] == [msg_id])
    assert (synced.seq, synced.command) == (0, "SYNCED")


def test_welcome_carries_the_rate_limit_zero_when_there_is_none(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    message = client.reply(client.send("HELLO", "alice", "", VERSION))
    assert message[9:11] == [0, 0], message  # section 5.1: this broker runs without flood control


def test_broadcast_reaches_everyone_on_the_lobby_in_sequence(online: Callable[..., SpecClient]) -> None:
    clients = [online("alice"), online("bob"), online("carol")]
    alice = clients[0]
    sent = [alice.send("SEND", "*", f"hello {n}") for n in range(3)]
    times = [alice.ack(msg_id) for msg_id in sent]
    bob_id = clients[1].send("SEND", "*", "from bob")
    clients[1].ack(bob_id)

    expected = [(msg_id, "alice", f"hello {n}") for n, msg_id in enumerate(sent)]
    expected.append((bob_id, "bob", "from bob"))
    sequences = []
    for client in clients:
        seen = [client.lobby("MESSAGE") for _ in expected]
        assert [(m.fields[0], m.fields[1], m.fields[4]) for m in seen] == expected
        assert all(m.fields[2] == "*" for m in seen)
        assert [assert_time(m.fields[3]) for m in seen[:3]] == times
        first = seen[0].seq
        assert [m.seq for m in seen] == [first, first + 1, first + 2, first + 3]  # section 6.2
        sequences.append(first)
    assert len(set(sequences)) == 1  # one counter per topic, the same for every subscriber


def test_presence_join_leave_and_who(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    assert connect().who() == []  # WHO before HELLO, on an empty broker: USERS with no names
    watcher = online("watcher")

    bob = connect()
    bob.hello("bob")
    bob.announce()
    join = watcher.lobby("JOIN", "bob")
    assert len(join.fields) >= 3 and join.fields[2] == "*", join  # the room, `*` in the lobby (6.3)
    assert_time(join.fields[1])
    alice = connect()
    alice.hello("Alice")
    alice.announce()
    assert watcher.lobby("JOIN", "Alice").seq == join.seq + 1
    assert connect().who() == ["Alice", "bob", "watcher"]  # sorted without regard to case

    bye = bob.send("BYE")
    bob.ack(bye)
    leave = watcher.lobby("LEAVE", "bob")
    assert leave.seq == join.seq + 2 and leave.fields[2:4] == ["quit", "*"], leave
    assert_time(leave.fields[1])
    assert connect().who() == ["Alice", "watcher"]


# -- errors for bad input (3, 8, 9, 10) --------------------------------------------------------


def test_unknown_recipient_404(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    assert alice.error_code(alice.send("SEND", "nobody", "hi")) == 404
    assert alice.error_code(alice.send("SEND", "not a name!", "hi")) == 404  # section 4.2


def test_unknown_command_405(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    assert alice.error_code(alice.send("FROBNICATE", "x")) == 405
    assert alice.error_code(alice.send("send", "*", "lower case")) == 405  # commands are upper case


def test_other_version_in_hello_426_naming_both(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    for version in ("ZCHAT/1", "ZCHAT/3", "ZCHAT/10", "ZCHAT/0", "ZCHAT/999"):  # section 4.1, 10
        msg_id = client.send("HELLO", "alice", "", version)
        reply = client.reply(msg_id)  # with the request's id
        assert reply[0] == "ERROR" and reply[2] == 426, reply
        assert VERSION in reply[3] and version in reply[3], reply  # "naming both versions"
    not_versions: list[object] = ["ZCHAT/1.1", "ZCHAT/2 ", "ZCHAT/", "ZCHAT/1000", "zchat/2", "ZCHAT2", "", 2]
    for not_version in not_versions:
        msg_id = client.send("HELLO", "alice", "", not_version)
        assert client.error_code(msg_id) == 400, not_version  # not a version: a malformed field
    assert client.error_code(client.send("HELLO", "alice", "")) == 400  # no version at all
    assert connect().who() == []
    assert client.hello("alice").name == "alice"  # and ZCHAT/2 itself is welcome


def test_hello_may_name_the_client_kind_which_changes_nothing(connect: Callable[[], SpecClient]) -> None:
    # Section 4.1: an optional last field, a string of at most 32 ASCII bytes; informational
    # only, so any such string is welcome, and the WELCOME is the one a HELLO without it gets.
    plain = connect()
    without = plain.hello("plain")
    kinds = ["terminal", "web", "library", "bot", "", "a-kind-of-its-own", "k" * 32, "Web Browser 2.0"]
    clients = []  # kept open: a connection that closes ends its session (section 7)
    for n, kind in enumerate(kinds):
        client = connect()
        clients.append(client)
        msg_id = client.send("HELLO", f"kind{n}", "", VERSION, kind)
        welcome = Welcome.parse(client.reply(msg_id))
        assert welcome.name == f"kind{n}", kind
        assert (welcome.heartbeat_ms, welcome.timeout_ms, welcome.max_body, welcome.rate_per_minute,
                welcome.burst) == (without.heartbeat_ms, without.timeout_ms, without.max_body,
                                   without.rate_per_minute, without.burst), kind  # fmt: skip
        again = client.send("HELLO", f"kind{n}", "", VERSION, "web")  # repeated: welcomed again
        assert client.reply(again)[0] == "WELCOME", kind
    later = connect()  # items after the last field are ignored (3.3)
    extra = later.send("HELLO", "later", "", VERSION, "web", "more")
    assert Welcome.parse(later.reply(extra)).name == "later"
    assert sorted(plain.who()) == sorted(["plain", "later", *(f"kind{n}" for n in range(len(kinds)))])


def test_a_client_kind_that_breaks_its_rules_is_400(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    for kind in [5, ["web"], None, "k" * 33, "wéb", raw_str(b"\xff")]:  # not a string, too long, not ASCII
        assert client.error_code(client.send("HELLO", "alice", "", VERSION, kind)) == 400, kind
    assert connect().who() == []
    msg_id = client.send("HELLO", "alice", "", VERSION, "terminal")
    assert Welcome.parse(client.reply(msg_id)).name == "alice"


def test_a_zchat1_message_is_answered_426_in_zchat1_framing(connect: Callable[[], SpecClient]) -> None:
    # Section 10: several frames, the first `ZCHAT/` and 1-3 digits: ZCHAT/1's framing back.
    client = connect()
    for signature in (b"ZCHAT/1", b"ZCHAT/3", b"ZCHAT/10", b"ZCHAT/0", b"ZCHAT/02", b"ZCHAT/999"):
        client.send_frames(signature, b"HELLO", b"k-1", b"alice", b"")
        frames = client.next_frames()
        assert frames[:4] == (b"ZCHAT/1", b"ERROR", b"k-1", b"426"), frames
        reason = frames[4].decode("utf-8")
        assert "ZCHAT/2" in reason and signature.decode() in reason, frames  # both versions
    client.send_frames(b"ZCHAT/1", b"WHO", b"has space")  # not a valid id: an empty one
    assert client.next_frames()[:4] == (b"ZCHAT/1", b"ERROR", b"", b"426")
    client.send_frames(b"ZCHAT/1", b"WHO")  # no id at all
    assert client.next_frames()[:4] == (b"ZCHAT/1", b"ERROR", b"", b"426")
    # Several frames of anything else are not ZCHAT/2: 400, in ZCHAT/2's framing (3.1, 8).
    for first in (
        *(b"ZCHAT/1.1", b"ZCHAT/1 ", b" ZCHAT/1", b"ZCHAT/1000", b"zchat/1", b"ZCHAT1", b"ZCHAT/", b"HELLO"),
        b"ZCHAT/2",  # this very version, but not one frame (3.1)
        encode(["WHO", "w-1"]),
    ):
        client.send_frames(first, b"WHO", b"w-2")
        assert client.next_error("w-1") == 400, first  # an empty id (or the array's)
    assert connect().who() == []


def test_a_frame_that_is_not_one_array_or_misses_fields_400(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    client.hello("alice")
    for frame, msg_id in (
        (b"", ""),  # no MessagePack value
        (b"\xc1", ""),  # a byte that is never MessagePack
        (msgpack.packb("WHO"), ""),  # a string, not an array
        (msgpack.packb({"WHO": "w-0"}), ""),  # a map
        (msgpack.packb(7), ""),
        (msgpack.packb([]), ""),  # no command
        (encode(["WHO", "w-1"]) + encode(["WHO", "w-2"]), "w-1"),  # two values in one frame
        (encode(["WHO", "w-3"]) + b"\x00", "w-3"),
        (encode(["WHO", "w-4"])[:-1], "w-4"),  # cut short
    ):
        client.send_frames(frame)
        assert client.next_error(msg_id) == 400, frame  # the request's id, or empty (5)
    assert client.error_code(client.send("SEND", "alice")) == 400  # no body
    assert client.error_code(client.send("SEND")) == 400  # no target, no body
    fresh = connect()
    assert fresh.error_code(fresh.send("HELLO", "bob")) == 400  # no token, no version
    assert fresh.error_code(fresh.send("HELLO")) == 400
    for bad_id in ("", "has space", "x" * 65, "é", b"\xff", 7, ["x"]):  # section 3.2 `id`
        client.send_items("WHO", bad_id)
        assert client.next_error() == 400, bad_id  # with an empty id: it could not be read
    client.send_items("WHO")  # no id at all: ERROR with an empty id (section 5)
    assert client.next_error() == 400
    client.send_items(7, "w-5")  # a first item that is not a string "names no command" (9)
    assert client.next_error("w-5") == 405
    client.send_items(b"WHO", "w-6")  # bin for a string, the command too (3.2)
    assert client.next()[:2] == ["USERS", "w-6"]
    assert connect().who() == ["alice"]


def test_a_field_of_the_wrong_type_or_out_of_range_is_400(online: Callable[..., SpecClient]) -> None:
    # Section 3.2: a field of another MessagePack type than its own is 400, whatever its type
    # (a name that is an integer is not 422, a body that is an integer not 415), with the id.
    alice = online("alice")
    wrong: list[tuple[str, list[Any]]] = [
        ("SEND", [5, "hi"]),  # target
        ("SEND", ["alice", 5]),  # body
        ("SEND", ["alice", ["hi"]]),
        ("SEND", ["alice", None]),  # nil is never used
        ("SEND", ["alice", {"hi": 1}]),  # nor a map
        ("SEND", ["alice", msgpack.ExtType(1, b"hi")]),  # nor an extension type
        ("SEARCH", [5]),
        ("ENTER", [5]),
        ("NAMES", [["#dev"]]),
        ("RECEIVED", [5, ["m1"]]),  # sender
        ("RECEIVED", ["bob", "m1"]),  # a string where an array belongs
        ("HISTORY", ["*", "0", 10]),  # a string where a number belongs
        ("HISTORY", ["*", 0, 10.0]),  # a float is not an integer
        ("HISTORY", ["*", 0, True]),  # nor a boolean
        ("HISTORY", ["*", 0, None]),
        ("HISTORY", ["*", -1, 10]),  # nor a negative value
        ("HISTORY", ["*", 0, int_as(1, -1)]),
        ("HISTORY", ["*", 0, 10, -5]),
    ]
    for command, fields in wrong:
        assert alice.error_code(alice.send(command, *fields)) == 400, (command, fields)
    fresh = SpecClient(alice.context, alice.endpoint)
    for fields in ([5, "", VERSION], ["bob", 5, VERSION], ["bob", "t" * 65, VERSION], ["bob", "é", VERSION]):
        assert fresh.error_code(fresh.send("HELLO", *fields)) == 400, fields  # name, token
    assert fresh.who() == ["alice"]


def test_any_integer_encoding_of_a_non_negative_value_is_an_integer(
    online: Callable[..., SpecClient],
) -> None:
    # Section 3.2: positive fixint, uint 8-64, or int 8-64 with a value that is not negative.
    alice = online("alice")
    alice.ack(alice.send("SEND", "*", "counted"))
    encodings = [uint_as(size, 3) for size in (1, 2, 4, 8)] + [int_as(size, 3) for size in (1, 2, 4, 8)]
    for count in encodings:
        page = alice.request("HISTORY", "*", int_as(8, 0), count)
        assert page[0] == "HISTORY" and [r[5] for r in records_of(page, 4)] == ["counted"], (count, page)


@pytest.mark.parametrize(
    "command",
    [
        "SEND",
        "PING",
        "SYNC",
        "READY",
        "BYE",
        "ENTER",
        "EXIT",
        "ROOMS",
        "NAMES",
        "HISTORY",
        "SEARCH",
        "RECEIVED",
    ],
)
def test_commands_before_hello_403(connect: Callable[[], SpecClient], command: str) -> None:
    fields: dict[str, list[Any]] = {
        "SEND": ["*", "hello"],
        "ENTER": ["#dev"],
        "EXIT": ["#dev"],
        "NAMES": ["*"],
        "HISTORY": ["*", 0, 10],
        "SEARCH": ["hello"],
        "RECEIVED": ["bob", ["m1"]],
    }
    client = connect()
    assert client.error_code(client.send(command, *fields.get(command, []))) == 403


def test_the_form_of_fields_is_checked_before_registration(connect: Callable[[], SpecClient]) -> None:
    # Section 8: framing, command (405), form of the fields (400, 415, 422), then registration.
    client = connect()
    assert client.error_code(client.send("FROBNICATE")) == 405
    assert client.error_code(client.send("SEND", "*")) == 400
    assert client.error_code(client.send("SEND", 5, "x")) == 400
    assert client.error_code(client.send("SEND", "*", b"\xff")) == 415
    assert client.error_code(client.send("RECEIVED", "not a name", ["m1"])) == 422
    assert client.error_code(client.send("SEND", "zoë", "x")) == 404  # a target that is not ASCII
    assert client.error_code(client.send("SEND", "*", "well formed")) == 403


def test_too_large_body_413(tmp_path: Path, zmq_context: Context) -> None:
    small = start_broker(tmp_path, "--max-message-size", "16")
    try:
        alice = SpecClient(zmq_context, small.endpoint)
        assert alice.hello("alice").max_body == 16
        alice.ack(alice.send("SEND", "alice", "x" * 16))
        alice.ack(alice.send("SEND", "*", "é" * 8))  # bytes count, not characters
        assert alice.error_code(alice.send("SEND", "alice", "x" * 17)) == 413
        assert alice.error_code(alice.send("SEND", "*", "é" * 9)) == 413

        # A frame beyond max-body + 4096 is cut off by ZeroMQ: no reply, and the broker lives on.
        huge = SpecClient(zmq_context, small.endpoint)
        huge.send("SEND", "*", "x" * (16 + 4096 + 1024))
        assert SpecClient(zmq_context, small.endpoint).who() == ["alice"]
        assert small.process.poll() is None
    finally:
        assert small.stop() == 0


def test_body_not_utf8_415(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    bob = online("bob")
    assert alice.error_code(alice.send("SEND", "bob", raw_str(b"\xff\xfe bad"))) == 415  # as str
    assert alice.error_code(alice.send("SEND", "*", b"caf\xc3")) == 415  # as bin (3.2)
    assert alice.error_code(alice.send("SEARCH", b"caf\xc3")) == 415  # words are `text` (13.6)
    alice.ack(alice.send("SEND", "bob", "good"))
    assert bob.next()[5] == "good"  # the refused message was not delivered
    marker = broadcast_marker(alice)
    seen = bob.published_until(is_marker(marker))
    assert [m.fields[4] for m in seen if m.command == "MESSAGE"] == [marker]


def test_garbage_never_crashes_the_broker(broker: Broker, connect: Callable[[], SpecClient]) -> None:
    rng = random.Random(20240501)
    garbage: list[list[bytes]] = [
        [b""],
        [b"", b""],
        [b"", b"", b"", b""],
        [b"ZCHAT/1"],
        [b"ZCHAT/1", b""],
        [b"ZCHAT/1", b"", b""],
        [b"ZCHAT/1", b"\xff\xfe"],
        [b"ZCHAT/1", b"HELLO", b"id", b"\xff\xfe", b""],
        [b"ZCHAT/"],
        [b"\x00" * 7],
        [encode(["HELLO", "g-1", b"\xff\xfe", "", VERSION])],
        [encode(["SEND", "g-2", "*", msgpack.Timestamp(0)])],
        [encode(["WHO", None])],
        [encode([["WHO"], "g-3"])],
        [encode(["\x00", "g-4"])],
        [b"\xdd\xff\xff\xff\xff"],  # an array of 2^32 - 1 items, and nothing of them
        [b"\xdb\xff\xff\xff\xff"],  # a string of 4 GiB, and nothing of it
        [b"\x91" * 60_000],  # arrays in arrays, deeper than a recursive reader goes
        *([rng.randbytes(rng.randint(1, 300)) for _ in range(rng.randint(1, 6))] for _ in range(40)),
        *([bytes([0x90 | rng.randint(0, 15)]) + rng.randbytes(rng.randint(0, 300))] for _ in range(40)),
    ]
    for registered in (False, True):
        client = connect()
        if registered:
            client.hello("alice")
        for frames in garbage:
            client.send_frames(*frames)
            reply = client.next_any()  # section 8: answered with ERROR, never a crash
            if isinstance(reply, Frames):  # in ZCHAT/1's framing (section 10)
                assert reply.frames[:2] == (b"ZCHAT/1", b"ERROR") and reply.frames[3] == b"426", (
                    frames,
                    reply,
                )
                reply.frames[4].decode("utf-8")
            else:
                assert reply[0] == "ERROR" and 400 <= reply[2] <= 499, (frames, reply)
        assert client.who() == (["alice"] if registered else [])
    assert broker.process.poll() is None


# -- liveness (4.4, 7) ------------------------------------------------------------------------


def test_ping_is_answered_by_pong(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    msg_id = alice.send("PING")
    pong = alice.reply(msg_id)
    assert pong[:2] == ["PONG", msg_id] and len(pong) >= 3, pong
    assert_time(pong[2])


def test_ping_from_an_unknown_connection_403(connect: Callable[[], SpecClient]) -> None:
    stranger = connect()
    assert stranger.error_code(stranger.send("PING")) == 403


def test_a_client_sending_no_command_stays_online_while_zeromq_answers_heartbeats(
    online: Callable[..., SpecClient],
) -> None:
    # Section 7.1: libzmq answers the broker's ZMTP PINGs by itself; no PING command is needed.
    watcher = online("watcher")
    quiet = online("quiet")
    quiet.heartbeats = False  # it sends nothing from now on, for three times timeout-ms (1 s)
    deadline = time.monotonic() + 3.0
    while (left := deadline - time.monotonic()) > 0:
        leave = watcher._find(watcher.feed, lambda m: m.command == "LEAVE", left)
        assert leave is None, leave
    assert watcher.who() == ["quiet", "watcher"]
    msg_id = quiet.send("PING")
    assert quiet.reply(msg_id)[0] == "PONG"  # still registered


def test_a_closed_connection_leaves_disconnected_and_then_gets_403(online: Callable[..., SpecClient]) -> None:
    watcher = online("watcher")
    gone = online("gone")
    gone.dealer.close(linger=0)
    closed = time.monotonic()
    leave = watcher.lobby("LEAVE", "gone", timeout=WAIT)
    assert leave.fields[2:4] == ["disconnected", "*"], leave
    assert time.monotonic() - closed < 1.0 + 1.0  # at once; timeout-ms (1 s) at most, with slack
    assert watcher.who() == ["watcher"]


CHILD = """
import sys, time, msgpack, zmq
dealer = zmq.Context().socket(zmq.DEALER)
dealer.connect(sys.argv[1])
dealer.send(msgpack.packb(["HELLO", "k-0", sys.argv[2], "", "ZCHAT/2"]))
assert msgpack.unpackb(dealer.recv())[0] == "WELCOME"
dealer.send(msgpack.packb(["READY", "k-r"]))  # makes the JOIN public (section 4.6)
for n in range(1, 10**9):
    dealer.send(msgpack.packb(["PING", "k-%d" % n]))
    time.sleep(0.05)
"""


def test_stopped_client_leaves_disconnected_within_the_timeout_and_frees_its_name(
    broker: Broker, online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    watcher = online("watcher")
    child = subprocess.Popen([sys.executable, "-c", CHILD, broker.endpoint, "zombie"])
    try:
        watcher.lobby("JOIN", "zombie", timeout=30)
        assert child.poll() is None  # it registered and is heartbeating
        child.send_signal(signal.SIGSTOP)  # its connection stays open, but nothing answers on it
        stopped = time.monotonic()
        leave = watcher.lobby("LEAVE", "zombie", timeout=10)
        assert leave.fields[2] == "disconnected", leave
        assert time.monotonic() - stopped < 1.0 + 1.0  # timeout-ms is 1 s; allow 1 s of slack
    finally:
        child.kill()
        child.wait(10)
    again = connect()
    assert again.hello("zombie").name == "zombie"
    again.announce()
    assert watcher.lobby("JOIN", "zombie").fields[0] == "zombie"


# -- shutdown (5.4) and resume (4.1) ----------------------------------------------------------


def test_sigterm_sends_shutdown_and_exits_0(
    broker: Broker, online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    alice = online("alice")
    bob = connect()
    bob.hello("bob")
    broker.process.send_signal(signal.SIGTERM)
    for client in (alice, bob):
        shutdown = client.delivery("SHUTDOWN")
        assert len(shutdown) >= 2 and isinstance(shutdown[1], str), shutdown
    published = alice.lobby("SHUTDOWN")
    assert len(published.fields) >= 1 and isinstance(published.fields[0], str), published
    assert broker.process.wait(10) == 0


def test_resume_takes_over_the_session_silently(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    watcher = online("watcher")
    first = online("alice")
    assert first.welcome is not None
    token = first.welcome.token
    joined = watcher.lobby("JOIN", "alice")

    stranger = connect()  # a wrong token does not take the session
    assert stranger.error_code(stranger.send("HELLO", "alice", "not-the-token", VERSION)) == 409

    second = connect()
    welcome = second.hello("alice", token)
    assert (welcome.name, welcome.token) == ("alice", token)
    second.subscribe(LOBBY)
    second.announce()  # a resumed session was announced already (4.6): no JOIN

    marker = broadcast_marker(watcher)
    seen = watcher.published_until(is_marker(marker))
    after = [(m.command, m.seq) for m in seen if m.topic == LOBBY and m.seq > joined.seq]
    assert after == [("MESSAGE", joined.seq + 1)]  # no LEAVE or JOIN for the takeover
    assert watcher.who() == ["alice", "watcher"]

    # The new connection holds the session; the old one is forgotten.
    msg_id = watcher.send("SEND", "alice", "to the new connection")
    watcher.ack(msg_id)
    assert second.delivery("MESSAGE")[1] == msg_id
    # Section 5.5: the old connection is told, so that it does not take the session back,
    # before any reply that follows the takeover.
    first.heartbeats = False
    ping = first.send("PING")
    replaced = first.next()
    assert replaced[0] == "REPLACED" and len(replaced) >= 2 and isinstance(replaced[1], str), replaced
    assert first.error_code(ping) == 403  # forgotten
    assert first.who() == ["alice", "watcher"]  # WHO is still answered
    assert not [m for m in first.inbox if isinstance(m, list) and m[0] == "MESSAGE"]  # to the new one only
    # A HELLO from it is handled like any other: it takes the session back (5.5).
    assert first.hello("alice", token).token == token
    assert second.delivery("REPLACED")[0] == "REPLACED"


def test_resume_after_the_session_ended_registers_anew(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    watcher = online("watcher")
    first = connect()
    token = first.hello("alice").token
    first.announce()
    first.ack(first.send("BYE"))
    watcher.lobby("LEAVE", "alice")
    again = connect()
    welcome = again.hello("alice", token)
    assert welcome.name == "alice"
    if len(token) >= 16:  # section 4.1: a token of 16 bytes or more for a free name is kept
        assert welcome.token == token
    again.announce()
    watcher.lobby("JOIN", "alice")


# -- rooms, history, search (13) and number ranges (3.2) ------------------------------------


def test_history_numbers_past_their_ranges_are_400(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    alice.ack(alice.send("SEND", "*", "kept"))
    for before, count in [
        (MAX_NUMBER + 1, 10),  # 2^63: past a `number`, though a uint 64 holds it
        (2**64 - 1, 10),
        (0, 501),  # more than a page (13.1)
        (0, 2**64 - 1),
    ]:
        assert alice.error_code(alice.send("HISTORY", "*", before, count)) == 400, (before, count)
    page = alice.request("HISTORY", "*", MAX_NUMBER, 500)
    assert page[0] == "HISTORY" and [r[5] for r in records_of(page, 4)] == ["kept"], page
    nothing = alice.request("HISTORY", "*", 0, 0)  # a count of 0: only the last seq
    assert nothing[0] == "HISTORY" and nothing[4] == [] and nothing[3] > 0, nothing


def test_history_records_come_oldest_first_with_their_published_numbers_and_times(
    online: Callable[..., SpecClient],
) -> None:
    alice = online("alice")
    sent = [alice.send("SEND", "*", f"n{i}") for i in range(3)]
    times = [alice.ack(msg_id) for msg_id in sent]
    published = [alice.lobby("MESSAGE", msg_id) for msg_id in sent]
    page = alice.request("HISTORY", "*", 0, 2)
    assert page[0] == "HISTORY" and page[2] == "*", page
    assert page[3] == published[-1].seq  # last seq: nothing was published since
    got = records_of(page, 4)
    # The newest two, oldest first, each as published; the ACK's time is the message's (5.2).
    assert got == [[published[i].seq, sent[i], "alice", "*", times[i], f"n{i}"] for i in (1, 2)]
    older = alice.request("HISTORY", "*", published[1].seq, 10)
    assert [r[1] for r in records_of(older, 4)] == [sent[0]]  # before that number: only the first
    # 13.1: an optional `after`: only what came after a number, as a client back from an absence asks.
    missed = alice.request("HISTORY", "*", 0, 10, published[0].seq)
    assert [r[1] for r in records_of(missed, 4)] == sent[1:]
    assert missed[3] == published[-1].seq
    nothing = alice.request("HISTORY", "*", 0, 10, published[-1].seq)
    assert records_of(nothing, 4) == []
    assert alice.error_code(alice.send("HISTORY", "*", 0, 10, 2**63)) == 400


def test_a_malformed_room_is_400_and_a_send_target_that_can_be_nobody_404(
    online: Callable[..., SpecClient],
) -> None:
    alice = online("alice")
    for room in ("dev", "#" + "x" * 33, "#d v", "*", "#", "#café", b"#\xff"):
        assert alice.error_code(alice.send("ENTER", room)) == 400, room
    assert alice.error_code(alice.send("EXIT", "#" + "x" * 33)) == 400
    assert alice.error_code(alice.send("EXIT", "*")) == 400  # the lobby (13.1)
    assert alice.error_code(alice.send("NAMES", "#" + "x" * 33)) == 400
    assert alice.error_code(alice.send("HISTORY", "#" + "x" * 33, 0, 10)) == 400
    for target in ("a" * 33, "#" + "a" * 33, "#", "", "zoë", b"\xff", raw_str(b"\xff")):
        assert alice.error_code(alice.send("SEND", target, "hi")) == 404, target


def test_received_with_a_sender_that_is_not_a_name_is_422(online: Callable[..., SpecClient]) -> None:
    bob = online("bob")
    for sender in ("not a name", "x" * 33, b"\xff\xfe", raw_str(b"\xff\xfe")):
        assert bob.error_code(bob.send("RECEIVED", sender, ["m1"])) == 422, sender
    for ids in (["bad id"], [], [f"m{i}" for i in range(501)], [7]):  # 1 to 500 `id`s (13.1)
        assert bob.error_code(bob.send("RECEIVED", "alice", ids)) == 400, len(ids)
    bob.ack(bob.send("RECEIVED", "alice", [f"m{i}" for i in range(500)]))  # receipts nothing


def test_rooms_counts_members_online_or_not(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    alice.ack(alice.send("ENTER", "#Dev"))
    alice.ack(alice.send("BYE"))
    bob = online("bob")
    rooms = bob.request("ROOMS")
    assert rooms[0] == "ROOMS" and rooms[2] == [["#dev", 1]] and rooms[3] == [], rooms
    names = bob.request("NAMES", "#dev")
    assert names[0] == "USERS" and names[2] == [], names  # nobody of it is online


def test_search_matches_word_starts_of_what_the_user_may_see_newest_first(
    online: Callable[..., SpecClient],
) -> None:
    alice = online("alice")
    bob = online("bob")
    alice.ack(alice.send("ENTER", "#secret"))
    said = [
        ("#secret", "the plan is ready"),
        ("*", "the Plan for lunch"),
        ("*", "planning ahead"),
        ("bob", "plan for bob"),
        ("*", "a plan, later"),
    ]
    ids = []
    for target, body in said:
        ids.append(alice.send("SEND", target, body))
        alice.ack(ids[-1])

    def found(client: SpecClient, words: str) -> list[str]:
        """The bodies found, after checking they come newest first (section 13.6)."""
        message = client.request("SEARCH", words)
        assert message[0] == "FOUND", message
        got = records_of(message, 2)
        times = [assert_time(r[4]) for r in got]
        assert times == sorted(times, reverse=True), got
        return [r[5] for r in got]

    # bob is not in #secret; "planning" starts with "plan"; the private one is his.
    assert sorted(found(bob, "PLAN")) == [
        "a plan, later",
        "plan for bob",
        "planning ahead",
        "the Plan for lunch",
    ]
    assert sorted(found(alice, "plan for")) == ["plan for bob", "the Plan for lunch"]  # every word
    assert len(found(alice, "plan")) == 5
    assert found(alice, "plann") == ["planning ahead"]  # the start of a word
    assert found(alice, "lan") == []  # not the middle of one
    assert found(alice, "!!!") == []
    (private,) = records_of(bob.request("SEARCH", "bob"), 2)
    assert (private[0], private[1], private[3]) == (0, ids[3], "bob")  # seq 0, to its recipient


def test_each_id_of_a_combined_ack_has_the_time_of_its_message(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    sent = [alice.send("SEND", "alice", f"p{i}") for i in range(200)]  # pipelined
    acked: dict[str, int] = {}
    delivered: dict[str, int] = {}
    while len(acked) < len(sent) or len(delivered) < len(sent):
        message = alice.next()
        if message[0] == "ACK":
            for msg_id in answered_ids(message):  # section 5.2: same time and status for each
                acked[msg_id] = assert_time(message[2])
            assert message[3] == "accepted", message
        else:
            assert message[0] == "MESSAGE", message
            delivered[message[1]] = assert_time(message[4])
    assert acked == delivered


def test_rooms_enter_send_history_and_exit_on_the_room_s_topic(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    bob = online("bob", LOBBY, b"#dev\x00")
    carol = online("carol")
    room = b"#dev\x00"  # section 13.3: the room's topic, its lower-case form

    def on_room(command: str, *fields: Any) -> Published:
        return bob.published(
            lambda m: m.topic == room and m.command == command and m.fields[: len(fields)] == list(fields),
            what=f"{command} {fields} on #dev",
        )

    bob.ack(bob.send("ENTER", "#dev"))
    joined = on_room("JOIN", "bob")
    assert joined.seq == 1 and joined.fields[2] == "#dev", joined  # a counter of its own (6.2)
    alice.ack(alice.send("ENTER", "#Dev"))  # rooms are compared without regard to case
    assert on_room("JOIN", "alice").seq == 2
    said = alice.send("SEND", "#DEV", "hi room")
    said_at = alice.ack(said)
    message = on_room("MESSAGE", said)
    assert message.seq == 3 and message.fields[1:] == ["alice", "#dev", said_at, "hi room"], message

    assert carol.error_code(carol.send("SEND", "#dev", "let me in")) == 423  # members only (13.1)
    assert carol.error_code(carol.send("HISTORY", "#dev", 0, 10)) == 423
    names = carol.request("NAMES", "#dev")  # NAMES needs no membership
    assert names[0] == "USERS" and names[2] == ["alice", "bob"], names
    page = bob.request("HISTORY", "#dev", 0, 10)
    assert page[0] == "HISTORY" and page[2:4] == ["#dev", 3], page  # last seq: the message's
    assert records_of(page, 4) == [[3, said, "alice", "#dev", said_at, "hi room"]]  # no JOIN in it

    alice.ack(alice.send("ENTER", "#zz"))
    alice.ack(alice.send("ENTER", "#Aa"))
    rooms = carol.request("ROOMS")  # every room with members, sorted; carol is in none
    assert rooms[0] == "ROOMS" and rooms[2:4] == [[["#aa", 1], ["#dev", 2], ["#zz", 1]], []], rooms
    mine = alice.request("ROOMS")
    assert mine[3] == ["#aa", "#dev", "#zz"], mine

    # ENTER of a room one is in, EXIT of one one is not in: ACK, and nothing published.
    alice.ack(alice.send("ENTER", "#dev"))
    carol.ack(carol.send("EXIT", "#dev"))
    marker = alice.send("SEND", "#dev", "room marker")
    alice.ack(marker)
    until = on_room("MESSAGE", marker)
    assert until.seq == 4, until
    alice.ack(alice.send("EXIT", "#dev"))
    left = on_room("LEAVE", "alice")
    assert left.seq == 5 and left.fields[2:4] == ["left", "#dev"], left
    assert not [m for m in bob.feed if m.topic == room], list(bob.feed)
    assert alice.error_code(alice.send("SEND", "#dev", "gone")) == 423


def test_offline_mail_is_stored_delivered_once_and_receipted(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    alice = online("alice")
    bob = connect()
    bob.hello("bob")  # bob has been here, and goes
    bob.ack(bob.send("BYE"))

    # Section 13.4: a private message to a user who is offline is kept: ACK `stored`.
    kept = alice.send("SEND", "bob", "while you were away")
    kept_at = alice.ack(kept, "stored")
    alice.ack(alice.send("SEND", "bob", "while you were away"), "stored")  # a new id: a second one
    alice.send_items("SEND", kept, "bob", "while you were away")  # the same id again: a duplicate
    alice.ack(kept, "stored")  # answered with the status of the first, not kept again

    back = connect()
    welcome = back.hello("bob")
    assert welcome.name == "bob"
    mail = back.next()  # right after WELCOME, in order, with the original id, sender and time
    assert mail == ["MESSAGE", kept, "alice", "bob", kept_at, "while you were away"], mail
    second = back.next()
    assert second[:3] == ["MESSAGE", second[1], "alice"] and second[1] != kept, second
    marker = alice.send("SEND", "bob", "live marker")
    alice.ack(marker)
    assert back.next()[:2] == ["MESSAGE", marker]  # nothing else came from the mailbox

    back.ack(back.send("RECEIVED", "alice", [kept, second[1], marker, "never-sent"]))
    receipted: list[str] = []  # in one RECEIPT or several (section 13.2)
    while len(receipted) < 3:
        receipt = alice.delivery("RECEIPT")
        assert receipt[1] == "bob", receipt
        assert_time(receipt[2])
        receipted += receipt[3]
    assert sorted(receipted) == sorted([kept, second[1], marker])  # "never-sent" is ignored

    back.ack(back.send("BYE"))
    again = connect()
    again.hello("bob")  # the confirmed mail is forgotten: not sent again
    last = alice.send("SEND", "bob", "after")
    alice.ack(last)
    assert again.next()[:2] == ["MESSAGE", last]


def test_a_repeated_id_is_answered_as_the_first_and_not_delivered_again(
    online: Callable[..., SpecClient],
) -> None:
    alice = online("alice")
    bob = online("bob")
    # Section 13.4: the broker remembers every accepted (sender, id); a SEND repeating one is
    # answered with the status of the first and not delivered again (a resend after a reconnect).
    shout = alice.send("SEND", "*", "once to all")
    first_at = alice.ack(shout)
    alice.send_items("SEND", shout, "*", "once to all")
    assert alice.ack(shout) >= first_at  # the time the repeat was answered (5.2)
    private = alice.send("SEND", "bob", "once to bob")
    alice.ack(private)
    alice.send_items("SEND", private, "bob", "once to bob")
    alice.ack(private)
    marker = alice.send("SEND", "bob", "private marker")
    alice.ack(marker)
    assert [bob.next()[1] for _ in range(2)] == [private, marker]  # one copy, then the marker
    said = broadcast_marker(alice)
    seen = bob.published_until(is_marker(said))
    assert [m.fields[0] for m in seen if m.command == "MESSAGE"] == [shout, seen[-1].fields[0]]


def test_welcome_tells_the_rate_a_minute_rounded_down_but_never_below_1(
    tmp_path: Path, zmq_context: Context
) -> None:
    # Section 5.1; the broker's --rate is a second's, its WELCOME a minute's.
    for rate, burst, per_minute in (("2", "3", 120), ("0.5", "7", 30), ("0.01", "1", 1), ("0.0251", "2", 1)):
        limited = start_broker(tmp_path, "--rate", rate, "--burst", burst)
        try:
            welcome = SpecClient(zmq_context, limited.endpoint).hello("alice")
            assert (welcome.rate_per_minute, welcome.burst) == (per_minute, int(burst)), rate
        finally:
            assert limited.stop() == 0


def test_flood_control_refuses_with_429_and_a_retry_after_then_drops_the_flooder(
    tmp_path: Path, zmq_context: Context
) -> None:
    limited = start_broker(tmp_path, "--rate", "2", "--burst", "3", "--cool-off", "5")
    try:
        watcher = SpecClient(zmq_context, limited.endpoint)
        watcher.hello("watcher")
        watcher.subscribe(LOBBY)
        watcher.announce()
        flooder = SpecClient(zmq_context, limited.endpoint)
        assert flooder.hello("flood").rate_per_minute == 120
        flooder.announce()  # READY, like HELLO, WHO, PING, SYNC and BYE, is not counted (8)
        # A new session starts with one second's worth: 2 of ROOMS, then 429 with a retry-after.
        asked = [flooder.send("ROOMS") for _ in range(4)]
        answers = [flooder.reply(msg_id) for msg_id in asked]
        assert [a[0] for a in answers[:2]] == ["ROOMS", "ROOMS"], answers
        refused = [a for a in answers if a[0] == "ERROR"]
        assert refused and all(a[2] == 429 and 0 < a[4] <= MAX_INT32 for a in refused), answers
        assert flooder.request("PING")[0] == "PONG"  # upkeep is never refused
        assert flooder.request("WHO")[0] == "USERS"
        # Sending on into the refusals: dropped, LEAVE with reason `flooding`.
        flooder.heartbeats = False
        for _ in range(40):
            flooder.send("ROOMS")
        leave = watcher.lobby("LEAVE", "flood")
        assert leave.fields[2:4] == ["flooding", "*"], leave
        # One last 429 whose retry-after is the cool-off, usually before the connection closes
        # (best effort, section 8: so it is looked for, not required).
        flooder._find(flooder.inbox, lambda m: isinstance(m, list) and m[0] == "ERROR" and m[4] == 5000, WAIT)
        for message in list(flooder.inbox):  # whatever else it was answered: 429s
            assert isinstance(message, list) and message[0] in ("ROOMS", "ERROR", "PONG", "USERS"), message
            assert message[0] != "ERROR" or (message[2] == 429 and 0 < message[4] <= 5000), message
        # Loopback is never turned away (--ban-exempt): new sockets may register at once (7.3).
        again = SpecClient(zmq_context, limited.endpoint)
        assert again.hello("flood").name == "flood"
        assert watcher.who() == ["flood", "watcher"]
    finally:
        assert limited.stop() == 0


def test_ready_announces_once_and_a_session_never_ready_comes_and_goes_unannounced(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    watcher = online("watcher")
    bob = connect()
    bob.hello("bob")
    bob.announce()
    bob.announce()  # only the first READY of a session publishes JOIN (4.6)
    carol = connect()
    carol.hello("carol")  # online, but never READY
    assert watcher.who() == ["bob", "carol", "watcher"]
    message = carol.send("SEND", "watcher", "unannounced, but here")
    carol.ack(message)
    assert watcher.delivery("MESSAGE")[1:3] == [message, "carol"]
    carol.ack(carol.send("BYE"))  # LEAVE only for a session whose JOIN was published (6.3)
    assert carol.error_code(carol.send("PING")) == 403  # BYE forgot the session (4.7)
    seen = watcher.published_until(is_marker(broadcast_marker(watcher)))
    assert [(m.command, m.fields[0]) for m in seen if m.command in ("JOIN", "LEAVE")] == [
        ("JOIN", "watcher"),
        ("JOIN", "bob"),
    ], seen


def test_replies_keep_the_order_of_the_commands(online: Callable[..., SpecClient]) -> None:
    # Section 5.2: an ACK is never held back behind a later reply, combined or not.
    alice = online("alice")
    commands: list[tuple[Any, ...]] = [
        ("SEND", "alice", "a"),
        ("WHO",),
        ("SEND", "alice", "b"),
        ("SEND", "*", "c"),
        ("PING",),
        ("SEND", "alice", "d"),
        ("ROOMS",),
        ("SEND", "nobody", "e"),
        ("SEND", "alice", "f"),
        ("SEND", "alice", "g"),
        ("HISTORY", "*", 0, 1),
        ("ENTER", "#dev"),
    ]
    sent = [alice.send(*command) for command in commands]
    answered: list[str] = []
    while len(answered) < len(sent):
        message = alice.next()
        if message[0] in REPLIES:
            answered += answered_ids(message)
    assert answered == sent


def test_items_after_the_last_field_are_ignored(connect: Callable[[], SpecClient]) -> None:
    # Section 3.3: later revisions append optional fields; a receiver ignores what it does not know.
    alice = connect()
    hello = alice.send("HELLO", "alice", "", VERSION, "extra", [1, 2])
    alice.welcome = Welcome.parse(alice.reply(hello))
    assert alice.request("WHO", "extra", 5)[0] == "USERS"
    assert alice.request("PING", ["x"])[0] == "PONG"
    alice.ack(alice.send("SYNC", "", "extra"))
    alice.ack(alice.send("READY", 1))
    alice.ack(alice.send("ENTER", "#dev", "#other"))
    assert alice.request("NAMES", "#dev", "x")[2] == ["alice"]
    assert alice.request("HISTORY", "*", 0, 10, 0, "extra")[0] == "HISTORY"
    assert alice.request("ROOMS", 0)[3] == ["#dev"]
    assert alice.request("SEARCH", "anything", 7)[0] == "FOUND"
    alice.ack(alice.send("RECEIVED", "bob", ["m1"], "extra"))
    alice.ack(alice.send("EXIT", "#dev", "x"))
    alice.ack(alice.send("BYE", "x"))


def test_a_full_mailbox_is_507(online: Callable[..., SpecClient], connect: Callable[[], SpecClient]) -> None:
    # Section 13.4: at most 1,000 messages and 1 MiB of bodies by default.
    alice = online("alice")
    for name in ("bob", "carol"):
        away = connect()
        away.hello(name)
        away.ack(away.send("BYE"))
    many = [alice.send("SEND", "bob", f"m{i}") for i in range(1000)]
    for msg_id in many:
        alice.ack(msg_id, "stored")
    assert alice.error_code(alice.send("SEND", "bob", "one too many")) == 507
    big = "x" * 65536
    for _ in range(16):  # 16 x 64 KiB: 1 MiB exactly
        alice.ack(alice.send("SEND", "carol", big), "stored")
    assert alice.error_code(alice.send("SEND", "carol", "x")) == 507
    alice.ack(alice.send("SEND", "alice", "others are not full"))


def test_a_receipt_waits_for_its_sender_to_come_back(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    alice = connect()
    alice.hello("alice")
    bob = online("bob")
    said = alice.send("SEND", "bob", "confirm me")
    alice.ack(said)
    assert bob.delivery("MESSAGE")[1] == said
    alice.ack(alice.send("BYE"))
    bob.ack(bob.send("RECEIVED", "alice", [said]))  # alice is away: the receipt is kept (13.4)
    back = connect()
    back.hello("alice")
    receipt = back.delivery("RECEIPT")
    assert receipt[1] == "bob" and receipt[3] == [said], receipt
    assert_time(receipt[2])
    bob.ack(bob.send("RECEIVED", "alice", [said]))  # confirmed before: receipted no more
    marker = bob.send("SEND", "alice", "marker")
    bob.ack(marker)
    assert back.next()[:2] == ["MESSAGE", marker]


def test_a_takeover_sends_unconfirmed_mail_again_a_second_hello_does_not(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    alice = online("alice")
    away = connect()
    away.hello("bob")
    away.ack(away.send("BYE"))
    kept = alice.send("SEND", "bob", "kept for bob")
    alice.ack(kept, "stored")
    first = connect()
    token = first.hello("bob").token
    assert first.next()[:2] == ["MESSAGE", kept]  # not confirmed: sent at every registration
    first.hello("bob")  # a second HELLO on the connection: the mailbox is not sent again (4.1)
    hint = alice.send("SEND", "bob", "after the second HELLO")
    alice.ack(hint)
    assert first.next()[:2] == ["MESSAGE", hint]
    second = connect()
    second.hello("bob", token)  # a takeover (4.1): what is unconfirmed is sent again, in order
    assert [second.next()[:2] for _ in range(2)] == [["MESSAGE", kept], ["MESSAGE", hint]]
    marker = alice.send("SEND", "bob", "marker")
    alice.ack(marker)
    assert second.next()[:2] == ["MESSAGE", marker]
    second.ack(second.send("BYE"))
    third = connect()
    third.hello("bob")
    assert [third.next()[:2] for _ in range(3)] == [["MESSAGE", i] for i in (kept, hint, marker)]


def test_a_live_private_message_is_sent_again_at_each_registration_until_confirmed(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    # Section 13.4: a private message to a user online stays in its mailbox until RECEIVED.
    alice = online("alice")
    bob = connect()
    bob.hello("bob")
    said = alice.send("SEND", "bob", "are you there?")
    said_at = alice.ack(said)  # kept (4.2, 5.2)
    live = bob.delivery("MESSAGE")
    assert live == ["MESSAGE", said, "alice", "bob", said_at, "are you there?"], live
    bob.ack(bob.send("BYE"))  # bob leaves without confirming it
    back = connect()
    back.hello("bob")
    assert back.next() == live  # right after WELCOME: its original id, sender and time
    back.ack(back.send("RECEIVED", "alice", [said]))
    receipt = alice.delivery("RECEIPT")
    assert receipt[1] == "bob" and receipt[3] == [said], receipt
    back.ack(back.send("BYE"))
    again = connect()
    again.hello("bob")  # confirmed: not sent again
    marker = alice.send("SEND", "bob", "marker")
    alice.ack(marker)
    assert again.next()[:2] == ["MESSAGE", marker]


def test_a_live_recipient_that_confirms_nothing_is_refused_507_once_its_mailbox_is_full(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    # Section 13.4: live messages not yet confirmed count against the mailbox's 1,000.
    alice = online("alice")
    bob = connect()
    bob.hello("bob")
    many = [alice.send("SEND", "bob", f"m{i}") for i in range(1000)]
    for msg_id in many:
        alice.ack(msg_id)
    refused = alice.send("SEND", "bob", "one too many")
    assert alice.error_code(refused) == 507
    got = [bob.delivery("MESSAGE")[1] for _ in many]
    assert got == many  # each once; the refused one never handed over
    bob.ack(bob.send("RECEIVED", "alice", many[:500]))
    alice.ack(alice.send("SEND", "bob", "room again"))


def test_search_words_follow_the_rules_of_section_13_6(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    alice.ack(alice.send("ENTER", "#left"))
    bodies = [
        "un café noir",
        "a cafe au lait",
        "snake_case names",
        "I don't know",
        "don t panic",
        "t don order",
        "this AND that",
        "the answer is 42",
        "planning the plan",
        "deploy done",
        "done tomorrow",
    ]
    for body in bodies:
        alice.ack(alice.send("SEND", "*", body))
    alice.ack(alice.send("SEND", "#left", "said in a room left later"))

    def found(words: str) -> list[str]:
        reply = alice.request("SEARCH", words)
        assert reply[0] == "FOUND", reply
        return sorted(r[5] for r in records_of(reply, 2))

    assert found("café") == ["un café noir"]  # with regard to accents
    assert found("Café") == ["un café noir"]  # without regard to case
    assert found("cafe") == ["a cafe au lait"]
    assert found("snake") == found("case") == ["snake_case names"]  # `_` separates
    assert found("don't") == ["I don't know", "don t panic"]  # its parts in a row, whole but the last
    assert found("depl") == ["deploy done"]  # a word matches the start of a word
    assert found("do tomorrow") == ["done tomorrow"]
    assert found("cafe") == ["a cafe au lait"]  # the start, with regard to accents
    assert found("and") == ["this AND that"]  # AND is a word like any other
    assert found("this OR that") == []  # every word must match; OR is a word
    assert found("42") == ["the answer is 42"]
    assert found("plann*") == found('"plann"') == found("-plann") == ["planning the plan"]
    assert found("plann !!!") == ["planning the plan"]  # a word of no letter or digit is ignored
    assert found("room") == ["said in a room left later"]
    alice.ack(alice.send("EXIT", "#left"))
    assert found("room") == []  # none of a room it has left


def test_found_comes_newest_first_also_within_a_millisecond(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    sent = [alice.send("SEND", "*", f"needle {i}") for i in range(60)]  # pipelined: many a millisecond
    for msg_id in sent:
        alice.ack(msg_id)
    reply = alice.request("SEARCH", "needle")
    got = records_of(reply, 2)
    assert len(got) == 50  # at most 50 (13.6)
    assert [r[1] for r in got] == sent[::-1][:50]  # newest first, in the order accepted
    assert [r[0] for r in got] == sorted((r[0] for r in got), reverse=True)


def test_enter_beyond_the_rooms_one_may_be_in_is_509(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    entered = [alice.send("ENTER", f"#r{i}") for i in range(250)]  # 250 by default (9)
    for msg_id in entered:
        alice.ack(msg_id)
    assert alice.error_code(alice.send("ENTER", "#one-too-many")) == 509
    alice.ack(alice.send("ENTER", "#r0"))  # one it is in: ACK, as before
    rooms = alice.request("ROOMS")
    assert len(rooms[3]) == 250 and rooms[3] == sorted(rooms[3]), rooms


def handshake_failures(
    context: Context, endpoint: str, curve: Curve | None, enough: Callable[[list[int]], bool]
) -> list[int]:
    """Connect a DEALER, send a WHO, and return the handshake failures a socket monitor
    reports, until `enough` of them (section 14). None may succeed, and the WHO is unanswered."""
    dealer = SpecClient(context, "inproc://unused", curve=curve)._socket(zmq.DEALER)
    events = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    monitor = dealer.get_monitor_socket(events | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    failures: list[int] = []
    try:
        dealer.connect(endpoint)
        dealer.send(encode(["WHO", "stranger-1"]))
        deadline = time.monotonic() + WAIT
        while not enough(failures):
            assert monitor.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), failures
            event: int = zmq.utils.monitor.recv_monitor_message(monitor)["event"]
            assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED, failures
            failures.append(event)
        assert dealer.poll(0) == 0
        return failures
    finally:
        dealer.disable_monitor()
        monitor.close()
        dealer.close()


def test_curve_binds_names_to_keys(tmp_path: Path, zmq_context: Context) -> None:
    # Section 14: both sockets are CURVE servers; a name belongs to the first key that uses it.
    # The broker's key pair is a ZeroMQ certificate, made here with pyzmq's zmq.auth.
    (tmp_path / "keys").mkdir()
    public_file, secret_file = zmq.auth.create_certificates(tmp_path / "keys", "broker")
    Path(secret_file).chmod(0o600)  # the broker refuses a secret others may read
    server_public, _ = zmq.auth.load_certificate(public_file)
    secure = start_broker(tmp_path, "--curve-secret", secret_file)
    try:
        alice_key = Curve.new(server_public)
        alice = SpecClient(zmq_context, secure.endpoint, curve=alice_key)
        token = alice.hello("alice").token
        alice.subscribe(LOBBY)  # the SUB is a CURVE client too
        alice.announce()
        alice.lobby("JOIN", "alice")

        mallory = SpecClient(zmq_context, secure.endpoint, curve=Curve.new(server_public))
        assert mallory.error_code(mallory.send("HELLO", "alice", token, VERSION)) == 401  # token or not
        assert mallory.error_code(mallory.send("HELLO", "ALICE", "", VERSION)) == 401
        assert mallory.hello("mallory").name == "mallory"

        # The owning key takes the session over without a token (4.1), and the old one is told.
        again = SpecClient(zmq_context, secure.endpoint, curve=alice_key)
        assert again.hello("alice").token == token
        assert alice.delivery("REPLACED")[0] == "REPLACED"
        assert again.who() == ["alice", "mallory"]

        # A plain client gets no answer at all: its handshake fails with a protocol error, or,
        # when libzmq did not read the broker's greeting in time, with no detail and is tried
        # again (on a loaded machine, every time until the deadline). The spec's client waits
        # for the protocol error or a few failures with no detail; so does this one.
        protocol, no_detail = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL

        def told(failures: list[int]) -> bool:
            return protocol in failures or failures.count(no_detail) >= 3

        plain = handshake_failures(zmq_context, secure.endpoint, None, told)
        assert set(plain) <= {protocol, no_detail} and protocol not in plain[:-1], plain
        # With a wrong server key: failures with no detail.
        wrong = Curve.new(zmq.curve_keypair()[0])
        assert handshake_failures(zmq_context, secure.endpoint, wrong, bool) == [no_detail]
    finally:
        assert secure.stop() == 0


def test_an_advertised_pub_endpoint_with_host_star_means_the_router_s_host(
    tmp_path: Path, zmq_context: Context
) -> None:
    # Section 5.1: `*` as host: connect the SUB to the host used for the ROUTER, with that port.
    with socket.socket() as probe:  # a free port on loopback, for the PUB to bind
        probe.bind(("127.0.0.1", 0))
        pub_port = probe.getsockname()[1]
    advertised = start_broker(tmp_path, "--advertise-pub", f"tcp://*:{pub_port}", pub_port=pub_port)
    try:
        alice = SpecClient(zmq_context, advertised.endpoint)
        assert alice.hello("alice").pub_endpoint == f"tcp://*:{pub_port}"
        alice.subscribe(LOBBY)  # SYNCED arrives: the SUB found the PUB
        alice.announce()
        assert alice.lobby("JOIN", "alice").fields[2] == "*"
    finally:
        assert advertised.stop() == 0


def test_a_store_keeps_numbers_rooms_history_and_mail_across_a_restart(
    tmp_path: Path, zmq_context: Context
) -> None:
    store = str(tmp_path / "zchat.db")
    before = start_broker(tmp_path, "--store", store)
    try:
        alice = SpecClient(zmq_context, before.endpoint)
        alice.hello("alice")
        alice.subscribe(LOBBY, b"#dev\x00")
        alice.announce()
        alice.ack(alice.send("ENTER", "#dev"))
        in_room = alice.send("SEND", "#dev", "said before")
        alice.ack(in_room)
        in_lobby = alice.send("SEND", "*", "lobby before")
        alice.ack(in_lobby)
        room_seq = alice.published(lambda m: m.topic == b"#dev\x00" and m.fields[:1] == [in_room]).seq
        lobby_seq = alice.lobby("MESSAGE", in_lobby).seq
        bob = SpecClient(zmq_context, before.endpoint)
        bob.hello("bob")
        bob.ack(bob.send("BYE"))
        mail = alice.send("SEND", "bob", "kept across")
        alice.ack(mail, "stored")
    finally:
        assert before.stop() == 0

    after = start_broker(tmp_path, "--store", store)
    try:
        alice = SpecClient(zmq_context, after.endpoint)
        alice.hello("alice")
        rooms = alice.request("ROOMS")
        assert rooms[3] == ["#dev"], rooms  # membership belongs to the name (13.1)
        alice.subscribe(LOBBY, b"#dev\x00")
        alice.announce()
        page = alice.request("HISTORY", "#dev", 0, 10)
        assert [r[1] for r in records_of(page, 4)] == [in_room] and page[3] >= room_seq, page
        lobby = alice.request("HISTORY", "*", 0, 10)
        assert in_lobby in [r[1] for r in records_of(lobby, 4)], lobby
        # 6.2: with a store, no number is used again: the next ones are above every one before.
        said = alice.send("SEND", "#dev", "said after")
        alice.ack(said)
        assert alice.published(lambda m: m.topic == b"#dev\x00" and m.fields[:1] == [said]).seq > page[3]
        shout = alice.send("SEND", "*", "lobby after")
        alice.ack(shout)
        assert alice.lobby("MESSAGE", shout).seq > max(lobby_seq, lobby[3])
        bob = SpecClient(zmq_context, after.endpoint)
        bob.hello("bob")
        assert bob.next()[:3] == ["MESSAGE", mail, "alice"]  # the mailbox too (13.4)
    finally:
        assert after.stop() == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_fenced_broker_of_a_cluster_sends_shutdown_answers_504_and_the_session_goes_on_elsewhere(
    tmp_path: Path, zmq_context: Context
) -> None:
    """Section 7.3: a broker stopped past its lease forgets its sessions, sends SHUTDOWN,
    answers 504 until it is back (then 403: the session is forgotten); the client resumes
    on another broker with its last token and sends the refused command again, same id."""
    from tests.cluster_support import cluster
    from tests.support import wait_for

    with cluster(tmp_path, 2) as (_, (first, second)):
        ann = SpecClient(zmq_context, first.endpoint, "ann")
        token = ann.hello("Ann").token
        bob = SpecClient(zmq_context, second.endpoint, "bob")
        bob.hello("Bob")
        wait_for(lambda: "Ann" in bob.who(), WAIT, interval=0.05, what="Ann listed on the other broker")
        first.process.send_signal(signal.SIGSTOP)
        try:  # until the other broker forgets Ann: the stopped one's lease ran out
            wait_for(lambda: "Ann" not in bob.who(), 20, interval=0.1, what="Ann forgotten elsewhere")
        finally:
            first.process.send_signal(signal.SIGCONT)
        assert_text(ann.delivery("SHUTDOWN", timeout=WAIT)[1])
        msg_id = ann.send("SEND", "Bob", "refused, then sent again")
        assert ann.error_code(msg_id) in (504, 403)
        ann.dealer.close()
        again = SpecClient(zmq_context, second.endpoint, "ann")
        assert again.hello("Ann", token).name == "Ann"
        again.send_items("SEND", msg_id, "Bob", "refused, then sent again")
        again.ack(msg_id)
        message = bob.delivery("MESSAGE")
        assert message[1:3] == [msg_id, "Ann"] and message[5] == "refused, then sent again"
        marker = again.send("SEND", "Bob", "marker")
        again.ack(marker)
        assert bob.delivery("MESSAGE")[1] == marker  # the message came once
        for client in (again, bob):
            client.dealer.close()


# -- away and room subjects (13.7) -----------------------------------------------------------


def test_away_shows_in_who_and_is_told_before_the_ack_of_a_private_message(
    online: Callable[..., SpecClient],
) -> None:
    alice = online("alice")
    bob = online("bob")
    bob.ack(bob.send("AWAY", "lunch"))
    users = alice.request("WHO")
    assert users[2] == ["alice", "bob"] and users[3] == [["bob", "lunch"]], users
    said = alice.send("SEND", "bob", "are you there?")
    assert alice.reply(said) == ["AWAY", said, "bob", "lunch"]  # before the SEND's ACK
    alice.ack(said)
    assert bob.delivery("MESSAGE")[1:3] == [said, "alice"]
    bob.ack(bob.send("AWAY", ""))  # back
    users = alice.request("WHO")
    assert users[2] == ["alice", "bob"] and users[3:] in ([], [[]]), users
    again = alice.send("SEND", "bob", "welcome back")
    alice.ack(again)  # no AWAY first: the first reply with its id is the ACK
    assert bob.error_code(bob.send("AWAY", "x" * 161)) == 413  # at most 160 bytes, not cut


def test_a_room_subject_is_set_by_members_published_shown_on_enter_and_asked_by_anyone(
    online: Callable[..., SpecClient],
) -> None:
    room = b"#dev\x00"
    alice = online("alice", LOBBY, room)
    bob = online("bob")
    alice.ack(alice.send("ENTER", "#dev"))
    asked = bob.send("SUBJECT", "#dev")
    none = bob.reply(asked)
    assert none[0] == "SUBJECT" and none[2].lower() == "#dev" and none[3:6] == ["", "", 0], none
    assert bob.error_code(bob.send("SETSUBJECT", "#dev", "mine now")) == 423  # members only
    alice.ack(alice.send("SETSUBJECT", "#Dev", "release on friday"))
    changed = alice.published(lambda m: m.topic == room and m.command == "SUBJECT", what="SUBJECT on #dev")
    assert changed.fields[1:3] == ["release on friday", "alice"], changed
    joined = alice.published(
        lambda m: m.topic == room and m.command == "JOIN", what="alice's JOIN", timeout=0
    )
    assert changed.seq == joined.seq + 1, (joined, changed)  # numbered as any event of the room (6.2)
    entered = bob.send("ENTER", "#dev")
    bob.ack(entered)
    shown = bob.reply(entered)  # right after the ENTER's ACK, with its id
    assert shown[0] == "SUBJECT" and shown[3:5] == ["release on friday", "alice"], shown
    assert shown[5] == changed.fields[3], (shown, changed)
    page = alice.request("HISTORY", "#dev", 0, 10)
    assert records_of(page, 4) == [], page  # a SUBJECT is not a record
    assert bob.error_code(bob.send("SETSUBJECT", "*", "lobby")) == 400  # the lobby has none
    assert bob.error_code(bob.send("SUBJECT", "dev")) == 400  # a malformed room
    assert bob.error_code(bob.send("SETSUBJECT", "#dev", "x" * 301)) == 413
    bob.ack(bob.send("SETSUBJECT", "#dev", ""))  # cleared
    assert bob.request("SUBJECT", "#dev")[3:6] == ["", "", 0]
