"""The web benchmark keeps working: 20 sessions, and latency through the gateway and plainly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("websockets", reason="the web benchmark needs websockets: pip install 'zchat[web]'")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_quick_web_benchmark_signs_everyone_in_and_measures_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "web.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.web", "--quick", "--out", str(out),
                           "--logs", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=130)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    sessions = result["sessions"]
    assert sessions["sessions"] == sessions["sign_in"]["count"] == 20 and sessions["sign_in_failed"] == 0
    latency = result["latency"]
    assert latency["plain"]["count"] == latency["web"]["count"] == 200  # none lost on either path
    assert latency["crowd"] == "own-process"  # the signed-in sessions were held by another process
    assert result["zmq_asyncio_sockets_only"]["rss_per_session_kib"] > 0
    assert "## Latency" in proc.stdout
