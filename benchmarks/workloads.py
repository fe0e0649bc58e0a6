"""One measurement each: a fresh server, load processes, one result dict.

Every function starts the server under test ("zchat" or "ceiling"), starts
its load workers, waits for them to be ready, runs them together, stops
everything it started and returns the combined figures.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.fanout import DRAIN_SECONDS as FANOUT_DRAIN
from benchmarks.fanout import (
    MARKER_TIMEOUT,
    PublisherSpec,
    Slots,
    SubscribersSpec,
    publisher_worker,
    subscribers_worker,
)
from benchmarks.histogram import LogHistogram
from benchmarks.idle import IdleSpec, idle_worker
from benchmarks.load import DRAIN_SECONDS, PairsSpec, pairs_worker
from benchmarks.procstat import CpuMeter, raise_fd_limit, rss_bytes
from benchmarks.profile import Profiler
from benchmarks.servers import start_server
from benchmarks.workers import Crew, Worker, new_shared, sleep_until, split

#: Lead time between "go" and the common start, so all workers start together.
START_LEAD_NS = 100_000_000
SETUP_TIMEOUT = 120.0


def _histogram(results: list[dict[str, Any]]) -> dict[str, float] | None:
    hists = [r["histogram"] for r in results if r.get("histogram")]
    if not hists:
        return None
    merged = LogHistogram()
    for h in hists:
        merged.merge(LogHistogram.from_dict(h))
    return merged.summary_us()


def _sum(results: list[dict[str, Any]], key: str) -> int | None:
    values = [r[key] for r in results]
    return None if any(v is None for v in values) else sum(values)


def _cost(meter: CpuMeter, per_second: float) -> dict[str, float | None]:
    """Server CPU time per message, in microseconds: all threads, and the main (Python) thread alone.

    Unlike the rates, this hardly depends on how much CPU the load processes
    left the server, so it compares servers fairly on a small machine.
    """
    if per_second <= 0:
        return {"server_us_per_msg": None, "server_main_us_per_msg": None}
    return {
        "server_us_per_msg": round(meter.percent[0] / 100 / per_second * 1e6, 2),
        "server_main_us_per_msg": round(meter.main_thread_pct / 100 / per_second * 1e6, 2),
    }


def _refused(results: list[dict[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for r in results:
        total.update(r["refused"])
    return dict(total)


def run_private(
    kind: str, pairs: int, *, duration: float, procs: int, window: int, log_dir: Path,
    rate: float = 0.0, latency: bool = False, profile: Path | None = None, server_args: tuple[str, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    """Private messages over `pairs` sender/receiver pairs; `rate` 0 for as fast as possible."""
    with start_server(kind, log_dir, *server_args) as server:
        groups = split(range(pairs), procs)
        jobs = [
            (
                pairs_worker,
                PairsSpec(
                    kind,
                    server.endpoint,
                    group,
                    window,
                    duration,
                    rate * len(group) / pairs,
                    latency,
                    SETUP_TIMEOUT,
                ),
            )
            for group in groups
        ]
        with Crew(jobs) as crew:
            crew.gather("ready", SETUP_TIMEOUT, server.check)
            meter = CpuMeter([server.pid, *crew.pids])
            start_ns = time.monotonic_ns() + START_LEAD_NS
            crew.tell("go", start_ns)
            sleep_until(start_ns)
            meter.start()
            profiler = Profiler(server.pid, profile, duration) if profile else None
            time.sleep(duration)
            meter.stop()
            results = crew.gather("result", duration + DRAIN_SECONDS + 30, server.check)
            sampled = profiler.finish() if profiler else None
    first = min(r["first_send_ns"] for r in results if r["first_send_ns"])
    last = max(r["last_recv_ns"] for r in results)
    elapsed = max(1e-9, (last - first) / 1e9)
    delivered = _sum(results, "delivered") or 0
    return {
        "target": kind,
        "pairs": pairs,
        "window": window,
        "offered_per_s": rate or None,
        "sent": _sum(results, "sent"),
        "delivered": delivered,
        "acked": _sum(results, "acked"),
        "refused": _refused(results),
        "unanswered": _sum(results, "unanswered"),
        "lost": _sum(results, "lost"),
        "duplicated": _sum(results, "duplicated"),
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(delivered / elapsed),
        **meter.figures(),
        **_cost(meter, delivered / elapsed),
        "latency": _histogram(results),
        "profile": sampled,
    }


def run_broadcast(
    kind: str, subscribers: int, *, duration: float, procs: int, window: int, log_dir: Path,
    rate: float = 0.0, latency: bool = False, profile: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Broadcasts from one publisher to `subscribers` SUB sockets spread over `procs` processes."""
    groups = split(range(subscribers), procs)
    shared = new_shared(Slots.size(len(groups)))
    budget = MARKER_TIMEOUT + duration + FANOUT_DRAIN + 10
    with start_server(kind, log_dir) as server:
        publisher = PublisherSpec(kind, server.endpoint, subscribers, len(groups), window, duration,
                                  rate, SETUP_TIMEOUT)  # fmt: skip
        jobs: list[tuple[Worker, Any]] = [(publisher_worker, publisher)]
        jobs += [
            (
                subscribers_worker,
                SubscribersSpec(kind, server.pub_endpoint, w, len(group), latency, budget, SETUP_TIMEOUT),
            )
            for w, group in enumerate(groups)
        ]
        with Crew(jobs, shared) as crew:
            crew.gather("ready", SETUP_TIMEOUT, server.check)
            meter = CpuMeter([server.pid, *crew.pids])
            crew.tell("go", time.monotonic_ns() + START_LEAD_NS)
            deadline = time.monotonic() + MARKER_TIMEOUT + 10
            while shared[Slots.STARTED] < 0:  # the markers are going round
                if time.monotonic() > deadline:
                    raise TimeoutError("the publisher never started broadcasting")
                time.sleep(0.005)
            meter.start()
            profiler = Profiler(server.pid, profile, duration) if profile else None
            time.sleep(duration)
            meter.stop()
            results = crew.gather("result", budget + 30, server.check)
            sampled = profiler.finish() if profiler else None
    pub, subs = results[0], results[1:]
    last = max(r["last_recv_ns"] for r in subs)
    elapsed = max(1e-9, (last - pub["first_send_ns"]) / 1e9)
    delivered = sum(r["delivered"] for r in subs)
    return {
        "target": kind,
        "subscribers": subscribers,
        "window": window,
        "offered_per_s": rate or None,
        "sent": pub["sent"],
        "markers": pub["markers"],
        "marker_s": pub["marker_s"],
        "acked": pub["acked"],
        "refused": pub["refused"],
        "unanswered": pub["unanswered"],
        "delivered": delivered,
        "lost": sum(r["lost"] for r in subs),
        "duplicated": sum(r["duplicated"] for r in subs),
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(pub["sent"] / elapsed),
        "deliveries_per_s": round(delivered / elapsed),
        **meter.figures(),
        **_cost(meter, pub["sent"] / elapsed),
        "latency": _histogram(subs),
        "profile": sampled,
    }


def run_idle(
    kind: str, clients: int, *, procs: int, heartbeat: float, timeout: float, window: float, log_dir: Path,
    server_args: tuple[str, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    """`clients` registered clients heartbeating on one server: its CPU and memory, registration time."""
    raise_fd_limit(4 * clients + 1024)  # inherited by the server and the workers
    groups = split(range(clients), procs)
    budget = SETUP_TIMEOUT + 2 * heartbeat + window + 30
    args = (
        ("--heartbeat-interval", str(heartbeat), "--heartbeat-timeout", str(timeout), *server_args)
        if kind == "zchat"
        else ()
    )
    with start_server(kind, log_dir, *args) as server:
        time.sleep(0.2)
        rss_before = rss_bytes(server.pid)
        jobs = [
            (idle_worker, IdleSpec(kind, server.endpoint, g[0], len(g), heartbeat, timeout, budget))
            for g in groups
        ]
        with Crew(jobs) as crew:
            crew.gather("connected", SETUP_TIMEOUT, server.check)
            registering = CpuMeter([server.pid])
            registering.start()
            crew.tell("register")
            ready = crew.gather("ready", SETUP_TIMEOUT, server.check)
            registering.stop()
            registered = time.monotonic_ns()
            time.sleep(heartbeat)  # every client has sent a PING by now: the steady state
            meter = CpuMeter([server.pid, *crew.pids])
            meter.start()
            time.sleep(window)
            meter.stop()
            rss_after = rss_bytes(server.pid)
            # Sessions ended by now, not after "stop": the broker ends each watched session
            # whose client closes its socket at the end (LEAVE disconnected), and counting
            # those would race with its own shutdown.
            left = server.log().count(" left (")
            crew.tell("stop")
            results = crew.gather("result", budget, server.check)
    first = min(r["first_hello_ns"] for r in ready)
    last = max(r["last_ready_ns"] for r in ready)
    register_s = (last - first) / 1e9
    pings = sum(r["pings"] for r in results)
    pongs = sum(r["pongs"] for r in results)
    refused = _refused(results)
    return {
        "target": kind,
        "clients": clients,
        "heartbeat_s": heartbeat,
        "register_s": round(register_s, 3),
        "registered_per_s": round(clients / register_s) if register_s > 0 else None,
        #: Broker CPU time per registration (HELLO, READY), less sensitive to a busy machine than the wall time.
        "register_cpu_us_per_client": round(registering.percent[0] / 100 * registering.wall / clients * 1e6),
        "settle_s": round((time.monotonic_ns() - registered) / 1e9, 1),
        "window_s": round(meter.wall, 2),
        **meter.figures(),
        "rss_mib": round(rss_after / 2**20, 1),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "server_main_us_per_ping": round(meter.main_thread_pct / 100 / (clients / heartbeat) * 1e6, 1),
        "pings": pings,
        "pongs": pongs,
        "refused": refused,
        "dropped": left,
        "lost": pings - pongs - sum(refused.values()),
        "duplicated": max(0, pongs - pings),
    }
