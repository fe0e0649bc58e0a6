"""A client and a broker of different protocol versions tell the user so (PROTOCOL.md 10)."""

from __future__ import annotations

import threading

import pytest
import zmq

from tests.support import Broker
from zchat.client.session import Client, ConnectError


def test_a_zchat1_client_is_told_in_its_own_framing_which_versions_meet(
    broker: Broker, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    dealer = zmq_context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(broker.endpoint)
    dealer.send_multipart([b"ZCHAT/1", b"HELLO", b"h1", b"alice", b""])
    assert dealer.poll(10_000), "no answer to a ZCHAT/1 HELLO"
    signature, command, msg_id, code, reason = dealer.recv_multipart()
    assert (signature, command, msg_id, code) == (b"ZCHAT/1", b"ERROR", b"h1", b"426")
    assert b"ZCHAT/1" in reason and b"ZCHAT/2" in reason
    dealer.close()


def test_the_client_names_both_versions_against_a_zchat1_broker(
    zmq_context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # What a ZCHAT/1 broker answers a message whose first frame is not its signature.
    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def old_broker() -> None:
        while not stop.is_set():
            if router.poll(50):
                peer, *_ = router.recv_multipart()
                router.send_multipart(
                    [peer, b"ZCHAT/1", b"ERROR", b"", b"400", b"first frame must be ZCHAT/1"]
                )

    thread = threading.Thread(target=old_broker, daemon=True)
    thread.start()
    try:
        with pytest.raises(ConnectError) as refused:
            Client("alice", f"tcp://127.0.0.1:{port}", connect_timeout=5).connect()
        assert "ZCHAT/1" in str(refused.value) and "ZCHAT/2" in str(refused.value)
    finally:
        stop.set()
        thread.join(5)
        router.close()
