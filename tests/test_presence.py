"""PRESENCE: a run of joins and leaves in one published message (PROTOCOL.md 6.4).

The broker packs at its edge what its batching put side by side; the client
unpacks it into the JOINs and LEAVEs it stands for, each with its number.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from tests.support import Broker, start_broker, wait_for
from tests.test_connection import Harness, record
from zchat.broker.core import Reply
from zchat.broker.presence import STORM, LobbyHold, packed
from zchat.client import events as ev
from zchat.client.session import Client
from zchat.common import protocol as p

LOBBY = p.LOBBY_TOPIC
DEV = p.topic_of("#dev")


def join(seq: int, name: str, topic: bytes = LOBBY) -> p.Published:
    room = topic[:-1].decode()
    return p.Published(topic, seq, p.Join(name, 1000 + seq, room))


def leave(seq: int, name: str, reason: str = "quit", topic: bytes = LOBBY) -> p.Published:
    room = topic[:-1].decode()
    return p.Published(topic, seq, p.Leave(name, 1000 + seq, reason, room))


def said(seq: int, topic: bytes = LOBBY) -> p.Published:
    return p.Published(topic, seq, p.Message(b"m", "ann", topic[:-1].decode(), 5, b"hi"))


# --- packing, at the broker's edge ------------------------------------------------------


def test_a_run_of_joins_and_leaves_goes_out_as_one_presence() -> None:
    out = packed([join(4, "ann"), leave(5, "bob", "disconnected"), join(6, "cy")])
    assert out == [
        p.Published(LOBBY, 4, p.Presence("*", (p.Change("ann", 1004, ""), p.Change("bob", 1005, "disconnected"),
                                               p.Change("cy", 1006, ""))))
    ]  # fmt: skip
    assert [e for e in out[0].event.events()] == [  # type: ignore[union-attr]
        join(4, "ann").event,
        leave(5, "bob", "disconnected").event,
        join(6, "cy").event,
    ]


def test_a_change_on_its_own_stays_a_join_or_a_leave() -> None:
    assert packed([join(4, "ann")]) == [join(4, "ann")]
    assert packed([leave(4, "ann"), said(5)]) == [leave(4, "ann"), said(5)]


def test_a_run_ends_at_any_other_effect_a_gap_or_another_topic() -> None:
    ack = Reply(b"A", p.Ack(b"1", 5, "accepted"))
    effects = [join(1, "a"), join(2, "b"), said(3), join(4, "c"), join(6, "d"), join(1, "e", DEV),
               join(2, "f", DEV), ack, join(7, "g"), join(8, "h")]  # fmt: skip
    out = packed(effects)  # type: ignore[arg-type]
    kinds = [(type(e.event).__name__, e.topic, e.seq) if isinstance(e, p.Published) else "ACK" for e in out]
    assert kinds == [
        ("Presence", LOBBY, 1), ("Message", LOBBY, 3), ("Join", LOBBY, 4), ("Join", LOBBY, 6),
        ("Presence", DEV, 1), "ACK", ("Presence", LOBBY, 7),
    ]  # fmt: skip
    assert out[4].event.room == "#dev"  # type: ignore[union-attr]


def test_a_long_run_is_cut_at_the_limit_and_every_number_is_kept() -> None:
    out = packed([join(seq, f"u{seq}") for seq in range(1, 2 * p.MAX_PRESENCE + 2)])
    runs = [(e.seq, len(e.event.changes)) for e in out[:-1]]  # type: ignore[union-attr]
    assert runs == [(1, p.MAX_PRESENCE), (1 + p.MAX_PRESENCE, p.MAX_PRESENCE)]
    assert out[-1] == join(1 + 2 * p.MAX_PRESENCE, f"u{1 + 2 * p.MAX_PRESENCE}")  # the last on its own


# --- the codec -------------------------------------------------------------------------


def test_presence_is_read_back_as_written_and_its_bounds_are_checked() -> None:
    (run,) = packed([join(7, "ann"), leave(8, "bob")])
    assert isinstance(run, p.Published)
    frames = p.encode_published(run)
    assert frames == [LOBBY + msgpack.packb([7, "PRESENCE", "*", [["ann", 1007, ""], ["bob", 1008, "quit"]]])]
    assert p.decode_published(frames) == run
    for changes in ([], [["ann", 5, ""]] * (p.MAX_PRESENCE + 1), [["ann", 5]], [["ann", -1, ""]], "ann"):
        with pytest.raises(p.ProtocolError) as refused:
            p.decode_published([LOBBY + msgpack.packb([7, "PRESENCE", "*", changes])])
        assert refused.value.code is p.Code.MALFORMED


# --- the client engine, with no sockets ----------------------------------------------------


def test_the_client_hands_over_a_presence_as_one_event_numbered_on_from_its_own() -> None:
    h = Harness()
    h.sign_in(last_seq=3)
    h.publish(LOBBY, p.Presence("*", (p.Change("ann", 1004, ""), p.Change("bob", 1005, "timeout"))), seq=4)
    h.publish(LOBBY, said(6).event, seq=6)  # the run took 4 and 5: no gap
    h.publish(LOBBY, p.Presence("*", (p.Change("cy", 1009, ""),)), seq=9)  # 7 and 8 were missed
    runs = h.of(ev.Presences)
    assert runs == [ev.Presences("*", (("ann", 1004, ""), ("bob", 1005, "timeout"))),
                    ev.Presences("*", (("cy", 1009, ""),))]  # fmt: skip
    assert not h.of(ev.Presence)  # one event a run, not one a change
    each = [(e.name, e.event, e.reason, e.time, e.room) for run in runs for e in run.each()]
    assert each == [("ann", "join", "", ev.from_ms(1004), "*"), ("bob", "leave", "timeout", ev.from_ms(1005), "*"),
                    ("cy", "join", "", ev.from_ms(1009), "*")]  # fmt: skip
    missed = [s.detail for s in h.statuses() if "missed" in s.detail]
    assert missed == ["missed 2 event(s) of the lobby: this client read too slowly"]


def test_a_run_kept_during_a_join_is_shown_once_after_the_history_and_counted_whole() -> None:
    h = Harness()
    h.sign_in()
    h.ask("enter", "#dev")
    enter, sync = h.one(p.Enter), h.one(p.Sync)
    # Before the join's HISTORY, a run numbered 4 and 5: kept, then shown after the history.
    h.publish(DEV, p.Presence("#dev", (p.Change("ann", 7, ""), p.Change("bob", 8, ""))), seq=4)
    h.publish(p.sync_topic("alice", sync.tag), p.Synced(sync.msg_id), seq=0)
    h.deliver(p.Ack(enter.msg_id, 3, "accepted"))
    history = h.one(p.HistoryRequest)
    h.deliver(p.History(history.msg_id, "#dev", 3, (record(3, "before"),)))
    assert [e.changes for e in h.of(ev.Presences)] == [(("ann", 7, ""), ("bob", 8, ""))]
    h.publish(DEV, said(6, DEV).event, seq=6)  # 4 and 5 were the run's: no gap
    assert [m.text for m in h.of(ev.Message)] == ["before", "hi"]
    assert not [s.detail for s in h.statuses() if "missed" in s.detail]


# --- a real broker, a storm of sign-ins --------------------------------------------------


def registered(
    context: zmq.Context[zmq.Socket[bytes]], endpoint: str, prefix: str, count: int
) -> list[zmq.Socket[bytes]]:
    """`count` raw clients, `prefix`0, `prefix`1, ..., each WELCOMEd and not yet READY."""
    dealers = [context.socket(zmq.DEALER) for _ in range(count)]
    for i, dealer in enumerate(dealers):
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        dealer.send(msgpack.packb(["HELLO", f"h{i}", f"{prefix}{i}", "", p.VERSION]))
    for dealer in dealers:
        assert dealer.poll(10_000), "no WELCOME"
        assert msgpack.unpackb(dealer.recv())[0] == "WELCOME"
    return dealers


@pytest.fixture
def storm_broker(tmp_path: Path) -> Iterator[Broker]:
    running = start_broker(tmp_path)
    yield running
    running.stop()


def test_a_storm_of_joins_and_leaves_reaches_a_client_whole_and_in_order(
    storm_broker: Broker, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    count = 150
    seen: list[ev.Presence] = []
    statuses: list[str] = []
    lock = threading.Lock()

    def on_event(event: ev.Event) -> None:
        with lock:
            for one in ev.each(event):
                if isinstance(one, ev.Presence) and one.name.startswith("storm"):
                    seen.append(one)
                elif isinstance(one, ev.Status):
                    statuses.append(one.detail)

    watcher = Client("watcher", storm_broker.endpoint, on_event=on_event).connect()
    try:
        # every WELCOME first, then every READY at once: one storm
        dealers = registered(zmq_context, storm_broker.endpoint, "storm", count)
        for i, dealer in enumerate(dealers):
            dealer.send(msgpack.packb(["READY", f"r{i}"]))
        wait_for(lambda: len(seen) >= count, 20, what=f"{count} joins")
        for dealer in dealers:
            dealer.send(msgpack.packb(["BYE", "b"]))
        wait_for(lambda: len(seen) >= 2 * count, 20, what=f"{count} leaves")
        with lock:
            joins = [e.name for e in seen if e.event == "join"]
            leaves = [e.name for e in seen if e.event == "leave"]
            assert sorted(joins) == sorted(leaves) == sorted(f"storm{i}" for i in range(count))
            assert all(e.event == "join" for e in seen[:count])  # every READY came before a BYE
            assert not [s for s in statuses if "missed" in s]
        users = watcher.who().wait(5)
        assert isinstance(users, ev.Users) and users.names == ("watcher",)
    finally:
        watcher.close()


# --- a storm's lobby, held a moment (broker/presence.py) ----------------------------------


def test_a_lone_join_and_what_follows_it_go_at_once() -> None:
    hold = LobbyHold(0.1, storm=2)
    assert hold.filter([join(1, "ann")], 10.0) == [join(1, "ann")]
    assert hold.filter([said(2)], 10.01) == [said(2)]
    assert hold.filter([join(3, "bob")], 10.2) == [join(3, "bob")]  # a window after the last
    assert not hold.held and hold.wait_ms(10.2, 100) == 100


def test_the_lobbys_everyday_coming_and_going_is_not_a_storm() -> None:
    hold = LobbyHold(0.25, storm=5)  # five changes within 250 ms make a storm
    for seq in range(1, 5):  # four within 40 ms, and a broadcast among them: at once
        assert hold.filter([join(seq, f"u{seq}"), said(seq + 10)], 10.0 + seq / 100) == [
            join(seq, f"u{seq}"),
            said(seq + 10),
        ]
    assert hold.filter([join(5, "u5")], 10.3) == [join(5, "u5")]  # the first one is 290 ms old
    three = [join(6, "u6"), join(7, "u7"), join(8, "u8")]
    assert hold.filter(three, 10.31) == three  # the first four are out of the window by now
    assert hold.filter([join(9, "u9")], 10.32) == []  # the fifth within 250 ms: a storm
    assert hold.held == [join(9, "u9")]


def test_a_storm_holds_the_lobby_a_window_at_a_time_in_order() -> None:
    hold = LobbyHold(0.1, storm=2)
    room = join(7, "ann", DEV)
    assert hold.filter([join(1, "ann")], 10.0) == [join(1, "ann")]
    assert hold.filter([join(2, "bob"), room], 10.05) == [room]  # a second change: held; rooms never
    assert hold.filter([said(3), join(4, "cy")], 10.08) == []  # a broadcast waits behind it
    assert hold.due(10.1) == [] and hold.wait_ms(10.1, 100) == 51
    assert hold.due(10.15) == [join(2, "bob"), said(3), join(4, "cy")]  # not one run: a message between
    assert hold.filter([join(5, "dee"), join(6, "eve")], 10.2) == []  # the storm goes on
    (run,) = hold.due(10.25)
    assert run.event == p.Presence("*", (p.Change("dee", 1005, ""), p.Change("eve", 1006, "")))  # type: ignore[union-attr]
    assert hold.filter([said(7)], 10.3) == []  # the window after a change still holds
    assert hold.due(10.35) == [said(7)]  # no change in it: the storm is over
    assert hold.filter([said(8)], 10.36) == [said(8)]


def test_without_a_window_nothing_is_held_and_at_the_end_everything_goes() -> None:
    never = LobbyHold(0.0, storm=2)
    for seq in range(1, 5):
        assert never.filter([join(seq, f"u{seq}")], 10.0) == [join(seq, f"u{seq}")]
    hold = LobbyHold(0.1, storm=2)
    hold.filter([join(1, "ann"), join(2, "bob")], 10.0)
    assert hold.release() == [join(2, "bob")] and not hold.held


def test_a_storm_goes_out_in_a_few_long_runs_every_join_numbered_in_order(
    storm_broker: Broker, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """200 sign-ins in groups of 10 every 10 ms (a restart's storm, shaped): from its fiftieth
    change on, the lobby is held 250 ms at a time, so the rest reach a subscriber in a few
    PRESENCE messages, not one a group; every change numbered, in order."""
    count, group = 200, 10
    sub = zmq_context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, LOBBY)
    sub.connect(storm_broker.pub_endpoint)
    prober = Client("prober", storm_broker.endpoint).connect()

    def heard() -> bool:  # a broadcast reaches the SUB: it is connected
        prober.broadcast("probe")
        return bool(sub.poll(100)) and bool(sub.recv_multipart())

    try:
        wait_for(heard, 10, what="the SUB to hear the lobby")
    finally:
        prober.close()
    while sub.poll(200):  # the probes and the prober's own presence
        sub.recv_multipart()
    dealers = registered(zmq_context, storm_broker.endpoint, "gust", count)
    for start in range(0, count, group):
        for i in range(start, start + group):
            dealers[i].send(msgpack.packb(["READY", f"r{i}"]))
        threading.Event().wait(0.01)  # the storm's shape (a pace), not a synchronisation
    numbers: list[int] = []
    ranges: list[tuple[int, int]] = []  # each message's first and last number
    deadline = time.monotonic() + 20
    while len(numbers) < count and time.monotonic() < deadline:
        if not sub.poll(100):
            continue
        published = p.decode_published(sub.recv_multipart())
        event = published.event
        if isinstance(event, p.Presence) and any(c.name.startswith("gust") for c in event.changes):
            taken = len(event.changes)
        elif isinstance(event, p.Join) and event.name.startswith("gust"):
            taken = 1
        else:
            continue
        ranges.append((published.seq, published.seq + taken - 1))
        numbers.extend(range(published.seq, published.seq + taken))
    assert len(numbers) == count and numbers == list(range(numbers[0], numbers[0] + count))
    storm = numbers[0] + STORM - 1  # the change that starts the hold
    held = [r for r in ranges if r[1] >= storm]
    assert len(held) <= 6, (
        f"{len(held)} messages for the {count - STORM + 1} changes from the {STORM}th: {ranges}"
    )


def test_flush_waits_for_our_own_broadcast_held_in_a_storm(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A script's last line shows before it exits: flush() waits for the lobby to give our
    message back, though a storm holds the lobby (here 500 ms) after its ACK."""
    broker = start_broker(tmp_path, "--presence-hold", "500")
    try:
        with Client("ann", broker.endpoint) as ann:
            dealers = registered(zmq_context, broker.endpoint, "gale", 60)
            for i, dealer in enumerate(dealers):  # 60 joins at once: a storm
                dealer.send(msgpack.packb(["READY", f"r{i}"]))
            wait_for(lambda: all(d.poll(0) for d in dealers), 10, what="the READYs' ACKs")
            sent = ann.broadcast("the last line")  # held behind the storm's joins
            assert ann.flush(10)
            assert isinstance(sent.wait(0), ev.Ack)
            shown = []
            while (event := ann.next_event(0)) is not None:
                shown.append(event)
            assert "the last line" in [e.text for e in shown if isinstance(e, ev.Message)], shown
    finally:
        broker.stop()
