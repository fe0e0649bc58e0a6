"""The broker's ZeroMQ shell: what only shows with real sockets."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.stores import BIG, FaultyStore, FillingStore
from tests.support import Broker, start_broker, wait_for
from zchat.broker.core import Flush
from zchat.broker.server import BrokerServer, BrokerSettings, receive
from zchat.broker.store import Store
from zchat.common import protocol as p
from zchat.common.protocol import Code


def test_pipelined_sends_are_all_acknowledged_once_in_order(
    broker: Broker, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    dealer = zmq_context.socket(zmq.DEALER)
    dealer.connect(broker.endpoint)
    dealer.send_multipart(p.encode_hello(b"h", "alice"))
    assert dealer.poll(10_000)
    welcome = p.decode_event(dealer.recv_multipart())
    assert isinstance(welcome, p.Welcome) and welcome.msg_id == b"h"
    ids = [f"m{i}".encode() for i in range(500)]
    for msg_id in ids:
        dealer.send_multipart(p.encode_send(msg_id, "alice", "to myself"))
    answered: list[bytes] = []
    delivered = 0
    while len(answered) < len(ids) or delivered < len(ids):
        assert dealer.poll(10_000), f"stalled after {len(answered)} answers"
        event = p.decode_event(dealer.recv_multipart())
        if isinstance(event, p.Ack):
            answered += event.ids()
        else:
            assert isinstance(event, p.Message), event
            delivered += 1
    assert answered == ids  # each exactly once, in the order sent
    dealer.close(linger=0)


def test_history_numbers_past_their_range_are_refused_and_the_sqlite_store_lives_on(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    broker = start_broker(tmp_path, "--store", str(tmp_path / "zchat.db"))
    dealer = zmq_context.socket(zmq.DEALER)
    dealer.connect(broker.endpoint)

    def ask(command: bytes, *fields: bytes | int) -> p.ServerEvent | p.PublishedEvent:
        dealer.send_multipart(p.encode_command(command, *fields))
        assert dealer.poll(10_000), f"no answer to {command!r} {fields}"
        return p.decode_event(dealer.recv_multipart())

    try:
        assert isinstance(ask(b"HELLO", b"h", b"alice", b"", p.SIGNATURE), p.Welcome)
        assert isinstance(ask(b"SEND", b"m1", b"*", b"kept"), p.Ack)
        for before, count in (
            (2**63, 10),
            (2**64 - 1, 10),
            (0, p.MAX_HISTORY + 1),
        ):  # 2**64-1: the most MessagePack holds
            refusal = ask(b"HISTORY", b"h1", b"*", before, count)
            assert isinstance(refusal, p.Error) and (refusal.msg_id, refusal.code) == (b"h1", 400), refusal
        page = ask(b"HISTORY", b"h2", b"*", p.MAX_NUMBER, p.MAX_HISTORY)
        assert isinstance(page, p.History) and [r.body for r in page.records] == [b"kept"]
        assert ask(b"WHO", b"w") == p.Users(b"w", ("alice",))
    finally:
        dealer.close(linger=0)
        assert broker.stop() == 0


# --- failures inside the broker: a BrokerServer of our own, in a thread ----------------


@contextmanager
def serving(make_store: Callable[[], Store], **settings: Any) -> Iterator[BrokerServer]:
    """A BrokerServer on free loopback ports, made and run in a thread of its own (its
    sockets and its store's SQLite connection belong to that thread), around `make_store()`."""
    made: queue.Queue[BrokerServer | BaseException] = queue.Queue()

    def run() -> None:
        try:
            server = BrokerServer(BrokerSettings(port=0, pub_port=0, rate=0, **settings), store=make_store())
        except BaseException as e:
            made.put(e)
            raise
        made.put(server)
        server.run()

    thread = threading.Thread(target=run, name="broker", daemon=True)
    thread.start()
    server = made.get(timeout=10)
    if isinstance(server, BaseException):
        raise server
    try:
        yield server
    finally:
        server.stop()
        thread.join(10)
        assert not thread.is_alive(), "the broker did not stop"


class Raw:
    """A bare spec client: frames out, decoded events in, every wait with a deadline."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.dealer = context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(endpoint)

    def send(self, command: bytes, msg_id: bytes, *fields: str | bytes | int) -> None:
        self.dealer.send_multipart(p.encode_command(command, msg_id, *fields))

    def next(self) -> p.ServerEvent | p.PublishedEvent:
        assert self.dealer.poll(10_000), "no answer from the broker"
        return p.decode_event(self.dealer.recv_multipart())

    def until(self, last_id: bytes) -> list[p.ServerEvent | p.PublishedEvent]:
        """Every event up to and including the reply with `last_id`."""
        events = [self.next()]
        while getattr(events[-1], "msg_id", None) != last_id:
            events.append(self.next())
        return events

    def hello(self, name: str) -> None:
        self.send(b"HELLO", b"h", name, "", p.VERSION)
        assert isinstance(self.next(), p.Welcome)


def answers(events: list[p.ServerEvent | p.PublishedEvent]) -> list[tuple[str, bytes, object]]:
    """(kind, id, code or status) of each ACK id and ERROR, in order."""
    out: list[tuple[str, bytes, object]] = []
    for e in events:
        if isinstance(e, p.Ack):
            out += [("ACK", i, e.status) for i in e.ids()]
        elif isinstance(e, p.Error):
            out.append(("ERROR", e.msg_id, e.code))
    return out


def lobby_messages(sub: zmq.Socket[bytes], until_id: bytes) -> list[tuple[int, bytes]]:
    """(seq, id) of the lobby's MESSAGEs, up to the one with `until_id`."""
    seen: list[tuple[int, bytes]] = []
    while not seen or seen[-1][1] != until_id:
        assert sub.poll(10_000), f"no lobby message {until_id!r}"
        published = p.decode_published(sub.recv_multipart())
        if isinstance(published.event, p.Message):
            seen.append((published.seq, published.event.msg_id))
    return seen


def subscribed(
    context: zmq.Context[zmq.Socket[bytes]], server: BrokerServer, client: Raw, name: str
) -> zmq.Socket[bytes]:
    """A SUB on the lobby, proven live by SYNCED (PROTOCOL.md 4.5)."""
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(server.pub_endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, p.LOBBY_TOPIC)
    sub.setsockopt(zmq.SUBSCRIBE, p.private_topic(name))
    for attempt in range(50):
        client.send(b"SYNC", b"s%d" % attempt)
        client.until(b"s%d" % attempt)
        if sub.poll(200):
            assert isinstance(p.decode_published(sub.recv_multipart()).event, p.Synced)
            return sub
    raise AssertionError("the subscription never came live")


def test_a_full_disk_refuses_what_it_cannot_store_and_keeps_running(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zchat.broker")
    path = tmp_path / "z.db"
    with serving(lambda: FillingStore.open(path), store=str(path)) as server:
        store = server.core.store
        assert isinstance(store, FillingStore)
        alice, bob, carol = (Raw(zmq_context, server.router_endpoint) for _ in range(3))
        alice.hello("alice")
        bob.hello("bob")
        carol.hello("carol")
        carol.send(b"BYE", b"b")  # known, and away: mail to her is kept for her
        carol.until(b"b")
        sub = subscribed(zmq_context, server, alice, "alice")
        alice.send(b"SEND", b"m1", "*", "before")
        assert answers(alice.until(b"m1")) == [("ACK", b"m1", "accepted")]
        ((first_seq, _),) = lobby_messages(sub, b"m1")

        store.full = True
        alice.send(b"SEND", b"m2", "*", BIG)
        alice.send(b"SEND", b"m3", "carol", BIG)
        alice.send(b"SEND", b"m4", "bob", BIG)  # bob is online: handed to him, but not kept
        alice.send(b"HISTORY", b"h1", "*", 0, 10)  # shows only what is kept
        alice.send(b"PING", b"p1")
        replies = alice.until(b"p1")
        assert answers(replies) == [
            ("ERROR", b"m2", Code.STORE_FAILED),
            ("ERROR", b"m3", Code.STORE_FAILED),
            ("ERROR", b"m4", Code.STORE_FAILED),  # an ACK says kept until bob confirms it
        ]
        (history,) = [e for e in replies if isinstance(e, p.History)]
        assert [r.msg_id for r in history.records] == [b"m1"]
        delivered = bob.next()
        assert isinstance(delivered, p.Message) and delivered.msg_id == b"m4"
        who = Raw(zmq_context, server.router_endpoint)  # the broker serves everyone still
        who.send(b"WHO", b"w")
        assert isinstance(who.next(), p.Users)

        store.full = False  # space comes back: the same messages, resent, are new and kept
        alice.send(b"SEND", b"m2", "*", BIG)
        alice.send(b"SEND", b"m3", "carol", BIG)
        alice.send(b"SEND", b"m4", "bob", BIG)  # handed again (a client shows it once)
        assert answers(alice.until(b"m4")) == [
            ("ACK", b"m2", "accepted"),
            ("ACK", b"m3", "stored"),
            ("ACK", b"m4", "accepted"),
        ]
        again = bob.next()
        assert isinstance(again, p.Message) and again.msg_id == b"m4"
        # m2 was never published; the number it had stays used: subscribers see a gap.
        assert lobby_messages(sub, b"m2") == [(first_seq + 2, b"m2")]
        alice.send(b"HISTORY", b"h2", "*", 0, 10)
        (later,) = alice.until(b"h2")
        assert isinstance(later, p.History) and [r.msg_id for r in later.records] == [b"m1", b"m2"]
        carol.hello("carol")
        mail = carol.next()
        assert isinstance(mail, p.Message) and mail.msg_id == b"m3"
        carol.send(b"PING", b"p2")
        assert [type(e) for e in carol.until(b"p2")] == [p.Pong]  # m3 once, nothing else
        sub.close()
    # Said once, not per message: that it cannot store (an error), and that it stores again.
    # (The machine's open-file limit may be short of --max-clients: said too, not counted.)
    store_lines = [
        r for r in caplog.records if r.name == "zchat.broker" and "open files" not in r.getMessage()
    ]
    levels = Counter(r.levelname for r in store_lines)
    assert (levels["ERROR"], levels["WARNING"]) == (1, 1), caplog.text


def test_a_command_that_fails_in_the_broker_is_answered_500_and_the_rest_goes_on(
    zmq_context: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="zchat.broker")
    store = FaultyStore(failing={"catch_up", "expire"})  # the periodic paths fail from the start
    with serving(lambda: store, heartbeat_ms=100, timeout_ms=10_000) as server:  # a sweep every 50 ms
        alice = Raw(zmq_context, server.router_endpoint)
        alice.hello("alice")
        store.failing.add("search")
        alice.send(b"SEARCH", b"s1", "anything")
        alice.send(b"SEARCH", b"s2", "anything")
        alice.send(b"SEND", b"m1", "*", "still here")
        assert answers(alice.until(b"m1")) == [
            ("ERROR", b"s1", Code.INTERNAL),
            ("ERROR", b"s2", Code.INTERNAL),
            ("ACK", b"m1", "accepted"),
        ]
        store.failing.add("commit")  # nothing is known kept: nothing is acknowledged
        alice.send(b"SEND", b"m2", "*", "not known kept")
        assert answers(alice.until(b"m2")) == [("ERROR", b"m2", Code.INTERNAL)]
        store.failing.discard("commit")
        wait_for(lambda: store.calls["expire"] >= 1 and store.calls["catch_up"] >= 3, what="sweeps")
        alice.send(b"SEND", b"m3", "*", "and on")
        assert answers(alice.until(b"m3")) == [("ACK", b"m3", "accepted")]
    # Each failure's traceback once, however often it happened (search twice, the rest often).
    logged = Counter(str(r.exc_info[1]).split()[0] for r in caplog.records if r.exc_info)
    assert logged == {"search": 1, "catch_up": 1, "expire": 1, "commit": 1}, caplog.text


def test_a_history_in_the_same_wake_up_shows_only_what_is_stored(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """The loop played by hand, to put a message the store refuses and a HISTORY in one
    wake-up: the history is read after a commit, so it never shows what is then refused."""
    path = tmp_path / "z.db"
    store = FillingStore.open(path)
    server = BrokerServer(BrokerSettings(port=0, pub_port=0, rate=0, store=str(path)), store=store)
    alice = Raw(zmq_context, server.router_endpoint)

    def wake_up(count: int) -> None:
        for _ in range(count):
            assert server.router.poll(10_000)
            first, frames = receive(server.router)
            server._handle(first, frames, time.time(), "")
        server._feed(Flush(time.time()))

    try:
        alice.send(b"HELLO", b"h", "alice", "", p.VERSION)
        wake_up(1)
        assert isinstance(alice.next(), p.Welcome)
        alice.send(b"SEND", b"m1", "*", "kept")
        wake_up(1)
        store.commit_fails = True  # m2 goes into the transaction; its COMMIT fails
        alice.send(b"SEND", b"m2", "*", "said, not kept")
        alice.send(b"HISTORY", b"hi", "*", 0, 10)
        wake_up(2)
        replies = alice.until(b"hi")
        assert answers(replies) == [("ACK", b"m1", "accepted"), ("ERROR", b"m2", Code.STORE_FAILED)]
        assert [r.msg_id for r in replies[-1].records] == [b"m1"]  # type: ignore[union-attr]
    finally:
        alice.dealer.close()
        server.close()
