"""The broker's engine, without sockets: typed inputs in, typed effects out."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.stores import FaultyStore, FillingStore
from zchat.broker.core import (
    Blocked,
    BrokerCore,
    Command,
    Deliver,
    Delivered,
    Disconnected,
    Effect,
    Flush,
    Hangup,
    Input,
    Publish,
    Reply,
    Shutdown,
    Tick,
    Unblocked,
    Undelivered,
    Unreadable,
    Watched,
)
from zchat.broker.names import LocalNames, Session
from zchat.broker.settings import BrokerSettings
from zchat.broker.store import MemoryStore, Store, StoreFailed
from zchat.common import protocol as p
from zchat.common.protocol import Code

PUB = "tcp://127.0.0.1:5556"


def make_core(store: Store | None = None, **settings: Any) -> BrokerCore:
    """A core with no flood control unless a test asks for it, and tokens token0, token1, ..."""
    tokens = (f"token{i}" for i in itertools.count())
    return BrokerCore(BrokerSettings(**{"rate": 0.0, **settings}), PUB, store=store or MemoryStore(),
                      new_token=lambda: next(tokens))  # fmt: skip


@pytest.fixture
def core() -> BrokerCore:
    return make_core(heartbeat_ms=1000, timeout_ms=3000, max_body=100)


def feed(core: BrokerCore, event: Input, now: float | None = None) -> list[Effect]:
    """One input, then the Flush the shell sends at the end of a wake-up: all it caused."""
    when = now if now is not None else getattr(event, "now", 0.0)
    return [*core.handle(event), *core.handle(Flush(when))]


def say(
    core: BrokerCore, peer: bytes, command: p.ClientCommand, now: float = 1.0, key: str = ""
) -> list[Effect]:
    return feed(core, Command(peer, command, now, key))


def receive(core: BrokerCore, peer: bytes, frames: list[bytes], now: float = 1.0) -> list[Effect]:
    """Frames decoded as the shell does: what cannot be read is an input of its own."""
    try:
        return say(core, peer, p.decode_command(frames), now)
    except p.ProtocolError as e:
        return feed(core, Unreadable(peer, e, now))


def replies(effects: Sequence[Effect], peer: bytes) -> list[p.ServerEvent]:
    return [e.event for e in effects if isinstance(e, Reply) and e.peer == peer]


def published(effects: Sequence[Effect]) -> list[p.Published]:
    return [e for e in effects if type(e) is Publish]


def events(effects: Sequence[Effect]) -> list[p.PublishedEvent]:
    return [e.event for e in published(effects)]


def deliver(effects: Sequence[Effect]) -> Deliver:
    (delivery,) = [e for e in effects if isinstance(e, Deliver)]
    return delivery


def register(core: BrokerCore, peer: bytes, name: str, now: float = 0.0) -> list[Effect]:
    """HELLO, then the READY that makes the client's JOIN public."""
    return [*say(core, peer, p.Hello(b"h", name, ""), now), *say(core, peer, p.Ready(b"r"), now)]


def error_code(effects: Sequence[Effect], peer: bytes) -> int:
    (event,) = replies(effects, peer)
    assert isinstance(event, p.Error), event
    return event.code


def test_hello_welcomes_and_ready_announces_the_join_once(core: BrokerCore) -> None:
    hello = say(core, b"A", p.Hello(b"h", "alice", ""), 12.5)
    assert replies(hello, b"A") == [p.Welcome(b"h", "alice", "token0", PUB, 1000, 3000, 100, 12500)]
    assert published(hello) == []  # the newcomer cannot hear the lobby yet
    sync = say(core, b"A", p.Sync(b"s1"), 12.6)
    assert replies(sync, b"A") == [p.Ack(b"s1", 12600, "accepted")]
    assert published(sync) == [p.Published(p.private_topic("alice"), 0, p.Synced(b"s1"))]
    ready = say(core, b"A", p.Ready(b"r1"), 12.7)
    assert replies(ready, b"A") == [p.Ack(b"r1", 12700, "accepted")]
    assert published(ready) == [p.Published(p.LOBBY_TOPIC, 1, p.Join("alice", 12700))]
    assert published(say(core, b"A", p.Ready(b"r2"), 12.8)) == []


def test_a_client_never_ready_leaves_unannounced(core: BrokerCore) -> None:
    say(core, b"A", p.Hello(b"h", "alice", ""), 0.0)
    assert published(say(core, b"A", p.Bye(b"b"), 1.0)) == []


def test_names_are_unique_without_regard_to_case(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    assert error_code(say(core, b"B", p.Hello(b"h", "ALICE", ""), 0.0), b"B") == Code.NAME_TAKEN


def test_private_message_goes_to_the_recipient_only_stamped_by_the_broker(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    register(core, b"C", "carol")
    sent = say(core, b"A", p.Send(b"m1", "BOB", b"hi"), 2.0)
    assert [type(e) for e in sent] == [Deliver]  # nobody is answered before the delivery's outcome
    delivery = deliver(sent)
    assert (delivery.peer, delivery.sender) == (b"B", b"A")
    assert delivery.message == p.Message(b"m1", "alice", "bob", 2000, b"hi")
    assert replies(feed(core, Delivered(delivery), 2.0), b"A") == [p.Ack(b"m1", 2000, "accepted")]


def test_extra_fields_cannot_forge_the_sender(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    frames = p.encode_command(b"SEND", b"m1", "bob", "hi", "carol", 0)
    assert deliver(receive(core, b"A", frames)).message.sender == "alice"


def test_broadcast_is_published_in_sequence_and_acknowledged(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    effects = say(core, b"A", p.Send(b"m1", "*", b"hello"), 1.0)
    assert published(effects) == [
        p.Published(p.LOBBY_TOPIC, 2, p.Message(b"m1", "alice", "*", 1000, b"hello"))
    ]
    assert replies(effects, b"A") == [p.Ack(b"m1", 1000, "accepted")]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (p.encode(p.Send(b"m", "nobody", b"x")), Code.UNKNOWN_RECIPIENT),
        (p.encode(p.Send(b"m", "#room", b"x")), Code.NOT_MEMBER),
        (p.encode(p.Send(b"m", "#", b"x")), Code.UNKNOWN_RECIPIENT),
        (p.encode(p.Send(b"m", "", b"x")), Code.UNKNOWN_RECIPIENT),
        (p.encode(p.Send(b"m", "*", b"x" * 101)), Code.TOO_LARGE),
        (p.encode_command(b"SEND", b"m", b"*", b"\xc3\x28"), Code.BAD_ENCODING),
        (p.encode_command(b"SEND", b"m", b"*"), Code.MALFORMED),
        (p.encode_command(b"DANCE", b"m"), Code.UNKNOWN_COMMAND),
        ([b"ZCHAT/9", b"SEND"], Code.BAD_VERSION),
        (p.encode_command(b"HELLO", b"m", b"bob", b"", b"ZCHAT/9"), Code.BAD_VERSION),
        ([], Code.MALFORMED),
        (p.encode(p.Hello(b"m", "bob", "")), Code.ALREADY_REGISTERED),
        (p.encode(p.Send(b"m", "a" * 33, b"x")), Code.UNKNOWN_RECIPIENT),  # can be no one's name
        (p.encode(p.Send(b"m", "#" + "a" * 33, b"x")), Code.UNKNOWN_RECIPIENT),
        (p.encode_command(b"ENTER", b"m", "dev"), Code.MALFORMED),  # a room field of the wrong form
        (p.encode_command(b"ENTER", b"m", "#" + "a" * 33), Code.MALFORMED),
        (p.encode_command(b"HISTORY", b"m", "*", 0, 501), Code.MALFORMED),  # more than a page
        (p.encode_command(b"HISTORY", b"m", "*", 2**63, 10), Code.MALFORMED),
        (p.encode_command(b"RECEIVED", b"m", "not a name", b"x1"), Code.INVALID_NAME),
        (p.encode(p.Exit(b"m", "*")), Code.MALFORMED),  # everyone is always in the lobby
    ],
)
def test_bad_input_is_refused_with_its_code(core: BrokerCore, frames: list[bytes], code: Code) -> None:
    register(core, b"A", "alice")
    assert error_code(receive(core, b"A", frames), b"A") == code
    assert core.counters[f"refused.{code.name.lower()}"] == 1


@pytest.mark.parametrize("name", ["", "a" * 33, "al ice", "*", "#x", "é"])
def test_invalid_names_are_refused(core: BrokerCore, name: str) -> None:
    assert error_code(receive(core, b"A", p.encode_hello(b"h", name), 0.0), b"A") == Code.INVALID_NAME


@pytest.mark.parametrize(
    "command",
    [p.Send(b"m", "*", b"x"), p.Ping(b"m"), p.Sync(b"m"), p.Ready(b"m"), p.Bye(b"m"), p.Enter(b"m", "#a"),
     p.Exit(b"m", "#a"), p.Rooms(b"m"), p.Names(b"m", "*"), p.HistoryRequest(b"m", "*", 0, 1),
     p.Search(b"m", "x"), p.Received(b"m", "bob", (b"x",))],
    ids=lambda command: type(command).__name__,
)  # fmt: skip
def test_commands_before_hello_are_refused(core: BrokerCore, command: p.ClientCommand) -> None:
    assert error_code(say(core, b"A", command, 0.0), b"A") == Code.NOT_REGISTERED


def test_who_lists_online_names_even_before_hello(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    register(core, b"A", "Alice")
    assert replies(say(core, b"X", p.Who(b"w"), 0.0), b"X") == [p.Users(b"w", ("Alice", "bob"))]


def test_silent_client_is_dropped_after_the_timeout_and_its_name_freed(core: BrokerCore) -> None:
    register(core, b"A", "alice", now=0.0)
    register(core, b"B", "bob", now=0.0)
    say(core, b"B", p.Ping(b"p"), 2.5)
    assert feed(core, Tick(3.0)) == []
    assert events(feed(core, Tick(3.1))) == [p.Leave("alice", 3100, "timeout")]
    assert replies(register(core, b"C", "alice", now=3.2), b"C")[0].name == "alice"  # type: ignore[union-attr]


def test_a_tick_announces_nothing_until_the_flush(core: BrokerCore) -> None:
    register(core, b"A", "alice", now=0.0)
    assert core.handle(Tick(3.1)) == []  # dropped, its LEAVE waiting for the commit
    assert core.holder("alice") is None
    assert events(core.handle(Flush(3.1))) == [p.Leave("alice", 3100, "timeout")]


def test_a_watched_session_is_not_timed_out_however_long_it_is_silent(core: BrokerCore) -> None:
    # libzmq's heartbeats keep its connection alive: the client sends no PING of its own.
    register(core, b"A", "alice", now=0.0)
    core.handle(Watched(b"A"))
    assert feed(core, Tick(3600.0)) == []
    assert core.holder("alice") is not None


def test_a_closed_connection_is_announced_as_left_disconnected_and_its_name_freed(core: BrokerCore) -> None:
    register(core, b"A", "alice", now=0.0)
    register(core, b"B", "bob", now=0.0)
    core.handle(Watched(b"A"))
    assert events(feed(core, Disconnected(b"A", 1.5))) == [p.Leave("alice", 1500, "disconnected")]
    assert core.holder("alice") is None and core.holder("bob") is not None
    assert replies(register(core, b"C", "alice", now=1.6), b"C")[0].name == "alice"  # type: ignore[union-attr]


def test_the_disconnect_of_a_replaced_connection_leaves_the_session_alone(core: BrokerCore) -> None:
    register(core, b"A", "alice", now=0.0)
    core.handle(Watched(b"A"))
    say(core, b"A2", p.Hello(b"h2", "alice", "token0"), 1.0)  # the client, back on a new connection
    assert feed(core, Disconnected(b"A", 1.1)) == []  # the old one closes: nobody left
    assert core.holder("alice") is not None
    # Until the shell watches the new connection, the sweep times it out as before.
    assert events(feed(core, Tick(4.2))) == [p.Leave("alice", 4200, "timeout")]


def test_the_disconnect_of_a_session_taken_over_on_another_broker_ends_nothing() -> None:
    # A cluster's broker whose client failed over: another broker holds the name now (the
    # registry says so, as ClusterNames does from the bucket). The old connection closing
    # here must not announce a LEAVE of a session that goes on there.
    store = MemoryStore()
    names = LocalNames(store)
    core = BrokerCore(
        BrokerSettings(rate=0.0, heartbeat_ms=1000, timeout_ms=3000), PUB, store=store, names=names
    )
    register(core, b"A", "alice", now=0.0)
    register(core, b"B", "bob", now=0.0)
    core.handle(Watched(b"A"))
    held = names.by_key["alice"]
    names.by_key["alice"] = Session(
        b"\0@cluster\0other\0alice", "alice", held.token, 0.0, "alice", announced=True
    )
    assert feed(core, Disconnected(b"A", 1.5)) == []
    assert b"A" not in core.by_peer and core.holder("alice") is names.by_key["alice"]
    assert events(feed(core, Disconnected(b"B", 1.6))) == [
        p.Leave("bob", 1600, "disconnected")
    ]  # a local one


def test_a_disconnect_after_bye_announces_nothing_more(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    core.handle(Watched(b"A"))
    assert events(say(core, b"A", p.Bye(b"b"), 1.0)) == [p.Leave("alice", 1000, "quit")]
    assert feed(core, Disconnected(b"A", 1.1)) == []


def test_a_watched_stuck_client_is_still_dropped_as_stuck(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    core.handle(Watched(b"B"))
    core.handle(Blocked(b"B", 1.0))  # its connection is alive, but it reads nothing
    assert events(feed(core, Tick(4.5))) == [p.Leave("bob", 4500, "stuck")]


def test_bye_acknowledges_and_announces_quit(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    effects = say(core, b"A", p.Bye(b"b"), 1.0)
    assert replies(effects, b"A") == [p.Ack(b"b", 1000, "accepted")]
    assert events(effects) == [p.Leave("alice", 1000, "quit")]


def test_resume_token_moves_the_session_to_a_new_connection_silently(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    effects = say(core, b"A2", p.Hello(b"h2", "alice", "token0"), 1.0)
    assert published(effects) == []
    assert replies(effects, b"A2")[0].token == "token0"  # type: ignore[union-attr]
    # The old connection, should it still be alive, hears why, so that it does not take the session back.
    (replaced,) = replies(effects, b"A")
    assert isinstance(replaced, p.Replaced) and "another connection" in replaced.reason
    # It is told before the new connection's WELCOME.
    assert [type(e.event) for e in effects if isinstance(e, Reply)] == [p.Replaced, p.Welcome]
    assert error_code(say(core, b"A", p.Ping(b"p"), 1.0), b"A") == Code.NOT_REGISTERED
    assert error_code(say(core, b"X", p.Hello(b"h", "alice", "wrong"), 1.0), b"X") == Code.NAME_TAKEN


def test_a_failed_delivery_is_an_input_refused_when_busy_or_kept_when_gone(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    delivery = deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 1.0))
    assert error_code(feed(core, Undelivered(delivery, busy=True, now=1.0)), b"A") == Code.RECIPIENT_BUSY
    effects = feed(core, Undelivered(delivery, busy=False, now=1.5))  # bob's connection is gone
    assert replies(effects, b"A") == [p.Ack(b"m1", 1500, "stored")]
    assert events(effects) == [p.Leave("bob", 1500, "disconnected")]
    # bob comes back: the message is waiting, with its original id and time
    back = register(core, b"B2", "bob", now=5.0)
    assert p.Message(b"m1", "alice", "bob", 1000, b"hi") in replies(back, b"B2")


def resend_before_the_outcome(core: BrokerCore) -> Deliver:
    """alice sends bob m1 and, before its delivery's outcome is back (in a cluster it comes
    from bob's broker, wake-ups later), the same again: the first's Deliver."""
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    first = deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 1.0))
    assert say(core, b"A", p.Send(b"m1", "bob", b"hi"), 1.1) == []  # neither delivered nor answered yet
    return first


def test_a_resend_before_its_first_is_delivered_is_answered_after_it_and_not_delivered_again(
    core: BrokerCore,
) -> None:
    first = resend_before_the_outcome(core)
    settled = feed(core, Delivered(first), 1.2)
    assert [e for e in settled if isinstance(e, Deliver)] == []
    assert replies(settled, b"A") == [p.Ack(b"m1", 1000, "accepted"), p.Ack(b"m1", 1100, "accepted")]
    assert core.counters["duplicate"] == 1
    assert [m.msg_id for m in core.store.mailbox("bob")] == [b"m1"]  # kept once, until bob confirms


def test_a_resend_of_one_refused_busy_meanwhile_is_sent_as_a_new_message(core: BrokerCore) -> None:
    first = resend_before_the_outcome(core)
    settled = feed(core, Undelivered(first, busy=True, now=1.3))
    # The first is refused (never reached bob), and the resend is what the refusal asks for.
    assert [type(e) for e in replies(settled, b"A")] == [p.Error]
    again = deliver(settled)
    assert again.message == p.Message(b"m1", "alice", "bob", 1300, b"hi")
    assert replies(feed(core, Delivered(again), 1.4), b"A") == [p.Ack(b"m1", 1300, "accepted")]


def test_a_resend_of_one_whose_recipient_went_meanwhile_is_answered_stored_and_kept_once(
    core: BrokerCore,
) -> None:
    first = resend_before_the_outcome(core)
    settled = feed(core, Undelivered(first, busy=False, now=1.5))
    assert [e for e in settled if isinstance(e, Deliver)] == []
    assert replies(settled, b"A") == [p.Ack(b"m1", 1500, "stored", (b"m1",))]
    back = register(core, b"B2", "bob", now=5.0)
    assert [e.msg_id for e in replies(back, b"B2") if isinstance(e, p.Message)] == [b"m1"]


def test_a_resend_whose_sender_left_before_its_first_was_delivered_is_not_answered(
    core: BrokerCore,
) -> None:
    first = resend_before_the_outcome(core)
    feed(core, Disconnected(b"A", 1.2))
    assert replies(feed(core, Delivered(first), 1.3), b"A") == [p.Ack(b"m1", 1000, "accepted")]


def test_shutdown_tells_every_client_and_refuses_what_follows(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    effects = core.handle(Shutdown(5.0))
    assert replies(effects, b"A") == [p.Shutdown("the broker is shutting down")]
    assert events(effects) == [p.Shutdown("the broker is shutting down")]
    assert error_code(say(core, b"A", p.Send(b"m", "*", b"x"), 5.0), b"A") == Code.SHUTTING_DOWN


def test_shutdown_first_answers_what_was_held(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    core.handle(Command(b"A", p.Send(b"m1", "*", b"bye all"), 5.0))
    effects = core.handle(Shutdown(5.0))
    assert [type(e) for e in effects] == [Publish, Reply, Reply, Publish]
    assert replies(effects, b"A") == [
        p.Ack(b"m1", 5000, "accepted"),
        p.Shutdown("the broker is shutting down"),
    ]


def test_private_message_to_an_offline_known_user_is_kept_in_order_with_receipts(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    say(core, b"B", p.Bye(b"bye"), 0.5)
    register(core, b"A", "alice")
    for i in range(3):
        answer = replies(say(core, b"A", p.Send(b"m%d" % i, "bob", b"t%d" % i), 1.0 + i), b"A")
        assert answer == [p.Ack(b"m%d" % i, 1000 + 1000 * i, "stored")]
    say(core, b"A", p.Bye(b"bye"), 4.0)  # alice is away when bob reads
    back = register(core, b"B2", "bob", now=5.0)
    mail = [e for e in replies(back, b"B2") if isinstance(e, p.Message)]
    assert [(m.msg_id, m.body, m.time_ms) for m in mail] == [
        (b"m0", b"t0", 1000), (b"m1", b"t1", 2000), (b"m2", b"t2", 3000)
    ]  # fmt: skip
    say(core, b"B2", p.Received(b"r", "alice", (b"m0", b"m1", b"m2")), 6.0)
    assert core.store.mailbox("bob") == []
    again = register(core, b"A2", "alice", now=7.0)
    assert p.Receipt("bob", 6000, (b"m0", b"m1", b"m2")) in replies(again, b"A2")


def test_a_resent_message_is_acknowledged_again_but_not_delivered_twice(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    feed(core, Delivered(deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 1.0))), 1.0)
    again = say(core, b"A", p.Send(b"m1", "bob", b"hi"), 2.0)
    assert again == [Reply(b"A", p.Ack(b"m1", 2000, "accepted"))]
    say(core, b"A", p.Send(b"m2", "*", b"x"), 2.0)
    assert published(say(core, b"A", p.Send(b"m2", "*", b"x"), 3.0)) == []


def test_room_messages_go_to_the_room_topic_for_members_only(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    entered = say(core, b"A", p.Enter(b"e", "#dev"), 1.0)
    assert replies(entered, b"A") == [p.Ack(b"e", 1000, "accepted")]
    assert published(entered) == [p.Published(b"#dev\x00", 1, p.Join("alice", 1000, "#dev"))]
    said = say(core, b"A", p.Send(b"m1", "#dev", b"hi devs"), 2.0)
    assert published(said) == [
        p.Published(b"#dev\x00", 2, p.Message(b"m1", "alice", "#dev", 2000, b"hi devs"))
    ]
    assert error_code(say(core, b"B", p.Send(b"m2", "#dev", b"me too"), 2.0), b"B") == Code.NOT_MEMBER
    assert replies(say(core, b"B", p.Rooms(b"r"), 2.0), b"B") == [p.RoomList(b"r", (("#dev", 1),), ())]
    assert replies(say(core, b"B", p.Names(b"n", "#dev"), 2.0), b"B") == [p.Users(b"n", ("alice",))]
    left = say(core, b"A", p.Exit(b"x", "#dev"), 3.0)
    assert events(left) == [p.Leave("alice", 3000, "left", "#dev")]


def test_history_pages_back_from_the_newest(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    say(core, b"A", p.Enter(b"e", "#dev"), 0.0)  # seq 1 is the JOIN
    for i in range(5):
        say(core, b"A", p.Send(b"m%d" % i, "#dev", b"t%d" % i), 1.0 + i)  # seqs 2..6
    (latest,) = replies(say(core, b"A", p.HistoryRequest(b"h", "#dev", 0, 2), 9.0), b"A")
    assert isinstance(latest, p.History) and latest.last_seq == 6
    assert [r.body for r in latest.records] == [b"t3", b"t4"]
    (older,) = replies(say(core, b"A", p.HistoryRequest(b"h", "#dev", 5, 10), 9.0), b"A")
    assert isinstance(older, p.History) and [r.seq for r in older.records] == [2, 3, 4]
    register(core, b"B", "bob")
    assert error_code(say(core, b"B", p.HistoryRequest(b"h", "#dev", 0, 2), 9.0), b"B") == Code.NOT_MEMBER


def test_search_finds_only_what_the_user_may_see(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    say(core, b"A", p.Enter(b"e", "#secret"), 0.0)
    say(core, b"A", p.Send(b"m1", "#secret", b"the plan is ready"), 1.0)
    say(core, b"A", p.Send(b"m2", "*", b"the plan for lunch"), 2.0)
    (found,) = replies(say(core, b"B", p.Search(b"s", "plan"), 3.0), b"B")
    assert isinstance(found, p.Found) and [r.body for r in found.records] == [b"the plan for lunch"]
    (mine,) = replies(say(core, b"A", p.Search(b"s", "plan"), 3.0), b"A")
    assert isinstance(mine, p.Found) and len(mine.records) == 2


def test_a_flooding_client_is_refused_with_a_retry_after_then_disconnected() -> None:
    core = make_core(rate=10.0, burst=5.0)
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    accepted = [say(core, b"A", p.Send(b"m%d" % i, "*", b"x"), 1.0) for i in range(5)]
    assert all(replies(a, b"A") == [p.Ack(b"m%d" % i, 1000, "accepted")] for i, a in enumerate(accepted))
    refusal = say(core, b"A", p.Send(b"m5", "*", b"x"), 1.0)
    assert refusal == [Reply(b"A", p.Error(b"m5", Code.RATE_LIMITED, "slow down: retry after 100 ms", 100))]
    assert replies(say(core, b"A", p.Send(b"m6", "*", b"x"), 1.1), b"A") == [p.Ack(b"m6", 1100, "accepted")]
    assert replies(say(core, b"B", p.Send(b"b1", "*", b"x"), 1.1), b"B") == [p.Ack(b"b1", 1100, "accepted")]
    effects: list[Effect] = []
    for i in range(16):  # goes on into the refusals: more than 3 x burst of them in a row
        effects = say(core, b"A", p.Send(b"f%d" % i, "*", b"x"), 1.1)
    assert events(effects) == [p.Leave("alice", 1100, "flooding")]
    assert core.holder("alice") is None


def test_a_connection_disconnected_for_flooding_is_hung_up_and_ignored_for_its_cool_off() -> None:
    core = make_core(rate=10.0, burst=1.0, cool_off=60.0)
    register(core, b"A", "alice")
    effects: list[Effect] = []
    for i in range(5):  # one accepted, then more than 3 x burst refusals in a row
        effects = core.handle(Command(b"A", p.Send(b"f%d" % i, "*", b"x"), 1.0))
    assert events(core.handle(Flush(1.0))) == [p.Leave("alice", 1000, "flooding")]
    (told,) = replies(effects, b"A")
    assert isinstance(told, p.Error) and "wait 60 s before connecting again" in told.text
    assert told.retry_after_ms == 60_000
    # Told first, then its connection is closed and its address turned away until the end of the cool-off.
    assert effects[-1] == Hangup(b"A", 61.0)
    # What it had queued before the hangup is ignored: no reply at all, not even to HELLO.
    assert say(core, b"A", p.Hello(b"h", "alice", ""), 2.0) == []
    assert say(core, b"A", p.Send(b"f9", "*", b"x"), 60.9) == []
    assert core.counters["dropped.flooder"] == 2
    register(core, b"B", "bob")  # another connection is served meanwhile
    # After it, the connection is an ordinary unregistered peer again.
    assert error_code(say(core, b"A", p.Send(b"g", "*", b"x"), 61.1), b"A") == Code.NOT_REGISTERED
    register(core, b"A", "alice", now=61.2)


def test_a_full_mailbox_refuses_with_its_code() -> None:
    core = make_core(mailbox_messages=2, mailbox_bytes=10)
    register(core, b"B", "bob")
    say(core, b"B", p.Bye(b"bye"), 0.5)
    register(core, b"A", "alice")

    def answer(msg_id: bytes, body: bytes) -> p.ServerEvent:
        (event,) = replies(say(core, b"A", p.Send(msg_id, "bob", body), 1.0), b"A")
        return event

    assert answer(b"m1", b"12345") == p.Ack(b"m1", 1000, "stored")
    assert answer(b"m2", b"123456").code == Code.RECIPIENT_BUSY  # type: ignore[union-attr]  # bytes
    assert answer(b"m3", b"1") == p.Ack(b"m3", 1000, "stored")
    assert answer(b"m4", b"1").code == Code.RECIPIENT_BUSY  # type: ignore[union-attr]  # count


def test_a_live_message_not_confirmed_is_handed_again_on_resuming_and_signing_in(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    say(core, b"B", p.Hello(b"h", "bob", ""), 0.0)  # token1: alice has token0
    handed = deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 1.0))
    assert replies(feed(core, Delivered(handed), 1.0), b"A") == [p.Ack(b"m1", 1000, "accepted")]
    again = p.Message(b"m1", "alice", "bob", 1000, b"hi")  # its own id, sender and time
    # bob's connection had it, bob did not: resumed on a new connection, it comes again
    resumed = say(core, b"B2", p.Hello(b"h2", "bob", "token1"), 2.0)
    assert replies(resumed, b"B2")[1:] == [again]
    say(core, b"B2", p.Bye(b"bye"), 2.5)
    assert replies(say(core, b"B3", p.Hello(b"h3", "bob", ""), 3.0), b"B3")[1:] == [again]
    confirmed = say(core, b"B3", p.Received(b"r", "alice", (b"m1",)), 4.0)
    assert replies(confirmed, b"A") == [p.Receipt("bob", 4000, (b"m1",))]
    say(core, b"B3", p.Bye(b"bye"), 4.5)
    assert replies(say(core, b"B4", p.Hello(b"h4", "bob", ""), 5.0), b"B4")[1:] == []  # confirmed: gone


def test_a_live_recipient_with_its_mailbox_full_of_unconfirmed_messages_is_refused_507() -> None:
    core = make_core(mailbox_messages=2)
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    for msg_id in (b"m1", b"m2"):
        feed(core, Delivered(deliver(say(core, b"A", p.Send(msg_id, "bob", b"hi"), 1.0))), 1.0)
    full = say(core, b"A", p.Send(b"m3", "bob", b"hi"), 1.0)
    assert [e for e in full if isinstance(e, Deliver)] == []  # not handed over: nothing to lose
    assert error_code(full, b"A") == Code.RECIPIENT_BUSY
    say(core, b"B", p.Received(b"r", "alice", (b"m1",)), 2.0)  # confirmed: room again
    deliver(say(core, b"A", p.Send(b"m4", "bob", b"hi"), 2.0))


def test_a_failed_commit_refuses_the_live_message_it_did_not_keep(tmp_path: Path) -> None:
    store = FillingStore.open(tmp_path / "zchat.db")
    core = make_core(store)
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    handed = deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 1.0))
    store.commit_fails = True
    assert error_code(feed(core, Delivered(handed), 1.0), b"A") == Code.STORE_FAILED  # not kept: resend
    store.commit_fails = False
    handed = deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 2.0))  # a resend is new
    assert replies(feed(core, Delivered(handed), 2.0), b"A") == [p.Ack(b"m1", 2000, "accepted")]
    assert [m.msg_id for m in store.mailbox("bob")] == [b"m1"]  # once


def test_a_recipient_whose_queue_stays_full_is_dropped_and_announced(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")

    def busy_at(now: float) -> list[Effect]:
        delivery = deliver(say(core, b"A", p.Send(b"m%d" % int(now * 10), "bob", b"hi"), now))
        return feed(core, Undelivered(delivery, busy=True, now=now))

    assert published(busy_at(1.0)) == []
    feed(core, Delivered(deliver(say(core, b"A", p.Send(b"m20", "bob", b"hi"), 2.0))), 2.0)  # bob read again
    assert published(busy_at(3.0)) == []
    assert published(busy_at(5.0)) == []  # 2 s < the 3 s timeout
    dropped = busy_at(6.5)
    assert error_code([e for e in dropped if isinstance(e, Reply)], b"A") == Code.RECIPIENT_BUSY
    assert events(dropped) == [p.Leave("bob", 6500, "stuck")]


def test_a_recipient_that_confirms_nothing_of_its_full_mailbox_is_dropped_as_stuck() -> None:
    # Its queue has room (its PONGs get through), but it confirms nothing: stuck all the same.
    core = make_core(mailbox_messages=2, heartbeat_ms=1000, timeout_ms=3000)
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    feed(core, Watched(b"A"))  # alive by ZMTP heartbeats: no timeout
    feed(core, Watched(b"B"))
    for msg_id in (b"m1", b"m2"):
        feed(core, Delivered(deliver(say(core, b"A", p.Send(msg_id, "bob", b"hi"), 1.0))), 1.0)
    assert error_code(say(core, b"A", p.Send(b"m3", "bob", b"hi"), 1.0), b"A") == Code.RECIPIENT_BUSY
    say(core, b"B", p.Ping(b"p"), 3.5)
    assert events(feed(core, Tick(3.9))) == []  # full since 1.0: not yet a timeout
    say(core, b"B", p.Received(b"r", "alice", (b"m1",)), 4.0)  # it confirms: the clock stops
    assert events(feed(core, Tick(4.1))) == []
    feed(core, Delivered(deliver(say(core, b"A", p.Send(b"m4", "bob", b"hi"), 5.0))), 5.0)
    assert error_code(say(core, b"A", p.Send(b"m5", "bob", b"hi"), 5.0), b"A") == Code.RECIPIENT_BUSY
    assert events(feed(core, Tick(7.9))) == []
    say(core, b"B", p.Ping(b"p2"), 8.0)  # alive, but confirming nothing
    assert events(feed(core, Tick(8.1))) == [p.Leave("bob", 8100, "stuck")]


def test_registration_limits_refuse_with_their_code() -> None:
    core = make_core(max_clients=3, max_per_key=2)

    def hello(peer: bytes, name: str, key: str) -> p.ServerEvent:
        return replies(say(core, peer, p.Hello(b"h", name, ""), 0.0, key), peer)[0]

    assert isinstance(hello(b"A", "a1", "KEY-A"), p.Welcome) and isinstance(
        hello(b"B", "a2", "KEY-A"), p.Welcome
    )
    assert hello(b"C", "a3", "KEY-A").code == Code.TOO_MANY  # type: ignore[union-attr]
    assert core.store.key_of("a3") is None  # a refused HELLO claims no name
    assert isinstance(hello(b"D", "b1", "KEY-B"), p.Welcome)
    assert hello(b"E", "b2", "KEY-B").code == Code.TOO_MANY  # type: ignore[union-attr]


def test_a_message_from_another_key_than_the_session_s_is_refused() -> None:
    core = make_core()
    say(core, b"A", p.Hello(b"h", "alice", ""), 0.0, "KEY-A")
    assert error_code(say(core, b"A", p.Who(b"w"), 1.0, "KEY-B"), b"A") == Code.NAME_OWNED


def test_searches_count_against_the_rate_limit() -> None:
    core = make_core(rate=1.0, burst=2.0)
    register(core, b"A", "alice")
    searches = [say(core, b"A", p.Search(b"s%d" % i, "plan"), 1.0) for i in range(3)]
    assert [type(replies(s, b"A")[0]).__name__ for s in searches] == ["Found", "Found", "Error"]
    assert error_code(searches[2], b"A") == Code.RATE_LIMITED


@pytest.mark.parametrize(
    "command",
    [p.Enter(b"x", "#dev"), p.Exit(b"x", "#dev"), p.Received(b"x", "bob", (b"m1",)), p.Rooms(b"x"),
     p.Names(b"x", "#dev")],
    ids=lambda command: type(command).__name__,
)  # fmt: skip
def test_room_changes_listings_and_receipts_count_against_the_rate_limit(command: p.ClientCommand) -> None:
    core = make_core(rate=1.0, burst=1.0)
    register(core, b"A", "alice")
    answers = [say(core, b"A", command, 1.0) for _ in range(3)]
    assert error_code(answers[-1], b"A") == Code.RATE_LIMITED
    # Kept up, it disconnects like a flood of messages: 2,000 ENTER/EXIT reach nobody.
    flood = [e for i in range(20) for e in say(core, b"A", command, 1.0 + i / 1000)]
    assert any(isinstance(e, Hangup) for e in flood)
    assert core.holder("alice") is None


def test_a_receipt_names_only_what_its_sender_really_sent_to_that_recipient(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    register(core, b"C", "carol")
    feed(core, Delivered(deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 1.0))), 1.0)
    made_up = tuple(b"x%d" % i for i in range(p.MAX_RECEIVED_IDS))
    assert replies(say(core, b"B", p.Received(b"r1", "alice", made_up), 2.0), b"A") == []
    # carol cannot confirm what alice sent to bob
    assert replies(say(core, b"C", p.Received(b"r2", "alice", (b"m1",)), 2.0), b"A") == []
    confirmed = say(core, b"B", p.Received(b"r3", "alice", (b"m1", b"x1")), 3.0)
    assert replies(confirmed, b"A") == [p.Receipt("bob", 3000, (b"m1",))]
    assert replies(confirmed, b"B") == [p.Ack(b"r3", 3000, "accepted")]
    again = say(core, b"B", p.Received(b"r4", "alice", (b"m1",)), 4.0)
    assert replies(again, b"A") == []  # confirmed once: one receipt


def test_a_message_not_handed_over_gets_no_receipt(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    delivery = deliver(say(core, b"A", p.Send(b"m1", "bob", b"hi"), 1.0))
    feed(core, Undelivered(delivery, busy=True, now=1.0))  # never reached bob
    assert replies(say(core, b"B", p.Received(b"r", "alice", (b"m1",)), 2.0), b"A") == []


def test_a_receipt_waits_behind_its_senders_held_ack_without_an_early_commit() -> None:
    class CountingStore(MemoryStore):
        commits = 0

        def commit(self) -> bool:
            self.commits += 1
            return super().commit()

    store = CountingStore()
    core = make_core(store)
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    commits = store.commits
    # One wake-up: alice's message handed to bob, and bob confirming it, before the flush.
    delivery = deliver(core.handle(Command(b"A", p.Send(b"m1", "bob", b"hi"), 1.0, "")))
    core.handle(Delivered(delivery))
    confirmed = core.handle(Command(b"B", p.Received(b"r1", "alice", (b"m1",)), 1.0, ""))
    assert replies(confirmed, b"A") == [] and store.commits == commits  # nothing out before the commit
    flushed = core.handle(Flush(1.0))
    assert store.commits == commits + 1
    assert replies(flushed, b"A") == [p.Ack(b"m1", 1000, "accepted"), p.Receipt("bob", 1000, (b"m1",))]
    assert replies(flushed, b"B") == [p.Ack(b"r1", 1000, "accepted")]


def test_rooms_are_bounded_per_user_and_in_all() -> None:
    core = make_core(max_rooms_per_user=2, max_rooms=3)
    register(core, b"A", "alice")
    register(core, b"B", "bob")

    def enter(peer: bytes, room: str) -> p.ServerEvent:
        (answer,) = replies(say(core, peer, p.Enter(b"e", room), 1.0), peer)
        return answer

    assert isinstance(enter(b"A", "#a1"), p.Ack) and isinstance(enter(b"A", "#a2"), p.Ack)
    refused = enter(b"A", "#a3")
    assert isinstance(refused, p.Error) and refused.code == Code.TOO_MANY  # alice is in 2 rooms
    assert isinstance(enter(b"B", "#b1"), p.Ack)  # the third room
    refused = enter(b"B", "#b2")
    assert isinstance(refused, p.Error) and refused.code == Code.TOO_MANY  # the broker holds 3
    say(core, b"A", p.Exit(b"x", "#a2"), 2.0)
    assert isinstance(enter(b"B", "#b2"), p.Ack)  # #a2 is empty now: room for one more


def test_a_stuck_client_that_keeps_pinging_is_dropped_by_the_liveness_sweep(core: BrokerCore) -> None:
    register(core, b"A", "alice", now=3.0)
    register(core, b"B", "bob")
    core.handle(Blocked(b"B", 1.0))  # a reply to bob found its queue full
    say(core, b"B", p.Ping(b"p"), 2.0)
    core.handle(Blocked(b"B", 2.0))  # its PONG too: the clock does not start over
    assert feed(core, Tick(3.5)) == []  # full for 2.5 s < the 3 s timeout
    say(core, b"B", p.Ping(b"p"), 4.0)  # alive, but still not reading
    assert events(feed(core, Tick(4.5))) == [p.Leave("bob", 4500, "stuck")]
    assert core.holder("bob") is None and core.holder("alice") is not None


def test_a_client_whose_queue_drains_again_is_not_dropped(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    core.handle(Blocked(b"B", 1.0))
    core.handle(Unblocked(b"B"))  # a PONG got through: it reads
    say(core, b"B", p.Ping(b"p"), 4.0)
    assert feed(core, Tick(4.5)) == []


def test_after_a_restart_sequences_go_on_past_presence_events_too() -> None:
    store = MemoryStore()
    before = make_core(store)
    register(before, b"A", "alice")  # JOIN: lobby seq 1
    say(before, b"A", p.Send(b"m1", "*", b"hi"), 1.0)  # seq 2
    say(before, b"A", p.Bye(b"bye"), 2.0)  # LEAVE: seq 3, kept nowhere
    after = make_core(store)  # the broker restarted on the same store
    (join,) = published(register(after, b"B", "bob", now=3.0))
    # A client that saw seq 3 before the restart must not take 3 for a repeat.
    assert join.seq == 4


def test_welcome_tells_the_client_the_rate_limit_to_pace_itself_by() -> None:
    core = make_core(rate=20.0, burst=100.0)
    (welcome,) = replies(say(core, b"A", p.Hello(b"h", "alice", ""), 1.0), b"A")
    assert isinstance(welcome, p.Welcome) and (welcome.rate_per_minute, welcome.burst) == (1200, 100)
    (welcome,) = replies(say(make_core(rate=0.0), b"A", p.Hello(b"h", "alice", ""), 1.0), b"A")
    assert isinstance(welcome, p.Welcome) and (welcome.rate_per_minute, welcome.burst) == (0, 0)


def test_sync_with_a_tag_publishes_synced_on_that_round_s_own_topic(core: BrokerCore) -> None:
    register(core, b"A", "Alice")
    (synced,) = published(say(core, b"A", p.Sync(b"s1", b"round-7"), 1.0))
    # No earlier subscription (the own topic "@Alice\0") is a prefix of it.
    assert synced.topic == b"@Alice\x01round-7\x00" and not synced.topic.startswith(b"@Alice\x00")
    assert synced.event == p.Synced(b"s1")
    bad_tag = p.encode_command(b"SYNC", b"s2", b"bad tag")
    assert error_code(receive(core, b"A", bad_tag), b"A") == Code.MALFORMED


def test_who_follows_joins_and_leaves_between_asks(core: BrokerCore) -> None:
    def who() -> tuple[str, ...]:
        (users,) = replies(say(core, b"X", p.Who(b"w"), 1.0), b"X")
        assert isinstance(users, p.Users)
        return users.names

    register(core, b"B", "bob")
    assert who() == ("bob",)
    assert who() == ("bob",)  # asked again: the same, without sorting again
    register(core, b"A", "alice")
    assert who() == ("alice", "bob")
    say(core, b"B", p.Bye(b"bye"), 2.0)
    assert who() == ("alice",)


def test_received_is_bounded_and_keeps_receipts_only_for_known_senders(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    too_many = [b"m%d" % i for i in range(p.MAX_RECEIVED_IDS + 1)]
    too_many_frames = p.encode_command(b"RECEIVED", b"r", "alice", *too_many)
    assert error_code(receive(core, b"B", too_many_frames), b"B") == Code.MALFORMED
    say(core, b"B", p.Received(b"r", "nobody", (b"m1",)), 1.0)  # never registered
    assert core.store.receipts("nobody") == []


def test_without_a_cool_off_the_flood_left_in_the_queue_is_still_not_answered() -> None:
    core = make_core(rate=10.0, burst=1.0, cool_off=0.0, timeout_ms=6000)
    register(core, b"A", "alice")
    effects: list[Effect] = []
    for i in range(5):  # thrown out
        effects = core.handle(Command(b"A", p.Send(b"f%d" % i, "*", b"x"), 1.0))
    assert effects[-1] == Hangup(b"A", 1.0)  # no ban on the address
    # Read after the hangup, in the same wake-up or later: nothing answered, nobody registered.
    assert core.handle(Command(b"A", p.Send(b"f9", "*", b"x"), 1.0)) == []
    assert events(core.handle(Flush(1.0))) == [p.Leave("alice", 1000, "flooding")]
    assert say(core, b"A", p.Hello(b"h", "alice", ""), 2.0) == []
    assert core.holder("alice") is None


def test_a_second_hello_in_another_case_welcomes_again_with_the_name_as_registered(core: BrokerCore) -> None:
    register(core, b"B", "Bob")
    say(core, b"B", p.Bye(b"bye"), 0.5)
    register(core, b"A", "alice")
    say(core, b"A", p.Send(b"m1", "bob", b"while you were away"), 1.0)
    first = replies(say(core, b"B2", p.Hello(b"h1", "Bob", ""), 2.0), b"B2")
    assert [type(e) for e in first] == [p.Welcome, p.Message]  # the mailbox, once
    again = say(core, b"B2", p.Hello(b"h2", "BOB", "any token"), 3.0)
    # The name as registered and the session's token: nothing else is sent or published.
    assert replies(again, b"B2") == [p.Welcome(b"h2", "Bob", "token2", PUB, 1000, 3000, 100, 3000)]
    assert published(again) == []


def test_names_sort_by_their_lower_case_form_in_ascii_order(core: BrokerCore) -> None:
    names = ["Zed", "_x", "alice", "9z", "Bob", "-a", "a.b"]
    for i, name in enumerate(names):
        register(core, b"P%d" % i, name)
        say(core, b"P%d" % i, p.Enter(b"e", "#dev"), 1.0)
    # '_' is 0x5F: after the digits, before the letters once they are lower case.
    expected = ("-a", "9z", "_x", "a.b", "alice", "Bob", "Zed")
    assert replies(say(core, b"X", p.Who(b"w"), 1.0), b"X") == [p.Users(b"w", expected)]
    assert replies(say(core, b"P0", p.Names(b"n", "#dev"), 1.0), b"P0") == [p.Users(b"n", expected)]


def test_rooms_counts_offline_members_and_names_lists_online_ones(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    for peer in (b"A", b"B"):
        say(core, peer, p.Enter(b"e", "#dev"), 1.0)
    say(core, b"A", p.Bye(b"bye"), 2.0)  # a member still, offline
    register(core, b"C", "carol")
    assert replies(say(core, b"C", p.Rooms(b"r"), 3.0), b"C") == [p.RoomList(b"r", (("#dev", 2),), ())]
    assert replies(say(core, b"C", p.Names(b"n", "#dev"), 3.0), b"C") == [p.Users(b"n", ("bob",))]


def test_an_empty_sync_tag_syncs_on_the_own_topic(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    effects = receive(core, b"A", p.encode_command(b"SYNC", b"s1", b""), 1.0)
    assert published(effects) == [p.Published(p.private_topic("alice"), 0, p.Synced(b"s1"))]
    assert replies(effects, b"A") == [p.Ack(b"s1", 1000, "accepted")]


def test_history_records_come_oldest_first_and_a_count_of_500_is_a_page(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    for i in range(3):
        say(core, b"A", p.Send(b"m%d" % i, "*", b"t%d" % i), 1.0 + i)  # lobby seqs 2..4 (1: JOIN)
    (page,) = replies(say(core, b"A", p.HistoryRequest(b"h", "*", 0, 500), 9.0), b"A")
    assert isinstance(page, p.History) and page.last_seq == 4
    assert [(r.seq, r.body) for r in page.records] == [(2, b"t0"), (3, b"t1"), (4, b"t2")]


def test_a_tiny_rate_still_gives_a_retry_after_clients_can_read() -> None:
    core = make_core(rate=1e-9, burst=1.0)
    register(core, b"A", "alice")
    say(core, b"A", p.Send(b"m1", "*", b"x"), 1.0)
    (refusal,) = replies(say(core, b"A", p.Send(b"m2", "*", b"x"), 1.0), b"A")
    assert isinstance(refusal, p.Error) and refusal.code == Code.RATE_LIMITED
    read = p.decode_event(p.encode(refusal))  # as a client reads it: decoded, not dropped as out of range
    assert isinstance(read, p.Error) and 0 < read.retry_after_ms <= p.MAX_INT32


def test_history_after_a_number_gives_only_the_gap(core: BrokerCore) -> None:
    register(core, b"A", "alice")  # JOIN: lobby seq 1
    for i in range(4):
        say(core, b"A", p.Send(b"m%d" % i, "*", b"t%d" % i), 1.0)  # seqs 2..5
    (history,) = replies(say(core, b"A", p.HistoryRequest(b"h", "*", 0, 10, 3), 2.0), b"A")
    assert isinstance(history, p.History) and history.last_seq == 5
    assert [r.body for r in history.records] == [b"t2", b"t3"]
    out_of_range = p.encode_command(b"HISTORY", b"h", "*", 0, 10, 2**63)
    assert error_code(receive(core, b"A", out_of_range, 2.0), b"A") == Code.MALFORMED


def test_a_token_offered_for_a_free_name_is_kept_so_the_next_hello_resumes(core: BrokerCore) -> None:
    # After a restart: the first HELLO registers (its WELCOME too late for its client),
    # the client's next HELLO, with the same token, resumes that session: no 409.
    token = "f" * 32
    first = say(core, b"A", p.Hello(b"h1", "alice", token), 1.0)
    assert [w.token for w in replies(first, b"A") if isinstance(w, p.Welcome)] == [token]
    again = say(core, b"A2", p.Hello(b"h2", "alice", token), 2.0)
    assert [w.token for w in replies(again, b"A2") if isinstance(w, p.Welcome)] == [token]
    assert core.holder("alice").peer == b"A2"  # type: ignore[union-attr]
    short = say(core, b"B", p.Hello(b"h3", "bob", "guessable"), 3.0)
    assert [w.token for w in replies(short, b"B") if isinstance(w, p.Welcome)] != ["guessable"]


# --- held until the commit: ACKs combined, refused, ordered ---------------------------


class RefusingStore(MemoryStore):
    """A store whose next commit fails, refusing the messages named (StoreFailed.refused)."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0
        self.refuse: frozenset[tuple[str, bytes]] | None = None

    def commit(self) -> bool:
        self.commits += 1
        refused, self.refuse = self.refuse, None
        if refused is not None:
            raise StoreFailed("the disk is full", refused)
        return True


class UnwritableRooms(MemoryStore):
    def set_member(self, user: str, room: str, member: bool) -> None:
        raise StoreFailed("the disk is full")


def test_acks_of_one_wake_up_are_combined_and_sent_only_after_the_commit() -> None:
    store = RefusingStore()
    core = make_core(store)
    register(core, b"A", "alice")
    commits = store.commits
    for i in range(3):
        assert core.handle(Command(b"A", p.Send(b"m%d" % i, "*", b"x"), 1.0)) == []  # all held
    flushed = core.handle(Flush(1.0))
    assert store.commits == commits + 1
    assert [type(e) for e in flushed] == [Publish, Publish, Publish, Reply]
    assert replies(flushed, b"A") == [p.Ack(b"m0", 1000, "accepted", (b"m1", b"m2"))]


def test_acks_of_another_time_or_status_are_not_combined(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    say(core, b"B", p.Bye(b"bye"), 0.5)  # bob is away: mail to him is stored
    register(core, b"A", "alice")
    core.handle(Command(b"A", p.Send(b"m1", "*", b"x"), 1.0))
    core.handle(Command(b"A", p.Send(b"m2", "bob", b"x"), 1.0))
    core.handle(Command(b"A", p.Send(b"m3", "*", b"x"), 1.0))
    core.handle(Command(b"A", p.Send(b"m4", "*", b"x"), 2.0))
    assert replies(core.handle(Flush(2.0)), b"A") == [
        p.Ack(b"m1", 1000, "accepted"),
        p.Ack(b"m2", 1000, "stored"),
        p.Ack(b"m3", 1000, "accepted"),
        p.Ack(b"m4", 2000, "accepted"),
    ]


def test_any_other_reply_to_a_connection_releases_its_held_acks_first(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    assert core.handle(Command(b"A", p.Send(b"m1", "*", b"x"), 1.0)) == []
    effects = core.handle(Command(b"A", p.Ping(b"p1"), 1.0))
    assert [type(e) for e in effects] == [Publish, Reply, Reply]  # replies keep the order of commands
    assert replies(effects, b"A") == [p.Ack(b"m1", 1000, "accepted"), p.Pong(b"p1", 1000)]


def test_a_delivered_message_is_acknowledged_at_the_next_flush(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    delivery = deliver(core.handle(Command(b"A", p.Send(b"m1", "bob", b"hi"), 1.0)))
    assert core.handle(Delivered(delivery)) == []
    assert replies(core.handle(Flush(1.0)), b"A") == [p.Ack(b"m1", 1000, "accepted")]


def test_a_failed_commit_refuses_exactly_what_was_not_kept_in_its_place() -> None:
    store = RefusingStore()
    core = make_core(store)
    register(core, b"B", "bob")
    say(core, b"B", p.Bye(b"bye"), 0.5)  # away: his mail is stored
    register(core, b"A", "alice")
    register(core, b"C", "carol")
    core.handle(Command(b"A", p.Send(b"m1", "*", b"kept"), 1.0))
    core.handle(Command(b"A", p.Send(b"m2", "bob", b"not kept"), 1.0))
    core.handle(Command(b"A", p.Send(b"m3", "*", b"not kept"), 1.0))
    # Handed to carol: delivered, so acknowledged whatever the store does.
    core.handle(Delivered(deliver(core.handle(Command(b"A", p.Send(b"m4", "carol", b"hi"), 1.0)))))
    store.refuse = frozenset({("alice", b"m2"), ("alice", b"m3")})
    flushed = core.handle(Flush(1.0))
    assert [(type(e).__name__, getattr(e, "code", None)) for e in replies(flushed, b"A")] == [
        ("Ack", None), ("Error", Code.STORE_FAILED), ("Error", Code.STORE_FAILED), ("Ack", None)
    ]  # fmt: skip
    assert [a.ids() for a in replies(flushed, b"A") if isinstance(a, p.Ack)] == [(b"m1",), (b"m4",)]
    # Only what was kept is published; m3's number (6) stays used: subscribers see a gap.
    assert [(x.seq, x.event.msg_id) for x in published(flushed)] == [(5, b"m1")]  # type: ignore[union-attr]
    assert core.counters["refused.store_failed"] == 2


def test_a_commit_that_fails_in_a_way_of_its_own_answers_500_and_publishes_no_message() -> None:
    store = FaultyStore()
    core = make_core(store)
    register(core, b"A", "alice")
    say(core, b"B", p.Hello(b"h", "bob", ""), 0.0)
    core.handle(Command(b"B", p.Ready(b"r"), 1.0))
    core.handle(Command(b"A", p.Send(b"m1", "*", b"x"), 1.0))
    store.failing.add("commit")
    flushed = core.handle(Flush(1.0))
    assert events(flushed) == [p.Join("bob", 1000)]  # presence is not a message: it goes out
    assert error_code(flushed, b"A") == Code.INTERNAL and error_code(flushed, b"B") == Code.INTERNAL


def test_a_handler_that_raises_is_answered_500_and_the_engine_goes_on() -> None:
    store = FaultyStore(failing={"search"})
    core = make_core(store)
    register(core, b"A", "alice")
    assert error_code(say(core, b"A", p.Search(b"s1", "plan")), b"A") == Code.INTERNAL
    assert replies(say(core, b"A", p.Send(b"m1", "*", b"on")), b"A") == [p.Ack(b"m1", 1000, "accepted")]
    assert core.counters["failed"] == 1


def test_a_store_write_a_command_needs_that_fails_is_answered_508() -> None:
    core = make_core(UnwritableRooms())
    register(core, b"A", "alice")
    (refusal,) = replies(say(core, b"A", p.Enter(b"e", "#dev")), b"A")
    assert isinstance(refusal, p.Error) and (refusal.msg_id, refusal.code) == (b"e", Code.STORE_FAILED)


def test_a_history_in_the_same_wake_up_reads_after_a_commit(tmp_path: Path) -> None:
    store = FillingStore.open(tmp_path / "z.db")
    try:
        core = make_core(store)
        register(core, b"A", "alice")
        say(core, b"A", p.Send(b"m1", "*", b"kept"), 1.0)
        store.commit_fails = True  # m2 goes into the transaction; its COMMIT fails
        assert core.handle(Command(b"A", p.Send(b"m2", "*", b"said, not kept"), 2.0)) == []
        effects = core.handle(Command(b"A", p.HistoryRequest(b"hi", "*", 0, 10), 2.0))
        refusal, history = replies(effects, b"A")
        assert isinstance(refusal, p.Error) and (refusal.msg_id, refusal.code) == (b"m2", Code.STORE_FAILED)
        assert isinstance(history, p.History) and [r.msg_id for r in history.records] == [b"m1"]
        assert published(effects) == []  # never kept, never published
    finally:
        store.commit_fails = False
        store.close()


class UnwritableUsers(MemoryStore):
    def add_user(self, user: str) -> None:
        raise StoreFailed("the disk is full")


def test_a_hello_the_store_cannot_record_leaves_no_session_behind() -> None:
    store = UnwritableUsers()
    core = make_core(store)
    assert error_code(say(core, b"A", p.Hello(b"h", "alice", "")), b"A") == Code.STORE_FAILED
    assert core.holder("alice") is None and not core.by_peer
    store.add_user = MemoryStore.add_user.__get__(store)  # type: ignore[method-assign]
    assert isinstance(replies(say(core, b"A", p.Hello(b"h2", "alice", "")), b"A")[0], p.Welcome)


def test_the_dispatch_checks_key_then_shutdown_then_registration_then_rate() -> None:
    core = make_core(rate=1.0, burst=1.0)
    say(core, b"A", p.Hello(b"h", "alice", ""), 0.0, "KEY-A")
    say(core, b"A", p.Send(b"m1", "*", b"x"), 0.0, "KEY-A")  # the bucket is empty now
    assert error_code(say(core, b"A", p.Send(b"m2", "*", b"x"), 0.0, "KEY-A"), b"A") == Code.RATE_LIMITED
    assert error_code(say(core, b"X", p.Send(b"m3", "*", b"x"), 0.0), b"X") == Code.NOT_REGISTERED
    core.handle(Shutdown(0.0))
    assert error_code(say(core, b"X", p.Send(b"m4", "*", b"x"), 0.0), b"X") == Code.SHUTTING_DOWN
    assert error_code(say(core, b"A", p.Send(b"m5", "*", b"x"), 0.0, "KEY-B"), b"A") == Code.NAME_OWNED


# --- away and room subjects (PROTOCOL.md 13.7) ----------------------------------------


def test_away_shows_in_who_and_is_told_to_whoever_messages_the_away_user(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    assert replies(say(core, b"B", p.Away(b"w1", "lunch"), 2.0), b"B") == [p.Ack(b"w1", 2000, "accepted")]
    (users,) = replies(say(core, b"C", p.Who(b"q")), b"C")
    assert users == p.Users(b"q", ("alice", "bob"), (("bob", "lunch"),))
    sent = say(core, b"A", p.Send(b"m1", "bob", b"hi"), 3.0)
    assert replies(sent, b"A") == [p.AwayNotice(b"m1", "bob", "lunch")]  # before the ACK
    assert deliver(sent).message.body == b"hi"  # delivered all the same
    assert replies(feed(core, Delivered(deliver(sent)), 3.0), b"A") == [p.Ack(b"m1", 3000, "accepted")]
    say(core, b"B", p.Away(b"w2", ""), 4.0)  # back
    assert replies(say(core, b"C", p.Who(b"q2")), b"C") == [p.Users(b"q2", ("alice", "bob"))]
    assert replies(say(core, b"A", p.Send(b"m2", "bob", b"again"), 5.0), b"A") == []


def test_away_ends_with_the_session(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    say(core, b"B", p.Away(b"w", "lunch"))
    say(core, b"B", p.Bye(b"b"))
    register(core, b"B2", "bob")
    assert replies(say(core, b"C", p.Who(b"q")), b"C") == [p.Users(b"q", ("bob",))]


def test_a_member_sets_the_subject_every_member_hears_it_and_joiners_are_told(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    say(core, b"A", p.Enter(b"e", "#dev"))
    assert replies(say(core, b"A", p.SubjectRequest(b"s0", "#dev"), 2.0), b"A") == [
        p.Subject(b"s0", "#dev", "", "", 0)
    ]
    assert error_code(say(core, b"B", p.SetSubject(b"t0", "#dev", "mine")), b"B") == Code.NOT_MEMBER
    changed = say(core, b"A", p.SetSubject(b"t1", "#dev", "release friday"), 3.0)
    assert replies(changed, b"A") == [p.Ack(b"t1", 3000, "accepted")]
    assert events(changed) == [p.SubjectChanged("#dev", "release friday", "alice", 3000)]
    assert published(changed)[0].topic == p.topic_of("#dev")
    entered = say(core, b"B", p.Enter(b"e2", "#dev"), 4.0)
    assert replies(entered, b"B") == [
        p.Ack(b"e2", 4000, "accepted"),
        p.Subject(b"e2", "#dev", "release friday", "alice", 3000),
    ]
    say(core, b"B", p.SetSubject(b"t2", "#dev", ""), 5.0)  # any member may, also to clear it
    assert replies(say(core, b"C", p.SubjectRequest(b"s1", "#dev")), b"C") == [
        p.Error(b"s1", Code.NOT_REGISTERED, "send HELLO first")
    ]
    register(core, b"C", "carol")
    assert replies(say(core, b"C", p.SubjectRequest(b"s2", "#dev")), b"C") == [
        p.Subject(b"s2", "#dev", "", "", 0)
    ]


def test_the_subject_outlives_the_broker_with_a_store_on_disk(tmp_path: Path) -> None:
    from zchat.broker.sqlite_store import SqliteStore

    store = SqliteStore.open(tmp_path / "chat.db")
    first = make_core(store=store)
    register(first, b"A", "alice")
    say(first, b"A", p.Enter(b"e", "#dev"))
    say(first, b"A", p.SetSubject(b"t", "#dev", "café ☕"), 7.0)
    store.close()
    again = make_core(store=SqliteStore.open(tmp_path / "chat.db"))
    register(again, b"B", "bob")
    assert replies(say(again, b"B", p.SubjectRequest(b"s", "#dev")), b"B") == [
        p.Subject(b"s", "#dev", "café ☕", "alice", 7000)
    ]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (p.encode_command(b"AWAY", b"w", "x" * (p.MAX_AWAY_BYTES + 1)), Code.TOO_LARGE),
        (p.encode_command(b"SETSUBJECT", b"t", "#dev", "é" * (p.MAX_SUBJECT_BYTES // 2 + 1)), Code.TOO_LARGE),
        (p.encode_command(b"SETSUBJECT", b"t", "*", "lobby"), Code.MALFORMED),
        (p.encode_command(b"SUBJECT", b"t", "dev"), Code.MALFORMED),
        (p.encode_command(b"AWAY", b"w", b"\xff"), Code.BAD_ENCODING),
    ],
)
def test_away_and_subject_fields_are_bounded_and_checked(
    core: BrokerCore, frames: list[bytes], code: int
) -> None:
    register(core, b"A", "alice")
    say(core, b"A", p.Enter(b"e", "#dev"))
    (error,) = replies(receive(core, b"A", frames), b"A")
    assert isinstance(error, p.Error)
    assert error.code == code and error.msg_id in (b"w", b"t")
