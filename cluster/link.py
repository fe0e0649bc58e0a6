"""The broker thread's end of the PAIR socket to the NATS thread.

Each frame is one MessagePack list, its kind first. A request that needs an
answer (`call`) carries a number that its answer repeats; what else arrives
meanwhile (watch updates) is kept, in order, for the next `drain`. One
socket, one thread: only the broker's thread uses this end.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import msgpack
import zmq

from zchat.broker.names import Unreachable

#: How long a call may wait for the NATS thread before it fails (raises CallFailed).
CALL_TIMEOUT = 5.0

#: Frames either way the PAIR holds before a send waits.
PAIR_HWM = 100_000

_ids = itertools.count(1)


class CallFailed(Unreachable):
    """The NATS thread did not answer in time, or answered with an error."""


def pack(*parts: Any) -> bytes:
    packed: bytes = msgpack.packb(list(parts), use_bin_type=True)
    return packed


def unpack(frame: bytes) -> list[Any]:
    parts = msgpack.unpackb(frame, raw=False)
    assert isinstance(parts, list)
    return parts


class Link:
    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.endpoint = f"inproc://zchat-cluster-{next(_ids)}"
        self.socket = context.socket(zmq.PAIR)
        self.socket.setsockopt(zmq.LINGER, 0)
        for option in (zmq.SNDHWM, zmq.RCVHWM):  # a burst of the log must not stall the NATS thread
            self.socket.setsockopt(option, PAIR_HWM)
        self.socket.bind(self.endpoint)
        self.inbox: list[list[Any]] = []
        self._calls = itertools.count(1)

    def send(self, *parts: Any) -> None:
        """A request that needs no answer; PAIR keeps their order with calls."""
        self.socket.send(pack(*parts))

    def stop(self) -> bool:
        """Ask the NATS thread to stop, without waiting: a PAIR whose peer is gone (the thread
        closed its end as it failed) would hold a send forever. Whether it was sent."""
        try:
            self.socket.send(pack("stop"), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def request(self, kind: str, *args: Any) -> int:
        """A request whose answer comes later, through `drain`, as ["answer", number, ok, value]."""
        number = next(self._calls)
        self.socket.send(pack(kind, number, *args))
        return number

    def call(self, kind: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """Send a request and wait for its answer: ["answer", number, ok, value]."""
        number = next(self._calls)
        self.socket.send(pack(kind, number, *args))
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        deadline = time.monotonic() + timeout  # other news on the socket does not extend it
        while (left := deadline - time.monotonic()) > 0:
            if not poller.poll(math.ceil(min(left, 0.1) * 1000)):
                continue
            parts = unpack(self.socket.recv())
            if parts[0] == "answer" and parts[1] == number:
                if not parts[2]:
                    raise CallFailed(f"{kind}: {parts[3]}")
                return parts[3]
            self.inbox.append(parts)
        raise CallFailed(f"{kind}: NATS did not answer within {timeout:g} s")

    def drain(self) -> list[list[Any]]:
        """Everything the NATS thread sent that was not an answer, oldest first."""
        got, self.inbox = self.inbox, []
        while True:
            try:
                got.append(unpack(self.socket.recv(zmq.NOBLOCK)))
            except zmq.Again:
                return got

    def close(self) -> None:
        self.socket.close()
