"""CPU time and memory of a process, from /proc (Linux)."""

from __future__ import annotations

import os
import resource
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User plus system CPU time so far, in seconds: of every thread of `pid`, or of thread `tid`."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of `pid`."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_busy_seconds() -> float:
    """CPU time all cores of the machine spent busy (not idle, not waiting for I/O)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK  # guest time is already in user time


class CpuMeter:
    """CPU use between `start` and `stop`, in % of one core.

    `percent[i]` is for `pids[i]` (all its threads); `main_thread_pct` is the
    main thread of `pids[0]` alone (the server's Python thread, where the
    broker's own code runs; the rest is libzmq's I/O thread); `machine_pct`
    is every process of the machine, ours or not (at most 100 x cores).
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.began = 0.0
        self.before: list[float] = []
        self.percent: list[float] = []
        self.main_thread_pct = 0.0
        self.machine_pct = 0.0
        self.wall = 0.0

    def _sample(self) -> list[float]:
        main = self.pids[0] if self.pids else 0
        return [
            *(_cpu_or_zero(pid) for pid in self.pids),
            _cpu_or_zero(main, main),
            machine_busy_seconds(),
        ]

    def start(self) -> None:
        self.began = time.monotonic()
        self.before = self._sample()

    def stop(self) -> list[float]:
        after = self._sample()
        self.wall = time.monotonic() - self.began
        used = [
            round(100 * (a - b) / self.wall, 1) if self.wall > 0 else 0.0
            for a, b in zip(after, self.before, strict=True)
        ]
        self.percent = used[:-2]
        self.main_thread_pct, self.machine_pct = used[-2], used[-1]
        return self.percent

    def figures(self) -> dict[str, float]:
        """The figures every result carries."""
        return {
            "server_cpu_pct": self.percent[0],
            "server_main_thread_pct": self.main_thread_pct,
            "load_cpu_pct": round(sum(self.percent[1:]), 1),
            "machine_cpu_pct": self.machine_pct,
        }


def _cpu_or_zero(pid: int, tid: int | None = None) -> float:
    try:
        return cpu_seconds(pid, tid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards `wanted` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def wait_quiet(threshold_pct: float, max_wait: float, sample: float = 0.25) -> float:
    """Wait until the machine is nearly idle (other people's work), at most `max_wait` seconds.

    Returns the busy CPU % of the machine (all cores, 100 = one core) in the
    last sample. Call it while none of our own processes run.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before, began = machine_busy_seconds(), time.monotonic()
        time.sleep(sample)
        busy = round(100 * (machine_busy_seconds() - before) / (time.monotonic() - began), 1)
        if busy <= threshold_pct or time.monotonic() >= deadline:
            return busy
