"""Run every benchmark against zchat and the ceiling; write JSON, print Markdown.

    python -m benchmarks.run [--quick] [--out results.json] [--docs docs/BENCHMARKS.md]
                             [--plot docs/benchmarks-latency.png] [--profile]

Exit status 0 when every run lost and duplicated nothing, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import pyzmq_calls, report
from benchmarks.machine import describe, source_state
from benchmarks.procstat import raise_fd_limit, wait_quiet
from benchmarks.repeat import choose
from benchmarks.servers import KINDS, SNAPSHOT_ENV, snapshot
from benchmarks.targets import add_ratios, evaluate, loss_summary
from benchmarks.workloads import run_broadcast, run_idle, run_private


@dataclass(frozen=True)
class Plan:
    duration: float
    pairs: tuple[int, ...]
    subscribers: tuple[int, ...]
    latency_pairs: int
    latency_subscribers: int
    #: Fixed offered loads in messages per second; half the measured maximum is added.
    fixed_rates: tuple[float, ...]
    max_fraction: float
    idle_clients: tuple[int, ...]
    idle_heartbeat: float
    idle_timeout: float
    idle_window: float
    #: Load processes per workload.
    private_procs: int = 2
    subscriber_procs: int = 4
    idle_procs: int = 4
    #: Unacknowledged private messages in flight, over all pairs (at least 4 per pair).
    private_window: int = 1000
    #: Broadcasts beyond what the slowest SUB has received.
    broadcast_window: int = 2000
    profile_subscribers: int = 100
    #: The largest idle row, zchat alone: as many of these clients as the hard open-file limit
    #: lets one broker hold (one descriptor each: idle clients have no SUB); 0 for none.
    idle_most: int = 0

    def pair_window(self, pairs: int) -> int:
        return max(4, self.private_window // pairs)


FULL = Plan(
    duration=4.0, pairs=(1, 10, 100), subscribers=(10, 100, 500), latency_pairs=10, latency_subscribers=10,
    fixed_rates=(1000.0, 10000.0), max_fraction=0.5, idle_clients=(1000, 5000),
    idle_heartbeat=4.0, idle_timeout=6.0, idle_window=6.0, idle_most=50_000,
)  # fmt: skip
QUICK = Plan(
    duration=0.5, pairs=(1, 4), subscribers=(4, 16), latency_pairs=4, latency_subscribers=4,
    fixed_rates=(1000.0, 2000.0), max_fraction=0.5, idle_clients=(50, 200),
    idle_heartbeat=0.25, idle_timeout=1.5, idle_window=0.5,
    private_procs=2, subscriber_procs=2, idle_procs=2, profile_subscribers=16, idle_most=300,
)  # fmt: skip


class Progress:
    """Progress lines on stderr; `quiet` waits for the machine to calm down before a measurement."""

    def __init__(self, quiet_pct: float, quiet_wait: float, repeat: int = 1) -> None:
        self.began = time.monotonic()
        self.repeat = max(1, repeat)
        self.quiet_pct = quiet_pct
        self.quiet_wait = quiet_wait

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {text}", file=sys.stderr, flush=True)

    def measure(self, fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run one workload (`repeat` times; see repeat.py for which run is kept)."""
        rows = []
        for _ in range(self.repeat):
            background = wait_quiet(self.quiet_pct, self.quiet_wait)
            if background > self.quiet_pct and self.quiet_wait > 0:
                self(f"the machine is busy with other work ({background} % CPU); measuring anyway")
            row = fn(*args, **kwargs)
            row["background_cpu_pct"] = background
            rows.append(row)
        return choose(rows)


def _brief(row: dict[str, Any]) -> str:
    rate = row.get("deliveries_per_s") or row.get("msgs_per_s")
    lat = row.get("latency")
    p99 = f", p99 {lat['p99_us'] / 1000:.2f} ms" if lat else ""
    return f"{rate:,}/s{p99}, lost {row['lost']}, dup {row['duplicated']}"


def throughput(plan: Plan, log_dir: Path, say: Progress) -> tuple[list[Any], list[Any]]:
    private, broadcast = [], []
    for pairs in plan.pairs:
        for kind in KINDS:
            row = say.measure(
                run_private,
                kind,
                pairs,
                duration=plan.duration,
                procs=plan.private_procs,
                window=plan.pair_window(pairs),
                log_dir=log_dir,
            )
            say(f"private {kind} {pairs} pairs: {_brief(row)}")
            private.append(row)
    for subs in plan.subscribers:
        for kind in KINDS:
            row = say.measure(
                run_broadcast,
                kind,
                subs,
                duration=plan.duration,
                procs=plan.subscriber_procs,
                window=plan.broadcast_window,
                log_dir=log_dir,
            )
            say(f"broadcast {kind} {subs} subscribers: {_brief(row)}")
            broadcast.append(row)
    return private, broadcast


def _zchat_max(rows: list[dict[str, Any]], key: str, count: int) -> float:
    for row in rows:
        if row["target"] == "zchat" and row[key] == count:
            return float(row["msgs_per_s"])
    raise LookupError(f"no zchat throughput row with {key}={count}")


def latency(
    plan: Plan, private: list[Any], broadcast: list[Any], log_dir: Path, say: Progress
) -> list[dict[str, Any]]:
    rows = []
    for kind, maximum in (
        ("private", _zchat_max(private, "pairs", plan.latency_pairs)),
        ("broadcast", _zchat_max(broadcast, "subscribers", plan.latency_subscribers)),
    ):
        loads = [(rate, f"{rate / 1000:g}k/s") for rate in plan.fixed_rates]
        loads.append((round(plan.max_fraction * maximum), f"{plan.max_fraction:.0%} of max"))
        for rate, label in sorted(loads):
            for target in KINDS:
                if kind == "private":
                    row = say.measure(
                        run_private,
                        target,
                        plan.latency_pairs,
                        duration=plan.duration,
                        procs=plan.private_procs,
                        window=plan.pair_window(plan.latency_pairs),
                        rate=rate,
                        latency=True,
                        log_dir=log_dir,
                    )
                else:
                    row = say.measure(
                        run_broadcast,
                        target,
                        plan.latency_subscribers,
                        duration=plan.duration,
                        procs=plan.subscriber_procs,
                        window=plan.broadcast_window,
                        rate=rate,
                        latency=True,
                        log_dir=log_dir,
                    )
                row.update(kind=kind, load=label)
                say(f"latency {kind} {target} at {rate:,.0f}/s ({label}): {_brief(row)}")
                rows.append(row)
    return rows


def idle(plan: Plan, log_dir: Path, say: Progress) -> list[dict[str, Any]]:
    rows = []
    for clients in plan.idle_clients:
        for kind in KINDS:
            row = say.measure(
                run_idle,
                kind,
                clients,
                procs=plan.idle_procs,
                heartbeat=plan.idle_heartbeat,
                timeout=plan.idle_timeout,
                window=plan.idle_window,
                log_dir=log_dir,
            )
            say(
                f"idle {kind} {clients} clients: registered in {row['register_s']} s, "
                f"server CPU {row['server_cpu_pct']} %, RSS {row['rss_mib']} MiB, lost {row['lost']}, "
                f"dropped {row['dropped']}"
            )
            rows.append(row)
    clients = most_idle(plan.idle_most) if plan.idle_most else 0
    if clients <= 0 and plan.idle_most:
        say(f"idle: no room for the largest row under a hard open-file limit of "
            f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,}")  # fmt: skip
    if clients > 0:
        if clients < plan.idle_most:
            say(f"idle: {clients:,} clients, not {plan.idle_most:,}: the hard open-file limit is "
                f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,}, one descriptor a client")  # fmt: skip
        row = say.measure(
            run_idle,
            "zchat",
            clients,
            procs=max(plan.idle_procs, -(-clients // CLIENTS_PER_LOAD)),
            heartbeat=plan.idle_heartbeat,
            timeout=plan.idle_timeout,
            window=plan.idle_window,
            log_dir=log_dir,
            # More than its default, 10,000; an I/O thread per 2,000 keeps libzmq's timers cheap.
            server_args=(
                "--max-clients",
                str(clients),
                "--io-threads",
                str(max(1, clients // IDLE_PER_IO_THREAD)),
            ),
        )
        row["clients_asked"] = plan.idle_most
        say(f"idle zchat {clients} clients: registered in {row['register_s']} s, server CPU {row['server_cpu_pct']} %, "
            f"RSS {row['rss_mib']} MiB, dropped {row['dropped']}")  # fmt: skip
        rows.append(row)
    return rows


#: Descriptors the broker keeps besides its clients' (its store, ZAP pipes, the monitor...).
SPARE_FILES = 1024
#: Clients an I/O thread of the broker heartbeats, in the largest row (docs/OPERATING.md).
IDLE_PER_IO_THREAD = 2000
#: Idle clients a load process holds at most (two descriptors each there: TCP and a mailbox).
CLIENTS_PER_LOAD = 4000


def most_idle(asked: int) -> int:
    """As many of `asked` idle clients, in thousands, as one broker may hold under the hard
    open-file limit (a container may not be allowed to raise it)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return asked
    return min(asked, (hard - SPARE_FILES) // 1000 * 1000)


def profile(plan: Plan, log_dir: Path, say: Progress) -> dict[str, Any]:
    """The broker under py-spy: not part of the figures (sampling slows it a little)."""
    out = {}
    row = say.measure(
        run_private,
        "zchat",
        plan.latency_pairs,
        duration=plan.duration,
        procs=plan.private_procs,
        window=plan.pair_window(plan.latency_pairs),
        log_dir=log_dir,
        profile=log_dir / "profile-private.txt",
    )
    say(f"profiled private zchat {plan.latency_pairs} pairs: {_brief(row)}")
    out["private"] = row
    row = say.measure(
        run_broadcast,
        "zchat",
        plan.profile_subscribers,
        duration=plan.duration,
        procs=plan.subscriber_procs,
        window=plan.broadcast_window,
        log_dir=log_dir,
        profile=log_dir / "profile-broadcast.txt",
    )
    say(f"profiled broadcast zchat {plan.profile_subscribers} subscribers: {_brief(row)}")
    out["broadcast"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds), for the smoke test")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"), help="JSON results file")
    parser.add_argument("--docs", type=Path, help="also write this Markdown page (docs/BENCHMARKS.md)")
    parser.add_argument("--plot", type=Path, help="also plot latency against offered load to this PNG")
    parser.add_argument("--profile", action="store_true", help="also sample the broker with py-spy")
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=30.0,
        metavar="PCT",
        help="before each measurement, wait for other processes to use less CPU than this",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="S",
        help="longest such wait (default 8 s, quick mode 0)",
    )
    parser.add_argument(
        "--broker-ref",
        metavar="REF",
        help="run the broker from a snapshot of this git commit (e.g. HEAD), not from the work tree",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each workload N times: report the best throughput, the median latency and idle CPU",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["throughput", "latency", "idle"],
        help="leave a part out (latency needs throughput)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 8.0)
    say = Progress(args.quiet_below, quiet_wait, args.repeat)
    raise_fd_limit(4 * max(*plan.idle_clients, plan.idle_most) + 4096)
    results: dict[str, Any] = {
        "meta": describe(quick=args.quick),
        "plan": {**asdict(plan), "repeat": args.repeat},
    }
    sha = ""
    with tempfile.TemporaryDirectory(prefix="zchat-bench-") as tmp:
        log_dir = Path(tmp)
        if args.broker_ref:
            sha = snapshot(args.broker_ref, log_dir / "broker-snapshot")
            os.environ[SNAPSHOT_ENV] = str(log_dir / "broker-snapshot")
            results["meta"]["zchat_commit"] = sha
            results["meta"]["broker_source"] = f"snapshot of {args.broker_ref}"
            say(f"the broker runs from a snapshot of {args.broker_ref} ({sha})")
        private: list[Any] = []
        broadcast: list[Any] = []
        if "throughput" not in args.skip:
            private, broadcast = throughput(plan, log_dir, say)
        results["private_throughput"] = private
        results["broadcast_throughput"] = broadcast
        skip_latency = "latency" in args.skip or "throughput" in args.skip
        results["latency"] = [] if skip_latency else latency(plan, private, broadcast, log_dir, say)
        results["idle_clients"] = [] if "idle" in args.skip else idle(plan, log_dir, say)
        results["profile"] = profile(plan, log_dir, say) if args.profile else None
    results["pyzmq_calls"] = pyzmq_calls.measure(
        count=2000 if args.quick else 20000, rounds=1 if args.quick else 3
    )
    results["meta"]["duration_s"] = round(time.monotonic() - say.began, 1)
    results["meta"]["zchat_commit_end"] = sha if args.broker_ref else source_state()
    if results["meta"]["zchat_commit_end"] != results["meta"]["zchat_commit"]:
        say("warning: the broker's source changed during the run; the figures mix two versions")
    add_ratios(results)
    results["targets"] = evaluate(results)
    results["loss"] = loss_summary(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    say(f"results in {args.out}")
    if args.plot:
        report.plot_latency(results, args.plot)
    if args.docs:
        args.docs.write_text(report.document(results, args.plot, args.docs.parent))
        say(f"wrote {args.docs}")
    print(report.markdown(results))
    loss = results["loss"]
    return 0 if loss["lost"] == 0 and loss["duplicated"] == 0 and loss["unanswered"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
