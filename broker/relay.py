"""Events on rooms' topics, when several brokers share the rooms (PROTOCOL.md 6.2, 13.3).

A broker alone numbers and publishes its rooms' events itself. In a cluster
every event on a room's topic (the lobby's too: messages, JOIN, LEAVE) goes
through one ordered log that all the brokers read: the core hands the event
to a `Relay`, as it hands messages to the Store, and publishes it when the
log gives it back (the input `Relayed`), numbered by its own count, which is
the same on every broker because the log's order is. A message's sender is
acknowledged once the log has stored it (the input `RelayStored`).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from zchat.common import protocol as p

#: Where a broker keeps its position in the log: a pseudo-room of the Store's counters
#: (Store.used_seq), written in the same commit as what the events read changed.
LOG_POSITION = "\0log"


class Waiting(NamedTuple):
    """A sender waiting for its message to be stored in the log: who to acknowledge."""

    peer: bytes
    key: str  # the sender's name key
    msg_id: bytes
    time_ms: int


class Relay(Protocol):
    def relay(self, room: str, event: p.PublishedEvent, waiting: Waiting | None = None) -> None:
        """Put `event` in the shared order of `room`'s topic; with `waiting`, the answer
        comes back as RelayStored (stored, or not)."""
        ...
