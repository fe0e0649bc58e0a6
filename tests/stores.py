"""Stores for tests: one whose disk fills up when told, one that fails on purpose.

Both run inside a broker's own thread (BrokerServer(settings, store=...)): the
test only sets what it wants, and the store acts on it in the broker's thread.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field

from zchat.broker.sqlite_store import SqliteStore
from zchat.broker.store import MemoryStore, StoredMessage

#: A message body that needs pages of its own: no page at hand has room for it.
BIG = "words " * 2000


def fill_disk(store: SqliteStore, full: bool = True) -> None:
    """A full disk, for real: past PRAGMA max_page_count SQLite answers SQLITE_FULL
    ("database or disk is full"), as it does when the file system is full."""
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages if full else 1_073_741_823}")


class FillingStore(SqliteStore):
    """A SqliteStore whose disk a test fills or empties from its own thread: the
    connection is the broker's, so the limit goes in at the broker's next write."""

    full: bool | None = None  # what the test wants from the next write on
    #: A disk that fills between the writes and their COMMIT (as a tmpfs does: the WAL
    #: grows at COMMIT), which max_page_count cannot stage: COMMIT fails as it would.
    commit_fails = False

    def _begin(self) -> None:
        if self.full is not None:
            fill_disk(self, self.full)
            self.full = None
        super()._begin()

    def commit(self) -> bool:
        if self.commit_fails:
            self._flush()
            self._fail(sqlite3.OperationalError("database or disk is full"))
        return super().commit()


class Fault(RuntimeError):
    """Raised on purpose: a bug in the store."""


@dataclass
class FaultyStore(MemoryStore):
    """A MemoryStore that raises Fault in the methods named in `failing`."""

    failing: set[str] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)

    def _maybe_fail(self, method: str) -> None:
        self.calls[method] += 1
        if method in self.failing:
            raise Fault(f"{method} fails on purpose")

    def search(self, user: str, words: str, limit: int) -> list[StoredMessage]:
        self._maybe_fail("search")
        return super().search(user, words, limit)

    def catch_up(self) -> bool:
        self._maybe_fail("catch_up")
        return super().catch_up()

    def expire(self, before_ms: int) -> int:
        self._maybe_fail("expire")
        return super().expire(before_ms)

    def commit(self) -> bool:
        self._maybe_fail("commit")
        return super().commit()
