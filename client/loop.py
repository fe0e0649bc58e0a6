"""The client on an asyncio loop: many connection engines in one thread, no thread each.

For a program that holds many chat sessions at once (the web gateway). A `LoopClient` runs
the same engine (connection.py) with the same effects (shell.py) as `Client`'s poller
thread, but its two sockets and the DEALER's monitor are watched by the loop (`add_reader`
on their zmq.FD; a wake-up reads the one socket whose FD it was, while zmq.EVENTS says it
holds a message) and its deadlines are one timer on the loop, moved only when the engine's
next deadline comes earlier. Every method is called on the loop; none blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any, cast

import zmq

from zchat.client import connection as c
from zchat.client import events as ev
from zchat.client.request import Request
from zchat.client.session import ConnectError, UserRequests
from zchat.client.settings import Settings
from zchat.client.shell import DRAIN_BATCH, Shell
from zchat.common.keys import KeyPair

__all__ = ["SOCKETS_PER_CLIENT", "ConnectError", "LoopClient"]

log = logging.getLogger("zchat.client")

#: The sockets a LoopClient holds in its context: DEALER, SUB and the DEALER's monitor, which is
#: two PAIRs (libzmq's end counts too). Size a shared context by it (zmq.MAX_SOCKETS, 1,023 by
#: default), with room for the sockets of clients closed and not yet reaped.
SOCKETS_PER_CLIENT = 4

#: A timer fires this much after the engine's deadline: asyncio may run a timer a little
#: early, and a tick before the deadline would find nothing due and ask again at once.
TIMER_SLACK = 0.001

# Plain ints: pyzmq's constants are enums, and `events & zmq.POLLIN` makes a Flag (0.6 us
# more a check, asked after every operation on every socket of every client).
EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)


class LoopShell(Shell):
    """A connection engine driven by callbacks of the loop: sockets ready, a deadline, a request."""

    def __init__(self, settings: Settings, context: zmq.Context[zmq.Socket[bytes]],
                 loop: asyncio.AbstractEventLoop, emit: Callable[[ev.Event], None],
                 new_id: Callable[[], str]) -> None:  # fmt: skip
        super().__init__(settings, context, emit, new_id)
        self.loop = loop
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        # zmq.FD is edge-triggered, and any operation on a socket (a send, a setsockopt, a read
        # of EVENTS) may take the edge of a message that came meanwhile. So the sockets operated
        # on since EVENTS last said they were empty are asked once more before the loop waits,
        # and what they hold is read then, not at their next message.
        self.touched: set[zmq.Socket[bytes]] = set()
        self.due: set[zmq.Socket[bytes]] = set()  # a drain of it is scheduled with call_soon
        self.first: asyncio.Future[ev.Status | None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.on_first_outcome = self._first_outcome

    # --- inputs, each a callback of the loop -------------------------------------------

    def start(self) -> None:
        self._run(self.engine.start)

    def request(self, request: Request) -> None:
        self._run(self.engine.request, request)

    def _ready(self, sock: zmq.Socket[bytes]) -> None:
        """`sock`'s FD is readable (or its drain was left unfinished): read it."""
        self.due.discard(sock)
        self._run(self._read, sock)

    def _read(self, sock: zmq.Socket[bytes], now: float) -> None:
        engine = self.engine
        if sock is self.dealer:
            self._drain(sock, engine.from_dealer, now)
        elif sock is self.sub:
            self._drain(sock, engine.from_sub, now)
        elif self.handshake is not None and sock is self.handshake.monitor:
            self._watch_connection(now)  # a refused handshake, or a connection closed
            self._carry_out()
        engine.tick(now)  # as the poller does after every wake-up

    def _drain(self, sock: zmq.Socket[bytes], feed: Callable[[list[bytes], float], None], now: float) -> None:
        """Read while EVENTS says a message is there. Not until zmq.Again, as the poller does:
        a raised Again costs twice a read of EVENTS, and here EVENTS must be read after the
        last operation anyway (the edge, above)."""
        events = sock.getsockopt
        for _ in range(DRAIN_BATCH):
            if not cast(int, events(EVENTS)) & POLLIN:
                self.touched.discard(sock)
                return
            try:
                frames = sock.recv_multipart(NOBLOCK)
            except zmq.Again:  # not after EVENTS said POLLIN (one socket, one thread), but never stuck
                return
            feed(frames, now)
            self._carry_out()
            if sock is not self.dealer and sock is not self.sub:
                return  # the socket was closed or replaced meanwhile
        self.touched.add(sock)  # a batch read in a row: the rest after the loop's other callbacks

    def _on_timer(self) -> None:
        self.timer, self.timer_at = None, math.inf
        self._run(self.engine.tick)

    def _run(self, feed: Callable[..., None], *args: Any) -> None:
        if self.done.done():
            return
        try:
            now = self.loop.time()
            feed(*args, now)
            self._carry_out()
            if self.engine.finished:
                self.finish()
            else:
                self._settle(now)
        except Exception as e:  # never die silently: the user must hear of it
            log.exception("client engine's driver failed")
            self.engine.fail(f"internal error: {e}")
            self.finish()

    def _settle(self, now: float) -> None:
        """The next deadline on the timer, and a drain of each socket that holds what its FD will not signal."""
        deadline = self.engine.wakeup()  # None when idle: libzmq keeps the connection alive
        if deadline is None:
            self._cancel_timer()
        elif deadline < self.timer_at:  # a later deadline waits for the timer set: it asks again
            self._cancel_timer()
            self.timer_at = deadline
            # At least TIMER_SLACK from now, as the poller sleeps 1 ms at least: a deadline the
            # engine keeps in the past must not spin the loop.
            self.timer = self.loop.call_at(max(deadline, now) + TIMER_SLACK, self._on_timer)
        touched = self.touched
        if touched:
            for sock in touched:
                if sock not in self.due and self._live(sock) and _readable(sock):
                    self.due.add(sock)
                    self.loop.call_soon(self._ready, sock)
            touched.clear()

    def _live(self, sock: zmq.Socket[bytes]) -> bool:
        handshake = self.handshake
        return (
            sock is self.dealer or sock is self.sub or (handshake is not None and sock is handshake.monitor)
        )

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.timer_at = None, math.inf

    def finish(self) -> None:
        """The engine is done (or must be): close the sockets, refuse what is left, say CLOSED."""
        if self.done.done():
            return
        self.done.set_result(None)
        self._cancel_timer()
        try:
            self._close_sockets()
        finally:
            self.engine.stop()
            self._carry_out()

    def _first_outcome(self, failure: ev.Status | None) -> None:
        if not self.first.done():
            self.first.set_result(failure)

    # --- how the loop waits on a socket, and what operates on one ----------------------

    def _watch(self, sock: zmq.Socket[bytes]) -> None:
        self.loop.add_reader(sock.FD, self._ready, sock)
        self.touched.add(sock)  # a new socket: asked before the loop waits, as after any operation

    def _unwatch(self, sock: zmq.Socket[bytes]) -> None:
        self.loop.remove_reader(sock.FD)
        self.touched.discard(sock)
        self.due.discard(sock)  # a drain scheduled for it finds it closed: `_read` ignores it

    def _send(self, frames: list[bytes]) -> None:
        super()._send(frames)
        if self.dealer is not None:
            self.touched.add(self.dealer)

    def _subscribe(self, effect: c.Subscribe) -> None:
        super()._subscribe(effect)
        if self.sub is not None:
            self.touched.add(self.sub)

    def _unsubscribe(self, effect: c.Unsubscribe) -> None:
        super()._unsubscribe(effect)
        if self.sub is not None:
            self.touched.add(self.sub)


def _readable(sock: zmq.Socket[bytes] | None) -> bool:
    """Whether `sock` holds a message now (zmq.EVENTS: its FD says only that this may have changed).

    getsockopt, not the `EVENTS` attribute (2.2 us against 1.3): asked three times after
    every wake-up of every client, the attribute's lookup took 8 % of a process of 250
    LoopClients reconnecting after a restart (py-spy, benchmarks/restart.py --loop)."""
    return sock is not None and bool(cast(int, sock.getsockopt(EVENTS)) & POLLIN)


class LoopClient(UserRequests):
    """A chat connection on the running asyncio loop, with the requests of `Client`.

    Its sockets come from `context`, shared by all clients of the loop. Events go to
    `on_event`, on the loop: keep it quick.
    """

    def __init__(self, settings: Settings, context: zmq.Context[zmq.Socket[bytes]],
                 on_event: Callable[[ev.Event], None]) -> None:  # fmt: skip
        super().__init__()
        if settings.server_key is not None and settings.keys is None:  # one pair for both sockets
            settings = dataclasses.replace(settings, keys=KeyPair(*zmq.curve_keypair()))
        self.name = settings.name
        self._settings = settings
        self._on_event = on_event
        self._shell = LoopShell(settings, context, asyncio.get_running_loop(), self._emit, self._new_id)
        self._closed = False

    @property
    def state(self) -> ev.State:
        return self._shell.state

    def _engine_rooms(self) -> set[str]:
        return set(self._shell.engine.rooms)  # on the loop, as the engine

    async def connect(self) -> LoopClient:
        """Start, and return once registered; ConnectError if that fails."""
        shell = self._shell
        shell.start()
        try:
            failure = await asyncio.wait_for(asyncio.shield(shell.first), self._settings.connect_timeout + 5)
        except (TimeoutError, asyncio.TimeoutError):  # the same from 3.11 on
            failure = ev.Status(ev.State.OFFLINE, "no answer")
        if failure is not None:
            await self.close()
            raise ConnectError(failure.detail)
        return self

    async def close(self, timeout: float = 3.0) -> None:
        """Say BYE and close the sockets, within `timeout` seconds."""
        if self._closed:
            return
        self._closed = True
        shell = self._shell
        shell.request(Request("close", self._new_id()))
        try:
            await asyncio.wait_for(asyncio.shield(shell.done), timeout)
        except (TimeoutError, asyncio.TimeoutError):  # the same from 3.11 on
            log.warning("%s: no end of the connection within %gs: closed anyway", self.name, timeout)
            shell.finish()

    def _submit(self, request: Request) -> Request:
        if self._closed or self._shell.done.done():
            request.resolve(request.refusal(ev.CLOSED, "the client is closed"))
        else:
            self._shell.request(request)
        return request

    def _emit(self, event: ev.Event) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("the on_event callback failed on %r", event)
