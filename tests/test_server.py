"""The broker's ZeroMQ shell: what only shows with real sockets."""

from __future__ import annotations

from pathlib import Path

import zmq

from tests.support import Broker, start_broker
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


def test_history_numbers_past_their_range_are_refused_and_the_sqlite_store_lives_on(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    broker = start_broker(tmp_path, "--store", str(tmp_path / "zchat.db"))
    dealer = zmq_context.socket(zmq.DEALER)
    dealer.connect(broker.endpoint)

    def ask(*frames: bytes) -> p.ServerEvent | p.PublishedEvent:
        dealer.send_multipart([p.SIGNATURE, *frames])
        assert dealer.poll(10_000), f"no answer to {frames}"
        return p.decode_event(dealer.recv_multipart())

    try:
        assert isinstance(ask(b"HELLO", b"h", b"alice", b""), p.Welcome)
        assert isinstance(ask(b"SEND", b"m1", b"*", b"kept"), p.Ack)
        for before, count in ((2**63, 10), (10**20 - 1, 10), (0, p.MAX_HISTORY + 1)):
            refusal = ask(b"HISTORY", b"h1", b"*", str(before).encode(), str(count).encode())
            assert isinstance(refusal, p.Error) and (refusal.msg_id, refusal.code) == (b"h1", 400), refusal
        page = ask(b"HISTORY", b"h2", b"*", str(p.MAX_NUMBER).encode(), str(p.MAX_HISTORY).encode())
        assert isinstance(page, p.History) and [r.body for r in page.records] == [b"kept"]
        assert ask(b"WHO", b"w") == p.Users(b"w", ("alice",))
    finally:
        dealer.close(linger=0)
        assert broker.stop() == 0
