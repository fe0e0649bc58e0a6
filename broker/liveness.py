"""Which clients' connections are gone, learnt from libzmq instead of from PINGs.

libzmq's ZMTP heartbeats (ZMQ_HEARTBEAT_IVL, _TIMEOUT, _TTL on the ROUTER) ping
every connection from its I/O thread and close one whose peer stopped answering;
a closed TCP connection is seen at once. Neither costs a Python call per client.
The ROUTER's socket monitor then reports EVENT_DISCONNECTED with the descriptor
of the connection that closed. A message says which descriptor it came on
(SRCFD, as in hangup.py), so the broker notes it, with the TCP peer behind it,
when a session starts on a connection. A descriptor number is reused as soon as
it closes, and a message may be read after that: on a disconnect, a session is
gone only if its descriptor no longer leads to the peer noted for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from zchat.broker.hangup import Peer, origin_of, peer_of_descriptor

#: Monitor events read per call, so that a storm of disconnects cannot hold up the rest.
EVENTS_PER_CALL = 1000
#: libzmq reports a disconnect just before it closes the descriptor: one still open to
#: the noted peer is looked at again on later calls, this long at most (then it is
#: taken as a number reused by a new connection of that session's, which is alive).
RECHECK_SECONDS = 1.0


class ConnectionWatch:
    """Notes the connection of each session; says which of them closed."""

    def __init__(
        self, router: zmq.Socket[bytes], peer_of: Callable[[int], Peer | None] = peer_of_descriptor
    ) -> None:
        self.monitor: zmq.Socket[bytes] = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._router = router
        self._peer_of = peer_of
        #: descriptor -> {routing id: the TCP peer it had when the session was noted}
        self._on: dict[int, dict[bytes, Peer]] = {}
        self._descriptor: dict[bytes, int] = {}
        #: Descriptors reported closed but still open to their noted peer: (until when, descriptor).
        self.rechecks: list[tuple[float, int]] = []

    def note(self, frame: zmq.Frame) -> None:
        """The session of this message's routing id lives on the connection it came on."""
        routing_id = frame.bytes
        try:
            descriptor = frame.get(zmq.SRCFD)
        except zmq.ZMQError:
            return  # not a connection with a descriptor (inproc): nothing to watch
        peer = origin_of(frame)
        if not isinstance(descriptor, int) or descriptor < 0 or peer is None:
            return  # already closed, or the number already another's: the next disconnect tells
        self.forget(routing_id)
        self._on.setdefault(descriptor, {})[routing_id] = peer
        self._descriptor[routing_id] = descriptor

    def noted(self, routing_id: bytes) -> bool:
        return routing_id in self._descriptor

    def peer(self, routing_id: bytes) -> Peer | None:
        """The TCP peer noted for the session of `routing_id` (a hangup cuts only that one)."""
        descriptor = self._descriptor.get(routing_id)
        return None if descriptor is None else self._on[descriptor][routing_id]

    def forget(self, routing_id: bytes) -> None:
        descriptor = self._descriptor.pop(routing_id, None)
        if descriptor is not None:
            on = self._on[descriptor]
            del on[routing_id]
            if not on:
                del self._on[descriptor]

    def closed(self, now: float | None = None) -> list[bytes]:
        """The routing ids whose connection closed since the last call (forgotten here)."""
        now = time.monotonic() if now is None else now
        gone: list[bytes] = []
        if self.rechecks:
            pending, self.rechecks = self.rechecks, []
            for until, descriptor in pending:
                if not self._check(descriptor, gone) and until > now:
                    self.rechecks.append((until, descriptor))
        for _ in range(EVENTS_PER_CALL):
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            descriptor = event["value"]
            if not self._check(descriptor, gone):
                self.rechecks.append((now + RECHECK_SECONDS, descriptor))
        return gone

    def _check(self, descriptor: int, gone: list[bytes]) -> bool:
        """Adds to `gone` the sessions of a closed descriptor; False if one is still open to its peer."""
        on = self._on.get(descriptor)
        if not on:
            return True
        behind = self._peer_of(descriptor)  # None: closed; another peer: the number was reused
        settled = True
        for routing_id, peer in list(on.items()):
            if peer != behind:
                gone.append(routing_id)
                self.forget(routing_id)
            else:
                settled = False
        return settled

    def close(self) -> None:
        self._router.disable_monitor()
        self.monitor.close(linger=0)
