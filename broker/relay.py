"""What several brokers must agree on, in one order: rooms' events and mailboxes.

A broker alone numbers and publishes its rooms' events and keeps its
mailboxes itself. In a cluster these go through one ordered log that all
the brokers read (the cluster gives a `Relay`): the core hands it an entry,
as it hands messages to the Store, and carries the entry out when the log
gives it back (the input `Relayed`), on every broker in the same order. So
a room's numbers, its history and every mailbox are the same on every
broker: each keeps them in its own store, a projection of the log. A
sender waiting for its message is acknowledged once the log has stored it
(the input `RelayStored`).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from zchat.broker.store import StoredMessage
from zchat.common import protocol as p

#: Where a broker keeps its position in the log: a pseudo-room of the Store's counters
#: (Store.used_seq), written in the same commit as what the entries read changed.
LOG_POSITION = "\0log"
#: A message read from the log whose sender and id were read before, within this of its
#: time, is a resend that reached the log twice: every broker drops it alike (as JetStream's
#: duplicate window did, two minutes, when each message had a Nats-Msg-Id of its own).
DUPLICATE_WINDOW_MS = 120_000


class RoomEvent(NamedTuple):
    """A message, JOIN or LEAVE on a room's topic (the lobby's too), numbered by each broker."""

    room: str
    event: p.PublishedEvent


class Mail(NamedTuple):
    """A private message for an offline user, into its mailbox on every broker."""

    recipient: str  # name key
    message: StoredMessage


class KeptLive(NamedTuple):
    """A private message handed to its online recipient: kept in its mailbox on every
    broker, as handed (not handed again now), until the recipient confirms it (Taken)."""

    recipient: str  # name key
    message: StoredMessage


class Taken(NamedTuple):
    """The recipient confirmed a message from its mailbox (mail, or one kept live): it leaves
    every broker's copy."""

    recipient: str
    sender: str  # name key
    msg_id: bytes


class Receipted(NamedTuple):
    """The recipient confirmed messages of a sender who is offline: the receipt is kept on
    every broker, for whichever the sender signs in on next."""

    sender: str  # name key
    recipient: str  # its name, as registered
    time_ms: int
    msg_ids: tuple[bytes, ...]


class ReceiptsTaken(NamedTuple):
    """The sender got these receipts (at its sign-in, or signed in when they came): they
    leave every broker's copy."""

    sender: str
    msg_ids: tuple[bytes, ...]


class Known(NamedTuple):
    """A user signed in for the first time: mail for it is kept from now on, on every broker."""

    user: str  # name key


Entry = RoomEvent | Mail | KeptLive | Taken | Receipted | ReceiptsTaken | Known


class Waiting(NamedTuple):
    """A sender waiting for its message to be stored in the log: who to acknowledge, and how."""

    peer: bytes
    key: str  # the sender's name key
    msg_id: bytes
    time_ms: int
    status: str = "accepted"


class Relay(Protocol):
    def relay(self, entry: Entry, waiting: Waiting | None = None) -> None:
        """Put `entry` in the shared order; with `waiting`, the answer comes back as
        RelayStored (stored, or not)."""
        ...
