"""The metrics benchmark keeps working: one quick round with and without --metrics, scraped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_quick_metrics_benchmark_measures_both_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.metrics", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=130)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["median_without"] > 0 and result["median_with"] > 0
    assert result["lost"] == 0 and result["duplicated"] == 0
