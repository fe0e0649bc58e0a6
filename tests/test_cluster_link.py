"""cluster/link.py: the broker's end of the PAIR to the NATS thread."""

from __future__ import annotations

import threading

import zmq

from tests.support import wait_for
from zchat.cluster.link import Link, unpack


def test_stop_reaches_a_live_nats_thread(zmq_context: zmq.Context[zmq.Socket[bytes]]) -> None:
    link = Link(zmq_context)
    peer = zmq_context.socket(zmq.PAIR)
    peer.setsockopt(zmq.LINGER, 0)
    try:
        peer.connect(link.endpoint)
        assert link.stop()
        assert peer.poll(5000) and unpack(peer.recv()) == ["stop"]
    finally:
        peer.close()
        link.close()


def test_stop_does_not_wait_for_a_nats_thread_that_closed_its_end(
    zmq_context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # The thread failed (no NATS answered) and closed its end while still alive: a
    # blocking send would hold the broker's exit forever (seen in a suite run).
    link = Link(zmq_context)
    peer = zmq_context.socket(zmq.PAIR)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(link.endpoint)
    wait_for(lambda: link.socket.poll(0, zmq.POLLOUT), 5, what="the peer connected")
    peer.close()
    # Gone as the link sees it (libzmq's I/O thread takes a moment): nothing to send to.
    wait_for(lambda: not link.socket.poll(0, zmq.POLLOUT), 5, what="the peer gone")
    outcome: list[bool] = []
    stopping = threading.Thread(target=lambda: outcome.append(link.stop()), daemon=True)
    stopping.start()
    stopping.join(5)
    try:
        assert not stopping.is_alive(), "Link.stop() waited for a peer that is gone"
        assert outcome == [False]
    finally:
        if not stopping.is_alive():
            link.close()
