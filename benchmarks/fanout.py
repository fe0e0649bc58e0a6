"""Broadcast load: one publisher client, many SUB sockets in a few processes.

Before counting, the publisher broadcasts marker messages every few ms until
every SUB has received one: from then on every subscription is live, so
nothing measured can be lost to the slow-joiner effect. Then it broadcasts
numbered messages, as fast as its window allows or at a fixed rate.

Flow control is end to end, through a shared array (see `Slots`): the
publisher keeps at most `window` messages beyond what the slowest SUB has
received, far below the servers' per-subscriber queue limit (10,000), so a
message missing at a SUB is a real loss.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import zmq

from benchmarks.histogram import LogHistogram
from benchmarks.tracker import Tracker
from benchmarks.wire import (
    ACK,
    ERROR,
    MARKER,
    body,
    make_wire,
    parse_body,
    recv_frames,
    register,
    send_frames,
)
from benchmarks.workers import expect, sleep_until

MARKER_EVERY_MS = 20
MARKER_TIMEOUT = 60.0
DRAIN_SECONDS = 10.0
SEND_BATCH = 128
DRAIN_BATCH = 512


class Slots:
    """Indexes into the shared array: [started_ns, final_sent, (ready, progress) per SUB worker]."""

    STARTED = 0
    FINAL = 1

    @staticmethod
    def size(workers: int) -> int:
        return 2 + 2 * workers

    @staticmethod
    def ready(worker: int) -> int:
        return 2 + 2 * worker

    @staticmethod
    def progress(worker: int) -> int:
        return 3 + 2 * worker


@dataclass(frozen=True)
class PublisherSpec:
    wire: str
    endpoint: str
    subscribers: int
    sub_workers: int
    window: int
    duration: float
    rate: float = 0.0
    setup_timeout: float = 60.0


@dataclass(frozen=True)
class SubscribersSpec:
    wire: str
    pub_endpoint: str
    worker: int
    count: int
    latency: bool
    #: How long to run at most after "go" (markers, sending, draining).
    budget: float
    setup_timeout: float = 60.0


def _ready_and_progress(shared: Any, workers: int) -> tuple[int, int]:
    ready = progress = 0
    for w in range(workers):
        ready += max(0, shared[Slots.ready(w)])
        p = shared[Slots.progress(w)]
        progress = p if w == 0 else min(progress, p)
    return ready, progress


def publisher_worker(spec: PublisherSpec, conn: Connection, shared: Any) -> None:
    wire = make_wire(spec.wire)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = wire.dealer(ctx, spec.endpoint, b"pub")
        register(wire, [sock], [b"pub"], spec.setup_timeout)
        conn.send(("ready", None))
        start_ns = expect(conn, "go", spec.setup_timeout)
        sleep_until(start_ns)
        conn.send(("result", _publish(spec, wire.kind, sock, shared)))
    finally:
        ctx.destroy(linger=0)


def _publish(spec: PublisherSpec, kind: str, sock: zmq.Socket[bytes], shared: Any) -> dict[str, Any]:
    wire = make_wire(kind)
    encode, classify = wire.send, wire.classify
    acks = 0
    errors: Counter[str] = Counter()

    def read(timeout: int) -> None:
        nonlocal acks
        if not sock.poll(timeout):
            return
        for _ in range(DRAIN_BATCH):
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            what, payload = classify(frames)
            if what == ACK:
                acks += len(payload)
            elif what == ERROR:
                errors[payload.decode()] += 1

    # Markers until every SUB has seen one.
    markers = 0
    deadline = time.monotonic_ns() + int(MARKER_TIMEOUT * 1e9)
    marker_began = time.monotonic_ns()
    while _ready_and_progress(shared, spec.sub_workers)[0] < spec.subscribers:
        if time.monotonic_ns() > deadline:
            ready = _ready_and_progress(shared, spec.sub_workers)[0]
            raise TimeoutError(f"only {ready} of {spec.subscribers} SUBs got a marker")
        send_frames(sock, encode(b"m%d" % markers, b"*", MARKER))
        markers += 1
        read(MARKER_EVERY_MS)
    marker_s = (time.monotonic_ns() - marker_began) / 1e9
    # Numbered broadcasts.
    start_ns = time.monotonic_ns()
    shared[Slots.STARTED] = start_ns
    end_ns = start_ns + int(spec.duration * 1e9)
    interval = 1e9 / spec.rate if spec.rate else 0.0
    sent = 0
    window = spec.window
    workers = spec.sub_workers
    while True:
        now = time.monotonic_ns()
        progress = _ready_and_progress(shared, workers)[1]
        if now >= end_ns:
            break
        due = int((now - start_ns) / interval) + 1 - sent if interval else SEND_BATCH
        budget = min(SEND_BATCH, due, window - (sent - progress))
        for _ in range(max(0, budget)):
            send_frames(sock, encode(b"%d" % sent, b"*", body(sent, time.monotonic_ns())))
            sent += 1
        if sent - progress >= window:
            timeout = 1  # window full: the SUBs report through shared memory, not a socket
        elif interval:
            wait_ms = (start_ns + sent * interval - time.monotonic_ns()) / 1e6
            timeout = 0 if wait_ms <= 0 else max(1, int(wait_ms))
        else:
            timeout = 0
        read(timeout)
    shared[Slots.FINAL] = sent
    last_send = time.monotonic_ns()
    drain_end = last_send + int(DRAIN_SECONDS * 1e9)
    expected_replies = sent + markers if wire.acks else 0
    while time.monotonic_ns() < drain_end:
        progress = _ready_and_progress(shared, workers)[1]
        if progress >= sent and acks + sum(errors.values()) >= expected_replies:
            break
        read(5)
    return {
        "sent": sent,
        "markers": markers,
        "marker_s": round(marker_s, 3),
        "acked": acks if wire.acks else None,
        "refused": dict(errors),
        "unanswered": expected_replies - acks - sum(errors.values()) if wire.acks else None,
        "first_send_ns": start_ns,
        "last_send_ns": last_send,
    }


def subscribers_worker(spec: SubscribersSpec, conn: Connection, shared: Any) -> None:
    wire = make_wire(spec.wire)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, spec.count + 16)
    try:
        subs = [wire.subscriber(ctx, spec.pub_endpoint) for _ in range(spec.count)]
        shared[Slots.ready(spec.worker)] = 0
        shared[Slots.progress(spec.worker)] = 0
        conn.send(("ready", None))
        start_ns = expect(conn, "go", spec.setup_timeout)
        sleep_until(start_ns)
        conn.send(("result", _subscribe(spec, wire.kind, subs, shared, start_ns)))
    finally:
        ctx.destroy(linger=0)


def _subscribe(
    spec: SubscribersSpec, kind: str, subs: list[zmq.Socket[bytes]], shared: Any, start_ns: int
) -> dict[str, Any]:
    published = make_wire(kind).published
    poller = zmq.Poller()
    index: dict[zmq.Socket[bytes], int] = {}
    for i, sub in enumerate(subs):
        poller.register(sub, zmq.POLLIN)
        index[sub] = i
    marked = [False] * len(subs)
    trackers = [Tracker() for _ in subs]
    hist = LogHistogram() if spec.latency else None
    ready_slot, progress_slot = Slots.ready(spec.worker), Slots.progress(spec.worker)
    n_marked = others = 0
    first_recv = last_recv = 0
    deadline = start_ns + int(spec.budget * 1e9)
    while True:
        for sock, _ in poller.poll(5):
            i = index[sock]
            tracker = trackers[i]
            for _ in range(DRAIN_BATCH):
                try:
                    frames = recv_frames(sock)
                except zmq.Again:
                    break
                data = published(frames)
                if data is None:
                    others += 1
                elif data == MARKER:
                    if not marked[i]:
                        marked[i] = True
                        n_marked += 1
                else:
                    now = time.monotonic_ns()
                    seq, stamp = parse_body(data)
                    tracker.add(seq)
                    last_recv = now
                    if not first_recv:
                        first_recv = now
                    if hist is not None:
                        hist.record(now - stamp)
        progress = min(t.unique for t in trackers)
        shared[ready_slot] = n_marked
        shared[progress_slot] = progress
        final = shared[Slots.FINAL]
        if (final >= 0 and progress >= final) or time.monotonic_ns() > deadline:
            break
    final = shared[Slots.FINAL]
    delivered = sum(t.unique for t in trackers)
    return {
        "subscribers": len(subs),
        "delivered": delivered,
        "duplicated": sum(t.duplicates for t in trackers),
        "lost": max(0, final) * len(subs) - delivered,
        "other": others,
        "first_recv_ns": first_recv,
        "last_recv_ns": last_recv,
        "histogram": hist.to_dict() if hist is not None else None,
    }
