"""Private-message load: sender/receiver pairs on raw DEALER sockets.

Pair i is the client "s<i>" sending to the client "r<i>", both in one worker
process. Senders pipeline with a bounded window: against zchat a message is
outstanding until its ACK or ERROR comes back; against the ceiling (no
replies) until it is delivered. Unlimited mode sends as fast as the windows
allow (throughput); with a rate, sends are paced on a schedule (latency).
Receivers confirm what they got (zchat: RECEIVED, one per read of their
socket), as clients do: the broker keeps a message until it is confirmed.
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
    DELIVERY,
    ERROR,
    body,
    make_wire,
    parse_body,
    recv_frames,
    register,
    send_frames,
)
from benchmarks.workers import expect, sleep_until
from zchat.common.protocol import MAX_RECEIVED_IDS

#: Most messages sent in one round before the sockets are read again.
SEND_BATCH = 256
#: Most messages read from one socket in one round.
DRAIN_BATCH = 512
#: How often senders read their ACKs (and ERRORs) when their windows are not full.
ACK_DRAIN_NS = 2_000_000
#: How long to wait for everything outstanding after the sending stops.
DRAIN_SECONDS = 10.0


@dataclass(frozen=True)
class PairsSpec:
    wire: str
    endpoint: str
    pairs: list[int]
    window: int
    duration: float
    #: Messages per second for this worker; 0 for as fast as the windows allow.
    rate: float = 0.0
    latency: bool = False
    setup_timeout: float = 60.0


def pairs_worker(spec: PairsSpec, conn: Connection, shared: Any) -> None:
    wire = make_wire(spec.wire)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 2 * len(spec.pairs) + 16)
    try:
        s_names = [b"s%d" % i for i in spec.pairs]
        r_names = [b"r%d" % i for i in spec.pairs]
        senders = [wire.dealer(ctx, spec.endpoint, n) for n in s_names]
        receivers = [wire.dealer(ctx, spec.endpoint, n) for n in r_names]
        register(wire, senders + receivers, s_names + r_names, spec.setup_timeout)
        conn.send(("ready", None))
        start_ns = expect(conn, "go", spec.setup_timeout)
        conn.send(("result", _pump(spec, wire.kind, senders, receivers, s_names, r_names, start_ns)))
    finally:
        ctx.destroy(linger=0)


def _pump(
    spec: PairsSpec,
    kind: str,
    senders: list[zmq.Socket[bytes]],
    receivers: list[zmq.Socket[bytes]],
    sources: list[bytes],
    targets: list[bytes],
    start_ns: int,
) -> dict[str, Any]:
    wire = make_wire(kind)
    acks_resolve = wire.acks
    encode, classify = wire.send, wire.classify
    n = len(senders)
    window = spec.window
    sent = [0] * n
    resolved = [0] * n  # answered (zchat) or delivered (ceiling)
    trackers = [Tracker() for _ in range(n)]
    hist = LogHistogram() if spec.latency else None
    errors: Counter[str] = Counter()
    acks = others = total_sent = total_resolved = total_delivered = receipts = 0
    # Only the receivers are polled: a wake-up per ACK would cost more than the
    # ACK (zmq_poll takes about 1 us per socket); senders are read every
    # ACK_DRAIN_NS, or at once when every window is full.
    poller = zmq.Poller()
    roles: dict[zmq.Socket[bytes], tuple[bool, int]] = {}
    for i in range(n):
        poller.register(receivers[i], zmq.POLLIN)
        roles[senders[i]] = (False, i)
        roles[receivers[i]] = (True, i)
    acks_due = 0
    interval = 1e9 / spec.rate if spec.rate else 0.0
    end_ns = start_ns + int(spec.duration * 1e9)
    drain_end = end_ns + int(DRAIN_SECONDS * 1e9)
    first_send = last_send = last_recv = 0
    rr = 0
    sleep_until(start_ns)
    while True:
        now = time.monotonic_ns()
        timeout = 1 if acks_resolve else 10
        all_full = False
        if now < end_ns:
            due = int((now - start_ns) / interval) + 1 - total_sent if interval else SEND_BATCH
            budget = min(SEND_BATCH, due)
            stalled = 0
            while budget > 0 and stalled < n:
                i = rr
                rr = rr + 1 if rr + 1 < n else 0
                seq = sent[i]
                if seq - resolved[i] >= window:
                    stalled += 1
                    continue
                stalled = 0
                stamp = time.monotonic_ns()
                send_frames(senders[i], encode(b"%d" % seq, targets[i], body(seq, stamp)))
                sent[i] = seq + 1
                budget -= 1
                total_sent += 1
                last_send = stamp
                if not first_send:
                    first_send = stamp
            if stalled >= n:
                all_full = True  # wait for answers (see `timeout` above)
            elif interval:
                wait_ms = (start_ns + total_sent * interval - time.monotonic_ns()) / 1e6
                timeout = 0 if wait_ms <= 0 else max(1, int(wait_ms))
            else:
                timeout = 0
        else:
            unresolved = total_sent - total_resolved
            if (unresolved == 0 and total_delivered + sum(errors.values()) >= total_sent) or now > drain_end:
                break
        ready = [sock for sock, _ in poller.poll(timeout)]
        if acks_resolve:
            now = time.monotonic_ns()
            if now >= acks_due or all_full or now >= end_ns:
                ready += senders
                acks_due = now + ACK_DRAIN_NS
        for sock in ready:
            is_receiver, i = roles[sock]
            confirm: list[bytes] = []
            for _ in range(DRAIN_BATCH):
                try:
                    frames = recv_frames(sock)
                except zmq.Again:
                    break
                what, payload = classify(frames)
                if what == DELIVERY and is_receiver:
                    now = time.monotonic_ns()
                    seq, stamp = parse_body(payload)
                    confirm.append(b"%d" % seq)  # its id: a recipient confirms what it got, as clients do
                    tracker = trackers[i]
                    before = tracker.unique
                    tracker.add(seq)
                    if tracker.unique != before:
                        total_delivered += 1
                        if not acks_resolve:
                            resolved[i] += 1
                            total_resolved += 1
                    last_recv = now
                    if hist is not None:
                        hist.record(now - stamp)
                elif is_receiver:
                    others += 1  # the ACK of its RECEIVED
                elif what == ACK:
                    k = len(payload)
                    acks += k
                    resolved[i] += k
                    total_resolved += k
                elif what == ERROR:
                    errors[payload.decode()] += 1
                    resolved[i] += 1
                    total_resolved += 1
                else:
                    others += 1
            if confirm:
                receipts += 1
                for start in range(0, len(confirm), MAX_RECEIVED_IDS):
                    frames = wire.received(
                        b"c%d" % receipts, sources[i], confirm[start : start + MAX_RECEIVED_IDS]
                    )
                    if frames is None:
                        break
                    send_frames(sock, frames)
    refused = sum(errors.values())
    delivered = sum(t.unique for t in trackers)
    return {
        "sent": total_sent,
        "delivered": delivered,
        "duplicated": sum(t.duplicates for t in trackers),
        "lost": total_sent - delivered - refused,
        "acked": acks if acks_resolve else None,
        "refused": dict(errors),
        "unanswered": total_sent - acks - refused if acks_resolve else None,
        "other": others,
        "first_send_ns": first_send,
        "last_send_ns": last_send,
        "last_recv_ns": last_recv,
        "histogram": hist.to_dict() if hist is not None else None,
    }
