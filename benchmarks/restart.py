"""A broker SIGKILLed on its SQLite store: nothing acknowledged lost, every client back.

    python -m benchmarks.restart [--quick] [--kills 5] [--clients 2000] [--restarts 3] [--loop]
                                 [--out benchmarks/restart.json]

1. Durability: sender processes stream broadcasts and private messages to
   offline users (their mailboxes) as fast as the broker acknowledges; the
   broker is SIGKILLed at a seeded random moment and restarted on the same
   store; every message that got an ACK must be in the lobby's history or in
   its recipient's mailbox (read by signing in as the recipient).
2. Reconnect: clients of the real client library (`Client`, a thread and
   sockets each; with --loop `LoopClient`s, all of a process on one asyncio
   loop and one ZeroMQ context) in several processes; the broker is
   SIGKILLed and restarted on the same ports and store, and each client's
   Status events say when it is online again (ONLINE after RECONNECTING,
   whatever it does meanwhile).

JSON to --out, Markdown tables on stdout, progress on stderr; exit status 1
if an acknowledged message was lost or a client did not come back in time.
Everything runs on 127.0.0.1, and only processes started here are stopped
(by PID).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import zmq

from benchmarks import report
from benchmarks.machine import describe, source_state
from benchmarks.procstat import CpuMeter, cpu_seconds, raise_fd_limit, wait_quiet
from benchmarks.run import Progress
from benchmarks.servers import Server, start_server
from benchmarks.wire import (
    ACK,
    ERROR,
    ack_status,
    answered_id,
    body,
    make_wire,
    parse_body,
    recv_frames,
    register,
    send_frames,
)
from benchmarks.workers import Crew, expect, sleep_until, split
from benchmarks.workloads import SETUP_TIMEOUT, START_LEAD_NS
from zchat.broker.settings import default
from zchat.client import events as ev
from zchat.client.loop import SOCKETS_PER_CLIENT, LoopClient
from zchat.client.session import Client, ConnectError
from zchat.client.settings import Settings
from zchat.common import protocol as p


@dataclass(frozen=True)
class Plan:
    kills: int
    sender_procs: int
    senders_per_proc: int
    #: Offline users each sender writes to, round robin (a mailbox holds MAILBOX messages).
    boxes_per_sender: int
    #: Unacknowledged messages per sender.
    window: int
    #: The SIGKILL comes this many seconds after the senders start (uniform, seeded).
    kill_after: tuple[float, float]
    clients: int
    client_procs: int
    restarts: int
    #: Seconds after the restart by which a client that is not online counts as not back.
    bound: float
    #: Seconds for every client to sign in before the first restart (else nothing is measured).
    setup: float = SETUP_TIMEOUT
    #: Broker flood control in the reconnect part: the broker's defaults, as people run it.
    rate: float = 20.0
    burst: int = 100
    #: The clients as `LoopClient`s on one asyncio loop per process, not a `Client` (thread) each.
    loop: bool = False
    #: The client processes' nice value (0: as the broker).
    client_nice: int = 0


FULL = Plan(kills=5, sender_procs=4, senders_per_proc=4, boxes_per_sender=4, window=100, kill_after=(1.0, 3.0),
            clients=2000, client_procs=8, restarts=3, bound=60.0)  # fmt: skip
QUICK = Plan(kills=1, sender_procs=2, senders_per_proc=2, boxes_per_sender=2, window=50, kill_after=(0.3, 0.6),
             clients=20, client_procs=2, restarts=1, bound=20.0)  # fmt: skip

#: What one mailbox holds (the broker's default); more is refused with 507.
MAILBOX = default("mailbox_messages")
SEND_BATCH = 64
DRAIN_BATCH = 256
#: After the kill, how long the senders still read what the broker wrote before it died.
LAST_READ_S = 0.3
#: Between restarts: the broker is settled when it uses less than this % of a core.
SETTLE_PCT = 15.0
SETTLE_MAX_S = 30.0
ANSWER_TIMEOUT_S = 30.0
BACK_WITHIN_S = (1.0, 2.0, 4.4, 10.0, 30.0)
#: How long after the bound the clients' processes may take to report (30 s was too short once).
BACK_SLACK_S = 120.0


def sender_name(g: int) -> str:
    return f"sender{g}"


def box_name(g: int, k: int) -> str:
    return f"box{g}x{k}"


# --- 1. durability: the senders ------------------------------------------------


@dataclass(frozen=True)
class SendersSpec:
    endpoint: str
    senders: list[int]
    boxes: int
    window: int
    setup_timeout: float


def senders_worker(spec: SendersSpec, conn: Connection, shared: Any) -> None:
    wire = make_wire("zchat")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        names = [sender_name(g).encode() for g in spec.senders]
        socks = [wire.dealer(ctx, spec.endpoint, name) for name in names]
        register(wire, socks, names, spec.setup_timeout)
        conn.send(("ready", None))
        start_ns = expect(conn, "go", spec.setup_timeout)
        result = _stream(spec, socks, conn, start_ns)
    finally:
        ctx.destroy(linger=0)
    conn.send(("result", result))  # once closed: nothing sent after the kill reaches the new broker


def _stream(
    spec: SendersSpec, socks: list[zmq.Socket[bytes]], conn: Connection, start_ns: int
) -> dict[str, Any]:
    """Send until the coordinator says the broker is dead; what was answered, and how."""
    wire = make_wire("zchat")
    n = len(socks)
    boxes = [[box_name(g, k).encode() for k in range(spec.boxes)] for g in spec.senders]
    in_box = [[0] * spec.boxes for _ in range(n)]  # sent to each box (a mailbox holds MAILBOX)
    seq = [0] * n
    outstanding: list[dict[bytes, int]] = [{} for _ in range(n)]  # id -> when sent (ns)
    acked: list[list[bytes]] = [[] for _ in range(n)]
    statuses: Counter[str] = Counter()  # "broadcast accepted", "private stored", ...
    refused: Counter[str] = Counter()
    other = 0
    poller = zmq.Poller()
    index = {}
    for i, sock in enumerate(socks):
        poller.register(sock, zmq.POLLIN)
        index[sock] = i
    poller.register(conn.fileno(), zmq.POLLIN)
    kill_ns = 0
    stop_reading = 0
    sleep_until(start_ns)
    while True:
        sent_any = False
        if not kill_ns:
            for i in range(n):
                budget = min(SEND_BATCH, spec.window - len(outstanding[i]))
                for _ in range(budget):
                    s = seq[i]
                    seq[i] = s + 1
                    target = b"*"
                    msg_id = b"b%d" % s
                    if s % 2:  # every other message private, to a box with room
                        for step in range(spec.boxes):
                            k = (s // 2 + step) % spec.boxes
                            if in_box[i][k] < MAILBOX:
                                in_box[i][k] += 1
                                target, msg_id = boxes[i][k], b"p%d-%d" % (s, k)
                                break
                    now = time.monotonic_ns()
                    send_frames(socks[i], wire.send(msg_id, target, body(s, now)))
                    outstanding[i][msg_id] = now
                    sent_any = True
        elif time.monotonic_ns() > stop_reading:
            break
        for sock, _ in poller.poll(0 if sent_any else 10):
            if not isinstance(sock, zmq.Socket):
                kind, kill_ns = conn.recv()
                assert kind == "stop", kind
                stop_reading = time.monotonic_ns() + int(LAST_READ_S * 1e9)
                continue
            i = index[sock]
            for _ in range(DRAIN_BATCH):
                try:
                    frames = recv_frames(sock)
                except zmq.Again:
                    break
                what, payload = wire.classify(frames)
                if what == ACK:
                    status = ack_status(frames)
                    for msg_id in payload:
                        if outstanding[i].pop(msg_id, None) is None:
                            other += 1  # an answer to nothing we sent: counted, never lost
                            continue
                        acked[i].append(msg_id)
                        statuses[f"{'broadcast' if msg_id[:1] == b'b' else 'private'} {status}"] += 1
                elif what == ERROR:
                    refused[payload.decode()] += 1
                    outstanding[i].pop(answered_id(frames), None)
                else:
                    other += 1
    names = [sender_name(g) for g in spec.senders]
    return {
        "sent": sum(seq),
        "acked": {names[i]: acked[i] for i in range(n)},
        # Unanswered: sent before the kill (in flight when it came), or after it (never reached it).
        "unanswered": {names[i]: list(outstanding[i].items()) for i in range(n)},
        "statuses": dict(statuses),
        "refused": dict(refused),
        "other": other,
    }


# --- 1. durability: talking to the broker before and after ---------------------


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)  # a mailbox of 1,000 comes at once
    sock.connect(endpoint)
    return sock


def _collect(socks: Sequence[zmq.Socket[bytes]], until: type, timeout: float) -> list[list[Any]]:
    """Every event each socket gets, up to and including the first of type `until` on each."""
    got: list[list[Any]] = [[] for _ in socks]
    waiting = {sock: i for i, sock in enumerate(socks)}
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} of {len(socks)} connections got no {until.__name__}")
        for sock, _ in poller.poll(100):
            while sock in waiting:
                try:
                    event = p.decode_event(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if isinstance(event, p.Error):
                    raise RuntimeError(f"the broker refused: {event}")
                got[waiting[sock]].append(event)
                if isinstance(event, until):
                    del waiting[sock]
                    poller.unregister(sock)
    return got


def sign_in(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, names: list[str]) -> tuple[
    list[zmq.Socket[bytes]], dict[str, list[p.Message]]
]:  # fmt: skip
    """Register each name on a connection of its own; the mail each got (before its PONG)."""
    socks = [_dealer(ctx, endpoint) for _ in names]
    for sock, name in zip(socks, names, strict=True):
        sock.send_multipart(p.encode_hello(b"hello", name))
        # Replies keep their order: the mailbox comes right after WELCOME, so before this PONG.
        sock.send_multipart(p.encode_simple(b"PING", b"after-the-mail"))
    got = _collect(socks, p.Pong, ANSWER_TIMEOUT_S)
    mail = {
        name: [e for e in events if isinstance(e, p.Message)] for name, events in zip(names, got, strict=True)
    }
    return socks, mail


def make_known(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, names: list[str]) -> None:
    """Register and leave: the broker keeps mail for these names from now on."""
    socks, _ = sign_in(ctx, endpoint, names)
    for sock in socks:
        sock.send_multipart(p.encode_simple(b"BYE", b"bye"))
    _collect(socks, p.Ack, ANSWER_TIMEOUT_S)
    for sock in socks:
        sock.close()


def lobby_history(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> list[p.Record]:
    """Every message the lobby's history holds, paged back from the newest."""
    (sock,), _ = sign_in(ctx, endpoint, ["auditor"])
    records: list[p.Record] = []
    before = 0
    while True:
        sock.send_multipart(p.encode(p.HistoryRequest(b"page", p.EVERYONE, before, p.MAX_HISTORY)))
        (events,) = _collect([sock], p.History, ANSWER_TIMEOUT_S)
        page = events[-1].records
        if not page:
            break
        records += page
        before = min(r.seq for r in page)
    sock.close()
    return records


def _seq_of(msg_id: bytes) -> int:
    return int(msg_id[1:].split(b"-")[0])


def audit(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, boxes: list[str], results: list[dict[str, Any]],
    kill_ns: int,
) -> dict[str, Any]:  # fmt: skip
    """Compare what was acknowledged (and what was in flight) with what the restarted broker kept."""
    acked: set[tuple[str, bytes]] = set()
    unanswered: dict[tuple[str, bytes], int] = {}
    for r in results:
        acked.update((sender, msg_id) for sender, ids in r["acked"].items() for msg_id in ids)
        unanswered.update(
            ((sender, msg_id), sent_ns)
            for sender, items in r["unanswered"].items()
            for msg_id, sent_ns in items
        )
    kept: Counter[tuple[str, bytes]] = Counter()
    damaged = misplaced = 0
    for record in lobby_history(ctx, endpoint):
        kept[(record.sender, record.msg_id)] += 1
        damaged += parse_body(record.body)[0] != _seq_of(record.msg_id)
        misplaced += record.msg_id[:1] != b"b"
    socks, mail = sign_in(ctx, endpoint, boxes)  # signing in as each recipient hands over its mail
    for sock in socks:
        sock.close()
    for box, messages in mail.items():
        for m in messages:
            kept[(m.sender, m.msg_id)] += 1
            damaged += parse_body(m.body)[0] != _seq_of(m.msg_id)
            misplaced += m.msg_id[:1] != b"p" or not m.msg_id.endswith(b"-" + box.rsplit("x", 1)[1].encode())
    lost = [key for key in acked if key not in kept]
    in_flight = [key for key, sent_ns in unanswered.items() if sent_ns < kill_ns]
    return {
        "acked": len(acked),
        "acked_broadcasts": sum(msg_id[:1] == b"b" for _, msg_id in acked),
        "acked_private": sum(msg_id[:1] == b"p" for _, msg_id in acked),
        "found": len(acked) - len(lost),
        "lost": len(lost),
        "lost_examples": [f"{sender} {msg_id.decode()}" for sender, msg_id in sorted(lost)[:10]],
        "in_flight_at_kill": len(in_flight),
        "in_flight_kept": sum(key in kept for key in in_flight),
        "sent_after_kill": len(unanswered) - len(in_flight),
        # Kept, but neither acknowledged nor sent before the kill: should not exist.
        "unexplained": sum(1 for key in kept if key not in acked and key not in unanswered),
        "duplicated": sum(n - 1 for n in kept.values()),
        "damaged": damaged,
        "misplaced": misplaced,
        "history_records": sum(n for key, n in kept.items() if key[1][:1] == b"b"),
    }


def kill(server: Server) -> int:
    """SIGKILL the broker (ours, by PID) and reap it; when the signal went, in monotonic ns."""
    when = time.monotonic_ns()
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    return when


def restart(server: Server, log_dir: Path, *args: str) -> Server:
    """The same broker again, on the ports it had."""
    port, pub_port = (e.rsplit(":", 1)[1] for e in (server.endpoint, server.pub_endpoint))
    return start_server("zchat", log_dir, *args, "--port", port, "--pub-port", pub_port)


def durability_run(plan: Plan, run: int, seed: int, log_dir: Path) -> dict[str, Any]:
    rng = random.Random(f"{seed}/{run}")
    kill_after = round(rng.uniform(*plan.kill_after), 3)
    store = ("--store", str(log_dir / f"kill-{run}.db"))  # a fresh file each run
    groups = split(range(plan.sender_procs * plan.senders_per_proc), plan.sender_procs)
    boxes = [box_name(g, k) for g in range(plan.sender_procs * plan.senders_per_proc)
             for k in range(plan.boxes_per_sender)]  # fmt: skip
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    server = start_server("zchat", log_dir, *store)
    try:
        make_known(ctx, server.endpoint, boxes)
        jobs = [(senders_worker, SendersSpec(server.endpoint, group, plan.boxes_per_sender, plan.window,
                                             SETUP_TIMEOUT)) for group in groups]  # fmt: skip
        with Crew(jobs) as crew:
            crew.gather("ready", SETUP_TIMEOUT, server.check)
            start_ns = time.monotonic_ns() + START_LEAD_NS
            crew.tell("go", start_ns)
            sleep_until(start_ns + int(kill_after * 1e9))
            server.check()  # alive until now, so the kill is what ends it
            kill_ns = kill(server)
            crew.tell("stop", kill_ns)
            results = crew.gather("result", LAST_READ_S + 30)
        began = time.monotonic_ns()
        server = restart(server, log_dir, *store)
        restart_s = (time.monotonic_ns() - began) / 1e9
        row = audit(ctx, server.endpoint, boxes, results, kill_ns)
    finally:
        server.stop()
        ctx.destroy(linger=0)
    sent = sum(r["sent"] for r in results)
    refused: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for r in results:
        refused.update(r["refused"])
        statuses.update(r["statuses"])
    return {
        "run": run,
        "kill_after_s": kill_after,
        "sent": sent,
        **row,
        "acked_per_s": round(row["acked"] / kill_after),
        "statuses": dict(statuses),
        "refused": dict(refused),
        "other": sum(r["other"] for r in results),
        "restart_s": round(restart_s, 3),
    }


# --- 2. reconnect: the clients -----------------------------------------------------


class StatusLog:
    """A client's Status events and when they came (monotonic ns): its on_event callback.

    Also how many presence runs (and joins and leaves in them) it read, by second.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[ev.State, int, str]] = []
        self.runs: Counter[int] = Counter()
        self.changes: Counter[int] = Counter()

    def __call__(self, event: ev.Event) -> None:
        # On the client's thread (or loop): nothing more.
        if type(event) is ev.Presences or type(event) is ev.Presence:  # a run, or one alone
            second = time.monotonic_ns() // 1_000_000_000
            self.runs[second] += 1
            self.changes[second] += len(event.changes) if type(event) is ev.Presences else 1
        elif isinstance(event, ev.Status):
            self.seen.append((event.state, time.monotonic_ns(), event.detail))

    def since(self, kill_ns: int) -> dict[str, Any]:
        """What became of the client after the kill.

        `lost`: its first RECONNECTING after the kill; `online`: its first
        ONLINE after that. Status events with state ONLINE also carry notices
        while online (a gap, messages held back), so only one after
        RECONNECTING means online again. A client not online at the kill
        (it gave up before) is `absent`.
        """
        seen = list(self.seen)  # appended to by the client's thread
        before = [(state, detail) for state, when, detail in seen if when < kill_ns]
        at_kill, why = before[-1] if before else (ev.State.CONNECTING, "")
        lost = online = None
        tries = 0
        gave_up = ""
        if at_kill is ev.State.RECONNECTING:
            lost = kill_ns
        for state, when, detail in seen:
            if when < kill_ns:
                continue
            if state is ev.State.RECONNECTING:
                lost = lost or when
                tries += 1
            elif state is ev.State.ONLINE and lost is not None:
                online = when
                break
            elif state in (ev.State.OFFLINE, ev.State.CLOSED):
                gave_up = gave_up or detail
        absent = at_kill in (ev.State.OFFLINE, ev.State.CLOSED)
        if absent:  # why it stopped: the detail of its OFFLINE
            why = next((d for state, d in reversed(before) if state is ev.State.OFFLINE), why)
        return {
            "lost_ns": lost,
            "online_ns": online,
            "reconnectings": tries,
            "gave_up": gave_up,
            "absent": absent,
            "absent_why": why if absent else "",
            "online_at_kill": at_kill is ev.State.ONLINE,
        }

    def more(self, kill_ns: int, online_ns: int | None) -> dict[str, Any]:
        """Why it tried again until back (connection lost, no answer within 3 s...), and
        what presence it read from the second of the kill on: to tell where the time went."""
        until = online_ns or time.monotonic_ns()
        retried = Counter(
            _reason(detail)
            for state, when, detail in list(self.seen)
            if state is ev.State.RECONNECTING and kill_ns <= when < until
        )
        first = kill_ns // 1_000_000_000
        return {
            "retried": dict(retried),
            "presence_runs": sum(n for second, n in list(self.runs.items()) if second >= first),
            "presence_changes": sum(n for second, n in list(self.changes.items()) if second >= first),
        }


def _reason(detail: str) -> str:
    """A RECONNECTING's detail without its delay and attempt number."""
    return detail.split("; reconnecting in")[0]


@dataclass(frozen=True)
class ClientsSpec:
    endpoint: str
    names: list[str]
    #: Clients not online by then are left out, and the coordinator told how many are.
    setup_deadline_ns: int
    #: Longest the worker waits for a word from the coordinator.
    budget: float
    #: Sign-ins at once per process: more only slows each (every JOIN goes to every client).
    connect_threads: int = 2
    #: Added to the processes' nice value: clients standing for clients on other machines
    #: (the broker then has the CPU it wants before them).
    nice: int = 0


def clients_worker(spec: ClientsSpec, conn: Connection, shared: Any) -> None:
    raise_fd_limit(32 * len(spec.names) + 1024)  # a context, two connections, a pipe... per client
    os.nice(spec.nice)
    logs = [StatusLog() for _ in spec.names]
    clients: list[Client] = []

    def connect(i: int) -> None:
        left = (spec.setup_deadline_ns - time.monotonic_ns()) / 1e9
        if left <= 0:
            return
        # The first connect may take until the setup deadline (everyone signs in at once). Once
        # online, a client waits min(this, 3 s) for a HELLO's answer: 3 s, as by default.
        client = Client(spec.names[i], spec.endpoint, connect_timeout=max(3.0, left), on_event=logs[i])
        clients.append(client)
        with contextlib.suppress(ConnectError):  # counted below: not online
            client.connect()

    try:
        with ThreadPoolExecutor(spec.connect_threads) as pool:
            list(pool.map(connect, range(len(spec.names))))
        conn.send(("ready", sum(c.state is ev.State.ONLINE for c in clients)))
        while True:
            if not conn.poll(spec.budget):
                raise TimeoutError(f"no word from the coordinator within {spec.budget}s")
            kind, payload = conn.recv()
            if kind == "stop":
                break
            watch = _heard(kind, payload, spec, logs, [c.state for c in clients], conn)
            while watch is not None and not watch.done():
                time.sleep(WATCH_EVERY_S)
            if watch is not None:
                conn.send(("back", watch.rows()))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("result", None))
    # The broker is gone, so there is no one to say BYE to; and closing hundreds of clients
    # whose threads fight for one GIL can take minutes. The system closes their sockets.
    conn.close()
    os._exit(0)


#: Twice a LoopClient's sockets: after a restart, the closed ones count until reaped.
LOOP_SOCKETS_PER_CLIENT = 2 * SOCKETS_PER_CLIENT


def loop_clients_worker(spec: ClientsSpec, conn: Connection, shared: Any) -> None:
    """The clients of `spec` as LoopClients on this process's one asyncio loop and zmq context."""
    raise_fd_limit(32 * len(spec.names) + 1024)  # a mailbox a socket, two connections... per client
    os.nice(spec.nice)
    try:
        asyncio.run(_loop_clients(spec, conn))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("result", None))
    conn.close()
    os._exit(0)  # as clients_worker: no broker to say BYE to


async def _loop_clients(spec: ClientsSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    # 1,023 sockets by default: 250 clients of 4 sockets would be past it.
    ctx.set(zmq.MAX_SOCKETS, min(LOOP_SOCKETS_PER_CLIENT * len(spec.names) + 64, ctx.get(zmq.SOCKET_LIMIT)))
    logs = [StatusLog() for _ in spec.names]
    clients: list[LoopClient] = []
    todo = iter(range(len(spec.names)))

    async def sign_in_in_turn() -> None:
        for i in todo:  # shared by the signers: each takes the next name
            left = (spec.setup_deadline_ns - time.monotonic_ns()) / 1e9
            if left <= 0:
                return
            settings = Settings(spec.names[i], spec.endpoint, connect_timeout=max(3.0, left))  # as Client's
            client = LoopClient(settings, ctx, logs[i])
            clients.append(client)
            with contextlib.suppress(ConnectError):  # counted below: not online
                await client.connect()

    await asyncio.gather(*(sign_in_in_turn() for _ in range(spec.connect_threads)))  # as many at once
    conn.send(("ready", sum(c.state is ev.State.ONLINE for c in clients)))
    # The coordinator's words come on the loop, as the sockets' do: it never blocks on the pipe.
    words: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def hear() -> None:
        try:
            words.put_nowait(conn.recv())  # one whole message: a readable pipe holds its start
        except EOFError:
            loop.remove_reader(conn.fileno())
            words.put_nowait(("gone", None))

    loop.add_reader(conn.fileno(), hear)
    while True:
        try:
            kind, payload = await asyncio.wait_for(words.get(), spec.budget)
        except (TimeoutError, asyncio.TimeoutError):  # the same from 3.11 on
            raise TimeoutError(f"no word from the coordinator within {spec.budget}s") from None
        if kind == "stop":
            break
        watch = _heard(kind, payload, spec, logs, [c.state for c in clients], conn)
        while watch is not None and not watch.done():
            await asyncio.sleep(WATCH_EVERY_S)
        if watch is not None:
            conn.send(("back", watch.rows()))
    loop.remove_reader(conn.fileno())


def _heard(kind: str, payload: Any, spec: ClientsSpec, logs: list[StatusLog], states: list[ev.State],
           conn: Connection) -> Watch | None:  # fmt: skip
    """A word from the coordinator to a clients process: a count is answered at once; a watch
    is returned, for the caller to wait on as its clients run (a thread's sleep, the loop's)."""
    if kind == "count":
        conn.send(("count", _count(states)))
        return None
    assert kind == "watch", kind
    kill_ns, deadline_ns = payload
    return Watch(spec.names, logs, kill_ns, deadline_ns)


def _count(states: list[ev.State]) -> tuple[int, int]:
    """Online, and stopped for good."""
    gone = (ev.State.OFFLINE, ev.State.CLOSED)
    return states.count(ev.State.ONLINE), sum(s in gone for s in states)


#: How often a watch looks at the clients' Status events.
WATCH_EVERY_S = 0.02


class Watch:
    """Until every client online at the kill is online again (or gave up), or the deadline."""

    def __init__(self, names: list[str], logs: list[StatusLog], kill_ns: int, deadline_ns: int) -> None:
        self.names = names
        self.logs = logs
        self.kill_ns = kill_ns
        self.deadline_ns = deadline_ns
        self.waiting = list(range(len(logs)))

    def done(self) -> bool:
        # A client once back, gone or given up stays so: only the others are looked at again,
        # so that the watch costs the clients' processes little while they reconnect.
        self.waiting = [i for i in self.waiting if not _settled(self.logs[i].since(self.kill_ns))]
        return not self.waiting or time.monotonic_ns() > self.deadline_ns

    def rows(self) -> list[dict[str, Any]]:
        rows = [log.since(self.kill_ns) for log in self.logs]
        for name, log, row in zip(self.names, self.logs, rows, strict=True):
            row.update(log.more(self.kill_ns, row["online_ns"]), name=name)
            if not row["online_ns"] and not row["absent"]:  # what it said last, to tell why
                row["last"] = [(state.value, detail) for state, _, detail in log.seen[-4:]]
        return rows


def _settled(row: dict[str, Any]) -> bool:
    return bool(row["online_ns"] or row["absent"] or row["gave_up"])


def settle(pid: int, say: Callable[[str], None]) -> float:
    """Wait until the broker is nearly idle (clients catching up, JOINs fanned out); seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < SETTLE_MAX_S:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if 100 * (cpu_seconds(pid) - before) / 0.5 < SETTLE_PCT:
            break
    else:
        say(f"the broker is still busy after {SETTLE_MAX_S:g} s; going on")
    return round(time.monotonic() - began, 1)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))], 3)


def reconnect(plan: Plan, log_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    raise_fd_limit(8 * plan.clients + 4096)  # the broker inherits it
    args = ("--store", str(log_dir / "reconnect.db"), "--rate", f"{plan.rate:g}", "--burst", str(plan.burst))
    names = [f"user{i}" for i in range(plan.clients)]
    groups = [[names[i] for i in group] for group in split(range(plan.clients), plan.client_procs)]
    budget = plan.setup + plan.restarts * (plan.bound + SETTLE_MAX_S + 30)
    server = start_server("zchat", log_dir, *args)
    result: dict[str, Any] = {
        "clients": plan.clients, "procs": plan.client_procs, "mode": "loop" if plan.loop else "thread",
        "restarts": [],
    }  # fmt: skip
    try:
        began = time.monotonic()
        setup_deadline = time.monotonic_ns() + int(plan.setup * 1e9)
        worker = loop_clients_worker if plan.loop else clients_worker
        jobs = [
            (worker, ClientsSpec(server.endpoint, group, setup_deadline, budget, nice=plan.client_nice))
            for group in groups
        ]
        with Crew(jobs) as crew:
            online = sum(crew.gather("ready", plan.setup + 30, server.check))
            result.update(setup_s=round(time.monotonic() - began, 1), setup_online=online)
            if online < plan.clients:  # nothing to restart: the machine cannot hold them
                say(
                    f"only {online} of {plan.clients} clients online after {result['setup_s']} s; no restarts"
                )
                result["setup_timed_out_in"] = server.log().count(" left (timeout")
            else:
                say(f"{plan.clients} clients online in {result['setup_s']} s")
                settle(server.pid, say)
            for number in range(plan.restarts if online == plan.clients else 0):
                if number and not recovered(crew, plan.clients, say):
                    result["stopped"] = "clients still reconnecting from the restart before: no more restarts"
                    break
                kill_ns = kill(server)
                server = restart(server, log_dir, *args)
                listening_ns = time.monotonic_ns()
                meter = CpuMeter([server.pid, *crew.pids])
                meter.start()
                crew.tell("watch", (kill_ns, listening_ns + int(plan.bound * 1e9)))
                # After the deadline a threaded worker's main thread may wait long for the GIL.
                backs = [
                    row
                    for rows in crew.gather("back", plan.bound + BACK_SLACK_S, server.check)
                    for row in rows
                ]
                meter.stop()
                row = _reconnect_row(number, backs, kill_ns, listening_ns, meter)
                row["settled_s"] = settle(server.pid, say)
                tracked = row["online_at_kill"] + row["reconnecting_at_kill"]
                say(f"restart {number + 1}: {row['back']}/{tracked} back, all online "
                    f"{row['all_online_s']} s after the restart, p50 {row['p50_s']} s, p99 {row['p99_s']} s, "
                    f"{row['gave_up']} gave up")  # fmt: skip
                result["restarts"].append(row)
            server.stop()  # first, so that no client is online to say BYE: n LEAVEs to n subscribers
            crew.tell("stop")
            crew.gather("result", 60)
    finally:
        server.stop()
    return result


def recovered(crew: Crew, clients: int, say: Callable[[str], None]) -> bool:
    """Wait until every client that has not stopped for good is online again (at most SETTLE_MAX_S).

    Killing the broker again before would measure the aftermath of the last restart.
    """
    deadline = time.monotonic() + SETTLE_MAX_S
    while True:
        crew.tell("count")
        counts = crew.gather("count", 30)
        online, gone = sum(c[0] for c in counts), sum(c[1] for c in counts)
        if online + gone >= clients:
            return True
        if time.monotonic() > deadline:
            say(
                f"{clients - online - gone} clients still not online {SETTLE_MAX_S:g} s after the last restart"
            )
            return False
        time.sleep(1)


def _reconnect_row(
    number: int, backs: list[dict[str, Any]], kill_ns: int, listening_ns: int, meter: CpuMeter
) -> dict[str, Any]:
    present = [b for b in backs if not b["absent"]]
    times = [(b["online_ns"] - listening_ns) / 1e9 for b in present if b["online_ns"]]
    noticed = [(b["lost_ns"] - kill_ns) / 1e9 for b in present if b["lost_ns"]]
    missing = [b for b in present if not b["online_ns"]]
    # The reasons clients gave for giving up, names left out.
    reasons = Counter(re.sub(r"user\d+", "NAME", b["gave_up"]) for b in missing if b["gave_up"])
    retried: Counter[str] = Counter()
    for b in present:
        retried.update(b["retried"])
    gone = Counter(re.sub(r"user\d+", "NAME", b["absent_why"]) for b in backs if b["absent"])
    return {
        "restart": number + 1,
        "online_at_kill": sum(b["online_at_kill"] for b in present),
        #: Not online at the kill but not stopped either: counted as not back until they are.
        "reconnecting_at_kill": sum(not b["online_at_kill"] for b in present),
        "absent": len(backs) - len(present),
        #: Why the clients not online at the kill had stopped (at an earlier restart, or between).
        "absent_why": dict(gone),
        "broker_down_s": round((listening_ns - kill_ns) / 1e9, 3),
        "back": len(times),
        "not_back": len(missing),
        "gave_up": sum(reasons.values()),
        "gave_up_reasons": dict(reasons),
        "not_back_examples": missing[:5],
        "all_online_s": round(max(times), 3) if times and not missing else None,
        "p50_s": _pct(times, 50),
        "p99_s": _pct(times, 99),
        "max_s": round(max(times), 3) if times else None,
        "noticed_p50_s": _pct(noticed, 50),
        "noticed_max_s": round(max(noticed), 3) if noticed else None,
        #: Clients back within so many seconds of the restart (4.4: issue 12's claim).
        "back_within": {f"{s:g}": sum(t <= s for t in times) for s in BACK_WITHIN_S},
        "reconnectings_mean": round(statistics.mean(b["reconnectings"] for b in present), 2)
        if present
        else None,
        #: The RECONNECTINGs after the kill (until back), by reason: the first is the kill itself.
        "retried": dict(retried.most_common()),
        #: Presence runs (PRESENCE messages, or a lone JOIN or LEAVE) a client read, from the kill on.
        "presence_runs_mean": round(statistics.mean(b["presence_runs"] for b in present), 1)
        if present
        else None,
        "presence_changes_mean": round(statistics.mean(b["presence_changes"] for b in present), 1)
        if present
        else None,
        "window_s": round(meter.wall, 2),
        **meter.figures(),
    }


# --- the report ------------------------------------------------------------------


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,}"


def markdown(results: dict[str, Any]) -> str:
    kills = results["durability"]
    parts = ["## Machine", "", report.machine(results["meta"]), ""]
    parts += ["## Durability: broker SIGKILLed mid-stream, restarted on its store", ""]
    parts.append(report._table(
        ["run", "kill after s", "sent", "acked (broadcast / private)", "found", "lost", "in flight at kill",
         "of those kept", "sent after kill", "dup", "refused", "acked/s", "restart s"],
        [[str(r["run"] + 1), f"{r['kill_after_s']:.3f}", _n(r["sent"]),
          f"{_n(r['acked'])} ({_n(r['acked_broadcasts'])} / {_n(r['acked_private'])})", _n(r["found"]),
          f"**{r['lost']}**" if r["lost"] else "0", _n(r["in_flight_at_kill"]), _n(r["in_flight_kept"]),
          _n(r["sent_after_kill"]), str(r["duplicated"]),
          ", ".join(f"{n} x {c}" for c, n in sorted(r["refused"].items())) or "0",
          _n(r["acked_per_s"]), f"{r['restart_s']:.2f}"] for r in kills],
    ))  # fmt: skip
    rec = results["reconnect"]
    how = "LoopClients, one asyncio loop a process" if rec.get("mode") == "loop" else "Clients, a thread each"
    parts += ["", f"## Reconnect: {rec['clients']:,} clients ({how}, {rec['procs']} processes), broker "
              f"SIGKILLed and restarted on the same ports and store", ""]  # fmt: skip
    if rec["setup_online"] < rec["clients"]:
        parts += [f"**Not measured**: only {rec['setup_online']:,} of {rec['clients']:,} clients were online "
                  f"{rec['setup_s']} s after the first signed in (the broker timed out "
                  f"{rec.get('setup_timed_out_in', 0)} of them meanwhile).", ""]  # fmt: skip
    else:
        parts += [f"All {rec['clients']:,} online {rec['setup_s']} s after the first signed in.", ""]
    parts.append(report._table(
        ["restart", "broker down s", "all online s", "p50 s", "p99 s", "max s", "not back (gave up)",
         "noticed p50 / max s", "broker CPU % (main)", "clients / machine CPU %"],
        [[str(r["restart"]), f"{r['broker_down_s']:.2f}", _n(r["all_online_s"]), _n(r["p50_s"]), _n(r["p99_s"]),
          _n(r["max_s"]), f"**{r['not_back']}** ({r['gave_up']})" if r["not_back"] else "0",
          f"{_n(r['noticed_p50_s'])} / {_n(r['noticed_max_s'])}",
          f"{r['server_cpu_pct']} ({r['server_main_thread_pct']})",
          f"{r['load_cpu_pct']} / {r['machine_cpu_pct']}"] for r in rec["restarts"]],
    ))  # fmt: skip
    if rec.get("stopped"):
        parts += ["", f"Stopped after {len(rec['restarts'])} restart(s): {rec['stopped']}."]
    reasons: Counter[str] = Counter()
    for r in rec["restarts"]:
        reasons.update(r["gave_up_reasons"])
    parts += ["", *(f"- gave up {n} times: {reason}" for reason, n in reasons.most_common())]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restart", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds), for the smoke test")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/restart.json"), help="JSON results file")
    parser.add_argument("--kills", type=int, help="durability runs (default 5, quick 1)")
    parser.add_argument("--seed", type=int, default=12, help="seeds the moments of the kills")
    parser.add_argument("--clients", type=int, help="clients that reconnect (default 2000, quick 20)")
    parser.add_argument("--client-procs", type=int, help="processes they run in (default 8, quick 2)")
    parser.add_argument("--restarts", type=int, help="restarts they live through (default 3, quick 1)")
    parser.add_argument(
        "--setup", type=float, metavar="S", help="longest the clients may take to sign in (120)"
    )
    parser.add_argument("--loop", action="store_true",
                        help="the reconnecting clients as LoopClients on one asyncio loop per process")  # fmt: skip
    parser.add_argument("--client-nice", type=int, metavar="N",
                        help="run the reconnecting clients at nice N (19: as if on machines of their own)")  # fmt: skip
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the brokers' logs and stores in DIR")
    parser.add_argument("--quiet-below", type=float, default=30.0, metavar="PCT",
                        help="before each part, wait for other processes to use less CPU than this")  # fmt: skip
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    chosen = {"kills": args.kills, "clients": args.clients, "client_procs": args.client_procs,
              "restarts": args.restarts, "setup": args.setup, "loop": args.loop or None,
              "client_nice": args.client_nice}  # fmt: skip
    plan = Plan(**{**asdict(plan), **{k: v for k, v in chosen.items() if v is not None}})
    say = Progress(args.quiet_below, 0.0 if args.quick else 8.0)
    results: dict[str, Any] = {
        "meta": describe(quick=args.quick),
        "plan": {**asdict(plan), "seed": args.seed},
    }
    with tempfile.TemporaryDirectory(prefix="zchat-restart-") as tmp:
        log_dir = args.keep or Path(tmp)
        results["background_cpu_pct"] = [wait_quiet(say.quiet_pct, say.quiet_wait)]
        rows = []
        for run in range(plan.kills):
            row = durability_run(plan, run, args.seed, log_dir)
            say(f"kill {run + 1} after {row['kill_after_s']} s: {row['acked']:,} acknowledged, "
                f"{row['found']:,} found, {row['lost']} lost, {row['in_flight_at_kill']} in flight "
                f"({row['in_flight_kept']} of them kept)")  # fmt: skip
            rows.append(row)
        results["durability"] = rows
        results["background_cpu_pct"].append(wait_quiet(say.quiet_pct, say.quiet_wait))
        results["reconnect"] = reconnect(plan, log_dir, say)
    results["meta"]["duration_s"] = round(time.monotonic() - say.began, 1)
    results["meta"]["zchat_commit_end"] = source_state()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    say(f"results in {args.out}")
    print(markdown(results))
    bad = [
        r for r in rows if r["lost"] or r["unexplained"] or r["duplicated"] or r["damaged"] or r["misplaced"]
    ]
    rec = results["reconnect"]
    missing = rec["setup_online"] < rec["clients"] or any(r["not_back"] for r in rec["restarts"])
    return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main())
