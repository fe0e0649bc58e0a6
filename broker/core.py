"""The broker's engine: sessions, routing, rooms, liveness, no sockets and no frames.

`BrokerCore.handle` takes one typed input (a decoded command from a connection
with its time and CURVE key, one that could not be decoded, the outcome of a
delivery, a flush, a tick of time, shutdown) and returns typed effects (a reply
to a connection, an event to publish on a topic with its sequence number, a
private message to deliver, a connection to hang up). The shell (server.py)
decodes and encodes at the edge, only with protocol.py, and feeds what becomes
of a delivery back in as one more input. A gateway or a cluster bridge is one
more shell around the same engine.

The store's commit and ACK combining live here, not in the shell: an ACK
promises that what it answers is kept, and after a failed commit exactly what
was not kept is refused (508), the rest acknowledged; that promise is tested
here without sockets. So ACKs and published events are held until a commit:
the shell says when (`Flush`: every so many messages and at the end of each
wake-up, its batching), and the engine flushes on its own where the order of
replies needs it (any other reply to a connection with ACKs held, as replies
keep the order of commands) and before a HISTORY or SEARCH that could show
what a failed commit would then refuse. ACKs held between two flushes are
combined (PROTOCOL.md 5.2).

What a cluster of brokers will share sits behind small interfaces the core
calls, as it calls the Store: room sequence numbers (sequences.py), names and
their owners (names.py), messages handed over awaiting receipts (handed.py),
and in a cluster the shared order of rooms' events (relay.py).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from zchat.broker.expiring import Expiring
from zchat.broker.failures import Failures
from zchat.broker.handed import HandedOver, LocalHandedOver
from zchat.broker.measures import Histogram
from zchat.broker.names import UNLISTED, LocalNames, NameRegistry, Session, Unreachable
from zchat.broker.quietlog import QuietLog
from zchat.broker.relay import (
    DUPLICATE_WINDOW_MS,
    LOG_POSITION,
    Entry,
    KeptLive,
    Known,
    Mail,
    Receipted,
    ReceiptsTaken,
    Relay,
    RoomEvent,
    Taken,
    Waiting,
)
from zchat.broker.sequences import Sequencer, StoreSequencer
from zchat.broker.settings import BrokerSettings
from zchat.broker.store import MemoryStore, Store, StoredMessage, StoreFailed
from zchat.common import protocol as p
from zchat.common.flood import TokenBucket
from zchat.common.jsonlog import fields
from zchat.common.protocol import Code

log = logging.getLogger("zchat.broker")

#: A resume token offered for a name that holds no session is kept as the new session's,
#: when it is at least this long (a guess must not be easy): see _hello.
ADOPTED_TOKEN_MIN = 16
#: What a message the store could not keep is refused with (PROTOCOL.md 9).
FENCED = "this broker lost its lease in the cluster: connect to another broker"
NOT_STORED = "the broker cannot write its store now: not kept, not delivered; send it again later"
NOT_DONE = "the broker cannot write its store now: not done; try again later"
NOT_SHARED = "the broker cannot reach its cluster now: not done; try again later"
FAILED = "the broker failed on this command: it may not have been carried out; send it again"
#: Taken entries met before what they take (remembered so that it is not kept then):
#: the newest this many.
EARLY_TAKEN = 10_000

#: Makes a NamedTuple from a tuple of all its fields, in half the time of the class's
#: own (Python-level) __new__: only on the path every private message takes.
_make = tuple.__new__

# --- inputs ----------------------------------------------------------------------


class Command(NamedTuple):
    """A decoded command from a connection. `peer` is an opaque id the shell chose for
    the connection (a ROUTER routing id; a gateway's web session would give its own);
    the core never reads it. `key` is the identity the shell proved for this very
    message: the CURVE public key ZeroMQ gives ("" without encryption)."""

    peer: bytes
    command: p.ClientCommand
    now: float
    key: str = ""


class Unreadable(NamedTuple):
    """A message from a connection that could not be decoded: answered with its ERROR."""

    peer: bytes
    error: p.ProtocolError
    now: float


class Failed(NamedTuple):
    """Handling a message from `peer` failed outside the core (decoding it, encoding what
    it caused): answered 500, after the connection's held ACKs, as any other reply."""

    peer: bytes
    msg_id: bytes
    error: Exception
    now: float


class Delivered(NamedTuple):
    """A Deliver reached its recipient's connection."""

    delivery: Deliver


class Undelivered(NamedTuple):
    """A Deliver could not be handed over: the recipient's queue is full (`busy`), or
    its connection is gone."""

    delivery: Deliver
    busy: bool
    now: float


class Blocked(NamedTuple):
    """A reply could not be handed to `peer`: its queue is full."""

    peer: bytes
    now: float


class Unblocked(NamedTuple):
    """A reply reached `peer` again: it reads (the shell says so only while `stuck` is not empty)."""

    peer: bytes


class Flush(NamedTuple):
    """Commit the store, then release what waited for it: published events and ACKs."""

    now: float


class Tick(NamedTuple):
    """Time passed: the liveness sweep drops stuck clients, and silent ones the shell does not watch."""

    now: float


class Watched(NamedTuple):
    """The shell will say when `peer`'s connection closes (Disconnected): libzmq's
    heartbeats keep it alive, and the sweep no longer times the session out."""

    peer: bytes


class Disconnected(NamedTuple):
    """`peer`'s connection closed, or its heartbeats stopped: its session is gone."""

    peer: bytes
    now: float


class Shutdown(NamedTuple):
    now: float
    reason: str = "the broker is shutting down"


class Relayed(NamedTuple):
    """In a cluster: the next entry of the log, in the order all brokers share (relay.py)."""

    entry: Entry
    #: Its number in the log, kept with what it changes: a restarted broker reads on from there.
    position: int


class RelayStored(NamedTuple):
    """In a cluster: the log stored a relayed message (`stored`), or could not."""

    waiting: Waiting
    stored: bool


class Released(NamedTuple):
    """In a cluster: whether the release of `session`'s name freed it (`freed`), or found
    it taken over on another broker meanwhile (its client failed over there: no LEAVE)."""

    session: Session
    freed: bool


class Fence(NamedTuple):
    """In a cluster: this broker lost its lease (`fenced`), or holds it again.

    Fenced, it may hold no name: the others count it dead and free its names.
    It forgets its sessions without a LEAVE (the name may already be held on
    another broker: a LEAVE would say that user left), tells their connections
    to go elsewhere (SHUTDOWN), and refuses every command (504) until it is
    told it holds its lease again."""

    fenced: bool
    now: float
    reason: str = ""


Input = (
    Command
    | Unreadable
    | Failed
    | Delivered
    | Undelivered
    | Blocked
    | Unblocked
    | Flush
    | Tick
    | Watched
    | Disconnected
    | Shutdown
    | Relayed
    | RelayStored
    | Released
    | Fence
)

# --- effects ---------------------------------------------------------------------


class Reply(NamedTuple):
    """Send this to one connection: an answer, or a MESSAGE, RECEIPT, REPLACED, SHUTDOWN unasked."""

    peer: bytes
    event: p.ServerEvent


#: Publish this event on its topic, with its sequence number: the effect is the typed
#: PUB message itself (no wrapper to make for every broadcast).
Publish = p.Published


class Deliver(NamedTuple):
    """A private message for `peer`'s connection; what becomes of it comes back as
    Delivered or Undelivered, and only then is its sender answered."""

    peer: bytes
    message: p.Message
    sender: bytes
    sender_key: str


class Hangup(NamedTuple):
    """Close the connection this very message came on, and turn its address away until `until`.

    Only the shell knows the connection and its address (ZeroMQ gives them
    per message), so it carries out the ban the core decides on.
    """

    peer: bytes
    until: float


Effect = Reply | Publish | Deliver | Hangup

# --- the rules of commands, one table ----------------------------------------------


class Rule(NamedTuple):
    """What the dispatch checks for a command before its handler runs (PROTOCOL.md 4, 8, 13.1)."""

    needs_hello: bool
    #: Counted by flood control (PROTOCOL.md 8): all that need HELLO but the connection's own upkeep.
    counted: bool
    handler: Callable[..., None]  # (core, peer, session or None, command, now, key)


#: A SEND that came while the one it repeats was on its way: (peer, command, key), as received.
Resend = tuple[bytes, p.Send, str]


@dataclass(slots=True)
class HeldAck:
    """ACKs of one session waiting for the commit, combined while time and status agree."""

    key: str  # the name key of the session they answer: a failed commit refuses by (key, id)
    time_ms: int
    status: str
    ids: list[bytes]


@dataclass(slots=True)
class Mailbox:
    """A recipient's mailbox as the core counts it (PROTOCOL.md 13.4's limits)."""

    count: int
    size: int  # bytes of bodies
    #: (sender's name key, id) -> its body's size, to count what leaves
    sizes: dict[tuple[str, bytes], int]

    @classmethod
    def of(cls, messages: list[StoredMessage]) -> Mailbox:
        sizes = {(p.name_key(m.sender), m.msg_id): len(m.body) for m in messages}
        return cls(len(messages), sum(len(m.body) for m in messages), sizes)


@dataclass
class BrokerCore:
    settings: BrokerSettings
    #: What WELCOME tells clients to connect their SUB to (known once the shell has bound).
    pub_endpoint: str
    store: Store = field(default_factory=MemoryStore)
    new_token: Callable[[], str] = lambda: secrets.token_hex(16)
    #: None: the local ones, on `store` (sequences.py, names.py, handed.py).
    sequencer: Sequencer | None = None
    names: NameRegistry | None = None
    handed: HandedOver | None = None
    #: In a cluster: the shared order of rooms' events; None: this broker numbers its own.
    relay: Relay | None = None
    by_peer: dict[bytes, Session] = field(default_factory=dict)
    #: The sessions the liveness sweep times out: those on a connection the shell does
    #: not watch (no Watched for it yet). The others end with Disconnected.
    timed: dict[bytes, Session] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    #: Room members by name key, read once per room from the store and kept in step.
    room_members: dict[str, set[str]] = field(default_factory=dict)
    next_maintenance: float = 0.0
    shutting_down: bool = False
    #: In a cluster: the broker lost its lease (Fence) and takes no command.
    fenced: bool = False
    #: The time of the input being handled, for what logs it.
    now: float = 0.0
    refusal_log: QuietLog = field(default_factory=lambda: QuietLog(log))
    #: WHO's answer, kept until someone joins or leaves: WHO is not rate
    #: limited (it needs no HELLO), so it must not sort 10,000 names each time.
    online_names: tuple[str, ...] | None = None
    #: WHO's [name, away text] pairs, kept as online_names is (and dropped with it).
    online_away: tuple[tuple[str, str], ...] = ()
    #: Connections disconnected for flooding, ignored until the time given.
    cooling: Expiring[bytes] = field(default_factory=Expiring)
    #: Sessions whose queue was found full, since when: the liveness sweep drops one
    #: still full after a heartbeat timeout, whatever it sends (PROTOCOL.md 6.3).
    stuck: dict[bytes, float] = field(default_factory=dict)
    #: Sessions online whose mailbox was found full of what they have not confirmed, since
    #: when: dropped as stuck too once a heartbeat timeout passes with no confirmation.
    unconfirmed: dict[bytes, float] = field(default_factory=dict)
    #: Rooms with members, counted once from the store and kept in step (ENTER's limit).
    rooms_in_use: int | None = None
    #: Seconds each commit that wrote took (the metrics endpoint reads it, metrics.py).
    commit_time: Histogram = field(default_factory=Histogram)

    def __post_init__(self) -> None:
        self._sequencer: Sequencer = self.sequencer or StoreSequencer(self.store)
        self._names: NameRegistry = self.names or LocalNames(self.store, self.settings.authorized)
        self._handed: HandedOver = self.handed or LocalHandedOver()
        self.failures = Failures(self.counters)
        #: Only a store on disk can fail a commit (a full disk): with one in memory a HISTORY
        #: never waits for a commit to show only what is kept.
        self._store_can_fail = not isinstance(self.store, MemoryStore)
        self._out: list[Effect] = []
        #: ACKs held until the store has committed, per connection, combined where they can be;
        #: a receipt for a connection with ACKs held waits behind them (_notify).
        self._acks: dict[bytes, list[HeldAck | p.Receipt]] = {}
        #: Published events wait for the store too: a number on a topic is never seen
        #: by a subscriber before what it numbers is kept (PROTOCOL.md 6.2).
        self._to_publish: list[p.Published] = []
        #: What recipients' mailboxes hold, by name key: read from the store once, then kept
        #: in step with what this core adds and takes out, so that a private message to a
        #: user online costs no query for the mailbox's limits.
        self._kept: dict[str, Mailbox] = {}
        #: In a cluster: Taken entries the log gave before the KeptLive they take (the
        #: recipient confirmed on its broker before the sender's broker logged it).
        self._early_taken: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
        #: In a cluster: the LEAVE of each session gone whose name's release is not yet
        #: known to have freed it, by name key (published on its Released, or dropped).
        self._leaving: dict[str, tuple[Session, p.Leave]] = {}
        #: In a cluster: private messages handed over from here, (sender key, id), whose KeptLive
        #: the log has not given back yet: a resend meanwhile is a duplicate. Their ids are
        #: remembered when the log gives them back, as on every broker, so that a second
        #: copy in the log is known for one (_kept_live).
        self._handing: set[tuple[str, bytes]] = set()
        #: Private messages on their way to the recipient's connection, (sender key, id), whose
        #: Delivered or Undelivered has not come back (in a cluster it comes from the recipient's
        #: broker, wake-ups later): resends meanwhile wait here, and are handled once it has
        #: (_settled), so that they are answered as the first turned out, never delivered twice.
        self._delivering: dict[tuple[str, bytes], list[Resend] | None] = {}

    # --- input ---------------------------------------------------------------

    def handle(self, event: Input) -> list[Effect]:
        """One input in, its effects out, in the order the shell must carry them out."""
        out: list[Effect] = []
        self._out = out
        kind = type(event)
        if kind is Command:  # most inputs: no table lookup
            self._command(event)  # type: ignore[arg-type]
        elif kind is Delivered:
            self._delivered(event)  # type: ignore[arg-type]
        else:
            _INPUTS[kind](self, event)
        return out

    def holder(self, name: str) -> Session | None:
        """The session online under `name` (any case), if any."""
        return self._names.holder(p.name_key(name))

    def _command(self, event: Command) -> None:
        peer, command, now, key = event
        self.counters["received"] += 1
        self.now = now
        if self.cooling.until and self.cooling.holds(peer, now):  # a dict's truth: cheapest per message
            self.counters["dropped.flooder"] += 1
            return  # it was told, and answering a flood would be the flood's work
        session = self.by_peer.get(peer)
        if session is not None:
            session.last_seen = now  # any traffic proves the client alive
            if session.client_key != key:  # never, unless something is forged
                self._refuse(
                    peer, command.msg_id, Code.NAME_OWNED, "this message is not from the key of the session"
                )
                return
        if self.shutting_down:
            self._refuse(peer, command.msg_id, Code.SHUTTING_DOWN, "the broker is shutting down")
            return
        if self.fenced:
            self._refuse(peer, command.msg_id, Code.FENCED, FENCED)
            return
        needs_hello, counted, handler = RULES[type(command)]
        if needs_hello:
            if session is None:
                self._refuse(peer, command.msg_id, Code.NOT_REGISTERED, "send HELLO first")
                return
            if counted and session.bucket is not None and (wait := session.bucket.take(now)):
                self._flooding(session, command.msg_id, wait, now)
                return
        try:
            handler(self, peer, session, command, now, key)
        except Exception as e:  # that one command failed, not the broker
            self._failed(peer, command.msg_id, e)

    def _unreadable(self, event: Unreadable) -> None:
        peer, error, now = event
        self.counters["received"] += 1
        self.now = now
        if self.cooling.until and self.cooling.holds(peer, now):
            self.counters["dropped.flooder"] += 1
            return
        session = self.by_peer.get(peer)
        if session is not None:
            session.last_seen = now
        self._refuse(peer, error.msg_id, error.code, error.text)

    def _failed(self, peer: bytes, msg_id: bytes, e: Exception) -> None:
        """A handler raised: answer its command with an ERROR, log it once, go on.

        What the handler did before it failed stays done: a resend of a message that was
        kept after all is answered as a duplicate, never delivered twice."""
        if isinstance(e, StoreFailed):  # a write the command needs cannot be made
            self.failures.store_failed(e)
            code, text = Code.STORE_FAILED, NOT_DONE
        elif isinstance(e, Unreachable):  # the cluster's shared state, for a moment
            log.warning("not done, the cluster cannot be reached: %s", e)
            code, text = Code.STORE_FAILED, NOT_SHARED
        else:
            self.failures.failed("a command", e)
            code, text = Code.INTERNAL, FAILED
        self.counters[f"refused.{code.name.lower()}"] += 1
        self._reply(peer, p.Error(msg_id, code, text))

    # --- commands --------------------------------------------------------------

    def _send(self, peer: bytes, session: Session, command: p.Send, now: float, key: str) -> None:
        msg_id, target, body = command
        if len(body) > self.settings.max_body:
            self._refuse(peer, msg_id, Code.TOO_LARGE,
                         f"message is {len(body)} bytes, the limit is {self.settings.max_body}")  # fmt: skip
            return
        time_ms = int(now * 1000)
        status = self.store.seen(session.key, msg_id)
        if status is None and (self._delivering or self._handing):
            sent = (session.key, msg_id)
            if sent in self._delivering:  # the first's outcome is not back yet: answered after it
                waiting = self._delivering[sent]
                if waiting is None:  # None until a resend comes: no list a message
                    self._delivering[sent] = [(peer, command, key)]
                else:
                    waiting.append((peer, command, key))
                return
            if sent in self._handing:
                status = "accepted"  # in a cluster: handed over, its KeptLive not read back yet
        if status is not None:  # a resend of what was accepted: answer again, deliver nothing
            self.counters["duplicate"] += 1
            self._ack(peer, session.key, msg_id, time_ms, status)
            return
        if target == p.EVERYONE or target.startswith("#"):
            self._to_room(session, msg_id, target.lower(), body, time_ms)
            return
        recipient = self._names.holder(target.lower())
        if recipient is None:
            self._to_absent(session, msg_id, target, body, time_ms)
            return
        if self._mailbox_full(recipient.key, len(body)):  # kept until confirmed: refused, never lost
            self._refuse(peer, msg_id, Code.RECIPIENT_BUSY,
                         f"{recipient.name} has not confirmed what it was sent: its mailbox is full")  # fmt: skip
            self.unconfirmed.setdefault(recipient.peer, now)  # the sweep drops it if it stays so
            return
        self.counters["private"] += 1
        if recipient.away:  # told first: the ACK comes once the message is handed over
            self._reply(peer, p.AwayNotice(msg_id, recipient.name, recipient.away))
        message = _make(p.Message, (msg_id, session.name, recipient.name, time_ms, body))
        self._delivering[(session.key, msg_id)] = None
        self._out.append(_make(Deliver, (recipient.peer, message, peer, session.key)))

    def _to_absent(self, session: Session, msg_id: bytes, target: str, body: bytes, time_ms: int) -> None:
        key = target.lower()
        if p.valid_name(target) and self.store.is_known(key):
            stored = StoredMessage("", 0, msg_id, session.name, target, time_ms, body)
            self._keep_for_later(session.peer, session.key, key, stored, time_ms)
            return
        if p.valid_name(target):
            text = f"{target} is not online and has never been here"
        else:
            text = f"{target!r} is neither a user name, a #room nor '*'"
        self._refuse(session.peer, msg_id, Code.UNKNOWN_RECIPIENT, text)

    def _to_room(self, session: Session, msg_id: bytes, room: str, body: bytes, time_ms: int) -> None:
        if room != p.EVERYONE:
            if not p.valid_room(room):
                self._refuse(session.peer, msg_id, Code.UNKNOWN_RECIPIENT, f"{room!r} is not a room name")
                return
            if session.key not in self._members(room):
                self._refuse(session.peer, msg_id, Code.NOT_MEMBER, f"join {room} to talk there")
                return
        self.counters["broadcast" if room == p.EVERYONE else "room"] += 1
        if self.relay is not None:  # numbered, kept and published when the log gives it back
            self.relay.relay(RoomEvent(room, p.Message(msg_id, session.name, room, time_ms, body)),
                             Waiting(session.peer, session.key, msg_id, time_ms))  # fmt: skip
            return
        seq = self._sequencer.next(room)
        self.store.add_room_message(StoredMessage(room, seq, msg_id, session.name, room, time_ms, body))
        self.store.remember(session.key, msg_id, "accepted", time_ms)
        self._to_publish.append(
            p.Published(p.topic_of(room), seq, p.Message(msg_id, session.name, room, time_ms, body))
        )
        self._ack(session.peer, session.key, msg_id, time_ms)

    def _flooding(self, session: Session, msg_id: bytes, wait: float, now: float) -> None:
        """Over the rate limit: refused with a retry-after, or disconnected when it persists."""
        retry_ms = max(1, round(wait * 1000))
        assert session.bucket is not None
        if session.bucket.abused():
            cool_off = self.settings.cool_off
            log.warning("%s disconnected for flooding (cool-off %g s)", session.name, cool_off,
                        extra=fields("flooding", name=session.name, cool_off=cool_off))  # fmt: skip
            # Ignored for at least a heartbeat timeout, whatever the cool-off:
            # routing ids are never reused, and what it had queued is not answered.
            self.cooling.add(session.peer, now + max(cool_off, self.settings.timeout))
            text = f"disconnected for flooding: wait {cool_off:g} s before connecting again"
            self._reply(session.peer, p.Error(msg_id, Code.RATE_LIMITED, text, int(cool_off * 1000)))
            self._drop(session, now, "flooding")
            self._out.append(Hangup(session.peer, now + cool_off))
            return
        self._refuse(
            session.peer, msg_id, Code.RATE_LIMITED, f"slow down: retry after {retry_ms} ms", retry_ms
        )

    def _keep_for_later(self, sender: bytes, sender_key: str, key: str, message: StoredMessage,
                        time_ms: int) -> None:  # fmt: skip
        """A private message for a known user who is offline: into its mailbox."""
        if self._mailbox_full(key, len(message.body)):
            self._refuse(
                sender, message.msg_id, Code.RECIPIENT_BUSY, f"the mailbox of {message.target} is full"
            )
            return
        self.counters["stored"] += 1
        if self.relay is not None:  # into every broker's copy of the mailbox, acknowledged once logged
            self.relay.relay(
                Mail(key, message), Waiting(sender, sender_key, message.msg_id, time_ms, "stored")
            )
            return
        self._enqueue(key, message)
        self.store.remember(sender_key, message.msg_id, "stored", message.time_ms)
        self._ack(sender, sender_key, message.msg_id, time_ms, "stored")

    def _mailbox_full(self, key: str, size: int) -> bool:
        """Whether `key`'s mailbox (mail, and messages handed live not yet confirmed) has no
        room for a message of `size` bytes (PROTOCOL.md 13.4)."""
        kept = self._kept.get(key)
        if kept is None:
            kept = self._kept[key] = Mailbox.of(self.store.mailbox(key))
        s = self.settings
        return kept.count >= s.mailbox_messages or kept.size + size > s.mailbox_bytes

    def _enqueue(self, key: str, message: StoredMessage) -> None:
        self.store.enqueue(key, message)
        kept = self._kept.get(key)
        if kept is not None:
            kept.count += 1
            kept.size += len(message.body)
            kept.sizes[(p.name_key(message.sender), message.msg_id)] = len(message.body)

    def _take(self, key: str, sender_key: str, msg_id: bytes) -> None:
        """Out of `key`'s mailbox, confirmed by its recipient here: a write the store may
        put off to the commit (there is one per private message)."""
        self.store.take(key, sender_key, msg_id)
        self._uncount(key, sender_key, msg_id)

    def _taken(self, key: str, sender_key: str, msg_id: bytes) -> bool:
        """Out of `key`'s mailbox, confirmed (on another broker): whether it was there."""
        taken = self.store.delivered(key, sender_key, msg_id)
        if taken:
            self._uncount(key, sender_key, msg_id)
        return taken

    def _uncount(self, key: str, sender_key: str, msg_id: bytes) -> None:
        kept = self._kept.get(key)
        if kept is None:
            return
        size = kept.sizes.pop((sender_key, msg_id), None)
        if size is None:  # not counted here (not yet logged, a duplicate id): read again
            del self._kept[key]
        else:
            kept.count -= 1
            kept.size -= size

    def _ping(self, peer: bytes, session: Session, command: p.Ping, now: float, key: str) -> None:
        self._reply(peer, p.Pong(command.msg_id, int(now * 1000)))

    def _who(self, peer: bytes, session: Session | None, command: p.Who, now: float, key: str) -> None:
        self._reply(peer, self._users(command.msg_id))

    def _away(self, peer: bytes, session: Session, command: p.Away, now: float, key: str) -> None:
        session.away = command.text
        self._names.changed_away(session)  # in a cluster, for WHO on the other brokers
        self.online_names = None  # WHO shows who is away
        self._ack(peer, session.key, command.msg_id, int(now * 1000))

    def _subject(
        self, peer: bytes, session: Session, command: p.SubjectRequest, now: float, key: str
    ) -> None:
        text, setter, time_ms = self.store.subject(command.room) or ("", "", 0)
        self._reply(peer, p.Subject(command.msg_id, command.room, text, setter, time_ms))

    def _set_subject(
        self, peer: bytes, session: Session, command: p.SetSubject, now: float, key: str
    ) -> None:
        room = command.room
        if session.key not in self._members(room):  # any member may, as on IRC without +t
            self._refuse(peer, command.msg_id, Code.NOT_MEMBER, f"join {room} to set its topic")
            return
        time_ms = int(now * 1000)
        changed = p.SubjectChanged(room, command.text, session.name, time_ms)
        if self.relay is None:  # in a cluster, kept when the log gives it back (_room_event)
            self.store.set_subject(room, command.text, session.name, time_ms)
        self._ack(peer, session.key, command.msg_id, time_ms)
        self._publish(room, changed)

    def _sync(self, peer: bytes, session: Session, command: p.Sync, now: float, key: str) -> None:
        # Per-client topics carry no sequence (0): nothing is counted there.
        tag = command.tag
        topic = p.sync_topic(session.name, tag) if tag else p.private_topic(session.name)
        self._to_publish.append(p.Published(topic, 0, p.Synced(command.msg_id)))
        self._ack(peer, session.key, command.msg_id, int(now * 1000))

    def _ready(self, peer: bytes, session: Session, command: p.Ready, now: float, key: str) -> None:
        time_ms = int(now * 1000)
        self._ack(peer, session.key, command.msg_id, time_ms)
        if not session.announced:
            session.announced = True
            self._publish(p.EVERYONE, p.Join(session.name, time_ms))

    def _bye(self, peer: bytes, session: Session, command: p.Bye, now: float, key: str) -> None:
        self._ack(peer, session.key, command.msg_id, int(now * 1000))  # the client leaves on purpose
        self._drop(session, now, "quit")

    def _hello(self, peer: bytes, current: Session | None, hello: p.Hello, now: float,
               client_key: str) -> None:  # fmt: skip
        key = p.name_key(hello.name)
        if current is not None:
            if current.key == key:  # a repeated HELLO: answer it again
                self._reply(peer, self._welcome(hello.msg_id, current, now))
                return
            self._refuse(peer, hello.msg_id, Code.ALREADY_REGISTERED,
                         f"this connection is already registered as {current.name}")  # fmt: skip
            return
        if client_key and self._not_owner(peer, hello, key, client_key):
            return
        holder = self._names.holder(key)
        if holder is not None:
            # The token, or the very key that owns the name, proves it is the same user.
            same_owner = bool(client_key) and holder.client_key == client_key
            if same_owner or (hello.token and secrets.compare_digest(hello.token, holder.token)):
                self._take_over(peer, holder, hello, now)
                return
            if self._names.still_held(key) is not None:
                self._refuse(peer, hello.msg_id, Code.NAME_TAKEN, f"the name {holder.name} is taken")
                return
        if self._over_limits(peer, hello.msg_id, client_key):
            return
        if client_key and self._names.owner(key) is None:
            self._names.bind(key, client_key)  # trust on first use
            log.info("the name %s now belongs to key %s", hello.name, client_key)
        # A token offered for a free name is kept as the new session's: a client back after
        # a restart whose first HELLO registered while it stopped waiting (a busy broker)
        # then resumes that session with its next HELLO, instead of meeting 409 from it.
        token = hello.token if len(hello.token) >= ADOPTED_TOKEN_MIN else self.new_token()
        session = Session(peer, hello.name, token, now, key, client_key, client=hello.client)
        if self.settings.rate > 0:
            session.bucket = TokenBucket.new_session(self.settings.rate, self.settings.burst, now)
        if not self._names.claim(session):  # taken meanwhile elsewhere (a cluster's brokers share names)
            self._refuse(peer, hello.msg_id, Code.NAME_TAKEN, f"the name {hello.name} is taken")
            return
        leaving = self._leaving.pop(key, None)
        if leaving is not None:  # the claim, a create, found the name free: the old session left
            self._publish(p.EVERYONE, leaving[1])
        try:
            if self.relay is not None and not self.store.is_known(key):
                self.relay.relay(Known(key))  # mail for it is kept on every broker from now on
            self.store.add_user(key)
            mail, receipts = self._waiting_for(session)
        except Exception:
            self._names.release(session)  # should the store fail, no session is left without its WELCOME
            raise
        self.by_peer[peer] = self.timed[peer] = session
        self.online_names = None
        self.counters["joined"] += 1
        online = self._names.count()
        log.info(
            "%s joined (%d online)",
            session.name,
            online,
            extra=fields("joined", name=session.name, online=online),
        )
        self._reply(peer, self._welcome(hello.msg_id, session, now))
        waiting: list[p.ServerEvent] = [*mail, *receipts]
        for event in waiting:
            self._reply(peer, event)

    def _take_over(self, peer: bytes, holder: Session, hello: p.Hello, now: float) -> None:
        """The same client on a new connection: it takes its session over, so nobody sees
        it leave and join again. The old connection is told, in case it is alive: were it
        to take the session back, the two would take turns for ever."""
        self._names.take_over(holder)  # first: in a cluster it may fail, and nothing is changed yet
        old_peer = holder.peer
        self.by_peer.pop(old_peer, None)  # not there when the session was on another broker
        self.timed.pop(old_peer, None)
        holder.peer = peer
        holder.last_seen = now
        holder.client = hello.client
        self.by_peer[peer] = self.timed[peer] = holder  # timed until the shell watches the new one
        if holder.bucket is None and self.settings.rate > 0:  # a session from another broker
            # Its bucket there is not known here: it starts empty (not with a new session's
            # second's worth), so that going from broker to broker earns no tokens.
            holder.bucket = TokenBucket.moved(self.settings.rate, self.settings.burst, now)
        self.counters["resumed"] += 1
        log.info(
            "%s resumed its session on a new connection",
            holder.name,
            extra=fields("resumed", name=holder.name),
        )
        self._reply(old_peer, p.Replaced("your session continues on another connection"))
        self._reply(peer, self._welcome(hello.msg_id, holder, now))
        # What the old connection was handed may be lost with it: what is unconfirmed comes again.
        for message in self._mailbox_for(holder):
            self._reply(peer, message)

    def _waiting_for(self, session: Session) -> tuple[list[p.Message], list[p.Receipt]]:
        """What was kept for a user while it was away: mail, then receipts."""
        mail = self._mailbox_for(session)
        by_recipient: dict[tuple[str, int], list[bytes]] = {}
        for msg_id, recipient, when in self.store.receipts(session.key):
            by_recipient.setdefault((recipient, when), []).append(msg_id)
            self.store.clear_receipt(session.key, msg_id)
        receipts = [p.Receipt(recipient, when, tuple(ids)) for (recipient, when), ids in by_recipient.items()]
        if receipts and self.relay is not None:  # and out of the other brokers' copies
            self.relay.relay(ReceiptsTaken(session.key, tuple(i for r in receipts for i in r.msg_ids)))
        return mail, receipts

    def _mailbox_for(self, session: Session) -> list[p.Message]:
        """Everything in the user's mailbox, to hand over (again): mail, and messages handed
        live that it has not confirmed, each with its id, sender and time."""
        mail = []
        kept = self.store.mailbox(session.key)
        for m in kept:
            mail.append(p.Message(m.msg_id, m.sender, m.target, m.time_ms, m.body))
            self._handed.add((session.key, p.name_key(m.sender), m.msg_id), from_mailbox=True)
        self._kept[session.key] = Mailbox.of(kept)  # read anyway: counted from now on
        return mail

    def _over_limits(self, peer: bytes, msg_id: bytes, client_key: str) -> bool:
        s = self.settings
        if self._names.count() >= s.max_clients:
            self._refuse(peer, msg_id, Code.TOO_MANY, f"the broker is full ({s.max_clients} clients)")
            return True
        if client_key and sum(x.client_key == client_key for x in self._names.sessions()) >= s.max_per_key:
            self._refuse(peer, msg_id, Code.TOO_MANY, f"this key already has {s.max_per_key} sessions")
            return True
        return False

    def _not_owner(self, peer: bytes, hello: p.Hello, key: str, client_key: str) -> bool:
        """Names bound to keys: an allowlist, or the first key to use a name."""
        owner = self._names.owner(key)
        if owner is None:
            return False  # free: bound to this key once the session is granted (_hello)
        if owner == UNLISTED:
            self._refuse(peer, hello.msg_id, Code.NAME_OWNED, f"{hello.name} is not on this broker's list")
            return True
        if owner != client_key:
            self._refuse(peer, hello.msg_id, Code.NAME_OWNED, f"the name {hello.name} belongs to another key")
            return True
        return False

    def _welcome(self, msg_id: bytes, session: Session, now: float) -> p.Welcome:
        s = self.settings
        rate, burst = s.welcome_rate
        return p.Welcome(msg_id, session.name, session.token, self.pub_endpoint, s.heartbeat_ms, s.timeout_ms,
                         s.max_body, int(now * 1000), rate, burst)  # fmt: skip

    # --- rooms, history, search, receipts (PROTOCOL.md 13) ---------------------

    def _rooms(self, peer: bytes, session: Session, command: p.Rooms, now: float, key: str) -> None:
        sizes = tuple(sorted(self.store.room_sizes().items()))
        self._reply(peer, p.RoomList(command.msg_id, sizes, tuple(sorted(self.store.rooms_of(session.key)))))

    def _names_of(self, peer: bytes, session: Session, command: p.Names, now: float, key: str) -> None:
        if command.room == p.EVERYONE:
            self._reply(peer, self._users(command.msg_id))
            return
        online = (self._names.holder(k) for k in self._members(command.room))
        self._reply(
            peer, p.Users(command.msg_id, tuple(sorted((s.name for s in online if s), key=str.lower)))
        )

    def _history(
        self, peer: bytes, session: Session, command: p.HistoryRequest, now: float, key: str
    ) -> None:
        room = command.room
        if room != p.EVERYONE and session.key not in self._members(room):
            self._refuse(peer, command.msg_id, Code.NOT_MEMBER, f"join {room} to read its history")
            return
        if self._store_can_fail and any(type(x.event) is p.Message for x in self._to_publish):
            self._flush()  # it shows only what is stored, and a room's message not yet kept may be refused
        last = self._sequencer.last(room)
        found = self.store.room_history(room, command.before or last + 1, command.limit, command.after)
        self._reply(peer, p.History(command.msg_id, room, last, tuple(_record(m) for m in found)))

    def _search(self, peer: bytes, session: Session, command: p.Search, now: float, key: str) -> None:
        if self._store_can_fail and (self._acks or self._to_publish):
            self._flush()  # it finds private mail too: anything held may be in it
        found = self.store.search(session.key, command.words, p.MAX_FOUND)
        self._reply(peer, p.Found(command.msg_id, tuple(_record(m) for m in found)))

    def _membership(
        self, peer: bytes, session: Session, command: p.Enter | p.Exit, now: float, key: str
    ) -> None:
        room, entering = command.room, type(command) is p.Enter
        if room == p.EVERYONE:
            self._refuse(peer, command.msg_id, Code.MALFORMED, "everyone is always in the lobby")
            return
        time_ms = int(now * 1000)
        members = self._members(room)
        if (session.key in members) == entering:
            self._ack(peer, session.key, command.msg_id, time_ms)
            if entering:
                self._subject_on_entering(peer, command.msg_id, room)
            return  # nothing changes
        if entering and self._rooms_full(session, command.msg_id, room, members):
            return
        self.store.set_member(session.key, room, entering)
        if self.rooms_in_use is not None and len(members) == (0 if entering else 1):
            self.rooms_in_use += 1 if entering else -1  # a room's first member came, or its last went
        self._ack(peer, session.key, command.msg_id, time_ms)
        if entering:
            members.add(session.key)
            self._publish(room, p.Join(session.name, time_ms, room))
            self._subject_on_entering(peer, command.msg_id, room)
        else:
            members.discard(session.key)
            self._publish(room, p.Leave(session.name, time_ms, "left", room))

    def _subject_on_entering(self, peer: bytes, msg_id: bytes, room: str) -> None:
        """A room with a subject: ENTER's ACK is followed by SUBJECT with its id (PROTOCOL.md 13.7)."""
        subject = self.store.subject(room)
        if subject is not None:
            self._reply(peer, p.Subject(msg_id, room, *subject))

    def _rooms_full(self, session: Session, msg_id: bytes, room: str, members: set[str]) -> bool:
        s = self.settings
        if len(self.store.rooms_of(session.key)) >= s.max_rooms_per_user:
            self._refuse(session.peer, msg_id, Code.TOO_MANY,
                         f"you are in {s.max_rooms_per_user} rooms, the most one may be in")  # fmt: skip
            return True
        if self.rooms_in_use is None:
            self.rooms_in_use = len(self.store.room_sizes())  # once: counting them costs a scan
        if not members and self.rooms_in_use >= s.max_rooms:
            self._refuse(
                session.peer, msg_id, Code.TOO_MANY, f"this broker has {s.max_rooms} rooms, the most it holds"
            )
            return True
        return False

    def _received(self, peer: bytes, session: Session, command: p.Received, now: float, key: str) -> None:
        """The recipient's client has these messages: clear its mailbox, tell the sender.

        Only messages this sender really sent to this recipient, and not confirmed
        before, are receipted: made-up ids tell nobody anything."""
        sender_key = command.sender.lower()
        confirmed = []
        for msg_id in command.ids:
            # Only ids handed over reach the store: made-up ones cost a dict lookup, no query.
            from_mailbox = self._handed.confirm((session.key, sender_key, msg_id))
            if from_mailbox is None:
                continue
            if from_mailbox:
                self._take(session.key, sender_key, msg_id)
                if self.relay is not None:  # and from the copies of the other brokers
                    self.relay.relay(Taken(session.key, sender_key, msg_id))
            confirmed.append(msg_id)
        time_ms = int(now * 1000)
        self._ack(peer, session.key, command.msg_id, time_ms)
        if not confirmed:
            return
        if self.unconfirmed:
            self.unconfirmed.pop(peer, None)  # it confirms again
        sender = self._names.holder(sender_key)
        if sender is not None:
            self._notify(sender.peer, p.Receipt(session.name, time_ms, tuple(confirmed)))
        elif self.relay is not None:  # kept on every broker: the sender may come back on any
            self.relay.relay(Receipted(sender_key, session.name, time_ms, tuple(confirmed)))
        elif self.store.is_known(sender_key):  # kept only for someone who can come back for it
            for msg_id in confirmed:
                self.store.add_receipt(sender_key, msg_id, session.name, time_ms)

    def maintain(self, now: float) -> None:
        """Retention: forget what is older than the configured history, hourly. Store
        upkeep, as the store's own catch_up: no effects, called by the shell when it may."""
        self.refusal_log.flush(now)  # a flood's summary, also when the flood has stopped
        if now < self.next_maintenance:
            return
        self.next_maintenance = now + 3600
        days = self.settings.history_days
        expired = self.store.expire(int((now - days * 86400) * 1000))
        if expired:
            log.info("retention: %d messages older than %g days forgotten", expired, days)

    # --- what became of deliveries, time, the end ------------------------------

    def _delivered(self, event: Delivered) -> None:
        """A private message reached its recipient's connection (not yet the recipient: it
        is lost with the connection, or the broker): it is kept in the recipient's mailbox,
        as handed, until the recipient confirms it; a resend is a duplicate now, and its
        sender is answered once it is kept (PROTOCOL.md 5.2, 13.4)."""
        peer, message, sender, sender_key = event.delivery
        msg_id, name, target, time_ms, body = message
        resent = self._delivering.pop((sender_key, msg_id), None)
        if self.stuck:
            self.stuck.pop(peer, None)  # it reads again
        key = target.lower()
        kept = StoredMessage("", 0, msg_id, name, target, time_ms, body)
        # Remembered here, where the recipient is, so that its RECEIVED is confirmed here; in a
        # cluster too, as a message from another broker is (cluster/node.py).
        self._handed.add((key, sender_key, msg_id), True)
        if self.relay is not None:  # into every broker's copy of the mailbox, acknowledged once logged
            self._handing.add((sender_key, msg_id))
            self.relay.relay(KeptLive(key, kept), Waiting(sender, sender_key, msg_id, time_ms))
        else:
            self.store.remember(sender_key, msg_id, "accepted", time_ms)
            self._enqueue(key, kept)
            # Acknowledged after the commit that keeps it: should that fail, the ACK becomes 508.
            self._ack(sender, sender_key, msg_id, time_ms)
        if resent:
            self._settled(resent)

    def _undelivered(self, event: Undelivered) -> None:
        """A private message could not be handed to its recipient: tell the sender why."""
        d, busy, now = event
        self.now = now
        m = d.message
        resent = self._delivering.pop((d.sender_key, m.msg_id), None)
        recipient = self.by_peer.get(d.peer)
        if busy:
            self.counters["undelivered.busy"] += 1
            name = recipient.name if recipient else "the recipient"
            self._refuse(
                d.sender, m.msg_id, Code.RECIPIENT_BUSY, f"{name} is not reading; message not delivered"
            )
            if recipient is not None:
                since = self.stuck.setdefault(recipient.peer, now)
                if now - since > self.settings.timeout:
                    self._drop_stuck(recipient, now)
        else:  # the recipient is gone but known: the message waits in its mailbox
            kept = StoredMessage("", 0, m.msg_id, m.sender, m.target, m.time_ms, m.body)
            self._keep_for_later(d.sender, d.sender_key, m.target.lower(), kept, int(now * 1000))
            if recipient is not None:
                self._drop(recipient, now, "disconnected")
        if resent:
            self._settled(resent)

    def _settled(self, resent: list[Resend]) -> None:
        """Resends that came while the first was on its way, handled now that its outcome is
        known, as if they came just after it, at the time of the latest input (when the repeat
        is answered, PROTOCOL.md 5.2): a duplicate answered with the first's status if it was
        handed over or kept, a new message if it was refused (busy: the resend is the retry
        its ERROR asks for). One whose connection ended meanwhile is not answered: its client
        resends what was unanswered when it reconnects."""
        for peer, command, key in resent:
            session = self.by_peer.get(peer)
            if session is None or self.fenced or self.shutting_down:
                continue
            try:
                self._send(peer, session, command, self.now, key)
            except Exception as e:  # that one command failed, not the broker
                self._failed(peer, command.msg_id, e)

    def _blocked(self, event: Blocked) -> None:
        if event.peer in self.by_peer and event.peer not in self.stuck:
            self.stuck[event.peer] = event.now

    def _unblocked(self, event: Unblocked) -> None:
        self.stuck.pop(event.peer, None)

    def _tick(self, event: Tick) -> None:
        """Drop every client stuck for longer than the timeout, or silent as long on a
        connection the shell does not watch (one it watches ends with Disconnected)."""
        now = event.now
        self.now = now
        deadline = now - self.settings.timeout
        self.cooling.forget_expired(now)  # a flooder that went quiet is forgotten
        for session in [s for s in self.timed.values() if s.last_seen < deadline]:
            self._drop(session, now, "timeout")
        for peer, since in list(self.stuck.items()):
            stuck = self.by_peer.get(peer)
            if stuck is None:  # it went on another connection
                del self.stuck[peer]
            elif since < deadline:
                self._drop_stuck(stuck, now)
        for peer, since in list(self.unconfirmed.items()):
            full = self.by_peer.get(peer)
            if full is None:
                del self.unconfirmed[peer]
            elif since < deadline:
                log.warning("%s dropped: it confirmed nothing of its full mailbox", full.name)
                self._drop(full, now, "stuck")

    def _watched(self, event: Watched) -> None:
        self.timed.pop(event.peer, None)

    def _disconnected(self, event: Disconnected) -> None:
        session = self.by_peer.get(event.peer)
        if session is not None:  # else it ended already (BYE, a drop) or went on another connection
            self.now = event.now
            self._drop(session, event.now, "disconnected")

    def _shutdown(self, event: Shutdown) -> None:
        """Tell every client, directly and on PUB, that the broker is going away."""
        self._flush()
        self.shutting_down = True
        notice = p.Shutdown(event.reason)
        for peer in self.by_peer:
            self._reply(peer, notice)
        if self.relay is None:  # in a cluster the lobby goes on: each client was told directly
            self._publish(p.EVERYONE, notice)
        self._flush()

    def _fence(self, event: Fence) -> None:
        """Fenced: every session forgotten, without a LEAVE; its connection told to go elsewhere."""
        self.now = event.now
        if event.fenced == self.fenced:
            return
        self.fenced = event.fenced
        if not event.fenced:
            log.warning("the broker holds its cluster lease again: it takes commands again")
            return
        self._flush()
        log.warning("fenced (%s): forgetting %d sessions, refusing every command", event.reason,
                    len(self.by_peer))  # fmt: skip
        notice = p.Shutdown(f"{FENCED} ({event.reason})")
        for session in list(self.by_peer.values()):
            self._reply(session.peer, notice)
            del self.by_peer[session.peer]
            self._names.release(session)  # only the revision it wrote: a name moved on stays
            self.counters["left.fenced"] += 1
        self.stuck.clear()
        self.unconfirmed.clear()
        self._leaving.clear()  # fenced: no LEAVE, as for the sessions above
        self.online_names = None
        self._flush()

    # --- a cluster's shared order (relay.py) -----------------------------------

    def _relayed(self, event: Relayed) -> None:
        """The next entry of the cluster's log, carried out here as on every broker.

        A message (in a room, mail, kept live) whose sender and id were read before is a
        resend that reached the log twice (through this broker or another, or after a
        PubAck that came too late): every broker drops it alike, as its store remembers
        the ids it read (log.py)."""
        entry, position = event
        self.store.used_seq(LOG_POSITION, position)
        if isinstance(entry, RoomEvent):
            self._room_event(*entry)
        elif isinstance(entry, Mail):
            self._mail(*entry)
        elif isinstance(entry, KeptLive):
            self._kept_live(*entry)
        elif isinstance(entry, Taken):
            if not self._taken(*entry):
                self._early_taken[(entry.recipient, entry.sender, entry.msg_id)] = None
                if len(self._early_taken) > EARLY_TAKEN:
                    self._early_taken.popitem(last=False)
        elif isinstance(entry, Receipted):
            self._receipted(*entry)
        elif isinstance(entry, ReceiptsTaken):
            for msg_id in entry.msg_ids:
                self.store.clear_receipt(entry.sender, msg_id)
        else:
            self.store.add_user(entry.user)

    def _receipted(self, sender: str, recipient: str, time_ms: int, msg_ids: tuple[bytes, ...]) -> None:
        """A receipt for a sender who was offline: to it, if it signed in here meanwhile (and
        out of the others' copies), else kept until it signs in, here or on another broker."""
        session = self._names.holder(sender)
        if session is not None and session.peer in self.by_peer:
            self._notify(session.peer, p.Receipt(recipient, time_ms, msg_ids))
            assert self.relay is not None
            self.relay.relay(ReceiptsTaken(sender, msg_ids))
        elif self.store.is_known(sender):
            for msg_id in msg_ids:
                self.store.add_receipt(sender, msg_id, recipient, time_ms)

    def _room_event(self, room: str, published: p.PublishedEvent) -> None:
        """Numbered, kept and published. Membership follows the room's JOIN and LEAVE,
        wherever they came from."""
        kind = type(published)
        if kind is p.Message:
            assert isinstance(published, p.Message)
            if self._logged_before(p.name_key(published.sender), published.msg_id, published.time_ms):
                return  # not numbered: every broker drops it alike
        seq = self._sequencer.next(room)
        if kind is p.Message:
            assert isinstance(published, p.Message)
            m = published
            self.store.add_room_message(StoredMessage(room, seq, m.msg_id, m.sender, room, m.time_ms, m.body))
            self.store.remember(
                p.name_key(m.sender), m.msg_id, "accepted", m.time_ms
            )  # a resend here is a duplicate
        elif room != p.EVERYONE and kind in (p.Join, p.Leave):
            assert isinstance(published, p.Join | p.Leave)
            self._member(p.name_key(published.name), room, kind is p.Join)
        elif kind is p.SubjectChanged:
            assert isinstance(published, p.SubjectChanged)
            self.store.set_subject(room, published.text, published.setter, published.time_ms)
        self._to_publish.append(p.Published(p.topic_of(room), seq, published))

    def _logged_before(self, sender_key: str, msg_id: bytes, time_ms: int) -> bool:
        """Whether a message read from the log was read before, within the duplicate window of
        its time: a resend that reached the log twice. Decided alike on every broker, each
        remembering what it read (in memory, the newest 100,000 ids: enough for the window
        below about 800 messages a second)."""
        at = self.store.seen_at(sender_key, msg_id)
        if at is None or abs(time_ms - at) > DUPLICATE_WINDOW_MS:
            return False
        self.counters["duplicate.logged"] += 1
        return True

    def _kept_live(self, recipient: str, m: StoredMessage) -> None:
        """Handed to its online recipient: kept in its mailbox until confirmed, unless the
        confirmation came first (its Taken is earlier in the log)."""
        sender_key = p.name_key(m.sender)
        self._handing.discard((sender_key, m.msg_id))
        if self._logged_before(sender_key, m.msg_id, m.time_ms):
            return
        self.store.remember(sender_key, m.msg_id, "accepted", m.time_ms)  # a resend here is a duplicate
        handed = (recipient, sender_key, m.msg_id)
        if handed in self._early_taken:
            del self._early_taken[handed]
            self.store.add_private(recipient, m)  # confirmed already: kept for search alone
            return
        self._enqueue(recipient, m)

    def _mail(self, recipient: str, m: StoredMessage) -> None:
        """Into the recipient's mailbox; handed over at once if it signed in here meanwhile."""
        if self._logged_before(p.name_key(m.sender), m.msg_id, m.time_ms):
            return
        self._enqueue(recipient, m)
        self.store.remember(p.name_key(m.sender), m.msg_id, "stored", m.time_ms)
        session = self._names.holder(recipient)
        if session is not None and session.peer in self.by_peer:
            self._handed.add((recipient, p.name_key(m.sender), m.msg_id), from_mailbox=True)
            self._reply(session.peer, p.Message(m.msg_id, m.sender, m.target, m.time_ms, m.body))

    def _member(self, key: str, room: str, entering: bool) -> None:
        members = self._members(room)
        if (key in members) == entering:
            return  # this broker made the change itself
        self.store.set_member(key, room, entering)
        if self.rooms_in_use is not None and len(members) == (0 if entering else 1):
            self.rooms_in_use += 1 if entering else -1
        if entering:
            members.add(key)
        else:
            members.discard(key)

    def _relay_stored(self, event: RelayStored) -> None:
        (peer, key, msg_id, time_ms, status), stored = event
        if stored:
            self._ack(peer, key, msg_id, time_ms, status)
        else:  # a resend goes the whole way again: should this one be stored after all, the
            # log gives both, and the second is dropped (_relayed)
            self._handing.discard((key, msg_id))
            self._refuse(peer, msg_id, Code.STORE_FAILED, NOT_STORED)

    # --- held until the commit -----------------------------------------------

    def _flush(self, event: Flush | None = None) -> None:
        """Commit the store, then release what waited for it: published events, then ACKs."""
        refused = self._commit()  # an ACK promises the message is kept: store first
        out = self._out
        stored = refused is not None and not refused
        for published in self._to_publish:
            # A message never kept is never published either. Its number stays used
            # (the store keeps it as such), so subscribers see a gap (PROTOCOL.md 6.2).
            message = published.event
            if not stored and type(message) is p.Message:
                assert isinstance(message, p.Message)
                if refused is None or (message.sender.lower(), message.msg_id) in refused:
                    continue
            out.append(published)
        self._to_publish = []
        for peer, held in self._acks.items():
            for h in held:
                if not isinstance(h, HeldAck):  # a receipt: it goes out whatever the commit did
                    out.append(Reply(peer, h))
                elif stored:
                    ids = h.ids
                    out.append(Reply(peer, p.Ack(ids[0], h.time_ms, h.status, tuple(ids[1:]))))
                else:
                    self._answer_unstored(peer, h, refused)
        self._acks = {}

    def _commit(self) -> frozenset[tuple[str, bytes]] | None:
        """Commit the store: the messages it could not keep (StoreFailed.refused), or None
        when it is not known what it kept (a failure that is not the store's own)."""
        started = time.perf_counter()
        try:
            wrote = self.store.commit()
        except StoreFailed as e:
            self.failures.store_failed(e)
            self._kept.clear()  # what was rolled back is counted: read again
            return e.refused
        except Exception as e:
            self.failures.failed("storing", e)
            self._kept.clear()
            return None
        if wrote:
            # Only commits that wrote messages: the empty ones each wake-up would drown them.
            self.commit_time.observe(time.perf_counter() - started)
            self.failures.store_written()
        return frozenset()

    def _answer_unstored(
        self, peer: bytes, held: HeldAck, refused: frozenset[tuple[str, bytes]] | None
    ) -> None:
        """After a failed commit: an ACK's ids that were not kept become ERRORs, in
        their place among the others (replies keep the order of commands)."""
        out = self._out
        if refused is None:  # the store failed in a way of its own: nothing is known kept
            for msg_id in held.ids:
                self.counters["refused.internal"] += 1
                out.append(Reply(peer, p.Error(msg_id, Code.INTERNAL, FAILED)))
            return
        run: list[bytes] = []
        for msg_id in held.ids:
            if (held.key, msg_id) not in refused:
                run.append(msg_id)
                continue
            if run:
                out.append(Reply(peer, p.Ack(run[0], held.time_ms, held.status, tuple(run[1:]))))
                run = []
            self.counters["refused.store_failed"] += 1
            out.append(Reply(peer, p.Error(msg_id, Code.STORE_FAILED, NOT_STORED)))
        if run:
            out.append(Reply(peer, p.Ack(run[0], held.time_ms, held.status, tuple(run[1:]))))

    def _ack(self, peer: bytes, key: str, msg_id: bytes, time_ms: int, status: str = "accepted") -> None:
        """Hold an ACK until the commit, combined with the connection's last one when it
        answers the same session at the same time with the same status (PROTOCOL.md 5.2)."""
        held = self._acks.get(peer)
        if held is None:
            self._acks[peer] = [HeldAck(key, time_ms, status, [msg_id])]
            return
        last = held[-1]
        if type(last) is HeldAck and last.time_ms == time_ms and last.status == status and last.key == key:
            last.ids.append(msg_id)
        else:
            held.append(HeldAck(key, time_ms, status, [msg_id]))

    def _notify(self, peer: bytes, receipt: p.Receipt) -> None:
        """A receipt: behind the connection's held ACKs, if it has any, so that it never
        overtakes the ACK of what it receipts, and costs no early commit (one a RECEIVED)."""
        held = self._acks.get(peer)
        if held is None:
            self._out.append(Reply(peer, receipt))
        else:
            held.append(receipt)

    def _reply(self, peer: bytes, event: p.ServerEvent) -> None:
        """Any other reply: the connection's held ACKs go first, so replies keep their order.

        They go out only stored, and with them everything else held: every held
        ACK and publish then belongs to the one transaction the next commit ends."""
        if peer in self._acks:
            self._flush()
        self._out.append(Reply(peer, event))

    def _publish(self, room: str, event: p.PublishedEvent) -> None:
        """On the room's topic with its next sequence number, once the store has committed."""
        if self.relay is not None:
            self.relay.relay(RoomEvent(room, event))  # published when the log gives it back (_relayed)
            return
        self._to_publish.append(p.Published(p.topic_of(room), self._sequencer.next(room), event))

    # --- helpers -------------------------------------------------------------

    def _drop_stuck(self, session: Session, now: float) -> None:
        # Full for a whole heartbeat timeout: it reads nothing, whatever it sends.
        log.warning("%s dropped: its queue stayed full", session.name)
        self._drop(session, now, "stuck")

    def _drop(self, session: Session, now: float, reason: str) -> None:
        del self.by_peer[session.peer]
        self.timed.pop(session.peer, None)
        self.stuck.pop(session.peer, None)
        self.unconfirmed.pop(session.peer, None)
        # In a cluster the name may have moved on to another broker meanwhile: no LEAVE then.
        held = self._names.holder(session.key) is session
        known = self._names.release(session)
        self._kept.pop(session.key, None)  # counted while online: read again for mail
        self.online_names = None
        self.counters[f"left.{reason}"] += 1
        online = self._names.count()
        log.info("%s left (%s; %d online)", session.name, reason, online,
                 extra=fields("left", name=session.name, reason=reason, online=online))  # fmt: skip
        if session.announced and held:  # else nobody was told it joined, or it is still online
            leave = p.Leave(session.name, int(now * 1000), reason)
            if known:
                self._publish(p.EVERYONE, leave)
            else:  # moved on to another broker meanwhile, perhaps: the Released says
                self._leaving[session.key] = (session, leave)

    def _released(self, event: Released) -> None:
        session, freed = event
        leaving = self._leaving.get(session.key)
        if leaving is None or leaving[0] is not session:
            return  # not announced, or its LEAVE went out with a new claim of the name here
        del self._leaving[session.key]
        if freed:
            self._publish(p.EVERYONE, leaving[1])
        else:
            self.counters["left.moved"] += 1
            log.info("%s is online on another broker: no LEAVE", session.name)

    def _users(self, msg_id: bytes) -> p.Users:
        """WHO's answer: everyone online, sorted, and who is away; kept until someone joins,
        leaves or goes away (WHO is not rate limited)."""
        if self.online_names is None:
            sessions = sorted(self._names.sessions(), key=lambda s: s.name.lower())
            self.online_names = tuple(s.name for s in sessions)
            self.online_away = tuple((s.name, s.away) for s in sessions if s.away)
        return p.Users(msg_id, self.online_names, self.online_away)

    def _members(self, room: str) -> set[str]:
        members = self.room_members.get(room)
        if members is None:
            members = self.room_members[room] = self.store.members(room)
        return members

    def _refuse(self, peer: bytes, msg_id: bytes, code: Code, text: str, retry_after_ms: int = 0) -> None:
        reason = code.name.lower()
        self.counters[f"refused.{reason}"] += 1
        shown, who = msg_id.decode("ascii", "replace") or "-", self._who_is(peer)
        self.refusal_log.refusal(self.now, reason, "refused %s from %s: %s %s", shown, who, int(code), text,
                                 fields=fields("refused", id=shown, client=who, code=int(code), text=text))  # fmt: skip
        # Within its range (PROTOCOL.md 3.2), or a client would drop the ERROR as malformed.
        self._reply(peer, p.Error(msg_id, code, text, min(max(retry_after_ms, 0), p.MAX_INT32)))

    def _who_is(self, peer: bytes) -> str:
        session = self.by_peer.get(peer)
        return session.name if session else f"peer {peer.hex()}"


def _record(m: StoredMessage) -> p.Record:
    return p.Record(m.seq, m.msg_id, m.sender, m.target, m.time_ms, m.body)


#: Per command: whether it needs HELLO, whether flood control counts it, its handler.
#: One dispatch (`BrokerCore._command`) checks them in PROTOCOL.md 8's order: the key
#: of the session (401), the broker stopping (503), registration (403), the rate (429).
RULES: dict[type, Rule] = {
    p.Send: Rule(needs_hello=True, counted=True, handler=BrokerCore._send),
    p.Ping: Rule(needs_hello=True, counted=False, handler=BrokerCore._ping),
    p.Hello: Rule(needs_hello=False, counted=False, handler=BrokerCore._hello),
    p.Who: Rule(needs_hello=False, counted=False, handler=BrokerCore._who),
    p.Sync: Rule(needs_hello=True, counted=False, handler=BrokerCore._sync),
    p.Ready: Rule(needs_hello=True, counted=False, handler=BrokerCore._ready),
    p.Bye: Rule(needs_hello=True, counted=False, handler=BrokerCore._bye),
    # Searches and history read the store: counted like messages. So are membership
    # and listings, and RECEIVED, each a store write or a scan.
    p.HistoryRequest: Rule(needs_hello=True, counted=True, handler=BrokerCore._history),
    p.Search: Rule(needs_hello=True, counted=True, handler=BrokerCore._search),
    p.Enter: Rule(needs_hello=True, counted=True, handler=BrokerCore._membership),
    p.Exit: Rule(needs_hello=True, counted=True, handler=BrokerCore._membership),
    p.Received: Rule(needs_hello=True, counted=True, handler=BrokerCore._received),
    p.Rooms: Rule(needs_hello=True, counted=True, handler=BrokerCore._rooms),
    p.Names: Rule(needs_hello=True, counted=True, handler=BrokerCore._names_of),
    p.Away: Rule(needs_hello=True, counted=True, handler=BrokerCore._away),
    p.SubjectRequest: Rule(needs_hello=True, counted=True, handler=BrokerCore._subject),
    p.SetSubject: Rule(needs_hello=True, counted=True, handler=BrokerCore._set_subject),
}
#: The commands flood control counts (PROTOCOL.md 8 lists the same).
COUNTED = tuple(kind for kind, rule in RULES.items() if rule.counted)

_INPUTS: dict[type, Callable[[BrokerCore, Any], None]] = {
    Command: BrokerCore._command,
    Unreadable: BrokerCore._unreadable,
    Failed: lambda core, event: core._failed(event.peer, event.msg_id, event.error),
    Delivered: BrokerCore._delivered,
    Undelivered: BrokerCore._undelivered,
    Blocked: BrokerCore._blocked,
    Unblocked: BrokerCore._unblocked,
    Flush: BrokerCore._flush,
    Tick: BrokerCore._tick,
    Watched: BrokerCore._watched,
    Disconnected: BrokerCore._disconnected,
    Shutdown: BrokerCore._shutdown,
    Relayed: BrokerCore._relayed,
    RelayStored: BrokerCore._relay_stored,
    Released: BrokerCore._released,
    Fence: BrokerCore._fence,
}
