"""The store benchmark keeps working: a tiny run, every message accounted for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def quick_run(module: str, tmp_path: Path, timeout: float) -> dict[str, Any]:
    """`python -m benchmarks.MODULE --quick`; its JSON result."""
    out = tmp_path / f"{module}.json"
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.mark.timeout(180)
def test_quick_store_benchmark_loses_nothing_and_replays_the_history(tmp_path: Path) -> None:
    result = quick_run("store", tmp_path, timeout=150)
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["private_memory_msgs_per_s"] > 0 and result["private_sqlite_msgs_per_s"] > 0
    assert result["history_replay"]["messages"] == 1000


@pytest.mark.timeout(180)
def test_quick_curve_benchmark_loses_nothing(tmp_path: Path) -> None:
    result = quick_run("curve", tmp_path, timeout=150)
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["private_curve_msgs_per_s"] > 0


@pytest.mark.timeout(120)
def test_quick_flood_benchmark_measures_quiet_and_both_floods(tmp_path: Path) -> None:
    result = quick_run("flood", tmp_path, timeout=100)
    assert result["quiet"]["count"] > 10
    for kind in ("stubborn", "reconnecting"):
        assert result[kind]["count"] > 10
        assert result[kind]["flooder"]["refused"] > 0  # flood control answered the flooder
    assert result["reconnecting"]["flooder"]["sessions"] > 1  # thrown out, it came back
