"""The store benchmark keeps working: a tiny run, every message accounted for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_quick_store_benchmark_loses_nothing_and_replays_the_history(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.store", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=150)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["private_memory_msgs_per_s"] > 0 and result["private_sqlite_msgs_per_s"] > 0
    assert result["history_replay"]["messages"] == 1000


@pytest.mark.timeout(180)
def test_quick_curve_benchmark_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "curve.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.curve", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=150)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["private_curve_msgs_per_s"] > 0


@pytest.mark.timeout(120)
def test_quick_flood_benchmark_measures_quiet_and_both_floods(tmp_path: Path) -> None:
    out = tmp_path / "flood.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.flood", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=100)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quiet"]["count"] > 10
    for kind in ("stubborn", "reconnecting"):
        assert result[kind]["count"] > 10
        assert result[kind]["flooder"]["refused"] > 0  # flood control answered the flooder
    assert result["reconnecting"]["flooder"]["sessions"] > 1  # thrown out, it came back
