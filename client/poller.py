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
from zchat.client.request import Request
from zchat.common import protocol as p
from zchat.common.protocol import Code

log = logging.getLogger("zchat.client")

POLL_MS = 50
SYNC_RETRY = 0.2  # seconds between SYNC attempts (PROTOCOL.md 4.5)
MAX_BACKOFF = 5.0
BYE_WAIT = 1.0  # how long a closing client waits for the broker's ACK to BYE
SEEN_IDS = 4096  # (sender, id) pairs remembered to drop resent duplicates
#: Codes that make registration hopeless: retrying cannot help.
FATAL_HELLO_CODES = {Code.NAME_TAKEN, Code.INVALID_NAME, Code.BAD_VERSION, Code.ALREADY_REGISTERED}


@dataclass(frozen=True)
class Settings:
    name: str
    broker: str
    connect_timeout: float
    answer_timeout: float
    max_queued: int


def pub_endpoint_for(advertised: str, broker: str) -> str:
    """PROTOCOL.md 5.1: a '*' host means the host we reached the ROUTER on."""
    if not advertised.startswith("tcp://*:"):
        return advertised
    host = broker.split("://", 1)[1].rsplit(":", 1)[0]
    return f"tcp://{host}:{advertised.rsplit(':', 1)[1]}"


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
        self.state = State.CONNECTING
        #: Where the connection is: "hello" -> "sync" -> "online", or "backoff".
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
        self.bye_id = b""
        self.close_deadline = 0.0
        self.last_recv = 0.0
        self.last_send = 0.0
        self.lobby_seq = 0
        self.inflight: dict[bytes, Request] = {}
        self.waiting: deque[Request] = deque()
        self.seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        #: Set once: None when registered, else why the first connect failed.
        self.first_outcome: list[ev.Status] = []

    # --- the loop ------------------------------------------------------------

    def run(self, on_first_outcome: Callable[[ev.Status | None], None]) -> None:
        self.on_first_outcome = on_first_outcome
        try:
            self._open(time.monotonic())
            while not self.finished:
                ready = dict(self.poller.poll(POLL_MS))
                now = time.monotonic()
                if self.dealer is not None and self.dealer in ready:
                    self._drain(self.dealer, self._from_dealer, now)
                if self.sub is not None and self.sub in ready:
                    self._drain(self.sub, self._from_sub, now)
                if self.wake_fd in ready:
                    os.read(self.wake_fd, 4096)
                    self._take_requests(now)
                self._timers(now)
        except Exception as e:  # never die silently: the user must hear of it
            log.exception("client poller failed")
            self._give_up(f"internal error: {e}")
        finally:
            self._close_sockets()
            self.context.term()
            for request in [*self.inflight.values(), *self.waiting]:
                self._answer(request, request.refusal(ev.CLOSED, "the client closed"))
            self.inflight.clear()
            self.waiting.clear()
            self._set_state(State.CLOSED, "closed")
            self._first(ev.Status(State.CLOSED, "closed before registering"))

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
        self.dealer.connect(self.s.broker)
        self.poller.register(self.dealer, zmq.POLLIN)
        self.hello_id = self.new_id().encode()
        wait = self.s.connect_timeout if not self.was_online else min(self.s.connect_timeout, 3.0)
        self.hello_deadline = now + wait
        self.phase = "hello"
        self._send(p.encode_hello(self.hello_id, self.s.name, self.token), now)

    def _subscribe(self, welcome: p.Welcome, now: float) -> None:
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        endpoint = pub_endpoint_for(welcome.pub_endpoint, self.s.broker)
        if endpoint.startswith("tcp://["):
            self.sub.setsockopt(zmq.IPV6, 1)
        self.sub.connect(endpoint)
        # The own topic last: when SYNCED arrives there, the lobby is live too.
        self.sub.setsockopt(zmq.SUBSCRIBE, p.LOBBY_TOPIC)
        self.sub.setsockopt(zmq.SUBSCRIBE, p.private_topic(welcome.name))
        self.poller.register(self.sub, zmq.POLLIN)
        self.lobby_seq = 0
        self._sync(now)

    def _sync(self, now: float) -> None:
        self.sync_id = self.new_id().encode()
        self.next_sync_at = now + SYNC_RETRY
        self._send(p.encode_simple(b"SYNC", self.sync_id), now)

    def _online(self, now: float) -> None:
        self.phase = "online"
        self.attempt = 0
        first = not self.was_online
        self.was_online = True
        assert self.welcome is not None
        self._set_state(State.ONLINE, f"online as {self.welcome.name} at {self.s.broker}")
        self._send(p.encode_simple(b"READY", self.new_id().encode()), now)  # now others may see us join
        if first:
            self._first(None)
        # Unanswered messages go again with their ids; recipients drop repeats.
        for request in list(self.inflight.values()):
            self._transmit(request, now)
        while self.waiting:
            self._transmit(self.waiting.popleft(), now)

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
            self._message(event)  # type: ignore[arg-type]
        elif kind is p.Users:
            request = self.inflight.pop(event.msg_id, None)  # type: ignore[union-attr]
            if request is not None:
                self._answer(request, ev.Users(event.names))  # type: ignore[union-attr]
        elif kind is p.Welcome:
            assert isinstance(event, p.Welcome)
            if event.msg_id == self.hello_id and self.phase == "hello":
                self.phase = "sync"
                self.welcome = event
                self.token = event.token
                self._subscribe(event, now)
        elif kind is p.Shutdown:
            assert isinstance(event, p.Shutdown)
            self._lost(f"the broker is shutting down ({event.reason})", now)

    def _from_sub(self, frames: list[bytes], now: float) -> None:
        published = p.decode_published(frames)
        event = published.event
        if published.topic == p.LOBBY_TOPIC:
            if self.lobby_seq and published.seq > self.lobby_seq + 1:
                missed = published.seq - self.lobby_seq - 1
                self.emit(ev.Status(self.state, f"missed {missed} broadcast(s): this client read too slowly"))
            self.lobby_seq = published.seq
        kind = type(event)
        if kind is p.Message:
            self._message(event)  # type: ignore[arg-type]
        elif kind is p.Join:
            assert isinstance(event, p.Join)
            self.emit(ev.Presence(event.name, "join", ev.from_ms(event.time_ms)))
        elif kind is p.Leave:
            assert isinstance(event, p.Leave)
            self.emit(ev.Presence(event.name, "leave", ev.from_ms(event.time_ms), event.reason))
        elif kind is p.Synced:
            if self.phase == "sync":  # on our own topic: the subscription is live
                self._online(now)
        elif kind is p.Shutdown and self.dealer is not None:
            assert isinstance(event, p.Shutdown)
            self._lost(f"the broker is shutting down ({event.reason})", now)

    def _message(self, message: p.Message) -> None:
        key = (message.sender.lower(), message.msg_id)
        if key in self.seen:
            return  # a resend of what we already have
        self.seen[key] = None
        if len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        text = message.body.decode("utf-8", "replace")
        self.emit(ev.Message(message.msg_id.decode(), message.sender, message.target, text,
                             ev.from_ms(message.time_ms)))  # fmt: skip

    def _answered(self, answer: p.Ack | p.Error, now: float) -> None:
        msg_id = answer.msg_id
        if msg_id == self.hello_id and isinstance(answer, p.Error):
            if answer.code in FATAL_HELLO_CODES:
                self._give_up(f"registration refused: {answer.text} (code {answer.code})")
            else:
                self._lost(f"registration failed: {answer.text} (code {answer.code})", now)
            return
        if msg_id == self.bye_id:
            self.finished = True
            return
        request = self.inflight.pop(msg_id, None)
        if request is not None:
            if isinstance(answer, p.Ack):
                outcome: ev.Outcome = ev.Ack(
                    request.msg_id, ev.from_ms(answer.time_ms), answer.status, request.target, request.text
                )
            else:
                outcome = request.refusal(answer.code, answer.text)
            self._answer(request, outcome)
        elif isinstance(answer, p.Error):
            if answer.code == Code.NOT_REGISTERED:
                self._lost("the broker no longer knows this session", now)
            elif msg_id != self.sync_id:
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
            elif len(self.waiting) >= self.s.max_queued:
                self._answer(
                    request, request.refusal(ev.QUEUE_FULL, "too many messages waiting for a connection")
                )
            else:
                self.waiting.append(request)

    def _transmit(self, request: Request, now: float) -> None:
        msg_id = request.msg_id.encode()
        self.inflight[msg_id] = request
        if request.kind == "who":
            self._send(p.encode_simple(b"WHO", msg_id), now)
        else:
            self._send(p.encode_send(msg_id, request.target, request.text), now)

    def _begin_close(self, now: float) -> None:
        self.closing = True
        if self.state is State.ONLINE:
            self.bye_id = self.new_id().encode()
            self.close_deadline = now + BYE_WAIT
            self._send(p.encode_simple(b"BYE", self.bye_id), now)
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
        self._expire_requests(now)

    def _registering(self, now: float) -> None:
        if now > self.hello_deadline:
            if not self.was_online:
                self._give_up(f"no answer from the broker at {self.s.broker} "
                              f"within {self.s.connect_timeout:g}s")  # fmt: skip
            else:
                self._lost("no answer from the broker", now)
        elif self.sub is not None and now >= self.next_sync_at:
            self._sync(now)

    def _heartbeat(self, now: float) -> None:
        assert self.welcome is not None
        if now - self.last_recv > self.welcome.timeout_ms / 1000:
            self._lost("the broker stopped answering", now)
        elif now - self.last_send >= self.welcome.heartbeat_ms / 1000:
            self._send(p.encode_simple(b"PING", self.new_id().encode()), now)

    def _expire_requests(self, now: float) -> None:
        deadline = now - self.s.answer_timeout
        stale = [r for r in (*self.inflight.values(), *self.waiting) if r.created < deadline]
        for request in stale:
            self.inflight.pop(request.msg_id.encode(), None)
            if request in self.waiting:
                self.waiting.remove(request)
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
