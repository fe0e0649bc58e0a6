"""An independent ZCHAT/1 client, written from docs/PROTOCOL.md alone, against the real broker.

Nothing here imports or reads the broker's code: `SpecClient` speaks the wire format with
plain pyzmq DEALER and SUB sockets, the way an implementer in another language would.
Section numbers in comments refer to docs/PROTOCOL.md.

No test sleeps to synchronise: every wait polls the sockets against a deadline, and a
negative ("X never arrives") is proven with a marker sent after X over the same path:
ZeroMQ keeps order per connection, so whatever arrives before the marker is all there was.
"""

from __future__ import annotations

import itertools
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import zmq

from tests.support import Broker, start_broker

Frames = list[bytes]
Q = TypeVar("Q", Frames, "Published")
Context = zmq.Context[zmq.Socket[bytes]]

SIGNATURE = b"ZCHAT/1"
LOBBY = b"*\x00"  # section 6.1
REPLIES = {b"WELCOME", b"ACK", b"ERROR", b"USERS", b"PONG", b"ROOMS", b"HISTORY", b"FOUND"}  # the id (3.4)
MAX_NUMBER = 2**63 - 1  # the largest `number` (3.2)
WAIT = 5.0  # seconds: the deadline for anything the broker should do "now"


def own_topic(name: bytes) -> bytes:
    """The client's own topic, `@` + name + NUL (section 6.1)."""
    return b"@" + name + b"\x00"


def assert_number(frame: bytes) -> int:
    """A `number`: ASCII decimal digits, no sign, at most 20 digits (section 3.2)."""
    assert frame.isdigit() and len(frame) <= 20, frame
    return int(frame)


def records(frames: Frames, n_at: int) -> list[Frames]:
    """The records after the count at `n_at`: six frames each (section 13.2)."""
    n = assert_number(frames[n_at])
    body = frames[n_at + 1 :]
    assert len(body) >= 6 * n, frames
    return [body[i : i + 6] for i in range(0, 6 * n, 6)]


def assert_time(frame: bytes) -> int:
    """A `time` from the broker's clock: on loopback it is close to ours."""
    millis = assert_number(frame)
    assert abs(millis - time.time() * 1000) < 10_000, frame
    return millis


def pub_address(pub_endpoint: str, router_endpoint: str) -> str:
    """Section 5.1: a `*` host in the pub endpoint means the host used for the ROUTER."""
    scheme_host, port = pub_endpoint.rsplit(":", 1)
    if scheme_host.endswith("//*"):
        return f"{router_endpoint.rsplit(':', 1)[0]}:{port}"
    return pub_endpoint


@dataclass(frozen=True)
class Welcome:
    """The fields of a WELCOME (section 5.1)."""

    id: bytes
    name: bytes
    token: bytes
    pub_endpoint: str
    heartbeat_ms: int
    timeout_ms: int
    max_body: int
    time: int

    @classmethod
    def parse(cls, frames: Frames) -> Welcome:
        assert frames[:2] == [SIGNATURE, b"WELCOME"], frames
        assert len(frames) >= 10, frames  # 3.3: later versions may append fields
        msg_id, name, token, pub, heartbeat, timeout, max_body, stamp = frames[2:10]
        assert len(token) <= 64 and token.isascii(), token
        return cls(
            msg_id,
            name,
            token,
            pub.decode("ascii"),
            assert_number(heartbeat),
            assert_number(timeout),
            assert_number(max_body),
            assert_time(stamp),
        )


@dataclass(frozen=True)
class Published:
    """A message from the PUB socket: topic | seq | "ZCHAT/1" | command | fields (section 3.1)."""

    topic: bytes
    seq: int
    command: bytes
    fields: Frames

    @classmethod
    def parse(cls, frames: Frames) -> Published:
        assert len(frames) >= 4 and frames[2] == SIGNATURE, frames
        return cls(frames[0], assert_number(frames[1]), frames[3], frames[4:])


class SpecClient:
    """A ZCHAT/1 client built from docs/PROTOCOL.md and nothing else.

    One DEALER for commands, replies and private messages; after WELCOME, one SUB for
    the topics it subscribes to. Whatever arrives is queued (`inbox` for the DEALER,
    `feed` for the SUB) until a test takes it. While waiting, a registered client keeps
    its heartbeats going (section 7.1) and swallows the PONGs to them.
    """

    def __init__(self, context: Context, endpoint: str, label: str = "c") -> None:
        self.context = context
        self.endpoint = endpoint
        self.dealer = context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(endpoint)
        self.sub: zmq.Socket[bytes] | None = None
        self.welcome: Welcome | None = None
        self.inbox: deque[Frames] = deque()
        self.feed: deque[Published] = deque()
        self.heartbeats = True
        self._prefix = f"{label}-{secrets.token_hex(3)}-".encode()
        self._counter = itertools.count(1)
        self._pings: set[bytes] = set()
        self._last_send = time.monotonic()

    # -- sending -----------------------------------------------------------------------

    def new_id(self) -> bytes:
        """Section 3.4: a counter with a random prefix."""
        return self._prefix + str(next(self._counter)).encode()

    def send_raw(self, *frames: bytes) -> None:
        self.dealer.send_multipart(list(frames))
        self._last_send = time.monotonic()

    def send(self, command: bytes, *fields: bytes) -> bytes:
        """Send `"ZCHAT/1" | command | id | fields…` and return the id."""
        msg_id = self.new_id()
        self.send_raw(SIGNATURE, command, msg_id, *fields)
        return msg_id

    # -- receiving -----------------------------------------------------------------------

    def _pump(self, wait: float) -> None:
        """Wait up to `wait` seconds for input on either socket and queue it."""
        if (
            self.heartbeats
            and self.welcome is not None
            and time.monotonic() - self._last_send >= self.welcome.heartbeat_ms / 2000
        ):
            self._pings.add(self.send(b"PING"))
        poller = zmq.Poller()
        poller.register(self.dealer, zmq.POLLIN)
        if self.sub is not None:
            poller.register(self.sub, zmq.POLLIN)
        ready = dict(poller.poll(int(wait * 1000)))
        if self.dealer in ready:
            while (frames := self._recv_nowait(self.dealer)) is not None:
                if len(frames) >= 3 and frames[1] == b"PONG" and frames[2] in self._pings:
                    self._pings.discard(frames[2])
                else:
                    self.inbox.append(frames)
        if self.sub is not None and self.sub in ready:
            while (frames := self._recv_nowait(self.sub)) is not None:
                self.feed.append(Published.parse(frames))

    @staticmethod
    def _recv_nowait(socket: zmq.Socket[bytes]) -> Frames | None:
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

    def next(self, timeout: float = WAIT) -> Frames:
        """The next message on the DEALER, whatever it is."""
        return self._take(self.inbox, lambda _: True, timeout, "any message on the DEALER")

    def delivery(self, command: bytes, timeout: float = WAIT) -> Frames:
        """The first unread DEALER message with this command (MESSAGE, SHUTDOWN)."""
        return self._take(self.inbox, lambda f: f[1:2] == [command], timeout, f"{command!r} on the DEALER")

    def reply(self, msg_id: bytes, timeout: float = WAIT) -> Frames:
        """The reply (WELCOME, ACK, ERROR, USERS, PONG) carrying `msg_id` (section 3.4)."""
        frames = self._take(
            self.inbox,
            lambda f: len(f) >= 3 and f[1] in REPLIES and msg_id in answered_ids(f),
            timeout,
            f"the reply to {msg_id!r}",
        )
        assert frames[0] == SIGNATURE, frames
        if frames[1] == b"ACK" and frames[2] != msg_id:  # answered within another's ACK
            others = [i for i in answered_ids(frames) if i != msg_id]
            self.inbox.appendleft([*frames[:2], others[0], *frames[3:5], *others[1:]])
            return [*frames[:2], msg_id, *frames[3:5]]
        if frames[1] == b"ACK" and len(frames) > 5:  # keep the others' answers for them
            self.inbox.appendleft([*frames[:2], frames[5], *frames[3:5], *frames[6:]])
            return frames[:5]
        return frames

    def request(self, command: bytes, *fields: bytes) -> Frames:
        return self.reply(self.send(command, *fields))

    def error_code(self, msg_id: bytes) -> int:
        """Wait for the reply to `msg_id`, which must be ERROR; return its code (section 5)."""
        frames = self.reply(msg_id)
        assert frames[1] == b"ERROR" and len(frames) >= 5, frames
        frames[4].decode("utf-8")  # the reason is `text`
        return assert_number(frames[3])

    def next_error(self, msg_id: bytes) -> int:
        """The next DEALER message must be ERROR for `msg_id`, or with an empty id when the
        broker could not read one (section 5); return its code."""
        frames = self.next()
        assert frames[:2] == [SIGNATURE, b"ERROR"] and len(frames) >= 5, frames
        assert frames[2] in (msg_id, b""), frames
        frames[4].decode("utf-8")
        return assert_number(frames[3])

    def ack(self, msg_id: bytes) -> int:
        """Wait for the ACK to `msg_id` (section 5.2); return its time."""
        frames = self.reply(msg_id)
        assert frames[1] == b"ACK" and len(frames) >= 5, frames
        assert frames[4] == b"accepted", frames  # the only status of version 1
        return assert_time(frames[3])

    def who(self) -> list[bytes]:
        """Section 4.3: the online names, as USERS lists them."""
        frames = self.request(b"WHO")
        assert frames[1] == b"USERS" and len(frames) >= 4, frames
        return frames[3].split(b" ") if frames[3] else []

    def published(
        self, match: Callable[[Published], bool], timeout: float = WAIT, what: str = "a published message"
    ) -> Published:
        """The first unread SUB message that `match`es."""
        return self._take(self.feed, match, timeout, what)

    def lobby(self, command: bytes, *fields: bytes, timeout: float = WAIT) -> Published:
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

    def hello(self, name: bytes, token: bytes = b"") -> Welcome:
        """Section 4.1: register `name` (or resume with `token`)."""
        msg_id = self.send(b"HELLO", name, token)
        welcome = Welcome.parse(self.reply(msg_id))
        assert welcome.id == msg_id
        self.welcome = welcome
        return welcome

    def announce(self) -> None:
        """Section 4.6: READY makes the JOIN public (a SUB is not needed for that)."""
        self.ack(self.send(b"READY"))

    def subscribe(self, *topics: bytes) -> None:
        """Section 4.5: connect the SUB, subscribe `topics`, own topic last, then SYNC."""
        assert self.welcome is not None, "subscribe after WELCOME"
        mine = own_topic(self.welcome.name)
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(pub_address(self.welcome.pub_endpoint, self.endpoint))
        for topic in [*topics, mine]:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        sync_ids: list[bytes] = []
        synced: Published | None = None
        deadline = time.monotonic() + WAIT
        while synced is None:  # resend SYNC (a new id) every 100-500 ms until SYNCED arrives
            assert time.monotonic() < deadline, f"no SYNCED on {mine!r}"
            sync_ids.append(self.send(b"SYNC"))
            synced = self._find(self.feed, lambda m: m.topic == mine and m.command == b"SYNCED", 0.2)
        assert synced.seq == 0 and synced.fields[0] in sync_ids, synced  # sections 6.2, 4.5
        for sync_id in sync_ids:
            self.ack(sync_id)


def answered_ids(frames: Frames) -> list[bytes]:
    """The ids a reply answers: its own, and for ACK the further ids (section 5.2)."""
    return [frames[2], *frames[5:]] if frames[1] == b"ACK" else [frames[2]]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def connect(broker: Broker, zmq_context: Context) -> Callable[[], SpecClient]:
    """A new, unregistered spec client on the broker."""
    return lambda: SpecClient(zmq_context, broker.endpoint)


@pytest.fixture
def online(connect: Callable[[], SpecClient]) -> Callable[..., SpecClient]:
    """A spec client registered under `name` and subscribed to `topics` (lobby by default)."""

    def make(name: str, *topics: bytes) -> SpecClient:
        client = connect()
        client.hello(name.encode())
        client.subscribe(*(topics or (LOBBY,)))
        client.announce()
        return client

    return make


def broadcast_marker(sender: SpecClient, text: bytes = b"marker") -> bytes:
    """Send a broadcast and wait for its ACK: whatever was published earlier arrives before it."""
    body = text + b"-" + secrets.token_hex(4).encode()
    sender.ack(sender.send(b"SEND", b"*", body))
    return body


def is_marker(body: bytes) -> Callable[[Published], bool]:
    return lambda m: m.topic == LOBBY and m.command == b"MESSAGE" and m.fields[4:5] == [body]


# -- registration (4.1, 5.1, 3.5) ------------------------------------------------------------


def test_hello_is_answered_by_welcome_with_every_field(
    broker: Broker, connect: Callable[[], SpecClient]
) -> None:
    client = connect()
    msg_id = client.send(b"HELLO", b"Alice", b"")
    welcome = Welcome.parse(client.reply(msg_id))

    assert welcome.id == msg_id
    assert welcome.name == b"Alice"
    assert 0 < len(welcome.token) <= 64
    assert pub_address(welcome.pub_endpoint, broker.endpoint) == broker.pub_endpoint
    assert (welcome.heartbeat_ms, welcome.timeout_ms) == (200, 1000)  # the fixture's 0.2 s / 1.0 s
    assert welcome.max_body == 65536  # section 8 default
    assert connect().who() == [b"Alice"]


def test_names_are_unique_without_regard_to_case(connect: Callable[[], SpecClient]) -> None:
    connect().hello(b"Alice")
    for other in (b"alice", b"ALICE", b"Alice", b"aLiCe"):
        client = connect()
        assert client.error_code(client.send(b"HELLO", other, b"")) == 409
    assert connect().who() == [b"Alice"]  # the name as registered is what others see


@pytest.mark.parametrize(
    "name",
    [b"", b"a b", b"x" * 33, b"bob!", b"*", b"@bob", b"#room", b"bo\x00b", "zoë".encode(), b"tab\t"],
    ids=["empty", "space", "33-chars", "bang", "star", "at", "hash", "nul", "non-ascii", "tab"],
)
def test_invalid_names_are_refused_with_422(connect: Callable[[], SpecClient], name: bytes) -> None:
    client = connect()
    assert client.error_code(client.send(b"HELLO", name, b"")) == 422
    assert client.error_code(client.send(b"PING")) == 403  # not registered
    assert connect().who() == []


def test_name_not_utf8_is_refused(connect: Callable[[], SpecClient]) -> None:
    # A name is ASCII (section 3.2): other bytes break its rules.
    client = connect()
    assert client.error_code(client.send(b"HELLO", b"\xff", b"")) == 422
    assert connect().who() == []


def test_names_at_the_edges_of_the_rules_are_accepted(connect: Callable[[], SpecClient]) -> None:
    for name in (b"x" * 32, b"A", b"Az09_-.", b"..."):
        assert connect().hello(name).name == name


def test_second_hello_in_another_case_welcomes_with_the_name_as_registered(
    connect: Callable[[], SpecClient],
) -> None:
    alice = connect()
    first = alice.hello(b"Alice")
    again = alice.hello(b"ALICE", b"some other token")  # section 4.1
    assert (again.name, again.token) == (b"Alice", first.token)
    assert connect().who() == [b"Alice"]


def test_names_are_listed_by_their_lower_case_form(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    names = [b"Zed", b"_x", b"alice", b"9z", b"Bob", b"-a"]
    clients = [online(name.decode()) for name in names]
    expected = [b"-a", b"9z", b"_x", b"alice", b"Bob", b"Zed"]  # section 3.5: `_` before the letters
    assert connect().who() == expected
    for client in clients:
        client.ack(client.send(b"ENTER", b"#dev"))
    frames = clients[0].request(b"NAMES", b"#dev")
    assert frames[1] == b"USERS" and frames[3].split(b" ") == expected, frames


def test_second_hello_same_name_welcomes_again_another_name_410(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    alice = online("alice")
    assert alice.hello(b"alice").name == b"alice"
    assert alice.error_code(alice.send(b"HELLO", b"mallory", b"")) == 410
    assert connect().who() == [b"alice"]


# -- private messages and forging (4.2, 5.3) -------------------------------------------------


def test_private_message_reaches_its_recipient_only(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    bob = online("bob")
    carol = online("carol", b"", b"@bob\x00", b"@alice\x00", LOBBY)  # subscribed to everything

    msg_id = alice.send(b"SEND", b"bob", b"secret \xe2\x9c\x93")
    ack_time = alice.ack(msg_id)

    message = bob.delivery(b"MESSAGE")
    assert message[:5] == [SIGNATURE, b"MESSAGE", msg_id, b"alice", b"bob"], message
    assert message[6] == b"secret \xe2\x9c\x93"
    assert abs(assert_time(message[5]) - ack_time) < 1000

    # Markers sent after the secret, over the same paths: a private one on carol's DEALER and
    # a broadcast on the PUB. Whatever precedes them is everything carol could have received.
    alice.ack(alice.send(b"SEND", b"carol", b"private marker"))
    marker = broadcast_marker(alice)
    first = carol.next()
    assert first[1] == b"MESSAGE" and first[6] == b"private marker", first
    for client in (carol, bob, alice):
        for published in client.published_until(is_marker(marker)):
            assert not any(b"secret" in field for field in published.fields), published
            assert published.command != b"MESSAGE" or published.fields[2] == b"*", published


def test_private_target_in_any_case_and_to_oneself(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    bob = online("Bob")

    msg_id = alice.send(b"SEND", b"BOB", b"hi")
    alice.ack(msg_id)
    message = bob.delivery(b"MESSAGE")
    assert message[2:4] == [msg_id, b"alice"] and message[6] == b"hi", message
    assert message[4] == b"Bob", message  # the recipient's name as registered (3.5)

    to_self = alice.send(b"SEND", b"alice", b"note to self")
    alice.ack(to_self)
    message = alice.delivery(b"MESSAGE")
    assert message[2:5] == [to_self, b"alice", b"alice"] and message[6] == b"note to self", message


def test_sender_cannot_be_forged(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    bob = online("bob")

    # SEND has no sender field; frames after `body` are ignored (section 3.3).
    forged = alice.send(b"SEND", b"bob", b"hello", b"mallory", b"sender=mallory", b"carol")
    alice.ack(forged)
    message = bob.delivery(b"MESSAGE")
    assert message[2:5] == [forged, b"alice", b"bob"] and message[6] == b"hello", message

    # A client cannot send MESSAGE (it is not a client command), nor take another name.
    fake = alice.send(b"MESSAGE", b"mallory", b"bob", b"0", b"fake")
    assert alice.error_code(fake) == 405
    assert alice.error_code(alice.send(b"HELLO", b"mallory", b"")) == 410
    later = alice.send(b"SEND", b"bob", b"later")
    alice.ack(later)
    message = bob.next()  # nothing arrived between the two genuine messages
    assert message[1:5] == [b"MESSAGE", later, b"alice", b"bob"], message


# -- broadcast, SYNC and presence (4.5, 6) ----------------------------------------------------


def test_sync_is_acked_and_synced_on_own_topic(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    client.hello(b"alice")
    client.subscribe(LOBBY)  # asserts ACK + SYNCED on "@alice\0" with seq 0 and the same id
    msg_id = client.send(b"SYNC")
    client.ack(msg_id)
    synced = client.published(lambda m: m.topic == b"@alice\x00")
    assert (synced.seq, synced.command, synced.fields[:1]) == (0, b"SYNCED", [msg_id])


def test_sync_with_a_tag_is_synced_on_that_tag_s_topic_only(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    client.hello(b"alice")
    client.subscribe(LOBBY)
    # Section 4.5: the sync topic is "@" name 0x01 tag NUL; subscribe it, then SYNC with the tag.
    assert client.sub is not None
    client.sub.setsockopt(zmq.SUBSCRIBE, b"@alice\x01round-1\x00")
    deadline = time.monotonic() + WAIT
    synced = None
    tagged: list[bytes] = []
    while synced is None:  # resend until the new subscription is live
        assert time.monotonic() < deadline, "no SYNCED on the sync topic"
        tagged.append(client.send(b"SYNC", b"round-1"))
        client.ack(tagged[-1])
        synced = client._find(client.feed, lambda m: m.topic == b"@alice\x01round-1\x00", 0.2)
    assert (synced.seq, synced.command) == (0, b"SYNCED") and synced.fields[0] in tagged
    marker = broadcast_marker(client)  # what was published before it has arrived by then
    client.published(is_marker(marker))
    assert not [m for m in client.feed if m.topic == b"@alice\x00" and m.fields[:1] and m.fields[0] in tagged]
    assert client.error_code(client.send(b"SYNC", b"bad tag")) == 400


def test_an_empty_sync_tag_frame_syncs_on_the_own_topic(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    client.hello(b"alice")
    client.subscribe(LOBBY)
    msg_id = client.send(b"SYNC", b"")  # section 4.5: the same as no tag
    client.ack(msg_id)
    synced = client.published(lambda m: m.topic == b"@alice\x00" and m.fields[:1] == [msg_id])
    assert (synced.seq, synced.command) == (0, b"SYNCED")


def test_welcome_appends_the_rate_limit_zero_when_there_is_none(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    frames = client.reply(client.send(b"HELLO", b"alice", b""))
    assert frames[10:12] == [b"0", b"0"]  # section 5.1: this broker runs without flood control


def test_broadcast_reaches_everyone_on_the_lobby_in_sequence(online: Callable[..., SpecClient]) -> None:
    clients = [online("alice"), online("bob"), online("carol")]
    alice = clients[0]
    sent = [alice.send(b"SEND", b"*", f"hello {n}".encode()) for n in range(3)]
    times = [alice.ack(msg_id) for msg_id in sent]
    bob_id = clients[1].send(b"SEND", b"*", b"from bob")
    clients[1].ack(bob_id)

    expected = [(msg_id, b"alice", f"hello {n}".encode()) for n, msg_id in enumerate(sent)]
    expected.append((bob_id, b"bob", b"from bob"))
    sequences = []
    for client in clients:
        seen = [client.lobby(b"MESSAGE") for _ in expected]
        assert [(m.fields[0], m.fields[1], m.fields[4]) for m in seen] == expected
        assert all(m.fields[2] == b"*" for m in seen)
        assert [assert_time(m.fields[3]) for m in seen[:3]] == times
        first = seen[0].seq
        assert [m.seq for m in seen] == [first, first + 1, first + 2, first + 3]  # section 6.2
        sequences.append(first)
    assert len(set(sequences)) == 1  # one counter per topic, the same for every subscriber


def test_presence_join_leave_and_who(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    assert connect().who() == []  # WHO before HELLO, on an empty broker: USERS with empty names
    watcher = online("watcher")

    bob = connect()
    bob.hello(b"bob")
    bob.announce()
    join = watcher.lobby(b"JOIN", b"bob")
    assert len(join.fields) >= 2
    assert_time(join.fields[1])
    alice = connect()
    alice.hello(b"Alice")
    alice.announce()
    assert watcher.lobby(b"JOIN", b"Alice").seq == join.seq + 1
    assert connect().who() == [b"Alice", b"bob", b"watcher"]  # sorted without regard to case

    bye = bob.send(b"BYE")
    bob.ack(bye)
    leave = watcher.lobby(b"LEAVE", b"bob")
    assert leave.seq == join.seq + 2 and leave.fields[2] == b"quit"
    assert_time(leave.fields[1])
    assert connect().who() == [b"Alice", b"watcher"]


# -- errors for bad input (8, 9, 10) ----------------------------------------------------------


def test_unknown_recipient_404(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    assert alice.error_code(alice.send(b"SEND", b"nobody", b"hi")) == 404
    assert alice.error_code(alice.send(b"SEND", b"not a name!", b"hi")) == 404  # section 9


def test_unknown_command_405(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    assert alice.error_code(alice.send(b"FROBNICATE", b"x")) == 405
    assert alice.error_code(alice.send(b"send", b"*", b"lower case")) == 405  # commands are upper case


def test_other_version_426_in_version_1_framing(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    for signature in (b"ZCHAT/2", b"ZCHAT/10", b"ZCHAT/0"):  # another version number (section 10)
        msg_id = client.new_id()
        client.send_raw(signature, b"HELLO", msg_id, b"alice", b"")
        assert client.error_code(msg_id) == 426  # with the request's id (section 10)
    for signature in (b"ZCHAT/1.1", b"ZCHAT/1 ", b"ZCHAT/"):  # not a version number: garbage
        msg_id = client.new_id()
        client.send_raw(signature, b"HELLO", msg_id, b"alice", b"")
        assert client.error_code(msg_id) == 400
    assert connect().who() == []


def test_wrong_signature_or_missing_frames_400(connect: Callable[[], SpecClient]) -> None:
    client = connect()
    client.hello(b"alice")
    for signature in (b"ZCHAT1", b"zchat/1", b"HELLO", b" ZCHAT/1"):
        msg_id = client.new_id()
        client.send_raw(signature, b"WHO", msg_id)
        assert client.error_code(msg_id) == 400, signature  # with the request's id (section 10)
    assert client.error_code(client.send(b"SEND", b"alice")) == 400  # no body
    assert client.error_code(client.send(b"SEND")) == 400  # no target, no body
    fresh = connect()
    assert fresh.error_code(fresh.send(b"HELLO", b"bob")) == 400  # no token frame
    assert fresh.error_code(fresh.send(b"HELLO")) == 400
    for bad_id in (b"", b"has space", b"x" * 65, b"\xff"):  # section 3.2 `id`
        client.send_raw(SIGNATURE, b"WHO", bad_id)
        assert client.next_error(b"") == 400, bad_id
    client.send_raw(SIGNATURE, b"WHO")  # no id at all: ERROR with an empty id (section 5)
    assert client.error_code(b"") == 400
    assert connect().who() == [b"alice"]


@pytest.mark.parametrize("command", [b"SEND", b"PING", b"SYNC", b"BYE"])
def test_commands_before_hello_403(connect: Callable[[], SpecClient], command: bytes) -> None:
    client = connect()
    fields = [b"*", b"hello"] if command == b"SEND" else []
    assert client.error_code(client.send(command, *fields)) == 403


def test_too_large_body_413(tmp_path: Path, zmq_context: Context) -> None:
    small = start_broker(tmp_path, "--max-message-size", "16")
    try:
        alice = SpecClient(zmq_context, small.endpoint)
        assert alice.hello(b"alice").max_body == 16
        alice.ack(alice.send(b"SEND", b"alice", b"x" * 16))
        alice.ack(alice.send(b"SEND", b"*", "é".encode() * 8))  # bytes count, not characters
        assert alice.error_code(alice.send(b"SEND", b"alice", b"x" * 17)) == 413
        assert alice.error_code(alice.send(b"SEND", b"*", "é".encode() * 9)) == 413

        # A frame beyond max-body + 4096 is cut off by ZeroMQ: no reply, and the broker lives on.
        huge = SpecClient(zmq_context, small.endpoint)
        huge.send(b"SEND", b"*", b"x" * (16 + 4096 + 1024))
        assert SpecClient(zmq_context, small.endpoint).who() == [b"alice"]
        assert small.process.poll() is None
    finally:
        assert small.stop() == 0


def test_body_not_utf8_415(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    bob = online("bob")
    assert alice.error_code(alice.send(b"SEND", b"bob", b"\xff\xfe bad")) == 415
    assert alice.error_code(alice.send(b"SEND", b"*", b"caf\xc3")) == 415
    alice.ack(alice.send(b"SEND", b"bob", b"good"))
    assert bob.next()[6] == b"good"  # the refused message was not delivered
    marker = broadcast_marker(alice)
    seen = bob.published_until(is_marker(marker))
    assert [m.fields[4] for m in seen if m.command == b"MESSAGE"] == [marker]


def test_garbage_never_crashes_the_broker(broker: Broker, connect: Callable[[], SpecClient]) -> None:
    rng = random.Random(20240501)
    garbage: list[Frames] = [
        [b""],
        [b"", b""],
        [b"", b"", b"", b""],
        [SIGNATURE],
        [SIGNATURE, b""],
        [SIGNATURE, b"", b""],
        [SIGNATURE, b"\xff\xfe"],
        [SIGNATURE, b"HELLO", b"id", b"\xff\xfe", b""],
        [b"ZCHAT/"],
        [b"\x00" * 7],
        *([rng.randbytes(rng.randint(1, 300)) for _ in range(rng.randint(1, 6))] for _ in range(40)),
    ]
    for registered in (False, True):
        client = connect()
        if registered:
            client.hello(b"alice")
        for frames in garbage:
            client.send_raw(*frames)
            reply = client.next()  # section 8: answered with ERROR, never a crash
            assert reply[:2] == [SIGNATURE, b"ERROR"] and reply[3][:1] == b"4", (frames, reply)
            reply[4].decode("utf-8")
        assert client.who() == ([b"alice"] if registered else [])
    assert broker.process.poll() is None


# -- liveness (4.4, 7) ------------------------------------------------------------------------


def test_ping_is_answered_by_pong(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    msg_id = alice.send(b"PING")
    pong = alice.reply(msg_id)
    assert pong[:3] == [SIGNATURE, b"PONG", msg_id] and len(pong) >= 4, pong
    assert_time(pong[3])


def test_ping_from_an_unknown_connection_403(connect: Callable[[], SpecClient]) -> None:
    stranger = connect()
    assert stranger.error_code(stranger.send(b"PING")) == 403


def test_silent_client_is_dropped_and_then_gets_403(online: Callable[..., SpecClient]) -> None:
    watcher = online("watcher")
    silent = online("silent")
    silent.heartbeats = False  # and nobody pumps it: it sends nothing from now on
    started = time.monotonic()
    leave = watcher.lobby(b"LEAVE", b"silent", timeout=WAIT)
    assert leave.fields[2] == b"timeout"
    assert time.monotonic() - started < 1.0 + 1.0  # within timeout-ms (1 s), with slack
    assert silent.error_code(silent.send(b"PING")) == 403  # section 4.4: register again
    assert watcher.who() == [b"watcher"]


CHILD = """
import sys, time, zmq
dealer = zmq.Context().socket(zmq.DEALER)
dealer.connect(sys.argv[1])
dealer.send_multipart([b"ZCHAT/1", b"HELLO", b"k-0", sys.argv[2].encode(), b""])
assert dealer.recv_multipart()[1] == b"WELCOME"
dealer.send_multipart([b"ZCHAT/1", b"READY", b"k-r"])  # makes the JOIN public (section 4.6)
for n in range(1, 10**9):
    dealer.send_multipart([b"ZCHAT/1", b"PING", b"k-%d" % n])
    time.sleep(0.05)
"""


def test_killed_client_leaves_with_timeout_and_frees_its_name(
    broker: Broker, online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    watcher = online("watcher")
    child = subprocess.Popen([sys.executable, "-c", CHILD, broker.endpoint, "zombie"])
    try:
        watcher.lobby(b"JOIN", b"zombie", timeout=30)
        assert child.poll() is None  # it registered and is heartbeating
        child.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        leave = watcher.lobby(b"LEAVE", b"zombie", timeout=10)
        assert leave.fields[2] == b"timeout", leave
        assert time.monotonic() - killed < 1.0 + 1.0  # timeout-ms is 1 s; allow 1 s of slack
    finally:
        child.kill()
        child.wait(10)
    again = connect()
    assert again.hello(b"zombie").name == b"zombie"
    again.announce()
    assert watcher.lobby(b"JOIN", b"zombie").fields[0] == b"zombie"


# -- shutdown (5.4) and resume (4.1) ----------------------------------------------------------


def test_sigterm_sends_shutdown_and_exits_0(
    broker: Broker, online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    alice = online("alice")
    bob = connect()
    bob.hello(b"bob")
    broker.process.send_signal(signal.SIGTERM)
    for client in (alice, bob):
        shutdown = client.delivery(b"SHUTDOWN")
        assert shutdown[0] == SIGNATURE and len(shutdown) >= 3, shutdown
        shutdown[2].decode("utf-8")
    published = alice.lobby(b"SHUTDOWN")
    assert len(published.fields) >= 1
    assert broker.process.wait(10) == 0


def test_resume_takes_over_the_session_silently(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    watcher = online("watcher")
    first = online("alice")
    assert first.welcome is not None
    token = first.welcome.token
    joined = watcher.lobby(b"JOIN", b"alice")

    stranger = connect()  # a wrong token does not take the session
    assert stranger.error_code(stranger.send(b"HELLO", b"alice", b"not-the-token")) == 409

    second = connect()
    welcome = second.hello(b"alice", token)
    assert (welcome.name, welcome.token) == (b"alice", token)
    second.subscribe(LOBBY)

    marker = broadcast_marker(watcher)
    seen = watcher.published_until(is_marker(marker))
    after = [(m.command, m.seq) for m in seen if m.topic == LOBBY and m.seq > joined.seq]
    assert after == [(b"MESSAGE", joined.seq + 1)]  # no LEAVE or JOIN for the takeover
    assert watcher.who() == [b"alice", b"watcher"]

    # The new connection holds the session; the old one is forgotten.
    msg_id = watcher.send(b"SEND", b"alice", b"to the new connection")
    watcher.ack(msg_id)
    assert second.delivery(b"MESSAGE")[2] == msg_id
    # Section 5.5: the old connection is told, so that it does not take the session back.
    replaced = first.delivery(b"REPLACED")
    assert replaced[:2] == [SIGNATURE, b"REPLACED"] and len(replaced) >= 3, replaced
    replaced[2].decode("utf-8")
    first.heartbeats = False
    ping = first.send(b"PING")
    assert first.error_code(ping) == 403  # forgotten
    assert not [f for f in first.inbox if f[1:2] == [b"MESSAGE"]]  # the message went to the new one only


def test_resume_after_the_session_ended_registers_anew(
    online: Callable[..., SpecClient], connect: Callable[[], SpecClient]
) -> None:
    watcher = online("watcher")
    first = connect()
    token = first.hello(b"alice").token
    first.announce()
    first.ack(first.send(b"BYE"))
    watcher.lobby(b"LEAVE", b"alice")
    again = connect()
    assert again.hello(b"alice", token).name == b"alice"
    again.announce()
    watcher.lobby(b"JOIN", b"alice")


# -- rooms, history, search (13) and number ranges (3.2) ------------------------------------


def test_history_numbers_past_their_ranges_are_400(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    alice.ack(alice.send(b"SEND", b"*", b"kept"))
    for before, count in [
        (str(MAX_NUMBER + 1).encode(), b"10"),  # 2^63: past a `number`
        (b"9" * 20, b"10"),
        (b"0", b"501"),  # more than a page (13.1)
        (b"0", b"9" * 20),
    ]:
        assert alice.error_code(alice.send(b"HISTORY", b"*", before, count)) == 400, (before, count)
    page = alice.request(b"HISTORY", b"*", str(MAX_NUMBER).encode(), b"500")
    assert page[1] == b"HISTORY" and [r[5] for r in records(page, 5)] == [b"kept"], page
    nothing = alice.request(b"HISTORY", b"*", b"0", b"0")  # a count of 0: only the last seq
    assert nothing[1] == b"HISTORY" and assert_number(nothing[5]) == 0 and assert_number(nothing[4]) > 0


def test_history_records_come_oldest_first_with_their_published_numbers_and_times(
    online: Callable[..., SpecClient],
) -> None:
    alice = online("alice")
    sent = [alice.send(b"SEND", b"*", f"n{i}".encode()) for i in range(3)]
    times = [alice.ack(msg_id) for msg_id in sent]
    published = [alice.lobby(b"MESSAGE", msg_id) for msg_id in sent]
    page = alice.request(b"HISTORY", b"*", b"0", b"2")
    assert page[:4] == [SIGNATURE, b"HISTORY", page[2], b"*"], page
    assert assert_number(page[4]) == published[-1].seq  # last seq: nothing was published since
    got = records(page, 5)
    # The newest two, oldest first, each as published; the ACK's time is the message's (5.2).
    assert [(assert_number(r[0]), r[1], r[2], r[3], assert_time(r[4]), r[5]) for r in got] == [
        (published[i].seq, sent[i], b"alice", b"*", times[i], f"n{i}".encode()) for i in (1, 2)
    ]
    older = alice.request(b"HISTORY", b"*", str(published[1].seq).encode(), b"10")
    assert [r[1] for r in records(older, 5)] == [sent[0]]  # before that number: only the first
    # 13.1: an optional `after`: only what came after a number, as a client back from an absence asks.
    missed = alice.request(b"HISTORY", b"*", b"0", b"10", str(published[0].seq).encode())
    assert [r[1] for r in records(missed, 5)] == sent[1:]
    assert assert_number(missed[4]) == published[-1].seq
    nothing = alice.request(b"HISTORY", b"*", b"0", b"10", str(published[-1].seq).encode())
    assert records(nothing, 5) == []
    assert alice.error_code(alice.send(b"HISTORY", b"*", b"0", b"10", str(2**63).encode())) == 400


def test_a_malformed_room_is_400_and_a_send_target_that_can_be_nobody_404(
    online: Callable[..., SpecClient],
) -> None:
    alice = online("alice")
    for room in (b"dev", b"#" + b"x" * 33, b"#d v", b"*"):
        assert alice.error_code(alice.send(b"ENTER", room)) == 400, room
    assert alice.error_code(alice.send(b"NAMES", b"#" + b"x" * 33)) == 400
    assert alice.error_code(alice.send(b"HISTORY", b"#" + b"x" * 33, b"0", b"10")) == 400
    for target in (b"a" * 33, b"#" + b"a" * 33, b"#", b""):
        assert alice.error_code(alice.send(b"SEND", target, b"hi")) == 404, target


def test_received_with_a_sender_that_is_not_a_name_is_422(online: Callable[..., SpecClient]) -> None:
    bob = online("bob")
    for sender in (b"not a name", b"x" * 33, b"\xff\xfe"):
        assert bob.error_code(bob.send(b"RECEIVED", sender, b"m1")) == 422, sender
    assert bob.error_code(bob.send(b"RECEIVED", b"alice", b"bad id")) == 400


def test_rooms_counts_members_online_or_not(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    alice.ack(alice.send(b"ENTER", b"#Dev"))
    alice.ack(alice.send(b"BYE"))
    bob = online("bob")
    rooms = bob.request(b"ROOMS")
    assert rooms[1] == b"ROOMS" and rooms[3].split(b" ") == [b"#dev:1"] and rooms[4] == b"", rooms
    names = bob.request(b"NAMES", b"#dev")
    assert names[1] == b"USERS" and names[3] == b"", names  # nobody of it is online


def test_search_matches_whole_words_of_what_the_user_may_see_newest_first(
    online: Callable[..., SpecClient],
) -> None:
    alice = online("alice")
    bob = online("bob")
    alice.ack(alice.send(b"ENTER", b"#secret"))
    said = [
        (b"#secret", b"the plan is ready"),
        (b"*", b"the Plan for lunch"),
        (b"*", b"planning ahead"),
        (b"bob", b"plan for bob"),
        (b"*", b"a plan, later"),
    ]
    ids = []
    for target, body in said:
        ids.append(alice.send(b"SEND", target, body))
        alice.ack(ids[-1])

    def found(client: SpecClient, words: bytes) -> list[bytes]:
        """The bodies found, after checking they come newest first (messages of one
        millisecond in any order, section 13.6)."""
        frames = client.request(b"SEARCH", words)
        assert frames[1] == b"FOUND", frames
        got = records(frames, 3)
        times = [assert_time(r[4]) for r in got]
        assert times == sorted(times, reverse=True), got
        return [r[5] for r in got]

    # bob is not in #secret; "planning" is another word; the private one is his.
    assert sorted(found(bob, b"PLAN")) == [b"a plan, later", b"plan for bob", b"the Plan for lunch"]
    assert sorted(found(alice, b"plan for")) == [b"plan for bob", b"the Plan for lunch"]  # every word
    assert len(found(alice, b"plan")) == 4
    assert found(alice, b"!!!") == []
    frames = bob.request(b"SEARCH", b"bob")
    (private,) = records(frames, 3)
    assert (assert_number(private[0]), private[1], private[3]) == (
        0,
        ids[3],
        b"bob",
    )  # seq 0, to its recipient


def test_each_id_of_a_combined_ack_has_the_time_of_its_message(online: Callable[..., SpecClient]) -> None:
    alice = online("alice")
    sent = [alice.send(b"SEND", b"alice", f"p{i}".encode()) for i in range(200)]  # pipelined
    acked: dict[bytes, int] = {}
    delivered: dict[bytes, int] = {}
    while len(acked) < len(sent) or len(delivered) < len(sent):
        frames = alice.next()
        if frames[1] == b"ACK":
            for msg_id in answered_ids(frames):  # section 5.2: same time and status for each
                acked[msg_id] = assert_time(frames[3])
            assert frames[4] == b"accepted", frames
        else:
            assert frames[1] == b"MESSAGE", frames
            delivered[frames[2]] = assert_time(frames[5])
    assert acked == delivered
