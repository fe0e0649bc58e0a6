"""The gateway's sessions: one zchat `Client` per signed-in browser tab, and its event log.

Every event the library emits for a session gets the next event id (`eid`) and is kept in a
bounded log, so a page whose WebSocket dropped resumes from the last eid it holds: nothing
missed, nothing twice. A session outlives its WebSocket by the resume window, then ends.
Everything here runs on the gateway's event loop but the Client's own poller thread, whose
events come over with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from zchat.client import commands as cmd
from zchat.client import events as ev
from zchat.client.render import to_data
from zchat.client.script import execute
from zchat.client.session import Client, ConnectError
from zchat.common.keys import KeyPair
from zchat.web.schema import Command, encode

log = logging.getLogger("zchat.web")


@dataclass(frozen=True)
class Settings:
    broker: str
    server_key: bytes | None = None
    connect_timeout: float = 5.0
    resume_window: float = 60.0  # seconds a session waits for its page to come back
    log_events: int = 1000  # events kept per session for a resume
    max_sessions: int = 250


class Session:
    """One browser tab's chat: its Client, its log of events, the commands it has run."""

    def __init__(self, name: str, inbox: Inbox, log_events: int) -> None:
        self.token = secrets.token_urlsafe(24)
        self.name = name
        self.inbox = inbox
        self.client: Client | None = None
        self.log: deque[tuple[int, str]] = deque(maxlen=log_events)
        self.next_eid = 1
        self.last_cid = 0  # the highest command id run: the page's repeats after a resume are dropped
        self.changed = asyncio.Event()
        self.attached: object | None = None  # the WebSocket connection showing it, if any
        self.detached_at: float | None = time.monotonic()
        self.ended = False
        self.cursor = 0  # the last eid sent to the attached page
        self.room = "*"  # script.execute's Output: where plain text of the current line goes

    # --- events in ----------------------------------------------------------------

    def from_library(self, event: ev.Event) -> None:
        """The Client's on_event: on its poller thread, so hand the event to the loop."""
        self.inbox.put(self, event)

    def add(self, data: dict[str, Any]) -> None:
        self.add_encoded(encode(data))

    def add_encoded(self, body: str) -> None:
        """`body`: a JSON object, to which the next eid is added (first, for readers' eyes)."""
        eid = self.next_eid
        self.next_eid += 1
        self.log.append((eid, f'{{"eid": {eid}, {body[1:]}' if body != "{}" else f'{{"eid": {eid}}}'))
        self.changed.set()

    def since(self, eid: int) -> list[tuple[int, str]] | None:
        """The logged events after `eid`; None when some of them are no longer kept."""
        if eid >= self.next_eid - 1:
            return []
        if eid < 0 or not self.log or self.log[0][0] > eid + 1:
            return None
        return [entry for entry in self.log if entry[0] > eid]

    @property
    def last_eid(self) -> int:
        return self.next_eid - 1

    # --- script.execute's Output -----------------------------------------------------

    def __call__(self, event: ev.Event) -> None:
        self.add_encoded(encoded(event))

    def show_help(self, word: str = "") -> None:
        self.add({"type": "help", "text": (cmd.help_of(word) if word else None) or cmd.HELP})

    def clear(self) -> None:
        """/clear is the page's own to do: nothing is sent for it."""

    # --- commands --------------------------------------------------------------------

    def run(self, command: Command) -> None:
        """One command of the page, unless it ran already (sent again after a resume)."""
        client = self.client
        if client is None or command.cid <= self.last_cid:
            return
        self.last_cid = command.cid
        kind = command.type
        if kind == "line":
            parsed = cmd.parse(command.text("text"))
            if parsed is None or isinstance(parsed, cmd.Quit):
                return  # the page ends the session itself with "quit"
            self.room = command.fields.get("where", "*") or "*"
            before = self.room
            execute(client, parsed, self)
            if self.room != before:
                self.add({"type": "room", "room": self.room})
        elif kind == "send":
            client.send(command.text("to"), command.text("text"))
        elif kind == "history":
            client.history(command.text("room"), command.number("before", -1), command.number("count", 50))
        elif kind == "who":
            client.who()
        elif kind == "rooms":
            client.rooms()
        elif kind == "names":
            room = command.text("room")
            client.who() if room == "*" else client.names(room)
        elif kind == "search":
            client.search(command.text("words"))


@functools.lru_cache(maxsize=4096)
def encoded(event: ev.Event) -> str:
    """The event's JSON: a broadcast or a presence reaches every session as an equal event
    (each decoded by its own poller), so it is encoded once, not once per session."""
    return encode(to_data(event))


FLUSH_AT_MOST = 2000  # events handed to sessions per turn of the loop


class Inbox:
    """Events from every session's poller thread, handed to the loop in batches.

    One call_soon_threadsafe per batch, not per event: a presence broadcast reaches every
    session at once, and each call writes to the loop's self-pipe.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: deque[tuple[Session, ev.Event]] = deque()
        self.scheduled = False

    def put(self, session: Session, event: ev.Event) -> None:  # on a poller thread
        self.events.append((session, event))
        if not self.scheduled:
            self.scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: the gateway is stopping
                self.loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:  # on the loop
        self.scheduled = False  # first: what comes while we drain schedules the next flush
        events = self.events
        # Only what is there now: threads that keep adding must not keep the loop here.
        for _ in range(min(len(events), FLUSH_AT_MOST)):
            session, event = events.popleft()
            session.add_encoded(encoded(event))
        if events and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)  # after the loop's other work (sends, commands, signals)


class Sessions:
    """Every session of the gateway, by token; signs in, resumes and ends them."""

    def __init__(self, settings: Settings, executor: Executor) -> None:
        self.settings = settings
        self.executor = executor
        self.by_token: dict[str, Session] = {}
        self.inbox: Inbox | None = None  # made on the loop, at the first sign-in

    def __len__(self) -> int:
        return len(self.by_token)

    async def sign_in(self, name: str, keys: KeyPair | None) -> Session:
        """A new session registered at the broker as `name`; ConnectError if refused."""
        loop = asyncio.get_running_loop()
        if self.inbox is None:
            self.inbox = Inbox(loop)
        session = Session(name, self.inbox, self.settings.log_events)
        s = self.settings
        client = Client(name, s.broker, connect_timeout=s.connect_timeout, on_event=session.from_library,
                        server_key=s.server_key, keys=keys)  # fmt: skip
        session.client = client
        await loop.run_in_executor(self.executor, client.connect)
        self.by_token[session.token] = session
        log.info("%s signed in (%d sessions)", name, len(self.by_token))
        return session

    def find(self, token: str) -> Session | None:
        return self.by_token.get(token)

    async def end(self, session: Session, why: str) -> None:
        """Sign the session out at the broker (BYE) and forget it."""
        if session.ended:
            return
        session.ended = True
        self.by_token.pop(session.token, None)
        log.info("%s signed out: %s (%d sessions)", session.name, why, len(self.by_token))
        if session.client is not None:
            await asyncio.get_running_loop().run_in_executor(self.executor, session.client.close)

    async def expire(self, now: Callable[[], float] = time.monotonic) -> None:
        """End the sessions whose page stayed away past the resume window."""
        limit = now() - self.settings.resume_window
        gone = [s for s in self.by_token.values() if s.detached_at is not None and s.detached_at < limit]
        await asyncio.gather(*(self.end(s, "its page did not come back") for s in gone))

    async def end_all(self, why: str) -> None:
        await asyncio.gather(*(self.end(s, why) for s in list(self.by_token.values())))


__all__ = ["ConnectError", "Session", "Sessions", "Settings"]
