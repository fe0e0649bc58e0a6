"""What every driver of a connection engine does alike: carry out its effects on two sockets.

The engine (connection.py) says what to do; a shell does it on a DEALER and a SUB of its
zmq context. The drivers differ only in how they wait: the poller thread (poller.py) polls
its sockets, the asyncio driver (loop.py) has the loop watch them. Each says so in
`_watch` and `_unwatch`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from zchat.client import connection as c
from zchat.client import events as ev
from zchat.client.events import State
from zchat.client.handshake import HandshakeWatch, secure
from zchat.client.settings import Settings
from zchat.common.heartbeat import set_client_heartbeats

log = logging.getLogger("zchat.client")

#: Messages read from one socket in a row: timers and the other socket get their turn.
DRAIN_BATCH = 1000


class Shell:
    def __init__(self, settings: Settings, context: zmq.Context[zmq.Socket[bytes]],
                 emit: Callable[[ev.Event], None], new_id: Callable[[], str]) -> None:  # fmt: skip
        self.s = settings
        self.emit = emit
        self.engine = c.Connection(settings, new_id)
        self.context = context
        self.dealer: zmq.Socket[bytes] | None = None
        self.sub: zmq.Socket[bytes] | None = None
        self.handshake: HandshakeWatch | None = None
        self.on_first_outcome: Callable[[ev.Status | None], None] = lambda failure: None

    @property
    def state(self) -> State:
        return self.engine.state

    @property
    def token(self) -> str:
        """The session's resume token (secret)."""
        return self.engine.token

    # --- how the driver waits on a socket -------------------------------------------

    def _watch(self, sock: zmq.Socket[bytes]) -> None:
        raise NotImplementedError

    def _unwatch(self, sock: zmq.Socket[bytes]) -> None:
        raise NotImplementedError

    # --- inputs ----------------------------------------------------------------------

    def _watch_connection(self, now: float) -> None:
        """The DEALER's monitor is readable: a refused handshake, or a connection that
        closed (the broker hung up, or libzmq's heartbeats found it silent), is an input."""
        assert self.handshake is not None
        refused, lost = self.handshake.read()
        if refused is not None:
            self.engine.handshake_failed(refused, now)
        elif lost:
            self.engine.connection_lost(now)

    def _drain(self, sock: zmq.Socket[bytes], feed: Callable[[list[bytes], float], None], now: float) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            feed(frames, now)
            self._carry_out()
            if sock is not self.dealer and sock is not self.sub:
                return  # the socket was closed or replaced meanwhile

    # --- the engine's effects ----------------------------------------------------------

    def _carry_out(self) -> None:
        for effect in self.engine.effects():
            _EFFECTS[type(effect)](self, effect)

    def _answer(self, effect: c.Answer) -> None:
        if effect.request.resolve(effect.outcome):  # answered once: a late answer is not told
            self.emit(effect.outcome)

    def _subscribe(self, effect: c.Subscribe) -> None:
        if self.sub is not None:
            self.sub.setsockopt(zmq.SUBSCRIBE, effect.topic)

    def _unsubscribe(self, effect: c.Unsubscribe) -> None:
        if self.sub is not None:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, effect.topic)

    def _send(self, frames: list[bytes]) -> None:
        if self.dealer is None:
            log.debug("no connection for a message; the engine's timeouts will report it")
            return
        try:
            self.dealer.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("dealer queue full; the answer timeout will report it")

    def _open_dealer(self, effect: c.OpenDealer) -> None:
        self._close_sockets()
        dealer = self.dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        if effect.endpoint.startswith("tcp://["):
            dealer.setsockopt(zmq.IPV6, 1)
        secure(dealer, self.s.server_key, self.s.keys)
        set_client_heartbeats(
            dealer, effect.heartbeat_ms, effect.timeout_ms
        )  # before connect (PROTOCOL.md 7.2)
        # Watched as long as the DEALER lives: its first handshake, then its connection closing.
        handshake = self.handshake = HandshakeWatch(dealer, encrypted=self.s.server_key is not None)
        assert handshake.monitor is not None
        self._watch(handshake.monitor)
        dealer.connect(effect.endpoint)
        self._watch(dealer)

    def _open_sub(self, endpoint: str) -> None:
        if self.sub is not None:
            self._unwatch(self.sub)
            self.sub.close(linger=0)
        sub = self.sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        if endpoint.startswith("tcp://["):
            sub.setsockopt(zmq.IPV6, 1)
        secure(sub, self.s.server_key, self.s.keys)
        sub.connect(endpoint)
        self._watch(sub)

    def _close_sockets(self) -> None:
        if self.handshake is not None:
            if self.handshake.monitor is not None:
                self._unwatch(self.handshake.monitor)
            self.handshake.close()
            self.handshake = None
        for sock in (self.dealer, self.sub):
            if sock is not None:
                self._unwatch(sock)
                sock.close(linger=0)
        self.dealer = self.sub = None


#: How each of the engine's effects is carried out.
_EFFECTS: dict[type, Callable[[Shell, Any], None]] = {
    c.ToBroker: lambda shell, effect: shell._send(effect.frames),
    c.Notify: lambda shell, effect: shell.emit(effect.event),
    c.Answer: Shell._answer,
    c.Subscribe: lambda shell, effect: shell._subscribe(effect),  # a driver may add to them (loop.py)
    c.Unsubscribe: lambda shell, effect: shell._unsubscribe(effect),
    c.OpenDealer: Shell._open_dealer,
    c.OpenSub: lambda shell, effect: shell._open_sub(effect.endpoint),
    c.CloseSockets: lambda shell, effect: shell._close_sockets(),
    c.FirstOutcome: lambda shell, effect: shell.on_first_outcome(effect.failure),
}
