"""Sample the broker with py-spy while a workload runs; summarise where it spends its time.

py-spy (`pip install py-spy`) attaches to the running broker by pid and
samples its Python stacks; time spent inside libzmq shows up under the
Python function that called it (send_multipart, recv_multipart, poll).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 250
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """A `py-spy record` of one process for a fixed time, in py-spy's raw (collapsed) format."""

    def __init__(self, pid: int, out: Path, seconds: float) -> None:
        exe = py_spy()
        if exe is None:
            raise FileNotFoundError("py-spy is not installed (pip install -r benchmarks/requirements.txt)")
        self.out = out
        self.seconds = max(1, round(seconds))  # py-spy takes whole seconds
        out.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
             "--output", str(out), "--duration", str(self.seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate(timeout=5)
            raise
        if self.process.returncode != 0 or not self.out.exists():
            raise RuntimeError(f"py-spy failed ({self.process.returncode}): {err.decode(errors='replace')}")
        return summarize(self.out.read_text(), RATE, self.seconds)


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    return f"{match['func']} ({match['file']})"


def summarize(raw: str, rate: int, seconds: float, top: int = 15) -> dict[str, Any]:
    """Top functions by own time and by inclusive time, in % of the samples taken."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    common: list[str] | None = None  # the frames every sample shares: entry point to main loop
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        if common is None:
            common = list(frames)
        else:
            shared = 0
            while shared < min(len(common), len(frames)) and common[shared] == frames[shared]:
                shared += 1
            del common[shared:]
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        # Frames in every sample (the entry point down to the main loop) say nothing.
        ranked = [(name, n) for name, n in counter.most_common() if n < samples]
        return [{"function": name, "pct": round(100 * n / samples, 1)} for name, n in ranked[:top]]

    return {
        "samples": samples,
        "rate_hz": rate,
        #: Share of the wall time the main thread was seen busy (py-spy skips idle samples).
        "busy_pct": round(100 * samples / (rate * seconds), 1) if seconds else None,
        "main_loop": common or [],
        "own": table(own),
        "inclusive": table(inclusive),
    }
