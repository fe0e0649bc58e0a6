"""A room's (or the lobby's) gapless join, with no sockets (PROTOCOL.md 13.3).

Joining, the client subscribes to the room's topic, SYNCs until that
subscription is live, then asks for the room's HISTORY. What arrives on the
topic meanwhile is kept, and shown with the history: each message, join and
leave once, in order, with no gap at the seam.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from zchat.common import protocol as p

Live = tuple[int, p.PublishedEvent]  # (sequence number, event) as published on the room's topic


class Joining(Enum):
    """Where a room's gapless join stands."""

    SYNCING = "syncing"  # subscribed: SYNC until SYNCED proves the subscription live
    HISTORY = "history"  # live: its HISTORY is asked, what arrives meanwhile kept
    LIVE = "live"  # history shown: what arrives is shown


@dataclass
class Room:
    """A room this client is a member of, and where its gapless join stands."""

    name: str
    subscribed: bool = False  # on the current SUB socket
    phase: Joining = Joining.SYNCING
    #: What arrived on the topic before the HISTORY reply, shown after it.
    kept: list[Live] = field(default_factory=list)
    seen_seq: int = 0  # the highest sequence number shown
    asked: int = 0  # records the join's HISTORY asked for: as many back means more may be missing

    def watch(self) -> None:
        """Subscribed (again): everything waits for the next SYNCED and HISTORY."""
        self.subscribed = True
        self.phase = Joining.SYNCING
        self.kept.clear()

    def synced(self) -> None:
        """SYNCED came: the subscription is live, and the join's HISTORY is asked next."""
        self.phase = Joining.HISTORY

    def unwatch(self) -> None:
        """The SUB socket is gone (a reconnect): subscribe again later."""
        self.subscribed = False
        self.kept.clear()

    def take_history(self, last_seq: int, records: list[p.Record]) -> list[p.Record | Live]:
        """The join's HISTORY reply (records oldest first): what to show, in sequence order, and
        live from now on. A kept message up to `last_seq` is a record (or older than them): not
        shown. HISTORY holds messages only: a kept JOIN or LEAVE is in no record, and is shown."""
        if last_seq < self.seen_seq:  # the broker lost the room's numbers: count afresh
            self.seen_seq = 0
        floor = self.seen_seq
        kept, self.kept = self.kept, []
        shown: list[p.Record | Live] = [r for r in records if r.seq > floor]
        shown += [(seq, event) for seq, event in kept
                  if last_of(seq, event) > floor and (seq > last_seq or type(event) is not p.Message)]  # fmt: skip
        shown.sort(key=lambda item: item[0])  # a record's first field is its seq too
        self.seen_seq = max(floor, last_seq, *(last_of(item[0], item[1]) for item in shown))
        self.phase = Joining.LIVE
        return shown

    def take_published(self, seq: int, event: p.PublishedEvent) -> tuple[list[Live], int]:
        """One event from the topic: what to show now, and how many were missed before it."""
        if self.phase is not Joining.LIVE:
            self.kept.append((seq, event))
            return [], 0
        last = last_of(seq, event)
        if seq <= self.seen_seq:
            # A message that is a record of the join's HISTORY (or older than them), shown or
            # not to be. A JOIN or a LEAVE is in no record, and the topic gives it once: one
            # the HISTORY reply overtook (its own socket) is shown, late rather than never.
            if type(event) is p.Message:
                return [], 0
            self.seen_seq = max(self.seen_seq, last)
            return [(seq, event)], 0
        missed = seq - self.seen_seq - 1 if self.seen_seq else 0
        self.seen_seq = last
        return [(seq, event)], missed


def last_of(seq: int, event: object) -> int:
    """The last sequence number an event takes: a PRESENCE run takes one for each change."""
    if isinstance(event, p.Presence):
        return seq + len(event.changes) - 1
    return seq
