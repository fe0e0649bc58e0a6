"""Test helpers: start real processes on loopback and wait with deadlines."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from zchat.common import keys
from zchat.common.keys import KeyPair

T = TypeVar("T")

ZCHAT = str(Path(sys.executable).parent / "zchat")
LISTENING = re.compile(r"commands on (\S+), broadcasts on (\S+);")
#: Another user's text that would retitle the window, clear the screen, fake a line or two,
#: send a CSI as C1 and reverse what follows; "tail-end" ends it, to wait for.
HOSTILE = (
    "\x1b]0;pwned\x07\x1b[2J\r[00:00:00] <root> fake\x08\n[00:00:00] <root> more\x9b2J\x7f\u202etail-end"
)
#: HOSTILE as a terminal must show it.
HOSTILE_SHOWN = "␛]0;pwned␇␛[2J␍[00:00:00] <root> fake␈␤[00:00:00] <root> more<U+009B>2J␡<U+202E>tail-end"


def wait_for(
    check: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Broker:
    """A `zchat broker` process of our own, on loopback and free ports."""

    process: subprocess.Popen[bytes]
    log_path: Path
    endpoint: str
    pub_endpoint: str

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    @property
    def pub_port(self) -> int:
        return int(self.pub_endpoint.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_curve_broker(tmp_path: Path, *args: str) -> tuple[Broker, KeyPair]:
    """A broker with CURVE on, and its key pair (made in tmp_path/broker-keys)."""
    server = keys.generate(tmp_path / "broker-keys")
    broker = start_broker(tmp_path, "--curve-secret", str(tmp_path / "broker-keys" / keys.SECRET_FILE), *args)
    return broker, server


def start_broker(
    log_dir: Path,
    *args: str,
    port: int = 0,
    pub_port: int = 0,
    timeout: float = 10.0,
    cwd: Path | None = None,
    open_files: tuple[int, int] | None = None,
) -> Broker:
    """Start `zchat broker` on 127.0.0.1; ports 0 let the broker pick free ones.

    `open_files`: its soft and hard limits on open files (a login shell's, say)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"broker-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [ZCHAT, "broker", "--host", "127.0.0.1", "--port", str(port),
             "--pub-port", str(pub_port), "--log-level", "debug",
             *([] if "--store" in args else ["--store", ":memory:"]),
             *([] if "--rate" in args else ["--rate", "0"]), *args],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=cwd,
            preexec_fn=None if open_files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_files),
        )  # fmt: skip

    def listening() -> re.Match[str] | None:
        if process.poll() is not None:
            raise AssertionError(f"broker exited with {process.returncode}:\n{log_path.read_text()}")
        return LISTENING.search(log_path.read_text(errors="replace"))

    match = wait_for(listening, timeout, what="the broker to listen")
    return Broker(process, log_path, match.group(1), match.group(2))


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Start children within as a terminal starts them, with Ctrl-C's SIGINT not ignored.

    A process started in the background by a shell without job control (`cmd &`, as CI
    runners and nohup do) ignores SIGINT, and so do its children: Python then leaves it
    ignored, and a test's SIGINT would do nothing. An ignored signal stays ignored across
    exec; a handler becomes the default. So SIGINT gets Python's handler while they start.
    """
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@contextlib.contextmanager
def client_process(name: str, endpoint: str) -> Iterator[subprocess.Popen[bytes]]:
    """A library client signed in as `name` in a process of its own (to kill or stop by its PID),
    idle once online; killed when the block ends."""
    script = (
        "import sys, time; from zchat.client.session import Client; "
        "Client(sys.argv[1], sys.argv[2]).connect(); print('up', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", script, name, endpoint], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        yield child
    finally:
        child.kill()
        child.wait(5)
