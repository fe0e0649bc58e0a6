"""The broker's own failures, logged so that no client can flood the log with them.

A bug a client can trigger logs its traceback once per kind (its type and the
path it was raised along), repeats are counted; a store that cannot be written
is said once, and once more when it writes again. The core and its shell
share one `Failures`.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter

from zchat.broker.store import StoreFailed
from zchat.common.protocol import Code

log = logging.getLogger("zchat.broker")

#: Distinct failures (exception type and where) whose traceback is logged; repeats are counted.
FAILURES_LOGGED = 100


class Failures:
    def __init__(self, counters: Counter[str], store_name: str = "") -> None:
        self.counters = counters
        #: How the store is named in the log (its path), set by the shell.
        self.store_name = store_name
        self.store_down = False
        self._refused_before = 0
        self._seen: set[tuple[object, ...]] = set()

    def failed(self, what: str, e: BaseException) -> None:
        """The traceback once per kind of failure; `what` failed, the broker goes on."""
        self.counters["failed"] += 1
        where = (type(e).__name__, *((f.filename, f.lineno) for f in traceback.extract_tb(e.__traceback__)))
        if where in self._seen:
            log.debug("%s failed again: %r", what, e)
            return
        if len(self._seen) < FAILURES_LOGGED:
            self._seen.add(where)
        log.error("%s failed; the broker goes on (repeats are counted, not logged)", what, exc_info=e)

    def store_failed(self, e: StoreFailed) -> None:
        self.counters["store.failed"] += 1
        if self.store_down:
            log.debug("the store still cannot be written: %s", e)
            return
        self.store_down = True
        self._refused_before = self.counters["refused.store_failed"]
        log.error("the store %s cannot be written (%s): until it can, what must be kept is refused "
                  "(ERROR %d) and the rest goes on", self.store_name, e.__cause__ or e,
                  Code.STORE_FAILED)  # fmt: skip

    def store_written(self) -> None:
        """A commit wrote messages: the store works (again)."""
        if self.store_down:
            self.store_down = False
            log.warning("the store %s is written again (%d messages refused meanwhile)", self.store_name,
                        self.counters["refused.store_failed"] - self._refused_before)  # fmt: skip
