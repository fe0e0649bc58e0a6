"""Test helpers around the Client library: connect, and wait for events."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from zchat.client import events as ev
from zchat.client.session import Client


class Watcher:
    """Reads a client's events, keeping every one seen for later assertions."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: list[ev.Event] = []

    def expect(
        self, match: Callable[[ev.Event], bool], timeout: float = 10.0, what: str = "event"
    ) -> ev.Event:
        for seen in self.seen:
            if match(seen):
                return seen
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            event = self.client.next_event(left)
            if event is None:
                break
            ones = list(ev.each(event))  # a run of joins and leaves: each, as a front end shows them
            self.seen += ones
            for one in ones:
                if match(one):
                    return one
        raise AssertionError(f"{self.client.name}: no {what} within {timeout}s; saw {self.seen}")

    def message(self, text: str, timeout: float = 10.0) -> ev.Message:
        event = self.expect(
            lambda e: isinstance(e, ev.Message) and e.text == text, timeout, f"message {text!r}"
        )
        assert isinstance(event, ev.Message)
        return event

    def messages(self) -> list[ev.Message]:
        return [e for e in self.seen if isinstance(e, ev.Message)]

    def state(self, state: ev.State, timeout: float = 10.0) -> ev.Status:
        event = self.expect(
            lambda e: isinstance(e, ev.Status) and e.state is state, timeout, f"state {state}"
        )
        assert isinstance(event, ev.Status)
        return event

    def forget(self) -> None:
        self.seen.clear()


@contextmanager
def chat(name: str, endpoint: str, **options: float) -> Iterator[Watcher]:
    client = Client(name, endpoint, **options)  # type: ignore[arg-type]
    client.connect()
    try:
        yield Watcher(client)
    finally:
        client.close()
