"""The client's connection engine: the protocol of one chat connection, with no sockets.

Frames and time go in (from the DEALER, from the SUB, the user's requests, a
tick); effects come out, in order: sockets to open or close, frames to send,
SUB topics to (un)subscribe, events and answers for the user, and the time
of the next deadline. The poller thread (poller.py) only carries them out,
as websockets' asyncio and sync packages do around its protocol.py, so every
rule here is tested with no socket (tests/test_connection.py). Frames are
read and written only through the codec's `decode_event`, `decode_published`
and `encode`.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from zchat.client import events as ev
from zchat.client.events import State
from zchat.client.request import Request
from zchat.client.rooms import Joining, Room
from zchat.client.settings import Settings
from zchat.common import protocol as p
from zchat.common.flood import TokenBucket
from zchat.common.protocol import Code

log = logging.getLogger("zchat.client")

SYNC_RETRY = 0.2  # seconds between SYNC attempts (PROTOCOL.md 4.5)
MAX_BACKOFF = 5.0
#: A reconnect waits at least this long for each answer of its registration (see _step_wait);
#: the first registration has connect_timeout for all of it.
RECONNECT_WAIT = 3.0
BYE_WAIT = 1.0  # how long a closing client waits for the broker's ACK to BYE
SEEN_IDS = 4096  # (sender, id) pairs remembered to drop resent duplicates
SENT_TEXTS = 4096  # private messages remembered to show their text with a receipt
#: Requests the broker's flood control counts (PROTOCOL.md 8): paced by the client, in order.
PACED_KINDS = {"send", "history", "search", "enter", "exit", "rooms", "names", "away", "topic", "settopic"}
PACE_MARGIN = 0.95  # of the broker's rate
#: Connections a request is sent on at most: one that cost the connection each time
#: (too large for the broker, or crashing it) is refused to the user, not sent for ever.
MAX_TRIES = 3
#: The sign-in's own requests (ROOMS, ENTER, a join's HISTORY) are asked again when their
#: answer is this late (lost, or ignored as malformed), or this long after a 5xx refusal.
CATCH_UP_TIMEOUT = 10.0
CATCH_UP_RETRY = 1.0
#: While the user's requests are held back for the rate, receipts go at most this often:
#: they share the bucket, and must not starve what the user sends (nor starve themselves).
RECEIPTS_EVERY = 1.0
#: Published messages decoded lately, by their bytes: every session of a process (a gateway's
#: pages, a process of LoopClients, a bot's clients) gets each broadcast and presence run
#: byte for byte alike, and decodes it once instead of once a session (a restart's runs of a
#: thousand joins, to 250 sessions). The values are immutable; a frame is at most the PUB
#: limit, so this holds a few MiB at the very worst.
PUBLISHED_DECODED = 64
#: Codes that make registration hopeless: retrying cannot help.
FATAL_HELLO_CODES = {
    Code.NAME_OWNED,
    Code.NAME_TAKEN,
    Code.INVALID_NAME,
    Code.BAD_VERSION,
    Code.ALREADY_REGISTERED,
}


def shutting_down(reason: str) -> str:
    """What the user is told of a SHUTDOWN: its reason once, not "shutting down (shutting down)"."""
    if "shutting down" in reason.lower():
        return reason
    return f"the broker is shutting down: {reason}" if reason else "the broker is shutting down"


def pub_endpoint_for(advertised: str, broker: str) -> str:
    """PROTOCOL.md 5.1: a '*' host means the host we reached the ROUTER on.

    A source address in `broker` ("tcp://SOURCE:0;HOST:PORT", ZeroMQ's
    syntax) is used for the SUB socket too.
    """
    if not advertised.startswith("tcp://*:"):
        return advertised
    source, _, target = broker.split("://", 1)[1].rpartition(";")
    host = target.rsplit(":", 1)[0]
    return f"tcp://{source + ';' if source else ''}{host}:{advertised.rsplit(':', 1)[1]}"


# --- the connection's state machine (as h11's _state.py: every transition in one table) ---


class Phase(Enum):
    DISCONNECTED = "disconnected"  # no sockets: new ones at the deadline (the back-off)
    HELLO = "hello"  # a new DEALER, HELLO sent: its WELCOME awaited
    SYNC = "sync"  # a new SUB on the lobby and the own topic: SYNC until SYNCED proves them live
    READY = "ready"  # the lobby is live, READY sent: its ACK makes us online
    ONLINE = "online"  # READY acknowledged: others have seen us join (PROTOCOL.md 4.6)
    CLOSING = "closing"  # BYE sent: its ACK, or BYE_WAIT, ends it
    OFFLINE = "offline"  # gave up: only the user can help (name taken, wrong key, signed in elsewhere)
    CLOSED = "closed"

    # Members are singletons: hashed by identity in C, not by name in Python (Enum's own
    # __hash__), as every input looks its phase up in a set or the table.
    __hash__ = object.__hash__


class Trigger(Enum):
    CONNECT = "connect"  # new sockets, HELLO sent
    WELCOMED = "welcomed"
    SYNCED = "synced"
    ANNOUNCED = "announced"  # READY acknowledged
    LOST = "lost"  # the broker gone, restarted, stopping, or refusing the session: reconnect
    GIVE_UP = "give up"
    CLOSE = "close"  # the user closes: BYE first when online
    BYE_DONE = "bye done"  # BYE acknowledged, or its wait ran out
    STOP = "stop"  # the poller thread ends


_REGISTERING = {
    Trigger.LOST: Phase.DISCONNECTED,
    Trigger.GIVE_UP: Phase.OFFLINE,
    Trigger.CLOSE: Phase.CLOSED,
    Trigger.STOP: Phase.CLOSED,
}
TRANSITIONS: dict[Phase, dict[Trigger, Phase]] = {
    Phase.DISCONNECTED: {
        Trigger.CONNECT: Phase.HELLO,
        Trigger.GIVE_UP: Phase.OFFLINE,
        Trigger.CLOSE: Phase.CLOSED,
        Trigger.STOP: Phase.CLOSED,
    },
    Phase.HELLO: {Trigger.WELCOMED: Phase.SYNC, **_REGISTERING},
    Phase.SYNC: {Trigger.SYNCED: Phase.READY, **_REGISTERING},
    Phase.READY: {Trigger.ANNOUNCED: Phase.ONLINE, **_REGISTERING},
    Phase.ONLINE: {
        Trigger.LOST: Phase.DISCONNECTED,
        Trigger.GIVE_UP: Phase.OFFLINE,
        Trigger.CLOSE: Phase.CLOSING,
        Trigger.STOP: Phase.CLOSED,
    },
    Phase.CLOSING: {
        Trigger.BYE_DONE: Phase.CLOSED,
        Trigger.LOST: Phase.CLOSED,
        Trigger.GIVE_UP: Phase.OFFLINE,
        Trigger.STOP: Phase.CLOSED,
    },
    Phase.OFFLINE: {Trigger.STOP: Phase.CLOSED},
    Phase.CLOSED: {Trigger.STOP: Phase.CLOSED},
}
REGISTERING = {Phase.HELLO, Phase.SYNC, Phase.READY}
#: Phases with a SUB socket: the WELCOME opened it.
SUBSCRIBED = {Phase.SYNC, Phase.READY, Phase.ONLINE, Phase.CLOSING}
#: Phases whose connection holds a session the broker knows (it sent WELCOME on it).
REGISTERED = {Phase.SYNC, Phase.READY, Phase.ONLINE}
FINISHED = {Phase.OFFLINE, Phase.CLOSED}


class InvalidTransition(RuntimeError):
    """A trigger the state table does not allow in the current phase: a bug in the engine."""


# --- effects: what the shell carries out, in order ----------------------------------
# NamedTuples, as the codec's values: one or two for every message, cheap to make.


class OpenDealer(NamedTuple):
    """Close any sockets, open a new DEALER to `endpoint` (and watch its handshake), with
    libzmq's heartbeats on its connection, from the broker's timing (PROTOCOL.md 7.2):
    the connection closed when the broker is silent for `timeout_ms`. The shell says when
    that connection closes (`connection_lost`)."""

    endpoint: str
    heartbeat_ms: int = 4000
    timeout_ms: int = 6000


class OpenSub(NamedTuple):
    """Open a new SUB socket to `endpoint` (the DEALER's registration was welcomed)."""

    endpoint: str


class CloseSockets(NamedTuple):
    """Close the DEALER and the SUB: the connection is over."""


class ToBroker(NamedTuple):
    """Frames of one message to send on the DEALER."""

    frames: list[bytes]


class Subscribe(NamedTuple):
    topic: bytes


class Unsubscribe(NamedTuple):
    topic: bytes


class Notify(NamedTuple):
    """An event for the user."""

    event: ev.Event


class Answer(NamedTuple):
    """The outcome of one of the user's requests (told to the user once resolved)."""

    request: Request
    outcome: ev.Outcome


class FirstOutcome(NamedTuple):
    """The first connection's outcome, for `Client.connect()`: None when registered."""

    failure: ev.Status | None


Effect = (
    OpenDealer | OpenSub | CloseSockets | ToBroker | Subscribe | Unsubscribe | Notify | Answer | FirstOutcome
)


# --- the user's requests, in one structure ----------------------------------------


@dataclass(eq=False, slots=True)
class Pending:
    """One of the user's requests not yet answered, and where it stands."""

    request: Request
    msg_id: bytes
    taken: float  # when the engine took it: its place in line, and its clock until it is sent
    sent_at: float | None = None  # first sent: its answer timeout counts from then, across resends
    tries: int = 0  # connections it was sent on that dropped before its answer


class Requests:
    """The user's requests not yet answered: those sent, by id; the others held in line.

    Held, oldest first: waiting for a connection, or (online) for a token of the
    rate; online, only paced kinds are held (others go at once)."""

    def __init__(self) -> None:
        self.sent: dict[bytes, Pending] = {}
        self.held: deque[Pending] = deque()

    def __len__(self) -> int:
        return len(self.sent) + len(self.held)

    def hold(self, pending: Pending) -> None:
        """In line by when it was taken (a request refused for the rate goes back to its place)."""
        if not self.held or self.held[-1].taken <= pending.taken:
            self.held.append(pending)
            return
        place = next(i for i, h in enumerate(self.held) if h.taken > pending.taken)
        self.held.insert(place, pending)

    def take_all(self) -> list[Pending]:
        """Every one, oldest first, to be sent again on a new connection."""
        every = sorted([*self.sent.values(), *self.held], key=lambda r: r.taken)
        self.sent.clear()
        self.held.clear()
        return every

    def remove(self, pending: Pending) -> None:
        if self.sent.get(pending.msg_id) is pending:
            del self.sent[pending.msg_id]
        elif pending in self.held:
            self.held.remove(pending)


class CatchUp(NamedTuple):
    """One of the engine's own requests at a sign-in or a join: counted by flood control too."""

    kind: str  # "rooms", "enter" or "history"
    room: str  # "" for rooms


class Connection:
    """One client's connection to its broker, as a state machine fed with frames and time."""

    def __init__(
        self, settings: Settings, new_id: Callable[[], str], rng: random.Random | None = None
    ) -> None:
        self.s = settings
        self.new_id = new_id
        self.rng = rng or random.Random()
        self._effects: list[Effect] = []
        # -- the connection: one phase, with the id and the deadline it waits for
        self.phase = Phase.DISCONNECTED
        self.step_id = b""  # the HELLO, SYNC, READY or BYE the phase awaits an answer to
        self.deadline = 0.0  # HELLO..READY: registration's end; DISCONNECTED: next try; CLOSING: BYE's
        self.next_sync_at = 0.0
        self.attempt = 0  # connections lost since the last time online
        #: The brokers of a cluster (--broker a,b): each new connection tries the next one.
        self.endpoints = [e.strip() for e in settings.broker.split(",") if e.strip()] or [settings.broker]
        self.endpoint = self.endpoints[0]
        self.connections = 0
        self.was_online = False
        self.taken_since: float | None = None  # since when HELLO gets 409 after a reconnect
        self.token = ""
        self.welcome: p.Welcome | None = None
        self.bucket: TokenBucket | None = None  # a mirror of the broker's, from WELCOME
        # -- the user's requests
        self.requests = Requests()
        self.sent_texts: OrderedDict[bytes, str] = OrderedDict()  # id -> text of a private message
        self.seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self.receipts_due: dict[str, list[bytes]] = {}  # sender -> ids to confirm with RECEIVED
        self.next_receipts_at = 0.0
        # -- rooms: the lobby and every room we are in, each joined without a gap (rooms.py)
        self.rooms: dict[str, Room] = {p.EVERYONE: Room(p.EVERYONE)}
        self.room_syncs: dict[bytes, list[str]] = {}  # SYNC id -> rooms live once it is SYNCED
        self.room_sync_tag = b""  # its topic is subscribed after the rooms' topics, for their SYNCED
        self.next_room_sync_at = 0.0
        self.oldest: dict[str, int] = {}  # room -> lowest sequence number shown from history
        #: Ids of the user's ENTERs just acknowledged: a SUBJECT with one of them follows at once.
        self.entered: deque[bytes] = deque(maxlen=16)
        # -- our own catching up, released in order as the bucket allows
        self.catching_up: deque[CatchUp] = deque()
        self.own: dict[bytes, tuple[CatchUp, float]] = {}  # id -> what of catching_up it asked, when
        self.catch_up_after = 0.0  # after a 5xx: not before then

    # --- what the shell reads ----------------------------------------------------

    def effects(self) -> list[Effect]:
        """What to carry out, in order, since the last call."""
        effects = self._effects
        if effects:  # else the same empty list: nothing to allocate on a quiet tick
            self._effects = []
        return effects

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def state(self) -> State:
        """What the user is told the connection is (events.State)."""
        phase = self.phase
        if phase is Phase.ONLINE or phase is Phase.CLOSING:
            return State.ONLINE
        if phase is Phase.OFFLINE:
            return State.OFFLINE
        if phase is Phase.CLOSED:
            return State.CLOSED
        return State.CONNECTING if not self.was_online and not self.attempt else State.RECONNECTING

    def wakeup(self) -> float | None:
        """When the next deadline falls (monotonic seconds): the shell sleeps until then at most."""
        phase = self.phase
        if phase is Phase.ONLINE:
            # Idle (the usual case, asked at every wake-up): nothing is due. libzmq keeps the
            # connection alive, and the shell says when it closes (connection_lost).
            if self.catching_up or self.requests or self.room_syncs or self.own or self.receipts_due:
                return self._busy_wakeup(phase)
            return None
        if phase is Phase.OFFLINE or phase is Phase.CLOSED:
            return None
        soonest = min(self.deadline, self.next_sync_at) if phase is Phase.SYNC else self.deadline
        if self.requests or self.receipts_due:
            soonest = min(soonest, self._busy_wakeup(phase))
        return soonest

    def _busy_wakeup(self, phase: Phase) -> float:
        times = [math.inf]
        if phase is Phase.ONLINE:
            if self.catching_up:
                times.append(max(self.catch_up_after, self._token_at()))
            if self.requests.held:
                times.append(self._token_at())
            if self.room_syncs:
                times.append(self.next_room_sync_at)
            if self.own:
                times.append(min(at for _, at in self.own.values()) + CATCH_UP_TIMEOUT)
        if self.receipts_due and phase in REGISTERED:
            soonest = self._token_at()
            times.append(max(soonest, self.next_receipts_at) if self.requests.held else soonest)
        timeout = self.s.answer_timeout
        if self.requests.sent:
            times.append(min(r.sent_at or r.taken for r in self.requests.sent.values()) + timeout)
        if self.requests.held and phase is not Phase.ONLINE:
            times.append(self.requests.held[0].taken + timeout)
        return min(times)

    # --- inputs ------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Open the first connection."""
        self._connect(now)

    def from_dealer(self, frames: list[bytes], now: float) -> None:
        if self.phase is Phase.DISCONNECTED or self.finished:
            return  # from sockets already closed
        try:
            event = p.decode_event(frames)
        except p.ProtocolError as e:
            if e.code == Code.BAD_VERSION:  # a broker of another version: retrying cannot help
                self._give_up(e.text)
                return
            log.warning("ignored a malformed message from the broker: %s", e)
            return
        handle = _DEALER_HANDLERS.get(type(event))
        if handle is not None:
            handle(self, event, now)

    def from_sub(self, frames: list[bytes], now: float) -> None:
        if self.phase not in SUBSCRIBED:
            return
        try:
            frame = frames[0] if len(frames) == 1 else None
            published = _decode_published(frame) if type(frame) is bytes else p.decode_published(frames)
        except p.ProtocolError as e:
            log.warning("ignored a malformed message from the broker: %s", e)
            return
        event = published.event
        if type(event) is p.Shutdown:
            self._lost(shutting_down(event.reason), now)
        elif published.topic.startswith(b"#") or published.topic == p.LOBBY_TOPIC:
            self._from_room(published)
        elif type(event) is p.Synced:  # on our own topic, or a room round's
            if self.phase is Phase.SYNC:  # the subscriptions made before it are live
                self._ready(now)
            elif event.msg_id in self.room_syncs:
                self._rooms_live(self.room_syncs.pop(event.msg_id))

    def request(self, request: Request, now: float) -> None:
        """One of the user's requests ("close" closes the connection)."""
        if request.kind == "close":
            self._begin_close(now)
            return
        pending = Pending(request, request.msg_id.encode(), now)
        if self.finished:
            self._answer(pending, request.refusal(ev.CLOSED, "the client closed"))
        elif self.phase is Phase.ONLINE:
            self._transmit(pending, now)
        elif len(self.requests.held) >= self.s.max_queued:
            self._answer(
                pending, request.refusal(ev.QUEUE_FULL, "too many messages waiting for a connection")
            )
        else:
            self.requests.held.append(pending)

    def handshake_failed(self, reason: str, now: float) -> None:
        """The socket monitor saw the DEALER's handshake fail (handshake.py says why)."""
        if self.phase not in REGISTERING:
            return
        if not self.was_online:
            self._first_failed(f"{reason} ({self.endpoint})", now)
        else:
            self._lost(reason, now)

    def connection_lost(self, now: float) -> None:
        """The DEALER's connection closed: the broker hung up, or its heartbeats stopped
        (libzmq's timeout). Once the broker has known us, a new connection resumes the
        session; a first registration has its own deadline (connect_timeout)."""
        phase = self.phase
        if phase is Phase.ONLINE or phase is Phase.CLOSING or (phase in REGISTERING and self.was_online):
            self._lost("the connection to the broker was lost", now)

    def user_gone(self, now: float) -> None:
        """The user side closed its end of the wake-up pipe: close as if asked."""
        self._begin_close(now)

    def tick(self, now: float) -> None:
        """Time passes: retries, heartbeats, deadlines, what waited for a token."""
        if self.finished:
            return
        phase = self.phase
        if self.receipts_due and phase in REGISTERED:
            self._confirm_received(now)
        if phase is Phase.CLOSING:
            if now > self.deadline:
                self._go(Trigger.BYE_DONE)
        elif phase is Phase.DISCONNECTED:
            if now >= self.deadline:
                self._connect(now)
        elif phase is not Phase.ONLINE:
            self._registering(now)
        else:
            self._online_timers(now)
        if not self.finished:
            self._expire_requests(now)

    def fail(self, detail: str) -> None:
        """The shell failed (a bug): the user must hear of it."""
        if not self.finished:
            self._give_up(detail)

    def stop(self) -> None:
        """The poller thread ends (once): every request left is refused, and the user told."""
        gave_up = self.phase is Phase.OFFLINE
        for pending in [*self.requests.sent.values(), *self.requests.held]:
            self._answer(pending, pending.request.refusal(ev.CLOSED, "the client closed"))
        self.requests = Requests()
        self._go(Trigger.STOP)
        self._notify(ev.Status(State.CLOSED, "closed"))
        if not self.was_online and not gave_up:  # else connect() has had its answer
            self._effects.append(FirstOutcome(ev.Status(State.CLOSED, "closed before registering")))

    # --- the connection's lifecycle ------------------------------------------------

    def _go(self, trigger: Trigger) -> None:
        phase = TRANSITIONS[self.phase].get(trigger)
        if phase is None:
            raise InvalidTransition(f"{trigger.value} in phase {self.phase.value}")
        self.phase = phase

    def _connect(self, now: float) -> None:
        self._go(Trigger.CONNECT)
        self.endpoint = self.endpoints[self.connections % len(self.endpoints)]
        self.connections += 1
        welcome = self.welcome  # the broker's last word on its timing; our defaults before it
        if welcome is None:
            self._effects.append(OpenDealer(self.endpoint))
        else:
            self._effects.append(OpenDealer(self.endpoint, welcome.heartbeat_ms, welcome.timeout_ms))
        self.step_id = self.new_id().encode()
        self.deadline = now + (self._step_wait() if self.was_online else self.s.connect_timeout)
        self._send(p.Hello(self.step_id, self.s.name, self.token, p.VERSION, self.s.client), now)

    def _welcomed(self, welcome: p.Welcome, now: float) -> None:
        if self.phase is not Phase.HELLO or welcome.msg_id != self.step_id:
            return
        self._go(Trigger.WELCOMED)
        self.welcome = welcome
        if self.was_online:  # the broker answers: the next step has its own wait
            self.deadline = now + self._step_wait()
        self._mirror_flood_control(welcome, now)
        self.token = welcome.token
        self._effects.append(OpenSub(pub_endpoint_for(welcome.pub_endpoint, self.endpoint)))
        # The own topic last: when SYNCED arrives there, the lobby is live too.
        self._effects.append(Subscribe(p.LOBBY_TOPIC))
        self._effects.append(Subscribe(p.private_topic(welcome.name)))
        for room in self.rooms.values():  # a new SUB: every room joins afresh after ROOMS
            room.unwatch()
        self.rooms[p.EVERYONE].watch()  # the lobby's SYNCED is the registration's own
        self.room_syncs.clear()
        self.room_sync_tag = b""  # its subscription went with the old SUB
        self.catching_up.clear()
        self.own.clear()
        self._sync(now)

    def _step_wait(self) -> float:
        """How long a reconnect waits for the answer to a step of its registration.

        A HELLO on a connection that stays up has reached the broker, which answers every
        HELLO: a late answer means a busy broker (everyone signing in again after a restart),
        and giving up on it only adds to the load: new connections, and the session that HELLO
        registered ended (announced to everyone as a LEAVE) and registered again (a JOIN).
        So a step may take as long as the broker waits for a silent client (its timeout), at
        least RECONNECT_WAIT and at most connect_timeout; each answer starts the wait again. A
        broker that died meanwhile closes the connection, which ends the wait at once.
        """
        timeout = self.welcome.timeout_ms / 1000 if self.welcome is not None else 0.0
        return min(self.s.connect_timeout, max(RECONNECT_WAIT, timeout))

    def _sync(self, now: float) -> None:
        self.step_id = self.new_id().encode()
        self.next_sync_at = now + SYNC_RETRY
        self._send(p.Sync(self.step_id), now)

    def _ready(self, now: float) -> None:
        """We hear the lobby: READY makes the broker announce us, and its ACK makes us online."""
        self._go(Trigger.SYNCED)
        if self.was_online:
            self.deadline = now + self._step_wait()
        self.rooms[p.EVERYONE].synced()  # subscribed before the own topic, so live too
        self.catching_up.append(CatchUp("history", p.EVERYONE))
        if not self.s.announce:  # a session nobody is told of: online without READY (PROTOCOL.md 4.6)
            self._online(now)
            return
        self.step_id = self.new_id().encode()
        self._send(p.Ready(self.step_id), now)

    def _online(self, now: float) -> None:
        """READY is acknowledged: the broker has published our JOIN (PROTOCOL.md 4.6)."""
        self._go(Trigger.ANNOUNCED)
        self.attempt = 0
        self.taken_since = None
        first = not self.was_online
        self.was_online = True
        assert self.welcome is not None
        self._notify(ev.Status(State.ONLINE, f"online as {self.welcome.name} at {self.endpoint}"))
        # Membership lives on the broker (PROTOCOL.md 13.1): ask for it, then subscribe.
        self.catching_up.append(CatchUp("rooms", ""))
        if first:
            self._effects.append(FirstOutcome(None))
        # Unanswered messages go again with their ids (recipients drop repeats),
        # then what was held back and what waited: oldest first.
        for pending in self.requests.sent.values():
            pending.tries += 1  # its connection dropped before it was answered
        for pending in self.requests.take_all():
            if pending.tries >= MAX_TRIES:
                self._answer(pending, pending.request.refusal(ev.LOST, (
                    f"not sent again: the connection to the broker dropped each of the {pending.tries} "
                    "times it was sent (the broker may refuse or fail on it)")))  # fmt: skip
            else:
                self._transmit(pending, now)

    def _lost(self, detail: str, now: float) -> None:
        """The connection is gone: a new one after a back-off."""
        self._effects.append(CloseSockets())
        if self.phase is Phase.CLOSING:
            self._go(Trigger.LOST)
            return
        self._go(Trigger.LOST)
        self.attempt += 1
        delay = min(MAX_BACKOFF, 0.1 * 2 ** (self.attempt - 1)) * self.rng.uniform(0.8, 1.2)
        self.deadline = now + delay
        # Every step of a short outage is shown; of a long one, about one a minute.
        if self.attempt <= 5 or self.attempt % 12 == 0:
            self._notify(
                ev.Status(
                    State.RECONNECTING, f"{detail}; reconnecting in {delay:.1f}s (attempt {self.attempt})"
                )
            )

    def _give_up(self, detail: str) -> None:
        self._effects.append(CloseSockets())
        first = not self.was_online
        self._go(Trigger.GIVE_UP)
        self._notify(ev.Status(State.OFFLINE, detail))
        if first:
            self._effects.append(FirstOutcome(ev.Status(State.OFFLINE, detail)))

    def _first_failed(self, detail: str, now: float) -> None:
        """The first registration failed at this endpoint: the next of the list (a cluster's
        brokers) has its own connect_timeout; given up once each was tried."""
        if self.connections >= len(self.endpoints):
            self._give_up(detail)
            return
        self._effects.append(CloseSockets())
        self._go(Trigger.LOST)
        following = self.endpoints[self.connections % len(self.endpoints)]
        self._notify(ev.Status(State.CONNECTING, f"{detail}; trying {following}"))
        self._connect(now)

    def _begin_close(self, now: float) -> None:
        if self.phase is Phase.CLOSING or self.finished:
            return
        if self.phase is Phase.ONLINE:
            self._go(Trigger.CLOSE)
            self.step_id = self.new_id().encode()
            self.deadline = now + BYE_WAIT
            self._send(p.Bye(self.step_id), now)
        else:
            self._go(Trigger.CLOSE)

    def _registering(self, now: float) -> None:
        if now > self.deadline:
            if not self.was_online:
                self._first_failed(f"no answer from the broker at {self.endpoint} "
                                   f"within {self.s.connect_timeout:g}s", now)  # fmt: skip
            else:
                self._lost("no answer from the broker", now)
        elif self.phase is Phase.SYNC and now >= self.next_sync_at:
            self._sync(now)

    def _online_timers(self, now: float) -> None:
        if self.own:
            self._caught_up_late(now)
        if self.catching_up:
            self._catch_up(now)
        if self.requests.held:
            self._release_held(now)
        if self.room_syncs and now >= self.next_room_sync_at:
            self._sync_rooms(now)

    def _our_ghost_may_hold_the_name(self, now: float) -> bool:
        """After a reconnect, a 409 may be our own doing: a HELLO of ours registered a new
        session but its WELCOME came too late (a busy broker, after a restart), so the
        token we offer is the old one. That session dies at the broker's heartbeat
        timeout: until twice that has passed since the first 409, try again."""
        if not self.was_online or self.welcome is None:
            return False
        if self.taken_since is None:
            self.taken_since = now
        return now - self.taken_since < 2 * self.welcome.timeout_ms / 1000

    # --- what the DEALER brings ------------------------------------------------------

    def _on_ack(self, ack: p.Ack, now: float) -> None:
        for msg_id in ack.ids():  # one ACK may answer several messages
            self._answered(ack._replace(msg_id=msg_id), now)

    def _on_error(self, error: p.Error, now: float) -> None:
        self._answered(error, now)

    def _on_message(self, message: p.Message, now: float) -> None:
        # Live or from the mailbox: confirm it, also when it is a repeat (PROTOCOL.md 13.4).
        self.receipts_due.setdefault(message.sender, []).append(message.msg_id)
        self._message(message)

    def _on_users(self, users: p.Users, now: float) -> None:
        pending = self.requests.sent.pop(users.msg_id, None)
        if pending is not None:
            request = pending.request
            room = request.target if request.kind == "names" else ""
            self._answer(pending, ev.Users(users.names, room, users.away))

    def _on_away(self, notice: p.AwayNotice, now: float) -> None:
        self._notify(ev.Away(notice.msg_id.decode(), notice.name, notice.text))

    def _on_subject(self, subject: p.Subject, now: float) -> None:
        when = ev.from_ms(subject.time_ms) if subject.time_ms else None
        shown = ev.Topic(subject.room, subject.text, subject.setter, when)
        if (pending := self.requests.sent.pop(subject.msg_id, None)) is not None:
            self._answer(pending, shown)
        elif subject.msg_id in self.entered:  # after the ACK of the user's ENTER: shown on joining
            self.entered.remove(subject.msg_id)
            self._notify(shown)

    def _on_receipt(self, receipt: p.Receipt, now: float) -> None:
        for msg_id in receipt.msg_ids:
            text = self.sent_texts.get(msg_id, "")
            self._notify(ev.Receipt(msg_id.decode(), receipt.recipient, ev.from_ms(receipt.time_ms), text))

    def _on_room_list(self, listing: p.RoomList, now: float) -> None:
        own = self.own.get(listing.msg_id)
        if own is not None and own[0].kind == "rooms":
            del self.own[listing.msg_id]
            self._rejoin(listing, now)
        elif (pending := self.requests.sent.pop(listing.msg_id, None)) is not None:
            self._answer(pending, ev.RoomList(listing.sizes, listing.mine))

    def _on_found(self, found: p.Found, now: float) -> None:
        if (pending := self.requests.sent.pop(found.msg_id, None)) is not None:
            self._answer(pending, ev.Found(tuple(self._record(r) for r in found.records)))

    def _on_shutdown(self, shutdown: p.Shutdown, now: float) -> None:
        self._lost(shutting_down(shutdown.reason), now)

    def _on_replaced(self, replaced: p.Replaced, now: float) -> None:
        # Another client of ours (same key, or our token) took the session over.
        # Taking it back would start the two taking turns: this one stops.
        self._give_up(
            f"signed in elsewhere: {replaced.reason}; this client stops (connect again to take it back)"
        )

    def _answered(self, answer: p.Ack | p.Error, now: float) -> None:
        msg_id = answer.msg_id
        phase = self.phase
        if msg_id == self.step_id and phase is Phase.READY:
            if isinstance(answer, p.Ack):
                self._online(now)
            else:
                self._lost(f"registration failed: {answer.text} (code {answer.code})", now)
            return
        if msg_id == self.step_id and phase is Phase.HELLO and isinstance(answer, p.Error):
            if answer.code == Code.NAME_TAKEN and self._our_ghost_may_hold_the_name(now):
                self._lost("the name is still held by this client's last connection; trying again", now)
            elif answer.code in FATAL_HELLO_CODES:
                self._give_up(f"registration refused: {answer.text} (code {answer.code})")
            else:
                self._lost(f"registration failed: {answer.text} (code {answer.code})", now)
            return
        if msg_id == self.step_id and phase is Phase.CLOSING:
            self._go(Trigger.BYE_DONE)
            return
        if isinstance(answer, p.Error) and answer.code == Code.NOT_REGISTERED:
            # A broker that restarted before we noticed: what it refused is
            # still in flight and goes again once we are registered anew.
            self._lost("the broker no longer knows this session", now)
            return
        if isinstance(answer, p.Error) and answer.code == Code.FENCED:  # cut off from its cluster
            self._lost("the broker lost its place in the cluster", now)  # the next broker; resent there
            return
        if (own := self.own.pop(msg_id, None)) is not None:
            self._own_answered(own[0], msg_id, answer, now)
            return
        pending = self.requests.sent.pop(msg_id, None)
        if pending is None:
            if isinstance(answer, p.Error) and not (msg_id == self.step_id and phase is Phase.SYNC):
                log.info("broker error %d: %s", answer.code, answer.text)
            return
        if self._held_back_again(pending, answer, now):
            return
        request = pending.request
        if isinstance(answer, p.Ack):
            outcome: ev.Outcome = ev.Ack(request.msg_id, ev.from_ms(answer.time_ms), answer.status,
                                         request.target, request.text, request.kind)  # fmt: skip
        else:
            outcome = request.refusal(answer.code, answer.text)
            if request.kind == "enter":  # not a member after all: stop listening
                self._forget_room(request.target)
        if request.kind == "enter" and isinstance(answer, p.Ack):
            self.entered.append(pending.msg_id)  # its room's subject may follow (PROTOCOL.md 13.7)
        self._answer(pending, outcome)

    # --- the user's requests -----------------------------------------------------------

    def _mirror_flood_control(self, welcome: p.Welcome, now: float) -> None:
        """Pace ourselves as the broker will (PROTOCOL.md 8): a pasted page of
        text goes out at the allowed rate instead of into refusals and a
        disconnection for flooding. The bucket outlives reconnects: a resumed
        session keeps the broker's too; a new session starts a new one."""
        resumed = welcome.token == self.token
        # A little slower than the broker: it stamps a whole wake-up's
        # messages with one time, a little behind ours.
        rate = welcome.rate_per_minute / 60 * PACE_MARGIN
        if not welcome.rate_per_minute:
            self.bucket = None
        elif self.bucket is None or not resumed or self.bucket.rate != rate:
            self.bucket = TokenBucket.new_session(rate, max(1, welcome.burst), now)

    def _token_at(self) -> float:
        """When the mirrored bucket has (or had) a token: 0.0 when there is no bucket."""
        bucket = self.bucket
        if bucket is None:
            return 0.0
        return bucket.stamp + max(0.0, 1.0 - bucket.tokens) / bucket.rate

    def _rate_limited(self, error: p.Error, now: float) -> None:
        """A 429 although we paced ourselves (a resumed session's bucket may be emptier than
        our mirror knew): no token before the broker's retry-after, nor before our rate's."""
        assert self.bucket is not None
        wait = error.retry_after_ms / 1000
        self.bucket.tokens, self.bucket.stamp = min(0.0, 1.0 - wait * self.bucket.rate), now

    def _transmit(self, pending: Pending, now: float) -> None:
        if refusal := self._too_large(pending.request):
            self._answer(pending, refusal)
            return
        bucket = self.bucket if pending.request.kind in PACED_KINDS else None
        held = self.requests.held
        # After those held already, or when there is no token now: held back. A /leave
        # must not overtake messages to the room that wait their turn.
        if bucket is not None and (held or bucket.take(now)):
            if len(held) >= self.s.max_queued:
                self._answer(pending, pending.request.refusal(ev.QUEUE_FULL, "too many messages held back"))
                return
            if not held:
                self._notify(
                    ev.Status(self.state, "holding messages back to stay within the broker's rate limit")
                )
            held.append(pending)
            return
        self._send_request(pending, now)

    def _too_large(self, request: Request) -> ev.Refusal | None:
        """Over the broker's limit (WELCOME): refused here. Sent, the broker would
        refuse it, or past its frame limit cut the connection (PROTOCOL.md 8)."""
        assert self.welcome is not None
        limit = self.welcome.max_body
        if (
            request.kind not in ("send", "search") or len(request.text) <= limit // 4
        ):  # UTF-8: 4 bytes at most
            return None
        size = len(request.text.encode())
        if size <= limit:
            return None
        return request.refusal(Code.TOO_LARGE, f"the message is {size} bytes, the broker's limit is {limit}")

    def _held_back_again(self, pending: Pending, answer: p.Ack | p.Error, now: float) -> bool:
        """A 429 although we paced ourselves (our own HISTORY at a join counts
        too): the broker's bucket is empty, so is ours; the request waits its
        turn again, in order, instead of failing."""
        if not (isinstance(answer, p.Error) and answer.code == Code.RATE_LIMITED):
            return False
        if self.bucket is None or pending.request.kind not in PACED_KINDS:
            return False
        self._rate_limited(answer, now)
        self.requests.hold(pending)
        return True

    def _release_held(self, now: float) -> None:
        held = self.requests.held
        while held and (
            held[0].request.kind not in PACED_KINDS or self.bucket is None or not self.bucket.take(now)
        ):
            self._send_request(held.popleft(), now)

    def _send_request(self, pending: Pending, now: float) -> None:
        msg_id = pending.msg_id
        if pending.sent_at is None:
            pending.sent_at = now
        self.requests.sent[msg_id] = pending
        request = pending.request
        command = _REQUEST_COMMANDS[request.kind](self, request, msg_id)
        if request.kind == "send" and not ev.is_room(request.target):  # remembered to show with its receipt
            self.sent_texts[msg_id] = request.text
            if len(self.sent_texts) > SENT_TEXTS:
                self.sent_texts.popitem(last=False)
        self._send(command, now)
        if request.kind == "enter":
            room = self.rooms.setdefault(request.target, Room(request.target))
            if not room.subscribed:
                self._watch([room], now)
        elif request.kind == "exit":
            self._forget_room(request.target)

    def _history_request(self, request: Request, msg_id: bytes) -> p.HistoryRequest:
        before = request.before
        if before < 0:  # page back from the oldest shown
            before = self.oldest.get(request.target, 0)
        return p.HistoryRequest(msg_id, request.target, before, request.count)

    def _expire_requests(self, now: float) -> None:
        deadline = now - self.s.answer_timeout
        # Sent ones from when they were first sent (a paced one may have waited its turn long).
        stale = [r for r in self.requests.sent.values() if (r.sent_at or r.taken) < deadline]
        if self.phase is not Phase.ONLINE:  # held while online: they go as the rate allows
            stale += [r for r in self.requests.held if r.taken < deadline]
        for pending in stale:
            self.requests.remove(pending)
            timeout = f"no answer from the broker within {self.s.answer_timeout:g}s"
            self._answer(pending, pending.request.refusal(ev.NOT_ANSWERED, timeout))

    # --- messages ------------------------------------------------------------------------

    def _message(self, message: p.Message, seq: int = 0) -> None:
        key = (message.sender.lower(), message.msg_id)
        if key in self.seen:
            return  # a resend of what we already have
        self.seen[key] = None
        if len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        text = message.body.decode("utf-8", "replace")
        self._notify(ev.Message(message.msg_id.decode(), message.sender, message.target, text,
                                ev.from_ms(message.time_ms), seq=seq))  # fmt: skip

    @staticmethod
    def _record(record: p.Record, history: bool = True) -> ev.Message:
        return ev.Message(record.msg_id.decode(), record.sender, record.target,
                          record.body.decode("utf-8", "replace"), ev.from_ms(record.time_ms),
                          history=history, seq=record.seq)  # fmt: skip

    def _confirm_received(self, now: float) -> None:
        """RECEIVED, one per sender for what came meanwhile (PROTOCOL.md 13.4), as the
        broker's rate allows: what waits for a token gathers more ids meanwhile."""
        if self.requests.held:  # the user's own requests wait: receipts now and then only
            if now < self.next_receipts_at:
                return
            self.next_receipts_at = now + RECEIPTS_EVERY
        due, self.receipts_due = self.receipts_due, {}
        for sender, ids in due.items():
            for start in range(0, len(ids), p.MAX_RECEIVED_IDS):
                if self.bucket is not None and self.bucket.take(now):
                    self.receipts_due.setdefault(sender, []).extend(ids[start:])
                    break
                chunk = tuple(ids[start : start + p.MAX_RECEIVED_IDS])
                self._send(p.Received(self.new_id().encode(), sender, chunk), now)

    # --- rooms (PROTOCOL.md 13) ------------------------------------------------------------

    def _rejoin(self, listing: p.RoomList, now: float) -> None:
        """After registering: subscribe to every room we are in, the broker's and ours."""
        mine = {room.lower() for room in listing.mine}
        for name in mine:
            self.rooms.setdefault(name, Room(name))
        for name in self.rooms:
            if name not in mine and name != p.EVERYONE:  # the broker forgot (a restart without a store)
                self.catching_up.append(CatchUp("enter", name))
        self._watch([room for room in self.rooms.values() if not room.subscribed], now)

    def _watch(self, rooms: list[Room], now: float) -> None:
        """Subscribe, and SYNC until the subscriptions are live; the room's topic is kept meanwhile."""
        if not rooms or self.phase not in SUBSCRIBED or self.welcome is None:
            return
        for room in rooms:
            self._effects.append(Subscribe(p.topic_of(room.name)))
            room.watch()
        # SYNCED proves live only what was subscribed before its topic
        # (PROTOCOL.md 4.5): the own topic is older than the rooms', so the
        # SYNCED goes to a topic of this round's own, subscribed last.
        self._drop_room_sync_topic()
        self.room_sync_tag = self.new_id().encode()
        self._effects.append(Subscribe(p.sync_topic(self.welcome.name, self.room_sync_tag)))
        self._sync_rooms(now)

    def _drop_room_sync_topic(self) -> None:
        if self.room_sync_tag and self.phase in SUBSCRIBED and self.welcome is not None:
            self._effects.append(Unsubscribe(p.sync_topic(self.welcome.name, self.room_sync_tag)))
        self.room_sync_tag = b""

    def _sync_rooms(self, now: float) -> None:
        syncing = [name for name, room in self.rooms.items() if room.phase is Joining.SYNCING]
        if not syncing:
            self.room_syncs.clear()
            self._drop_room_sync_topic()
            return
        sync_id = self.new_id().encode()
        self.room_syncs[sync_id] = syncing
        self.next_room_sync_at = now + SYNC_RETRY
        self._send(p.Sync(sync_id, self.room_sync_tag), now)

    def _rooms_live(self, names: list[str]) -> None:
        for name in names:
            room = self.rooms.get(name)
            if room is not None and room.phase is Joining.SYNCING:
                room.synced()
                self.catching_up.append(CatchUp("history", name))
        if not any(room.phase is Joining.SYNCING for room in self.rooms.values()):
            self.room_syncs.clear()
            self._drop_room_sync_topic()

    def _catch_up(self, now: float) -> None:
        """Our own requests of a sign-in or a join, as the broker's rate allows: a member
        of many rooms is not thrown out for flooding at every sign-in."""
        while self.catching_up and now >= self.catch_up_after:
            own = self.catching_up[0]
            room = self.rooms.get(own.room)
            if own.kind == "history" and (room is None or room.phase is not Joining.HISTORY):
                self.catching_up.popleft()  # left meanwhile, or a new SUB joins it afresh
                continue
            if self.bucket is not None and self.bucket.take(now):
                return  # no token yet: the next tick tries again
            self.catching_up.popleft()
            msg_id = self.new_id().encode()
            self.own[msg_id] = (own, now)
            if own.kind == "rooms":
                self._send(p.Rooms(msg_id), now)
            elif own.kind == "enter":
                self._send(p.Enter(msg_id, own.room), now)
            else:
                assert room is not None
                # After a reconnect only what was missed (above the last number shown),
                # as much as one HISTORY gives: usually nothing, so it costs the broker little.
                after = room.seen_seq
                room.asked = count = self.s.history_count if not after else p.MAX_HISTORY
                self._send(p.HistoryRequest(msg_id, own.room, 0, count, after), now)

    def _own_answered(self, own: CatchUp, msg_id: bytes, answer: p.Ack | p.Error, now: float) -> None:
        """An answer to our own catching up. A 429 (a resumed session's bucket may be emptier
        than our mirror knew): it goes again first, once the broker's bucket has a token. A 5xx
        (the broker failed, or its store): again after a pause. A re-ENTER refused (509: too
        many rooms now): the room is left, and the user told. A join's HISTORY refused: what
        was kept is shown rather than held for ever."""
        if not isinstance(answer, p.Error):
            return
        if answer.code == Code.RATE_LIMITED or answer.code >= 500:
            if answer.code == Code.RATE_LIMITED and self.bucket is not None:
                self._rate_limited(answer, now)
            else:
                self.catch_up_after = now + CATCH_UP_RETRY
            self.catching_up.appendleft(own)
        elif own.kind == "enter":
            self._forget_room(own.room)
            self._notify(ev.Status(self.state, f"could not join {own.room} again: {answer.text}"))
        elif own.kind == "history":
            log.info("no history of %s: %s", own.room, answer.text)
            room = self.rooms.get(own.room)
            self._join_history(own.room, room.seen_seq if room else 0, [])
        else:
            log.info("broker error %d: %s", answer.code, answer.text)

    def _caught_up_late(self, now: float) -> None:
        """Our own requests whose answer never came (lost, or ignored as malformed): again."""
        late = [msg_id for msg_id, (_, at) in self.own.items() if now - at > CATCH_UP_TIMEOUT]
        for msg_id in late:
            own, _ = self.own.pop(msg_id)
            self.catching_up.append(own)

    def _on_history(self, reply: p.History, now: float) -> None:
        records = sorted(reply.records, key=lambda r: r.seq)
        own = self.own.get(reply.msg_id)
        if own is not None and own[0].kind == "history":
            del self.own[reply.msg_id]
            self._join_history(own[0].room, reply.last_seq, records)
            return
        pending = self.requests.sent.pop(reply.msg_id, None)  # asked by the user: /history
        if pending is None:
            return
        room = pending.request.target
        messages = tuple(self._record(r) for r in records)
        for message in messages:
            self._notify(message)
        self._note_oldest(room, records)
        self._answer(pending, ev.History(room, messages, reply.last_seq))

    def _join_history(self, name: str, last_seq: int, records: list[p.Record]) -> None:
        room = self.rooms.get(name)
        if room is None or room.phase is not Joining.HISTORY:
            return
        if room.seen_seq and last_seq < room.seen_seq:
            # The broker numbers afresh (it restarted without a store): what it has is all
            # new to us, and an `after` of our old number hid it. Ask again from the start.
            room.seen_seq = 0
            self.catching_up.appendleft(CatchUp("history", name))
            return
        # After a reconnect the records fill the gap: what others said meanwhile (also
        # what their clients held back) is shown as it would have been live.
        seen = room.seen_seq
        # History up to last_seq, with what was kept meanwhile: no gap, no repeat.
        shown = room.take_history(last_seq, records)
        if seen and len(records) >= room.asked and records[0].seq > seen + 1:
            gap = records[0].seq - seen - 1
            where = "the lobby" if name == p.EVERYONE else name
            self._notify(ev.Status(self.state, f"{gap} earlier event(s) of {where} (messages, joins, leaves) "
                                               f"came while this client was away and are not shown: "
                                               f"/history {name} shows the messages"))  # fmt: skip
        for item in shown:
            if isinstance(item, p.Record):
                self._notify(self._record(item, history=not seen))
            else:
                self._room_event(name, item[1], item[0])
        self._note_oldest(name, records)

    def _note_oldest(self, room: str, records: list[p.Record]) -> None:
        if records and records[0].seq and records[0].seq < self.oldest.get(room, records[0].seq + 1):
            self.oldest[room] = records[0].seq

    def _from_room(self, published: p.Published) -> None:
        name = published.topic[:-1].decode("utf-8", "replace")
        room = self.rooms.get(name)
        if room is None or not room.subscribed:
            return  # left, or not yet ours
        self._room_published(room, published.seq, published.event)

    def _room_published(self, room: Room, seq: int, event: p.PublishedEvent) -> None:
        shown, missed = room.take_published(seq, event)
        if missed:
            where = "the lobby" if room.name == p.EVERYONE else room.name
            self._notify(
                ev.Status(self.state, f"missed {missed} event(s) of {where}: this client read too slowly")
            )
        for number, item in shown:
            self._room_event(room.name, item, number)

    def _room_event(self, name: str, event: p.PublishedEvent, seq: int) -> None:
        if isinstance(event, p.Message):
            self._message(event, seq)
        elif type(event) is p.Presence:  # a run of JOINs and LEAVEs: one event, no work per change
            self._notify(ev.Presences(name, event.changes))
        elif isinstance(event, p.Join):
            self._notify(ev.Presence(event.name, "join", ev.from_ms(event.time_ms), room=name))
        elif isinstance(event, p.Leave):
            self._notify(ev.Presence(event.name, "leave", ev.from_ms(event.time_ms), event.reason, room=name))
        elif isinstance(event, p.SubjectChanged):
            self._notify(ev.Topic(name, event.text, event.setter, ev.from_ms(event.time_ms), changed=True))

    def _forget_room(self, name: str) -> None:
        room = self.rooms.pop(name, None)
        self.oldest.pop(name, None)
        if room is not None and room.subscribed and self.phase in SUBSCRIBED:
            self._effects.append(Unsubscribe(p.topic_of(name)))

    # --- effects -----------------------------------------------------------------------------

    def _send(self, command: p.ClientCommand, now: float) -> None:
        self._effects.append(ToBroker(p.encode(command)))

    def _notify(self, event: ev.Event) -> None:
        self._effects.append(Notify(event))

    def _answer(self, pending: Pending, outcome: ev.Outcome) -> None:
        self._effects.append(Answer(pending.request, outcome))


#: What each reply or delivery on the DEALER does.
_DEALER_HANDLERS: dict[type, Callable[[Connection, Any, float], None]] = {
    p.Ack: Connection._on_ack,
    p.Error: Connection._on_error,
    p.Message: Connection._on_message,
    p.Users: Connection._on_users,
    p.Receipt: Connection._on_receipt,
    p.History: Connection._on_history,
    p.RoomList: Connection._on_room_list,
    p.Found: Connection._on_found,
    p.Welcome: Connection._welcomed,
    p.Shutdown: Connection._on_shutdown,
    p.Replaced: Connection._on_replaced,
    p.AwayNotice: Connection._on_away,
    p.Subject: Connection._on_subject,
}

#: The command each kind of user request is sent as.
_REQUEST_COMMANDS: dict[str, Callable[[Connection, Request, bytes], p.ClientCommand]] = {
    "send": lambda c, r, i: p.Send(i, r.target, r.text.encode()),
    "who": lambda c, r, i: p.Who(i),
    "enter": lambda c, r, i: p.Enter(i, r.target),
    "exit": lambda c, r, i: p.Exit(i, r.target),
    "rooms": lambda c, r, i: p.Rooms(i),
    "names": lambda c, r, i: p.Names(i, r.target),
    "history": Connection._history_request,
    "search": lambda c, r, i: p.Search(i, r.text),
    "away": lambda c, r, i: p.Away(i, r.text),
    "topic": lambda c, r, i: p.SubjectRequest(i, r.target),
    "settopic": lambda c, r, i: p.SetSubject(i, r.target, r.text),
}


@functools.lru_cache(maxsize=PUBLISHED_DECODED)  # thread-safe: the library's Clients share it
def _decode_published(frame: bytes) -> p.Published:
    """One published frame, decoded (see PUBLISHED_DECODED); a malformed one raises each time."""
    return p.decode_published([frame])
