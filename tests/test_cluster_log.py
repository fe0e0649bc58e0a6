"""cluster/log.py without NATS: every kind of entry comes out of the log as it went in, a
wake-up's entries go in as one message, and each broker's core drops a message that reached
the log twice (broker/core.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_core import deliver, events, feed, make_core, register, replies, say
from zchat.broker.core import BrokerCore, Deliver, Delivered, Relayed, RelayStored
from zchat.broker.relay import (
    DUPLICATE_WINDOW_MS,
    Entry,
    KeptLive,
    Known,
    Mail,
    Receipted,
    ReceiptsTaken,
    RoomEvent,
    Taken,
    Waiting,
)
from zchat.broker.sqlite_store import SqliteStore
from zchat.broker.store import MemoryStore, Store, StoredMessage
from zchat.cluster.log import BATCH_ENTRIES, ClusterLog, read, read_all, write
from zchat.cluster.subjects import BATCH_SUBJECT
from zchat.common import protocol as p

KEPT = StoredMessage("", 0, b"m1", "Ann", "bob", 1_700_000_000_000, "héllo".encode())


@pytest.mark.parametrize(
    "entry",
    [
        RoomEvent("#tea", p.Message(b"m2", "Ann", "#tea", 1_700_000_000_001, b"hi")),
        RoomEvent(p.EVERYONE, p.Leave("Ann", 1_700_000_000_002, "timeout")),
        Mail("bob", KEPT),
        KeptLive("bob", KEPT),
        Taken("bob", "ann", b"m1"),
        Receipted("ann", "Bob", 1_700_000_000_003, (b"m1", b"m3")),
        ReceiptsTaken("ann", (b"m1", b"m3")),
        Known("ann"),
    ],
    ids=lambda entry: type(entry).__name__,
)
def test_an_entry_comes_back_as_written(entry: Entry) -> None:
    assert read(*write(entry)) == entry


class FakeLink:
    """What ClusterLog asks of the link: requests, numbered, kept."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, tuple[Any, ...]]] = []

    def request(self, kind: str, *args: Any) -> int:
        self.requests.append((kind, args))
        return len(self.requests)


class Relays:
    """A Relay that keeps what the core hands it, in order."""

    def __init__(self) -> None:
        self.entries: list[tuple[Entry, Waiting | None]] = []

    def relay(self, entry: Entry, waiting: Waiting | None = None) -> None:
        self.entries.append((entry, waiting))

    def take(self) -> list[tuple[Entry, Waiting | None]]:
        taken, self.entries = self.entries, []
        return taken


def cluster_core(store: Store | None = None) -> tuple[BrokerCore, Relays]:
    relays = Relays()
    core = make_core(store, heartbeat_ms=1000, timeout_ms=3000, max_body=100)
    core.relay = relays
    return core, relays


def logged(core: BrokerCore, entry: Entry, position: int, now: float = 2.0) -> list[Any]:
    return feed(core, Relayed(entry, position), now)


ENTRIES: list[Entry] = [
    RoomEvent("#dev", p.Message(b"m1", "alice", "#dev", 1000, b"hi")),
    RoomEvent("*", p.Join("bob", 1001)),
    Mail("carol", StoredMessage("", 0, b"m2", "alice", "carol", 1002, b"later")),
    KeptLive("bob", StoredMessage("", 0, b"m3", "alice", "bob", 1003, b"now")),
    Taken("bob", "alice", b"m3"),
    Receipted("alice", "bob", 1004, (b"m3",)),
    ReceiptsTaken("alice", (b"m3",)),
    Known("dave"),
]


def test_the_entries_of_a_wake_up_go_in_as_one_message_read_back_in_their_order() -> None:
    link = FakeLink()
    log = ClusterLog(link)  # type: ignore[arg-type]
    waiting = [Waiting(b"A", "alice", b"m1", 1000), Waiting(b"A", "alice", b"m2", 1002, "stored")]
    log.relay(ENTRIES[0], waiting[0])
    log.relay(ENTRIES[1])
    log.relay(ENTRIES[2], waiting[1])
    for entry in ENTRIES[3:]:
        log.relay(entry)
    assert link.requests == []  # nothing goes before the wake-up's end
    log.flush()
    log.flush()  # nothing more to send
    ((kind, (subject, payload)),) = link.requests
    assert (kind, subject) == ("relay", BATCH_SUBJECT)
    assert read_all(subject, payload) == ENTRIES
    assert log.waiting == {1: waiting}  # each acknowledged once the one PubAck comes


def test_a_stream_of_single_entries_is_still_read() -> None:
    for entry in ENTRIES:
        assert read_all(*write(entry)) == [entry]


def test_a_batch_goes_once_it_is_full() -> None:
    link = FakeLink()
    log = ClusterLog(link)  # type: ignore[arg-type]
    for i in range(BATCH_ENTRIES + 1):
        log.relay(Known(f"u{i}"))
    assert len(link.requests) == 1
    log.flush()
    sizes = [len(read_all(*args)) for _, args in link.requests]
    assert sizes == [BATCH_ENTRIES, 1]


def test_a_room_message_in_the_log_twice_is_numbered_and_published_once() -> None:
    core, relays = cluster_core()
    register(core, b"A", "alice")
    relays.take()
    message = p.Message(b"m1", "alice", "*", 1000, b"hi")
    first = logged(core, RoomEvent("*", message), 1)
    again = logged(core, RoomEvent("*", message), 2)  # a resend, through another broker
    assert events(first) == [message] and events(again) == []
    after = logged(core, RoomEvent("*", p.Message(b"m2", "alice", "*", 1001, b"more")), 3)
    assert [e.seq for e in after if isinstance(e, p.Published)] == [2]  # no number was used
    assert [m.seq for m in core.store.room_history("*", 10**9, 10)] == [1, 2]
    assert core.counters["duplicate.logged"] == 1


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_resend_past_the_duplicate_window_is_read_as_new_by_every_store(kind: str, tmp_path: Path) -> None:
    """As JetStream's window did: the decision depends on the log alone, not on how long a
    broker's store remembers ids (SQLite for days, memory the newest 100,000)."""
    core, _ = cluster_core(SqliteStore.open(tmp_path / "z.db") if kind == "sqlite" else MemoryStore())
    first = p.Message(b"m1", "alice", "*", 1_000, b"hi")
    within = first._replace(time_ms=1_000 + DUPLICATE_WINDOW_MS)
    past = first._replace(time_ms=2_000 + 2 * DUPLICATE_WINDOW_MS)
    assert events(logged(core, RoomEvent("*", first), 1)) == [first]
    assert events(logged(core, RoomEvent("*", within), 2)) == []
    assert events(logged(core, RoomEvent("*", past), 3)) == [past]


def test_mail_in_the_log_twice_is_kept_once() -> None:
    core, _ = cluster_core()
    mail = Mail("carol", StoredMessage("", 0, b"m2", "alice", "carol", 1002, b"later"))
    logged(core, mail, 1)
    logged(core, mail, 2)
    assert [m.msg_id for m in core.store.mailbox("carol")] == [b"m2"]


def test_a_private_message_kept_twice_is_kept_once_and_a_resend_meanwhile_is_a_duplicate() -> None:
    core, relays = cluster_core()
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    relays.take()
    delivery = deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 2.0))
    assert replies(feed(core, Delivered(delivery), 2.0), b"A") == []  # acknowledged once logged
    ((kept, waiting),) = relays.take()
    assert isinstance(kept, KeptLive) and waiting is not None
    resent = say(core, b"A", p.Send(b"m1", "bob", b"hi"), 2.1)  # handed over: not again
    assert replies(resent, b"A") == [p.Ack(b"m1", 2100, "accepted")] and relays.take() == []
    assert replies(feed(core, RelayStored(waiting, True), 2.2), b"A") == [p.Ack(b"m1", 2000, "accepted")]
    logged(core, kept, 1)
    logged(core, kept, 2)  # the same, logged by another broker the sender failed over to
    assert [m.msg_id for m in core.store.mailbox("bob")] == [b"m1"]
    assert core.counters["duplicate.logged"] == 1


def test_a_resend_before_the_other_broker_says_it_was_delivered_is_kept_and_delivered_once() -> None:
    """The outcome of a Deliver to a session on another broker comes back wake-ups later:
    a resend meanwhile waits for it, then is a duplicate like one after it."""
    core, relays = cluster_core()
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    relays.take()
    delivery = deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 2.0))
    assert say(core, b"A", p.Send(b"m1", "bob", b"hi"), 2.1) == []  # waits for the first's outcome
    settled = feed(core, Delivered(delivery), 2.2)
    assert [e for e in settled if isinstance(e, Deliver)] == []
    assert replies(settled, b"A") == [p.Ack(b"m1", 2100, "accepted")]  # the resend's: the first's waits
    ((kept, waiting),) = relays.take()  # logged once
    assert isinstance(kept, KeptLive) and waiting is not None
    assert replies(feed(core, RelayStored(waiting, True), 2.3), b"A") == [p.Ack(b"m1", 2000, "accepted")]


def test_a_private_message_the_log_did_not_keep_goes_the_whole_way_again_when_resent() -> None:
    core, relays = cluster_core()
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    relays.take()
    feed(core, Delivered(deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 2.0))), 2.0)
    ((kept, waiting),) = relays.take()
    assert waiting is not None
    refused = replies(feed(core, RelayStored(waiting, False), 7.0), b"A")
    assert [type(e) for e in refused] == [p.Error]
    again = say(core, b"A", p.Send(b"m1", "bob", b"hi"), 7.1)
    assert deliver(again).message.msg_id == b"m1"  # the client shows it once (PROTOCOL.md 13.4)
    # Had the first been stored after all, the log holds it twice: kept once all the same.
    logged(core, kept, 1)
    logged(core, kept, 2)
    assert len(core.store.mailbox("bob")) == 1
