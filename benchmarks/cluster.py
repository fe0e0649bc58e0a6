"""Private messages and broadcasts through a cluster, against one broker alone, in one run.

    flock /work/heavy.lock .venv/bin/python -m benchmarks.cluster [--pairs 20] [--messages 500]
        [--broadcasters 4] [--broadcasts 1000] [--broker-ref REF] [--profile DIR]

Private messages: `alone` (one broker, no cluster) against `cross` (a cluster
of two brokers on one nats-server: every sender on the first, every
recipient on the second). Broadcasts: `broadcast_alone` (senders and two
listeners' SUBs on one broker) against `broadcast_cross` (the senders on the
first broker of the cluster, a listener's SUB on each). Each sender keeps
WINDOW messages in flight. Latency is the time from a SEND to its MESSAGE at
the recipient or listener (one clock, one process); CPU is the brokers' own
(and nats-server's), per message sent, in all and by process. `heard`
counts the copies distinct by receiver and id (each message once, a
broadcast once per listener), `duplicated` the repeats; a run that loses
one stops as stalled (exit 1) after STALL_SECONDS, with --quick after
QUICK_STALL_SECONDS.
Raw DEALERs and SUBs with the project's codec: no client library in the way.
`--broker-ref` runs the brokers from a snapshot of a commit (servers.py), so
that one run of this file measures two commits alike; `--profile` samples
each broker with py-spy during the cluster's runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from benchmarks.histogram import LogHistogram
from benchmarks.procstat import cpu_seconds
from benchmarks.profile import py_spy, summarize
from benchmarks.servers import SNAPSHOT_ENV, Server, snapshot, start_server
from zchat.common import protocol as p

WINDOW = 50
#: A run that has not heard every copy by then has lost some: it stops, as stalled.
STALL_SECONDS = 300
#: The same, with --quick: a smoke test learns of a loss in seconds, not minutes.
QUICK_STALL_SECONDS = 20
#: Samples a second of each broker, with --profile.
PROFILE_RATE = 100


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


@dataclass(frozen=True)
class Windowed:
    """What a run of send_windowed measured."""

    seconds: float
    #: From a SEND to a receiver's first copy, in all and by receiver (in the receivers' order).
    latency: LogHistogram
    by_receiver: list[LogHistogram]
    #: Copies distinct by receiver and message id: every one expected, once a run ends.
    heard: int
    #: Copies a receiver had heard before (not in `heard`, nor in the latencies).
    duplicated: int


def send_windowed(senders: list[zmq.Socket[bytes]], prefix: str, to: list[str], messages: int,
                  receivers: list[zmq.Socket[bytes]], decode: Callable[[list[bytes]], object],
                  copies: int, stall: float) -> Windowed:  # fmt: skip
    """Sender i sends `messages` to `to[i]` (ids PREFIX+i-n), WINDOW unacknowledged at a time, until
    every SEND is acknowledged and the receivers, their frames read by `decode`, have heard `copies`
    of each, or raises after `stall` seconds."""
    poller = zmq.Poller()
    for sock in (*senders, *receivers):
        poller.register(sock, zmq.POLLIN)
    sent_at: dict[bytes, float] = {}
    next_i = [0] * len(senders)
    in_flight = [0] * len(senders)
    acked = heard = duplicated = 0
    total = messages * len(senders)
    each = {sock: LogHistogram() for sock in receivers}  # a receiver's broker may be slower
    seen: dict[zmq.Socket[bytes], set[bytes]] = {sock: set() for sock in receivers}
    index = {s: i for i, s in enumerate(senders)}

    def top_up(i: int) -> None:
        while in_flight[i] < WINDOW and next_i[i] < messages:
            msg_id = f"{prefix}{i}-{next_i[i]}".encode()
            sent_at[msg_id] = time.perf_counter()
            senders[i].send_multipart(p.encode_send(msg_id, to[i], "x" * 100))
            next_i[i] += 1
            in_flight[i] += 1

    start = time.perf_counter()
    for i in range(len(senders)):
        top_up(i)
    deadline = time.monotonic() + stall
    while (acked < total or heard < total * copies) and time.monotonic() < deadline:
        for sock, _ in poller.poll(1000):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if sock in each:
                    event = decode(frames)
                    if isinstance(event, p.Message) and event.msg_id in sent_at:  # not a warm-up's
                        if event.msg_id in seen[sock]:
                            duplicated += 1
                            continue
                        seen[sock].add(event.msg_id)
                        heard += 1
                        each[sock].record(int((time.perf_counter() - sent_at[event.msg_id]) * 1e6))
                    continue
                reply = p.decode_event(frames)
                i = index[sock]
                if isinstance(reply, p.Ack):
                    done = len(reply.ids())
                    acked += done
                    in_flight[i] -= done
                elif isinstance(reply, p.Error):
                    raise RuntimeError(f"refused: {reply}")
                top_up(i)
    elapsed = time.perf_counter() - start
    if acked < total or heard < total * copies:
        raise RuntimeError(f"stalled: {acked} acked, {heard} heard of {total} x {copies}")
    latency = LogHistogram()
    for histogram in each.values():
        latency.merge(histogram)
    return Windowed(elapsed, latency, list(each.values()), heard, duplicated)


def private_run(senders: list[zmq.Socket[bytes]], recipients: list[zmq.Socket[bytes]], names: list[str],
                messages: int, stall: float) -> dict[str, float]:  # fmt: skip
    """Each sender sends `messages` to its recipient, WINDOW in flight: throughput and latency."""
    total = messages * len(senders)
    run = send_windowed(senders, "", names, messages, recipients, p.decode_event, copies=1, stall=stall)
    return {"messages": total, "heard": run.heard, "duplicated": run.duplicated, "seconds": run.seconds,
            "msg_per_s": total / run.seconds, "p50_ms": run.latency.percentile(50) / 1000,
            "p99_ms": run.latency.percentile(99) / 1000}  # fmt: skip


def listener(context: zmq.Context[zmq.Socket[bytes]], pub_endpoint: str) -> zmq.Socket[bytes]:
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, p.LOBBY_TOPIC)
    sock.connect(pub_endpoint)
    return sock


def wait_subscribed(
    sender: zmq.Socket[bytes], listeners: list[zmq.Socket[bytes]], timeout: float = 10.0
) -> None:
    """Broadcast until every listener has heard one (a SUB's subscription takes a moment to arrive)."""
    poller = zmq.Poller()
    for sock in listeners:
        poller.register(sock, zmq.POLLIN)
    heard: set[zmq.Socket[bytes]] = set()
    deadline = time.monotonic() + timeout
    n = 0
    while len(heard) < len(listeners):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(listeners) - len(heard)} listeners never heard a broadcast")
        n += 1
        sender.send_multipart(p.encode_send(f"warm-{n}".encode(), p.EVERYONE, "warm"))
        for sock, _ in poller.poll(100):
            while True:
                try:
                    sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                heard.add(sock)
    settle = time.monotonic() + 0.5  # what is still in flight: the ACKs and the last broadcasts
    while time.monotonic() < settle:
        for sock in (sender, *listeners):
            while True:
                try:
                    sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
        time.sleep(0.01)  # draining for a fixed time: nothing waits on it


def broadcast_run(senders: list[zmq.Socket[bytes]], listeners: list[zmq.Socket[bytes]],
                  messages: int, stall: float) -> dict[str, Any]:  # fmt: skip
    """Each sender broadcasts `messages`, WINDOW in flight; every listener hears each: throughput
    of the sends, latency from a SEND to each listener's copy."""
    total = messages * len(senders)
    run = send_windowed(
        senders, "b", [p.EVERYONE] * len(senders), messages, listeners,
        lambda frames: p.decode_published(frames).event, copies=len(listeners), stall=stall,
    )  # fmt: skip
    return {"messages": total, "listeners": len(listeners), "heard": run.heard, "duplicated": run.duplicated,
            "seconds": run.seconds, "msg_per_s": total / run.seconds,
            "p50_ms": run.latency.percentile(50) / 1000, "p99_ms": run.latency.percentile(99) / 1000,
            "p99_ms_by_listener": [h.percentile(99) / 1000 for h in run.by_receiver]}  # fmt: skip


def measured(pids: dict[str, int], run: dict[str, Any], before: dict[str, float]) -> dict[str, Any]:
    """The run's figures, with the CPU its processes spent per message, in all and each."""
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    per = {name: round(cpu / run["messages"] * 1e6, 1) for name, cpu in spent.items()}
    return {**run, "cpu_us_per_msg": round(sum(spent.values()) / run["messages"] * 1e6, 1),
            "cpu_us_per_msg_by_process": per}  # fmt: skip


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


class Sampler:
    """py-spy on each broker from `start` to `stop`: where its threads spend their time."""

    def __init__(self, folder: Path | None, pids: dict[str, int], label: str) -> None:
        self.folder, self.pids, self.label = folder, pids, label
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Sampler:
        exe = py_spy()
        if self.folder is None or exe is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = self.folder / f"{self.label}-{name}.raw"
            self.processes[name] = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE), "--format", "raw",
                 "--threads", "--nonblocking", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        time.sleep(1.0)  # py-spy attaches: nothing to wait on but time
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.processes:
            return
        assert self.folder is not None
        seconds = time.monotonic() - self.started
        for name, process in self.processes.items():
            process.send_signal(signal.SIGINT)
            process.wait(30)
            raw = (self.folder / f"{self.label}-{name}.raw").read_text()
            by_thread: dict[str, list[str]] = {}
            for line in raw.splitlines():  # "thread (tid): name;frames... count"
                _, _, rest = line.partition(": ")
                thread, _, frames = rest.partition(";")
                by_thread.setdefault(thread, []).append(frames)
            summary = {thread: summarize("\n".join(lines), PROFILE_RATE, seconds)
                       for thread, lines in by_thread.items()}  # fmt: skip
            (self.folder / f"{self.label}-{name}.json").write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="per sender")
    parser.add_argument("--broadcasters", type=int, default=4)
    parser.add_argument("--broadcasts", type=int, default=1000, help="per broadcaster")
    parser.add_argument("--broker-ref", metavar="REF", help="run the brokers from a snapshot of this commit")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="sample the cluster's brokers with py-spy; summaries in DIR")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="a tiny run, for the smoke test")
    args = parser.parse_args()
    stall = STALL_SECONDS
    if args.quick:
        args.pairs, args.messages, args.broadcasters, args.broadcasts = 2, 20, 1, 20
        stall = QUICK_STALL_SECONDS
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    results: dict[str, Any] = {}
    folder = Path(tempfile.mkdtemp(prefix="zchat-bench-cluster-"))
    if args.broker_ref:
        results["broker"] = snapshot(args.broker_ref, folder / "snapshot")
        os.environ[SNAPSHOT_ENV] = str(folder / "snapshot")
    names = [f"r{i}" for i in range(args.pairs)]
    try:
        with start_server("zchat", folder / "alone") as alone:
            pids = {"broker": alone.pid}
            senders = [dealer(context, alone.endpoint, f"s{i}") for i in range(args.pairs)]
            recipients = [dealer(context, alone.endpoint, n) for n in names]
            before = cpu_now(pids)
            results["alone"] = measured(
                pids, private_run(senders, recipients, names, args.messages, stall), before
            )
            broadcasters = [dealer(context, alone.endpoint, f"c{i}") for i in range(args.broadcasters)]
            listeners = [listener(context, alone.pub_endpoint) for _ in range(2)]
            wait_subscribed(broadcasters[0], listeners)
            before = cpu_now(pids)
            results["broadcast_alone"] = measured(
                pids, broadcast_run(broadcasters, listeners, args.broadcasts, stall), before
            )
            for sock in (*senders, *recipients, *broadcasters, *listeners):
                sock.close()
        nats, url = start_nats(folder)
        brokers: list[Server] = []
        try:
            for node in ("b0", "b1"):
                brokers.append(start_server("zchat", folder / node, "--cluster", url, "--node", node))
            senders = [dealer(context, brokers[0].endpoint, f"s{i}") for i in range(args.pairs)]
            recipients = [dealer(context, brokers[1].endpoint, n) for n in names]
            wait_listed(senders[0], names)  # the first broker knows where every recipient is
            pids = {"b0": brokers[0].pid, "b1": brokers[1].pid, "nats": nats.pid}
            sampled = {"b0": brokers[0].pid, "b1": brokers[1].pid}
            with Sampler(args.profile, sampled, "cross"):
                before = cpu_now(pids)
                results["cross"] = measured(
                    pids, private_run(senders, recipients, names, args.messages, stall), before
                )
            broadcasters = [dealer(context, brokers[0].endpoint, f"c{i}") for i in range(args.broadcasters)]
            listeners = [listener(context, b.pub_endpoint) for b in brokers]
            wait_subscribed(broadcasters[0], listeners)
            with Sampler(args.profile, sampled, "broadcast"):
                before = cpu_now(pids)
                results["broadcast_cross"] = measured(
                    pids, broadcast_run(broadcasters, listeners, args.broadcasts, stall), before
                )
            for sock in (*senders, *recipients, *broadcasters, *listeners):
                sock.close()
        finally:
            for broker in brokers:
                broker.stop()
            nats.terminate()
            nats.wait(10)
    finally:
        context.destroy(linger=0)
        shutil.rmtree(folder, ignore_errors=True)
    results["ratio"] = {}
    for single, cluster in (("alone", "cross"), ("broadcast_alone", "broadcast_cross")):
        a, c = results[single], results[cluster]
        results["ratio"][cluster] = {"throughput_over_alone": round(c["msg_per_s"] / a["msg_per_s"], 3),
                                     "p99_over_alone": round(c["p99_ms"] / a["p99_ms"], 2)}  # fmt: skip
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
