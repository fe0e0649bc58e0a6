"""One client floods, three chat: their latency with and without the flood.

    python -m benchmarks.flood [--quick] [--out benchmarks/flood.json]

The broker runs with flood control (--rate 20 --burst 100). Three clients
send each other private messages at a steady pace and time each one from
send to delivery; a fourth, a bare DEALER, sends as fast as it can from a
loopback address of its own (127.0.0.2, .3, ...: the broker turns a
flooder's address away for a minute, so each round has a new one).
Two kinds of flooder: a stubborn one that goes on sending on its connection
after it is disconnected, and a reconnecting one that registers again on a
new connection, under a new name, each time it is thrown out. Each runs
twice: as is, and at nice 19, which stands for a flooder on another machine
(here it shares the broker's two cores). Quiet and flooded rounds
alternate, so that drifts of the machine hit all alike.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import zmq

from benchmarks.servers import start_server
from zchat.client import events as ev
from zchat.client.session import Client
from zchat.common import protocol as p

PACE = 0.02  # seconds between messages: each chatter sends ~15 a second, under the limit of 20
NOBLOCK = int(zmq.NOBLOCK)
#: Flood control on; of loopback only the chatters' address is exempt from bans (by default all of it is).
BROKER_OPTIONS = ("--rate", "20", "--burst", "100", "--ban-exempt", "127.0.0.1")


def from_source(endpoint: str, source: str) -> str:
    """The endpoint, connected to from `source` (ZeroMQ's "tcp://SOURCE:0;HOST:PORT")."""
    return endpoint.replace("tcp://", f"tcp://{source}:0;", 1)


def chatters(endpoint: str, seconds: float) -> list[float]:
    """Three clients in a ring; delivery latencies in ms."""
    names = ["ann", "ben", "cat"]
    clients = [Client(n, endpoint).connect() for n in names]
    try:
        latencies: list[float] = []
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            sender, receiver = clients[i % 3], clients[(i + 1) % 3]
            started = time.monotonic()
            sender.send(receiver.name, f"m{i}")
            while True:  # the next message event at the receiver is ours: one at a time
                event = receiver.next_event(5)
                if event is None:
                    raise TimeoutError("a chatter's message did not arrive")
                if isinstance(event, ev.Message) and event.text == f"m{i}":
                    break
            latencies.append((time.monotonic() - started) * 1000)
            i += 1
            time.sleep(PACE)  # a steady pace of chat, not synchronisation
        return latencies
    finally:
        for client in clients:
            client.close()


KINDS = {  # name: (reconnects?, niceness)
    "stubborn": (False, 0),
    "reconnecting": (True, 0),
    "stubborn_niced": (False, 19),
    "reconnecting_niced": (True, 19),
}


def flooder(endpoint: str, source: str, seconds: float, kind: str, counts: dict[str, int]) -> None:
    reconnect, niceness = KINDS[kind]
    os.nice(niceness)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sent = refused = sessions = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # one connection, one session, per turn
        sessions += 1
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(from_source(endpoint, source))
        dealer.send_multipart(p.encode_hello(b"h", f"flooder{sessions}"))
        thrown_out = False
        while time.monotonic() < end and not (reconnect and thrown_out):
            for _ in range(50):
                try:
                    dealer.send_multipart(p.encode_send(b"f%d" % sent, "*", "spam"), NOBLOCK)
                    sent += 1
                except zmq.Again:  # hung up on, or the broker is behind: wait as a blocking send would
                    dealer.poll(10, zmq.POLLOUT)
            while dealer.poll(0):
                event = p.decode_event(dealer.recv_multipart())
                if isinstance(event, p.Error) and event.code == p.Code.RATE_LIMITED:
                    refused += 1
                    thrown_out = thrown_out or "disconnected" in event.text
        dealer.close()
    counts.update(sent=sent, refused=refused, sessions=sessions)
    context.destroy(linger=0)


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"count": len(ordered), "p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/flood.json")
    args = parser.parse_args()
    seconds, rounds = (1.0, 1) if args.quick else (5.0, 3)
    quiet: list[float] = []
    flooded: dict[str, list[float]] = {kind: [] for kind in KINDS}
    flooders: dict[str, list[dict[str, int]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp, \
            start_server("zchat", Path(tmp), *BROKER_OPTIONS) as server, \
            multiprocessing.Manager() as manager:  # fmt: skip
        for round_ in range(rounds):
            quiet += chatters(server.endpoint, seconds)
            for k, kind in enumerate(flooded):
                counts = manager.dict()
                source = f"127.0.0.{2 + round_ * len(KINDS) + k}"
                flood = multiprocessing.Process(
                    target=flooder, args=(server.endpoint, source, seconds + 2, kind, counts)
                )
                flood.start()
                flooded[kind] += chatters(server.endpoint, seconds)
                flood.join(seconds + 30)
                if flood.is_alive() or flood.exitcode != 0:  # a flooder that did not finish is a broken run
                    flood.kill()
                    flood.join(10)
                    raise RuntimeError(
                        f"the {kind} flooder on {source} did not finish (exit code {flood.exitcode})"
                    )
                flooders[kind].append(dict(counts))
    result: dict[str, object] = {"quiet": summary(quiet)}
    for kind, latencies in flooded.items():
        figures = summary(latencies)
        result[kind] = {
            **figures,
            "p50_ratio": round(figures["p50_ms"] / result["quiet"]["p50_ms"], 2),  # type: ignore[index]
            "p99_ratio": round(figures["p99_ms"] / result["quiet"]["p99_ms"], 2),  # type: ignore[index]
            "flooder": {
                key: sum(c.get(key, 0) for c in flooders[kind]) for key in ("sent", "refused", "sessions")
            },
        }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
