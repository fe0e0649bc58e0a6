"""web/sessions.py and the gateway's pump, with no broker: the event log a page resumes from,
and a browser that stops taking events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("websockets", reason="the web gateway needs websockets: pip install 'zchat[web]'")

from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosedError

from zchat.web import server
from zchat.web.server import Gateway
from zchat.web.sessions import Session, Settings


def logged(kept: int, events: int) -> Session:
    session = Session("ann", kept)
    for n in range(events):
        session.add({"type": "status", "n": n})
    return session


@given(kept=st.integers(1, 30), events=st.integers(0, 60), eid=st.integers(-2, 62))
def test_since_gives_every_kept_event_after_the_eid_or_none_when_some_are_gone(
    kept: int, events: int, eid: int
) -> None:
    session = logged(kept, events)
    after = session.since(eid)
    oldest_kept = max(1, events - kept + 1)
    if eid >= events:
        assert after == []  # nothing new (a page ahead of the log is not behind either)
    elif eid < 0 or eid + 1 < oldest_kept:
        assert after is None  # the page would miss some: it must start over
    else:
        assert after is not None
        assert [e for e, _ in after] == list(range(eid + 1, events + 1))
        assert all(text.startswith(f'{{"eid": {e}, ') for e, text in after)


class StuckBrowser:
    """A WebSocket whose browser takes one event and then none: its second send never ends."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.aborted = asyncio.Event()
        self.transport = self

    async def send(self, text: str) -> None:
        if self.sent:
            await self.aborted.wait()
            raise ConnectionClosedError(None, None)
        self.sent.append(text)

    def abort(self) -> None:
        self.aborted.set()


def test_a_browser_that_takes_no_event_within_the_send_timeout_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "SEND_TIMEOUT", 0.2)

    async def run() -> tuple[StuckBrowser, Session]:
        gateway = Gateway(Settings("tcp://127.0.0.1:1"))
        try:
            session = logged(10, 3)
            browser = StuckBrowser()
            ws: Any = browser
            await asyncio.wait_for(gateway.pump(ws, session), 5)
            return browser, session
        finally:
            gateway.sessions.close()

    browser, session = asyncio.run(run())
    assert browser.aborted.is_set()
    assert len(browser.sent) == 1 and session.cursor == 1  # what it took stays taken
