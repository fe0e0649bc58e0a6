"""The client's poller thread: it alone owns the DEALER and the SUB socket.

A dull loop around the connection engine (connection.py), which holds every
rule of the protocol: poll the sockets and the wake-up pipe, feed the engine
what came, carry out what it says (shell.py: open, close, send, subscribe, tell
the user), and sleep until its next deadline. The user side reaches it only
through a thread-safe queue plus a wake-up pipe (see session.py).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import time
from collections.abc import Callable

import zmq

from zchat.client import events as ev
from zchat.client.request import Request
from zchat.client.settings import Settings
from zchat.client.shell import Shell

log = logging.getLogger("zchat.client")

#: Idle, the loop wakes for the engine's next deadline only, and at least this often (libzmq
#: keeps the connection alive): 20 wake-ups a second cost an idle client about 1 ms of CPU a second.
IDLE_POLL_MS = 1000


class Poller(Shell):
    def __init__(self, settings: Settings, requests: queue.SimpleQueue[Request], wake_fd: int,
                 emit: Callable[[ev.Event], None], new_id: Callable[[], str]) -> None:  # fmt: skip
        super().__init__(settings, zmq.Context(), emit, new_id)
        self.requests = requests
        self.wake_fd = wake_fd
        self.poller = zmq.Poller()
        self.poller.register(wake_fd, zmq.POLLIN)

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

    def _poll_ms(self, now: float) -> int:
        """Until the engine's next deadline: sockets and the user's requests wake the loop anyway."""
        deadline = self.engine.wakeup()
        wait = IDLE_POLL_MS if deadline is None else min(max((deadline - now) * 1000, 1), IDLE_POLL_MS)
        return math.ceil(wait)

    def _take_requests(self, now: float) -> None:
        while True:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                return
            self.engine.request(request, now)

    # --- how it waits on a socket ----------------------------------------------

    def _watch(self, sock: zmq.Socket[bytes]) -> None:
        self.poller.register(sock, zmq.POLLIN)

    def _unwatch(self, sock: zmq.Socket[bytes]) -> None:
        self.poller.unregister(sock)
