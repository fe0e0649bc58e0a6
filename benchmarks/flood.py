"""One client floods, three chat: their latency with and without the flood.

    python -m benchmarks.flood [--quick] [--out benchmarks/flood.json]

The broker runs with flood control (--rate 20 --burst 100). Three clients
send each other private messages at a steady pace and time each one from
send to delivery; a fourth, a bare DEALER, sends as fast as it can.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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

PACE = 0.01  # seconds between one chatter's messages


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


def flooder(endpoint: str, seconds: float, counts: dict[str, int]) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    dealer.send_multipart(p.encode_hello(b"h", "flooder"))
    end = time.monotonic() + seconds
    sent = refused = 0
    while time.monotonic() < end:
        for _ in range(50):
            sent += 1
            dealer.send_multipart(p.encode_send(b"f%d" % sent, "*", "spam"))
        while dealer.poll(0):
            event = p.decode_event(dealer.recv_multipart())
            refused += isinstance(event, p.Error) and event.code == p.Code.RATE_LIMITED
        if dealer.poll(1):  # let the broker breathe a little, as a real flooder's network would
            continue
    counts.update(sent=sent, refused=refused)
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
    seconds = 1.0 if args.quick else 8.0
    with tempfile.TemporaryDirectory() as tmp, \
            start_server("zchat", Path(tmp), "--rate", "20", "--burst", "100") as server:  # fmt: skip
        quiet = chatters(server.endpoint, seconds)
        with multiprocessing.Manager() as manager:
            counts = manager.dict()
            flood = multiprocessing.Process(target=flooder, args=(server.endpoint, seconds + 2, counts))
            flood.start()
            loud = chatters(server.endpoint, seconds)
            flood.join(seconds + 30)
            flood_counts = dict(counts)
    result = {"quiet": summary(quiet), "flooded": summary(loud), "flooder": flood_counts}
    result["p50_ratio"] = round(result["flooded"]["p50_ms"] / result["quiet"]["p50_ms"], 2)
    result["p99_ratio"] = round(result["flooded"]["p99_ms"] / result["quiet"]["p99_ms"], 2)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
