"""The broker's ZeroMQ shell: a ROUTER and a PUB socket around BrokerCore.

It only receives, asks the core, and sends. One thread owns both sockets.
A command whose handling fails is answered with an ERROR; the broker goes on.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

import zmq

from zchat.broker.core import Action, BrokerCore, CoreConfig, Forward, Hangup, Publish, SendOld, SendTo
from zchat.broker.gate import DEFAULT_EXEMPT, UNNAMED_REFUSAL, Gate
from zchat.broker.hangup import Peer, address_of, cut, origin_of, take_hold
from zchat.broker.store import MemoryStore, Store, StoreFailed, open_store
from zchat.common import protocol as p
from zchat.common.keys import KeyPair
from zchat.common.protocol import Code

log = logging.getLogger("zchat.broker")

#: Messages handled per poll wake-up before timers get a look in.
DRAIN_BATCH = 1000
#: Within a wake-up, store, publish and acknowledge this often: publishes wait
#: for the store, and should not wait for a whole batch (about 2 ms at most).
FLUSH_EVERY = 100
#: How long sockets may keep flushing at exit.
LINGER_MS = 500
#: Longest wait in poll, so that signals and the liveness sweep are never late.
POLL_MS = 100
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
#: Commands whose answers show stored messages, read from the store's open transaction.
SHOWS_STORED = (p.HistoryRequest, p.Search)
#: What a message the store could not keep is refused with (PROTOCOL.md 9).
NOT_STORED = "the broker cannot write its store now: not kept, not delivered; send it again later"
NOT_DONE = "the broker cannot write its store now: not done; try again later"
FAILED = "the broker failed on this command: it may not have been carried out; send it again"
#: Distinct failures (exception type and where) whose traceback is logged; repeats are counted.
FAILURES_LOGGED = 100
T = TypeVar("T")
#: ZAP requests answered per wake-up, so that a storm of connections cannot hold up the rest.
ZAP_BATCH = 100
MORE_NOBLOCK = int(zmq.SNDMORE) | NOBLOCK


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


class HeldAck:
    """ACKs of one sender held to go out as one (PROTOCOL.md 5.2): same session, time and status."""

    __slots__ = ("ids", "key", "status", "time_ms")

    def __init__(self, key: str, ack: p.Ack) -> None:
        self.key, self.time_ms, self.status = key, ack.time_ms, ack.status
        self.ids = [*ack.ids()]

    def takes(self, key: str, ack: p.Ack) -> bool:
        return self.time_ms == ack.time_ms and self.status == ack.status and self.key == key

    def acks(self, ids: list[bytes]) -> p.Ack:
        return p.Ack(ids[0], self.time_ms, self.status, tuple(ids[1:]))


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 5555
    pub_port: int = 5556
    #: What WELCOME tells clients to connect their SUB to (--advertise-pub);
    #: None: the PUB's own endpoint (see `advertised`).
    advertise_pub: str | None = None
    heartbeat_ms: int = 2000
    timeout_ms: int = 6000
    max_body: int = 65536
    #: Per-peer queue limit on both sockets; see docs/PROTOCOL.md, "Limits".
    hwm: int = 10000
    store: str = ":memory:"
    history_days: float = 30.0
    rate: float = 0.0
    burst: float = 100.0
    #: The broker's CURVE key pair: with it both sockets encrypt (PROTOCOL.md 14).
    curve: KeyPair | None = None
    #: With CURVE: name key -> the only key it may use; None: trust on first use.
    authorized: dict[str, str] | None = None
    max_clients: int = 10_000
    max_per_key: int = 8
    max_rooms_per_user: int = CoreConfig.max_rooms_per_user  # one default, the core's
    max_rooms: int = CoreConfig.max_rooms
    cool_off: float = 60.0
    #: Addresses or networks a flooder's address ban never applies to (gate.py).
    ban_exempt: tuple[str, ...] = DEFAULT_EXEMPT


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
        self.context = zmq.Context()
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
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.LINGER, LINGER_MS)
            sock.setsockopt(zmq.SNDHWM, settings.hwm)
            sock.setsockopt(zmq.RCVHWM, settings.hwm)
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
        self.router.bind(endpoint(settings.host, settings.port))
        self.pub.bind(endpoint(settings.host, settings.pub_port))
        self.router_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.core = BrokerCore(CoreConfig(
            pub_endpoint=advertised(settings.host, self.pub_endpoint, settings.advertise_pub),
            heartbeat_ms=settings.heartbeat_ms,
            timeout_ms=settings.timeout_ms,
            max_body=settings.max_body,
            history_days=settings.history_days,
            rate=settings.rate,
            authorized=settings.authorized,
            max_clients=settings.max_clients,
            max_per_key=settings.max_per_key,
            max_rooms_per_user=settings.max_rooms_per_user,
            max_rooms=settings.max_rooms,
            burst=settings.burst,
            cool_off=settings.cool_off,
        ), store=store)  # fmt: skip
        self._stopping = False
        #: ACKs held until the store has committed, per sender, combined where they can be.
        self._acks: dict[bytes, list[HeldAck]] = {}
        #: Published messages wait for the store too: a number on a topic is
        #: never seen by a subscriber before it is kept (PROTOCOL.md 6.2).
        self._to_publish: list[p.Published] = []
        #: Only a store on disk can fail a commit (a full disk): with one in memory a HISTORY
        #: never waits for a commit to show only what is kept.
        self._store_can_fail = not isinstance(store, MemoryStore)
        #: The routing id frame of the message being handled: a Hangup cuts its connection.
        self._current: zmq.Frame | None = None
        #: Connections of flooders, to cut once their last ERROR is out: (when, connection).
        self._hangups: list[tuple[float, socket.socket]] = []
        #: The TCP peer of each connection that said HELLO, to know it again at a hangup (hangup.py).
        self._origins: dict[bytes, Peer] = {}
        #: Since the store failed, until it takes messages again: logged once each way.
        self._store_down = False
        self._refused_before = 0
        self._failures_seen: set[tuple[object, ...]] = set()

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
        curve = self.settings.curve
        if curve is not None:
            log.info("broker public key (clients give it with --server-key): %s", curve.public.decode())
        log.info(
            "zchat broker listening: commands on %s, broadcasts on %s; traffic is %s",
            self.router_endpoint, self.pub_endpoint,
            "encrypted (CURVE)" if curve is not None else "plain (not encrypted)",
        )  # fmt: skip
        if self.settings.advertise_pub is not None:
            log.info("clients are told to connect to broadcasts at %s", self.settings.advertise_pub)
        log.info("%s", self._flood_control_line())
        log.info("%s", self._store_line())
        sweep_every = min(self.settings.heartbeat_ms, self.settings.timeout_ms) / 2000
        next_sweep = time.time() + sweep_every
        router, core = self.router, self.core
        keyed = self.settings.curve is not None  # names are bound to keys only with CURVE
        noting = self.settings.rate > 0  # only flood control hangs up: only then know the connections
        put_off = False  # the store has work waiting for an idle moment
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self.zap, zmq.POLLIN)
        try:
            while not self._stopping:
                ready = dict(poller.poll(0 if put_off else POLL_MS))
                if self.zap in ready:
                    self._answer_zap()
                if router in ready:
                    # One time for the whole wake-up: messages handled together
                    # are accepted together, and their ACKs can be combined.
                    now = time.time()
                    for handled in range(1, DRAIN_BATCH + 1):
                        try:
                            first, frames = receive(router)
                        except zmq.Again:
                            break
                        self._current = first
                        peer = first.bytes
                        if noting and peer not in core.by_peer:  # a HELLO may come: know its connection
                            self._note_origin(first)
                        self._handle(peer, frames, now, str(first.get("User-Id")) if keyed else "")
                        if handled % FLUSH_EVERY == 0:
                            self._flush()
                    self._current = None
                    self._flush()
                elif not ready:  # idle: the store does what it put off (indexing for search)
                    put_off = self._guarded("indexing for search", False, core.store.catch_up)
                    self._commit()
                now = time.time()
                if self._hangups:
                    self._hang_up_due(now)
                if now >= next_sweep:
                    self._guarded("the liveness sweep", None, self._expire, now)
                    self._flush()
                    self.gate.forget_expired(now)
                    self._forget_origins()
                    self._guarded("retention", None, core.maintain, now)
                    # A busy broker is never idle: index a batch for search now and then anyway.
                    put_off = self._guarded("indexing for search", False, core.store.catch_up) or put_off
                    self._commit()
                    next_sweep = now + sweep_every
            log.info("shutting down: telling %d clients", len(core.by_peer))
            self._flush()
            self._guarded("the shutdown notice", None, self._shutdown, time.time())
            self._flush()
        finally:
            self.close()

    def _handle(self, peer: bytes, frames: list[bytes], now: float, key: str) -> None:
        """One message from a client, through the core; a failure answers it alone."""
        core = self.core
        command = core.decode(peer, frames, now)
        if type(command) is list:  # refused or ignored as it came
            self.apply(command)
            return
        assert not isinstance(command, list)
        if isinstance(command, SHOWS_STORED) and self._may_show_unstored(command):
            self._flush()  # it shows only what is stored, and what is not yet may be refused
        try:
            self.apply(core.handle(peer, command, now, key))
        except Exception as e:  # that one command failed, not the broker
            self._failed(peer, command.msg_id, e)

    def _may_show_unstored(self, command: p.HistoryRequest | p.Search) -> bool:
        """Would this HISTORY or SEARCH read what a failed commit may yet refuse?

        Cheap first: at a sign-in storm every client asks the lobby's HISTORY, and a
        commit before each would cost one per client and keep ACKs from combining."""
        if not self._store_can_fail:
            return False
        if type(command) is p.Search:  # finds private mail too: anything held may be in it
            return bool(self._acks or self._to_publish)
        return any(type(held.event) is p.Message for held in self._to_publish)  # a room's, not yet kept

    def _failed(self, peer: bytes, msg_id: bytes, e: Exception) -> None:
        """A command whose handling raised: answer it with an ERROR, log it once, go on.

        What the handler did before it failed stays done: a resend of a message that was
        kept after all is answered as a duplicate, never delivered twice."""
        if isinstance(e, StoreFailed):  # a write the command needs cannot be made
            self._store_failed(e)
            code, text = Code.STORE_FAILED, NOT_DONE
        else:
            self._log_failure("a command", e)
            code, text = Code.INTERNAL, FAILED
        self.core.counters[f"refused.{code.name.lower()}"] += 1
        try:
            self._send(peer, p.encode(p.Error(msg_id, code, text, 0)))
        except Exception as again:
            self._log_failure("an error reply", again)

    def _expire(self, now: float) -> None:
        self.apply(self.core.expire(now))

    def _shutdown(self, now: float) -> None:
        self.apply(self.core.shutdown(now))

    def _guarded(self, what: str, otherwise: T, work: Callable[..., T], *args: object) -> T:
        """Periodic work of the core or the store: a failure is logged and the broker goes on."""
        try:
            return work(*args)
        except StoreFailed as e:
            self._store_failed(e)
        except Exception as e:
            self._log_failure(what, e)
        return otherwise

    def _log_failure(self, what: str, e: BaseException) -> None:
        """The traceback once per kind of failure (its type and the path it was raised
        along): a client that can trigger a bug must not be able to flood the log with it."""
        self.core.counters["failed"] += 1
        where = (type(e).__name__, *((f.filename, f.lineno) for f in traceback.extract_tb(e.__traceback__)))
        if where in self._failures_seen:
            log.debug("%s failed again: %r", what, e)
            return
        if len(self._failures_seen) < FAILURES_LOGGED:
            self._failures_seen.add(where)
        log.error("%s failed; the broker goes on (repeats are counted, not logged)", what, exc_info=e)

    def _store_failed(self, e: StoreFailed) -> None:
        self.core.counters["store.failed"] += 1
        if self._store_down:
            log.debug("the store still cannot be written: %s", e)
            return
        self._store_down = True
        self._refused_before = self.core.counters["refused.store_failed"]
        log.error("the store %s cannot be written (%s): until it can, what must be kept is refused "
                  "(ERROR %d) and the rest goes on", self._store_name(), e.__cause__ or e,
                  Code.STORE_FAILED)  # fmt: skip

    def _commit(self) -> frozenset[tuple[str, bytes]] | None:
        """Commit the store: the messages it could not keep (StoreFailed.refused), or None
        when it is not known what it kept (a failure that is not the store's own)."""
        try:
            wrote = self.core.store.commit()
        except StoreFailed as e:
            self._store_failed(e)
            return e.refused
        except Exception as e:
            self._log_failure("storing", e)
            return None
        if wrote and self._store_down:
            self._store_down = False
            log.warning("the store %s is written again (%d messages refused meanwhile)", self._store_name(),
                        self.core.counters["refused.store_failed"] - self._refused_before)  # fmt: skip
        return frozenset()

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

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            kind = type(action)
            if kind is Publish:
                self._to_publish.append(action.published)  # type: ignore[union-attr]
            elif kind is Forward:
                self._forward(action)  # type: ignore[arg-type]
            elif kind is Hangup:
                self._hang_up_later(action)  # type: ignore[arg-type]
            elif kind is SendOld:
                self._send(action.peer, action.frames)  # type: ignore[union-attr]
            else:
                assert isinstance(action, SendTo)
                message = action.message
                if type(message) is p.Ack:
                    session = self.core.by_peer.get(action.peer)
                    self._ack_later(action.peer, message, session.key if session else "")
                else:
                    self._send(action.peer, p.encode(message))

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

    def _note_origin(self, first: zmq.Frame) -> None:
        peer = first.bytes
        if peer not in self._origins and (origin := origin_of(first)) is not None:
            self._origins[peer] = origin

    def _forget_origins(self) -> None:
        sessions = self.core.by_peer
        for peer in [peer for peer in self._origins if peer not in sessions]:
            del self._origins[peer]

    def _hang_up_later(self, hangup: Hangup) -> None:
        """Turn the flooder's address away now, and cut its connection once its ERROR is out."""
        frame = self._current
        origin = self._origins.pop(hangup.peer, None)
        if frame is None or frame.bytes != hangup.peer:
            return  # not from a message of this peer's: no connection to name
        now = time.time()
        address = address_of(frame)
        banned = hangup.until > now and self.gate.ban(address, hangup.until)
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

    def _forward(self, forward: Forward) -> None:
        try:
            send(self.router, forward.peer, p.encode(forward.message))
        except zmq.Again:
            self.apply(self.core.undeliverable(forward, busy=True, now=time.time()))
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            self.apply(self.core.undeliverable(forward, busy=False, now=time.time()))
        else:
            self.core.forwarded(forward)
            # Handed to its recipient: delivered, so this ACK stands even if the store then
            # fails (only the copy kept for search would be lost, see SqliteStore._fail).
            self._ack_later(forward.sender, forward.ack, forward.sender_key)

    def _ack_later(self, peer: bytes, ack: p.Ack, key: str) -> None:
        """Hold an ACK to combine it with the sender's next ones (PROTOCOL.md 5.2)."""
        held = self._acks.get(peer)
        if held is None:
            self._acks[peer] = [HeldAck(key, ack)]
        elif held[-1].takes(key, ack):
            held[-1].ids += ack.ids()
        else:
            held.append(HeldAck(key, ack))

    def _flush(self) -> None:
        """Store, then publish and acknowledge what was handled since the last time.

        Everything held is of the transaction committed here (a commit anywhere else
        flushes too, see _send), so a failed commit can answer for all of it."""
        refused = self._commit()  # an ACK promises the message is kept: store first
        stored = refused is not None and not refused
        pub = self.pub
        for published in self._to_publish:
            # A message never kept is never published either. Its number stays used
            # (the store keeps it as such), so subscribers see a gap (PROTOCOL.md 6.2).
            event = published.event
            if (not stored and type(event) is p.Message
                    and (refused is None or (event.sender.lower(), event.msg_id) in refused)):  # fmt: skip
                continue
            # PUB never blocks: a subscriber whose queue is full loses
            # the message, and sees the gap in the sequence numbers.
            _send(pub, p.encode_published(published)[0], NOBLOCK)
        self._to_publish.clear()
        for peer, held in self._acks.items():
            for acks in held:
                if stored:
                    self._send_now(peer, p.encode(acks.acks(acks.ids)))
                else:
                    self._answer_unstored(peer, acks, refused)
        self._acks.clear()

    def _answer_unstored(
        self, peer: bytes, held: HeldAck, refused: frozenset[tuple[str, bytes]] | None
    ) -> None:
        """After a failed commit: an ACK's ids that were not kept become ERRORs, in
        their place among the others (replies keep the order of commands)."""
        if refused is None:  # the store failed in a way of its own: nothing is known kept
            for msg_id in held.ids:
                self.core.counters["refused.internal"] += 1
                self._send_now(peer, p.encode(p.Error(msg_id, Code.INTERNAL, FAILED, 0)))
            return
        run: list[bytes] = []
        for msg_id in held.ids:
            if (held.key, msg_id) not in refused:
                run.append(msg_id)
                continue
            if run:
                self._send_now(peer, p.encode(held.acks(run)))
                run = []
            self.core.counters["refused.store_failed"] += 1
            self._send_now(peer, p.encode(p.Error(msg_id, Code.STORE_FAILED, NOT_STORED, 0)))
        if run:
            self._send_now(peer, p.encode(held.acks(run)))

    def _send(self, peer: bytes, frames: list[bytes]) -> None:
        """Any other reply: the peer's held ACKs go first, so replies keep their order.

        They go out only stored, and with them everything else held: every held
        ACK and publish then belongs to the one transaction the next commit ends."""
        if peer in self._acks:
            self._flush()
        self._send_now(peer, frames)

    def _send_now(self, peer: bytes, frames: list[bytes]) -> None:
        core = self.core
        try:
            send(self.router, peer, frames)
        except zmq.Again:
            core.counters["dropped.busy"] += 1
            core.queue_full(peer, time.time())  # a stuck client is dropped by the sweep
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            # A reply to a peer that is gone: the liveness sweep drops it.
            core.counters["dropped.unreachable"] += 1
        else:
            if core.stuck:
                core.queue_drained(peer)

    def close(self) -> None:
        try:
            self.core.store.close()
        except Exception as e:  # StoreFailed too: what it could not write is lost, and said so
            log.error("the store could not be closed cleanly: %s", e)
        for _, held in self._hangups:
            held.close()
        self.router.close()
        self.pub.close()
        self.zap.close()
        self.context.term()
        if self.gate.turned_away:
            self.core.counters["refused.handshake"] = self.gate.turned_away
        counters = ", ".join(f"{k}={v}" for k, v in sorted(self.core.counters.items()))
        log.info("broker stopped (%s)", counters or "no traffic")
