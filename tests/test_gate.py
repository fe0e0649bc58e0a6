"""The broker's ZAP handler: which connections libzmq lets through, without I/O."""

from __future__ import annotations

import zmq
from hypothesis import given
from hypothesis import strategies as st
from zmq.utils import z85

from zchat.broker.gate import Gate


def request(address: str, mechanism: bytes = b"NULL", *credentials: bytes) -> list[bytes]:
    return [b"1.0", b"7", b"zchat", address.encode(), b"", mechanism, *credentials]


def test_a_plain_connection_is_let_through_with_no_user_id() -> None:
    assert Gate().answer(request("127.0.0.1"), 0.0) == [b"1.0", b"7", b"200", b"OK", b"", b""]


def test_any_curve_key_is_let_through_and_named_by_its_z85_form() -> None:
    public = zmq.curve_keypair()[0]
    reply = Gate().answer(request("127.0.0.1", b"CURVE", z85.decode(public)), 0.0)
    assert reply is not None and reply[2] == b"200" and reply[4] == public


def test_a_banned_address_is_turned_away_until_its_ban_ends_and_others_are_not() -> None:
    gate = Gate(exempt=())
    assert gate.ban("127.0.0.2", until=60.0)
    turned_away = gate.answer(request("127.0.0.2"), 10.0)
    assert turned_away is not None and turned_away[1:3] == [b"7", b"400"]
    assert gate.answer(request("127.0.0.1"), 10.0)[2] == b"200"  # type: ignore[index]
    assert gate.answer(request("127.0.0.2"), 60.0)[2] == b"200"  # type: ignore[index]
    assert gate.turned_away == 1 and gate.banned.until == {}


def test_a_second_ban_never_shortens_the_first() -> None:
    gate = Gate(exempt=())
    gate.ban("::1", until=90.0)
    gate.ban("::1", until=30.0)
    assert gate.is_banned("::1", 60.0)


def test_expired_bans_are_forgotten_by_the_sweep() -> None:
    gate = Gate(exempt=())
    gate.ban("127.0.0.2", until=5.0)
    gate.ban("127.0.0.3", until=50.0)
    gate.forget_expired(10.0)
    assert list(gate.banned.until) == ["127.0.0.3"]


def test_loopback_is_exempt_by_default_and_exemptions_take_networks() -> None:
    gate = Gate()
    assert not gate.ban("127.0.0.2", until=60.0) and not gate.ban("::1", until=60.0)
    assert gate.answer(request("127.0.0.2"), 10.0)[2] == b"200"  # type: ignore[index]
    assert gate.ban("192.0.2.7", until=60.0)
    behind_nat = Gate(exempt=["192.0.2.0/24"])
    assert not behind_nat.ban("192.0.2.7", until=60.0)
    assert not behind_nat.ban("::ffff:192.0.2.7", until=60.0)  # a v4 client of a broker bound to "::"
    assert behind_nat.ban("127.0.0.1", until=60.0) and behind_nat.ban("fe80::1%eth0", until=60.0)


def test_a_malformed_request_is_answered_with_500_when_it_names_its_id() -> None:
    gate = Gate()
    assert gate.answer([b"2.0", b"9", b"d", b"127.0.0.1", b"", b"NULL"], 0.0)[:3] == [b"1.0", b"9", b"500"]  # type: ignore[index]
    assert gate.answer([b"1.0", b"9", b"d"], 0.0)[:3] == [b"1.0", b"9", b"500"]  # type: ignore[index]
    assert gate.answer([b"1.0"], 0.0) is None


@given(st.lists(st.binary(max_size=40), max_size=9))
def test_any_request_gets_a_well_formed_reply_or_none(frames: list[bytes]) -> None:
    reply = Gate().answer(frames, 0.0)
    assert reply is None or (len(reply) == 6 and reply[0] == b"1.0" and reply[2] in (b"200", b"400", b"500"))
