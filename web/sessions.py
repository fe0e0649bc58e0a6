"""The gateway's sessions: one zchat `LoopClient` per signed-in browser tab, and its event log.

Every event the client emits for a session gets the next event id (`eid`) and is kept in a
bounded log, so a page whose WebSocket dropped resumes from the last eid it holds: nothing
missed, nothing twice. A session outlives its WebSocket by the resume window, then ends.
Everything here runs on the gateway's event loop, the sessions' connection engines too
(client/loop.py): their sockets share one zmq context, and no session has a thread.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from zchat.client import commands as cmd
from zchat.client import events as ev
from zchat.client import settings as client_settings
from zchat.client.loop import SOCKETS_PER_CLIENT, ConnectError, LoopClient
from zchat.client.render import to_data
from zchat.client.script import execute
from zchat.common.keys import KeyPair
from zchat.common.limits import raise_open_files
from zchat.web.heap import Heap
from zchat.web.schema import Command, encode

log = logging.getLogger("zchat.web")


@dataclass(frozen=True)
class Settings:
    broker: str
    server_key: bytes | None = None
    connect_timeout: float = 5.0
    resume_window: float = 60.0  # seconds a session waits for its page to come back
    log_events: int = 1000  # events kept per session for a resume
    max_sessions: int = 1000


class Session:
    """One browser tab's chat: its Client, its log of events, the commands it has run."""

    def __init__(self, name: str, log_events: int) -> None:
        self.token = secrets.token_urlsafe(24)
        self.name = name
        self.client: LoopClient | None = None
        self.log: deque[tuple[int, str]] = deque(maxlen=log_events)
        self.next_eid = 1
        self.last_cid = 0  # the highest command id run: the page's repeats after a resume are dropped
        self.changed = asyncio.Event()  # an event was logged that the pump is to send
        #: Set by the attached page's pump while it waits with nothing to send: writes the
        #: next event to the page at once, or says False and the pump is woken to send it.
        self.write_now: Callable[[int, str], bool] | None = None
        self.attached: object | None = None  # the WebSocket connection showing it, if any
        self.detached_at: float | None = time.monotonic()
        self.ended = False
        self.cursor = 0  # the last eid sent to the attached page
        self.room = "*"  # script.execute's Output: where plain text of the current line goes

    # --- events in ----------------------------------------------------------------

    def from_library(self, event: ev.Event) -> None:
        """The client's on_event (on the loop); a run of joins and leaves is an event each."""
        for one in ev.each(event):
            self.add_encoded(encoded(one))

    def add(self, data: dict[str, Any]) -> None:
        self.add_encoded(encode(data))

    def add_encoded(self, body: str) -> None:
        """`body`: a JSON object, to which the next eid is added (first, for readers' eyes)."""
        eid = self.next_eid
        self.next_eid += 1
        text = f'{{"eid": {eid}, {body[1:]}' if body != "{}" else f'{{"eid": {eid}}}'
        self.log.append((eid, text))
        write_now = self.write_now
        if write_now is not None and write_now(eid, text):
            return
        self.write_now = None  # the pump sends this one, and all that follow until it waits again
        self.changed.set()

    def since(self, eid: int) -> list[tuple[int, str]] | None:
        """The logged events after `eid`; None when some of them are no longer kept."""
        if eid >= self.next_eid - 1:
            return []
        if eid < 0 or not self.log or self.log[0][0] > eid + 1:
            return None
        # The log's eids are consecutive and end at last_eid: the ones after `eid` are its last
        # last_eid - eid entries, taken from the end (a pump asks at every wake-up, mostly for
        # one or two of up to log_events entries).
        return list(itertools.islice(reversed(self.log), self.next_eid - 1 - eid))[::-1]

    @property
    def last_eid(self) -> int:
        return self.next_eid - 1

    # --- script.execute's Output -----------------------------------------------------

    def __call__(self, event: ev.Event) -> None:
        for one in ev.each(event):
            self.add_encoded(encoded(one))

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
    (each decoded by its own engine), so it is encoded once, not once per session."""
    return encode(to_data(event))


#: Twice a client's: after a broker restart every session reconnects on new sockets, and the
#: closed ones count until libzmq has reaped them.
SOCKETS_PER_SESSION = 2 * SOCKETS_PER_CLIENT
#: Descriptors a session costs: the page's WebSocket, the DEALER's and SUB's TCP connections,
#: and a libzmq mailbox for each of its sockets (the closing ones too).
FILES_PER_SESSION = 1 + 2 + SOCKETS_PER_SESSION


class Sessions:
    """Every session of the gateway, by token; signs in, resumes and ends them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()  # every session's sockets
        # A context holds 1,023 sockets by default, and a session has four (loop.py): past
        # them, sign-ins fail (EMFILE).
        self.context.set(zmq.MAX_SOCKETS, min(SOCKETS_PER_SESSION * settings.max_sessions + 64,
                                              self.context.get(zmq.SOCKET_LIMIT)))  # fmt: skip
        #: The open-file limit now, and what max_sessions wants (said at start when short).
        self.open_files = raise_open_files(FILES_PER_SESSION * settings.max_sessions)
        self.by_token: dict[str, Session] = {}
        self.heap = Heap()

    def __len__(self) -> int:
        return len(self.by_token)

    async def sign_in(self, name: str, keys: KeyPair | None) -> Session:
        """A new session registered at the broker as `name`; ConnectError if refused."""
        session = Session(name, self.settings.log_events)
        s = self.settings
        chat = client_settings.Settings(name, s.broker, s.connect_timeout, server_key=s.server_key, keys=keys,
                                        client="web")  # fmt: skip
        client = session.client = LoopClient(chat, self.context, session.from_library)
        await client.connect()
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
        self.heap.session_ended()
        log.info("%s signed out: %s (%d sessions)", session.name, why, len(self.by_token))
        if session.client is not None:
            await session.client.close()

    async def expire(self, now: Callable[[], float] = time.monotonic) -> None:
        """End the sessions whose page stayed away past the resume window."""
        limit = now() - self.settings.resume_window
        gone = [s for s in self.by_token.values() if s.detached_at is not None and s.detached_at < limit]
        await asyncio.gather(*(self.end(s, "its page did not come back") for s in gone))

    async def end_all(self, why: str) -> None:
        await asyncio.gather(*(self.end(s, why) for s in list(self.by_token.values())))

    def close(self) -> None:
        """Once every session ended (or gave up ending): the sockets left are closed."""
        self.context.destroy(linger=0)


__all__ = ["ConnectError", "Session", "Sessions", "Settings"]
