"""The mode switch of the load clients: ZCHAT/2 or the ceiling's bare frames.

A load client asks its `Wire` how to register, how to send, and what a
message it received is, so the same load code drives the zchat broker and the
raw forwarder in ceiling.py.

Message bodies are `b"<seq> <send time, ns> <padding>"` in both modes: the
receiver checks the sequence number and measures latency from the time stamp
(CLOCK_MONOTONIC, shared by all processes of the machine).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import zmq

from zchat.common import protocol as p
from zchat.common.heartbeat import set_client_heartbeats
from zchat.common.protocol import LOBBY_TOPIC

#: What a received message is.
ACK, ERROR, DELIVERY, PONG, OTHER = range(5)
#: What a received message is, and what it carries (Wire.classify).
Classified = tuple[int, Any]
#: Size of a message body, as a short chat line.
BODY_SIZE = 64
#: The body of a marker broadcast (not counted; see fanout.py).
MARKER = b"M"
_PAD = b"x" * BODY_SIZE
_PING = b"PING "
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


def send_frames(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """`send_multipart` without its costs: pyzmq's version type-checks every frame and
    ORs enum flags per frame (see pyzmq_calls.py: about 4x the time of this loop)."""
    send = sock.send
    last = len(frames) - 1
    for i in range(last):
        send(frames[i], _SNDMORE)
    send(frames[last])


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    """One whole message without blocking (raises zmq.Again if none).

    `recv_multipart` asks `getsockopt(zmq.RCVMORE)` after each frame, and
    pyzmq builds a SocketOption enum on every such call; a Frame carries the
    flag itself (see pyzmq_calls.py: about a third of the time).
    """
    recv = sock.recv
    frame = recv(_NOBLOCK, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = recv(_NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


def body(seq: int, stamp_ns: int) -> bytes:
    head = b"%d %d " % (seq, stamp_ns)
    return head + _PAD[: max(0, BODY_SIZE - len(head))]


def parse_body(data: bytes) -> tuple[int, int]:
    """(sequence number, send time in ns) of a body made by `body`."""
    seq, stamp, _ = data.split(b" ", 2)
    return int(seq), int(stamp)


#: Broadcasts a load process holds decoded: each of its SUBs reads the same ones, a drain
#: round at a time (fanout.DRAIN_BATCH, 512), so that it decodes each once, as a process of
#: the library's clients does (client/connection.py), and the figures are the broker's
#: fan-out rather than the load's Python (the forwarder's subscribers decode nothing).
DECODED = 4096


@functools.lru_cache(maxsize=DECODED)
def _decoded(frame: bytes) -> p.Published:
    return p.decode_published([frame])


#: "SERVER_PUBLIC CLIENT_PUBLIC CLIENT_SECRET" (z85) to load a CURVE broker; set by benchmarks.curve.
CURVE_ENV = "ZCHAT_BENCH_CURVE"


def encrypt(sock: zmq.Socket[bytes]) -> None:
    """CURVE client options when the run asks for them (inherited by the load processes)."""
    keys = os.environ.get(CURVE_ENV)
    if keys:
        server, public, secret = (k.encode() for k in keys.split())
        sock.setsockopt(zmq.CURVE_SERVERKEY, server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


class Wire:
    """How a load client talks to the server under test."""

    kind = ""
    #: Whether the server answers every command (ACK or ERROR).
    acks = False

    def dealer(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        name: bytes,
        heartbeats: tuple[int, int] = (0, 0),
    ) -> zmq.Socket[bytes]:
        """`heartbeats`: the broker's ZMTP heartbeat interval and timeout in ms (as the zchat client)."""
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if heartbeats[0]:
            set_client_heartbeats(sock, *heartbeats)
        encrypt(sock)
        sock.setsockopt(zmq.SNDHWM, 0)  # the load clients bound their windows themselves
        sock.setsockopt(zmq.RCVHWM, 0)
        self._identify(sock, name)
        sock.connect(endpoint)
        return sock

    def subscriber(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        encrypt(sock)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SUBSCRIBE, LOBBY_TOPIC)
        sock.connect(endpoint)
        return sock

    def _identify(self, sock: zmq.Socket[bytes], name: bytes) -> None:
        pass

    def hello(self, name: bytes) -> list[bytes]:
        raise NotImplementedError

    def welcomed(self, frames: list[bytes]) -> bool:
        raise NotImplementedError

    def send(self, msg_id: bytes, target: bytes, data: bytes) -> list[bytes]:
        raise NotImplementedError

    def ping(self, name: bytes, msg_id: bytes) -> list[bytes]:
        """A heartbeat from client `name`, answered by a PONG (classified PONG)."""
        raise NotImplementedError

    def ready(self, msg_id: bytes) -> list[bytes] | None:
        """What a client sends once registered (zchat: READY), or None."""
        return None

    def received(self, msg_id: bytes, sender: bytes, ids: list[bytes]) -> list[bytes] | None:
        """What a recipient sends to confirm private messages (zchat: RECEIVED), or None."""
        return None

    def classify(self, frames: list[bytes]) -> Classified:
        """(ACK, the ids it answers), (ERROR, code), (DELIVERY, body), (PONG, id) or (OTHER, b"").

        Decoded once: an ACK answers several commands at a time (PROTOCOL.md 5.2).
        """
        raise NotImplementedError

    def published(self, frames: list[bytes]) -> bytes | None:
        """The body of a broadcast received on a SUB, or None for anything else."""
        raise NotImplementedError


class ZchatWire(Wire):
    """ZCHAT/2 as in docs/PROTOCOL.md, through the project's own codec."""

    kind = "zchat"
    acks = True

    def hello(self, name: bytes) -> list[bytes]:
        return p.encode(p.Hello(b"h-" + name, name.decode(), ""))

    def welcomed(self, frames: list[bytes]) -> bool:
        event = p.decode_event(frames)
        if isinstance(event, p.Error):
            raise RuntimeError(f"registration refused: {event!r}")
        return isinstance(event, p.Welcome)

    def send(self, msg_id: bytes, target: bytes, data: bytes) -> list[bytes]:
        return p.encode(p.Send(msg_id, target.decode(), data))

    def ping(self, name: bytes, msg_id: bytes) -> list[bytes]:
        return p.encode(p.Ping(msg_id))

    def ready(self, msg_id: bytes) -> list[bytes] | None:
        return p.encode(p.Ready(msg_id))

    def received(self, msg_id: bytes, sender: bytes, ids: list[bytes]) -> list[bytes] | None:
        return p.encode(p.Received(msg_id, sender.decode(), tuple(ids)))

    def classify(self, frames: list[bytes]) -> Classified:
        event = p.decode_event(frames)
        kind = type(event)
        if kind is p.Ack:
            return ACK, event.ids()  # type: ignore[union-attr]
        if kind is p.Message:
            return DELIVERY, event.body  # type: ignore[union-attr]
        if kind is p.Error:
            return ERROR, str(event.code).encode()  # type: ignore[union-attr]
        if kind is p.Pong:
            return PONG, event.msg_id  # type: ignore[union-attr]
        return OTHER, b""

    def published(self, frames: list[bytes]) -> bytes | None:
        event = (_decoded(frames[0]) if len(frames) == 1 else p.decode_published(frames)).event
        if isinstance(event, p.Message):
            return event.body
        return None  # JOIN, LEAVE, SHUTDOWN...


class CeilingWire(Wire):
    """The forwarder's frames: [to, body] in, [from, body] out; no replies.

    A client's routing id is its name, so a client registers by sending a
    message to itself: when it comes back, the forwarder can route to it. A
    heartbeat is a message to itself too.
    """

    kind = "ceiling"
    acks = False

    def _identify(self, sock: zmq.Socket[bytes], name: bytes) -> None:
        sock.setsockopt(zmq.ROUTING_ID, name)

    def hello(self, name: bytes) -> list[bytes]:
        return [name, b"HELLO"]

    def welcomed(self, frames: list[bytes]) -> bool:
        return len(frames) == 2 and frames[1] == b"HELLO"

    def send(self, msg_id: bytes, target: bytes, data: bytes) -> list[bytes]:
        return [target, data]

    def ping(self, name: bytes, msg_id: bytes) -> list[bytes]:
        return [name, _PING + msg_id]  # to itself: the forwarder echoes it

    def classify(self, frames: list[bytes]) -> Classified:
        if len(frames) == 2:
            data = frames[1]
            if data[:5] == _PING:
                return PONG, data[5:]
            return DELIVERY, data
        return OTHER, b""

    def published(self, frames: list[bytes]) -> bytes | None:
        return frames[2] if len(frames) == 3 else None


def answered_id(frames: list[bytes]) -> bytes:
    """The id an ACK or ERROR answers (the first, for a combined ACK)."""
    answer = p.decode_event(frames)
    assert isinstance(answer, p.Ack | p.Error), answer
    return answer.msg_id


def ack_status(frames: list[bytes]) -> str:
    ack = p.decode_event(frames)
    assert isinstance(ack, p.Ack), ack
    return ack.status


def make_wire(kind: str) -> Wire:
    wires: dict[str, type[Wire]] = {"zchat": ZchatWire, "ceiling": CeilingWire}
    return wires[kind]()


def register(
    wire: Wire, socks: list[zmq.Socket[bytes]], names: list[bytes], timeout: float, window: int = 256
) -> tuple[int, int]:
    """Register every socket (HELLO, or the ceiling's hello to itself), `window` at a time.

    Returns the time of the first HELLO and of the last answer, in ns.
    """
    poller = zmq.Poller()
    index = {}
    for i, sock in enumerate(socks):
        poller.register(sock, zmq.POLLIN)
        index[sock] = i
    first = time.monotonic_ns()
    deadline = first + int(timeout * 1e9)
    done = [False] * len(socks)
    sent = welcomed = 0
    last = first
    while welcomed < len(socks):
        while sent < len(socks) and sent - welcomed < window:
            send_frames(socks[sent], wire.hello(names[sent]))
            sent += 1
        if time.monotonic_ns() > deadline:
            raise TimeoutError(f"only {welcomed} of {len(socks)} clients registered in {timeout}s")
        for sock, _ in poller.poll(50):
            i = index[sock]
            for _ in range(64):
                try:
                    frames = recv_frames(sock)
                except zmq.Again:
                    break
                if not done[i] and wire.welcomed(frames):
                    done[i] = True
                    welcomed += 1
                    last = time.monotonic_ns()
    return first, last
