"""The restart benchmark keeps working: one SIGKILL under load, 20 clients through one restart
(threaded `Client`s, and with --loop `LoopClient`s on an asyncio loop)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["thread", "loop"])
def test_quick_restart_benchmark_keeps_every_acknowledged_message_and_brings_every_client_back(
    tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "restart.json"
    loop = ["--loop"] if mode == "loop" else []
    proc = subprocess.run([sys.executable, "-m", "benchmarks.restart", "--quick", *loop, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=75)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    (run,) = result["durability"]
    assert run["acked_broadcasts"] > 0 and run["acked_private"] > 0
    assert run["found"] == run["acked"] and run["lost"] == 0
    assert run["unexplained"] == run["duplicated"] == run["damaged"] == run["misplaced"] == 0
    reconnect = result["reconnect"]
    assert reconnect["mode"] == mode
    assert reconnect["clients"] == reconnect["setup_online"] == 20
    (restart,) = reconnect["restarts"]
    assert restart["back"] == restart["online_at_kill"] == 20 and restart["not_back"] == 0
    assert restart["all_online_s"] is not None
    assert restart["p50_s"] <= restart["p99_s"] <= restart["all_online_s"]
    assert "## Durability" in proc.stdout and "## Reconnect" in proc.stdout
