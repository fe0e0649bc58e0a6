"""One thing the user asked the client to do, answered exactly once."""

from __future__ import annotations

import threading
import time

from zchat.client import events as ev


class Request:
    """A command on its way; `wait()` gives its answer (events.Outcome)."""

    __slots__ = (
        "_done",
        "_outcome",
        "before",
        "count",
        "created",
        "kind",
        "msg_id",
        "sent",
        "sent_at",
        "target",
        "text",
        "tries",
    )

    def __init__(self, kind: str, msg_id: str, target: str = "", text: str = "", before: int = 0,
                 count: int = 0) -> None:  # fmt: skip
        #: "send", "who", "close", "enter", "exit", "rooms", "names", "history" or "search".
        self.kind = kind
        self.msg_id = msg_id
        self.target = target  # a name or room (for "search": nothing; the words are the text)
        self.text = text
        self.before = before  # history: the sequence number to page back from; -1: from the oldest seen
        self.count = count
        self.created = time.monotonic()
        # Kept for callers that read them; the engine no longer sets them: its own record of
        # each request (connection.Pending) holds when it was sent and on how many connections.
        self.sent_at = self.created
        self.sent = False
        self.tries = 0
        self._done = threading.Event()
        self._outcome: ev.Outcome | None = None

    def resolve(self, outcome: ev.Outcome) -> bool:
        """Record the answer; only the first one counts."""
        if self._done.is_set():
            return False
        self._outcome = outcome
        self._done.set()
        return True

    def refusal(self, code: int, text: str) -> ev.Refusal:
        return ev.Refusal(self.msg_id, code, text, self.target, self.text)

    def done(self) -> bool:
        return self._done.is_set()

    def refused(self) -> bool:
        """Answered, with a Refusal (a bad room name is refused at once, before any I/O)."""
        return self._done.is_set() and isinstance(self._outcome, ev.Refusal)

    def wait(self, timeout: float | None = None) -> ev.Outcome:
        """The answer; TimeoutError if none came within `timeout` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"no answer to {self.msg_id} within {timeout}s")
        assert self._outcome is not None
        return self._outcome

    def __repr__(self) -> str:
        return f"Request({self.kind!r}, {self.msg_id!r}, to={self.target!r})"
