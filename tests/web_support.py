"""Test helpers for the web gateway: a `zchat web` process of our own, and a WebSocket user."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import ZCHAT, Broker, wait_for

SERVING = re.compile(r"serving the page on (http://\S+?)/ ")


@dataclass
class WebGateway:
    """A `zchat web` process on 127.0.0.1 and a free port."""

    process: subprocess.Popen[bytes]
    log_path: Path
    url: str  # http://127.0.0.1:PORT

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_gateway(log_dir: Path, broker: Broker, *args: str, port: int = 0, timeout: float = 10.0,
                  env: dict[str, str] | None = None, open_files: tuple[int, int] | None = None,
                  ) -> WebGateway:  # fmt: skip
    """`open_files`: its soft and hard limits on open files (a login shell's, say)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"web-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [ZCHAT, "web", "--listen", f"127.0.0.1:{port}", "--broker", broker.endpoint, "--log-level", "debug",
             *args],
            stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=None if open_files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, open_files),
        )  # fmt: skip

    def serving() -> re.Match[str] | None:
        if process.poll() is not None:
            raise AssertionError(f"zchat web exited with {process.returncode}:\n{log_path.read_text()}")
        return SERVING.search(log_path.read_text(errors="replace"))

    return WebGateway(process, log_path, wait_for(serving, timeout, what="the gateway to serve").group(1))


@dataclass
class WebUser:
    """One page's side of the WebSocket, driven from a test: send commands, wait for events."""

    gateway: WebGateway
    origin: str | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)
    cid: int = 0
    session: str = ""
    last_eid: int = 0

    def __post_init__(self) -> None:
        self.open()

    def open(self) -> None:
        from websockets.sync.client import connect
        from websockets.typing import Origin

        origin = self.origin if self.origin is not None else self.gateway.url
        self.ws = connect(self.gateway.ws_url, origin=Origin(origin), open_timeout=10).__enter__()

    def send(self, data: dict[str, Any]) -> None:
        self.ws.send(json.dumps(data))

    def command(self, kind: str, **fields: Any) -> int:
        self.cid += 1
        self.send({"type": kind, "cid": self.cid, **fields})
        return self.cid

    def line(self, text: str, where: str = "*") -> int:
        return self.command("line", text=text, where=where)

    def hello(self, name: str, **fields: Any) -> dict[str, Any]:
        self.seen.clear()  # an earlier refusal is not the answer to this one
        self.send({"type": "hello", "name": name, **fields})
        reply = self.expect(lambda e: e["type"] in ("welcome", "refused"), what="welcome or refused")
        if reply["type"] == "welcome":
            self.session = reply["session"]
        return reply

    def expect(self, match: Any, timeout: float = 10.0, what: str = "event") -> dict[str, Any]:
        for old in self.seen:
            if match(old):
                return old
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                break
            event: dict[str, Any] = json.loads(raw)
            self.seen.append(event)
            if "eid" in event:
                assert event["eid"] == self.last_eid + 1, f"eid {event['eid']} after {self.last_eid}"
                self.last_eid = event["eid"]
            if match(event):
                return event
        raise AssertionError(f"no {what} within {timeout}s; saw {self.seen}")

    def message(self, text: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.expect(
            lambda e: e["type"] == "message" and e["text"] == text, timeout, f"message {text!r}"
        )

    def close(self) -> None:
        self.ws.close()


class CuttableProxy:
    """A TCP forwarder on 127.0.0.1 whose connections the test can cut, as a network would:
    between a browser and the gateway, it drops the page's WebSocket and keeps it away."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target_port = target_port
        self.up = True
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                inbound.close()
                continue
            try:
                outbound = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                inbound.close()
                continue
            with self.lock:
                self.open += [inbound, outbound]
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(2)

    def cut(self) -> None:
        """Drop every connection through it and refuse new ones until restore()."""
        self.up = False
        with self.lock:
            for s in self.open:
                with contextlib.suppress(OSError):
                    s.shutdown(2)
                s.close()
            self.open.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
