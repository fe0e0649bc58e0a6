"""The broker learns that a client's connection is gone from libzmq, not from PINGs."""

from __future__ import annotations

import time

import zmq

from tests.support import wait_for
from zchat.broker.hangup import Peer
from zchat.broker.liveness import ConnectionWatch

DEADLINE = 10.0


def connected(context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    dealer.send(b"hello")
    return dealer


def gone_within(watch: ConnectionWatch, what: str) -> list[bytes]:
    """The routing ids the watch finds gone, once it finds any (or fail after the deadline)."""
    gone: list[bytes] = []

    def some() -> bool:
        gone.extend(watch.closed())
        return bool(gone)

    wait_for(some, DEADLINE, what=what)
    return gone


def arrival(router: zmq.Socket[bytes]) -> zmq.Frame:
    assert router.poll(int(DEADLINE * 1000)), "nothing arrived"
    first = router.recv(copy=False)
    while first.more and router.getsockopt(zmq.RCVMORE):
        router.recv()
    return first


def test_a_closed_connection_names_its_session_and_no_other(
    zmq_context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    watch = ConnectionWatch(router)
    try:
        alice, bob = (connected(zmq_context, f"tcp://127.0.0.1:{port}") for _ in range(2))
        ids = []
        for _ in range(2):
            frame = arrival(router)
            watch.note(frame)
            ids.append(frame.bytes)
        assert all(watch.noted(i) for i in ids)
        alice.close()  # the process of alice's client is gone: its TCP connection closes
        gone = gone_within(watch, "a disconnect")
        assert len(gone) == 1 and gone[0] in ids and watch.noted(({*ids} - {gone[0]}).pop())
        bob.close()
    finally:
        watch.close()
        router.close()


def test_a_reused_descriptor_spares_the_session_that_has_it_now(
    zmq_context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # A disconnect is read after a new connection took the same number: only the session
    # noted with another peer than the one now behind the number is gone.
    now_behind: dict[int, Peer | None] = {}
    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    watch = ConnectionWatch(router, peer_of=lambda fd: now_behind.get(fd))
    try:
        dealer = connected(zmq_context, f"tcp://127.0.0.1:{port}")
        frame = arrival(router)
        watch.note(frame)
        fd = frame.get(zmq.SRCFD)
        real_peer = watch._on[fd][frame.bytes]
        watch._on[fd][b"old-session"] = ("127.0.0.1", 1)  # noted before the number was reused
        watch._descriptor[b"old-session"] = fd
        now_behind[fd] = real_peer
        dealer.close()
        gone = gone_within(watch, "a disconnect")
        assert gone == [b"old-session"] and watch.noted(frame.bytes)
    finally:
        watch.close()
        router.close()


def test_zmtp_heartbeats_close_a_connection_whose_peer_stopped_answering(
    zmq_context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # A peer that stops answering: a raw TCP socket that speaks ZMTP's greeting and then
    # nothing, as a frozen process would (its libzmq would not answer PINGs either).
    import socket

    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    for option, value in ((zmq.HEARTBEAT_IVL, 200), (zmq.HEARTBEAT_TIMEOUT, 1000)):
        router.setsockopt(option, value)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    watch = ConnectionWatch(router)
    frozen = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    try:
        # ZMTP 3.0 greeting (64 bytes), NULL mechanism, then READY with Socket-Type DEALER,
        # then one message: what a DEALER sends before its process stops.
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
        props = b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
        ready = b"\x05READY" + props
        frozen.sendall(greeting)
        answer = b""
        while len(answer) < 64:  # libzmq reads the rest only after its own greeting went out
            part = frozen.recv(64 - len(answer))  # the socket's timeout bounds each wait
            assert part, "the router closed the connection during the greeting"
            answer += part
        frozen.sendall(b"\x04" + bytes([len(ready)]) + ready + b"\x00\x05hello")
        frame = arrival(router)
        watch.note(frame)
        began = time.monotonic()
        gone = gone_within(watch, "the silent peer dropped")
        assert gone == [frame.bytes]
        assert time.monotonic() - began < 5.0  # the heartbeat timeout (1 s), not TCP's own minutes
    finally:
        frozen.close()
        watch.close()
        router.close()


def test_a_disconnect_read_before_libzmq_closed_the_descriptor_is_looked_at_again(
    zmq_context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # libzmq reports the disconnect, then closes the descriptor: read in between, the
    # number still leads to the noted peer. A later call finds it closed.
    open_now: dict[int, Peer | None] = {}
    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    watch = ConnectionWatch(router, peer_of=lambda fd: open_now.get(fd))
    try:
        dealer = connected(zmq_context, f"tcp://127.0.0.1:{port}")
        frame = arrival(router)
        watch.note(frame)
        fd = frame.get(zmq.SRCFD)
        open_now[fd] = watch.peer(frame.bytes)  # not closed yet, as far as getpeername tells
        dealer.close()
        wait_for(lambda: watch.closed() == [] and watch.rechecks, DEADLINE, what="the disconnect read")
        assert watch.noted(frame.bytes)
        del open_now[fd]  # libzmq has closed it now
        assert watch.closed() == [frame.bytes]
        assert watch.rechecks == []
    finally:
        watch.close()
        router.close()
