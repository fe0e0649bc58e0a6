"""The client's poller thread: it alone owns the DEALER and the SUB socket.

A dull loop around the connection engine (connection.py), which holds every
rule of the protocol: poll the sockets and the wake-up pipe, feed the engine
what came, carry out what it says (open, close, send, subscribe, tell the
user), and sleep until its next deadline. The user side reaches it only
through a thread-safe queue plus a wake-up pipe (see session.py).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import time
from collections.abc import Callable
from typing import Any

import zmq

from zchat.client import connection as c
from zchat.client import events as ev
from zchat.client.events import State
from zchat.client.handshake import HandshakeWatch, secure
from zchat.client.request import Request
from zchat.client.settings import Settings
from zchat.common.heartbeat import set_heartbeats

log = logging.getLogger("zchat.client")

#: Idle, the loop wakes for the engine's next deadline only, and at least this often (libzmq
#: keeps the connection alive): 20 wake-ups a second cost an idle client about 1 ms of CPU a second.
IDLE_POLL_MS = 1000
#: Messages read from one socket in a row: timers and the other socket get their turn.
DRAIN_BATCH = 1000


class Poller:
    def __init__(self, settings: Settings, requests: queue.SimpleQueue[Request], wake_fd: int,
                 emit: Callable[[ev.Event], None], new_id: Callable[[], str]) -> None:  # fmt: skip
        self.s = settings
        self.requests = requests
        self.wake_fd = wake_fd
        self.emit = emit
        self.engine = c.Connection(settings, new_id)
        self.context = zmq.Context()
        self.poller = zmq.Poller()
        self.poller.register(wake_fd, zmq.POLLIN)
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

    # --- the loop ------------------------------------------------------------

    def run(self, on_first_outcome: Callable[[ev.Status | None], None]) -> None:
        self.on_first_outcome = on_first_outcome
        engine = self.engine
        try:
            engine.start(time.monotonic())
            self._carry_out()
            while not engine.finished:
                ready = dict(self.poller.poll(self._poll_ms(time.monotonic())))
                now = time.monotonic()
                if self.dealer is not None and self.dealer in ready:
                    self._drain(self.dealer, engine.from_dealer, now)
                if self.sub is not None and self.sub in ready:
                    self._drain(self.sub, engine.from_sub, now)
                if self.wake_fd in ready:
                    if not os.read(self.wake_fd, 4096):  # the user side closed its end: it is gone
                        self.poller.unregister(self.wake_fd)
                        engine.user_gone(now)
                    self._take_requests(now)
                if self.handshake is not None and self.handshake.monitor in ready:
                    self._watch_connection(now)
                engine.tick(now)
                self._carry_out()
        except Exception as e:  # never die silently: the user must hear of it
            log.exception("client poller failed")
            engine.fail(f"internal error: {e}")
        finally:
            self._close_sockets()
            self.context.term()
            # Ours to close: the user side may close its end before we are done. Closed before the
            # last look at the queue: a request whose wake-up got through is taken below, one
            # whose wake-up found the pipe closed is refused by the user side (session.py).
            os.close(self.wake_fd)
            self._take_requests(time.monotonic())
            engine.stop()
            self._carry_out()

    def _watch_connection(self, now: float) -> None:
        """A refused handshake, and a connection that closed, are inputs of the engine."""
        assert self.handshake is not None
        refused, lost = self.handshake.read()
        if refused is not None:
            self.engine.handshake_failed(refused, now)
        elif lost:
            self.engine.connection_lost(now)

    def _poll_ms(self, now: float) -> int:
        """Until the engine's next deadline: sockets and the user's requests wake the loop anyway."""
        deadline = self.engine.wakeup()
        wait = IDLE_POLL_MS if deadline is None else min(max((deadline - now) * 1000, 1), IDLE_POLL_MS)
        return math.ceil(wait)

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

    def _take_requests(self, now: float) -> None:
        while True:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                return
            self.engine.request(request, now)

    # --- the engine's effects ------------------------------------------------

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
        set_heartbeats(dealer, effect.heartbeat_ms, effect.timeout_ms)
        self.handshake = HandshakeWatch(dealer, encrypted=self.s.server_key is not None)
        assert self.handshake.monitor is not None
        self.poller.register(self.handshake.monitor, zmq.POLLIN)
        dealer.connect(effect.endpoint)
        self.poller.register(dealer, zmq.POLLIN)

    def _open_sub(self, endpoint: str) -> None:
        if self.sub is not None:
            self.poller.unregister(self.sub)
            self.sub.close(linger=0)
        sub = self.sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        if endpoint.startswith("tcp://["):
            sub.setsockopt(zmq.IPV6, 1)
        secure(sub, self.s.server_key, self.s.keys)
        sub.connect(endpoint)
        self.poller.register(sub, zmq.POLLIN)

    def _close_sockets(self) -> None:
        if self.handshake is not None:
            if self.handshake.monitor is not None:
                self.poller.unregister(self.handshake.monitor)
            self.handshake.close()
            self.handshake = None
        for sock in (self.dealer, self.sub):
            if sock is not None:
                self.poller.unregister(sock)
                sock.close(linger=0)
        self.dealer = self.sub = None


#: How each of the engine's effects is carried out.
_EFFECTS: dict[type, Callable[[Poller, Any], None]] = {
    c.ToBroker: lambda poller, effect: poller._send(effect.frames),
    c.Notify: lambda poller, effect: poller.emit(effect.event),
    c.Answer: Poller._answer,
    c.Subscribe: Poller._subscribe,
    c.Unsubscribe: Poller._unsubscribe,
    c.OpenDealer: Poller._open_dealer,
    c.OpenSub: lambda poller, effect: poller._open_sub(effect.endpoint),
    c.CloseSockets: lambda poller, effect: poller._close_sockets(),
    c.FirstOutcome: lambda poller, effect: poller.on_first_outcome(effect.failure),
}
