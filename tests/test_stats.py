"""`zchat stats`: a broker's figures in a real terminal (tmux), and as plain lines in a pipe."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.support import ZCHAT, Broker, start_broker
from tests.test_metrics import Dealer, metrics_url
from tests.test_tui import Terminal
from zchat.common import protocol as p

PRIVATE = re.compile(r"private ([\d,.]+)/s \(([\d,]+)\)")


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, str]]:
    tmp = tmp_path_factory.mktemp("stats")
    broker = start_broker(tmp, "--metrics", "127.0.0.1:0")
    yield broker, metrics_url(broker)
    broker.stop()


class Traffic:
    """alice sends bob private messages, one at a time, until stopped."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.alice = Dealer(self.context, broker.endpoint, f"{prefix}_alice")
        self.bob = Dealer(self.context, broker.endpoint, f"{prefix}_bob")
        self.stopping = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            msg_id = f"t{self.sent}".encode()
            self.alice.socket.send_multipart(p.encode_send(msg_id, self.bob.name, "traffic"))
            assert isinstance(self.alice.answer(msg_id), p.Ack)
            self.alice.seen.clear()
            self.sent += 1
            self.stopping.wait(0.01)  # about 100 a second: enough to move, not to load the machine

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.alice.close()
        self.bob.close()
        self.context.destroy(linger=0)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_stats_in_a_terminal_shows_moving_figures_in_place(
    watched: tuple[Broker, str], tmp_path: Path
) -> None:
    broker, url = watched
    terminal = Terminal(tmp_path)
    traffic = Traffic(broker, "tty")
    try:
        terminal.start(ZCHAT, "stats", "--metrics", url, "--watch", "--interval", "0.3")

        def private() -> tuple[float, int] | None:
            found = PRIVATE.search(terminal.screen())
            if found is None:
                return None
            rate, total = float(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))
            return (rate, total) if rate > 0 else None

        _, first = terminal.wait(private, "a private message rate on screen")

        def moved() -> tuple[float, int] | None:
            now = private()
            return now if now is not None and now[1] > first else None

        terminal.wait(moved, "the total to move")
        # Refreshed in place: one block on the screen, however many refreshes.
        assert terminal.screen().count("messages    private") == 1
        traffic.stop()

        def stopped() -> bool:
            found = PRIVATE.search(terminal.screen())
            return found is not None and float(found.group(1).replace(",", "")) == 0

        terminal.wait(stopped, "the rate to fall to 0 once the traffic stops")
        terminal.keys("C-c")
        assert terminal.wait_exit() == 0
    finally:
        traffic.stop()
        terminal.close()


def test_stats_in_a_pipe_prints_one_plain_line_per_refresh(watched: tuple[Broker, str]) -> None:
    broker, url = watched
    traffic = Traffic(broker, "pipe")
    stats = subprocess.Popen(
        [ZCHAT, "stats", "--metrics", url, "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert stats.stdout is not None
        lines = [stats.stdout.readline() for _ in range(3)]
    finally:
        stats.kill()
        stats.wait(10)
        traffic.stop()
    for line in lines:
        assert line.endswith("\n") and "\x1b" not in line
        pairs = dict(pair.split("=", 1) for pair in line.split())
        assert {"time", "online", "private/s", "refused/s"} <= pairs.keys()
        assert int(pairs["online"]) >= 2
    assert any(float(dict(pair.split("=", 1) for pair in line.split())["private/s"]) > 0 for line in lines)


def test_stats_names_an_endpoint_it_cannot_read() -> None:
    out = subprocess.run([ZCHAT, "stats", "--metrics", "127.0.0.1:1", "--interval", "0.1"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 1
    assert "http://127.0.0.1:1/metrics" in out.stderr and "Traceback" not in out.stderr


def test_stats_without_prometheus_client_names_the_extra(tmp_path: Path) -> None:
    # A module that fails to import stands in for the missing package.
    (tmp_path / "prometheus_client").mkdir()
    (tmp_path / "prometheus_client" / "__init__.py").write_text("raise ImportError('not installed')\n")
    out = subprocess.run([ZCHAT, "stats"], capture_output=True, text=True, timeout=30,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert out.returncode == 1 and "pip install 'zchat[metrics]'" in out.stderr
    broker = subprocess.run([ZCHAT, "broker", "--port", "0", "--pub-port", "0", "--store", ":memory:",
                             "--metrics", "127.0.0.1:0"], capture_output=True, text=True, timeout=30,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert broker.returncode == 1 and "pip install 'zchat[metrics]'" in broker.stderr
