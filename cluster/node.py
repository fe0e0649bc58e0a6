"""A broker's membership of a cluster: what server.py builds with --cluster.

It starts the NATS thread, waits until it is connected and knows the
buckets, and hands the core the seams that hold across brokers: names
(names.py), the rooms' shared order (log.py), and the memory of private
messages handed over here that await a receipt (a local one: the recipient
confirms on the broker it is on). The shell polls `socket` with its own
sockets, feeds the core what `take` returns, and hands the node what the
core sends to sessions on other brokers (`deliver`, `reply`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from zchat.broker.core import Deliver, Delivered, Fence, Input, Relayed, RelayStored, Undelivered
from zchat.broker.handed import LocalHandedOver
from zchat.broker.relay import LOG_POSITION
from zchat.broker.settings import BrokerSettings
from zchat.broker.store import Store
from zchat.cluster.link import Link, unpack
from zchat.cluster.log import ClusterLog, read_all
from zchat.cluster.names import ClusterNames, node_of
from zchat.cluster.subjects import BANS, FENCE, WATCHED
from zchat.common import protocol as p

log = logging.getLogger("zchat.cluster")

#: How long a broker waits at start for NATS and its buckets.
START_TIMEOUT = 15.0
EXTRA = "pip install 'zchat[cluster]'"
#: A batch of private messages for another broker goes once it holds this many, or bytes:
#: far below NATS's largest message (1 MiB by default), with one body of the largest size on top.
BATCH_MESSAGES = 500
#: Seconds between tries of the releases NATS did not confirm (names.py).
RETRY_RELEASES = 1.0
BATCH_BYTES = 256 * 1024

#: What the shell's send to one of its connections gives: "delivered", "busy" or "gone".
SendLocal = Callable[[bytes, list[bytes]], str]


class ClusterUnavailable(Exception):
    """The cluster cannot be joined: nats-py is missing, or NATS does not answer."""


class ClusterNode:
    def __init__(self, settings: BrokerSettings, context: zmq.Context[zmq.Socket[bytes]], node: str,
                 store: Store, send_local: SendLocal) -> None:  # fmt: skip
        try:
            from zchat.cluster.engine import Engine
        except ImportError as e:
            raise ClusterUnavailable(f"--cluster needs nats-py ({e}): {EXTRA}") from None
        self.node = node
        self.send_local = send_local
        self.link = Link(context)
        self.names = ClusterNames(self.link, node, settings.authorized)
        self.log = ClusterLog(self.link)
        self.handed = LocalHandedOver()
        #: Private messages for sessions on other brokers, waiting to hear what became of them:
        #: a batch per request, in the order of the answer's outcomes.
        self.delivering: dict[int, list[Deliver]] = {}
        #: Private messages for sessions on other brokers not yet sent, by node, with the
        #: bytes of their frames: sent by `send_deliveries`, once a wake-up.
        self.outgoing: dict[str, tuple[list[Deliver], list[list[bytes]], list[int]]] = {}
        self.engine = Engine(
            context,
            self.link.endpoint,
            list(settings.cluster),
            node,
            store.last_seq(LOG_POSITION),
            settings.replicas,
        )
        self.engine.start()
        self._wait_ready(settings)
        #: Since when this broker is fenced (time.monotonic), None while it holds its lease.
        self.fenced_at: float | None = None
        self._lapses = 0
        #: Why the NATS thread failed once the broker was serving, if it did.
        self.failure: str | None = None
        self._retried = 0.0  # when failed releases were last sent again
        #: Addresses other brokers turned away for flooding, with until when: the shell's gate's.
        self._banned: list[tuple[str, float]] = []

    @property
    def socket(self) -> zmq.Socket[bytes]:
        return self.link.socket

    def _wait_ready(self, settings: BrokerSettings) -> None:
        synced: set[str] = set()
        deadline = time.monotonic() + START_TIMEOUT
        ready = False
        while not (ready and synced >= set(WATCHED)):
            if time.monotonic() > deadline:
                self.close()
                raise ClusterUnavailable(f"NATS at {','.join(settings.cluster)} did not answer within "
                                         f"{START_TIMEOUT:g} s")  # fmt: skip
            if not self.link.socket.poll(100):
                continue
            parts = unpack(self.link.socket.recv())
            if parts[0] == "ready":
                ready = True
            elif parts[0] == "failed":
                self.close()
                raise ClusterUnavailable(
                    f"cannot join the cluster at {','.join(settings.cluster)}: {parts[1]}"
                )
            elif parts[0] == "synced":
                synced.add(parts[1])
            else:
                self.link.inbox.append(parts)  # the log's first events: once the core is there
        log.info("node %s joined the cluster at %s (%d online elsewhere)", self.node,
                 ",".join(settings.cluster), len(self.names.remote))  # fmt: skip

    def lease(self, now: float) -> Fence | None:
        """What the core must hear of the lease, asked at every wake-up before anything else
        is handled: Fence(True) once the last renewal that worked began more than FENCE ago,
        or one came that late (the process was stopped, NATS away); Fence(False) once a
        renewal begun after the fence has worked. None: nothing changed."""
        engine = self.engine
        lapsed = engine.lapses != self._lapses
        self._lapses = engine.lapses
        if self.fenced_at is None:
            late = now - engine.renewed_at
            if not (lapsed or late > FENCE):
                return None
            self.fenced_at = now
            reason = f"no renewal of its lease for {late:.1f} s" if late > FENCE else "its lease lapsed"
            log.warning("node %s fenced: %s", self.node, reason)
            return Fence(True, time.time(), reason)
        if lapsed or engine.renewed_at <= self.fenced_at:
            return None
        self.fenced_at = None
        log.warning("node %s holds its lease again", self.node)
        return Fence(False, time.time())

    def gone(self) -> str | None:
        """Why the NATS thread is no more (it said it failed, or it ended), None while it
        serves: asked at every wake-up. A broker without it cannot serve its part of the
        cluster, nor get its lease back: it stops, and its clients go to the others."""
        if self.failure is None and not self.engine.is_alive():
            self.failure = "the NATS thread ended"
        return self.failure

    @property
    def changed(self) -> bool:
        """Whether the sessions of other brokers changed since last asked (WHO is made anew)."""
        changed, self.names.changed = self.names.changed, False
        return changed

    def take(self) -> list[Input]:
        """Carry out what the NATS thread sent; what the core must hear of it, in order."""
        inputs: list[Input] = []
        for parts in self.link.drain():
            kind = parts[0]
            if kind == "log":  # a batch's entries are read in one wake-up, and so kept in one commit
                inputs.extend(Relayed(entry, parts[1]) for entry in read_all(parts[2], parts[3]))
            elif kind == "answer":
                self._answer(parts[1], parts[2], parts[3], inputs)
            elif kind == "kv" and parts[1] == BANS:
                self._ban_seen(parts[2], parts[3])
            elif kind == "kv":
                self.names.seen(*parts[1:])
            elif kind == "deliver":
                self._deliver_here(parts[1], parts[2])
            elif kind == "reply":
                self._reply_here(parts[1], parts[2])
            elif kind == "failed":
                self.failure = parts[1]
        # Others are judged dead only while this broker's own view is fresh: woken from a
        # stop, every lease it knows looks old, its own too (it is fenced first, server.py).
        now = time.monotonic()
        own = self.names.lease_seen.get(self.node)
        if self.fenced_at is None and own is not None and now - own < FENCE:
            self.names.bury(now)
        if self.names.unreleased and now - self._retried > RETRY_RELEASES:
            self._retried = now
            self.names.retry_releases()
        return inputs

    # --- flood control across brokers --------------------------------------------------

    def ban(self, address: str, until: float) -> None:
        """This broker turned a flooder's address away until `until` (wall clock): so do the
        others, so that the flooder cannot go on through another broker (PROTOCOL.md 8)."""
        entry = msgpack.packb({"node": self.node, "until": until})
        self.link.send("ban", 0, address.encode().hex(), entry)

    def banned(self) -> list[tuple[str, float]]:
        """The addresses other brokers turned away since last asked, with until when."""
        banned, self._banned = self._banned, []
        return banned

    def _ban_seen(self, key: str, value: bytes | None) -> None:
        if value is None:
            return  # expired (the bucket's TTL): the gate forgets it by its own end
        try:
            entry = msgpack.unpackb(value)
            node, until, address = entry["node"], float(entry["until"]), bytes.fromhex(key).decode()
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            log.warning("an unreadable ban in %s: %s", BANS, e)
            return
        if node != self.node and until > time.time():
            self._banned.append((address, until))

    def _answer(self, number: int, ok: bool, value: Any, inputs: list[Input]) -> None:
        if self.names.releasing and self.names.released(number, ok, value):
            inputs.extend(self.names.verdicts())
            if not ok:
                log.warning("a released name stays in the cluster for now: %s", value)
            return
        waiting = self.log.waiting.pop(number, None)
        if waiting is not None:
            if not ok:
                log.warning("%d messages could not be stored in the log: %s", len(waiting), value)
            inputs.extend(RelayStored(w, ok) for w in waiting)
            return
        batch = self.delivering.pop(number, None)
        if batch is not None:
            outcomes = value if ok and isinstance(value, list) and len(value) == len(batch) else None
            now = time.time()
            for i, delivery in enumerate(batch):
                outcome = outcomes[i] if outcomes is not None else "gone"
                if outcome == "delivered":
                    inputs.append(Delivered(delivery))
                else:  # gone, or NATS could not ask: the mailbox keeps it
                    inputs.append(Undelivered(delivery, outcome == "busy", now))

    # --- private messages and replies for sessions on other brokers ---------------

    def deliver(self, delivery: Deliver) -> None:
        """A private message for a session on another broker: sent with the others of the
        wake-up for that broker (`send_deliveries`); its outcome comes back from `take`."""
        where = node_of(delivery.peer)
        assert where is not None
        frames = p.encode(delivery.message)
        batch = self.outgoing.get(where[0])
        if batch is None:
            batch = self.outgoing[where[0]] = ([], [], [0])
        batch[0].append(delivery)
        batch[1].append(frames)
        batch[2][0] += sum(len(f) for f in frames)
        if batch[2][0] >= BATCH_BYTES or len(batch[0]) >= BATCH_MESSAGES:
            self._send_batch(where[0])

    def send_deliveries(self) -> None:
        """Send what `deliver` gathered: one request per broker, answered with an outcome each."""
        for node in list(self.outgoing):
            self._send_batch(node)

    def _send_batch(self, node: str) -> None:
        deliveries, frames, _ = self.outgoing.pop(node)
        self.delivering[self.link.request("deliver", node, frames)] = deliveries

    def reply(self, peer: bytes, event: p.ServerEvent) -> None:
        """Anything else for a session on another broker (a RECEIPT, REPLACED): sent, not followed."""
        where = node_of(peer)
        assert where is not None
        self.link.send("reply", 0, where[0], where[1], p.encode(event))

    def _deliver_here(self, asked: int, batch: list[list[bytes]]) -> None:
        """Private messages from another broker for sessions here: an outcome each, in order."""
        outcomes = []
        for frames in batch:
            outcome = "gone"
            try:
                message = p.decode_event(frames)
            except p.ProtocolError:
                message = None
            if isinstance(message, p.Message):
                key = p.name_key(message.target)
                session = self.names.local.get(key)
                if session is not None:
                    outcome = self.send_local(session.peer, frames)
                    if outcome == "delivered":  # its receipt is confirmed here, where the recipient
                        # is, and it leaves the mailbox (the sender's broker puts it there, KeptLive)
                        self.handed.add((key, p.name_key(message.sender), message.msg_id), True)
            outcomes.append(outcome)
        self.link.send("delivered", 0, asked, outcomes)

    def _reply_here(self, key: str, frames: list[bytes]) -> None:
        # A REPLACED may come after the watch said the session moved to that broker.
        session = self.names.local.get(key) or self.names.moved.pop(key, None)
        if session is not None:
            self.send_local(session.peer, frames)

    def close(self) -> None:
        if self.engine.is_alive():
            self.log.flush()  # what the last wake-up relayed, if anything
            self.link.stop()  # its end may be closed already: then it is ending anyway
            self.engine.join(5)
        self.link.close()
