"""The broker's routing core: who is online, routing and liveness, no sockets.

Input is (routing id, frames or a decoded command, time); output is a list of
actions saying what to send where, as typed messages: the ZeroMQ shell in
server.py encodes and sends them, so everything here is tested without I/O.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from zchat.broker.expiring import Expiring
from zchat.broker.quietlog import QuietLog
from zchat.broker.store import MemoryStore, Store, StoredMessage
from zchat.common import protocol as p
from zchat.common.flood import TokenBucket
from zchat.common.protocol import Code

log = logging.getLogger("zchat.broker")

#: Commands besides SEND that flood control counts (PROTOCOL.md 8): all that need HELLO
#: but the connection's own upkeep (PING, SYNC, READY, BYE).
COUNTED = (p.HistoryRequest, p.Search, p.Enter, p.Exit, p.Received, p.Rooms, p.Names)
#: Private messages handed to an online recipient and not yet confirmed by it, remembered so
#: that a RECEIVED names only what its sender really sent to that recipient (oldest forgotten).
AWAITING_RECEIPTS = 100_000
#: A resume token offered for a name that holds no session is kept as the new session's,
#: when it is at least this long (a guess must not be easy): see _hello.
ADOPTED_TOKEN_MIN = 16


@dataclass(frozen=True)
class CoreConfig:
    pub_endpoint: str
    heartbeat_ms: int = 2000
    timeout_ms: int = 6000
    max_body: int = 65536
    mailbox_messages: int = 1000
    mailbox_bytes: int = 1 << 20
    history_days: float = 30.0
    #: With CURVE: name key -> the only public key (z85) it may use; None: trust on first use.
    authorized: dict[str, str] | None = None
    #: Registration limits: clients in all, and sessions per CURVE key.
    max_clients: int = 10_000
    max_per_key: int = 8
    #: Messages a second and burst per client (flood.py); rate 0: no limit.
    rate: float = 0.0
    burst: float = 100.0
    #: Seconds a flooder's address is turned away after it is disconnected
    #: (and what is still queued from its connection ignored).
    cool_off: float = 60.0
    #: Rooms one user may be a member of, and rooms with members in all.
    max_rooms_per_user: int = 250
    max_rooms: int = 10_000


class SendTo(NamedTuple):
    """Send this reply or message to one client over the ROUTER."""

    peer: bytes
    message: p.ServerEvent


class Publish(NamedTuple):
    """Publish this event, on its topic with its sequence number, on the PUB socket."""

    published: p.Published


class Forward(NamedTuple):
    """A private message: deliver it, then acknowledge it to the sender.

    Delivery can fail (peer gone, queue full); the shell then asks
    `BrokerCore.undeliverable` what to tell the sender instead of the ack.
    """

    peer: bytes
    message: p.Message
    sender: bytes
    ack: p.Ack
    sender_key: str


class Hangup(NamedTuple):
    """Close the connection this very message came on, and turn its address away until `until`.

    Only the shell knows the connection and its address (ZeroMQ gives them
    per message), so it carries out the ban the core decides on.
    """

    peer: bytes
    until: float


class SendOld(NamedTuple):
    """Send these frames, in ZCHAT/1's framing, to a client of that version (PROTOCOL.md 10)."""

    peer: bytes
    frames: list[bytes]


Action = SendTo | Publish | Forward | Hangup | SendOld


@dataclass(slots=True)
class Session:
    peer: bytes
    name: str
    name_bytes: bytes
    token: str
    last_seen: float
    key: str
    client_key: str = ""  # its CURVE public key (z85), "" without encryption
    #: JOIN goes out at READY, once the client hears the lobby: whatever
    #: others answer to a JOIN then reaches the newcomer.
    announced: bool = False
    bucket: TokenBucket | None = None


@dataclass
class BrokerCore:
    config: CoreConfig
    store: Store = field(default_factory=MemoryStore)
    new_token: Callable[[], str] = lambda: secrets.token_hex(16)
    by_peer: dict[bytes, Session] = field(default_factory=dict)
    by_key: dict[str, Session] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    last_seq: dict[str, int] = field(default_factory=dict)  # per room; "*" is the lobby
    #: Room members by name key, read once per room from the store and kept in step.
    room_members: dict[str, set[str]] = field(default_factory=dict)
    next_maintenance: float = 0.0
    shutting_down: bool = False
    #: The time of the input being handled, for what logs it.
    now: float = 0.0
    refusal_log: QuietLog = field(default_factory=lambda: QuietLog(log))
    #: WHO's answer, kept until someone joins or leaves: WHO is not rate
    #: limited (it needs no HELLO), so it must not sort 10,000 names each time.
    online_names: list[str] | None = None
    #: Connections disconnected for flooding, ignored until the time given.
    cooling: Expiring[bytes] = field(default_factory=Expiring)
    #: Sessions whose queue was found full, since when: the liveness sweep drops one
    #: still full after a heartbeat timeout, whatever it sends (PROTOCOL.md 6.3).
    stuck: dict[bytes, float] = field(default_factory=dict)
    #: (recipient key, sender key, message id) of private messages handed over, not yet
    #: confirmed; True for one handed over from the mailbox (a RECEIVED clears it there).
    awaiting: OrderedDict[tuple[str, str, bytes], bool] = field(default_factory=OrderedDict)
    #: Rooms with members, counted once from the store and kept in step (ENTER's limit).
    rooms_in_use: int | None = None

    # --- input ---------------------------------------------------------------

    def receive(self, peer: bytes, frames: list[bytes], now: float, key: str = "") -> list[Action]:
        """Decode one client message and handle it; bad input becomes an ERROR.

        `key` is the sender's CURVE public key, proven by ZeroMQ for this very
        message ("" without encryption).
        """
        command = self.decode(peer, frames, now)
        if isinstance(command, list):
            return command
        return self.handle(peer, command, now, key)

    def decode(self, peer: bytes, frames: list[bytes], now: float) -> p.ClientCommand | list[Action]:
        """The command in one client message, or what to do instead of handling it."""
        self.counters["received"] += 1
        self.now = now
        if self.cooling.until and self.cooling.holds(peer, now):  # a dict's truth: cheapest per message
            self.counters["dropped.flooder"] += 1
            return []  # it was told, and answering a flood would be the flood's work
        session = self.by_peer.get(peer)
        if session is not None:
            session.last_seen = now  # any traffic proves the client alive
        try:
            return p.decode_command(frames)
        except p.ProtocolError as e:
            refusal = self._refuse(peer, e.msg_id, e.code, e.text)
            if e.code == Code.BAD_VERSION and len(frames) > 1:  # a ZCHAT/1 client: told in its framing
                return [SendOld(peer, p.encode_old_error(e.msg_id, e.code, e.text))]
            return [refusal]

    def handle(self, peer: bytes, command: p.ClientCommand, now: float, key: str = "") -> list[Action]:
        self.now = now
        session = self.by_peer.get(peer)
        if session is not None and session.client_key != key:  # never, unless something is forged
            return [
                self._refuse(
                    peer, command.msg_id, Code.NAME_OWNED, "this message is not from the key of the session"
                )
            ]
        if self.shutting_down:
            return [self._refuse(peer, command.msg_id, Code.SHUTTING_DOWN, "the broker is shutting down")]
        kind = type(command)
        if kind is p.Send:
            if session is None:
                return [self._not_registered(peer, command.msg_id)]
            return self._send(session, command, now)  # type: ignore[arg-type]
        if kind is p.Ping:
            if session is None:
                return [self._not_registered(peer, command.msg_id)]
            return [SendTo(peer, p.Pong(command.msg_id, p.now_ms(now)))]
        if kind is p.Hello:
            return self._hello(peer, session, command, now, key)  # type: ignore[arg-type]
        if kind is p.Who:
            return [SendTo(peer, p.Users(command.msg_id, tuple(self._online())))]
        if session is None:
            return [self._not_registered(peer, command.msg_id)]
        if kind is p.Sync:
            # Per-client topics carry no sequence (0): nothing is counted there.
            assert isinstance(command, p.Sync)
            tag = command.tag
            topic = p.sync_topic(session.name, tag) if tag else p.private_topic(session.name)
            synced = p.Published(topic, 0, p.Synced(command.msg_id))
            return [Publish(synced), SendTo(peer, _ack(command.msg_id, now))]
        if kind is p.Ready:
            ack = SendTo(peer, _ack(command.msg_id, now))
            if session.announced:
                return [ack]
            session.announced = True
            join = p.Join(session.name, p.now_ms(now))
            return [ack, Publish(self._published(p.EVERYONE, join))]
        if kind is p.Bye:  # the client leaves on purpose
            ack = SendTo(peer, _ack(command.msg_id, now))
            return [ack, *self._drop(session, now, "quit")]
        # Searches and history read the store: counted like messages. Membership
        # and listings are cheap, and RECEIVED confirms what the broker paced.
        if kind in COUNTED and session.bucket is not None and (wait := session.bucket.take(now)):
            return self._flooding(session, command.msg_id, wait, now)
        return self._room_command(session, command, now)

    def _send(self, session: Session, command: p.Send, now: float) -> list[Action]:
        msg_id, target, body = command
        if session.bucket is not None and (wait := session.bucket.take(now)):
            return self._flooding(session, msg_id, wait, now)
        if len(body) > self.config.max_body:
            return [self._refuse(session.peer, msg_id, Code.TOO_LARGE,
                                 f"message is {len(body)} bytes, the limit is {self.config.max_body}")]  # fmt: skip
        stamp = p.now_ms(now)
        status = self.store.seen(session.key, msg_id)
        if status is not None:  # a resend of what was accepted: answer again, deliver nothing
            self.counters["duplicate"] += 1
            return [SendTo(session.peer, p.Ack(msg_id, stamp, status))]
        if target == p.EVERYONE or target.startswith("#"):
            return self._to_room(session, msg_id, target.lower(), body, now)
        key = target.lower()
        recipient = self.by_key.get(key)
        if recipient is None:
            if p.valid_name(target) and self.store.is_known(key):
                stored = StoredMessage("", 0, msg_id, session.name, target, int(now * 1000), body)
                return self._keep_for_later(session.peer, session.key, key, stored, now)
            if p.valid_name(target):
                text = f"{target} is not online and has never been here"
            else:
                text = f"{target!r} is neither a user name, a #room nor '*'"
            return [self._refuse(session.peer, msg_id, Code.UNKNOWN_RECIPIENT, text)]
        self.counters["private"] += 1
        message = p.Message(msg_id, session.name, recipient.name, stamp, body)
        return [Forward(recipient.peer, message, session.peer, p.Ack(msg_id, stamp, "accepted"), session.key)]

    def _to_room(self, session: Session, msg_id: bytes, room: str, body: bytes, now: float) -> list[Action]:
        if room != p.EVERYONE:
            if not p.valid_room(room):
                return [
                    self._refuse(session.peer, msg_id, Code.UNKNOWN_RECIPIENT, f"{room!r} is not a room name")
                ]
            if session.key not in self._members(room):
                return [self._refuse(session.peer, msg_id, Code.NOT_MEMBER, f"join {room} to talk there")]
        self.counters["broadcast"] += 1
        stamp = p.now_ms(now)
        published = self._published(room, p.Message(msg_id, session.name, room, stamp, body))
        self.store.add_room_message(
            StoredMessage(room, published.seq, msg_id, session.name, room, stamp, body)
        )
        self.store.remember(session.key, msg_id, "accepted", stamp)
        return [Publish(published), SendTo(session.peer, p.Ack(msg_id, stamp, "accepted"))]

    def _flooding(self, session: Session, msg_id: bytes, wait: float, now: float) -> list[Action]:
        """Over the rate limit: refused with a retry-after, or disconnected when it persists."""
        retry_ms = max(1, round(wait * 1000))
        assert session.bucket is not None
        if session.bucket.abused():
            cool_off = self.config.cool_off
            log.warning("%s disconnected for flooding (cool-off %g s)", session.name, cool_off)
            # Ignored for at least a heartbeat timeout, whatever the cool-off:
            # routing ids are never reused, and what it had queued is not answered.
            self.cooling.add(session.peer, now + max(cool_off, self.config.timeout_ms / 1000))
            text = f"disconnected for flooding: wait {cool_off:g} s before connecting again"
            bye = SendTo(session.peer, _error(msg_id, Code.RATE_LIMITED, text, int(cool_off * 1000)))
            return [bye, *self._drop(session, now, "flooding"), Hangup(session.peer, now + cool_off)]
        return [self._refuse(session.peer, msg_id, Code.RATE_LIMITED, f"slow down: retry after {retry_ms} ms",
                             retry_ms)]  # fmt: skip

    def _keep_for_later(self, sender: bytes, sender_key: str, key: str, message: StoredMessage,
                        now: float) -> list[Action]:  # fmt: skip
        """A private message for a known user who is offline: into its mailbox."""
        count, size = self.store.mailbox_usage(key)
        c = self.config
        if count >= c.mailbox_messages or size + len(message.body) > c.mailbox_bytes:
            return [self._refuse(sender, message.msg_id, Code.RECIPIENT_BUSY,
                                 f"the mailbox of {message.target} is full")]  # fmt: skip
        self.counters["stored"] += 1
        self.store.enqueue(key, message)
        self.store.remember(sender_key, message.msg_id, "stored", message.time_ms)
        return [SendTo(sender, p.Ack(message.msg_id, p.now_ms(now), "stored"))]

    def _hello(self, peer: bytes, current: Session | None, hello: p.Hello, now: float,
               client_key: str = "") -> list[Action]:  # fmt: skip
        key = p.name_key(hello.name)
        if current is not None:
            if p.name_key(current.name) == key:  # a repeated HELLO: answer it again
                return [SendTo(peer, self._welcome(hello.msg_id, current, now))]
            return [self._refuse(peer, hello.msg_id, Code.ALREADY_REGISTERED,
                                 f"this connection is already registered as {current.name}")]  # fmt: skip
        if client_key and (refusal := self._check_owner(peer, hello, key, client_key)):
            return [refusal]
        holder = self.by_key.get(key)
        if holder is not None:
            # The token, or the very key that owns the name, proves it is the same user.
            same_owner = bool(client_key) and holder.client_key == client_key
            if same_owner or (hello.token and secrets.compare_digest(hello.token, holder.token)):
                # The same client on a new connection: it takes its session
                # over, so nobody sees it leave and join again. The old
                # connection is told, in case it is alive: were it to take
                # the session back, the two would take turns for ever.
                old_peer = holder.peer
                del self.by_peer[old_peer]
                holder.peer = peer
                holder.last_seen = now
                self.by_peer[peer] = holder
                self.counters["resumed"] += 1
                log.info("%s resumed its session on a new connection", holder.name)
                replaced = SendTo(old_peer, p.Replaced("your session continues on another connection"))
                return [replaced, SendTo(peer, self._welcome(hello.msg_id, holder, now))]
            return [self._refuse(peer, hello.msg_id, Code.NAME_TAKEN, f"the name {holder.name} is taken")]
        if refusal := self._over_limits(peer, hello.msg_id, client_key):
            return [refusal]
        if client_key and self.config.authorized is None and self.store.key_of(key) is None:
            self.store.bind(key, client_key)  # trust on first use
            log.info("the name %s now belongs to key %s", hello.name, client_key)
        # A token offered for a free name is kept as the new session's: a client back after
        # a restart whose first HELLO registered while it stopped waiting (a busy broker)
        # then resumes that session with its next HELLO, instead of meeting 409 from it.
        token = hello.token if len(hello.token) >= ADOPTED_TOKEN_MIN else self.new_token()
        session = Session(peer, hello.name, hello.name.encode(), token, now, key, client_key)
        if self.config.rate > 0:
            session.bucket = TokenBucket.new_session(self.config.rate, self.config.burst, now)
        # The store first: should it fail (StoreFailed), no session is left without its WELCOME.
        self.store.add_user(key)
        waiting = self._waiting_for(session)
        self.by_peer[peer] = session
        self.by_key[key] = session
        self.online_names = None
        self.counters["joined"] += 1
        log.info("%s joined (%d online)", session.name, len(self.by_key))
        return [SendTo(peer, self._welcome(hello.msg_id, session, now)), *waiting]

    def _waiting_for(self, session: Session) -> list[Action]:
        """What was kept for a user while it was away: mail, then receipts."""
        actions: list[Action] = []
        for m in self.store.mailbox(session.key):
            actions.append(SendTo(session.peer, p.Message(m.msg_id, m.sender, m.target, m.time_ms, m.body)))
            self._await_receipt((session.key, p.name_key(m.sender), m.msg_id), from_mailbox=True)
        by_recipient: dict[tuple[str, int], list[bytes]] = {}
        for msg_id, recipient, when in self.store.receipts(session.key):
            by_recipient.setdefault((recipient, when), []).append(msg_id)
            self.store.clear_receipt(session.key, msg_id)
        for (recipient, when), ids in by_recipient.items():
            actions.append(SendTo(session.peer, p.Receipt(recipient, when, tuple(ids))))
        return actions

    def _over_limits(self, peer: bytes, msg_id: bytes, client_key: str) -> SendTo | None:
        c = self.config
        if len(self.by_key) >= c.max_clients:
            return self._refuse(peer, msg_id, Code.TOO_MANY, f"the broker is full ({c.max_clients} clients)")
        if client_key and sum(s.client_key == client_key for s in self.by_key.values()) >= c.max_per_key:
            return self._refuse(peer, msg_id, Code.TOO_MANY, f"this key already has {c.max_per_key} sessions")
        return None

    def _check_owner(self, peer: bytes, hello: p.Hello, key: str, client_key: str) -> SendTo | None:
        """Names bound to keys: an allowlist, or the first key to use a name."""
        if self.config.authorized is not None:
            owner = self.config.authorized.get(key)
            if owner is None:
                return self._refuse(
                    peer, hello.msg_id, Code.NAME_OWNED, f"{hello.name} is not on this broker's list"
                )
        else:
            owner = self.store.key_of(key)
            if owner is None:
                return None  # free: bound to this key once the session is granted (_hello)
        if owner != client_key:
            return self._refuse(
                peer, hello.msg_id, Code.NAME_OWNED, f"the name {hello.name} belongs to another key"
            )
        return None

    def _welcome(self, msg_id: bytes, session: Session, now: float) -> p.Welcome:
        c = self.config
        return p.Welcome(
            msg_id, session.name, session.token, c.pub_endpoint,
            c.heartbeat_ms, c.timeout_ms, c.max_body, int(now * 1000),
            max(1, int(c.rate * 60)) if c.rate > 0 else 0, int(c.burst) if c.rate > 0 else 0,
        )  # fmt: skip

    # --- rooms, history, search, receipts (PROTOCOL.md 13) ---------------------

    def _room_command(self, session: Session, command: p.ClientCommand, now: float) -> list[Action]:
        peer, msg_id = session.peer, command.msg_id
        if isinstance(command, p.Enter | p.Exit):
            return self._membership(session, command, now)
        if isinstance(command, p.Rooms):
            sizes = self.store.room_sizes()
            mine = tuple(sorted(self.store.rooms_of(session.key)))
            return [SendTo(peer, p.RoomList(msg_id, tuple(sorted(sizes.items())), mine))]
        if isinstance(command, p.Names):
            if command.room == p.EVERYONE:
                return [SendTo(peer, p.Users(msg_id, tuple(self._online())))]
            keys = self._members(command.room)
            names = sorted((self.by_key[k].name for k in keys if k in self.by_key), key=str.lower)
            return [SendTo(peer, p.Users(msg_id, tuple(names)))]
        if isinstance(command, p.HistoryRequest):
            room = command.room
            if room != p.EVERYONE and session.key not in self._members(room):
                return [self._refuse(peer, msg_id, Code.NOT_MEMBER, f"join {room} to read its history")]
            last = self.last_seq.get(room)
            last = self.store.last_seq(room) if last is None else last
            before = command.before or last + 1
            found = self.store.room_history(room, before, command.limit, command.after)
            return [SendTo(peer, p.History(msg_id, room, last, tuple(_record(m) for m in found)))]
        if isinstance(command, p.Search):
            found = self.store.search(session.key, command.words, p.MAX_FOUND)
            return [SendTo(peer, p.Found(msg_id, tuple(_record(m) for m in found)))]
        assert isinstance(command, p.Received)
        return [SendTo(peer, _ack(msg_id, now)), *self._received(session, command, now)]

    def _membership(self, session: Session, command: p.Enter | p.Exit, now: float) -> list[Action]:
        room, entering = command.room, isinstance(command, p.Enter)
        ack = SendTo(session.peer, _ack(command.msg_id, now))
        if room == p.EVERYONE:
            return [
                self._refuse(session.peer, command.msg_id, Code.MALFORMED, "everyone is always in the lobby")
            ]
        members = self._members(room)
        if (session.key in members) == entering:
            return [ack]  # nothing changes
        if entering and (refusal := self._rooms_full(session, command.msg_id, room, members)):
            return [refusal]
        self.store.set_member(session.key, room, entering)
        if self.rooms_in_use is not None and len(members) == (0 if entering else 1):
            self.rooms_in_use += 1 if entering else -1  # a room's first member came, or its last went
        if entering:
            members.add(session.key)
            event: p.Join | p.Leave = p.Join(session.name, p.now_ms(now), room)
        else:
            members.discard(session.key)
            event = p.Leave(session.name, p.now_ms(now), "left", room)
        return [ack, Publish(self._published(room, event))]

    def _rooms_full(self, session: Session, msg_id: bytes, room: str, members: set[str]) -> SendTo | None:
        c = self.config
        if len(self.store.rooms_of(session.key)) >= c.max_rooms_per_user:
            return self._refuse(session.peer, msg_id, Code.TOO_MANY,
                                f"you are in {c.max_rooms_per_user} rooms, the most one may be in")  # fmt: skip
        if self.rooms_in_use is None:
            self.rooms_in_use = len(self.store.room_sizes())  # once: counting them costs a scan
        if not members and self.rooms_in_use >= c.max_rooms:
            return self._refuse(session.peer, msg_id, Code.TOO_MANY,
                                f"this broker has {c.max_rooms} rooms, the most it holds")  # fmt: skip
        return None

    def _received(self, session: Session, command: p.Received, now: float) -> list[Action]:
        """The recipient's client has these messages: clear its mailbox, tell the sender.

        Only messages this sender really sent to this recipient, and not confirmed
        before, are receipted: made-up ids tell nobody anything."""
        sender_key = command.sender.lower()
        confirmed = []
        for msg_id in command.ids:
            handed = (session.key, sender_key, msg_id)
            # Only ids handed over reach the store: made-up ones cost a dict lookup, no query.
            from_mailbox = self.awaiting.pop(handed, None)
            if from_mailbox is None:
                continue
            if from_mailbox:
                self.store.delivered(session.key, sender_key, msg_id)
            confirmed.append(msg_id)
        if not confirmed:
            return []
        time_ms = int(now * 1000)
        sender = self.by_key.get(sender_key)
        if sender is not None:
            return [SendTo(sender.peer, p.Receipt(session.name, time_ms, tuple(confirmed)))]
        if self.store.is_known(sender_key):  # kept only for someone who can come back for it
            for msg_id in confirmed:
                self.store.add_receipt(sender_key, msg_id, session.name, time_ms)
        return []

    def maintain(self, now: float) -> None:
        """Retention: forget what is older than the configured history, hourly."""
        self.refusal_log.flush(now)  # a flood's summary, also when the flood has stopped
        if now < self.next_maintenance:
            return
        self.next_maintenance = now + 3600
        expired = self.store.expire(int((now - self.config.history_days * 86400) * 1000))
        if expired:
            log.info("retention: %d messages older than %g days forgotten", expired, self.config.history_days)

    # --- events from the shell ----------------------------------------------

    def forwarded(self, forward: Forward) -> None:
        """A Forward reached its recipient's connection: a resend is a duplicate now,
        and the message is kept for /search."""
        m = forward.message
        if self.stuck:
            self.stuck.pop(forward.peer, None)  # it reads again
        self.store.remember(forward.sender_key, m.msg_id, "accepted", m.time_ms)
        key = m.target.lower()
        self.store.add_private(key, StoredMessage("", 0, m.msg_id, m.sender, m.target, m.time_ms, m.body))
        self._await_receipt((key, forward.sender_key, m.msg_id), from_mailbox=False)

    def _await_receipt(self, handed: tuple[str, str, bytes], from_mailbox: bool) -> None:
        # Forgotten oldest first: an unconfirmed live message then gets no receipt, and
        # unconfirmed mail stays in the mailbox, to be handed over (and awaited) again.
        self.awaiting[handed] = from_mailbox
        if len(self.awaiting) > AWAITING_RECEIPTS:
            self.awaiting.popitem(last=False)

    def queue_full(self, peer: bytes, now: float) -> None:
        """A reply or message could not be handed to `peer`: its queue is full."""
        if peer in self.by_peer and peer not in self.stuck:
            self.stuck[peer] = now

    def queue_drained(self, peer: bytes) -> None:
        """Something was handed to `peer` again: it reads."""
        self.stuck.pop(peer, None)

    def undeliverable(self, forward: Forward, busy: bool, now: float) -> list[Action]:
        """A Forward could not be handed to its recipient: tell the sender why."""
        self.now = now
        msg_id = forward.ack.msg_id
        recipient = self.by_peer.get(forward.peer)
        if busy:
            name = recipient.name if recipient else "the recipient"
            refusal = self._refuse(forward.sender, msg_id, Code.RECIPIENT_BUSY,
                                   f"{name} is not reading; message not delivered")  # fmt: skip
            if recipient is None:
                return [refusal]
            since = self.stuck.setdefault(recipient.peer, now)
            if now - since > self.config.timeout_ms / 1000:
                return [refusal, *self._drop_stuck(recipient, now)]
            return [refusal]
        actions: list[Action] = []
        if recipient is not None:
            actions += self._drop(recipient, now, "disconnected")
        # The recipient is gone but known: the message waits in its mailbox.
        m = forward.message
        kept = StoredMessage("", 0, m.msg_id, m.sender, m.target, m.time_ms, m.body)
        return [
            *self._keep_for_later(forward.sender, forward.sender_key, m.target.lower(), kept, now),
            *actions,
        ]

    def expire(self, now: float) -> list[Action]:
        """Drop every client silent for longer than the timeout."""
        deadline = now - self.config.timeout_ms / 1000
        self.cooling.forget_expired(now)  # a flooder that went quiet is forgotten
        actions: list[Action] = []
        for session in [s for s in self.by_peer.values() if s.last_seen < deadline]:
            actions += self._drop(session, now, "timeout")
        for peer, since in list(self.stuck.items()):
            stuck = self.by_peer.get(peer)
            if stuck is None:  # it went on another connection
                del self.stuck[peer]
            elif since < deadline:
                actions += self._drop_stuck(stuck, now)
        return actions

    def _drop_stuck(self, session: Session, now: float) -> list[Action]:
        # Full for a whole heartbeat timeout: it reads nothing, whatever it sends.
        log.warning("%s dropped: its queue stayed full", session.name)
        return self._drop(session, now, "stuck")

    def shutdown(self, now: float, reason: str = "the broker is shutting down") -> list[Action]:
        """Tell every client, directly and on PUB, that the broker is going away."""
        self.shutting_down = True
        notice = p.Shutdown(reason)
        actions: list[Action] = [SendTo(peer, notice) for peer in self.by_peer]
        actions.append(Publish(self._published(p.EVERYONE, notice)))
        return actions

    # --- helpers -------------------------------------------------------------

    def _drop(self, session: Session, now: float, reason: str) -> list[Action]:
        del self.by_peer[session.peer]
        self.stuck.pop(session.peer, None)
        del self.by_key[p.name_key(session.name)]
        self.online_names = None
        self.counters[f"left.{reason}"] += 1
        log.info("%s left (%s; %d online)", session.name, reason, len(self.by_key))
        if not session.announced:
            return []  # nobody was told it joined
        leave = p.Leave(session.name, p.now_ms(now), reason)
        return [Publish(self._published(p.EVERYONE, leave))]

    def _published(self, room: str, event: p.PublishedEvent) -> p.Published:
        """Topic and the room's next sequence number (continued from the store) first."""
        seq = self.last_seq.get(room)
        if seq is None:
            seq = self.store.last_seq(room)
        seq += 1
        self.last_seq[room] = seq
        self.store.used_seq(room, seq)  # also a JOIN's or LEAVE's: never reused after a restart
        return p.Published(p.topic_of(room), seq, event)

    def _online(self) -> list[str]:
        """Everyone online, sorted: kept until someone joins or leaves (WHO is not rate limited)."""
        if self.online_names is None:
            self.online_names = sorted((s.name for s in self.by_key.values()), key=str.lower)
        return self.online_names

    def _members(self, room: str) -> set[str]:
        members = self.room_members.get(room)
        if members is None:
            members = self.room_members[room] = self.store.members(room)
        return members

    def _not_registered(self, peer: bytes, msg_id: bytes) -> SendTo:
        return self._refuse(peer, msg_id, Code.NOT_REGISTERED, "send HELLO first")

    def _refuse(self, peer: bytes, msg_id: bytes, code: Code, text: str, retry_after_ms: int = 0) -> SendTo:
        reason = code.name.lower()
        self.counters[f"refused.{reason}"] += 1
        self.refusal_log.refusal(self.now, reason, "refused %s from %s: %s %s",
                                 msg_id.decode("ascii", "replace") or "-", self._who(peer), int(code), text)  # fmt: skip
        return SendTo(peer, _error(msg_id, code, text, retry_after_ms))

    def _who(self, peer: bytes) -> str:
        session = self.by_peer.get(peer)
        return session.name if session else f"peer {peer.hex()}"


def _record(m: StoredMessage) -> p.Record:
    return p.Record(m.seq, m.msg_id, m.sender, m.target, m.time_ms, m.body)


def _ack(msg_id: bytes, now: float) -> p.Ack:
    return p.Ack(msg_id, p.now_ms(now), "accepted")


def _error(msg_id: bytes, code: Code, text: str, retry_after_ms: int = 0) -> p.Error:
    """ERROR; a 429 carries its retry-after (PROTOCOL.md 8), within its range (3.2)."""
    retry = min(max(retry_after_ms, 0), p.MAX_INT32) if code == Code.RATE_LIMITED else 0
    return p.Error(msg_id, code, text, retry)
