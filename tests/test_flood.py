"""Flood control with a real broker: a flooder is limited, others are not,
and the client library paces itself instead of being refused."""

from __future__ import annotations

from pathlib import Path

import zmq

from tests.chat import chat
from tests.support import start_broker
from zchat.client import events as ev
from zchat.common import protocol as p


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
