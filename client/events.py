"""What a zchat client tells its user: typed, immutable events.

The connection engine (connection.py) turns protocol messages into these;
front ends (terminal UI, line mode, JSON, bots, a web gateway) only ever see these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum

#: Client-side refusal codes (the broker's codes are below 600; see PROTOCOL.md).
USAGE = 600  # the user typed something the client cannot send
NOT_ANSWERED = 601  # no answer from the broker in time
QUEUE_FULL = 602  # too many messages waiting for a connection
CLOSED = 603  # the client closed before the message was answered
LOST = 604  # the connection to the broker dropped each time it was sent: not sent again


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class State(str, Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"  # gave up: the user must act (name taken, broker unreachable)
    CLOSED = "closed"


def is_room(target: str) -> bool:
    """The lobby "*" and "#name" rooms; any other target is a person."""
    return target == "*" or target.startswith("#")


@dataclass(frozen=True, slots=True)
class Message:
    msg_id: str
    sender: str
    target: str  # the recipient's name, "*" for everyone, or a "#room"
    text: str
    time: datetime
    history: bool = False  # from the room's history, not live
    seq: int = 0  # the room's sequence number (0: private, or not known)

    @property
    def private(self) -> bool:
        return not is_room(self.target)

    @property
    def room(self) -> str:
        """ "*" for the lobby, "#name" for a room, "" for a private message."""
        return self.target if is_room(self.target) else ""


@dataclass(frozen=True, slots=True)
class Presence:
    name: str
    event: str  # "join" or "leave"
    time: datetime
    reason: str = ""
    room: str = "*"


@dataclass(frozen=True, slots=True)
class Presences:
    """Joins and leaves of one room that the broker published together, in order: one event
    for a run of them (PROTOCOL.md 6.4), as a client signing in many people at once sees.

    `changes` are (name, time in ms, reason), a reason "" being a join: kept as they came, so
    that a client with no use for them does no work per change. `each()` gives them one by one.
    """

    room: str
    changes: tuple[tuple[str, int, str], ...]

    def each(self) -> Iterator[Presence]:
        room = self.room
        for name, time_ms, reason in self.changes:
            yield Presence(name, "leave" if reason else "join", from_ms(time_ms), reason, room)


def each(event: Event) -> Iterator[Event]:
    """The event, or a run's joins and leaves one by one: for a front end that shows each."""
    if type(event) is Presences:
        yield from event.each()
    else:
        yield event


@dataclass(frozen=True, slots=True)
class Ack:
    msg_id: str
    time: datetime
    status: str
    target: str = ""
    text: str = ""
    command: str = "send"  # or "enter", "exit", ...: what was acknowledged


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
    room: str = ""  # set when answering names(room): the room's members online
    away: tuple[tuple[str, str], ...] = ()  # (name, text) of those away, answering who()


@dataclass(frozen=True, slots=True)
class Away:
    """The recipient of our private message `msg_id` is away, saying `text`."""

    msg_id: str
    name: str
    text: str


@dataclass(frozen=True, slots=True)
class Topic:
    """A room's topic: the answer to topic(room) (`changed` False), or a member set it
    (`changed` True, published to the room). `text` "" is no topic."""

    room: str
    text: str
    setter: str
    time: datetime | None
    changed: bool = False


@dataclass(frozen=True, slots=True)
class Receipt:
    """The recipient's client has the private message `msg_id`."""

    msg_id: str
    recipient: str
    time: datetime
    text: str = ""  # what was sent, when this client still remembers it


@dataclass(frozen=True, slots=True)
class RoomList:
    sizes: tuple[tuple[str, int], ...]  # every room with members, and how many
    mine: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class History:
    """The answer to history(): its messages were emitted just before, marked history."""

    room: str
    messages: tuple[Message, ...]
    last_seq: int


@dataclass(frozen=True, slots=True)
class Found:
    messages: tuple[Message, ...]  # newest first


@dataclass(frozen=True, slots=True)
class Status:
    state: State
    detail: str


Event = (
    Message
    | Presence
    | Presences
    | Ack
    | Refusal
    | Users
    | Status
    | Receipt
    | RoomList
    | History
    | Found
    | Away
    | Topic
)
#: The answer to one request: a send gets Ack or Refusal, WHO gets Users or Refusal, and so on.
Outcome = Ack | Refusal | Users | RoomList | History | Found | Topic
Callback = Callable[[Event], None]
