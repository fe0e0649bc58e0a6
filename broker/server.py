"""The broker's ZeroMQ shell: a ROUTER and a PUB socket around BrokerCore.

It only receives, decodes, feeds the engine its inputs and carries out its
effects, encoded with protocol.py's encode() alone; what becomes of each send
goes back in as one more input. It says when to flush (its batching: every
FLUSH_EVERY messages and at the end of each wake-up) and when time passes.
One thread owns both sockets. A command whose handling fails is answered with
an ERROR; the broker goes on.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import zmq

from zchat.broker.core import (
    Blocked,
    BrokerCore,
    Command,
    Deliver,
    Delivered,
    Disconnected,
    Effect,
    Failed,
    Flush,
    Hangup,
    Input,
    Publish,
    Reply,
    Shutdown,
    Tick,
    Unblocked,
    Undelivered,
    Unreadable,
    Watched,
)
from zchat.broker.gate import UNNAMED_REFUSAL, Gate
from zchat.broker.hangup import address_of, cut, take_hold
from zchat.broker.liveness import ConnectionWatch
from zchat.broker.measures import Histogram
from zchat.broker.presence import LobbyHold, packed
from zchat.broker.settings import BrokerSettings
from zchat.broker.store import Store, StoreFailed, open_store
from zchat.cluster.names import REMOTE
from zchat.cluster.node import ClusterNode, ClusterUnavailable
from zchat.common import protocol as p
from zchat.common.heartbeat import set_heartbeats
from zchat.common.jsonlog import fields
from zchat.common.keys import KeyPair
from zchat.common.limits import raise_open_files, shortfall

if TYPE_CHECKING:
    from zchat.broker.metrics import MetricsServer

__all__ = [
    "BrokerServer",
    "BrokerSettings",
    "ClusterUnavailable",
    "advertisable",
    "advertised",
    "endpoint",
    "receive",
    "send",
]

log = logging.getLogger("zchat.broker")

#: Messages handled per poll wake-up before timers get a look in.
DRAIN_BATCH = 1000
#: Within a wake-up, store, publish and acknowledge this often: publishes wait
#: for the store, and should not wait for a whole batch (about 2 ms at most).
FLUSH_EVERY = 100
#: How long sockets may keep flushing at exit.
LINGER_MS = 500
#: Connections the kernel queues for each listening socket until libzmq accepts them (the
#: kernel caps it at net.core.somaxconn). At libzmq's 100, the 4,000 connections of 2,000
#: clients back after a restart overflowed the queue; a dropped handshake is retried by the
#: client's kernel after 1 s, then 2 s more: most of a restart's tail (docs/BENCHMARKS.md).
LISTEN_BACKLOG = 4096
#: Descriptors a client costs: its two TCP connections, commands and broadcasts.
FILES_PER_CLIENT = 2
#: Longest wait in poll, so that signals and the sweep (stuck clients, retention) are never late.
POLL_MS = 100
#: Container allocations between two young collections of Python's cyclic GC (its default,
#: 700, is a few messages' worth). At the default, what lives a few milliseconds (a message
#: waiting for its commit or its PubAck) outlived two young collections and filled the old
#: generation, whose full scans then came every few hundred ms in a cluster's broker and
#: took up to 60 ms with 100,000 objects: the tail of a broadcast's latency there
#: (docs/CLUSTER.md). What the broker makes at its start is frozen: never scanned again.
GC_YOUNG = 50_000
#: Room on top of the body limit for the other frames, for libzmq's backstop.
FRAME_OVERHEAD = 4096
#: A flooder's connection is cut this long after its last ERROR is sent, so
#: that the ERROR (saying why) reaches it first.
HANGUP_DELAY = 0.05
#: Where libzmq asks its ZAP handler (RFC 27), and the domain that makes it ask for plain connections too.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"zchat"

# Plain ints: pyzmq's flag enums cost microseconds per operation on the hot
# path, and send_multipart/recv_multipart use them for every frame.
NOBLOCK = int(zmq.NOBLOCK)
# The compiled methods under pyzmq's Python wrappers: half the cost per frame.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
T = TypeVar("T")
#: ZAP requests answered per wake-up, so that a storm of connections cannot hold up the rest.
ZAP_BATCH = 100
MORE_NOBLOCK = int(zmq.SNDMORE) | NOBLOCK
#: Makes a NamedTuple from a tuple of all its fields, in half the time of the class's
#: own __new__: for the inputs every message brings.
_make = tuple.__new__


def receive(sock: zmq.Socket[bytes]) -> tuple[zmq.Frame, list[bytes]]:
    """One message from the ROUTER: (routing id frame, other frames). Raises zmq.Again.

    The routing id comes as a frame: it carries the message's properties
    (User-Id under CURVE, and the connection it came on, for a hangup).
    """
    first = frame = _recv(sock, NOBLOCK, False)
    frames = []
    while frame.more:  # the parts of a message arrive together: no waiting here
        frame = _recv(sock, NOBLOCK, False)
        frames.append(frame.bytes)
    return first, frames


def send(sock: zmq.Socket[bytes], first: bytes, frames: list[bytes]) -> None:
    """Send `first` then `frames` as one message, without blocking.

    A ROUTER with mandatory routing fails on the first frame (zmq.Again: queue
    full; EHOSTUNREACH: peer gone), so nothing is half sent.
    """
    _send(sock, first, MORE_NOBLOCK)
    for frame in frames[:-1]:
        _send(sock, frame, MORE_NOBLOCK)
    _send(sock, frames[-1], NOBLOCK)


def publish(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """Send `frames` (topic first) as one message on the PUB, without blocking."""
    for frame in frames[:-1]:
        _send(sock, frame, MORE_NOBLOCK)
    _send(sock, frames[-1], NOBLOCK)


def endpoint(host: str, port: int) -> str:
    """A tcp endpoint for host and port; port 0 lets the system choose."""
    shown = f"[{host}]" if ":" in host else host
    return f"tcp://{shown}:{port if port else '*'}"


#: A host name as getaddrinfo takes it (Docker's service names may hold '_').
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")


def advertisable(endpoint: str) -> str:
    """`endpoint` if WELCOME may advertise it (--advertise-pub), else ValueError saying why.

    A client connects its SUB to it as given (PROTOCOL.md 5.1), so it must be
    an address a client can reach: tcp://HOST:PORT with a host name, an IPv4
    address, an [IPv6] address, or '*' for the host the client reached the
    ROUTER on; not a wildcard address, port 0 or a source address.
    """
    scheme, sep, rest = endpoint.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or not colon:
        raise ValueError(f"{endpoint!r} is not tcp://HOST:PORT")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{endpoint!r}: the port must be a number from 1 to 65535")
    if host == "*":
        return endpoint
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        if bracketed or not HOST_NAME.fullmatch(host) or host.replace(".", "").isdigit():
            raise ValueError(f"{endpoint!r}: {host!r} is not a host name, an IP address or '*'") from None
        return endpoint
    if bracketed != (address.version == 6):
        raise ValueError(f"{endpoint!r}: an IPv6 address, and only one, goes in brackets")
    if address.is_unspecified:
        raise ValueError(
            f"{endpoint!r}: clients cannot connect to {host}; tcp://*:{port} means the host each client "
            "reached the broker on"
        )
    return endpoint


def advertised(host: str, bound: str, given: str | None = None) -> str:
    """What WELCOME tells clients: `given` if set (--advertise-pub), else the
    bound endpoint, with '*' as host when bound to every interface."""
    if given is not None:
        return given
    if host in ("0.0.0.0", "*", "::", ""):
        return "tcp://*:" + bound.rsplit(":", 1)[1]
    return bound


class BrokerServer:
    def __init__(self, settings: BrokerSettings, store: Store | None = None) -> None:
        """`store`: one already open instead of settings.store (tests)."""
        self.settings = settings
        if settings.advertise_pub is not None:
            advertisable(settings.advertise_pub)  # fails before the store is opened or a port taken
        if store is None:
            store = open_store(settings.store)  # first: a bad store fails before any port is taken
        #: The open-file limit now, and what --max-clients wants (said at start when short).
        self.open_files = raise_open_files(FILES_PER_CLIENT * settings.max_clients)
        self.context = zmq.Context(io_threads=settings.io_threads)
        # The ZAP handler first: libzmq asks it about every connection, plain or encrypted.
        self.gate = Gate(settings.ban_exempt)
        self.zap = self.context.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        self.router = self.context.socket(zmq.ROUTER)
        self.pub = self.context.socket(zmq.PUB)
        if settings.curve is not None:
            self._encrypt(settings.curve)
        # Mandatory routing: a send to a vanished peer raises instead of
        # dropping silently, so the sender can be told.
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, settings.max_body + FRAME_OVERHEAD)
        # Liveness: libzmq pings every connection and cuts a silent one; the watch says
        # whose connection closed (PROTOCOL.md 7). No PING of the application is needed.
        set_heartbeats(self.router, settings.heartbeat_ms, settings.timeout_ms)
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.LINGER, LINGER_MS)
            sock.setsockopt(zmq.SNDHWM, settings.hwm)
            sock.setsockopt(zmq.RCVHWM, settings.hwm)
            sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
            if ":" in settings.host:
                sock.setsockopt(zmq.IPV6, 1)
        # Plain connections ask ZAP only with a domain, each keeping a pipe to the
        # handler for its life (about 10 KiB): so only the ROUTER's, and only
        # with bans on (libzmq fixes it at bind, not at the first ban).
        asking: tuple[zmq.Socket[bytes], ...] = ()
        if settings.curve is not None:
            asking = (self.router, self.pub)
        elif settings.rate > 0 and settings.cool_off > 0:  # without a rate nobody is thrown out
            asking = (self.router,)
        for sock in asking:
            sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        self.watch = ConnectionWatch(self.router)  # before any connection can come
        self.router.bind(endpoint(settings.host, settings.port))
        self.pub.bind(endpoint(settings.host, settings.pub_port))
        self.router_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        #: With --cluster: the seams shared with the other brokers, and the link to NATS.
        self.cluster: ClusterNode | None = None
        if settings.cluster:
            try:
                node = settings.node or self.router_endpoint[6:]
                self.cluster = ClusterNode(settings, self.context, node, store, self._send_local)
            except ClusterUnavailable:
                self.watch.close()
                for sock in (self.router, self.pub, self.zap):
                    sock.close(0)
                self.context.term()
                raise
        cluster = self.cluster  # the seams shared with the other brokers; none for a broker alone
        self.core = BrokerCore(
            settings, advertised(settings.host, self.pub_endpoint, settings.advertise_pub), store=store,
            names=cluster.names if cluster else None, handed=cluster.handed if cluster else None,
            relay=cluster.log if cluster else None,
        )  # fmt: skip
        self.core.failures.store_name = self._store_name()
        self._stopping = False
        #: What the process exits with once run() returns: 1 when it stopped on a failure.
        self.exit_status = 0
        #: The routing id frame of the message being handled: a Hangup cuts its connection.
        self._current: zmq.Frame | None = None
        #: Connections of flooders, to cut once their last ERROR is out: (when, connection).
        self._hangups: list[tuple[float, socket.socket]] = []
        #: From a wake-up to each flush of what it read (metrics.py reads it).
        self.handoff = Histogram()
        #: The lobby's messages during a presence storm (presence.py), held a moment.
        self.hold = LobbyHold(settings.presence_hold)
        self.metrics: MetricsServer | None = None
        if settings.metrics is not None:
            from zchat.broker.metrics import MetricsServer

            self.core.rooms_in_use = len(store.room_sizes())  # counted once, as the core would at an ENTER
            try:
                self.metrics = MetricsServer(self, settings.metrics)
            except BaseException:  # its port taken, or no prometheus_client: nothing left open
                self.close()
                raise

    def _encrypt(self, curve: KeyPair) -> None:
        """CURVE on both sockets, before they bind: nothing ever goes out in plain text.

        The ZAP handler (gate.py) admits any client key; ZeroMQ then puts it
        on every message as its User-Id, and the core binds names to keys
        from there (SECURITY.md).
        """
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Ask the loop to end; safe to call from a signal handler."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)

    def run(self) -> None:
        gc.freeze()
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        curve = self.settings.curve
        if curve is not None:
            log.info("broker public key (clients give it with --server-key): %s", curve.public.decode())
        log.info(
            "zchat broker listening: commands on %s, broadcasts on %s; traffic is %s",
            self.router_endpoint, self.pub_endpoint,
            "encrypted (CURVE)" if curve is not None else "plain (not encrypted)",
            extra=fields("listening", commands=self.router_endpoint, broadcasts=self.pub_endpoint,
                         encrypted=curve is not None),
        )  # fmt: skip
        if self.metrics is not None:
            log.info(
                "metrics for Prometheus at %s",
                self.metrics.url,
                extra=fields("metrics", url=self.metrics.url),
            )
        if self.settings.advertise_pub is not None:
            log.info("clients are told to connect to broadcasts at %s", self.settings.advertise_pub)
        s = self.settings
        log.info("%s", self._flood_control_line(),
                 extra=fields("flood_control", rate=s.rate, burst=s.burst, cool_off=s.cool_off))  # fmt: skip
        log.info("%s", self._store_line(), extra=fields("store", path=self._store_name()))
        files, wanted = self.open_files
        if files < wanted:
            log.warning("%s", shortfall(files, FILES_PER_CLIENT, s.max_clients, "clients", "--max-clients"),
                        extra=fields("open_files", limit=files, wanted=wanted))  # fmt: skip
        # Twice per the shorter of the interval and the PONG's margin: stuck sessions and
        # unwatched ones are found within their bounds (PROTOCOL.md 7.1, 8).
        s = self.settings
        sweep_every = min(s.heartbeat_ms, s.timeout_ms - s.heartbeat_ms) / 2000
        next_sweep = time.time() + sweep_every
        router, core, handoff = self.router, self.core, self.handoff
        keyed = self.settings.curve is not None  # names are bound to keys only with CURVE
        put_off = False  # the store has work waiting for an idle moment
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self.zap, zmq.POLLIN)
        cluster = self.cluster
        if cluster is not None:
            poller.register(cluster.socket, zmq.POLLIN)
        closed = self.watch.monitor
        poller.register(closed, zmq.POLLIN)
        try:
            while not self._stopping:
                ready = dict(poller.poll(0 if put_off else self.hold.wait_ms(time.monotonic(), POLL_MS)))
                self._lease(cluster)  # before anything it woke for
                if self.zap in ready:
                    self._answer_zap()
                if router in ready:
                    # One time for the whole wake-up: messages handled together
                    # are accepted together, and their ACKs can be combined.
                    now = time.time()
                    unflushed = 0  # messages read since the last flush: the hand-off histogram's weight
                    for handled in range(1, DRAIN_BATCH + 1):
                        try:
                            first, frames = receive(router)
                        except zmq.Again:
                            break
                        self._current = first
                        self._handle(first, frames, now, str(first.get("User-Id")) if keyed else "")
                        unflushed += 1
                        if handled % FLUSH_EVERY == 0:
                            self._feed(Flush(now))
                            handoff.observe(time.time() - now, unflushed)
                            unflushed = 0
                    self._current = None
                    self._feed(Flush(now))
                    if unflushed:
                        handoff.observe(time.time() - now, unflushed)
                if closed in ready or self.watch.rechecks:  # after the messages that came before
                    self._disconnected()
                    self._feed(Flush(time.time()))
                elif not ready:  # idle: the store does what it put off (indexing for search)
                    put_off = self._guarded("indexing for search", False, core.store.catch_up)
                    self._feed(Flush(time.time()))
                if cluster is not None and (cluster.socket in ready or cluster.link.inbox):
                    self._guarded("the cluster's news", None, self._from_cluster, cluster)
                now = time.time()
                self._lease(cluster)  # after `now`: a stop past it is seen here, not by the sweep
                if self._hangups:
                    self._hang_up_due(now)
                if now >= next_sweep:
                    self._guarded("the liveness sweep", None, self._feed, Tick(now))
                    self._feed(Flush(now))
                    self.gate.forget_expired(now)
                    self._guarded("retention", None, core.maintain, now)
                    # A busy broker is never idle: index a batch for search now and then anyway.
                    put_off = self._guarded("indexing for search", False, core.store.catch_up) or put_off
                    self._feed(Flush(now))
                    next_sweep = now + sweep_every
                if cluster is not None and cluster.outgoing:  # this wake-up's, a request per broker
                    cluster.send_deliveries()
                if self.hold.held:
                    self._carry_out(self.hold.due(time.monotonic()))
                if cluster is not None:  # what this wake-up put in the log, in one batch
                    cluster.log.flush()
            self._carry_out(self.hold.release())  # before the lobby's SHUTDOWN
            log.info("shutting down: telling %d clients", len(core.by_peer))
            self._guarded("the shutdown notice", None, self._feed, Shutdown(time.time()))
        finally:
            self.close()

    def _lease(self, cluster: ClusterNode | None) -> None:
        """In a cluster: fenced once the lease could not be renewed in time (docs/CLUSTER.md);
        stopped, exit status 1, once the NATS thread is gone (a supervisor starts it again)."""
        if cluster is None:
            return
        if (fence := cluster.lease(time.monotonic())) is not None:
            self._guarded("fencing", None, self._feed, fence)
        if not self._stopping and (failure := cluster.gone()) is not None:
            log.error("the cluster link failed (%s): stopping; its clients go to the other brokers", failure)
            self.exit_status = 1
            self._stopping = True

    def _from_cluster(self, cluster: ClusterNode) -> None:
        inputs = cluster.take()
        if cluster.changed:
            self.core.online_names = None  # someone came or went on another broker: WHO anew
        for address, until in cluster.banned():  # a flooder turned away by another broker
            if self.gate.ban(address, until):
                self.core.counters["banned.elsewhere"] += 1
                log.info("%s is turned away until %s: a flooder on another broker", address,
                         time.strftime("%H:%M:%S", time.localtime(until)))  # fmt: skip
        for event in inputs:
            self._guarded("an event of the cluster", None, self._feed, event)
        self._feed(Flush(time.time()))

    def _send_local(self, peer: bytes, frames: list[bytes]) -> str:
        """Frames from another broker for one of this broker's connections: what became of them."""
        try:
            send(self.router, peer, frames)
        except zmq.Again:
            return "busy"
        except zmq.ZMQError:
            return "gone"
        return "delivered"

    def _handle(self, first: zmq.Frame, frames: list[bytes], now: float, key: str) -> None:
        """One message from a client, decoded and fed to the core; a failure answers it alone."""
        peer = first.bytes
        msg_id = b""
        try:
            event: Input
            try:
                command = p.decode_command(frames)
            except p.ProtocolError as e:
                if e.code == p.Code.BAD_VERSION and len(frames) > 1:
                    self._answer_old_version(peer, e, now)
                    return
                event = Unreadable(peer, e, now)
            else:
                msg_id = command.msg_id
                if type(command) is p.Hello:
                    self._hello(first, command, now, key)
                    return
                event = _make(Command, (peer, command, now, key))
            self.apply(self.core.handle(event))
        except Exception as e:  # a fault outside the core's handlers (they have their own guard)
            self._guarded("an error reply", None, self._feed, Failed(peer, msg_id, e, now))

    def _hello(self, first: zmq.Frame, hello: p.Hello, now: float, key: str) -> None:
        """A session may start on this connection: note it, so that its closing is known."""
        peer = first.bytes
        self.watch.note(first)
        self.apply(self.core.handle(Command(peer, hello, now, key)))
        if self.watch.noted(peer):  # else (closed already, not TCP) the core times it out
            self._feed(Watched(peer))

    def _disconnected(self) -> None:
        """Sessions whose connection libzmq closed (the peer hung up, or its heartbeats stopped)."""
        now = time.time()
        for peer in self.watch.closed():
            self._guarded("a disconnect", None, self._feed, Disconnected(peer, now))

    def _answer_old_version(self, peer: bytes, error: p.ProtocolError, now: float) -> None:
        """A ZCHAT/1 client: its refusal goes out in ZCHAT/1's framing, which it reads (PROTOCOL.md 10)."""
        for effect in self.core.handle(Unreadable(peer, error, now)):
            if type(effect) is Reply and effect.peer == peer and type(effect.event) is p.Error:
                refusal = effect.event
                old = p.encode_old_error(refusal.msg_id, p.Code(refusal.code), refusal.text)
                try:
                    send(self.router, peer, old)
                except zmq.ZMQError:  # gone, or not reading: nothing more to tell it
                    self.core.counters["dropped.unreachable"] += 1
            else:
                self.apply([effect])

    def _feed(self, event: Input) -> None:
        self.apply(self.core.handle(event))

    def _guarded(self, what: str, otherwise: T, work: Callable[..., T], *args: object) -> T:
        """Periodic work of the core or the store: a failure is logged and the broker goes on."""
        try:
            return work(*args)
        except StoreFailed as e:
            self.core.failures.store_failed(e)
        except Exception as e:
            self.core.failures.failed(what, e)
        return otherwise

    def _flood_control_line(self) -> str:
        """What an operator should know of flood control at start (SECURITY.md, limits)."""
        s = self.settings
        if s.rate <= 0:
            return "flood control off (--rate 0)"
        line = f"flood control: {s.rate:g} messages a second per client, bursts of {s.burst:g}"
        if s.cool_off <= 0:
            return line + "; flooders are disconnected (no cool-off)"
        exempt = ", ".join(s.ban_exempt) or "none"
        return line + f"; a flooder's address is turned away for {s.cool_off:g} s (exempt: {exempt})"

    def _store_name(self) -> str:
        path = self.settings.store
        return path if path == ":memory:" else os.path.abspath(path)

    def _store_line(self) -> str:
        """Where the store is, said at start: what survives a restart (README, --store)."""
        if self.settings.store == ":memory:":
            return "store :memory:: nothing is kept across restarts"
        return f"store {self._store_name()}: history, mailboxes and names are kept there"

    def apply(self, effects: list[Effect]) -> None:
        """Carry out the core's effects in order, encoded here and only here (the lobby's
        during a presence storm a moment later, in their order: presence.py)."""
        if self.hold.wanted(effects):
            effects = self.hold.filter(effects, time.monotonic())
        self._carry_out(effects)

    def _carry_out(self, effects: list[Effect]) -> None:
        for effect in packed(effects) if len(effects) > 1 else effects:
            kind = type(effect)
            if kind is Reply:
                self._send(effect.peer, effect.event)  # type: ignore[union-attr, arg-type]
            elif kind is Deliver:
                self._deliver(effect)  # type: ignore[arg-type]
            elif kind is Publish:
                # PUB never blocks: a subscriber whose queue is full loses
                # the message, and sees the gap in the sequence numbers.
                publish(self.pub, p.encode_published(effect))  # type: ignore[arg-type]
            else:
                assert isinstance(effect, Hangup)
                self._hang_up_later(effect)

    def _answer_zap(self) -> None:
        """Answer libzmq's questions about new connections (gate.py)."""
        now = time.time()
        for _ in range(ZAP_BATCH):
            try:
                request = self.zap.recv_multipart(NOBLOCK)
            except zmq.Again:
                return
            reply = self.gate.answer(request, now)
            self.zap.send_multipart(reply if reply is not None else UNNAMED_REFUSAL)

    def _hang_up_later(self, hangup: Hangup) -> None:
        """Turn the flooder's address away now, and cut its connection once its ERROR is out."""
        frame = self._current
        origin = self.watch.peer(hangup.peer)
        if frame is None or frame.bytes != hangup.peer:
            return  # not from a message of this peer's: no connection to name
        now = time.time()
        address = address_of(frame)
        banned = hangup.until > now and self.gate.ban(address, hangup.until)
        if banned:
            self.core.counters["banned"] += 1
            if self.cluster is not None:
                self.cluster.ban(address, hangup.until)
        # The cut needs the connection known for certain; what it sends is ignored anyway.
        held = take_hold(frame, origin) if origin is not None else None
        if held is not None:
            self._hangups.append((now + HANGUP_DELAY, held))
        log.info("flooder's connection from %s %s; the address is %s", address,
                 "to be cut" if held is not None else "already gone",
                 "turned away until its cool-off ends" if banned else "not turned away (exempt, or no cool-off)")  # fmt: skip

    def _hang_up_due(self, now: float) -> None:
        due = [held for when, held in self._hangups if when <= now]
        self._hangups = [(when, held) for when, held in self._hangups if when > now]
        for held in due:
            cut(held)

    def _deliver(self, delivery: Deliver) -> None:
        """A private message: what becomes of it is the core's next input."""
        if self.cluster is not None and delivery.peer.startswith(REMOTE):
            self.cluster.deliver(delivery)  # its outcome comes back from the other broker
            return
        try:
            send(self.router, delivery.peer, p.encode(delivery.message))
        except zmq.Again:
            outcome: Input = Undelivered(delivery, True, time.time())
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            outcome = Undelivered(delivery, False, time.time())
        else:
            outcome = _make(Delivered, (delivery,))
        effects = self.core.handle(outcome)
        if effects:  # a delivered one's ACK waits for the flush: usually none
            self.apply(effects)

    def _send(self, peer: bytes, event: p.ServerEvent) -> None:
        core = self.core
        if self.cluster is not None and peer.startswith(REMOTE):
            self.cluster.reply(peer, event)
            return
        try:
            send(self.router, peer, p.encode(event))
        except zmq.Again:
            core.counters["dropped.busy"] += 1
            core.handle(Blocked(peer, time.time()))  # a stuck client is dropped by the sweep
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            # A reply to a peer that is gone: its disconnect ends the session.
            core.counters["dropped.unreachable"] += 1
        else:
            if core.stuck:  # only then may it be one that reads again
                core.handle(Unblocked(peer))

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        try:
            self.core.store.close()
        except Exception as e:  # StoreFailed too: what it could not write is lost, and said so
            log.error("the store could not be closed cleanly: %s", e)
        if self.cluster is not None:
            self.cluster.close()
        for _, held in self._hangups:
            held.close()
        self.watch.close()
        self.router.close()
        self.pub.close()
        self.zap.close()
        self.context.term()
        if self.gate.turned_away:
            self.core.counters["refused.handshake"] = self.gate.turned_away
        counted = dict(sorted(self.core.counters.items()))
        counters = ", ".join(f"{k}={v}" for k, v in counted.items())
        log.info("broker stopped (%s)", counters or "no traffic", extra=fields("stopped", **counted))
