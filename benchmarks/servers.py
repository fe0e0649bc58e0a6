"""Start and stop the servers under test: `zchat broker` or the ceiling forwarder.

The broker runs from the work tree (the installed `zchat` command), or, when
the environment variable ZCHAT_BENCH_BROKER_DIR names a snapshot made by
`snapshot()`, from that snapshot: a benchmark then measures one fixed commit
even while someone edits broker/ in the work tree.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT_ENV = "ZCHAT_BENCH_BROKER_DIR"
#: The packages a broker snapshot holds, as zchat.<name>.
PACKAGES = ("broker", "common", "client", "cluster")
ZCHAT = str(Path(sys.executable).parent / "zchat")
LISTENING = re.compile(r"commands on (\S+), broadcasts on (\S+);")
KINDS = ("ceiling", "zchat")


@dataclass
class Server:
    """A server process of our own on 127.0.0.1, on ports it chose."""

    kind: str
    process: subprocess.Popen[bytes]
    log_path: Path
    endpoint: str
    pub_endpoint: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check(self) -> None:
        """Raise if the server has exited (it should run until we stop it)."""
        if self.process.poll() is not None:
            tail = "\n".join(self.log().splitlines()[-20:])
            raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{tail}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def start_server(kind: str, log_dir: Path, *args: str, timeout: float = 20.0) -> Server:
    """Start the zchat broker (`kind` "zchat") or the forwarder ("ceiling")."""
    if kind == "zchat":
        command = [*_zchat_command(), "broker", "--host", "127.0.0.1", "--port", "0", "--pub-port", "0",
                   "--log-level", "info", *_defaults(args), *args]  # fmt: skip
    elif kind == "ceiling":
        command = [sys.executable, "-m", "benchmarks.ceiling", "--host", "127.0.0.1", *args]
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{kind}-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return Server(kind, process, log_path, match.group(1), match.group(2))
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited with {process.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(5)
            raise TimeoutError(f"{kind} did not start listening within {timeout}s")
        time.sleep(0.02)


#: Broker options the benchmark sets unless told otherwise: no store on disk, no
#: flood control (the load clients flood on purpose). Each is passed only to
#: brokers that have it, so that --broker-ref can measure older commits.
BROKER_DEFAULTS = (("--store", ":memory:"), ("--rate", "0"))


def _defaults(args: tuple[str, ...]) -> list[str]:
    usage = _broker_help(tuple(_zchat_command()))
    chosen: list[str] = []
    for option, value in BROKER_DEFAULTS:
        if option not in args and re.search(rf"{re.escape(option)}\b", usage):
            chosen += [option, value]
    return chosen


@functools.lru_cache(maxsize=8)
def _broker_help(command: tuple[str, ...]) -> str:
    out = subprocess.run([*command, "broker", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    return out.stdout


def _zchat_command() -> list[str]:
    snapshot_dir = os.environ.get(SNAPSHOT_ENV)
    if not snapshot_dir:
        return [ZCHAT]
    # zchat is a namespace package: the snapshot, first on sys.path, provides zchat.broker etc.
    code = f"import sys; sys.path.insert(0, {snapshot_dir!r}); from zchat.common.cli import main; main()"
    return [sys.executable, "-c", code]


def snapshot(ref: str, dest: Path) -> str:
    """Extract broker/, common/ and client/ of git `ref` as dest/zchat/<package>; returns the commit."""
    sha = subprocess.run(["git", "rev-parse", "--short", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
    listed = subprocess.run(["git", "ls-tree", "--name-only", sha], cwd=ROOT, capture_output=True, text=True,
                            timeout=30, check=True).stdout.split()  # fmt: skip
    present = [p for p in PACKAGES if p in listed]
    archive = subprocess.run(["git", "archive", "--format=tar", sha, *present], cwd=ROOT, capture_output=True,
                             timeout=60, check=True).stdout  # fmt: skip
    target = dest / "zchat"
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, timeout=60, check=True)
    return sha
