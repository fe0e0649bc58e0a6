"""The web gateway under load: many WebSocket sessions, and latency through it vs plain clients.

    python -m benchmarks.web [--sessions 1000] [--rate 1000] [--seconds 20] [--out FILE] [--quick]

1. Sessions: `--sessions` WebSocket users sign in through one `zchat web` at once (10 at a
   time): the time until all are in, the gateway's memory (RSS) and CPU while they come in
   and once they idle, its threads and open files. They are held by a process of their own
   (the crowd), so that their WebSockets do not share a loop, a GIL and a collector with the
   timed messages (`--crowd same-process`: the way it was, for comparison).
2. Latency, with those sessions still signed in: pairs of users send each other private
   messages at `--rate` messages a second in all, first as plain library clients straight
   to the broker, then as WebSocket users through the gateway, then both again (the order
   alternates so that drift of the machine does not favour one). Sent-to-received in this
   one process, on one clock: p50, p99, max of each.
3. The alternative design, for the record (docs/WEB.md): what one session's two sockets
   cost when driven from one zmq.asyncio context, in a process of its own: the memory of
   `--sessions` DEALER+SUB pairs connected to the broker, without any engine on top.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.histogram import LogHistogram
from benchmarks.procstat import cpu_seconds, machine_busy_seconds, raise_fd_limit, rss_bytes
from benchmarks.servers import ZCHAT, Server, start_server
from zchat.client import events as ev
from zchat.client.session import Client

SERVING = re.compile(r"serving the page on (http://\S+?)/ ")
PAIRS = 10
IN_FLIGHT = 10  # sign-ins under way at once
MIB = 1024 * 1024


class GatewayProcess:
    """A running `zchat web`, as the sessions phase measures it: its pid and WebSocket URL."""

    def __init__(self, pid: int, url: str) -> None:
        self.pid, self.url = pid, url

    def threads(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))

    def files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


class Gateway(GatewayProcess):
    def __init__(self, broker: Server, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"web-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [ZCHAT, "web", "--listen", "127.0.0.1:0", "--broker", broker.endpoint, "--log-level", "warning",
                 "--max-sessions", "100000"],
                stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + 20
        # The address is logged at info; at warning we find the port from /proc instead.
        while not (port := self._port()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"zchat web did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        super().__init__(self.process.pid, f"ws://127.0.0.1:{port}/ws")

    def _port(self) -> int:
        inodes = set()
        fd_dir = f"/proc/{self.process.pid}/fd"
        try:
            for fd in os.listdir(fd_dir):
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            return 0
        with open("/proc/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    return int(fields[1].split(":")[1], 16)
        return 0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class WebUser:
    """One WebSocket session; `on_message` sees every chat message it gets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ws: Any = None
        self.cid = 0
        self.on_message: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.signed_in = asyncio.Event()
        self.refused = ""

    async def sign_in(self, url: str) -> float:
        from websockets.asyncio.client import connect

        began = time.perf_counter()
        # A long opening handshake is a finding here (the gateway busy), not an error.
        self.ws = await connect(url, max_size=None, ping_interval=None, open_timeout=300)
        await self.ws.send(json.dumps({"type": "hello", "name": self.name}))
        self.reader = asyncio.create_task(self._read())
        await self.signed_in.wait()
        if self.refused:
            raise RuntimeError(f"{self.name}: {self.refused}")
        return time.perf_counter() - began

    async def _read(self) -> None:
        async for raw in self.ws:
            if self.on_message is not None and '"type": "message"' in raw:
                self.on_message(json.loads(raw), time.perf_counter_ns())
            elif not self.signed_in.is_set() and '"eid"' not in raw:
                reply = json.loads(raw)
                if reply["type"] in ("welcome", "refused"):
                    self.refused = reply.get("text", "") if reply["type"] == "refused" else ""
                    self.signed_in.set()

    async def send(self, to: str, text: str) -> None:
        self.cid += 1
        await self.ws.send(json.dumps({"type": "send", "cid": self.cid, "to": to, "text": text}))

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()


def summary(h: LogHistogram) -> dict[str, float]:
    return {"count": h.count, "p50_ms": h.percentile(50) / 1e6, "p99_ms": h.percentile(99) / 1e6,
            "max_ms": h.max / 1e6}  # fmt: skip


async def sessions_phase(
    gateway: GatewayProcess, count: int, deadline: float
) -> tuple[list[WebUser], dict[str, Any]]:
    rss_before, cpu_before, threads_before = (
        rss_bytes(gateway.pid),
        cpu_seconds(gateway.pid),
        gateway.threads(),
    )
    users = [WebUser(f"web{i}") for i in range(count)]
    times = LogHistogram()
    gate = asyncio.Semaphore(IN_FLIGHT)

    failed: list[str] = []

    async def one(user: WebUser) -> None:
        async with gate:
            try:
                times.record(int((await user.sign_in(gateway.url)) * 1e9))
            except (RuntimeError, OSError, TimeoutError) as e:
                failed.append(str(e)[:200])

    began = time.perf_counter()
    tasks = [asyncio.create_task(one(u)) for u in users]
    _, late = await asyncio.wait(tasks, timeout=deadline)
    for task in late:  # past the deadline: counted, not waited for
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    all_in = time.perf_counter() - began
    users = [u for u in users if u.signed_in.is_set() and not u.refused]
    cpu_connect = cpu_seconds(gateway.pid) - cpu_before
    await asyncio.sleep(3)  # the last presence broadcasts settle
    idle_from, idle_cpu_from = time.perf_counter(), cpu_seconds(gateway.pid)
    await asyncio.sleep(10)
    idle_pct = 100 * (cpu_seconds(gateway.pid) - idle_cpu_from) / (time.perf_counter() - idle_from)
    rss = rss_bytes(gateway.pid)
    result = {
        "sessions": count,
        "signed_in": len(users),
        "sign_in_failed": len(failed),
        "sign_in_unfinished_at_deadline": len(late),
        "sign_in_failures": failed[:5],
        "all_signed_in_s": round(all_in, 2),
        "sign_in": summary(times),
        "gateway_rss_before_mib": round(rss_before / MIB, 1),
        "gateway_rss_mib": round(rss / MIB, 1),
        "rss_per_session_kib": round((rss - rss_before) / count / 1024, 1),
        "gateway_cpu_while_signing_in_s": round(cpu_connect, 2),
        "gateway_idle_cpu_pct": round(idle_pct, 1),
        "gateway_threads": gateway.threads(),
        "threads_per_session": round((gateway.threads() - threads_before) / count, 2),
        "gateway_open_files": gateway.files(),
    }
    return users, result


class Crowd:
    """The signed-in sessions, held by a process of their own until `close`."""

    def __init__(self, gateway: Gateway, count: int, deadline: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.web", "--crowd-of", f"{gateway.pid} {gateway.url}",
             "--sessions", str(count), "--sign-in-deadline", str(deadline)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip

    async def signed_in(self) -> dict[str, Any]:
        """The sessions phase's figures, once the crowd is in and idle."""
        assert self.process.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, self.process.stdout.readline)
        if not line:
            raise RuntimeError(f"the crowd exited with {self.process.wait()} before signing in")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        """Its sessions sign out (it reads to the end of its stdin, then closes them)."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


async def crowd_main(of: str, count: int, deadline: float) -> None:
    """`--crowd-of "PID URL"`: sign the sessions in, print the figures, hold them until stdin ends."""
    raise_fd_limit(1 << 20)
    pid, url = of.split()
    users, result = await sessions_phase(GatewayProcess(int(pid), url), count, deadline)
    print(json.dumps(result), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(u.close() for u in users))


async def web_latency(
    gateway: Gateway, rate: int, seconds: float, round_no: int, settle: float
) -> tuple[LogHistogram, tuple[float, ...]]:
    """The round's latencies, and CPU seconds while its messages were sent: the gateway's, its
    loop thread's (the rest is libzmq's I/O thread) and the whole machine's."""
    senders = [WebUser(f"ws{round_no}s{i}") for i in range(PAIRS)]
    receivers = [WebUser(f"ws{round_no}r{i}") for i in range(PAIRS)]
    await asyncio.gather(*(u.sign_in(gateway.url) for u in senders + receivers))
    await asyncio.sleep(settle)  # their joins reach every signed-in session before timing starts
    h = LogHistogram()

    def got(message: dict[str, Any], now: int) -> None:
        if message["text"].startswith("t:"):
            h.record(now - int(message["text"][2:]))

    for r in receivers:
        r.on_message = got
    quiet_collector()
    cpu_from = (cpu_seconds(gateway.pid), cpu_seconds(gateway.pid, gateway.pid), machine_busy_seconds())
    await paced(rate, seconds, lambda k: senders[k % PAIRS].send(receivers[k % PAIRS].name,
                                                                  f"t:{time.perf_counter_ns()}"))  # fmt: skip
    cpu_to = (cpu_seconds(gateway.pid), cpu_seconds(gateway.pid, gateway.pid), machine_busy_seconds())
    cpu = tuple(b - a for a, b in zip(cpu_from, cpu_to, strict=True))
    await asyncio.sleep(2)  # the last ones arrive
    await asyncio.gather(*(u.close() for u in senders + receivers))
    return h, cpu


async def plain_latency(
    broker: Server, rate: int, seconds: float, round_no: int, settle: float
) -> LogHistogram:
    h = LogHistogram()
    lock = threading.Lock()

    def receiver(name: str) -> Client:
        def on_event(event: ev.Event) -> None:
            if isinstance(event, ev.Message) and event.text.startswith("t:"):
                now = time.perf_counter_ns()
                with lock:
                    h.record(now - int(event.text[2:]))

        return Client(name, broker.endpoint, on_event=on_event)

    senders = [Client(f"pl{round_no}s{i}", broker.endpoint, on_event=lambda e: None) for i in range(PAIRS)]
    receivers = [receiver(f"pl{round_no}r{i}") for i in range(PAIRS)]
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(None, c.connect) for c in senders + receivers))
    await asyncio.sleep(settle)

    async def send(k: int) -> None:
        senders[k % PAIRS].send(receivers[k % PAIRS].name, f"t:{time.perf_counter_ns()}")

    quiet_collector()
    await paced(rate, seconds, send)
    await asyncio.sleep(2)
    await asyncio.gather(*(loop.run_in_executor(None, c.close) for c in senders + receivers))
    return h


def quiet_collector() -> None:
    """Before timing: this process's objects so far are collected once and frozen, so that its
    collector does not pause the timed messages (with the sessions in this process, a full pass
    took 64 ms). The gateway's collector is not touched: that one is measured."""
    gc.collect()
    gc.freeze()


async def paced(rate: int, seconds: float, send: Any) -> None:
    """`rate` sends a second for `seconds`, on a schedule (late ones go at once, not skipped)."""
    began, total = time.perf_counter(), int(rate * seconds)
    for k in range(total):
        due = began + k / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        await send(k)


def zmq_asyncio_sockets(endpoint: str, pub_endpoint: str, count: int) -> dict[str, Any]:
    """The other design's floor: `count` DEALER+SUB pairs on one zmq.asyncio context."""
    code = f"""
import asyncio, json, time, zmq, zmq.asyncio
from benchmarks.procstat import rss_bytes
import os
async def main():
    ctx = zmq.asyncio.Context()
    ctx.set(zmq.MAX_SOCKETS, 2 * {count} + 64)
    before = rss_bytes(os.getpid())
    socks = []
    for i in range({count}):
        d = ctx.socket(zmq.DEALER); d.setsockopt(zmq.LINGER, 0); d.connect({endpoint!r})
        s = ctx.socket(zmq.SUB); s.setsockopt(zmq.LINGER, 0); s.setsockopt(zmq.SUBSCRIBE, b""); s.connect({pub_endpoint!r})
        socks += [d, s]
    await asyncio.sleep(3)
    print(json.dumps({{"rss_per_session_kib": round((rss_bytes(os.getpid()) - before) / {count} / 1024, 1)}}))
    for s in socks: s.close()
    ctx.term()
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    if out.returncode != 0:
        return {"error": out.stderr[-500:]}
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    raise_fd_limit(1 << 20)
    broker = start_server("zchat", log_dir, "--max-clients", str(args.sessions + 1000))
    gateway = Gateway(broker, log_dir)
    crowd: Crowd | None = None
    users: list[WebUser] = []
    try:
        if args.crowd == "own-process":
            crowd = Crowd(gateway, args.sessions, args.sign_in_deadline)
            sessions = await crowd.signed_in()
        else:
            users, sessions = await sessions_phase(gateway, args.sessions, args.sign_in_deadline)
        print(f"sessions: {json.dumps(sessions)}", file=sys.stderr)
        plain, web = LogHistogram(), LogHistogram()
        web_cpu = [0.0, 0.0, 0.0]  # the gateway, its loop thread, the machine
        for round_no in range(2):
            order = ("plain", "web") if round_no == 0 else ("web", "plain")
            for kind in order:
                if kind == "plain":
                    plain.merge(
                        await plain_latency(broker, args.rate, args.seconds / 2, round_no, args.settle)
                    )
                else:
                    h, cpu = await web_latency(gateway, args.rate, args.seconds / 2, round_no, args.settle)
                    web.merge(h)
                    web_cpu = [a + b for a, b in zip(web_cpu, cpu, strict=True)]
        latency = {"rate_per_s": args.rate, "seconds_each": args.seconds, "pairs": PAIRS, "settle_s": args.settle,
                   "plain": summary(plain), "web": summary(web)}  # fmt: skip
        latency["p99_ratio"] = round(latency["web"]["p99_ms"] / max(latency["plain"]["p99_ms"], 1e-9), 2)
        latency["crowd"] = args.crowd
        # The gateway's CPU while the timed messages went through it (the 1,000 idle sessions'
        # share too): less sensitive to others' load on the machine than the tail is.
        latency["gateway_cpu_pct"] = round(100 * web_cpu[0] / args.seconds, 1)
        latency["gateway_loop_thread_cpu_pct"] = round(100 * web_cpu[1] / args.seconds, 1)
        latency["gateway_cpu_ms_per_message"] = round(1000 * web_cpu[0] / max(web.count, 1), 3)
        latency["machine_busy_pct"] = round(100 * web_cpu[2] / args.seconds, 1)  # of 100 x cores
        await asyncio.gather(*(u.close() for u in users))
    finally:
        if crowd is not None:
            crowd.close()
        gateway.stop()
        broker.stop()
    # Sessions the broker dropped for silence: their poller thread did not get to PING in time.
    sessions["broker_heartbeat_timeouts"] = broker.log().count(" left (timeout")
    broker = start_server("zchat", log_dir, "--max-clients", str(args.sessions + 1000))
    try:
        alternative = zmq_asyncio_sockets(broker.endpoint, broker.pub_endpoint, args.sessions)
    finally:
        broker.stop()
    return {"sessions": sessions, "latency": latency, "zmq_asyncio_sockets_only": alternative,
            "cores": os.cpu_count()}  # fmt: skip


def row(kind: str, h: dict[str, float]) -> str:
    return f"| {kind} | {h['count']} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | {h['max_ms']:.2f} |"


def report(result: dict[str, Any]) -> str:
    s, lat, alt = result["sessions"], result["latency"], result["zmq_asyncio_sockets_only"]
    lines = [
        "## Sessions",
        f"{s['signed_in']} of {s['sessions']} WebSocket sessions signed in within {s['all_signed_in_s']} s "
        f"(each: p50 {s['sign_in']['p50_ms']:.0f} ms, p99 {s['sign_in']['p99_ms']:.0f} ms, {IN_FLIGHT} at a time)",
        f"gateway RSS {s['gateway_rss_before_mib']} MiB -> {s['gateway_rss_mib']} MiB "
        f"({s['rss_per_session_kib']} KiB a session); {s['gateway_threads']} threads "
        f"({s['threads_per_session']} a session), {s['gateway_open_files']} open files",
        f"gateway CPU: {s['gateway_cpu_while_signing_in_s']} s while they signed in, "
        f"{s['gateway_idle_cpu_pct']} % of a core once idle; {s['sign_in_failed']} sign-ins failed, "
        f"{s['sign_in_unfinished_at_deadline']} unfinished at the deadline, "
        f"{s['broker_heartbeat_timeouts']} sessions dropped by the broker for silence",
        "",
        f"## Latency at {lat['rate_per_s']} msg/s, {lat['pairs']} pairs, {lat['seconds_each']} s each "
        f"(the signed-in sessions in {'a process of their own' if lat['crowd'] == 'own-process' else 'this one'})",
        "| path | messages | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        *(row(kind, lat[kind]) for kind in ("plain", "web")),
        f"p99 through the gateway / plain: {lat['p99_ratio']}x; the gateway's CPU meanwhile "
        f"{lat['gateway_cpu_pct']} % of a core ({lat['gateway_loop_thread_cpu_pct']} % its loop), "
        f"{lat['gateway_cpu_ms_per_message']} ms a message; the machine {lat['machine_busy_pct']} % busy "
        f"of {100 * (os.cpu_count() or 1)}",
        "",
        "## The zmq.asyncio alternative, sockets only",
        f"{alt.get('rss_per_session_kib', alt)} KiB a session (DEALER+SUB on one context, no engine)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0, help="of each path, over two rounds")
    parser.add_argument(
        "--sign-in-deadline",
        type=float,
        default=300.0,
        help="seconds for all to sign in; those not in by then are counted, not waited for",
    )
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds between a round's sign-ins and its first message: without "
                             "them, the round's 20 joins reach every session while it is timed")  # fmt: skip
    parser.add_argument("--crowd", choices=("own-process", "same-process"), default="own-process",
                        help="where the signed-in sessions live while latency is timed: a process of "
                             "their own, or this one (sharing its loop, GIL and collector)")  # fmt: skip
    parser.add_argument("--crowd-of", default=None, help=argparse.SUPPRESS)  # the crowd process itself
    parser.add_argument("--quick", action="store_true", help="20 sessions, 100 msg/s, 2 s: a smoke test")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--logs", type=Path, default=Path("/tmp/zchat-bench-web"))
    args = parser.parse_args()
    if args.crowd_of is not None:
        asyncio.run(crowd_main(args.crowd_of, args.sessions, args.sign_in_deadline))
        return
    if args.quick:
        args.sessions, args.rate, args.seconds = 20, 100, 2.0
    result = asyncio.run(run(args, args.logs))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))


if __name__ == "__main__":
    main()
