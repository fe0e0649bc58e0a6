"""What pyzmq's multipart calls cost, against frame-by-frame calls with int flags.

A micro-benchmark in one process over inproc: it tells how much of a Python
broker's time per message is pyzmq's own overhead. `send_multipart` checks
every frame's type and computes `zmq.SNDMORE | flags` per frame with enum
arithmetic; `recv_multipart` calls `getsockopt(zmq.RCVMORE)` per frame, which builds a
SocketOption enum each time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.backend

from benchmarks.wire import recv_frames, send_frames

#: A private MESSAGE as a ZCHAT/1 broker sent it: 7 frames (ZCHAT/2 sends one).
FRAMES = [b"ZCHAT/1", b"MESSAGE", b"12345", b"alice", b"bob", b"1795750606134", b"x" * 64]


_BACKEND_SEND = zmq.backend.Socket.send
_SNDMORE = int(zmq.SNDMORE)


def _backend_send(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """Frame by frame through the Cython class under zmq.Socket, skipping its Python `send` wrapper."""
    send = _BACKEND_SEND
    for frame in frames[:-1]:
        send(sock, frame, _SNDMORE)
    send(sock, frames[-1])


def _per_call_us(fn: Callable[[], Any], count: int) -> float:
    began = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - began) / count * 1e6


def measure(count: int = 20000, rounds: int = 3) -> dict[str, Any]:
    """Best of `rounds` per variant, in microseconds per 7-frame message."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        for sock in (a, b):
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
        a.bind("inproc://pyzmq-calls")
        b.connect("inproc://pyzmq-calls")
        best: dict[str, float] = {}

        def fill() -> None:
            for _ in range(count):
                send_frames(a, FRAMES)

        variants: list[tuple[str, Callable[[], Any], bool]] = [
            ("send_multipart(frames)", lambda: a.send_multipart(FRAMES), False),
            ("send_multipart(frames, zmq.NOBLOCK)", lambda: a.send_multipart(FRAMES, zmq.NOBLOCK), False),
            ("send() per frame, int flags", lambda: send_frames(a, FRAMES), False),
            ("zmq.backend.Socket.send per frame, int flags", lambda: _backend_send(a, FRAMES), False),
            ("recv_multipart(zmq.NOBLOCK)", lambda: b.recv_multipart(zmq.NOBLOCK), True),
            ("recv(copy=False) per frame, Frame.more", lambda: recv_frames(b), True),
        ]
        for _ in range(rounds):
            for name, fn, receives in variants:
                if receives:
                    fill()
                took = _per_call_us(fn, count)
                if not receives:
                    while b.poll(0):
                        recv_frames(b)
                best[name] = round(min(best.get(name, took), took), 2)
        return {"frames": len(FRAMES), "count": count, "us_per_message": best}
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    for name, us in measure()["us_per_message"].items():
        print(f"{us:8.2f} us  {name}")
