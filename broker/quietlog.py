"""Refusal logging that a hostile client cannot turn into a log flood.

Every refusal is counted (the core's counters); only the first few of each
kind in a window are written at INFO, so that one flooder's 429s cannot hide
another client's 401s. The rest go to DEBUG, and one line says how many
were left out, so an operator sees that a flood happened without 100,000 lines
of it. Writing a line costs the broker more than refusing the message.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class QuietLog:
    logger: logging.Logger
    per_window: int = 20  # lines at INFO per kind of refusal and window
    window: float = 10.0  # seconds
    window_end: float = 0.0
    written: Counter[str] = field(default_factory=Counter)
    #: Refusals not written at INFO in the current window, by reason.
    left_out: Counter[str] = field(default_factory=Counter)

    def refusal(
        self, now: float, reason: str, message: str, *args: object, fields: Mapping[str, object] | None = None
    ) -> None:
        """Log `message % args` at INFO unless this kind had its share of the window;
        `fields`: the line's `extra` (jsonlog.fields)."""
        self.flush(now)
        if self.written[reason] < self.per_window:
            self.written[reason] += 1
            self.logger.info(message, *args, extra=fields)
            return
        self.left_out[reason] += 1
        self.logger.debug(message, *args, extra=fields)

    def flush(self, now: float) -> None:
        """At the end of a window, say what was left out and start a new one."""
        if now < self.window_end:
            return
        if self.left_out:
            summary = ", ".join(f"{count} {reason}" for reason, count in self.left_out.most_common())
            self.logger.info("%d more refusals not logged (%s)", self.left_out.total(), summary)
            self.left_out.clear()
        self.window_end = now + self.window
        self.written.clear()
