"""The gateway's heap and CPython's cycle collector: short pauses with a thousand sessions.

A full collection walks every object the collector tracks: with 1,000 sessions signed in
(some 280 MiB) one such pass held the loop 60-220 ms, several times a minute, and at 1,000
msg/s every message in flight waited for it (it was the p99 of benchmarks/web.py, docs/WEB.md).
So every 0.2 s (server.HEAP_EVERY) the gateway collects what is young, the objects since the
last pass only, and freezes the survivors (`gc.freeze`): later passes skip them. Frozen objects are still freed by
reference counting; only cycles among them wait, until enough sessions have ended for their
cycles to be worth one full pass.
"""

from __future__ import annotations

import gc

#: A full pass (unfreeze, collect) once this many sessions ended since the last one, or this
#: share of the sessions alive if more: an ended session's cycles wait for it.
ENDED_MIN = 16
ENDED_SHARE = 0.25


class Heap:
    """Collect the young, freeze the survivors; a full pass only after enough sessions ended."""

    def __init__(self) -> None:
        self.ended = 0  # sessions ended since the last full pass
        self.full_passes = 0

    def session_ended(self) -> None:
        self.ended += 1

    def tend(self, alive: int) -> None:
        """Every HEAP_EVERY seconds (on the loop): a young pass, or a full one when it is due."""
        if self.ended >= max(ENDED_MIN, alive * ENDED_SHARE):
            gc.unfreeze()
            self.ended = 0
            self.full_passes += 1
        gc.collect()
        gc.freeze()

    @staticmethod
    def release() -> None:
        """The gateway stops: every object back to the collector."""
        gc.unfreeze()
