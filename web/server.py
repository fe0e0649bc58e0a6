"""The gateway's shell: HTTP for the page, WebSocket at /ws, on one asyncio loop (websockets).

Each WebSocket signs in (or resumes) one session of sessions.py and then carries its
commands in and its events out. Sends to a browser are awaited one by one with a deadline:
a browser that does not keep up is dropped (its session waits to be resumed), never
buffered for without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import signal
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from zchat.common.limits import shortfall
from zchat.common.protocol import valid_name
from zchat.web import schema
from zchat.web.invites import Invites
from zchat.web.sessions import FILES_PER_SESSION, ConnectError, Session, Sessions, Settings

log = logging.getLogger("zchat.web")

#: The page may load its own files only: no inline script or style, nothing from elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-cache"),
)
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
SEND_TIMEOUT = 10.0  # seconds a batch of events may take to reach the browser before it is dropped
HELLO_TIMEOUT = 60.0  # seconds a new WebSocket may take to sign in or resume
EXPIRE_EVERY = 1.0
#: Seconds between the young passes of web/heap.py: a pass walks what survived since the last
#: one, and holds the loop meanwhile (3-6 ms once a second at 1,000 msg/s; docs/WEB.md).
HEAP_EVERY = 0.2
MAX_FRAME = 256 * 1024  # a command: a message of the broker's largest and its JSON escapes
WRITE_LIMIT = 64 * 1024  # bytes buffered for one browser before a send waits
#: Connections queued until the loop accepts them: the pages back after a restart, at once
#: (asyncio's 100 dropped the rest, tried again a second later; as the broker's, server.py).
LISTEN_BACKLOG = 4096
# No permessage-deflate: chat events are small, and deflate costs CPU per message and a
# compressor's memory per connection (and mixes secrets with attacker text: CRIME/BREACH).
STOP_TIMEOUT = 15.0  # seconds for each step of stopping: sessions signing out, WebSockets closing


def static_files() -> dict[str, tuple[bytes, str]]:
    """URL path -> (body, content type), read once from the package's static folder."""
    folder = resources.files("zchat.web") / "static"
    files: dict[str, tuple[bytes, str]] = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in TYPES:
            files[f"/static/{item.name}"] = (item.read_bytes(), TYPES[suffix])
    files["/"] = files["/static/index.html"]
    return files


def default_origins(host: str, port: int) -> set[str]:
    """The page's own origins when reached where the gateway listens."""
    hosts = {host}
    if host in ("127.0.0.1", "localhost", "::1"):
        hosts |= {"127.0.0.1", "localhost", "[::1]"}
    return {f"http://{h}:{port}" for h in hosts}


@dataclass
class Gateway:
    settings: Settings
    invites: Invites | None = None  # with a CURVE broker: who may sign in as whom
    origins: set[str] = field(default_factory=set)  # filled from where it listens if empty
    files: dict[str, tuple[bytes, str]] = field(default_factory=static_files)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.settings)
        self.refused_origins = 0
        self.closing: set[asyncio.Task[None]] = set()  # old WebSockets of resumed sessions
        self.stopping = False
        #: Sign-ins under way: they count against max_sessions, as their sockets do.
        self.signing_in = 0

    # --- HTTP -------------------------------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """websockets' process_request: the page's files, and the Origin check of /ws."""
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            origin = request.headers.get("Origin")
            # Browsers always send Origin on a WebSocket; a program without one is no
            # visitor's browser tricked by another site, and could claim any origin anyway.
            if origin is not None and origin not in self.origins:
                self.refused_origins += 1
                log.warning("refused a WebSocket from origin %r", origin[:200])
                return self.respond(http.HTTPStatus.FORBIDDEN, b"origin not allowed\n", "text/plain")
            return None
        found = self.files.get(path)
        if found is None:
            return self.respond(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        return self.respond(http.HTTPStatus.OK, *found)

    @staticmethod
    def respond(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                           ("Connection", "close"), *SECURITY_HEADERS])  # fmt: skip
        return Response(status.value, status.phrase, headers, body)

    # --- WebSocket --------------------------------------------------------------------

    async def connection(self, ws: ServerConnection) -> None:
        """One WebSocket: sign in or resume, then commands in and events out."""
        try:
            session = await asyncio.wait_for(self.attach(ws), HELLO_TIMEOUT)
        except (TimeoutError, asyncio.TimeoutError, ConnectionClosed):
            return
        if session is None:
            return
        pump = asyncio.create_task(self.pump(ws, session))
        try:
            async for raw in ws:
                command = await self.parsed(ws, raw)
                if command is None:
                    continue
                if command.type == "quit":
                    await self.sessions.end(session, "quit")
                    await self.send(ws, {"type": "bye"})
                    break
                session.run(command)
        except ConnectionClosed:
            pass
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            if session.attached is ws:
                session.attached = None
                session.detached_at = time.monotonic()

    async def attach(self, ws: ServerConnection) -> Session | None:
        """Read hello or resume until one succeeds; None when the WebSocket closes first."""
        async for raw in ws:
            command = await self.parsed(ws, raw)
            if command is None:
                continue
            if command.type == "hello":
                session = await self.hello(ws, command)
            elif command.type == "resume":
                session = await self.resume(ws, command)
            else:
                await self.send(ws, {"type": "error", "code": schema.BAD_COMMAND, "text": "sign in first"})
                continue
            if session is not None:
                return session
        return None

    async def parsed(self, ws: ServerConnection, raw: str | bytes) -> schema.Command | None:
        """The browser's command, or None once it was told why it is not one."""
        try:
            return schema.parse(raw)
        except schema.BadCommand as e:
            await self.send(ws, {"type": "error", "code": schema.BAD_COMMAND, "text": str(e)})
            return None

    async def hello(self, ws: ServerConnection, command: schema.Command) -> Session | None:
        name = command.text("name")
        if not valid_name(name):
            await self.refuse(ws, 400, "a name is 1-32 letters, digits, '_', '-' or '.'")
            return None
        keys = None
        if self.invites is not None:
            keys = self.invites.check(name, command.text("invite"))
            if keys is None:
                await self.refuse(ws, schema.NOT_INVITED, f"{name} needs an invitation to sign in here")
                return None
        if self.stopping:
            await self.refuse(ws, schema.FULL, "the gateway is stopping: try again in a moment")
            return None
        if len(self.sessions) + self.signing_in >= self.settings.max_sessions:
            await self.refuse(ws, schema.FULL, "the gateway is full: try again later")
            return None
        self.signing_in += 1
        try:
            session = await self.sessions.sign_in(name, keys)
        except ConnectError as e:
            await self.refuse(ws, schema.SIGN_IN_FAILED, f"cannot sign in as {name}: {e}")
            return None
        finally:
            self.signing_in -= 1
        await self.take(ws, session, {"type": "welcome"})
        return session

    async def resume(self, ws: ServerConnection, command: schema.Command) -> Session | None:
        session = self.sessions.find(command.text("session"))
        if session is None:
            await self.send(ws, {"type": "reset", "text": "that session is over (or the gateway restarted)"})
            return None
        if session.since(command.number("last")) is None:
            await self.sessions.end(session, "its page fell too far behind")
            await self.send(ws, {"type": "reset", "text": "too much happened while you were away"})
            return None
        await self.take(ws, session, {"type": "resumed"}, last=command.number("last"))
        return session

    async def take(
        self, ws: ServerConnection, session: Session, reply: dict[str, Any], last: int = 0
    ) -> None:
        old = session.attached
        session.attached, session.detached_at = ws, None
        session.cursor = last
        if isinstance(old, ServerConnection):  # the same page again, on a new WebSocket
            closing = asyncio.create_task(old.close(4001, "resumed elsewhere"))
            self.closing.add(closing)
            closing.add_done_callback(self.closing.discard)
        client = session.client
        await self.send(ws, {**reply, "session": session.token, "name": session.name,
                             "last_cid": session.last_cid, "last_eid": session.last_eid,
                             "state": client.state.value if client else "closed",
                             "resume_window": self.settings.resume_window})  # fmt: skip

    async def refuse(self, ws: ServerConnection, code: int, text: str) -> None:
        await self.send(ws, {"type": "refused", "code": code, "text": text})

    async def pump(self, ws: ServerConnection, session: Session) -> None:
        """Send the session's events to this browser, in order, each batch within SEND_TIMEOUT."""
        loop = asyncio.get_running_loop()
        writer = functools.partial(self.write_now, ws, session)
        try:
            while True:
                session.changed.clear()
                pending = session.since(session.cursor)
                if pending is None:
                    await ws.close(4002, "fell behind")
                    return
                if not pending:
                    if session.attached is ws:  # not the pump of a page resumed elsewhere since
                        session.write_now = writer  # while it waits, the next events go at once
                    try:
                        await session.changed.wait()
                    finally:
                        if session.write_now is writer:
                            session.write_now = None
                    continue
                # A timer, not wait_for: on Python 3.11 and before wait_for runs the sends in a
                # task of its own, a task and a turn of the loop more for each batch, and at
                # 1,000 msg/s most batches are one message (docs/WEB.md, "Latency").
                deadline = loop.call_later(SEND_TIMEOUT, self.drop_slow, ws, session)
                try:
                    await self.send_all(ws, session, pending)
                finally:
                    deadline.cancel()
        except ConnectionClosed:
            pass

    @staticmethod
    def write_now(ws: ServerConnection, session: Session, eid: int, text: str) -> bool:
        """The session's next event, written to its idle page by the callback that logged it.

        A wake of the pump costs a turn of the loop, behind whatever else is ready (at 1,000
        msg/s, three a message: its ack and receipt to the sender, the message to the
        receiver; docs/WEB.md, "Latency"). False leaves the event to the pump: not this
        page's, not the next one, the WebSocket not open, or the browser behind (WRITE_LIMIT
        buffered: the pump's send waits for it, within SEND_TIMEOUT)."""
        if session.attached is not ws or session.cursor != eid - 1 or ws.state is not State.OPEN:
            return False
        transport = ws.transport
        if transport.is_closing() or transport.get_write_buffer_size() >= WRITE_LIMIT:
            return False
        protocol = ws.protocol  # what ws.send does, without its coroutine and context manager
        protocol.send_text(text.encode())
        for data in protocol.data_to_send():
            transport.write(data)
        session.cursor = eid
        return True

    @staticmethod
    def drop_slow(ws: ServerConnection, session: Session) -> None:
        """A batch of events took over SEND_TIMEOUT: the send waiting on it ends in ConnectionClosed."""
        log.warning("%s: the browser took over %gs to take an event: dropped", session.name, SEND_TIMEOUT)
        ws.transport.abort()

    @staticmethod
    async def send_all(ws: ServerConnection, session: Session, pending: list[tuple[int, str]]) -> None:
        for eid, text in pending:
            await ws.send(text)  # waits while more than WRITE_LIMIT is buffered for this browser
            session.cursor = eid

    @staticmethod
    async def send(ws: ServerConnection, data: dict[str, Any]) -> None:
        await asyncio.wait_for(ws.send(schema.encode(data)), SEND_TIMEOUT)

    # --- lifetime ---------------------------------------------------------------------

    async def expire(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY)
            await self.sessions.expire()

    async def tend_heap(self) -> None:
        while True:
            await asyncio.sleep(HEAP_EVERY)
            self.sessions.heap.tend(len(self.sessions))

    async def serve(self, host: str, port: int, started: asyncio.Future[Server] | None = None,
                    stop: asyncio.Event | None = None) -> None:  # fmt: skip
        """Serve until `stop` is set (or SIGINT/SIGTERM), then sign every session out."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()

        def stop_soon(signum: int, frame: object) -> None:
            # Not loop.add_signal_handler: that passes the signal number through the loop's
            # self-pipe, where a full pipe loses it.
            loop.call_soon_threadsafe(stop.set)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: the caller stops us
                signal.signal(sig, stop_soon)
        server = await serve(self.connection, host, port, process_request=self.process_request,
                             max_size=MAX_FRAME, write_limit=WRITE_LIMIT, server_header=None,
                             compression=None, backlog=LISTEN_BACKLOG)  # fmt: skip
        bound = server.sockets[0].getsockname()[1]
        if not self.origins:
            self.origins = default_origins(host, bound)
        log.info("serving the page on http://%s:%d/ and the WebSocket on /ws; broker %s%s",
                 host, bound, self.settings.broker, " (CURVE: sign-in by invitation)" if self.invites
                 else "")  # fmt: skip
        log.info("WebSocket origins allowed: %s", " ".join(sorted(self.origins)))
        files, wanted = self.sessions.open_files
        if files < wanted:
            log.warning("%s", shortfall(files, FILES_PER_SESSION, self.settings.max_sessions, "pages",
                                        "--max-sessions"))  # fmt: skip
        if started is not None:
            started.set_result(server)
        expiry, heap = asyncio.create_task(self.expire()), asyncio.create_task(self.tend_heap())
        try:
            await stop.wait()
        finally:
            expiry.cancel()
            heap.cancel()
            self.stopping = True  # no new sign-ins while the others sign out
            try:
                await asyncio.wait_for(self.sessions.end_all("the gateway stops"), STOP_TIMEOUT)
            except (TimeoutError, asyncio.TimeoutError):  # the same from 3.11 on
                log.warning("some sessions did not sign out within %gs", STOP_TIMEOUT)
            server.close()  # and every WebSocket, with 1001
            try:
                await asyncio.wait_for(server.wait_closed(), STOP_TIMEOUT)
            except (TimeoutError, asyncio.TimeoutError):  # the same from 3.11 on
                log.warning("some WebSockets did not close within %gs", STOP_TIMEOUT)
            self.sessions.close()
            self.sessions.heap.release()
            log.info("the gateway stopped")
