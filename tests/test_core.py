"""The routing core, without sockets: frames and time in, actions out."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from zchat.broker.core import BrokerCore, CoreConfig, Forward, Hangup, Publish, SendTo
from zchat.broker.store import MemoryStore
from zchat.common import protocol as p
from zchat.common.protocol import Code

PUB = "tcp://127.0.0.1:5556"


@pytest.fixture
def core() -> BrokerCore:
    tokens = (f"token{i}" for i in itertools.count())
    return BrokerCore(CoreConfig(PUB, heartbeat_ms=1000, timeout_ms=3000, max_body=100),
                      new_token=lambda: next(tokens))  # fmt: skip


def replies(actions: Sequence[object], peer: bytes) -> list[p.ServerEvent | p.PublishedEvent]:
    return [a.message for a in actions if isinstance(a, SendTo) and a.peer == peer]


def published(actions: Sequence[object]) -> list[p.Published]:
    return [a.published for a in actions if isinstance(a, Publish)]


def register(core: BrokerCore, peer: bytes, name: str, now: float = 0.0) -> Sequence[object]:
    """HELLO, then the READY that makes the client's JOIN public."""
    actions = core.receive(peer, p.encode_hello(b"h", name), now)
    return [*actions, *core.receive(peer, p.encode_simple(b"READY", b"r"), now)]


def error_code(actions: Sequence[object], peer: bytes) -> int:
    (event,) = replies(actions, peer)
    assert isinstance(event, p.Error), event
    return event.code


def test_hello_welcomes_and_ready_announces_the_join_once(core: BrokerCore) -> None:
    hello = core.receive(b"A", p.encode_hello(b"h", "alice"), 12.5)
    assert replies(hello, b"A") == [p.Welcome(b"h", "alice", "token0", PUB, 1000, 3000, 100, 12500)]
    assert published(hello) == []  # the newcomer cannot hear the lobby yet
    sync = core.receive(b"A", p.encode_simple(b"SYNC", b"s1"), 12.6)
    assert replies(sync, b"A") == [p.Ack(b"s1", 12600, "accepted")]
    assert published(sync) == [p.Published(p.private_topic("alice"), 0, p.Synced(b"s1"))]
    ready = core.receive(b"A", p.encode_simple(b"READY", b"r1"), 12.7)
    assert replies(ready, b"A") == [p.Ack(b"r1", 12700, "accepted")]
    assert published(ready) == [p.Published(p.LOBBY_TOPIC, 1, p.Join("alice", 12700))]
    assert published(core.receive(b"A", p.encode_simple(b"READY", b"r2"), 12.8)) == []


def test_a_client_never_ready_leaves_unannounced(core: BrokerCore) -> None:
    core.receive(b"A", p.encode_hello(b"h", "alice"), 0.0)
    assert published(core.receive(b"A", p.encode_simple(b"BYE", b"b"), 1.0)) == []


def test_names_are_unique_without_regard_to_case(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    assert error_code(core.receive(b"B", p.encode_hello(b"h", "ALICE"), 0.0), b"B") == Code.NAME_TAKEN


def test_private_message_goes_to_the_recipient_only_stamped_by_the_broker(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    register(core, b"C", "carol")
    (forward,) = core.receive(b"A", p.encode_send(b"m1", "BOB", "hi"), 2.0)
    assert isinstance(forward, Forward)
    assert forward.peer == b"B" and forward.sender == b"A"
    assert forward.message == p.Message(b"m1", "alice", "bob", 2000, b"hi")
    assert forward.ack == p.Ack(b"m1", 2000, "accepted")


def test_extra_fields_cannot_forge_the_sender(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    frames = p.encode_command(b"SEND", b"m1", "bob", "hi", "carol", 0)
    (forward,) = core.receive(b"A", frames, 1.0)
    assert isinstance(forward, Forward)
    message = forward.message
    assert isinstance(message, p.Message) and message.sender == "alice"


def test_broadcast_is_published_in_sequence_and_acknowledged(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    actions = core.receive(b"A", p.encode_send(b"m1", "*", "hello"), 1.0)
    (event,) = published(actions)
    assert event == p.Published(p.LOBBY_TOPIC, 2, p.Message(b"m1", "alice", "*", 1000, b"hello"))
    assert replies(actions, b"A") == [p.Ack(b"m1", 1000, "accepted")]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (p.encode_send(b"m", "nobody", "x"), Code.UNKNOWN_RECIPIENT),
        (p.encode_send(b"m", "#room", "x"), Code.NOT_MEMBER),
        (p.encode_send(b"m", "#", "x"), Code.UNKNOWN_RECIPIENT),
        (p.encode_send(b"m", "*", "x" * 101), Code.TOO_LARGE),
        (p.encode_command(b"SEND", b"m", b"*", b"\xc3\x28"), Code.BAD_ENCODING),
        (p.encode_command(b"SEND", b"m", b"*"), Code.MALFORMED),
        (p.encode_command(b"DANCE", b"m"), Code.UNKNOWN_COMMAND),
        (p.encode_command(b"HELLO", b"m", b"bob", b"", b"ZCHAT/9"), Code.BAD_VERSION),
        ([], Code.MALFORMED),
        (p.encode_hello(b"m", "bob"), Code.ALREADY_REGISTERED),
        (p.encode_send(b"m", "a" * 33, "x"), Code.UNKNOWN_RECIPIENT),  # can be no one's name
        (p.encode_send(b"m", "#" + "a" * 33, "x"), Code.UNKNOWN_RECIPIENT),
        (p.encode_command(b"ENTER", b"m", "dev"), Code.MALFORMED),  # a room field of the wrong form
        (p.encode_command(b"ENTER", b"m", "#" + "a" * 33), Code.MALFORMED),
        (p.encode_command(b"HISTORY", b"m", "*", 0, 501), Code.MALFORMED),  # more than a page
        (p.encode_command(b"HISTORY", b"m", "*", 2**63, 10), Code.MALFORMED),
        (p.encode_command(b"RECEIVED", b"m", "not a name", [b"x1"]), Code.INVALID_NAME),
    ],
)
def test_bad_input_is_refused_with_its_code(core: BrokerCore, frames: list[bytes], code: Code) -> None:
    register(core, b"A", "alice")
    assert error_code(core.receive(b"A", frames, 1.0), b"A") == code
    assert core.counters[f"refused.{code.name.lower()}"] == 1


@pytest.mark.parametrize("name", ["", "a" * 33, "al ice", "*", "#x", "é"])
def test_invalid_names_are_refused(core: BrokerCore, name: str) -> None:
    assert error_code(core.receive(b"A", p.encode_hello(b"h", name), 0.0), b"A") == Code.INVALID_NAME


@pytest.mark.parametrize("command", [b"SEND", b"PING", b"SYNC", b"READY", b"BYE"])
def test_commands_before_hello_are_refused(core: BrokerCore, command: bytes) -> None:
    frames = p.encode_send(b"m", "*", "x") if command == b"SEND" else p.encode_simple(command, b"m")
    assert error_code(core.receive(b"A", frames, 0.0), b"A") == Code.NOT_REGISTERED


def test_who_lists_online_names_even_before_hello(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    register(core, b"A", "Alice")
    assert replies(core.receive(b"X", p.encode_simple(b"WHO", b"w"), 0.0), b"X") == [
        p.Users(b"w", ("Alice", "bob"))
    ]


def test_silent_client_is_dropped_after_the_timeout_and_its_name_freed(core: BrokerCore) -> None:
    register(core, b"A", "alice", now=0.0)
    register(core, b"B", "bob", now=0.0)
    core.receive(b"B", p.encode_simple(b"PING", b"p"), 2.5)
    assert core.expire(3.0) == []
    (leave,) = published(core.expire(3.1))
    assert leave.event == p.Leave("alice", 3100, "timeout")
    assert replies(register(core, b"C", "alice", now=3.2), b"C")[0].name == "alice"  # type: ignore[union-attr]


def test_bye_acknowledges_and_announces_quit(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    actions = core.receive(b"A", p.encode_simple(b"BYE", b"b"), 1.0)
    assert replies(actions, b"A") == [p.Ack(b"b", 1000, "accepted")]
    assert [e.event for e in published(actions)] == [p.Leave("alice", 1000, "quit")]


def test_resume_token_moves_the_session_to_a_new_connection_silently(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    actions = core.receive(b"A2", p.encode_hello(b"h2", "alice", "token0"), 1.0)
    assert published(actions) == []
    assert replies(actions, b"A2")[0].token == "token0"  # type: ignore[union-attr]
    # The old connection, should it still be alive, hears why, so that it does not take the session back.
    (replaced,) = replies(actions, b"A")
    assert isinstance(replaced, p.Replaced) and "another connection" in replaced.reason
    assert error_code(core.receive(b"A", p.encode_simple(b"PING", b"p"), 1.0), b"A") == Code.NOT_REGISTERED
    assert (
        error_code(core.receive(b"X", p.encode_hello(b"h", "alice", "wrong"), 1.0), b"X") == Code.NAME_TAKEN
    )


def test_undeliverable_private_message_is_refused_or_kept(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    (forward,) = core.receive(b"A", p.encode_send(b"m1", "bob", "hi"), 1.0)
    assert isinstance(forward, Forward)
    assert error_code(core.undeliverable(forward, busy=True, now=1.0), b"A") == Code.RECIPIENT_BUSY
    actions = core.undeliverable(forward, busy=False, now=1.0)  # bob's connection is gone
    assert replies(actions, b"A") == [p.Ack(b"m1", 1000, "stored")]
    assert [e.event for e in published(actions)] == [p.Leave("bob", 1000, "disconnected")]
    # bob comes back: the message is waiting, with its original id and time
    back = register(core, b"B2", "bob", now=5.0)
    assert p.Message(b"m1", "alice", "bob", 1000, b"hi") in replies(back, b"B2")


def test_shutdown_tells_every_client_and_refuses_what_follows(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    actions = core.shutdown(5.0)
    assert replies(actions, b"A") == [p.Shutdown("the broker is shutting down")]
    assert [e.event for e in published(actions)] == [p.Shutdown("the broker is shutting down")]
    assert error_code(core.receive(b"A", p.encode_send(b"m", "*", "x"), 5.0), b"A") == Code.SHUTTING_DOWN


def test_private_message_to_an_offline_known_user_is_kept_in_order_with_receipts(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    core.receive(b"B", p.encode_simple(b"BYE", b"bye"), 0.5)
    register(core, b"A", "alice")
    for i in range(3):
        answer = replies(core.receive(b"A", p.encode_send(b"m%d" % i, "bob", f"t{i}"), 1.0 + i), b"A")
        assert answer == [p.Ack(b"m%d" % i, 1000 + 1000 * i, "stored")]
    core.receive(b"A", p.encode_simple(b"BYE", b"bye"), 4.0)  # alice is away when bob reads
    back = register(core, b"B2", "bob", now=5.0)
    mail = [e for e in replies(back, b"B2") if isinstance(e, p.Message)]
    assert [(m.msg_id, m.body, m.time_ms) for m in mail] == [
        (b"m0", b"t0", 1000), (b"m1", b"t1", 2000), (b"m2", b"t2", 3000)
    ]  # fmt: skip
    core.receive(b"B2", p.encode(p.Received(b"r", "alice", (b"m0", b"m1", b"m2"))), 6.0)
    assert core.store.mailbox("bob") == []
    again = register(core, b"A2", "alice", now=7.0)
    assert p.Receipt("bob", 6000, (b"m0", b"m1", b"m2")) in replies(again, b"A2")


def test_a_resent_message_is_acknowledged_again_but_not_delivered_twice(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    (forward,) = core.receive(b"A", p.encode_send(b"m1", "bob", "hi"), 1.0)
    assert isinstance(forward, Forward)
    core.forwarded(forward)
    again = core.receive(b"A", p.encode_send(b"m1", "bob", "hi"), 2.0)
    assert again == [SendTo(b"A", p.Ack(b"m1", 2000, "accepted"))]
    core.receive(b"A", p.encode_send(b"m2", "*", "x"), 2.0)
    assert published(core.receive(b"A", p.encode_send(b"m2", "*", "x"), 3.0)) == []


def test_room_messages_go_to_the_room_topic_for_members_only(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    entered = core.receive(b"A", p.encode_command(b"ENTER", b"e", "#Dev"), 1.0)
    assert replies(entered, b"A") == [p.Ack(b"e", 1000, "accepted")]
    assert published(entered) == [p.Published(b"#dev\x00", 1, p.Join("alice", 1000, "#dev"))]
    said = core.receive(b"A", p.encode_send(b"m1", "#dev", "hi devs"), 2.0)
    assert published(said) == [
        p.Published(b"#dev\x00", 2, p.Message(b"m1", "alice", "#dev", 2000, b"hi devs"))
    ]
    assert (
        error_code(core.receive(b"B", p.encode_send(b"m2", "#dev", "me too"), 2.0), b"B") == Code.NOT_MEMBER
    )
    rooms = replies(core.receive(b"B", p.encode_simple(b"ROOMS", b"r"), 2.0), b"B")
    assert rooms == [p.RoomList(b"r", (("#dev", 1),), ())]
    names = replies(core.receive(b"B", p.encode_command(b"NAMES", b"n", "#dev"), 2.0), b"B")
    assert names == [p.Users(b"n", ("alice",))]
    left = core.receive(b"A", p.encode_command(b"EXIT", b"x", "#dev"), 3.0)
    assert [e.event for e in published(left)] == [p.Leave("alice", 3000, "left", "#dev")]


def test_history_pages_back_from_the_newest(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    core.receive(b"A", p.encode_command(b"ENTER", b"e", "#dev"), 0.0)  # seq 1 is the JOIN
    for i in range(5):
        core.receive(b"A", p.encode_send(b"m%d" % i, "#dev", f"t{i}"), 1.0 + i)  # seqs 2..6
    (latest,) = replies(core.receive(b"A", p.encode(p.HistoryRequest(b"h", "#dev", 0, 2)), 9.0), b"A")
    assert isinstance(latest, p.History) and latest.last_seq == 6
    assert [r.body for r in latest.records] == [b"t3", b"t4"]
    (older,) = replies(core.receive(b"A", p.encode(p.HistoryRequest(b"h", "#dev", 5, 10)), 9.0), b"A")
    assert isinstance(older, p.History) and [r.seq for r in older.records] == [2, 3, 4]
    register(core, b"B", "bob")
    denied = core.receive(b"B", p.encode(p.HistoryRequest(b"h", "#dev", 0, 2)), 9.0)
    assert error_code(denied, b"B") == Code.NOT_MEMBER


def test_search_finds_only_what_the_user_may_see(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    core.receive(b"A", p.encode_command(b"ENTER", b"e", "#secret"), 0.0)
    core.receive(b"A", p.encode_send(b"m1", "#secret", "the plan is ready"), 1.0)
    core.receive(b"A", p.encode_send(b"m2", "*", "the plan for lunch"), 2.0)
    (found,) = replies(core.receive(b"B", p.encode_command(b"SEARCH", b"s", "plan"), 3.0), b"B")
    assert isinstance(found, p.Found) and [r.body for r in found.records] == [b"the plan for lunch"]
    (mine,) = replies(core.receive(b"A", p.encode_command(b"SEARCH", b"s", "plan"), 3.0), b"A")
    assert isinstance(mine, p.Found) and len(mine.records) == 2


def test_a_flooding_client_is_refused_with_a_retry_after_then_disconnected() -> None:
    core = BrokerCore(CoreConfig(PUB, rate=10.0, burst=5.0))
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    accepted = [core.receive(b"A", p.encode_send(b"m%d" % i, "*", "x"), 1.0) for i in range(5)]
    assert all(replies(a, b"A") == [p.Ack(b"m%d" % i, 1000, "accepted")] for i, a in enumerate(accepted))
    (refusal,) = core.receive(b"A", p.encode_send(b"m5", "*", "x"), 1.0)
    assert isinstance(refusal, SendTo)
    assert refusal.message == p.Error(b"m5", Code.RATE_LIMITED, "slow down: retry after 100 ms", 100)
    assert replies(core.receive(b"A", p.encode_send(b"m6", "*", "x"), 1.1), b"A")[0] == p.Ack(
        b"m6", 1100, "accepted"
    )
    assert replies(core.receive(b"B", p.encode_send(b"b1", "*", "x"), 1.1), b"B")[0] == p.Ack(
        b"b1", 1100, "accepted"
    )
    actions: Sequence[object] = []
    for i in range(16):  # goes on into the refusals: more than 3 x burst of them in a row
        actions = core.receive(b"A", p.encode_send(b"f%d" % i, "*", "x"), 1.1)
    assert [e.event for e in published(actions)] == [p.Leave("alice", 1100, "flooding")]
    assert "alice" not in core.by_key


def test_a_connection_disconnected_for_flooding_is_hung_up_and_ignored_for_its_cool_off() -> None:
    core = BrokerCore(CoreConfig(PUB, rate=10.0, burst=1.0, cool_off=60.0))
    register(core, b"A", "alice")
    actions: Sequence[object] = []
    for i in range(5):  # one accepted, then more than 3 x burst refusals in a row
        actions = core.receive(b"A", p.encode_send(b"f%d" % i, "*", "x"), 1.0)
    (told, *_) = actions
    assert isinstance(told, SendTo) and isinstance(told.message, p.Error)
    assert "wait 60 s before connecting again" in told.message.text
    # Told first, then its connection is closed and its address turned away until the end of the cool-off.
    assert actions[-1] == Hangup(b"A", 61.0)
    # What it had queued before the hangup is ignored: no reply at all, not even to HELLO.
    assert core.receive(b"A", p.encode_hello(b"h", "alice"), 2.0) == []
    assert core.receive(b"A", p.encode_send(b"f9", "*", "x"), 60.9) == []
    assert core.counters["dropped.flooder"] == 2
    register(core, b"B", "bob")  # another connection is served meanwhile
    # After it, the connection is an ordinary unregistered peer again.
    assert error_code(core.receive(b"A", p.encode_send(b"g", "*", "x"), 61.1), b"A") == Code.NOT_REGISTERED
    register(core, b"A", "alice", now=61.2)


def test_a_full_mailbox_refuses_with_its_code() -> None:
    core = BrokerCore(CoreConfig(PUB, mailbox_messages=2, mailbox_bytes=10))
    register(core, b"B", "bob")
    core.receive(b"B", p.encode_simple(b"BYE", b"bye"), 0.5)
    register(core, b"A", "alice")
    assert replies(core.receive(b"A", p.encode_send(b"m1", "bob", "12345"), 1.0), b"A")[0].status == "stored"  # type: ignore[union-attr]
    assert (
        error_code(core.receive(b"A", p.encode_send(b"m2", "bob", "123456"), 1.0), b"A")
        == Code.RECIPIENT_BUSY
    )  # bytes
    assert replies(core.receive(b"A", p.encode_send(b"m3", "bob", "1"), 1.0), b"A")[0].status == "stored"  # type: ignore[union-attr]
    assert (
        error_code(core.receive(b"A", p.encode_send(b"m4", "bob", "1"), 1.0), b"A") == Code.RECIPIENT_BUSY
    )  # count


def test_a_recipient_whose_queue_stays_full_is_dropped_and_announced(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")

    def forward_at(now: float) -> Forward:
        (forward,) = core.receive(b"A", p.encode_send(b"m%d" % int(now * 10), "bob", "hi"), now)
        assert isinstance(forward, Forward)
        return forward

    assert published(core.undeliverable(forward_at(1.0), busy=True, now=1.0)) == []
    core.forwarded(forward_at(2.0))  # bob read again: the clock starts over
    assert published(core.undeliverable(forward_at(3.0), busy=True, now=3.0)) == []
    assert published(core.undeliverable(forward_at(5.0), busy=True, now=5.0)) == []  # 2 s < the 3 s timeout
    dropped = core.undeliverable(forward_at(6.5), busy=True, now=6.5)
    assert error_code([a for a in dropped if isinstance(a, SendTo)], b"A") == Code.RECIPIENT_BUSY
    assert [e.event for e in published(dropped)] == [p.Leave("bob", 6500, "stuck")]


def test_registration_limits_refuse_with_their_code() -> None:
    core = BrokerCore(CoreConfig(PUB, max_clients=3, max_per_key=2))
    for peer, name in ((b"A", "a1"), (b"B", "a2")):
        assert isinstance(
            replies(core.receive(peer, p.encode_hello(b"h", name), 0.0, "KEY-A"), peer)[0], p.Welcome
        )
    assert error_code(core.receive(b"C", p.encode_hello(b"h", "a3"), 0.0, "KEY-A"), b"C") == Code.TOO_MANY
    assert core.store.key_of("a3") is None  # a refused HELLO claims no name
    assert isinstance(
        replies(core.receive(b"D", p.encode_hello(b"h", "b1"), 0.0, "KEY-B"), b"D")[0], p.Welcome
    )
    assert error_code(core.receive(b"E", p.encode_hello(b"h", "b2"), 0.0, "KEY-B"), b"E") == Code.TOO_MANY


def test_searches_count_against_the_rate_limit() -> None:
    core = BrokerCore(CoreConfig(PUB, rate=1.0, burst=2.0))
    register(core, b"A", "alice")
    searches = [core.receive(b"A", p.encode_command(b"SEARCH", b"s%d" % i, "plan"), 1.0) for i in range(3)]
    assert [type(replies(s, b"A")[0]).__name__ for s in searches] == ["Found", "Found", "Error"]
    assert error_code(searches[2], b"A") == Code.RATE_LIMITED


@pytest.mark.parametrize(
    "command",
    [
        p.encode_command(b"ENTER", b"x", "#dev"),
        p.encode_command(b"EXIT", b"x", "#dev"),
        p.encode(p.Received(b"x", "bob", (b"m1",))),
        p.encode_command(b"ROOMS", b"x"),
        p.encode_command(b"NAMES", b"x", "#dev"),
    ],
    ids=lambda frames: type(p.decode_command(frames)).__name__,
)
def test_room_changes_listings_and_receipts_count_against_the_rate_limit(command: list[bytes]) -> None:
    core = BrokerCore(CoreConfig(PUB, rate=1.0, burst=1.0))
    register(core, b"A", "alice")
    answers = [core.receive(b"A", command, 1.0) for _ in range(3)]
    assert error_code(answers[-1], b"A") == Code.RATE_LIMITED
    # Kept up, it disconnects like a flood of messages: 2,000 ENTER/EXIT reach nobody.
    flood = [a for i in range(20) for a in core.receive(b"A", command, 1.0 + i / 1000)]
    assert any(isinstance(a, Hangup) for a in flood)
    assert "alice" not in core.by_key


def test_a_receipt_names_only_what_its_sender_really_sent_to_that_recipient(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    register(core, b"C", "carol")
    (forward,) = core.receive(b"A", p.encode_send(b"m1", "bob", "hi"), 1.0)
    assert isinstance(forward, Forward)
    core.forwarded(forward)
    made_up = [b"x%d" % i for i in range(p.MAX_RECEIVED_IDS)]
    assert replies(core.receive(b"B", p.encode(p.Received(b"r1", "alice", tuple(made_up))), 2.0), b"A") == []
    # carol cannot confirm what alice sent to bob
    assert replies(core.receive(b"C", p.encode(p.Received(b"r2", "alice", (b"m1",))), 2.0), b"A") == []
    confirmed = core.receive(b"B", p.encode(p.Received(b"r3", "alice", (b"m1", b"x1"))), 3.0)
    assert replies(confirmed, b"A") == [p.Receipt("bob", 3000, (b"m1",))]
    again = core.receive(b"B", p.encode(p.Received(b"r4", "alice", (b"m1",))), 4.0)
    assert replies(again, b"A") == []  # confirmed once: one receipt


def test_rooms_are_bounded_per_user_and_in_all() -> None:
    core = BrokerCore(CoreConfig(PUB, max_rooms_per_user=2, max_rooms=3))
    register(core, b"A", "alice")
    register(core, b"B", "bob")

    def enter(peer: bytes, room: str) -> p.ServerEvent | p.PublishedEvent:
        (answer,) = replies(core.receive(peer, p.encode_command(b"ENTER", b"e", room), 1.0), peer)
        return answer

    assert isinstance(enter(b"A", "#a1"), p.Ack) and isinstance(enter(b"A", "#a2"), p.Ack)
    refused = enter(b"A", "#a3")
    assert isinstance(refused, p.Error) and refused.code == Code.TOO_MANY  # alice is in 2 rooms
    assert isinstance(enter(b"B", "#b1"), p.Ack)  # the third room
    refused = enter(b"B", "#b2")
    assert isinstance(refused, p.Error) and refused.code == Code.TOO_MANY  # the broker holds 3
    core.receive(b"A", p.encode_command(b"EXIT", b"x", "#a2"), 2.0)
    assert isinstance(enter(b"B", "#b2"), p.Ack)  # #a2 is empty now: room for one more


def test_a_stuck_client_that_keeps_pinging_is_dropped_by_the_liveness_sweep(core: BrokerCore) -> None:
    register(core, b"A", "alice", now=3.0)
    register(core, b"B", "bob")
    core.queue_full(b"B", 1.0)  # a reply to bob found its queue full
    core.receive(b"B", p.encode_simple(b"PING", b"p"), 2.0)
    core.queue_full(b"B", 2.0)  # its PONG too: the clock does not start over
    assert core.expire(3.5) == []  # full for 2.5 s < the 3 s timeout
    core.receive(b"B", p.encode_simple(b"PING", b"p"), 4.0)  # alive, but still not reading
    dropped = core.expire(4.5)
    assert [e.event for e in published(dropped)] == [p.Leave("bob", 4500, "stuck")]
    assert "bob" not in core.by_key and "alice" in core.by_key


def test_a_client_whose_queue_drains_again_is_not_dropped(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    core.queue_full(b"B", 1.0)
    core.queue_drained(b"B")  # a PONG got through: it reads
    core.receive(b"B", p.encode_simple(b"PING", b"p"), 4.0)
    assert core.expire(4.5) == []


def test_after_a_restart_sequences_go_on_past_presence_events_too() -> None:
    store = MemoryStore()
    before = BrokerCore(CoreConfig(PUB), store=store)
    register(before, b"A", "alice")  # JOIN: lobby seq 1
    before.receive(b"A", p.encode_send(b"m1", "*", "hi"), 1.0)  # seq 2
    before.receive(b"A", p.encode_simple(b"BYE", b"bye"), 2.0)  # LEAVE: seq 3, kept nowhere
    after = BrokerCore(CoreConfig(PUB), store=store)  # the broker restarted on the same store
    (join,) = published(register(after, b"B", "bob", now=3.0))
    # A client that saw seq 3 before the restart must not take 3 for a repeat.
    assert join.seq == 4


def test_welcome_tells_the_client_the_rate_limit_to_pace_itself_by() -> None:
    core = BrokerCore(CoreConfig(PUB, rate=20.0, burst=100.0))
    (welcome,) = replies(core.receive(b"A", p.encode_hello(b"h", "alice"), 1.0), b"A")
    assert isinstance(welcome, p.Welcome) and (welcome.rate_per_minute, welcome.burst) == (1200, 100)
    unlimited = BrokerCore(CoreConfig(PUB, rate=0.0))
    (welcome,) = replies(unlimited.receive(b"A", p.encode_hello(b"h", "alice"), 1.0), b"A")
    assert isinstance(welcome, p.Welcome) and (welcome.rate_per_minute, welcome.burst) == (0, 0)


def test_sync_with_a_tag_publishes_synced_on_that_round_s_own_topic(core: BrokerCore) -> None:
    register(core, b"A", "Alice")
    (synced,) = [
        a
        for a in core.receive(b"A", p.encode_command(b"SYNC", b"s1", b"round-7"), 1.0)
        if isinstance(a, Publish)
    ]
    # No earlier subscription (the own topic "@Alice\0") is a prefix of it.
    topic = synced.published.topic
    assert topic == b"@Alice\x01round-7\x00" and not topic.startswith(b"@Alice\x00")
    assert synced.published.event == p.Synced(b"s1")
    assert (
        error_code(core.receive(b"A", p.encode_command(b"SYNC", b"s2", b"bad tag"), 1.0), b"A")
        == Code.MALFORMED
    )


def test_who_follows_joins_and_leaves_between_asks(core: BrokerCore) -> None:
    def who() -> tuple[str, ...]:
        (users,) = replies(core.receive(b"X", p.encode_simple(b"WHO", b"w"), 1.0), b"X")
        assert isinstance(users, p.Users)
        return users.names

    register(core, b"B", "bob")
    assert who() == ("bob",)
    assert who() == ("bob",)  # asked again: the same, without sorting again
    register(core, b"A", "alice")
    assert who() == ("alice", "bob")
    core.receive(b"B", p.encode_simple(b"BYE", b"bye"), 2.0)
    assert who() == ("alice",)


def test_received_is_bounded_and_keeps_receipts_only_for_known_senders(core: BrokerCore) -> None:
    register(core, b"B", "bob")
    too_many = [b"m%d" % i for i in range(p.MAX_RECEIVED_IDS + 1)]
    assert error_code(
        core.receive(b"B", p.encode_command(b"RECEIVED", b"r", "alice", too_many), 1.0), b"B"
    ) == (Code.MALFORMED)
    core.receive(b"B", p.encode(p.Received(b"r", "nobody", (b"m1",))), 1.0)  # never registered
    assert core.store.receipts("nobody") == []


def test_without_a_cool_off_the_flood_left_in_the_queue_is_still_not_answered() -> None:
    core = BrokerCore(CoreConfig(PUB, rate=10.0, burst=1.0, cool_off=0.0, timeout_ms=6000))
    register(core, b"A", "alice")
    for i in range(5):  # thrown out
        actions = core.receive(b"A", p.encode_send(b"f%d" % i, "*", "x"), 1.0)
    assert actions[-1] == Hangup(b"A", 1.0)  # no ban on the address
    # Read after the hangup, in the same wake-up or later: nothing answered, nobody registered.
    assert core.receive(b"A", p.encode_send(b"f9", "*", "x"), 1.0) == []
    assert core.receive(b"A", p.encode_hello(b"h", "alice"), 2.0) == []
    assert "alice" not in core.by_key


def test_a_second_hello_in_another_case_welcomes_again_with_the_name_as_registered(core: BrokerCore) -> None:
    register(core, b"B", "Bob")
    core.receive(b"B", p.encode_simple(b"BYE", b"bye"), 0.5)
    register(core, b"A", "alice")
    core.receive(b"A", p.encode_send(b"m1", "bob", "while you were away"), 1.0)
    first = replies(core.receive(b"B2", p.encode_hello(b"h1", "Bob"), 2.0), b"B2")
    assert [type(e) for e in first] == [p.Welcome, p.Message]  # the mailbox, once
    again = core.receive(b"B2", p.encode_hello(b"h2", "BOB", "any token"), 3.0)
    # The name as registered and the session's token: nothing else is sent or published.
    assert replies(again, b"B2") == [p.Welcome(b"h2", "Bob", "token2", PUB, 1000, 3000, 100, 3000)]
    assert published(again) == []


def test_names_sort_by_their_lower_case_form_in_ascii_order(core: BrokerCore) -> None:
    names = ["Zed", "_x", "alice", "9z", "Bob", "-a", "a.b"]
    for i, name in enumerate(names):
        register(core, b"P%d" % i, name)
        core.receive(b"P%d" % i, p.encode_command(b"ENTER", b"e", "#dev"), 1.0)
    # '_' is 0x5F: after the digits, before the letters once they are lower case.
    expected = ("-a", "9z", "_x", "a.b", "alice", "Bob", "Zed")
    assert replies(core.receive(b"X", p.encode_simple(b"WHO", b"w"), 1.0), b"X") == [p.Users(b"w", expected)]
    names_reply = replies(core.receive(b"P0", p.encode_command(b"NAMES", b"n", "#dev"), 1.0), b"P0")
    assert names_reply == [p.Users(b"n", expected)]


def test_rooms_counts_offline_members_and_names_lists_online_ones(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    register(core, b"B", "bob")
    for peer in (b"A", b"B"):
        core.receive(peer, p.encode_command(b"ENTER", b"e", "#dev"), 1.0)
    core.receive(b"A", p.encode_simple(b"BYE", b"bye"), 2.0)  # a member still, offline
    register(core, b"C", "carol")
    (rooms,) = replies(core.receive(b"C", p.encode_simple(b"ROOMS", b"r"), 3.0), b"C")
    assert rooms == p.RoomList(b"r", (("#dev", 2),), ())
    (online,) = replies(core.receive(b"C", p.encode_command(b"NAMES", b"n", "#dev"), 3.0), b"C")
    assert online == p.Users(b"n", ("bob",))


def test_an_empty_sync_tag_syncs_on_the_own_topic(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    actions = core.receive(b"A", p.encode_command(b"SYNC", b"s1", b""), 1.0)
    assert published(actions) == [p.Published(p.private_topic("alice"), 0, p.Synced(b"s1"))]
    assert replies(actions, b"A") == [p.Ack(b"s1", 1000, "accepted")]


def test_history_records_come_oldest_first_and_a_count_of_500_is_a_page(core: BrokerCore) -> None:
    register(core, b"A", "alice")
    for i in range(3):
        core.receive(b"A", p.encode_send(b"m%d" % i, "*", f"t{i}"), 1.0 + i)  # lobby seqs 2..4 (1: JOIN)
    (page,) = replies(core.receive(b"A", p.encode(p.HistoryRequest(b"h", "*", 0, 500)), 9.0), b"A")
    assert isinstance(page, p.History) and page.last_seq == 4
    assert [(r.seq, r.body) for r in page.records] == [(2, b"t0"), (3, b"t1"), (4, b"t2")]


def test_a_tiny_rate_still_gives_a_retry_after_clients_can_read() -> None:
    core = BrokerCore(CoreConfig(PUB, rate=1e-9, burst=1.0))
    register(core, b"A", "alice")
    core.receive(b"A", p.encode_send(b"m1", "*", "x"), 1.0)
    (refusal,) = replies(core.receive(b"A", p.encode_send(b"m2", "*", "x"), 1.0), b"A")
    assert isinstance(refusal, p.Error) and refusal.code == Code.RATE_LIMITED
    assert 0 < refusal.retry_after_ms <= p.MAX_INT32  # decoded, not dropped as out of range


def test_history_after_a_number_gives_only_the_gap(core: BrokerCore) -> None:
    register(core, b"A", "alice")  # JOIN: lobby seq 1
    for i in range(4):
        core.receive(b"A", p.encode_send(b"m%d" % i, "*", f"t{i}"), 1.0)  # seqs 2..5
    asked = p.encode(p.HistoryRequest(b"h", "*", 0, 10, 3))
    (history,) = replies(core.receive(b"A", asked, 2.0), b"A")
    assert isinstance(history, p.History) and history.last_seq == 5
    assert [r.body for r in history.records] == [b"t2", b"t3"]
    out_of_range = p.encode_command(b"HISTORY", b"h", "*", 0, 10, 2**63)
    assert error_code(core.receive(b"A", out_of_range, 2.0), b"A") == Code.MALFORMED


def test_a_token_offered_for_a_free_name_is_kept_so_the_next_hello_resumes(core: BrokerCore) -> None:
    # After a restart: the first HELLO registers (its WELCOME too late for its client),
    # the client's next HELLO, with the same token, resumes that session: no 409.
    token = "f" * 32
    first = core.receive(b"A", p.encode_hello(b"h1", "alice", token), 1.0)
    assert [w.token for w in replies(first, b"A") if isinstance(w, p.Welcome)] == [token]
    again = core.receive(b"A2", p.encode_hello(b"h2", "alice", token), 2.0)
    assert [w.token for w in replies(again, b"A2") if isinstance(w, p.Welcome)] == [token]
    assert core.by_key["alice"].peer == b"A2"
    short = core.receive(b"B", p.encode_hello(b"h3", "bob", "guessable"), 3.0)
    assert [w.token for w in replies(short, b"B") if isinstance(w, p.Welcome)] != ["guessable"]
