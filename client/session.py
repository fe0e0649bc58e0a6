"""The zchat client library: `Client`, the user side of a chat connection.

A Client starts a poller thread (poller.py) that owns its sockets and runs
the connection engine (connection.py). The user side hands it requests
through a queue and a wake-up pipe, and gets events back by callback or by
iteration, so it is safe to use from any thread.

    with Client("alice", "tcp://127.0.0.1:5555") as chat:
        chat.broadcast("hello").wait(5)
        for event in chat.events(timeout=10):
            print(event)
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import TracebackType

import zmq

from zchat.client import events as ev
from zchat.client.poller import Poller
from zchat.client.readstate import ReadState
from zchat.client.request import Request
from zchat.client.settings import DEFAULT_BROKER, Settings
from zchat.common.keys import KeyPair
from zchat.common.protocol import (
    EVERYONE,
    MAX_AWAY_BYTES,
    MAX_HISTORY,
    MAX_NUMBER,
    MAX_SUBJECT_BYTES,
    valid_room,
)

__all__ = ["DEFAULT_BROKER", "Client", "ConnectError", "Settings"]

log = logging.getLogger("zchat.client")
#: Our room and lobby messages whose coming back `flush` can wait for: the newest this many,
#: each at most ECHO_WAIT seconds after the last answer came.
ECHOES = 1000
ECHO_WAIT = 2.0


class ConnectError(Exception):
    """The first connection failed: broker unreachable or name refused."""


class UserRequests:
    """The requests a user side makes, checked before they reach the engine.

    Shared by `Client` (its engine on a poller thread) and `loop.LoopClient` (its engine on
    an asyncio loop), which say how a request reaches the engine (`_submit`) and how an
    event reaches the user (`_emit`)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)
        self._room_asks: dict[str, Request] = {}  # the last ENTER or EXIT asked of each room
        self._asks_lock = threading.Lock()

    def _new_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def joined(self) -> frozenset[str]:
        """The rooms ("#name", lower case) this client is in, or is joining; not the lobby.

        A join or leave asked and not yet answered counts as done: what was asked
        last is what the user expects, though the poller may not have taken it yet."""
        with self._asks_lock:
            asked = [(room, r.kind == "enter") for room, r in self._room_asks.items() if not r.done()]
        # Read after the answers: the engine knows its rooms before it answers.
        rooms = self._engine_rooms() - {EVERYONE}
        for room, entering in asked:
            (rooms.add if entering else rooms.discard)(room)
        return frozenset(rooms)

    def _asked(self, request: Request) -> Request:
        if not request.done():
            with self._asks_lock:
                self._room_asks[request.target] = request
        return request

    def _engine_rooms(self) -> set[str]:
        """The engine's rooms now (the lobby too), read from the user's side."""
        raise NotImplementedError

    def _submit(self, request: Request) -> Request:
        raise NotImplementedError

    def _emit(self, event: ev.Event) -> None:
        raise NotImplementedError

    @property
    def state(self) -> ev.State:
        raise NotImplementedError

    # --- requests ------------------------------------------------------------

    def send(self, to: str, text: str) -> Request:
        """A private message to `to`; `.wait()` gives its Ack or Refusal."""
        return self._checked(Request("send", self._new_id(), to, text))

    def broadcast(self, text: str) -> Request:
        """A message to everyone; `.wait()` gives its Ack or Refusal."""
        return self._checked(Request("send", self._new_id(), EVERYONE, text))

    def who(self) -> Request:
        """Ask who is online; `.wait()` gives Users (or a Refusal)."""
        return self._submit(Request("who", self._new_id()))

    def away(self, text: str = "") -> Request:
        """Mark us away with `text` ("": back); others see it in who() and when they
        message us. `.wait()` gives Ack."""
        return self._bounded(Request("away", self._new_id(), text=text.strip()), MAX_AWAY_BYTES)

    def topic(self, room: str) -> Request:
        """The topic of `room`; `.wait()` gives Topic (text "" when it has none)."""
        return self._room_request("topic", room)

    def set_topic(self, room: str, text: str) -> Request:
        """Set the topic of `room`, one we are in ("" clears it); `.wait()` gives Ack, and
        the room's members (us too) get a Topic event with `changed`."""
        room = room.lower()
        request = Request("settopic", self._new_id(), room, text.strip())
        if not valid_room(room):
            return self._refused(request, f"{room!r} is not a room: '#' and 1-32 letters, digits, _ - .")
        return self._bounded(request, MAX_SUBJECT_BYTES)

    def _bounded(self, request: Request, limit: int) -> Request:
        """Refused here when longer than the broker takes (PROTOCOL.md 13.7)."""
        size = len(request.text.encode("utf-8", "surrogatepass"))
        if size > limit:
            return self._refused(request, f"the text is {size} bytes, the limit is {limit}")
        return self._checked(request)

    # --- rooms, history and search (PROTOCOL.md 13) ----------------------------

    def enter(self, room: str) -> Request:
        """Join `room` ("#name"): its last messages come as history, then live ones; `.wait()` gives Ack."""
        return self._asked(self._room_request("enter", room))

    def exit(self, room: str) -> Request:
        """Leave `room`; `.wait()` gives Ack (or a Refusal)."""
        return self._asked(self._room_request("exit", room))

    def rooms(self) -> Request:
        """Every room with members, and ours; `.wait()` gives RoomList."""
        return self._submit(Request("rooms", self._new_id()))

    def names(self, room: str) -> Request:
        """Who of `room` is online ("*": the lobby); `.wait()` gives Users with its room."""
        return self._room_request("names", room, lobby=True)

    def history(self, room: str, before: int = 0, count: int = 50) -> Request:
        """The `count` messages of `room` before sequence number `before` (0: the newest).

        They come as Message events marked history, then `.wait()` gives History.
        `before=-1` pages back from the oldest message shown so far. `count` is
        taken as 1 to 500, what one HISTORY may ask.
        """
        if before > MAX_NUMBER:  # no sequence number is that high (PROTOCOL.md 3.2)
            return self._refused(Request("history", self._new_id(), room), f"no message is numbered {before}")
        return self._room_request(
            "history", room, lobby=True, before=before, count=min(max(count, 1), MAX_HISTORY)
        )

    def search(self, words: str) -> Request:
        """Messages of our rooms and our private ones with all of `words`; `.wait()` gives Found."""
        if not words.strip():
            return self._refused(Request("search", self._new_id()), "give words to search for")
        return self._checked(Request("search", self._new_id(), text=words))

    def _checked(self, request: Request) -> Request:
        """Text the wire can carry (UTF-8), else refused here: a byte a terminal or a C
        locale could not decode arrives as a lone surrogate, which no encoder takes."""
        try:
            request.target.encode()
            request.text.encode()
        except UnicodeEncodeError:
            return self._refused(
                request, "the text is not valid UTF-8 (a byte your terminal could not decode?)"
            )
        return self._submit(request)

    def _room_request(
        self, kind: str, room: str, lobby: bool = False, before: int = 0, count: int = 0
    ) -> Request:
        room = room.lower()
        request = Request(kind, self._new_id(), room, before=before, count=count)
        if not (valid_room(room) or (lobby and room == EVERYONE)):
            return self._refused(request, f"{room!r} is not a room: '#' and 1-32 letters, digits, _ - .")
        return self._submit(request)

    def _refused(self, request: Request, text: str) -> Request:
        """Refused here, without asking the broker; shown like any refusal."""
        refusal = ev.Refusal(request.msg_id, ev.USAGE, text)
        if request.resolve(refusal):
            self._emit(refusal)
        return request


class Client(UserRequests):
    def __init__(
        self,
        name: str,
        broker: str = DEFAULT_BROKER,
        *,
        connect_timeout: float = Settings.connect_timeout,
        answer_timeout: float = Settings.answer_timeout,
        max_queued: int = Settings.max_queued,
        history_count: int = Settings.history_count,
        on_event: Callable[[ev.Event], None] | None = None,
        server_key: str | bytes | None = None,
        keys: KeyPair | None = None,
        kind: str = Settings.client,
        read_state: ReadState | None = None,
        announce: bool = Settings.announce,
    ) -> None:
        """`on_event`, if given, is called on the poller thread: keep it quick.

        Without it, events queue up for `events()` and `next_event()`.
        `history_count` messages of a room are shown on joining it (and on
        registering, for the rooms one is in): at most 500, what one HISTORY may ask.
        With `server_key`, the broker's public key (z85), all traffic is
        encrypted with CURVE, as `keys` (a fresh key pair when None).
        With `read_state`, what is shown is remembered (saved on close), and a
        join's history says where the unread part starts, with a Status
        "unread since HH:MM" just before its first message not shown before.
        `kind` is what HELLO tells the broker this program is, for its
        operators' figures only (PROTOCOL.md 4.1): "library", "bot", or a word of your own.
        `announce=False` never tells others this session joined or left (no READY,
        PROTOCOL.md 4.6): for a short-lived sender such as `zchat send`.
        """
        self.name = name
        self.broker = broker
        if isinstance(server_key, str):
            server_key = server_key.encode()
        if server_key is not None and keys is None:  # one pair for every socket of this client
            keys = KeyPair(*zmq.curve_keypair())
        self._settings = Settings(name, broker, connect_timeout, answer_timeout, max_queued, history_count,
                                  server_key, keys, client=kind, announce=announce)  # fmt: skip
        super().__init__()
        self._on_event = on_event
        self.read_state = read_state
        self._marked: set[str] = set()  # rooms whose "unread since" was told
        self._read_before: dict[str, int] = {}  # room -> its last sequence read before this client
        self._events: queue.SimpleQueue[ev.Event] = queue.SimpleQueue()
        self._requests: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._first = threading.Event()
        self._failure: ev.Status | None = None
        self._pending: list[Request] = []  # answered ones are pruned as it grows
        self._pending_lock = threading.Lock()
        #: Ids of our room and lobby messages not yet heard back from the broker (the newest
        #: ECHOES), so that `flush` can wait for them: what a user sees of what it sent.
        self._unheard: OrderedDict[str, None] = OrderedDict()
        self._heard = threading.Condition()
        self._poller = Poller(self._settings, self._requests, self._wake_r, self._emit, self._new_id)
        self._thread = threading.Thread(target=self._run, name=f"zchat-client-{name}", daemon=True)
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, on_event: Callable[[ev.Event], None] | None = None,
                      read_state: ReadState | None = None) -> Client:  # fmt: skip
        """A client of the program's settings (settings.py), as the command line reads them."""
        return cls(settings.name, settings.broker, connect_timeout=settings.connect_timeout,
                   answer_timeout=settings.answer_timeout, max_queued=settings.max_queued,
                   history_count=settings.history_count, on_event=on_event, server_key=settings.server_key,
                   keys=settings.keys, read_state=read_state, kind=settings.client,
                   announce=settings.announce)  # fmt: skip

    # --- lifetime ------------------------------------------------------------

    def connect(self) -> Client:
        """Start, and return once registered; ConnectError if that fails."""
        self._thread.start()
        self._first.wait(self._settings.connect_timeout + 5)
        if self._failure is not None or not self._first.is_set():
            detail = self._failure.detail if self._failure else "no answer"
            self.close()
            raise ConnectError(detail)
        return self

    def close(self, timeout: float = 3.0) -> None:
        """Say BYE, close the sockets and join the thread (bounded by `timeout`)."""
        if self._closed:
            return
        self._closed = True
        started = self._thread.ident is not None
        if self._thread.is_alive():
            self._submit(Request("close", self._new_id()))
            self._thread.join(timeout)
        if self.read_state is not None:
            self.read_state.save()
        os.close(self._wake_w)
        if not started:  # else the poller thread closes its end, once it no longer polls it
            os.close(self._wake_r)

    def running(self) -> bool:
        """The poller thread is still alive (after close(): it did not end in time)."""
        return self._thread.is_alive()

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    @property
    def state(self) -> ev.State:
        return self._poller.state

    def _engine_rooms(self) -> set[str]:
        # Written by the poller thread only; copying a dict's keys holds the GIL throughout.
        return set(self._poller.engine.rooms)

    def flush(self, timeout: float) -> bool:
        """Wait until every request so far has its answer; False on timeout. Then, within
        the same time, for each room or lobby message accepted to come back on the broadcasts
        (it is shown when it does): a script's last line is seen, not only acknowledged."""
        deadline = time.monotonic() + timeout
        with self._pending_lock:
            pending = list(self._pending)
        for request in pending:
            try:
                request.wait(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
        rooms = self.joined() | {EVERYONE}  # what was sent to a room left since does not come back
        accepted = {
            r.msg_id
            for r in pending
            if r.kind == "send" and r.target.lower() in rooms and isinstance(r.wait(0), ev.Ack)
        }
        # Best effort, and not long: a message lost on the way is no failure of its send.
        wait = min(ECHO_WAIT, deadline - time.monotonic())
        with self._heard:
            self._heard.wait_for(lambda: not accepted.intersection(self._unheard), wait)
        return True

    def unanswered_sends(self) -> int:
        """Messages sent so far that have no answer yet (closing now would refuse them)."""
        with self._pending_lock:
            return sum(r.kind == "send" and not r.done() for r in self._pending)

    # --- events --------------------------------------------------------------

    def next_event(self, timeout: float | None = None) -> ev.Event | None:
        """The next event, or None if none came within `timeout` seconds."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def events(self, timeout: float | None = None) -> Iterator[ev.Event]:
        """Events as they come, until the client closes or `timeout` passes with none."""
        while True:
            event = self.next_event(timeout)
            if event is None:
                return
            yield event
            if isinstance(event, ev.Status) and event.state is ev.State.CLOSED:
                return

    # --- internals -----------------------------------------------------------

    def _submit(self, request: Request) -> Request:
        if request.kind != "close":
            if self._closed or not self._thread.is_alive():
                request.resolve(request.refusal(ev.CLOSED, "the client is closed"))
                return request
            with self._pending_lock:
                if len(self._pending) > 256:
                    self._pending = [r for r in self._pending if not r.done()]
                self._pending.append(request)
            if request.kind == "send" and ev.is_room(request.target):
                with self._heard:
                    self._unheard[request.msg_id] = None
                    if len(self._unheard) > ECHOES:
                        self._unheard.popitem(last=False)
        self._requests.put(request)
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # a full pipe already holds wake-ups: the poller will look anyway
        except BrokenPipeError:  # the poller thread ended (it closed its end) after our check
            request.resolve(request.refusal(ev.CLOSED, "the client is closed"))
        return request

    def _emit(self, event: ev.Event) -> None:
        if type(event) is ev.Message and self._unheard and event.msg_id in self._unheard:
            with self._heard:
                self._unheard.pop(event.msg_id, None)
                self._heard.notify_all()
        if self.read_state is not None:
            self._read(event, self.read_state)
            if isinstance(event, ev.Receipt) and not event.text:  # sent before a restart
                event = replace(event, text=self.read_state.sent_text(event.msg_id))
        self._deliver(event)

    def _read(self, event: ev.Event, state: ReadState) -> None:
        """Before the first history message not shown before: "unread since"; then remember it."""
        if isinstance(event, ev.Ack) and event.command == "exit":
            state.forget(event.target)
        elif isinstance(event, ev.Ack) and event.command == "send" and not ev.is_room(event.target):
            state.sent(event.msg_id, event.text)  # for its receipt, which may come after a restart
        if not isinstance(event, ev.Message) or not event.seq or event.private:
            return
        # What was read before this client's first message of the room: not what it showed since.
        last = self._read_before.setdefault(event.room, state.last_read(event.room))
        if event.history and last and event.seq > last and event.room not in self._marked:
            self._marked.add(event.room)
            where = "the lobby" if event.room == EVERYONE else event.room
            since = event.time.astimezone().strftime("%H:%M")
            self._deliver(ev.Status(self.state, f"unread since {since} in {where}"))
        state.shown(event.room, event.seq)

    def _deliver(self, event: ev.Event) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("the on_event callback failed on %r", event)
        else:
            self._events.put(event)

    def _run(self) -> None:
        self._poller.run(self._first_outcome)

    def _first_outcome(self, failure: ev.Status | None) -> None:
        self._failure = failure
        self._first.set()
