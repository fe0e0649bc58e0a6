"""What a zchat client tells its user: typed, immutable events.

The poller thread turns protocol messages into these; front ends (terminal
UI, line mode, JSON, bots) only ever see these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum

#: Client-side refusal codes (the broker's codes are below 600; see PROTOCOL.md).
USAGE = 600  # the user typed something the client cannot send
NOT_ANSWERED = 601  # no answer from the broker in time
QUEUE_FULL = 602  # too many messages waiting for a connection
CLOSED = 603  # the client closed before the message was answered


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class State(str, Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"  # gave up: the user must act (name taken, broker unreachable)
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Message:
    msg_id: str
    sender: str
    target: str  # the recipient's name, or "*" for everyone
    text: str
    time: datetime

    @property
    def private(self) -> bool:
        return self.target != "*"


@dataclass(frozen=True, slots=True)
class Presence:
    name: str
    event: str  # "join" or "leave"
    time: datetime
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Ack:
    msg_id: str
    time: datetime
    status: str
    target: str = ""
    text: str = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    msg_id: str
    code: int
    text: str
    target: str = ""
    message: str = ""  # the text that was not sent, if any


@dataclass(frozen=True, slots=True)
class Users:
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Status:
    state: State
    detail: str


Event = Message | Presence | Ack | Refusal | Users | Status
#: The answer to one request: a send gets Ack or Refusal, WHO gets Users or Refusal.
Outcome = Ack | Refusal | Users
Callback = Callable[[Event], None]
