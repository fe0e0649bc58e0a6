"""Cutting one connection under a ROUTER: only the connection a flood came on, never a newer one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from zchat.broker.hangup import cut, origin_of, take_hold

WAIT_MS = 5000


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def wait_event(monitor: zmq.Socket[bytes], kind: int) -> int:
    """The value (here: the file descriptor) of the next monitor event of this kind."""
    while monitor.poll(WAIT_MS):
        event = recv_monitor_message(monitor)
        if event["event"] == kind:
            return int(event["value"])
    raise AssertionError(f"no monitor event {kind} within {WAIT_MS} ms")


def receive(router: zmq.Socket[bytes]) -> tuple[zmq.Frame, bytes]:
    assert router.poll(WAIT_MS), "no message"
    first = router.recv(copy=False)
    return first, router.recv()


class Listener:
    """A ROUTER on loopback, with a monitor of the connections it accepts and loses."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.context = context
        self.router = context.socket(zmq.ROUTER)
        self.monitor = self.router.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")

    def connect(self, *sending: bytes, source: str = "") -> zmq.Socket[bytes]:
        """A DEALER (from `source`, another loopback address) that sent these; once accepted."""
        dealer = self.context.socket(zmq.DEALER)
        dealer.connect(f"tcp://{source + ':0;' if source else ''}127.0.0.1:{self.port}")
        for frame in sending:
            dealer.send(frame)
        wait_event(self.monitor, zmq.EVENT_ACCEPTED)
        return dealer

    def lose(self, dealer: zmq.Socket[bytes]) -> None:
        dealer.close(linger=0)
        wait_event(self.monitor, zmq.EVENT_DISCONNECTED)


def test_a_connection_is_cut_by_the_frame_it_sent(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    listener = Listener(context)
    client = listener.connect(b"hello")
    watch = client.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    first, _ = receive(listener.router)
    origin = origin_of(first)
    assert origin is not None and origin[0] == "127.0.0.1"
    held = take_hold(first, origin)
    assert held is not None
    cut(held)
    wait_event(watch, zmq.EVENT_DISCONNECTED)


def test_a_message_read_after_its_connection_closed_cuts_nothing(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    listener = Listener(context)
    flooder = listener.connect(b"hello", b"flood")  # the flood stays queued while the flooder goes
    hello, _ = receive(listener.router)
    origin = origin_of(hello)  # what the broker notes at HELLO
    assert origin is not None
    listener.lose(flooder)
    # Someone else from the same address connects: Linux gives it the lowest free descriptor, often the flooder's.
    innocent = listener.connect(b"hi")
    queued, body = receive(listener.router)
    assert body == b"flood"  # the flooder's, read only now
    assert take_hold(queued, origin) is None  # not the flooder's connection any more: left alone
    innocent_id, body = receive(listener.router)
    assert body == b"hi"
    listener.router.send_multipart([innocent_id.bytes, b"still connected"])
    assert innocent.poll(WAIT_MS) and innocent.recv() == b"still connected"


def test_a_hello_read_after_its_connection_closed_names_no_other_hosts_connection(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    listener = Listener(context)
    flooder = listener.connect(b"hello", source="127.0.0.2")  # another host, as loopback goes
    assert listener.router.poll(WAIT_MS)  # queued at the ROUTER, not read until the flooder is gone
    listener.lose(flooder)
    listener.connect()  # may get the flooder's descriptor number
    hello, body = receive(listener.router)
    assert body == b"hello"
    assert origin_of(hello) is None  # neither the closed connection nor the newcomer's
