"""The cost of the SQLite store: private messages with the store on and off,
and replaying 10,000 messages of history.

    python -m benchmarks.store [--quick] [--out benchmarks/store.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import zmq

from benchmarks.servers import start_server
from benchmarks.workloads import run_private
from zchat.common import protocol as p

HISTORY = 10_000
PAGE = p.MAX_HISTORY


def fill_and_replay(log_dir: Path, store: str, count: int) -> dict[str, float]:
    """Send `count` messages to a room, then page the whole history back."""
    with start_server("zchat", log_dir, "--store", store) as server:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(server.endpoint)
        try:
            request(dealer, p.encode_hello(b"h", "historian"))
            request(dealer, p.encode_command(b"ENTER", b"e", "#archive"))
            window = 500
            for start in range(0, count, window):  # pipelined, a window at a time
                ids = [b"m%d" % i for i in range(start, min(count, start + window))]
                for msg_id in ids:
                    dealer.send_multipart(p.encode_send(msg_id, "#archive", f"message {msg_id.decode()}"))
                answered = 0
                while answered < len(ids):
                    event = receive(dealer)
                    if isinstance(event, p.Ack):
                        answered += len(event.ids())
            started = time.perf_counter()
            replayed, before = 0, 0
            while True:
                history = request(dealer, p.encode(p.HistoryRequest(b"h", "#archive", before, PAGE)))
                assert isinstance(history, p.History), history
                if not history.records:
                    break
                replayed += len(history.records)
                before = history.records[0].seq
            elapsed = time.perf_counter() - started
        finally:
            context.destroy(linger=0)
    assert replayed == count, (replayed, count)
    return {"messages": replayed, "seconds": round(elapsed, 3), "messages_per_s": round(replayed / elapsed)}


def request(dealer: zmq.Socket[bytes], frames: list[bytes]) -> object:
    dealer.send_multipart(frames)
    return receive(dealer)


def receive(dealer: zmq.Socket[bytes]) -> object:
    if not dealer.poll(30_000):
        raise TimeoutError("the broker stopped answering")
    return p.decode_event(dealer.recv_multipart())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/store.json")
    args = parser.parse_args()
    duration = 0.5 if args.quick else 5.0
    count = 1000 if args.quick else HISTORY
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        rows = {}
        for label, store in (("memory", ":memory:"), ("sqlite", str(log_dir / "bench.db"))):
            rows[label] = run_private("zchat", 10, duration=duration, procs=2, window=1000, log_dir=log_dir,
                                      server_args=("--store", store))  # fmt: skip
            print(f"private, 10 pairs, store {label}: {rows[label]['msgs_per_s']:,}/s "
                  f"(lost {rows[label]['lost']}, dup {rows[label]['duplicated']})", file=sys.stderr)  # fmt: skip
        replay = fill_and_replay(log_dir, str(log_dir / "history.db"), count)
    ratio = rows["sqlite"]["msgs_per_s"] / max(1, rows["memory"]["msgs_per_s"])
    result = {
        "private_memory_msgs_per_s": rows["memory"]["msgs_per_s"],
        "private_sqlite_msgs_per_s": rows["sqlite"]["msgs_per_s"],
        "sqlite_ratio": round(ratio, 2),
        "lost": sum(r["lost"] or 0 for r in rows.values()),
        "duplicated": sum(r["duplicated"] or 0 for r in rows.values()),
        "history_replay": replay,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
