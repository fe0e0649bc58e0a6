"""The client's poller thread: it alone owns the DEALER and the SUB socket.

It registers, keeps the connection alive with heartbeats, reconnects with
back-off (the zguide's Paranoid Pirate: new sockets each time), and turns
protocol messages into events. The user side reaches it only through a
thread-safe queue plus a wake-up pipe (see session.py).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from zchat.client import events as ev
from zchat.client.events import State
from zchat.client.handshake import HandshakeWatch, secure
from zchat.client.request import Request
from zchat.client.rooms import Room
from zchat.common import protocol as p
from zchat.common.flood import TokenBucket
from zchat.common.keys import KeyPair
from zchat.common.protocol import Code

log = logging.getLogger("zchat.client")

POLL_MS = 50  # while something waits its turn (a SYNC, a held-back message, an answer)
#: Idle, the loop wakes for the next heartbeat only, and at least this often: 20 wake-ups a
#: second cost an idle client about 1 ms of CPU a second, which a thousand clients feel.
IDLE_POLL_MS = 1000
SYNC_RETRY = 0.2  # seconds between SYNC attempts (PROTOCOL.md 4.5)
MAX_BACKOFF = 5.0
BYE_WAIT = 1.0  # how long a closing client waits for the broker's ACK to BYE
SEEN_IDS = 4096  # (sender, id) pairs remembered to drop resent duplicates
SENT_TEXTS = 4096  # private messages remembered to show their text with a receipt
#: Requests the broker's flood control counts (PROTOCOL.md 8): paced by the client, in order.
PACED_KINDS = {"send", "history", "search", "enter", "exit", "rooms", "names"}
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
#: Codes that make registration hopeless: retrying cannot help.
FATAL_HELLO_CODES = {
    Code.NAME_OWNED,
    Code.NAME_TAKEN,
    Code.INVALID_NAME,
    Code.BAD_VERSION,
    Code.ALREADY_REGISTERED,
}


@dataclass(frozen=True)
class Settings:
    name: str
    broker: str
    connect_timeout: float
    answer_timeout: float
    max_queued: int
    history_count: int = 50  # messages of a room shown on joining it
    #: The broker's public key (z85): CURVE on both sockets when given (PROTOCOL.md 14).
    server_key: bytes | None = None
    keys: KeyPair | None = None  # our own pair; a fresh one per client when None


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


class Poller:
    def __init__(self, settings: Settings, requests: queue.SimpleQueue[Request], wake_fd: int,
                 emit: Callable[[ev.Event], None], new_id: Callable[[], str]) -> None:  # fmt: skip
        self.s = settings
        self.requests = requests
        self.wake_fd = wake_fd
        self.emit = emit
        self.new_id = new_id
        self.context = zmq.Context()
        self.poller = zmq.Poller()
        self.poller.register(wake_fd, zmq.POLLIN)
        self.dealer: zmq.Socket[bytes] | None = None
        self.sub: zmq.Socket[bytes] | None = None
        self.handshake: HandshakeWatch | None = None
        self.state = State.CONNECTING
        #: Where the connection is: "hello" -> "sync" -> "ready" -> "online", or "backoff".
        #: Online only once READY is acknowledged: then others have seen us join.
        self.phase = "hello"
        self.was_online = False
        self.finished = False
        self.closing = False
        self.token = ""
        self.welcome: p.Welcome | None = None
        self.attempt = 0
        self.hello_id = b""
        self.hello_deadline = 0.0
        self.next_attempt_at = 0.0
        self.sync_id = b""
        self.next_sync_at = 0.0
        self.ready_id = b""
        self.taken_since: float | None = None  # since when HELLO gets 409 after a reconnect
        self.bye_id = b""
        self.close_deadline = 0.0
        self.last_recv = 0.0
        self.last_send = 0.0
        self.inflight: dict[bytes, Request] = {}
        self.waiting: deque[Request] = deque()
        #: Held back to stay within the broker's rate limit, in order; sent as the bucket allows.
        self.paced: deque[Request] = deque()
        self.bucket: TokenBucket | None = None  # a mirror of the broker's, from WELCOME
        self.seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        #: The lobby and every room we are in: each joined without a gap (rooms.py).
        self.rooms: dict[str, Room] = {p.EVERYONE: Room(p.EVERYONE)}
        self.room_syncs: dict[bytes, list[str]] = {}  # SYNC id -> rooms live once it is SYNCED
        self.room_sync_tag = b""  # its topic is subscribed after the rooms' topics, for their SYNCED
        self.next_room_sync_at = 0.0
        self.join_histories: dict[bytes, str] = {}  # HISTORY id -> room, asked on joining
        #: Our own catching up, counted by the broker's flood control like anything the user
        #: sends: ("enter" | "history", room), released in order as the bucket allows.
        self.catching_up: deque[tuple[str, str]] = deque()
        self.caught_up: dict[bytes, tuple[str, str]] = {}  # id -> what of catching_up it sent
        self.caught_up_at: dict[bytes, float] = {}  # id -> when it was sent
        self.catch_up_after = 0.0  # after a 5xx: not before then
        self.next_receipts_at = 0.0
        self.rooms_id = b""  # the ROOMS asked after registering
        self.oldest: dict[str, int] = {}  # room -> lowest sequence number shown from history
        self.receipts_due: dict[str, list[bytes]] = {}  # sender -> ids to confirm with RECEIVED
        self.sent: OrderedDict[bytes, str] = OrderedDict()  # id -> text of a private message
        #: Set once: None when registered, else why the first connect failed.
        self.first_outcome: list[ev.Status] = []

    # --- the loop ------------------------------------------------------------

    def run(self, on_first_outcome: Callable[[ev.Status | None], None]) -> None:
        self.on_first_outcome = on_first_outcome
        try:
            self._open(time.monotonic())
            while not self.finished:
                ready = dict(self.poller.poll(self._poll_ms(time.monotonic())))
                now = time.monotonic()
                if self.dealer is not None and self.dealer in ready:
                    self._drain(self.dealer, self._from_dealer, now)
                if self.sub is not None and self.sub in ready:
                    self._drain(self.sub, self._from_sub, now)
                if self.wake_fd in ready:
                    if not os.read(self.wake_fd, 4096):  # the user side closed its end: it is gone
                        self.poller.unregister(self.wake_fd)
                        if not self.closing:
                            self._begin_close(now)
                    self._take_requests(now)
                if self.receipts_due and self.dealer is not None and self.welcome is not None:
                    self._confirm_received(now)
                self._timers(now)
        except Exception as e:  # never die silently: the user must hear of it
            log.exception("client poller failed")
            self._give_up(f"internal error: {e}")
        finally:
            self._close_sockets()
            self.context.term()
            for request in [*self.inflight.values(), *self.paced, *self.waiting]:
                self._answer(request, request.refusal(ev.CLOSED, "the client closed"))
            self.inflight.clear()
            self.paced.clear()
            self.waiting.clear()
            self._set_state(State.CLOSED, "closed")
            self._first(ev.Status(State.CLOSED, "closed before registering"))
            os.close(self.wake_fd)  # ours: the user side may close its end before we are done

    def _poll_ms(self, now: float) -> int:
        """How long the loop may sleep: sockets and the user's requests wake it anyway."""
        busy = (
            self.phase != "online" or self.closing or self.inflight or self.waiting or self.paced
            or self.catching_up or self.caught_up_at or self.receipts_due or self.room_syncs
        )  # fmt: skip
        if busy or self.welcome is None:
            return POLL_MS
        heartbeat = self.welcome.heartbeat_ms / 1000
        due = min(self.last_send + heartbeat, self.last_recv + self.welcome.timeout_ms / 1000)
        return int(min(max(due - now, POLL_MS / 1000), IDLE_POLL_MS / 1000) * 1000)

    def _drain(
        self, sock: zmq.Socket[bytes], handle: Callable[[list[bytes], float], None], now: float
    ) -> None:
        for _ in range(1000):  # bounded: timers and other sockets get their turn
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                handle(frames, now)
            except p.ProtocolError as e:
                if e.code == Code.BAD_VERSION and sock is self.dealer:
                    self._give_up(e.text)  # a broker of another version: retrying cannot help
                    return
                log.warning("ignored a malformed message from the broker: %s", e)
            if sock is not self.dealer and sock is not self.sub:
                return  # the socket was replaced while handling

    # --- connection lifecycle -----------------------------------------------

    def _open(self, now: float) -> None:
        self._close_sockets()
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        if self.s.broker.startswith("tcp://["):
            self.dealer.setsockopt(zmq.IPV6, 1)
        secure(self.dealer, self.s.server_key, self.s.keys)
        self.handshake = HandshakeWatch(self.dealer, encrypted=self.s.server_key is not None)
        self.dealer.connect(self.s.broker)
        self.poller.register(self.dealer, zmq.POLLIN)
        self.hello_id = self.new_id().encode()
        wait = self.s.connect_timeout if not self.was_online else min(self.s.connect_timeout, 3.0)
        self.hello_deadline = now + wait
        self.phase = "hello"
        self._send(p.encode(p.Hello(self.hello_id, self.s.name, self.token)), now)

    def _subscribe(self, welcome: p.Welcome, now: float) -> None:
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        endpoint = pub_endpoint_for(welcome.pub_endpoint, self.s.broker)
        if endpoint.startswith("tcp://["):
            self.sub.setsockopt(zmq.IPV6, 1)
        secure(self.sub, self.s.server_key, self.s.keys)
        self.sub.connect(endpoint)
        # The own topic last: when SYNCED arrives there, the lobby is live too.
        self.sub.setsockopt(zmq.SUBSCRIBE, p.LOBBY_TOPIC)
        self.sub.setsockopt(zmq.SUBSCRIBE, p.private_topic(welcome.name))
        self.poller.register(self.sub, zmq.POLLIN)
        for room in self.rooms.values():  # a new SUB: every room joins afresh after ROOMS
            room.unwatch()
        self.rooms[p.EVERYONE].watch()  # the lobby's SYNCED is the registration's own
        self.room_syncs.clear()
        self.room_sync_tag = b""  # its subscription went with the old SUB
        self.join_histories.clear()
        self.catching_up.clear()
        self.caught_up.clear()
        self.caught_up_at.clear()
        self._sync(now)

    def _sync(self, now: float) -> None:
        self.sync_id = self.new_id().encode()
        self.next_sync_at = now + SYNC_RETRY
        self._send(p.encode(p.Sync(self.sync_id)), now)

    def _ready(self, now: float) -> None:
        """We hear the lobby: READY makes the broker announce us, and its ACK makes us online."""
        self.phase = "ready"
        lobby = self.rooms[p.EVERYONE]
        lobby.synced()  # subscribed before the own topic, so live too: its history comes next
        self.catching_up.append(("history", p.EVERYONE))
        self.ready_id = self.new_id().encode()
        self._send(p.encode(p.Ready(self.ready_id)), now)

    def _online(self, now: float) -> None:
        """READY is acknowledged: the broker has published our JOIN (PROTOCOL.md 4.6)."""
        self.phase = "online"
        self.attempt = 0
        self.taken_since = None
        first = not self.was_online
        self.was_online = True
        assert self.welcome is not None
        self._set_state(State.ONLINE, f"online as {self.welcome.name} at {self.s.broker}")
        # Membership lives on the broker (PROTOCOL.md 13.1): ask for it, then subscribe.
        self.catching_up.append(("rooms", ""))
        if first:
            self._first(None)
        # Unanswered messages go again with their ids (recipients drop repeats),
        # then what was held back, then what waited: oldest first.
        for request in self.inflight.values():
            request.tries += 1  # its connection dropped before it was answered
        queued = sorted([*self.inflight.values(), *self.paced, *self.waiting], key=lambda r: r.created)
        self.inflight.clear()
        self.paced.clear()
        self.waiting.clear()
        for request in queued:
            if request.tries >= MAX_TRIES:
                self._answer(request, request.refusal(ev.LOST, (
                    f"not sent again: the connection to the broker dropped each of the {request.tries} "
                    "times it was sent (the broker may refuse or fail on it)")))  # fmt: skip
            else:
                self._transmit(request, now)

    def _lost(self, detail: str, now: float) -> None:
        """The connection is gone: schedule a new one with back-off."""
        self._close_sockets()
        if self.closing:
            self.finished = True
            return
        self.attempt += 1
        delay = min(MAX_BACKOFF, 0.1 * 2 ** (self.attempt - 1)) * random.uniform(0.8, 1.2)
        self.next_attempt_at = now + delay
        self.phase = "backoff"
        self.state = State.RECONNECTING
        # Every step of a short outage is shown; of a long one, about one a minute.
        if self.attempt <= 5 or self.attempt % 12 == 0:
            self.emit(
                ev.Status(self.state, f"{detail}; reconnecting in {delay:.1f}s (attempt {self.attempt})")
            )

    def _give_up(self, detail: str) -> None:
        self._set_state(State.OFFLINE, detail)
        self._first(ev.Status(State.OFFLINE, detail))
        self.finished = True

    def _close_sockets(self) -> None:
        if self.handshake is not None:
            self.handshake.close()
            self.handshake = None
        for sock in (self.dealer, self.sub):
            if sock is not None:
                self.poller.unregister(sock)
                sock.close(linger=0)
        self.dealer = self.sub = None

    # --- input from the broker ----------------------------------------------

    def _from_dealer(self, frames: list[bytes], now: float) -> None:
        self.last_recv = now
        event = p.decode_event(frames)
        kind = type(event)
        if kind is p.Ack:
            assert isinstance(event, p.Ack)
            for msg_id in event.ids():  # one ACK may answer several messages
                self._answered(event._replace(msg_id=msg_id), now)
        elif kind is p.Error:
            self._answered(event, now)  # type: ignore[arg-type]
        elif kind is p.Message:
            assert isinstance(event, p.Message)
            # Live or from the mailbox: confirm it, also when it is a repeat (PROTOCOL.md 13.4).
            self.receipts_due.setdefault(event.sender, []).append(event.msg_id)
            self._message(event)
        elif kind is p.Users:
            assert isinstance(event, p.Users)
            request = self.inflight.pop(event.msg_id, None)
            if request is not None:
                room = request.target if request.kind == "names" else ""
                self._answer(request, ev.Users(event.names, room))
        elif kind is p.Receipt:
            assert isinstance(event, p.Receipt)
            for msg_id in event.msg_ids:
                text = self.sent.get(msg_id, "")
                self.emit(ev.Receipt(msg_id.decode(), event.recipient, ev.from_ms(event.time_ms), text))
        elif kind is p.History:
            assert isinstance(event, p.History)
            self._history(event)
        elif kind is p.RoomList:
            assert isinstance(event, p.RoomList)
            if event.msg_id == self.rooms_id:
                self._answered_own(event.msg_id)
                self._rejoin(event, now)
            elif (request := self.inflight.pop(event.msg_id, None)) is not None:
                self._answer(request, ev.RoomList(event.sizes, event.mine))
        elif kind is p.Found:
            assert isinstance(event, p.Found)
            if (request := self.inflight.pop(event.msg_id, None)) is not None:
                self._answer(request, ev.Found(tuple(self._record(r) for r in event.records)))
        elif kind is p.Welcome:
            assert isinstance(event, p.Welcome)
            if event.msg_id == self.hello_id and self.phase == "hello":
                self.phase = "sync"
                self.welcome = event
                self._mirror_flood_control(event, now)
                self.token = event.token
                self._subscribe(event, now)
        elif kind is p.Shutdown:
            assert isinstance(event, p.Shutdown)
            self._lost(f"the broker is shutting down ({event.reason})", now)
        elif kind is p.Replaced:
            # Another client of ours (same key, or our token) took the session over.
            # Taking it back would start the two taking turns: this one stops.
            assert isinstance(event, p.Replaced)
            self._close_sockets()
            self._give_up(
                f"signed in elsewhere: {event.reason}; this client stops (connect again to take it back)"
            )

    def _from_sub(self, frames: list[bytes], now: float) -> None:
        published = p.decode_published(frames)
        event = published.event
        kind = type(event)
        if kind is p.Shutdown:
            assert isinstance(event, p.Shutdown)
            if self.dealer is not None:
                self._lost(f"the broker is shutting down ({event.reason})", now)
        elif published.topic.startswith(b"#") or published.topic == p.LOBBY_TOPIC:
            self._from_room(published)
        elif kind is p.Synced:  # on our own topic, or a room round's
            assert isinstance(event, p.Synced)
            if self.phase == "sync":  # the subscriptions made before it are live
                self._ready(now)
            elif event.msg_id in self.room_syncs:
                self._rooms_live(self.room_syncs.pop(event.msg_id), now)

    def _message(self, message: p.Message, seq: int = 0) -> None:
        key = (message.sender.lower(), message.msg_id)
        if key in self.seen:
            return  # a resend of what we already have
        self.seen[key] = None
        if len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        text = message.body.decode("utf-8", "replace")
        self.emit(ev.Message(message.msg_id.decode(), message.sender, message.target, text,
                             ev.from_ms(message.time_ms), seq=seq))  # fmt: skip

    @staticmethod
    def _record(record: p.Record, history: bool = True) -> ev.Message:
        return ev.Message(record.msg_id.decode(), record.sender, record.target,
                          record.body.decode("utf-8", "replace"), ev.from_ms(record.time_ms),
                          history=history, seq=record.seq)  # fmt: skip

    # --- rooms (PROTOCOL.md 13) ------------------------------------------------

    def _rejoin(self, listing: p.RoomList, now: float) -> None:
        """After registering: subscribe to every room we are in, the broker's and ours."""
        mine = {room.lower() for room in listing.mine}
        for name in mine:
            self.rooms.setdefault(name, Room(name))
        for name in self.rooms:
            if name not in mine and name != p.EVERYONE:  # the broker forgot (a restart without a store)
                self.catching_up.append(("enter", name))
        self._watch([room for room in self.rooms.values() if not room.subscribed], now)

    def _watch(self, rooms: list[Room], now: float) -> None:
        """Subscribe, and SYNC until the subscriptions are live; the room's topic is kept meanwhile."""
        if not rooms or self.sub is None or self.welcome is None:
            return
        for room in rooms:
            self.sub.setsockopt(zmq.SUBSCRIBE, p.topic_of(room.name))
            room.watch()
        # SYNCED proves live only what was subscribed before its topic
        # (PROTOCOL.md 4.5): the own topic is older than the rooms', so the
        # SYNCED goes to a topic of this round's own, subscribed last.
        self._drop_room_sync_topic()
        self.room_sync_tag = self.new_id().encode()
        self.sub.setsockopt(zmq.SUBSCRIBE, p.sync_topic(self.welcome.name, self.room_sync_tag))
        self._sync_rooms(now)

    def _drop_room_sync_topic(self) -> None:
        if self.room_sync_tag and self.sub is not None and self.welcome is not None:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, p.sync_topic(self.welcome.name, self.room_sync_tag))
        self.room_sync_tag = b""

    def _sync_rooms(self, now: float) -> None:
        syncing = [name for name, room in self.rooms.items() if room.phase == "syncing"]
        if not syncing:
            self.room_syncs.clear()
            self._drop_room_sync_topic()
            return
        sync_id = self.new_id().encode()
        self.room_syncs[sync_id] = syncing
        self.next_room_sync_at = now + SYNC_RETRY
        self._send(p.encode(p.Sync(sync_id, self.room_sync_tag)), now)

    def _rooms_live(self, names: list[str], now: float) -> None:
        for name in names:
            room = self.rooms.get(name)
            if room is not None and room.phase == "syncing":
                room.synced()
                self.catching_up.append(("history", name))
        if not any(room.phase == "syncing" for room in self.rooms.values()):
            self.room_syncs.clear()
            self._drop_room_sync_topic()

    def _catch_up(self, now: float) -> None:
        """Our own requests of a sign-in or a join, as the broker's rate allows: a member
        of many rooms is not thrown out for flooding at every sign-in."""
        while self.catching_up and now >= self.catch_up_after:
            kind, name = self.catching_up[0]
            room = self.rooms.get(name)
            if kind == "history" and (room is None or room.phase != "history"):
                self.catching_up.popleft()  # left meanwhile, or a new SUB joins it afresh
                continue
            if self.bucket is not None and self.bucket.take(now):
                return  # no token yet: the next timer tries again
            self.catching_up.popleft()
            msg_id = self.new_id().encode()
            self.caught_up[msg_id] = (kind, name)
            self.caught_up_at[msg_id] = now
            if kind == "rooms":
                self.rooms_id = msg_id
                self._send(p.encode(p.Rooms(msg_id)), now)
            elif kind == "enter":
                self._send(p.encode(p.Enter(msg_id, name)), now)
            else:
                assert room is not None
                self.join_histories[msg_id] = name
                # After a reconnect only what was missed (above the last number shown),
                # as much as one HISTORY gives: usually nothing, so it costs the broker little.
                after = room.seen_seq
                room.asked = count = self.s.history_count if not after else p.MAX_HISTORY
                self._send(p.encode(p.HistoryRequest(msg_id, name, 0, count, after)), now)

    def _history(self, reply: p.History) -> None:
        records = sorted(reply.records, key=lambda r: r.seq)
        self._answered_own(reply.msg_id)
        name = self.join_histories.pop(reply.msg_id, None)
        if name is None:  # asked by the user: /history
            request = self.inflight.pop(reply.msg_id, None)
            if request is None:
                return
            messages = tuple(self._record(r) for r in records)
            for message in messages:
                self.emit(message)
            self._note_oldest(request.target, records)
            self._answer(request, ev.History(request.target, messages, reply.last_seq))
            return
        room = self.rooms.get(name)
        if room is None or room.phase != "history":
            return
        if room.seen_seq and reply.last_seq < room.seen_seq:
            # The broker numbers afresh (it restarted without a store): what it has is all
            # new to us, and an `after` of our old number hid it. Ask again from the start.
            room.seen_seq = 0
            self.catching_up.appendleft(("history", name))
            return
        # After a reconnect the records fill the gap: what others said meanwhile (also
        # what their clients held back) is shown as it would have been live.
        seen = room.seen_seq if reply.last_seq >= room.seen_seq else 0
        # History up to last_seq, then what was kept from after it: no gap, no repeat.
        shown, after = room.take_history(reply.last_seq, records)
        if seen and len(records) >= room.asked and records[0].seq > seen + 1:
            gap = records[0].seq - seen - 1
            where = "the lobby" if name == p.EVERYONE else name
            self.emit(ev.Status(self.state, f"{gap} earlier event(s) of {where} (messages, joins, leaves) "
                                            f"came while this client was away and are not shown: "
                                            f"/history {name} shows the messages"))  # fmt: skip
        for record in shown:
            self.emit(self._record(record, history=not seen))
        self._note_oldest(name, records)
        for seq, event in after:
            self._room_event(name, event, seq)

    def _note_oldest(self, room: str, records: list[p.Record]) -> None:
        if records and records[0].seq and records[0].seq < self.oldest.get(room, records[0].seq + 1):
            self.oldest[room] = records[0].seq

    def _from_room(self, published: p.Published) -> None:
        name = published.topic[:-1].decode("utf-8", "replace")
        room = self.rooms.get(name)
        if room is None or not room.subscribed:
            return  # left, or not yet ours
        shown, missed = room.take_published(published.seq, published.event)
        if missed:
            where = "the lobby" if name == p.EVERYONE else name
            self.emit(
                ev.Status(self.state, f"missed {missed} event(s) of {where}: this client read too slowly")
            )
        for seq, event in shown:
            self._room_event(name, event, seq)

    def _room_event(self, name: str, event: p.PublishedEvent, seq: int) -> None:
        if isinstance(event, p.Message):
            self._message(event, seq)
        elif isinstance(event, p.Join):
            self.emit(ev.Presence(event.name, "join", ev.from_ms(event.time_ms), room=name))
        elif isinstance(event, p.Leave):
            self.emit(ev.Presence(event.name, "leave", ev.from_ms(event.time_ms), event.reason, room=name))

    def _forget_room(self, name: str) -> None:
        room = self.rooms.pop(name, None)
        self.oldest.pop(name, None)
        if room is not None and room.subscribed and self.sub is not None:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, p.topic_of(name))

    def _confirm_received(self, now: float) -> None:
        """RECEIVED, one per sender for what came meanwhile (PROTOCOL.md 13.4), as the
        broker's rate allows: what waits for a token gathers more ids meanwhile."""
        if self.paced:  # the user's own requests wait for tokens: receipts now and then only
            if now < self.next_receipts_at:
                return
            self.next_receipts_at = now + RECEIPTS_EVERY
        due, self.receipts_due = self.receipts_due, {}
        for sender, ids in due.items():
            for start in range(0, len(ids), p.MAX_RECEIVED_IDS):
                if self.bucket is not None and self.bucket.take(now):
                    self.receipts_due.setdefault(sender, []).extend(ids[start:])
                    break
                chunk = ids[start : start + p.MAX_RECEIVED_IDS]
                self._send(p.encode(p.Received(self.new_id().encode(), sender, tuple(chunk))), now)

    def _answered(self, answer: p.Ack | p.Error, now: float) -> None:
        msg_id = answer.msg_id
        if msg_id == self.ready_id and self.phase == "ready":
            if isinstance(answer, p.Ack):
                self._online(now)
            else:
                self._lost(f"registration failed: {answer.text} (code {answer.code})", now)
            return
        if msg_id == self.hello_id and isinstance(answer, p.Error):
            if answer.code == Code.NAME_TAKEN and self._our_ghost_may_hold_the_name(now):
                self._lost("the name is still held by this client's last connection; trying again", now)
            elif answer.code in FATAL_HELLO_CODES:
                self._give_up(f"registration refused: {answer.text} (code {answer.code})")
            else:
                self._lost(f"registration failed: {answer.text} (code {answer.code})", now)
            return
        if msg_id == self.bye_id:
            self.finished = True
            return
        if isinstance(answer, p.Error) and answer.code == Code.NOT_REGISTERED:
            # A broker that restarted before we noticed: what it refused is
            # still in flight and goes again once we are registered anew.
            self._lost("the broker no longer knows this session", now)
            return
        if (own := self._answered_own(msg_id)) is not None and self._caught_up_again(own, answer, now):
            return
        request = self.inflight.pop(msg_id, None)
        if request is not None and self._held_back_again(request, answer, now):
            return
        if request is not None:
            if isinstance(answer, p.Ack):
                outcome: ev.Outcome = ev.Ack(request.msg_id, ev.from_ms(answer.time_ms), answer.status,
                                             request.target, request.text, request.kind)  # fmt: skip
            else:
                outcome = request.refusal(answer.code, answer.text)
                if request.kind == "enter":  # not a member after all: stop listening
                    self._forget_room(request.target)
            self._answer(request, outcome)
        elif isinstance(answer, p.Error) and msg_id in self.join_histories:
            # No history for the room: show what was kept rather than hold it for ever.
            name = self.join_histories[msg_id]
            log.info("no history of %s: %s", name, answer.text)
            room = self.rooms.get(name)
            self._history(p.History(msg_id, name, room.seen_seq if room else 0, ()))
        elif isinstance(answer, p.Error) and msg_id != self.sync_id:
            log.info("broker error %d: %s", answer.code, answer.text)

    # --- requests from the user ----------------------------------------------

    def _take_requests(self, now: float) -> None:
        while True:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                return
            if request.kind == "close":
                self._begin_close(now)
            elif self.state is State.ONLINE:
                self._transmit(request, now)
            elif len(self.waiting) + len(self.paced) >= self.s.max_queued:
                self._answer(
                    request, request.refusal(ev.QUEUE_FULL, "too many messages waiting for a connection")
                )
            else:
                self.waiting.append(request)

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

    def _transmit(self, request: Request, now: float) -> None:
        if refusal := self._too_large(request):
            self._answer(request, refusal)
            return
        bucket = self.bucket if request.kind in PACED_KINDS else None
        # After those held already, or when there is no token now: held back. A /leave
        # must not overtake messages to the room that wait their turn.
        if bucket is not None and (self.paced or bucket.take(now)):
            if len(self.paced) >= self.s.max_queued:
                self._answer(request, request.refusal(ev.QUEUE_FULL, "too many messages held back"))
                return
            if not self.paced:
                self.emit(
                    ev.Status(self.state, "holding messages back to stay within the broker's rate limit")
                )
            self.paced.append(request)
            return
        self._send_request(request, now)

    def _too_large(self, request: Request) -> ev.Refusal | None:
        """Over the broker's limit (WELCOME): refused here. Sent, the broker would
        refuse it, or past its frame limit cut the connection (PROTOCOL.md 11)."""
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

    def _answered_own(self, msg_id: bytes) -> tuple[str, str] | None:
        self.caught_up_at.pop(msg_id, None)
        return self.caught_up.pop(msg_id, None)

    def _caught_up_again(self, own: tuple[str, str], answer: p.Ack | p.Error, now: float) -> bool:
        """An answer to our own catching up that is not the end of it: True if handled here.

        A 429 (a resumed session's bucket may be emptier than our mirror knew): the
        broker's bucket is empty, so is ours; it goes again, first. A 5xx (the broker
        failed, or its store): again after a pause. A re-ENTER refused (509: too many
        rooms now): the room is left, and the user told."""
        if not isinstance(answer, p.Error):
            return False
        kind, name = own
        if answer.code == Code.RATE_LIMITED or answer.code >= 500:
            self.join_histories.pop(answer.msg_id, None)
            if answer.code == Code.RATE_LIMITED and self.bucket is not None:
                self.bucket.tokens, self.bucket.stamp = 0.0, now
            else:
                self.catch_up_after = now + CATCH_UP_RETRY
            self.catching_up.appendleft(own)
            return True
        if kind == "enter":
            self._forget_room(name)
            self.emit(ev.Status(self.state, f"could not join {name} again: {answer.text}"))
            return True
        return False

    def _caught_up_late(self, now: float) -> None:
        """Our own requests whose answer never came (lost, or ignored as malformed): again."""
        late = [msg_id for msg_id, at in self.caught_up_at.items() if now - at > CATCH_UP_TIMEOUT]
        for msg_id in late:
            own = self._answered_own(msg_id)
            self.join_histories.pop(msg_id, None)
            if own is not None:
                self.catching_up.append(own)

    def _held_back_again(self, request: Request, answer: p.Ack | p.Error, now: float) -> bool:
        """A 429 although we paced ourselves (our own HISTORY at a join counts
        too): the broker's bucket is empty, so is ours; the request waits its
        turn again, in order, instead of failing."""
        if not (isinstance(answer, p.Error) and answer.code == Code.RATE_LIMITED):
            return False
        if self.bucket is None or request.kind not in PACED_KINDS:
            return False
        self.bucket.tokens, self.bucket.stamp = 0.0, now
        place = next((i for i, r in enumerate(self.paced) if r.created > request.created), len(self.paced))
        self.paced.insert(place, request)
        return True

    def _release_paced(self, now: float) -> None:
        while self.paced and (
            self.paced[0].kind not in PACED_KINDS or self.bucket is None or not self.bucket.take(now)
        ):
            self._send_request(self.paced.popleft(), now)

    def _send_request(self, request: Request, now: float) -> None:
        msg_id = request.msg_id.encode()
        if not request.sent:
            request.sent, request.sent_at = True, now
        self.inflight[msg_id] = request
        kind, target = request.kind, request.target
        if kind == "send":
            if not ev.is_room(target):  # remembered to show with its receipt
                self.sent[msg_id] = request.text
                if len(self.sent) > SENT_TEXTS:
                    self.sent.popitem(last=False)
            self._send(p.encode(p.Send(msg_id, target, request.text.encode())), now)
        elif kind == "who":
            self._send(p.encode(p.Who(msg_id)), now)
        elif kind == "enter":
            self._send(p.encode(p.Enter(msg_id, target)), now)
            room = self.rooms.setdefault(target, Room(target))
            if not room.subscribed:
                self._watch([room], now)
        elif kind == "exit":
            self._send(p.encode(p.Exit(msg_id, target)), now)
            self._forget_room(target)
        elif kind == "rooms":
            self._send(p.encode(p.Rooms(msg_id)), now)
        elif kind == "names":
            self._send(p.encode(p.Names(msg_id, target)), now)
        elif kind == "history":
            before = request.before
            if before < 0:  # page back from the oldest shown
                before = self.oldest.get(target, 0)
            self._send(p.encode(p.HistoryRequest(msg_id, target, before, request.count)), now)
        elif kind == "search":
            self._send(p.encode(p.Search(msg_id, request.text)), now)

    def _begin_close(self, now: float) -> None:
        self.closing = True
        if self.state is State.ONLINE:
            self.bye_id = self.new_id().encode()
            self.close_deadline = now + BYE_WAIT
            self._send(p.encode(p.Bye(self.bye_id)), now)
        else:
            self.finished = True

    # --- time ----------------------------------------------------------------

    def _timers(self, now: float) -> None:
        if self.closing and not self.finished and now > self.close_deadline:
            self.finished = True
        if self.finished:
            return
        if self.phase == "backoff":
            if now >= self.next_attempt_at:
                self._open(now)
        elif self.phase != "online":
            self._registering(now)
        else:
            self._heartbeat(now)
            if self.phase == "online":  # else the heartbeat found the broker gone: no sockets now
                self._online_timers(now)
        self._expire_requests(now)

    def _online_timers(self, now: float) -> None:
        if self.caught_up_at:
            self._caught_up_late(now)
        if self.catching_up:
            self._catch_up(now)
        if self.paced:
            self._release_paced(now)
        if self.room_syncs and now >= self.next_room_sync_at:
            self._sync_rooms(now)

    def _registering(self, now: float) -> None:
        refused = self.handshake.failure() if self.handshake is not None else None
        if refused is not None:
            if not self.was_online:
                self._give_up(f"{refused} ({self.s.broker})")
            else:
                self._lost(refused, now)
        elif now > self.hello_deadline:
            if not self.was_online:
                self._give_up(f"no answer from the broker at {self.s.broker} "
                              f"within {self.s.connect_timeout:g}s")  # fmt: skip
            else:
                self._lost("no answer from the broker", now)
        elif self.phase == "sync" and self.sub is not None and now >= self.next_sync_at:
            self._sync(now)

    def _heartbeat(self, now: float) -> None:
        assert self.welcome is not None
        if now - self.last_recv > self.welcome.timeout_ms / 1000:
            self._lost("the broker stopped answering", now)
        elif now - self.last_send >= self.welcome.heartbeat_ms / 1000:
            self._send(p.encode(p.Ping(self.new_id().encode())), now)

    def _expire_requests(self, now: float) -> None:
        deadline = now - self.s.answer_timeout
        # Sent ones from when they were sent (a paced one may have waited its turn long).
        stale = [r for r in self.inflight.values() if r.sent_at < deadline]
        stale += [r for r in self.waiting if r.created < deadline]
        if self.state is not State.ONLINE:  # held back, then the connection went: they wait like the others
            stale += [r for r in self.paced if r.created < deadline]
        for request in stale:
            self.inflight.pop(request.msg_id.encode(), None)
            if request in self.waiting:
                self.waiting.remove(request)
            if request in self.paced:
                self.paced.remove(request)
            timeout = f"no answer from the broker within {self.s.answer_timeout:g}s"
            self._answer(request, request.refusal(ev.NOT_ANSWERED, timeout))

    # --- helpers -------------------------------------------------------------

    def _send(self, frames: list[bytes], now: float) -> None:
        assert self.dealer is not None
        try:
            self.dealer.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("dealer queue full; the answer timeout will report it")
        self.last_send = now

    def _answer(self, request: Request, outcome: ev.Outcome) -> None:
        if request.resolve(outcome):
            self.emit(outcome)

    def _set_state(self, state: State, detail: str) -> None:
        if state is self.state and state is not State.RECONNECTING:
            return
        self.state = state
        self.emit(ev.Status(state, detail))

    def _first(self, failure: ev.Status | None) -> None:
        if not self.first_outcome:
            self.first_outcome.append(failure or ev.Status(State.ONLINE, "registered"))
            self.on_first_outcome(failure)
