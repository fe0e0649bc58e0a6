"""The codec: round trips, and any bytes in gives a command or a ProtocolError."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zchat.common import protocol as p
from zchat.common.protocol import Code, ProtocolError

frames_strategy = st.lists(st.binary(max_size=80), max_size=7)
#: Numbers around every edge of section 3.2's ranges, and past the 20 digits.
numbers = st.one_of(
    st.integers(0, 600),
    st.integers(p.MAX_TIME_MS - 2, p.MAX_TIME_MS + 2),
    st.integers(p.MAX_NUMBER - 2, p.MAX_NUMBER + 2),
    st.integers(0, 10**21),
).map(lambda n: str(n).encode())
# Frames that look like the protocol, so the fuzzer reaches past the signature.
plausible = st.lists(
    st.one_of(
        st.sampled_from(
            [p.SIGNATURE, b"SEND", b"HELLO", b"WHO", b"PING", b"SYNC", b"BYE", b"*", b"bob", b""]
        ),
        st.binary(max_size=40),
    ),
    max_size=7,
)
# Every command that has more than an id, with fields that are often well formed.
commands = st.builds(
    lambda command, fields: [p.SIGNATURE, command, b"id-1", *fields],
    st.sampled_from(
        [b"HELLO", b"SEND", b"SYNC", b"ENTER", b"EXIT", b"NAMES", b"HISTORY", b"SEARCH", b"RECEIVED"]
    ),
    st.lists(st.one_of(numbers, st.sampled_from([b"#dev", b"*", b"bob", b"m1", b"", b"\xff"])), max_size=5),
)
histories = st.builds(
    lambda room, before, count: [p.SIGNATURE, b"HISTORY", b"id-1", room, before, count],
    st.sampled_from([b"#dev", b"*"]),
    numbers,
    numbers,
)


@given(st.one_of(frames_strategy, plausible, commands, histories))
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
        if isinstance(event, p.History):
            checks.append((event.last_seq, 0, p.MAX_NUMBER))
        for r in event.records:
            checks += [(r.seq, 0, p.MAX_NUMBER), (r.time_ms, 0, p.MAX_TIME_MS)]
    return all(low <= value <= high for value, low, high in checks)


#: Broker messages with every number field drawn around the edges of its range.
broker_messages = st.builds(
    lambda command, fields: [p.SIGNATURE, command, *fields],
    st.sampled_from(b"WELCOME ACK ERROR PONG MESSAGE JOIN LEAVE ROOMS HISTORY FOUND RECEIPT".split()),
    st.lists(st.one_of(numbers, st.sampled_from([b"m1", b"bob", b"#dev:3", b"429", b"1", b""])), max_size=14),
)
records = st.lists(st.tuples(numbers, numbers), max_size=3).map(
    lambda pairs: (
        [str(len(pairs)).encode()] + [f for seq, t in pairs for f in (seq, b"m1", b"al", b"#d", t, b"")]
    )
)
#: Every number field in its place, so that most of them decode and each range is reached.
well_formed = st.one_of(
    st.builds(lambda *n: [p.SIGNATURE, b"WELCOME", b"h", b"alice", b"t", b"tcp://h:1", *n], *[numbers] * 6),
    st.builds(lambda code, wait: [p.SIGNATURE, b"ERROR", b"m1", code, b"why", wait], numbers, numbers),
    st.builds(lambda count: [p.SIGNATURE, b"ROOMS", b"r1", b"#dev:" + count, b""], numbers),
    st.builds(lambda last, r: [p.SIGNATURE, b"HISTORY", b"h1", b"#dev", last, *r], numbers, records),
    st.builds(lambda r: [p.SIGNATURE, b"FOUND", b"s1", *r], records),
)


@given(
    st.one_of(
        frames_strategy,
        st.lists(
            st.sampled_from(
                [p.SIGNATURE, b"MESSAGE", b"WELCOME", b"JOIN", b"LEAVE", b"ACK", b"7", b"*\x00", b"x"]
            ),
            max_size=11,
        ),
        broker_messages,
        well_formed,
        st.builds(lambda seq, m: [p.LOBBY_TOPIC, seq, *m], numbers, broker_messages),
    )
)
def test_client_side_decoders_return_an_event_within_the_ranges_or_a_protocol_error(
    frames: list[bytes],
) -> None:
    for decode in (p.decode_event, p.decode_published):
        with contextlib.suppress(ProtocolError):
            assert numbers_within_their_ranges(decode(frames))


def refused(frames: list[bytes], decode: Callable[[list[bytes]], object] = p.decode_command) -> ProtocolError:
    try:
        decode(frames)
    except ProtocolError as e:
        return e
    raise AssertionError(f"accepted {frames}")


def history(before: bytes, count: bytes) -> list[bytes]:
    return [p.SIGNATURE, b"HISTORY", b"h1", b"#dev", before, count]


@pytest.mark.parametrize(
    ("before", "count"),
    [
        (str(2**63).encode(), b"10"),  # before past a signed 64-bit integer: crashed the SQLite store
        (b"9" * 20, b"10"),
        (b"9" * 21, b"10"),
        (b"-1", b"10"),
        (b"", b"10"),
        (b"0", str(p.MAX_HISTORY + 1).encode()),  # was cut to 500 unsaid
        (b"0", str(2**63).encode()),
        (b"0", b"+5"),
    ],
    ids=[
        "before-2^63",
        "before-20-nines",
        "before-21-digits",
        "before-signed",
        "before-empty",
        "count-501",
        "count-2^63",
        "count-signed",
    ],
)
def test_history_numbers_out_of_range_are_refused_with_400_and_the_id(before: bytes, count: bytes) -> None:
    error = refused(history(before, count))
    assert (error.code, error.msg_id) == (Code.MALFORMED, b"h1")


def test_history_numbers_at_the_edges_of_their_ranges_are_accepted() -> None:
    top = str(p.MAX_NUMBER).encode()
    assert p.decode_command(history(top, b"500")) == p.HistoryRequest(b"h1", "#dev", p.MAX_NUMBER, 500)
    assert p.decode_command(history(b"0", b"0")) == p.HistoryRequest(b"h1", "#dev", 0, 0)
    # At most 20 digits, leading zeros read as such.
    assert p.decode_command(history(b"0" * 17 + b"123", b"0" * 18 + b"50")).limit == 50  # type: ignore[union-attr]


def welcome(**fields: bytes) -> list[bytes]:
    values = {"heartbeat": b"2000", "timeout": b"6000", "max_body": b"65536", "time": b"1700000000000",
              "rate": b"1200", "burst": b"100", **fields}  # fmt: skip
    return [p.SIGNATURE, b"WELCOME", b"h", b"alice", b"t", b"tcp://h:1", *values.values()]


def record(seq: bytes = b"1", time_ms: bytes = b"1000") -> list[bytes]:
    return [seq, b"m1", b"alice", b"#dev", time_ms, b"hi"]


OVER_TIME = str(p.MAX_TIME_MS + 1).encode()
OVER_NUMBER = str(p.MAX_NUMBER + 1).encode()
OVER_INT32 = str(p.MAX_INT32 + 1).encode()


@pytest.mark.parametrize(
    "frames",
    [
        welcome(heartbeat=b"0"),
        welcome(heartbeat=OVER_INT32),
        welcome(timeout=b"0"),
        welcome(timeout=OVER_INT32),
        welcome(max_body=b"0"),
        welcome(max_body=OVER_INT32),
        welcome(time=OVER_TIME),
        welcome(rate=OVER_NUMBER),
        welcome(burst=OVER_NUMBER),
        [p.SIGNATURE, b"ACK", b"m1", OVER_TIME, b"accepted"],
        [p.SIGNATURE, b"ERROR", b"m1", b"399", b"no such code"],
        [p.SIGNATURE, b"ERROR", b"m1", b"600", b"a client's own code"],
        [p.SIGNATURE, b"ERROR", b"m1", b"429", b"slow down", OVER_INT32],
        [p.SIGNATURE, b"PONG", b"p1", OVER_TIME],
        [p.SIGNATURE, b"MESSAGE", b"m1", b"alice", b"bob", OVER_TIME, b"hi"],
        [p.SIGNATURE, b"JOIN", b"alice", OVER_TIME],
        [p.SIGNATURE, b"LEAVE", b"alice", OVER_TIME, b"quit"],
        [p.SIGNATURE, b"ROOMS", b"r1", b"#dev:0", b""],
        [p.SIGNATURE, b"ROOMS", b"r1", b"#dev:" + OVER_NUMBER, b""],
        [p.SIGNATURE, b"HISTORY", b"h1", b"#dev", OVER_NUMBER, b"0"],
        [p.SIGNATURE, b"HISTORY", b"h1", b"#dev", b"9", b"501", *record() * 501],
        [p.SIGNATURE, b"HISTORY", b"h1", b"#dev", b"9", b"1", *record(seq=OVER_NUMBER)],
        [p.SIGNATURE, b"HISTORY", b"h1", b"#dev", b"9", b"1", *record(time_ms=OVER_TIME)],
        [p.SIGNATURE, b"FOUND", b"s1", b"501", *record() * 501],
        [p.SIGNATURE, b"FOUND", b"s1", b"1", *record(time_ms=OVER_TIME)],
        [p.SIGNATURE, b"RECEIPT", b"bob", OVER_TIME, b"m1"],
    ],
    ids=lambda frames: b"-".join(frames[1:2]).decode(),
)
def test_a_broker_number_out_of_its_range_makes_the_message_malformed(frames: list[bytes]) -> None:
    assert refused(frames, p.decode_event).code == Code.MALFORMED


def test_a_published_sequence_past_its_range_is_malformed() -> None:
    frames = [p.LOBBY_TOPIC, OVER_NUMBER, p.SIGNATURE, b"JOIN", b"alice", b"1000"]
    assert refused(frames, p.decode_published).code == Code.MALFORMED
    frames[1] = str(p.MAX_NUMBER).encode()
    assert p.decode_published(frames).seq == p.MAX_NUMBER


def test_broker_numbers_at_the_edges_of_their_ranges_are_accepted() -> None:
    top_int32, top_time = str(p.MAX_INT32).encode(), str(p.MAX_TIME_MS).encode()
    edges = welcome(
        heartbeat=top_int32, timeout=b"1", max_body=top_int32, time=top_time, rate=b"0", burst=b"0"
    )
    decoded = p.decode_event(edges)
    assert isinstance(decoded, p.Welcome) and decoded.time_ms == p.MAX_TIME_MS
    assert numbers_within_their_ranges(decoded)
    assert p.decode_event([p.SIGNATURE, b"ERROR", b"m1", b"429", b"wait", top_int32]) == p.Error(
        b"m1", 429, "wait", p.MAX_INT32
    )
    # Only 429 has a retry-after: after another code, a frame there is a later addition, ignored.
    assert p.decode_event([p.SIGNATURE, b"ERROR", b"m1", b"404", b"nobody", b"x"]) == p.Error(
        b"m1", 404, "nobody", 0
    )
    page = [p.SIGNATURE, b"HISTORY", b"h1", b"#dev", b"9", b"500", *record() * 500]
    assert len(p.decode_event(page).records) == p.MAX_HISTORY  # type: ignore[union-attr]


@given(st.text(min_size=1, max_size=200), st.from_regex(p.MSG_ID_RE, fullmatch=True))
def test_send_round_trips_any_text(text: str, msg_id: bytes) -> None:
    command = p.decode_command(p.encode_send(msg_id, "bob", text))
    assert command == p.Send(msg_id, "bob", text.encode())


def test_extra_trailing_frames_are_ignored_for_later_versions() -> None:
    assert p.decode_command([*p.encode_simple(b"WHO", b"1"), b"future"]) == p.Who(b"1")


def test_non_utf8_body_is_refused_with_its_code_and_id() -> None:
    try:
        p.decode_command([p.SIGNATURE, b"SEND", b"m1", b"bob", b"\xff\xfe"])
    except ProtocolError as e:
        assert (e.code, e.msg_id) == (Code.BAD_ENCODING, b"m1")
    else:
        raise AssertionError("accepted invalid UTF-8")


def test_other_version_is_told_apart_from_garbage() -> None:
    for frames, code in (([b"ZCHAT/2", b"WHO", b"1"], Code.BAD_VERSION), ([b"HTTP/1.1"], Code.MALFORMED)):
        try:
            p.decode_command(frames)
        except ProtocolError as e:
            assert e.code == code
        else:
            raise AssertionError(frames)


def test_published_message_decodes_with_topic_and_sequence() -> None:
    frames = [p.LOBBY_TOPIC, b"12", *p.encode_message(b"m1", b"alice", b"*", b"1000", b"hi")]
    assert p.decode_published(frames) == p.Published(
        p.LOBBY_TOPIC, 12, p.Message(b"m1", "alice", "*", 1000, b"hi")
    )


def test_received_with_an_invalid_sender_is_422_like_any_name() -> None:
    for sender in (b"", b"x" * 33, b"not a name", "zoë".encode(), b"\xff\xfe"):
        error = refused([p.SIGNATURE, b"RECEIVED", b"r1", sender, b"m1"])
        assert (error.code, error.msg_id) == (Code.INVALID_NAME, b"r1"), sender
    error = refused([p.SIGNATURE, b"RECEIVED", b"r1", b"alice", b"bad id"])
    assert (error.code, error.msg_id) == (Code.MALFORMED, b"r1")


def test_an_empty_sync_tag_frame_is_the_same_as_none() -> None:
    assert p.decode_command([p.SIGNATURE, b"SYNC", b"s1", b""]) == p.Sync(b"s1") == p.Sync(b"s1", b"")
    assert refused([p.SIGNATURE, b"SYNC", b"s1", b"bad tag"]).code == Code.MALFORMED


def test_a_malformed_room_in_a_room_command_is_400() -> None:
    for command in (b"ENTER", b"EXIT", b"NAMES"):
        for room in (b"dev", b"#", b"#" + b"x" * 33, b"#d v", "#café".encode(), b"\xff"):
            error = refused([p.SIGNATURE, command, b"e1", room])
            assert (error.code, error.msg_id) == (Code.MALFORMED, b"e1"), (command, room)
    assert refused([p.SIGNATURE, b"HISTORY", b"h1", b"#" + b"x" * 33, b"0", b"10"]).code == Code.MALFORMED


def test_a_name_that_is_not_utf8_is_422_not_415() -> None:
    assert refused([p.SIGNATURE, b"HELLO", b"h1", b"\xff\xfe", b""]).code == Code.INVALID_NAME
    # 415 is for text fields only.
    assert refused([p.SIGNATURE, b"SEARCH", b"s1", b"\xff\xfe"]).code == Code.BAD_ENCODING


_RECORD = p.Record(1, b"m1", "alice", "#dev", 5, b"body")
EVERY_COMMAND = [
    p.Hello(b"1", "alice", "tok"), p.Send(b"2", "bob", b"hi"), p.Who(b"3"), p.Ping(b"4"), p.Sync(b"5"),
    p.Sync(b"5", b"tag"), p.Ready(b"6"), p.Bye(b"7"), p.Enter(b"8", "#dev"), p.Exit(b"9", "#dev"),
    p.Rooms(b"a"), p.Names(b"b", "*"), p.HistoryRequest(b"c", "#dev", 0, 50),
    p.HistoryRequest(b"c", "#dev", 10, 50, 3), p.Search(b"d", "x y"), p.Received(b"e", "bob", (b"x", b"y")),
]  # fmt: skip
EVERY_EVENT = [
    p.Welcome(b"1", "a", "t", "tcp://x:1", 2000, 6000, 65536, 5, 20, 100), p.Ack(b"1", 5, "accepted", (b"2",)),
    p.Error(b"1", 429, "slow", 30), p.Error(b"1", 404, "no", 0), p.Users(b"1", ("a", "b")), p.Pong(b"1", 5),
    p.Message(b"1", "a", "b", 5, b"x"), p.Shutdown("bye"), p.Replaced("r"),
    p.RoomList(b"1", (("#a", 2), ("#b", 1)), ("#a",)), p.History(b"1", "#a", 9, (_RECORD,)),
    p.Found(b"1", (_RECORD,)), p.Receipt("b", 5, (b"1", b"2")), p.Join("a", 5), p.Join("a", 5, "#r"),
    p.Leave("a", 5, "quit"), p.Leave("a", 5, "left", "#r"), p.Synced(b"1"),
]  # fmt: skip


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda c: type(c).__name__)
def test_every_command_decodes_to_what_was_encoded(command: p.ClientCommand) -> None:
    assert p.decode_command(p.encode(command)) == command


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda e: type(e).__name__)
def test_every_reply_and_event_decodes_to_what_was_encoded(event: p.ServerEvent | p.PublishedEvent) -> None:
    assert p.decode_event(p.encode(event)) == event
    published = p.Published(b"#r\x00", 7, event)
    if isinstance(event, p.Message | p.Join | p.Leave | p.Synced | p.Shutdown):
        assert p.decode_published(p.encode_published(published)) == published
