"""Private messages and broadcasts through a cluster, against one broker alone, in one run.

    flock /work/heavy.lock .venv/bin/python -m benchmarks.cluster [--pairs 20] [--messages 500]

Scenarios: `alone` (one broker, no cluster), `cross` (a cluster of two brokers
on one nats-server: every sender on the first, every recipient on the
second), and `broadcast` (a sender on the first broker broadcasting to the
lobby, a listener's SUB on each broker). Each sender keeps WINDOW messages
in flight. Latency is the time from a SEND to its MESSAGE at the recipient
(one clock, one process); CPU is the brokers' own (and nats-server's), per
message. Raw DEALERs with the project's codec: no client library in the way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from benchmarks.histogram import LogHistogram
from benchmarks.procstat import cpu_seconds
from benchmarks.servers import Server, start_server
from zchat.common import protocol as p

WINDOW = 50


def start_nats(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = str(Path(sys.executable).parent / "nats-server")
    if not Path(binary).exists():
        binary = shutil.which("nats-server") or "nats-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(folder / "nats.log", "wb")  # noqa: SIM115 - open for the server's life
    process = subprocess.Popen([binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(folder / "js")],
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 10
    while "Server is ready" not in (folder / "nats.log").read_text(errors="replace"):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("nats-server did not start")
        time.sleep(0.02)
    return process, f"nats://127.0.0.1:{port}"


def dealer(context: zmq.Context[zmq.Socket[bytes]], endpoint: str, name: str) -> zmq.Socket[bytes]:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart(p.encode_hello(b"h", name))
    assert sock.poll(10_000), f"{name}: no WELCOME"
    welcome = p.decode_event(sock.recv_multipart())
    assert isinstance(welcome, p.Welcome), welcome
    return sock


def wait_listed(sock: zmq.Socket[bytes], names: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.send_multipart(p.encode_simple(b"WHO", b"w"))
        assert sock.poll(10_000), "no answer to WHO"
        users = p.decode_event(sock.recv_multipart())
        if isinstance(users, p.Users) and set(names) <= set(users.names):
            return
        time.sleep(0.05)  # polling with a deadline
    raise RuntimeError("the recipients never showed in WHO")


def private_run(senders: list[zmq.Socket[bytes]], recipients: list[zmq.Socket[bytes]], names: list[str],
                messages: int) -> dict[str, float]:  # fmt: skip
    """Each sender sends `messages` to its recipient, WINDOW in flight: throughput and latency."""
    poller = zmq.Poller()
    for sock in (*senders, *recipients):
        poller.register(sock, zmq.POLLIN)
    sent_at: dict[bytes, float] = {}
    next_i = [0] * len(senders)
    in_flight = [0] * len(senders)
    acked = received = 0
    total = messages * len(senders)
    latency = LogHistogram()
    index = {s: i for i, s in enumerate(senders)}
    recipient_set = set(recipients)

    def top_up(i: int) -> None:
        while in_flight[i] < WINDOW and next_i[i] < messages:
            msg_id = f"{i}-{next_i[i]}".encode()
            sent_at[msg_id] = time.perf_counter()
            senders[i].send_multipart(p.encode_send(msg_id, names[i], "x" * 100))
            next_i[i] += 1
            in_flight[i] += 1

    start = time.perf_counter()
    for i in range(len(senders)):
        top_up(i)
    deadline = time.monotonic() + 300
    while (acked < total or received < total) and time.monotonic() < deadline:
        for sock, _ in poller.poll(1000):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                event = p.decode_event(frames)
                if sock in recipient_set:
                    if isinstance(event, p.Message):
                        received += 1
                        latency.record(int((time.perf_counter() - sent_at[event.msg_id]) * 1e6))
                    continue
                i = index[sock]
                if isinstance(event, p.Ack):
                    done = len(event.ids())
                    acked += done
                    in_flight[i] -= done
                elif isinstance(event, p.Error):
                    raise RuntimeError(f"refused: {event}")
                top_up(i)
    elapsed = time.perf_counter() - start
    if acked < total or received < total:
        raise RuntimeError(f"stalled: {acked} acked, {received} received of {total}")
    return {"messages": total, "seconds": elapsed, "msg_per_s": total / elapsed,
            "p50_ms": latency.percentile(50) / 1000, "p99_ms": latency.percentile(99) / 1000}  # fmt: skip


def measured(pids: list[int], run: dict[str, float], before: list[float]) -> dict[str, float]:
    cpu = sum(cpu_seconds(pid) for pid in pids) - sum(before)
    return {**run, "cpu_us_per_msg": cpu / run["messages"] * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="per sender")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="a tiny run, for the smoke test")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.messages = 2, 20
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    results: dict[str, dict[str, float]] = {}
    folder = Path(tempfile.mkdtemp(prefix="zchat-bench-cluster-"))
    names = [f"r{i}" for i in range(args.pairs)]
    try:
        with start_server("zchat", folder / "alone") as alone:
            senders = [dealer(context, alone.endpoint, f"s{i}") for i in range(args.pairs)]
            recipients = [dealer(context, alone.endpoint, n) for n in names]
            before = [cpu_seconds(alone.pid)]
            results["alone"] = measured(
                [alone.pid], private_run(senders, recipients, names, args.messages), before
            )
            for sock in (*senders, *recipients):
                sock.close()
        nats, url = start_nats(folder)
        brokers: list[Server] = []
        try:
            for node in ("b0", "b1"):
                brokers.append(start_server("zchat", folder / node, "--cluster", url, "--node", node))
            senders = [dealer(context, brokers[0].endpoint, f"s{i}") for i in range(args.pairs)]
            recipients = [dealer(context, brokers[1].endpoint, n) for n in names]
            wait_listed(senders[0], names)  # the first broker knows where every recipient is
            pids = [b.pid for b in brokers] + [nats.pid]
            before = [cpu_seconds(pid) for pid in pids]
            results["cross"] = measured(pids, private_run(senders, recipients, names, args.messages), before)
            for sock in (*senders, *recipients):
                sock.close()
        finally:
            for broker in brokers:
                broker.stop()
            nats.terminate()
            nats.wait(10)
    finally:
        context.destroy(linger=0)
        shutil.rmtree(folder, ignore_errors=True)
    a, c = results["alone"], results["cross"]
    results["ratio"] = {"throughput_cross_over_alone": c["msg_per_s"] / a["msg_per_s"],
                        "p99_cross_over_alone": c["p99_ms"] / a["p99_ms"]}  # fmt: skip
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
