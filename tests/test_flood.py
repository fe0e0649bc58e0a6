"""Flood control with a real broker: a flooder is limited, others are not,
and the client library paces itself instead of being refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from benchmarks.flood import from_source
from tests.chat import chat
from tests.support import start_broker, wait_for
from zchat.client import events as ev
from zchat.client.session import Client, ConnectError
from zchat.common import protocol as p

#: Another loopback address for the flooder: the broker turns a flooder's
#: address away, and the others connect from 127.0.0.1.
FLOODER_SOURCE = "127.0.0.2"


def test_a_flooder_is_refused_with_a_retry_after_while_others_chat_normally(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--rate", "20", "--burst", "20")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        flooder = context.socket(zmq.DEALER)  # a bare socket: it does not pace itself
        flooder.setsockopt(zmq.LINGER, 0)
        flooder.connect(broker.endpoint)
        flooder.send_multipart(p.encode_hello(b"h", "flooder"))
        with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob:
            for i in range(40):
                flooder.send_multipart(p.encode_send(b"f%d" % i, "*", f"spam {i}"))
            talk = [alice.client.send("bob", f"hello {i}") for i in range(10)]
            acked: set[bytes] = set()  # one ACK may answer several
            refused: list[p.Error] = []
            while len(acked) + len(refused) < 40:
                assert flooder.poll(10_000), f"the flooder's answers stopped at {len(acked)} + {len(refused)}"
                answer = p.decode_event(flooder.recv_multipart())
                if isinstance(answer, p.Ack):
                    acked.update(answer.ids())
                elif isinstance(answer, p.Error):
                    refused.append(answer)
            assert len(acked) >= 20  # its burst went through
            assert refused and all(e.code == p.Code.RATE_LIMITED and "retry after" in e.text for e in refused)
            assert all(isinstance(r.wait(10), ev.Ack) for r in talk)
            for i in range(10):
                bob.message(f"hello {i}")
    finally:
        context.destroy(linger=0)
        broker.stop()


def test_the_client_paces_a_pasted_page_instead_of_being_refused_or_thrown_out(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--rate", "20", "--burst", "10")
    try:
        with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob:
            # Far more than the burst, and more than the 3 x burst of refusals that
            # would disconnect a client sending it all at once.
            pasted = [alice.client.send("bob", f"line {i}") for i in range(50)]
            outcomes = [r.wait(15) for r in pasted]
            assert all(isinstance(o, ev.Ack) for o in outcomes), [
                o for o in outcomes if not isinstance(o, ev.Ack)
            ]
            for i in range(50):
                bob.message(f"line {i}")
            assert [m.text for m in bob.messages()] == [f"line {i}" for i in range(50)]  # in order
            alice.expect(
                lambda e: isinstance(e, ev.Status) and "rate limit" in e.detail, what="the pacing notice"
            )
            log = broker.log()
            assert "flooding" not in log
            # Sent all at once, 40 would be refused. Paced, hardly any: the broker
            # stamps a wake-up's messages with its start, a little behind the client.
            assert log.count(": 429 ") <= 3, log
    finally:
        broker.stop()


def test_a_leave_typed_after_held_messages_waits_its_turn_behind_them(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--rate", "10", "--burst", "2")
    try:
        with chat("alice", broker.endpoint) as alice:
            assert isinstance(alice.client.enter("#dev").wait(10), ev.Ack)
            said = [alice.client.send("#dev", f"line {i}") for i in range(8)]
            left = alice.client.exit("#dev")  # typed at once: the lines are still held back
            outcomes = [r.wait(15) for r in said]
            assert all(isinstance(o, ev.Ack) for o in outcomes), outcomes  # not 423: still a member
            assert isinstance(left.wait(15), ev.Ack)
    finally:
        broker.stop()


def flood_until_thrown_out(
    endpoint: str, context: zmq.Context[zmq.Socket[bytes]]
) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """A bare DEALER from FLOODER_SOURCE that floods until the broker says it is disconnected,
    and a monitor of its connection's events."""
    flooder = context.socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    watch = flooder.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    flooder.connect(from_source(endpoint, FLOODER_SOURCE))
    flooder.send_multipart(p.encode_hello(b"h", "flooder"))
    for i in range(100):
        flooder.send_multipart(p.encode_send(b"f%d" % i, "*", f"spam {i}"))

    def told_why() -> bool:
        while flooder.poll(100):
            answer = p.decode_event(flooder.recv_multipart())
            if isinstance(answer, p.Error) and "disconnected for flooding" in answer.text:
                return True
        return False

    wait_for(told_why, 10, what="the flooder to be told it is disconnected")
    return flooder, watch


def test_a_flooder_is_hung_up_on_and_its_address_turned_away_while_others_still_connect(
    tmp_path: Path,
) -> None:
    # Loopback is exempt from bans by default (local users share it): here only 127.0.0.1 is.
    broker = start_broker(
        tmp_path, "--rate", "20", "--burst", "5", "--cool-off", "60", "--ban-exempt", "127.0.0.1"
    )
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with chat("bob", broker.endpoint) as bob:
            _, watch = flood_until_thrown_out(broker.endpoint, context)
            seen: list[int] = []

            def events(*wanted: int) -> bool:
                while watch.poll(100):
                    seen.append(recv_monitor_message(watch)["event"])
                return all(kind in seen for kind in wanted)

            # The broker closes the connection; libzmq reconnects, and is turned away at the handshake.
            wait_for(lambda: events(zmq.EVENT_DISCONNECTED, zmq.EVENT_HANDSHAKE_FAILED_AUTH), 10,
                     what="the flooder's connection to be cut, then refused")  # fmt: skip
            with pytest.raises(ConnectError, match="turned this connection away"):
                Client("newcomer", from_source(broker.endpoint, FLOODER_SOURCE), connect_timeout=5).connect()
            # Everyone else still connects and chats.
            with chat("alice", broker.endpoint) as alice:
                assert isinstance(alice.client.send("bob", "still here").wait(10), ev.Ack)
                bob.message("still here")
        log = broker.log()
        assert "connection from 127.0.0.2 to be cut; the address is turned away" in log
        assert "a flooder's address is turned away for 60 s (exempt: 127.0.0.1)" in log  # said at start
    finally:
        context.destroy(linger=0)
        broker.stop()
    # Counted at exit: the flooder's and the newcomer's refused handshakes.
    assert "refused.handshake=" in broker.log()


def test_loopback_is_exempt_from_the_address_ban_by_default(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--rate", "20", "--burst", "5")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        _, watch = flood_until_thrown_out(broker.endpoint, context)
        # Hung up on all the same.
        wait_for(lambda: watch.poll(100) and recv_monitor_message(watch)["event"] == zmq.EVENT_DISCONNECTED,
                 10, what="the flooder's connection to be cut")  # fmt: skip
        assert "the address is not turned away" in broker.log()
        assert "flood control: 20 messages a second per client, bursts of 5" in broker.log()
        # Another local user on that address still connects (it would be turned away without the exemption).
        with chat("newcomer", from_source(broker.endpoint, FLOODER_SOURCE)) as newcomer:
            assert isinstance(newcomer.client.send("*", "hello").wait(10), ev.Ack)
    finally:
        context.destroy(linger=0)
        broker.stop()


def test_without_a_cool_off_a_flooder_is_hung_up_on_but_its_address_not_turned_away(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--rate", "20", "--burst", "5", "--cool-off", "0", "--ban-exempt", "none")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        _, watch = flood_until_thrown_out(broker.endpoint, context)
        wait_for(lambda: watch.poll(100) and recv_monitor_message(watch)["event"] == zmq.EVENT_DISCONNECTED,
                 10, what="the flooder's connection to be cut")  # fmt: skip
        with chat("newcomer", from_source(broker.endpoint, FLOODER_SOURCE)) as newcomer:
            assert isinstance(newcomer.client.send("*", "hello").wait(10), ev.Ack)
    finally:
        context.destroy(linger=0)
        broker.stop()
