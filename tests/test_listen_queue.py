"""A crowd of connections at once (everyone back after a restart) is queued by the kernel
until the busy broker or gateway accepts it, not dropped: a dropped handshake is tried
again by the client's kernel only after a second, then two more (docs/BENCHMARKS.md)."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from pathlib import Path

from tests.support import start_broker
from tests.web_support import start_gateway

#: More than libzmq's and asyncio's default backlog (100), far less than ours.
CROWD = 300
#: Long enough for a dropped handshake's retries (1 s, then 3 s) to come and be dropped again.
DEADLINE = 8.0


def connected_while_stopped(pid: int, port: int) -> int:
    """Stop the process, open CROWD connections to its port, and count those the kernel
    completed (each queued for the process to accept) before DEADLINE; then let it go on."""
    selector = selectors.DefaultSelector()
    with contextlib.ExitStack() as stack:
        stack.callback(selector.close)
        os.kill(pid, signal.SIGSTOP)
        stack.callback(os.kill, pid, signal.SIGCONT)
        for _ in range(CROWD):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            stack.callback(sock.close)
            sock.connect_ex(("127.0.0.1", port))  # EINPROGRESS: done when writable
            selector.register(sock, selectors.EVENT_WRITE)
        done = 0
        deadline = time.monotonic() + DEADLINE
        while done < CROWD and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=deadline - time.monotonic()):
                selector.unregister(key.fileobj)
                assert isinstance(key.fileobj, socket.socket)
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done += 1
        return done


def test_the_broker_queues_a_crowd_of_connections_while_busy(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "broker")
    try:
        pid = broker.process.pid
        assert connected_while_stopped(pid, broker.port) == CROWD  # the ROUTER: commands
        assert connected_while_stopped(pid, broker.pub_port) == CROWD  # the PUB: broadcasts
    finally:
        broker.stop()


def test_the_gateway_queues_a_crowd_of_connections_while_busy(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "broker")
    try:
        gateway = start_gateway(tmp_path / "web", broker)
        try:
            assert connected_while_stopped(gateway.process.pid, int(gateway.url.rsplit(":", 1)[1])) == CROWD
        finally:
            gateway.stop()
    finally:
        broker.stop()
