"""Loss and duplicate accounting for one stream of numbered messages."""

from __future__ import annotations


class Tracker:
    """Which sequence numbers of one stream arrived, and how many twice.

    Messages are numbered 0, 1, 2, ... by their sender; a bitmap (one byte
    per number) tells a duplicate from a first delivery whatever the order.
    """

    __slots__ = ("duplicates", "seen", "unique")

    def __init__(self) -> None:
        self.seen = bytearray(1024)
        self.unique = 0
        self.duplicates = 0

    def add(self, seq: int) -> None:
        seen = self.seen
        if seq >= len(seen):
            seen.extend(bytes(max(seq + 1, 2 * len(seen)) - len(seen)))
        if seen[seq]:
            self.duplicates += 1
        else:
            seen[seq] = 1
            self.unique += 1
