"""The NATS thread: nats-py on its own asyncio loop, the other end of the PAIR.

It carries out what the broker thread asks (link.py) and forwards what the
buckets' watchers see. Requests are served as tasks, so that calls from the
broker pipeline rather than wait for each other. Nothing here decides
anything about the chat: it only talks to JetStream.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
import zmq
import zmq.asyncio
from nats.aio.msg import Msg
from nats.js import api
from nats.js.kv import KeyValue

from zchat.cluster import subjects
from zchat.cluster.figures import ClusterFigures
from zchat.cluster.link import PAIR_HWM, pack, unpack
from zchat.cluster.subjects import (
    BAN_TTL,
    BANS,
    DELIVER,
    LEASE,
    LEASE_RENEW,
    LEASES,
    LOG,
    LOG_SUBJECTS,
    NAMES,
    OWNERS,
    node_subject,
)

log = logging.getLogger("zchat.cluster")

#: Seconds between the log consumer's idle heartbeats (the default, 5, left a broker deaf to
#: the log for 10-20 s after the nats-server serving it died).
LOG_HEARTBEAT = 1.0

#: The headers of a KV entry that say it was deleted (nats-py's KV reads them so too).
KV_OPERATION = "KV-Operation"
MARKER_REASON = "Nats-Marker-Reason"

#: JetStream's answers while a NATS cluster forms: no suitable peers for the replicas (10005),
#: JetStream not available yet (10008).
NOT_READY = {10005, 10008}

#: Seconds until a renewal of the lease that failed is tried again (LEASE_RENEW after one that worked).
LEASE_RETRY = 0.25

#: Seconds a message may wait for its PubAck before its sender is refused.
RELAY_TIMEOUT = 5.0


class Unreachable(Exception):
    """No NATS server of the list could be reached at the start."""


#: The longest the first connection to NATS may take (the broker waits 15 s for the whole start).
FIRST_CONNECT = 10.0
#: Seconds between two looks at how far this broker's consumer is behind the log.
LAG_EVERY = 1.0


class Engine(threading.Thread):
    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        servers: list[str],
        node: str,
        position: int,
        replicas: int = 1,
    ) -> None:
        super().__init__(name="zchat-cluster", daemon=True)
        self.context = context
        self.endpoint = endpoint
        self.servers = servers
        self.node = node
        #: The last event of LOG the broker has: it reads on from the next.
        self.position = position
        #: Copies of the stream and buckets, when this broker is the one to create them.
        self.replicas = replicas
        self.buckets: dict[str, KeyValue] = {}
        self.watching: list[asyncio.Task[None]] = []
        #: Private messages from other brokers, waiting for the broker to say what became of them.
        self.asking: dict[int, Msg] = {}
        self._asked = 0
        #: When the last renewal of the lease that JetStream stored began (time.monotonic),
        #: and how many times a renewal came later than FENCE after it (a stopped process,
        #: NATS away). The broker thread reads both (plain values, under the GIL): they
        #: are what fences it (node.py), not a message that might wait behind others.
        self.renewed_at = 0.0
        self.lapses = 0
        #: What the metrics endpoint reads (figures.py).
        self.figures = ClusterFigures(position)

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException:  # the broker sees the thread gone (node.py) and stops
            log.exception("the NATS thread ended")

    async def _main(self) -> None:
        self.socket = zmq.asyncio.Context.shadow(self.context).socket(zmq.PAIR)
        self.socket.setsockopt(zmq.LINGER, 0)
        for option in (zmq.SNDHWM, zmq.RCVHWM):
            self.socket.setsockopt(option, PAIR_HWM)
        self.socket.connect(self.endpoint)
        try:
            await self._serve()
        except Unreachable as e:  # said by the broker as it stops: no traceback
            self._tell("failed", str(e))
        except Exception as e:
            log.exception("the cluster link failed")
            self._tell("failed", str(e))
        finally:
            self.socket.close()

    def _tell(self, *parts: Any) -> None:
        self.socket.send(pack(*parts))

    async def _serve(self) -> None:
        # Once joined, NATS down is a fault to ride out, not the end (reconnects without end);
        # the first connection is bounded, so that a wrong URL ends the broker's start clearly.
        try:
            self.nc = await asyncio.wait_for(
                nats.connect(
                    self.servers,
                    name=self.node,
                    connect_timeout=2,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                ),
                FIRST_CONNECT,
            )
        except (TimeoutError, asyncio.TimeoutError):
            raise Unreachable(f"no NATS server answered within {FIRST_CONNECT:g} s") from None
        self.figures.connected = 1
        self.js = self.nc.jetstream()
        deadline = time.monotonic() + FIRST_CONNECT
        while True:
            try:
                await self._make_buckets()
                break
            except nats.js.errors.APIError as e:
                # A NATS cluster starting with this broker: its servers may not all be known to
                # its JetStream leader yet (no peers to place the replicas on), or it has none.
                if e.err_code not in NOT_READY or time.monotonic() > deadline:
                    raise
                log.info("JetStream is not ready yet (%s); trying again", e.description)
                await asyncio.sleep(0.25)
        started = time.monotonic()
        await self.buckets[LEASES].put(self.node.encode().hex(), b"")
        self.renewed_at = started
        await self._watch(LEASES)
        self.watching.append(asyncio.create_task(self._renew()))
        for bucket in (NAMES, OWNERS, BANS):
            await self._watch(bucket)
        await self.nc.subscribe(node_subject(self.node, DELIVER), cb=self._asked_to_deliver)
        await self.nc.subscribe(node_subject(self.node, "reply"), cb=self._told_to_reply)
        # Its heartbeats every second: nats-py makes the consumer anew after two missed (the
        # server holding it died, with replicas), and tries again as long as none come.
        await self.js.subscribe(
            LOG_SUBJECTS, stream=LOG, cb=self._logged, ordered_consumer=True, idle_heartbeat=LOG_HEARTBEAT,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                      opt_start_seq=self.position + 1),
        )  # fmt: skip
        self.watching.append(asyncio.create_task(self._measure_lag()))
        self._tell("ready")
        tasks: set[asyncio.Task[None]] = set()
        while True:
            parts = unpack(await self.socket.recv())
            if parts[0] == "stop":
                break
            task = asyncio.create_task(self._request(parts))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        await self.nc.drain()

    async def _make_buckets(self) -> None:
        """The buckets and the log, made or found as they are (the same configuration: no change)."""
        r = self.replicas
        for bucket in (NAMES, OWNERS):
            self.buckets[bucket] = await self.js.create_key_value(bucket=bucket, history=1, replicas=r)
        self.buckets[LEASES] = await self.js.create_key_value(bucket=LEASES, history=1, ttl=LEASE, replicas=r)
        self.buckets[BANS] = await self.js.create_key_value(bucket=BANS, history=1, ttl=BAN_TTL, replicas=r)
        await self.js.add_stream(
            name=LOG, subjects=[LOG_SUBJECTS], storage=api.StorageType.FILE, num_replicas=r
        )

    async def _error(self, error: Exception) -> None:
        """nats-py's errors (a server away, refused, a bad URL): one line each, no traceback."""
        log.warning("NATS: %s", error or type(error).__name__)

    async def _watch(self, bucket: str) -> None:
        """Forward every change of the bucket: ["kv", bucket, key, value or None, revision],
        and ["synced", bucket] once what was there at the start has come.

        The watch of nats-py's KeyValue with heartbeats every second (LOG_HEARTBEAT), as the
        log's consumer has: nats-py's own keeps the default 5 s, and so came back 10-20 s
        after the nats-server serving it died, past the 10 s in which every broker's WHO
        must agree. It is the same ordered consumer of the bucket's stream, each key's last
        value first, read the way nats-py reads its entries."""
        prefix = f"$KV.{bucket}."
        synced = False

        def sync() -> None:
            nonlocal synced
            if not synced:
                synced = True
                self._tell("synced", bucket)

        async def updated(msg: Msg) -> None:
            meta = msg.metadata
            operation = (msg.headers or {}).get(KV_OPERATION)
            reason = (msg.headers or {}).get(MARKER_REASON)  # nats-server 2.11+: an expiry's marker
            gone = operation in ("DEL", "PURGE") or reason in ("MaxAge", "Purge", "Remove")
            self._tell(
                "kv", bucket, msg.subject[len(prefix) :], None if gone else msg.data, meta.sequence.stream
            )
            if meta.num_pending == 0:
                sync()

        subscription = await self.js.subscribe(
            prefix + ">", stream=f"KV_{bucket}", cb=updated, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT, idle_heartbeat=LOG_HEARTBEAT,
        )  # fmt: skip
        # An empty bucket sends nothing: its consumer says there was nothing to read.
        if (await subscription.consumer_info()).num_pending == 0 and subscription.delivered == 0:
            sync()

    async def _request(self, parts: list[Any]) -> None:
        kind, number, *args = parts
        try:
            value = await REQUESTS[kind](self, *args)
        except Exception as e:
            if number:
                self._tell("answer", number, False, f"{type(e).__name__}: {e}")
            else:
                log.warning("cluster request %s failed: %s", kind, e)
            return
        if number:
            self._tell("answer", number, True, value)

    async def _get(self, bucket: str, key: str) -> int:
        """The key's revision, 0 if it is not there (never put, deleted, or expired)."""
        try:
            entry = await self.buckets[bucket].get(key)
        except nats.js.errors.NotFoundError:  # KeyNotFoundError, KeyDeletedError
            return 0
        return entry.revision or 0

    async def _create(self, bucket: str, key: str, value: bytes) -> int:
        """A claim: the key's revision, 0 if someone holds it already."""
        try:
            return await self.buckets[bucket].create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return 0

    async def _update(self, bucket: str, key: str, value: bytes, last: int) -> int:
        """A takeover: the new revision, 0 if the key changed since `last`."""
        try:
            return await self.buckets[bucket].update(key, value, last=last)
        except nats.js.errors.KeyWrongLastSequenceError:
            return 0

    async def _ban(self, key: str, value: bytes) -> None:
        """A flooder's address, turned away by every broker (node.py)."""
        await self.buckets[BANS].put(key, value)

    async def _kv_delete(self, bucket: str, key: str, last: int) -> bool:
        """A release, only of the revision this broker holds (a takeover elsewhere stays)."""
        try:
            await self.buckets[bucket].delete(key, last=last)
        except nats.js.errors.APIError as e:
            if e.err_code in (10071, 10164):  # changed meanwhile: not ours any more
                return False
            raise
        return True

    async def _relay(self, subject: str, payload: bytes) -> bool:
        """Into the log (a batch of entries, log.py), pipelined: answered when its PubAck comes,
        never awaited in line."""
        started = time.perf_counter()
        try:
            ack = await self.js.publish_async(subject, payload)
            # Unanswered past this, the senders are refused (508) and may resend with the same ids:
            # should the batch be stored after all, each broker drops the resends as it reads them.
            await asyncio.wait_for(ack, RELAY_TIMEOUT)
        except Exception:
            self.figures.publish_failed += 1
            raise
        self.figures.publish_time.observe(time.perf_counter() - started)
        return True

    async def _logged(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence.stream
        self.figures.delivered_seq = sequence
        self._tell("log", sequence, msg.subject, msg.data)

    async def _measure_lag(self) -> None:
        """How far this broker's consumer is behind the log: its last delivered sequence
        against the stream's last, and the age of the oldest message not yet delivered.
        Two small JetStream requests a second, the second only while behind."""
        figures = self.figures
        while True:
            await asyncio.sleep(LAG_EVERY)
            figures.connected = int(self.nc.is_connected)
            try:
                last = (await self.js.stream_info(LOG)).state.last_seq
                behind = max(0, last - figures.delivered_seq)
                waited = 0.0
                if behind:
                    oldest = await self.js.get_msg(LOG, seq=figures.delivered_seq + 1)
                    if oldest.time is not None:
                        waited = max(0.0, time.time() - oldest.time.timestamp())
            except Exception as e:  # NATS away: the last figures stand, and `connected` says why
                log.debug("could not measure the log's lag: %s", e)
                continue
            figures.stream_last_seq, figures.lag_messages, figures.lag_seconds = last, behind, waited

    async def _deliver(self, node: str, batch: list[list[bytes]]) -> list[str]:
        """Private messages for users on `node`, one request for all: what became of each there
        (delivered, busy, gone)."""
        try:
            answer = await self.nc.request(node_subject(node, DELIVER), pack(*batch), timeout=2)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return ["gone"] * len(batch)
        return unpack(answer.data)

    async def _asked_to_deliver(self, msg: Msg) -> None:
        self._asked += 1
        self.asking[self._asked] = msg
        self._tell("deliver", self._asked, unpack(msg.data))

    async def _delivered(self, asked: int, outcomes: list[str]) -> None:
        msg = self.asking.pop(asked, None)
        if msg is not None:
            await msg.respond(pack(*outcomes))

    async def _reply(self, node: str, key: str, frames: list[bytes]) -> None:
        await self.nc.publish(node_subject(node, "reply"), pack(key, *frames))

    async def _told_to_reply(self, msg: Msg) -> None:
        key, *frames = unpack(msg.data)
        self._tell("reply", key, frames)

    async def _renew(self) -> None:
        """This broker's lease, put again and again: the others count it alive while it is."""
        key = self.node.encode().hex()
        wait = LEASE_RENEW
        while True:
            await asyncio.sleep(wait)
            started = time.monotonic()
            if started - self.renewed_at > subjects.FENCE:
                # Counted before the renewal: the broker thread may look only after it
                # and must still see that the lease ran out meanwhile.
                self.lapses += 1
            try:
                await self.buckets[LEASES].put(key, b"")
            except Exception as e:  # NATS away: the lease runs out, and the others count this node dead
                self.figures.lease_renewals_failed += 1
                log.warning("could not renew the lease: %s", e)
                # Soon again: the bucket may be electing a leader (its nats-server died),
                # which takes some seconds, and the lease must be renewed before the fence.
                wait = LEASE_RETRY
                continue
            self.renewed_at = started
            wait = LEASE_RENEW

    async def _disconnected(self) -> None:
        self.figures.connected = 0
        log.warning("lost the connection to NATS; reconnecting")

    async def _reconnected(self) -> None:
        self.figures.connected = 1
        log.info("connected to NATS again at %s", self.nc.connected_url)


# Requests served by the NATS thread: ["kind", call number (0: no answer), args...].
REQUESTS: dict[str, Callable[..., Awaitable[Any]]] = {
    "get": Engine._get,
    "create": Engine._create,
    "update": Engine._update,
    "delete": Engine._kv_delete,  # not _delete: threading.Thread has its own
    "ban": Engine._ban,
    "relay": Engine._relay,
    "deliver": Engine._deliver,
    "delivered": Engine._delivered,
    "reply": Engine._reply,
}
