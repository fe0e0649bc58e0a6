"""The ZCHAT/2 codec: round trips, and any bytes in give a typed value or a ProtocolError."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from zchat.common import protocol as p
from zchat.common.protocol import Code, ProtocolError


def frame(*items: Any) -> list[bytes]:
    """One ZCHAT/2 message from its items, as any MessagePack encoder would write it."""
    return [msgpack.packb(list(items))]


def refused(frames: list[bytes]) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        p.decode_command(frames)
    return caught.value


#: Numbers around every edge of section 3.2's ranges, and past 64 bits' worth.
numbers = st.one_of(
    st.integers(0, 600),
    st.integers(p.MAX_TIME_MS - 2, p.MAX_TIME_MS + 2),
    st.integers(p.MAX_NUMBER - 2, p.MAX_NUMBER + 2),
    st.integers(2**64 - 2, 2**64 - 1),
    st.integers(-(2**63), -1),
)
# Items that look like the protocol, so that the fuzzer reaches past the command.
strings = st.one_of(
    st.sampled_from([b"SEND", b"HELLO", b"WHO", b"PING", b"SYNC", b"BYE", b"HISTORY", b"RECEIVED", b"ACK",
                     b"*", b"#dev", b"bob", b"m1", b"", b"\xff", b"ZCHAT/2", b"ZCHAT/3"]),
    st.binary(max_size=40),
    st.text(max_size=20),
)  # fmt: skip
leaves = st.one_of(strings, numbers, st.booleans(), st.none(), st.floats(allow_nan=False))
items = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
commands = st.builds(
    lambda command, fields: frame(command, b"id-1", *fields),
    st.sampled_from([k.command for k in p.COMMANDS]),
    st.lists(items, max_size=5),
)
arbitrary = st.one_of(
    st.lists(st.binary(max_size=80), max_size=4),
    st.lists(items, max_size=7).map(lambda values: [msgpack.packb(values)]),
    commands,
)


@given(arbitrary)
def test_decoder_returns_a_command_or_a_protocol_error(frames: list[bytes]) -> None:
    try:
        command = p.decode_command(frames)
    except ProtocolError as e:
        assert isinstance(e.code, Code)
        assert p.MSG_ID_RE.fullmatch(e.msg_id) or e.msg_id == b""
    else:
        assert isinstance(command, p.ClientCommand)
        if isinstance(command, p.HistoryRequest):  # its numbers are within their ranges
            assert 0 <= command.before <= p.MAX_NUMBER and 0 <= command.limit <= p.MAX_HISTORY


def numbers_within_their_ranges(event: object) -> bool:
    """Every number field of a decoded broker message, against its range in PROTOCOL.md."""
    if isinstance(event, p.Published):
        return 0 <= event.seq <= p.MAX_NUMBER and numbers_within_their_ranges(event.event)
    checks: list[tuple[int, int, int]] = []  # (value, low, high)
    if isinstance(event, p.Welcome):
        checks += [(event.heartbeat_ms, 1, p.MAX_INT32), (event.timeout_ms, 1, p.MAX_INT32),
                   (event.max_body, 1, p.MAX_INT32), (event.time_ms, 0, p.MAX_TIME_MS),
                   (event.rate_per_minute, 0, p.MAX_NUMBER), (event.burst, 0, p.MAX_NUMBER)]  # fmt: skip
    elif isinstance(event, (p.Ack, p.Pong, p.Message, p.Join, p.Leave, p.Receipt)):
        checks.append((event.time_ms, 0, p.MAX_TIME_MS))
    elif isinstance(event, p.Error):
        checks += [(event.code, 400, 599), (event.retry_after_ms, 0, p.MAX_INT32)]
    elif isinstance(event, p.RoomList):
        checks += [(count, 1, p.MAX_NUMBER) for _, count in event.sizes]
    elif isinstance(event, (p.History, p.Found)):
        checks.append((len(event.records), 0, p.MAX_HISTORY))
        checks += [(r.seq, 0, p.MAX_NUMBER) for r in event.records]
        checks += [(r.time_ms, 0, p.MAX_TIME_MS) for r in event.records]
        if isinstance(event, p.History):
            checks.append((event.last_seq, 0, p.MAX_NUMBER))
    return all(low <= value <= high for value, low, high in checks)


replies = st.builds(
    lambda command, fields: frame(command, *fields),
    st.sampled_from([k.command for k in p.REPLIES]),
    st.lists(items, max_size=11),
)


@given(st.one_of(arbitrary, replies))
def test_client_side_decoders_return_an_event_within_the_ranges_or_a_protocol_error(
    frames: list[bytes],
) -> None:
    for decode in (p.decode_event, p.decode_published):
        try:
            event = decode(frames)
        except ProtocolError as e:
            assert isinstance(e.code, Code)
        else:
            assert numbers_within_their_ranges(event), event


@given(st.lists(items, max_size=8), st.sampled_from([k.command for k in p.PUBLISHED]), numbers)
def test_published_decoder_returns_an_event_within_the_ranges_or_a_protocol_error(
    fields: list[Any], command: bytes, seq: int
) -> None:
    try:
        published = p.decode_published([b"#dev\x00" + msgpack.packb([seq, command, *fields])])
    except ProtocolError as e:
        assert isinstance(e.code, Code)
    else:
        assert published.topic == b"#dev\x00" and numbers_within_their_ranges(published)


@pytest.mark.parametrize(
    ("before", "count"), [(p.MAX_NUMBER + 1, 10), (2**64 - 1, 10), (0, p.MAX_HISTORY + 1), (-1, 10), (0, -5)]
)
def test_history_numbers_out_of_range_are_refused_with_400_and_the_id(before: int, count: int) -> None:
    error = refused(frame(b"HISTORY", b"h1", b"#dev", before, count))
    assert (error.code, error.msg_id) == (Code.MALFORMED, b"h1")


def test_history_numbers_at_the_edges_of_their_ranges_are_accepted() -> None:
    command = p.decode_command(frame(b"HISTORY", b"h1", b"*", p.MAX_NUMBER, p.MAX_HISTORY, p.MAX_NUMBER))
    assert command == p.HistoryRequest(b"h1", "*", p.MAX_NUMBER, p.MAX_HISTORY, p.MAX_NUMBER)
    assert p.decode_command(frame(b"HISTORY", b"h1", b"#dev", 0, 0)) == p.HistoryRequest(b"h1", "#dev", 0, 0)


@pytest.mark.parametrize("value", [True, 1.0, None, b"10", [10]])
def test_a_number_of_another_type_is_400(value: Any) -> None:
    error = refused(frame(b"HISTORY", b"h1", b"#dev", 0, value))
    assert (error.code, error.msg_id) == (Code.MALFORMED, b"h1")


@pytest.mark.parametrize("value", [7, None, [b"bob"], 1.5])
def test_a_string_of_another_type_is_400(value: Any) -> None:
    error = refused(frame(b"SEND", b"s1", value, b"hi"))
    assert (error.code, error.msg_id) == (Code.MALFORMED, b"s1")


@pytest.mark.parametrize(
    "frames",
    [
        frame(b"WELCOME", b"w", b"a", b"t", b"tcp://x:1", 0, 1, 1, 5, 0, 0),  # heartbeat 0
        frame(b"WELCOME", b"w", b"a", b"t", b"tcp://x:1", 1, 2**31, 1, 5, 0, 0),  # timeout past 32 bits
        frame(b"ACK", b"a", p.MAX_TIME_MS + 1, b"accepted"),
        frame(b"ERROR", b"e", 600, b"x", 0),
        frame(b"ERROR", b"e", 429, b"x", 2**31),
        frame(b"ROOMS", b"r", [[b"#a", 0]], []),
        frame(b"HISTORY", b"h", b"#a", p.MAX_NUMBER + 1, []),
        frame(b"FOUND", b"f", [[p.MAX_NUMBER + 1, b"m", b"a", b"b", 5, b"x"]]),
    ],
)
def test_a_broker_number_out_of_its_range_makes_the_message_malformed(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        p.decode_event(frames)


def test_a_published_sequence_past_its_range_is_malformed() -> None:
    with pytest.raises(ProtocolError):
        p.decode_published([b"*\x00" + msgpack.packb([p.MAX_NUMBER + 1, b"JOIN", b"a", 5, b"*"])])


def test_broker_numbers_at_the_edges_of_their_ranges_are_accepted() -> None:
    welcome = frame(b"WELCOME", b"w", b"a", b"t", b"tcp://x:1", p.MAX_INT32, p.MAX_INT32, 1, p.MAX_TIME_MS,
                    p.MAX_NUMBER, 0)  # fmt: skip
    assert p.decode_event(welcome) == p.Welcome(
        b"w", "a", "t", "tcp://x:1", p.MAX_INT32, p.MAX_INT32, 1, p.MAX_TIME_MS, p.MAX_NUMBER, 0
    )
    assert p.decode_event(frame(b"ERROR", b"", 599, b"x", p.MAX_INT32)) == p.Error(b"", 599, "x", p.MAX_INT32)


@given(st.text(min_size=1, max_size=200), st.from_regex(p.MSG_ID_RE, fullmatch=True))
def test_send_round_trips_any_text(text: str, msg_id: bytes) -> None:
    command = p.decode_command(p.encode_send(msg_id, "bob", text))
    assert command == p.Send(msg_id, "bob", text.encode())


def test_extra_trailing_items_are_ignored_for_later_versions() -> None:
    assert p.decode_command(frame(b"SEND", b"m1", b"bob", b"hi", b"later", 7)) == p.Send(b"m1", "bob", b"hi")
    assert p.decode_event(frame(b"PONG", b"p1", 5, [b"later"])) == p.Pong(b"p1", 5)


def test_a_string_may_come_as_msgpack_bin_too() -> None:
    packed = [msgpack.packb([b"SEND", b"m1", b"bob", b"hi"], use_bin_type=True)]
    assert p.decode_command(packed) == p.Send(b"m1", "bob", b"hi")


def test_non_utf8_body_is_refused_with_its_code_and_id() -> None:
    error = refused(frame(b"SEND", b"m1", b"bob", b"\xff\xfe"))
    assert (error.code, error.msg_id) == (Code.BAD_ENCODING, b"m1")


def test_a_zchat1_message_is_told_the_versions_in_its_own_framing() -> None:
    error = refused([b"ZCHAT/1", b"HELLO", b"h1", b"alice", b""])
    assert (error.code, error.msg_id) == (Code.BAD_VERSION, b"h1")
    assert "ZCHAT/1" in error.text and "ZCHAT/2" in error.text
    old = p.encode_old_error(error.msg_id, error.code, error.text)
    assert old[:4] == [b"ZCHAT/1", b"ERROR", b"h1", b"426"]


def test_a_hello_of_another_version_is_426_and_garbage_is_400() -> None:
    error = refused(frame(b"HELLO", b"h1", b"alice", b"", b"ZCHAT/3"))
    assert (error.code, error.msg_id) == (Code.BAD_VERSION, b"h1")
    assert "ZCHAT/3" in error.text and "ZCHAT/2" in error.text
    for version in (b"zchat", b"", 2):
        assert refused(frame(b"HELLO", b"h1", b"alice", b"", version)).code == Code.MALFORMED
    assert refused(frame(b"HELLO", b"h1", b"alice", b"")).code == Code.MALFORMED  # no version at all


def test_a_client_told_apart_a_zchat1_broker() -> None:
    with pytest.raises(ProtocolError) as caught:
        p.decode_event([b"ZCHAT/1", b"ERROR", b"", b"400", b"first frame must be the signature ZCHAT/1"])
    assert caught.value.code == Code.BAD_VERSION and "ZCHAT/1" in caught.value.text


def test_not_one_frame_nor_one_array_is_400() -> None:
    assert refused([p.encode_simple(b"PING", b"p1")[0], b"more"]).code == Code.MALFORMED
    for garbage in (b"", b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([]), msgpack.packb(b"PING")):
        assert refused([garbage]).code == Code.MALFORMED, garbage
    assert refused([msgpack.packb([b"PING", b"p1"]) + b"\x00"]).code == Code.MALFORMED  # two values


def test_an_unknown_command_is_405_with_its_id() -> None:
    error = refused(frame(b"DANCE", b"d1"))
    assert (error.code, error.msg_id) == (Code.UNKNOWN_COMMAND, b"d1")


def test_published_message_decodes_with_topic_and_sequence() -> None:
    published = p.Published(p.LOBBY_TOPIC, 12, p.Message(b"m1", "alice", "*", 1000, b"hi"))
    (only,) = p.encode_published(published)
    assert only.startswith(p.LOBBY_TOPIC)  # SUB filtering matches the topic as a prefix
    assert p.decode_published([only]) == published


def test_received_with_an_invalid_sender_is_422_like_any_name() -> None:
    for sender in (b"", b"x" * 33, b"not a name", "zoë".encode(), b"\xff\xfe"):
        error = refused(frame(b"RECEIVED", b"r1", sender, [b"m1"]))
        assert (error.code, error.msg_id) == (Code.INVALID_NAME, b"r1"), sender
    for ids in ([b"bad id"], [], [b"m"] * (p.MAX_RECEIVED_IDS + 1), b"m1"):
        error = refused(frame(b"RECEIVED", b"r1", b"alice", ids))
        assert (error.code, error.msg_id) == (Code.MALFORMED, b"r1"), ids


def test_an_empty_sync_tag_is_the_same_as_none() -> None:
    assert p.decode_command(frame(b"SYNC", b"s1", b"")) == p.Sync(b"s1") == p.Sync(b"s1", b"")
    assert p.decode_command(frame(b"SYNC", b"s1")) == p.Sync(b"s1")
    assert refused(frame(b"SYNC", b"s1", b"bad tag")).code == Code.MALFORMED


def test_a_malformed_room_in_a_room_command_is_400() -> None:
    for command in (b"ENTER", b"EXIT", b"NAMES"):
        for room in (b"dev", b"#", b"#" + b"x" * 33, b"#d v", "#café".encode(), b"\xff"):
            error = refused(frame(command, b"e1", room))
            assert (error.code, error.msg_id) == (Code.MALFORMED, b"e1"), (command, room)
    assert refused(frame(b"HISTORY", b"h1", b"#" + b"x" * 33, 0, 10)).code == Code.MALFORMED


def test_a_name_that_is_not_utf8_is_422_not_415() -> None:
    assert refused(frame(b"HELLO", b"h1", b"\xff\xfe", b"", b"ZCHAT/2")).code == Code.INVALID_NAME
    # 415 is for text fields only.
    assert refused(frame(b"SEARCH", b"s1", b"\xff\xfe")).code == Code.BAD_ENCODING


def test_the_table_covers_every_typed_value() -> None:
    tabled = {k.type for k in (*p.COMMANDS, *p.REPLIES, *p.PUBLISHED)}
    for union in (p.ClientCommand, p.ServerEvent, p.PublishedEvent):
        assert set(union.__args__) <= tabled


_RECORD = p.Record(1, b"m1", "alice", "#dev", 5, b"body")
EVERY_COMMAND = [
    p.Hello(b"1", "alice", "tok"), p.Send(b"2", "bob", b"hi"), p.Who(b"3"), p.Ping(b"4"), p.Sync(b"5"),
    p.Sync(b"5", b"tag"), p.Ready(b"6"), p.Bye(b"7"), p.Enter(b"8", "#dev"), p.Exit(b"9", "#dev"),
    p.Rooms(b"a"), p.Names(b"b", "*"), p.HistoryRequest(b"c", "#dev", 0, 50),
    p.HistoryRequest(b"c", "#dev", 10, 50, 3), p.Search(b"d", "x y"), p.Received(b"e", "bob", (b"x", b"y")),
]  # fmt: skip
EVERY_REPLY = [
    p.Welcome(b"1", "a", "t", "tcp://x:1", 2000, 6000, 65536, 5, 20, 100), p.Ack(b"1", 5, "accepted", (b"2",)),
    p.Ack(b"1", 5, "stored"), p.Error(b"1", 429, "slow", 30), p.Error(b"", 404, "no", 0),
    p.Users(b"1", ("a", "b")), p.Users(b"1", ()), p.Pong(b"1", 5), p.Message(b"1", "a", "b", 5, b"x"),
    p.Shutdown("bye"), p.Replaced("r"), p.RoomList(b"1", (("#a", 2), ("#b", 1)), ("#a",)),
    p.History(b"1", "#a", 9, (_RECORD,)), p.Found(b"1", (_RECORD,)), p.Receipt("b", 5, (b"1", b"2")),
]  # fmt: skip
EVERY_PUBLISHED = [
    p.Message(b"1", "a", "*", 5, b"x"), p.Join("a", 5), p.Join("a", 5, "#r"), p.Leave("a", 5, "quit"),
    p.Leave("a", 5, "left", "#r"), p.Synced(b"1"), p.Shutdown("bye"),
    p.Presence("#r", (p.Change("a", 5, ""), p.Change("b", 6, "quit"))),
]  # fmt: skip


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda c: type(c).__name__)
def test_every_command_decodes_to_what_was_encoded(command: p.ClientCommand) -> None:
    assert p.decode_command(p.encode(command)) == command


@pytest.mark.parametrize("event", EVERY_REPLY, ids=lambda e: type(e).__name__)
def test_every_reply_decodes_to_what_was_encoded(event: p.ServerEvent) -> None:
    assert p.decode_event(p.encode(event)) == event


@pytest.mark.parametrize("event", EVERY_PUBLISHED, ids=lambda e: type(e).__name__)
def test_every_published_event_decodes_to_what_was_encoded(event: p.PublishedEvent) -> None:
    published = p.Published(b"#r\x00", 7, event)
    assert p.decode_published(p.encode_published(published)) == published


def test_several_frames_headed_by_this_version_are_400_not_426() -> None:
    error = refused([p.SIGNATURE, b"HELLO", b"h1", b"alice", b""])
    assert (error.code, error.msg_id) == (Code.MALFORMED, b"")
    assert refused([b"ZCHAT/02", b"HELLO", b"h1"]).code == Code.BAD_VERSION


@given(st.lists(st.one_of(st.binary(max_size=70), st.sampled_from([b"m1", b"a\nb", b"\n", b"x" * 64, b"x" * 65]),
                          st.integers(0, 3)), min_size=1, max_size=8))  # fmt: skip
@example([b"a\nb"])  # two ids' worth of characters in one: a single id still
@example([b"m1", b"a\nb"])
def test_received_ids_are_taken_exactly_when_every_one_is_a_message_id(ids: list[Any]) -> None:
    valid = all(type(i) is bytes and p.MSG_ID_RE.fullmatch(i) for i in ids)  # section 3.2, one by one
    frames = frame(b"RECEIVED", b"r1", b"alice", ids)
    if valid:
        assert p.decode_command(frames) == p.Received(b"r1", "alice", tuple(ids))
    else:
        assert (refused(frames).code, refused(frames).msg_id) == (Code.MALFORMED, b"r1")
