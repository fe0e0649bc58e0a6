"""Room sequence numbers (PROTOCOL.md 6.2): who hands them out.

The core asks a `Sequencer` for the next number of a topic, as it asks the
Store for history. A broker alone counts from its store (`StoreSequencer`);
brokers of a cluster will share one count per room (a stream's sequence),
given by another implementation, with no change to the core.
"""

from __future__ import annotations

from typing import Protocol

from zchat.broker.store import Store


class Sequencer(Protocol):
    def next(self, room: str) -> int:
        """The room's next number: one above every number handed out before, also
        before a restart (JOIN and LEAVE take theirs too)."""
        ...

    def last(self, room: str) -> int:
        """The newest number handed out on the room, 0 if none (HISTORY's last seq)."""
        ...


class StoreSequencer:
    """One broker's count: kept in memory, continued from the store after a restart,
    and every number written to it (Store.used_seq), so none is ever used twice."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.last_seq: dict[str, int] = {}  # per room; "*" is the lobby

    def next(self, room: str) -> int:
        seq = self.last_seq.get(room)  # last() by hand: this is on every broadcast's path
        if seq is None:
            seq = self.store.last_seq(room)
        seq += 1
        self.last_seq[room] = seq
        self.store.used_seq(room, seq)
        return seq

    def last(self, room: str) -> int:
        seq = self.last_seq.get(room)
        if seq is None:
            seq = self.last_seq[room] = self.store.last_seq(room)
        return seq
