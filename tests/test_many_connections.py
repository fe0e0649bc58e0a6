"""Many connections: the broker and the gateway raise their open-file limit as far as
they need (a login shell's 1,024 holds some 500 clients), and a crowd of connections at
once (everyone back after a restart) is queued by the kernel until the busy broker or
gateway accepts it, not dropped: a dropped handshake is tried again by the client's
kernel only after a second, then two more (docs/BENCHMARKS.md)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import selectors
import signal
import socket
import time
from pathlib import Path

import zmq

from tests.support import start_broker, wait_for
from tests.web_support import start_gateway
from zchat.common import protocol as p

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


def signed_in(endpoint: str, names: list[str], timeout: float = 20.0) -> list[str]:
    """Sign each name in on a DEALER of its own, all at once; the names WELCOMEd in time."""
    ctx = zmq.Context()
    socks = []
    try:
        for name in names:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.send_multipart(p.encode(p.Hello(b"h", name, "")))
            socks.append((name, sock))
        poller = zmq.Poller()
        for _, sock in socks:
            poller.register(sock, zmq.POLLIN)
        welcomed: list[str] = []
        deadline = time.monotonic() + timeout
        while len(welcomed) < len(names) and time.monotonic() < deadline:
            ready = dict(poller.poll(100))
            for name, sock in socks:
                if sock in ready:
                    poller.unregister(sock)
                    if isinstance(p.decode_event(sock.recv_multipart()), p.Welcome):
                        welcomed.append(name)
        return welcomed
    finally:
        for _, sock in socks:
            sock.close()
        ctx.term()


def test_a_broker_started_with_a_low_soft_file_limit_raises_it_for_its_clients(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    broker = start_broker(tmp_path, "--max-clients", "1000", open_files=(64, hard))  # 64: some 30 clients
    try:
        names = [f"user{i}" for i in range(150)]
        assert sorted(signed_in(broker.endpoint, names)) == sorted(names)
        assert "open files are limited" not in broker.log()
    finally:
        broker.stop()


def test_a_broker_whose_hard_file_limit_is_short_of_max_clients_says_so(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--max-clients", "1000", open_files=(512, 512))
    try:
        line = wait_for(
            lambda: re.search(r".*open files are limited.*", broker.log()), what="the warning"
        ).group(0)
        assert "limited to 512: about 128 clients, not the 1000 of --max-clients" in line
        assert "ulimit -Hn" in line
        assert len(signed_in(broker.endpoint, ["ann", "bob"])) == 2  # it serves what it can
    finally:
        broker.stop()


def soft_file_limit(pid: int) -> int:
    """The process's soft limit on open files, as the kernel has it."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


def test_a_gateway_raises_its_file_limit_for_its_pages_or_says_it_cannot(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "broker")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        gateway = start_gateway(tmp_path / "web", broker, "--max-sessions", "100", open_files=(64, hard))
        try:
            assert (
                soft_file_limit(gateway.process.pid) >= 100 * 11
            )  # a page's WebSocket, connections, sockets
            assert "open files are limited" not in gateway.log()
        finally:
            gateway.stop()
        gateway = start_gateway(tmp_path / "web", broker, open_files=(512, 512))  # 1,000 pages by default
        try:
            line = wait_for(
                lambda: re.search(r".*open files are limited.*", gateway.log()), what="the warning"
            )
            assert "limited to 512: about 23 pages, not the 1000 of --max-sessions" in line.group(0)
        finally:
            gateway.stop()
    finally:
        broker.stop()


def test_a_broker_spreads_its_connections_over_the_io_threads_it_is_given(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--io-threads", "4")
    try:
        names = [f"user{i}" for i in range(40)]
        assert sorted(signed_in(broker.endpoint, names)) == sorted(names)
        threads = [
            (task / "comm").read_text().strip() for task in Path(f"/proc/{broker.process.pid}/task").iterdir()
        ]
        assert sorted(t for t in threads if t.startswith("ZMQbg/IO")) == [f"ZMQbg/IO/{i}" for i in range(4)]
    finally:
        broker.stop()
