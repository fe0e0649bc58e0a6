"""What the benchmark ran on: CPU, Python, pyzmq and libzmq, zchat's commit."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Any

import zmq

from benchmarks.servers import ROOT


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_state() -> str:
    """The last commit of the broker's code (broker/, common/), "+dirty" if the files differ from it."""
    head = _git("log", "-1", "--format=%h", "--", "broker", "common")
    dirty = _git("status", "--porcelain", "--", "broker", "common")
    return head + ("+dirty" if dirty and dirty != "unknown" else "")


def describe(quick: bool) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": quick,
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "zchat_commit": source_state(),
        "broker_source": "work tree",
        "repo_commit": _git("rev-parse", "--short", "HEAD"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
