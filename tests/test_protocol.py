"""The codec: round trips, and any bytes in gives a command or a ProtocolError."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from zchat.common import protocol as p
from zchat.common.protocol import Code, ProtocolError

frames_strategy = st.lists(st.binary(max_size=80), max_size=7)
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


@given(st.one_of(frames_strategy, plausible))
def test_decoder_returns_a_command_or_a_protocol_error(frames: list[bytes]) -> None:
    try:
        command = p.decode_command(frames)
    except ProtocolError as e:
        assert isinstance(e.code, Code)
        assert p.MSG_ID_RE.fullmatch(e.msg_id) or e.msg_id == b""
    else:
        assert isinstance(command, (p.Hello, p.Send, p.Who, p.Ping, p.Sync, p.Bye))


@given(
    st.one_of(
        frames_strategy,
        st.lists(
            st.sampled_from(
                [p.SIGNATURE, b"MESSAGE", b"WELCOME", b"JOIN", b"LEAVE", b"ACK", b"7", b"*\x00", b"x"]
            ),
            max_size=11,
        ),
    )
)
def test_client_side_decoders_return_an_event_or_a_protocol_error(frames: list[bytes]) -> None:
    for decode in (p.decode_event, p.decode_published):
        with contextlib.suppress(ProtocolError):
            decode(frames)


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
