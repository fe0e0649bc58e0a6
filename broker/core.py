"""The broker's routing core: who is online, routing and liveness, no sockets.

Input is (routing id, frames or a decoded command, time); output is a list of
actions saying what to send where. The ZeroMQ shell in server.py carries them
out, so everything here is tested without I/O.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from zchat.common import protocol as p
from zchat.common.protocol import Code

log = logging.getLogger("zchat.broker")


@dataclass(frozen=True)
class CoreConfig:
    pub_endpoint: str
    heartbeat_ms: int = 2000
    timeout_ms: int = 6000
    max_body: int = 65536


class SendTo(NamedTuple):
    """Send these frames to one client over the ROUTER."""

    peer: bytes
    frames: list[bytes]


class Publish(NamedTuple):
    """Publish these frames (topic and sequence first) on the PUB socket."""

    frames: list[bytes]


class Forward(NamedTuple):
    """A private message: deliver it, then acknowledge it to the sender.

    Delivery can fail (peer gone, queue full); the shell then asks
    `BrokerCore.undeliverable` what to tell the sender instead of the ack.
    """

    peer: bytes
    frames: list[bytes]
    sender: bytes
    ack: list[bytes]


Action = SendTo | Publish | Forward


@dataclass(slots=True)
class Session:
    peer: bytes
    name: str
    name_bytes: bytes
    token: str
    last_seen: float
    #: JOIN goes out at READY, once the client hears the lobby: whatever
    #: others answer to a JOIN then reaches the newcomer.
    announced: bool = False


@dataclass
class BrokerCore:
    config: CoreConfig
    new_token: Callable[[], str] = lambda: secrets.token_hex(16)
    by_peer: dict[bytes, Session] = field(default_factory=dict)
    by_key: dict[str, Session] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    last_seq: dict[bytes, int] = field(default_factory=dict)
    shutting_down: bool = False

    # --- input ---------------------------------------------------------------

    def receive(self, peer: bytes, frames: list[bytes], now: float) -> list[Action]:
        """Decode one client message and handle it; bad input becomes an ERROR."""
        self.counters["received"] += 1
        session = self.by_peer.get(peer)
        if session is not None:
            session.last_seen = now  # any traffic proves the client alive
        try:
            command = p.decode_command(frames)
        except p.ProtocolError as e:
            return [self._refuse(peer, e.msg_id, e.code, e.text)]
        return self.handle(peer, command, now)

    def handle(self, peer: bytes, command: p.ClientCommand, now: float) -> list[Action]:
        session = self.by_peer.get(peer)
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
            return [SendTo(peer, p.encode_pong(command.msg_id, p.now_ms(now)))]
        if kind is p.Hello:
            return self._hello(peer, session, command, now)  # type: ignore[arg-type]
        if kind is p.Who:
            names = sorted((s.name for s in self.by_key.values()), key=str.lower)
            return [SendTo(peer, p.encode_users(command.msg_id, names))]
        if session is None:
            return [self._not_registered(peer, command.msg_id)]
        if kind is p.Sync:
            # Per-client topics carry no sequence (0): nothing is counted there.
            synced = [p.private_topic(session.name), b"0", *p.encode_synced(command.msg_id)]
            return [Publish(synced), SendTo(peer, p.encode_ack(command.msg_id, p.now_ms(now)))]
        if kind is p.Ready:
            ack = SendTo(peer, p.encode_ack(command.msg_id, p.now_ms(now)))
            if session.announced:
                return [ack]
            session.announced = True
            join = p.encode_join(session.name_bytes, p.now_ms(now))
            return [ack, Publish(self._published(p.LOBBY_TOPIC, join))]
        # Bye: the client leaves on purpose.
        ack = SendTo(peer, p.encode_ack(command.msg_id, p.now_ms(now)))
        return [ack, *self._drop(session, now, "quit")]

    def _send(self, session: Session, command: p.Send, now: float) -> list[Action]:
        msg_id, target, body = command
        if len(body) > self.config.max_body:
            return [self._refuse(session.peer, msg_id, Code.TOO_LARGE,
                                 f"message is {len(body)} bytes, the limit is {self.config.max_body}")]  # fmt: skip
        stamp = p.now_ms(now)
        ack = p.encode_ack(msg_id, stamp)
        if target == p.EVERYONE:
            self.counters["broadcast"] += 1
            message = p.encode_message(msg_id, session.name_bytes, b"*", stamp, body)
            return [Publish(self._published(p.LOBBY_TOPIC, message)), SendTo(session.peer, ack)]
        recipient = self.by_key.get(target.lower())
        if recipient is None:
            if p.valid_name(target):
                text = f"{target} is not online"
            else:
                text = f"{target!r} is neither a user name nor '*'"
            return [self._refuse(session.peer, msg_id, Code.UNKNOWN_RECIPIENT, text)]
        self.counters["private"] += 1
        message = p.encode_message(msg_id, session.name_bytes, recipient.name_bytes, stamp, body)
        return [Forward(recipient.peer, message, session.peer, ack)]

    def _hello(self, peer: bytes, current: Session | None, hello: p.Hello, now: float) -> list[Action]:
        key = p.name_key(hello.name)
        if current is not None:
            if p.name_key(current.name) == key:  # a repeated HELLO: answer it again
                return [SendTo(peer, self._welcome(hello.msg_id, current, now))]
            return [self._refuse(peer, hello.msg_id, Code.ALREADY_REGISTERED,
                                 f"this connection is already registered as {current.name}")]  # fmt: skip
        holder = self.by_key.get(key)
        if holder is not None:
            if hello.token and secrets.compare_digest(hello.token, holder.token):
                # The same client on a new connection: it takes its session
                # over, so nobody sees it leave and join again.
                del self.by_peer[holder.peer]
                holder.peer = peer
                holder.last_seen = now
                self.by_peer[peer] = holder
                self.counters["resumed"] += 1
                log.info("%s resumed its session on a new connection", holder.name)
                return [SendTo(peer, self._welcome(hello.msg_id, holder, now))]
            return [self._refuse(peer, hello.msg_id, Code.NAME_TAKEN, f"the name {holder.name} is taken")]
        session = Session(peer, hello.name, hello.name.encode(), self.new_token(), now)
        self.by_peer[peer] = session
        self.by_key[key] = session
        self.counters["joined"] += 1
        log.info("%s joined (%d online)", session.name, len(self.by_key))
        return [SendTo(peer, self._welcome(hello.msg_id, session, now))]

    def _welcome(self, msg_id: bytes, session: Session, now: float) -> list[bytes]:
        c = self.config
        return p.encode_welcome(p.Welcome(
            msg_id, session.name, session.token, c.pub_endpoint,
            c.heartbeat_ms, c.timeout_ms, c.max_body, int(now * 1000),
        ))  # fmt: skip

    # --- events from the shell ----------------------------------------------

    def undeliverable(self, forward: Forward, busy: bool, now: float) -> list[Action]:
        """A Forward could not be handed to its recipient: tell the sender why."""
        msg_id = forward.ack[2]
        recipient = self.by_peer.get(forward.peer)
        if busy:
            name = recipient.name if recipient else "the recipient"
            return [self._refuse(forward.sender, msg_id, Code.RECIPIENT_BUSY,
                                 f"{name} is not reading; message not delivered")]  # fmt: skip
        refusal = self._refuse(forward.sender, msg_id, Code.UNKNOWN_RECIPIENT,
                               "the recipient went offline; message not delivered")  # fmt: skip
        actions: list[Action] = [refusal]
        if recipient is not None:
            actions += self._drop(recipient, now, "disconnected")
        return actions

    def expire(self, now: float) -> list[Action]:
        """Drop every client silent for longer than the timeout."""
        deadline = now - self.config.timeout_ms / 1000
        actions: list[Action] = []
        for session in [s for s in self.by_peer.values() if s.last_seen < deadline]:
            actions += self._drop(session, now, "timeout")
        return actions

    def shutdown(self, now: float, reason: str = "the broker is shutting down") -> list[Action]:
        """Tell every client, directly and on PUB, that the broker is going away."""
        self.shutting_down = True
        frames = p.encode_shutdown(reason)
        actions: list[Action] = [SendTo(peer, frames) for peer in self.by_peer]
        actions.append(Publish(self._published(p.LOBBY_TOPIC, frames)))
        return actions

    # --- helpers -------------------------------------------------------------

    def _drop(self, session: Session, now: float, reason: str) -> list[Action]:
        del self.by_peer[session.peer]
        del self.by_key[p.name_key(session.name)]
        self.counters[f"left.{reason}"] += 1
        log.info("%s left (%s; %d online)", session.name, reason, len(self.by_key))
        if not session.announced:
            return []  # nobody was told it joined
        leave = p.encode_leave(session.name_bytes, p.now_ms(now), reason)
        return [Publish(self._published(p.LOBBY_TOPIC, leave))]

    def _published(self, topic: bytes, message: list[bytes]) -> list[bytes]:
        seq = self.last_seq.get(topic, 0) + 1
        self.last_seq[topic] = seq
        return [topic, str(seq).encode(), *message]

    def _not_registered(self, peer: bytes, msg_id: bytes) -> SendTo:
        return self._refuse(peer, msg_id, Code.NOT_REGISTERED, "send HELLO first")

    def _refuse(self, peer: bytes, msg_id: bytes, code: Code, text: str) -> SendTo:
        self.counters[f"refused.{code.name.lower()}"] += 1
        log.info("refused %s from %s: %s %s", msg_id.decode("ascii", "replace") or "-",
                 self._who(peer), int(code), text)  # fmt: skip
        return SendTo(peer, p.encode_error(msg_id, code, text))

    def _who(self, peer: bytes) -> str:
        session = self.by_peer.get(peer)
        return session.name if session else f"peer {peer.hex()}"
