"""Idle registered clients: HELLO and READY once, then heartbeats.

Against zchat, libzmq's ZMTP heartbeats on each DEALER (as the zchat client
sets them, PROTOCOL.md 7.2: a PING every timeout less the interval) and
no command at all; against the ceiling, a PING (a message to itself) every
heartbeat interval.

A client counts as registered when READY (which publishes its JOIN) is
acknowledged. Against the ceiling, a client registers and heartbeats by
sending to itself (wire.CeilingWire), which the forwarder echoes. The clients have no SUB sockets: a lobby of thousands of
subscribers would measure the JOIN fan-out (n squared deliveries), not idling.

Each client starts heartbeating as soon as its WELCOME arrives, so clients
registered early are never dropped while the others register. The worker
reports "ready" when all its clients are registered and keeps heartbeating
until the coordinator says "stop"; then it waits for the last PONGs.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import zmq

from benchmarks.wire import ACK, ERROR, PONG, Wire, make_wire, recv_frames, send_frames
from benchmarks.workers import expect

#: HELLOs outstanding at once per worker.
REGISTER_WINDOW = 200
DRAIN_BATCH = 256
STOP_DRAIN_SECONDS = 5.0


class Awaiting:
    """The sockets with a reply outstanding: only those are polled.

    zmq_poll costs time in proportion to the sockets it is given (about 3 ms
    for 1,250), and idle clients have a reply outstanding only now and then.
    """

    def __init__(self, poller: zmq.Poller) -> None:
        self.poller = poller
        self.count: dict[zmq.Socket[bytes], int] = {}

    def sent(self, sock: zmq.Socket[bytes]) -> None:
        n = self.count.get(sock, 0)
        if n == 0:
            self.poller.register(sock, zmq.POLLIN)
        self.count[sock] = n + 1

    def answered(self, sock: zmq.Socket[bytes]) -> None:
        n = self.count.get(sock, 0) - 1
        if n > 0:
            self.count[sock] = n
        elif n == 0:
            del self.count[sock]
            self.poller.unregister(sock)


@dataclass(frozen=True)
class IdleSpec:
    wire: str
    endpoint: str
    first: int
    count: int
    heartbeat: float
    #: Seconds: the connection's ZMTP heartbeat timeout (zchat).
    timeout: float
    #: Longest the worker lives, whatever happens.
    budget: float


def idle_worker(spec: IdleSpec, conn: Connection, shared: Any) -> None:
    wire = make_wire(spec.wire)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, spec.count + 16)
    try:
        conn.send(("result", _run(spec, wire, ctx, conn)))
    finally:
        ctx.destroy(linger=0)


def _run(spec: IdleSpec, wire: Wire, ctx: zmq.Context[zmq.Socket[bytes]], conn: Connection) -> dict[str, Any]:
    n = spec.count
    names = [b"idle%d" % (spec.first + i) for i in range(n)]
    zmtp = wire.kind == "zchat"  # libzmq keeps the connection alive: no PING commands
    timing = (int(spec.heartbeat * 1000), int(spec.timeout * 1000)) if zmtp else (0, 0)
    socks = [wire.dealer(ctx, spec.endpoint, name, timing) for name in names]
    index = {sock: i for i, sock in enumerate(socks)}
    poller = zmq.Poller()
    poller.register(conn.fileno(), zmq.POLLIN)
    awaiting = Awaiting(poller)
    conn.send(("connected", None))
    expect(conn, "register", spec.budget)
    interval = int(spec.heartbeat * 1e9)
    welcomed = [False] * n
    schedule: list[tuple[int, int]] = []  # (next PING due, client)
    errors: Counter[str] = Counter()
    hellos = n_ready = pings = pongs = others = 0
    first_hello = time.monotonic_ns()
    last_ready = 0
    deadline = first_hello + int(spec.budget * 1e9)
    stopping = False
    stop_deadline = 0
    while True:
        now = time.monotonic_ns()
        if now > deadline:
            raise TimeoutError(f"idle worker ran out of time ({n_ready}/{n} registered)")
        if stopping and (pongs + sum(errors.values()) >= pings or now > stop_deadline):
            break
        while hellos < n and hellos - n_ready < REGISTER_WINDOW:
            send_frames(socks[hellos], wire.hello(names[hellos]))
            awaiting.sent(socks[hellos])
            hellos += 1
        while not stopping and schedule and schedule[0][0] <= now:
            due, i = heapq.heappop(schedule)
            send_frames(socks[i], wire.ping(names[i], b"p%d" % pings))
            awaiting.sent(socks[i])
            pings += 1
            heapq.heappush(schedule, (due + interval, i))
        timeout = 50
        if schedule and not stopping:
            timeout = max(1, min(timeout, (schedule[0][0] - time.monotonic_ns()) // 1_000_000 + 1))
        for sock, _ in poller.poll(timeout):
            if not isinstance(sock, zmq.Socket):
                kind, _payload = conn.recv()
                if kind != "stop":
                    raise RuntimeError(f"unexpected {kind!r} from the coordinator")
                stopping = True
                stop_deadline = time.monotonic_ns() + int(STOP_DRAIN_SECONDS * 1e9)
                continue
            i = index[sock]
            for _ in range(DRAIN_BATCH):
                try:
                    frames = recv_frames(sock)
                except zmq.Again:
                    break
                if not welcomed[i] and wire.welcomed(frames):
                    welcomed[i] = True
                    if not zmtp:
                        heapq.heappush(schedule, (time.monotonic_ns() + interval, i))
                    ready = wire.ready(b"r%d" % i)
                    if ready is not None:
                        send_frames(sock, ready)  # takes the WELCOME's place in `awaiting`
                        continue
                    awaiting.answered(sock)
                    n_ready += 1  # nothing more to register
                else:
                    what, payload = wire.classify(frames)
                    if what == ACK:
                        for msg_id in payload:
                            awaiting.answered(sock)
                            n_ready += msg_id.startswith(b"r")
                    elif what == PONG:
                        awaiting.answered(sock)
                        pongs += 1
                    elif what == ERROR:
                        awaiting.answered(sock)
                        errors[payload.decode()] += 1
                    else:
                        others += 1
                if n_ready == n and not last_ready:
                    last_ready = time.monotonic_ns()
                    conn.send(("ready", {"first_hello_ns": first_hello, "last_ready_ns": last_ready}))
    return {"clients": n, "pings": pings, "pongs": pongs, "refused": dict(errors), "other": others}
