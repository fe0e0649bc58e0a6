"""The benchmark harness (benchmarks/): its quick mode end to end, and its histogram."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.histogram import LogHistogram, bucket_high, bucket_of
from benchmarks.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = (
    "meta", "plan", "private_throughput", "broadcast_throughput", "latency", "idle_clients",
    "targets", "loss", "pyzmq_calls",
)  # fmt: skip
MEASURED = ("private_throughput", "broadcast_throughput", "latency", "idle_clients")


def test_histogram_buckets_cover_every_value_once() -> None:
    for value in [*range(0, 5000), *range(5000, 10**7, 997), 2**40 + 12345]:
        index = bucket_of(value)
        assert bucket_high(index) >= value
        assert index == 0 or bucket_high(index - 1) < value


def test_histogram_percentiles_within_one_percent() -> None:
    rng = random.Random(7)
    values = sorted(int(rng.expovariate(1 / 50_000)) + 1000 for _ in range(20_000))
    hist = LogHistogram()
    for v in values:
        hist.record(v)
    merged = LogHistogram.from_dict(json.loads(json.dumps(hist.to_dict())))
    merged.merge(hist)
    assert merged.count == 2 * len(values)
    for p in (50, 99, 99.9):
        exact = values[int(p / 100 * len(values)) - 1]
        assert exact <= merged.percentile(p) <= exact * 1.01


def test_tracker_counts_duplicates_whatever_the_order() -> None:
    tracker = Tracker()
    for seq in [5, 0, 3000, 5, 1, 0]:
        tracker.add(seq)
    assert (tracker.unique, tracker.duplicates) == (4, 2)


@pytest.mark.timeout(150)
def test_quick_benchmark_runs_every_workload_without_loss(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results: dict[str, Any] = json.loads(out.read_text())
    assert set(SECTIONS) <= set(results)
    for section in MEASURED:
        rows = results[section]
        assert rows, f"{section} is empty"
        for row in rows:
            assert row["lost"] == 0, (section, row)
            assert row["duplicated"] == 0, (section, row)
            assert not row.get("unanswered"), (section, row)
    for section in ("private_throughput", "broadcast_throughput", "latency"):
        assert {r["target"] for r in results[section]} == {"zchat", "ceiling"}
        assert all(r.get("ratio_to_ceiling") for r in results[section] if r["target"] == "zchat")
    assert {r["kind"] for r in results["latency"]} == {"private", "broadcast"}
    assert all(r["latency"]["count"] > 0 for r in results["latency"])
    assert results["loss"]["lost"] == results["loss"]["duplicated"] == 0
    (most,) = [r for r in results["idle_clients"] if r.get("clients_asked")]  # the largest row, zchat alone
    assert (most["target"], most["clients"], most["clients_asked"], most["dropped"]) == ("zchat", 300, 300, 0)
    checks = {t["check"]: t for t in results["targets"]}
    assert checks["300 idle clients: dropped"]["met"] and "300 idle clients: broker CPU" in checks
    assert "## Private messages" in proc.stdout and "## Targets" in proc.stdout
