"""The broker's ZeroMQ shell: what only shows with real sockets."""

from __future__ import annotations

import zmq

from tests.support import Broker
from zchat.common import protocol as p


def test_pipelined_sends_are_all_acknowledged_once_in_order(
    broker: Broker, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    dealer = zmq_context.socket(zmq.DEALER)
    dealer.connect(broker.endpoint)
    dealer.send_multipart(p.encode_hello(b"h", "alice"))
    assert dealer.poll(10_000)
    welcome = p.decode_event(dealer.recv_multipart())
    assert isinstance(welcome, p.Welcome) and welcome.msg_id == b"h"
    ids = [f"m{i}".encode() for i in range(500)]
    for msg_id in ids:
        dealer.send_multipart(p.encode_send(msg_id, "alice", "to myself"))
    answered: list[bytes] = []
    delivered = 0
    while len(answered) < len(ids) or delivered < len(ids):
        assert dealer.poll(10_000), f"stalled after {len(answered)} answers"
        event = p.decode_event(dealer.recv_multipart())
        if isinstance(event, p.Ack):
            answered += event.ids()
        else:
            assert isinstance(event, p.Message), event
            delivered += 1
    assert answered == ids  # each exactly once, in the order sent
    dealer.close(linger=0)
