"""web/sessions.py and the gateway's pump, with no broker: the event log a page resumes from,
and a browser that stops taking events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

pytest.importorskip("websockets", reason="the web gateway needs websockets: pip install 'zchat[web]'")

from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
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


def test_events_written_at_once_and_sent_by_the_pump_reach_the_page_in_order_once() -> None:
    # An idle pump lets each new event be written at once (Gateway.write_now); once the
    # browser is behind (WRITE_LIMIT buffered) the pump sends the rest. 4 KiB events, more
    # than the kernel's socket buffers hold, so both ways are taken.
    count = 4000
    body = "x" * 4096

    async def run() -> tuple[list[int], list[bool]]:
        gateway = Gateway(Settings("tcp://127.0.0.1:1"))
        session = Session("ann", count)
        ways: list[bool] = []  # each write_now's answer: True written at once, False left to the pump

        def write_now(ws: ServerConnection, session: Session, eid: int, text: str) -> bool:
            ways.append(Gateway.write_now(ws, session, eid, text))
            return ways[-1]

        gateway.write_now = write_now  # type: ignore[method-assign]

        async def handler(ws: ServerConnection) -> None:  # as Gateway.connection, without commands
            session.attached = ws
            pump = asyncio.create_task(gateway.pump(ws, session))
            await ws.wait_closed()
            pump.cancel()

        try:
            async with serve(
                handler, "127.0.0.1", 0, write_limit=server.WRITE_LIMIT, compression=None
            ) as ours:
                port = ours.sockets[0].getsockname()[1]
                async with connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None) as page:
                    deadline = time.monotonic() + 5
                    while session.write_now is None:  # the pump is waiting for events
                        assert time.monotonic() < deadline, "the pump never waited"
                        await asyncio.sleep(0.01)
                    for n in range(count):
                        session.add({"type": "status", "n": n, "text": body})
                    eids = [json.loads(await asyncio.wait_for(page.recv(), 10))["eid"] for _ in range(count)]
        finally:
            gateway.sessions.close()
        return eids, ways

    eids, ways = asyncio.run(run())
    assert eids == list(range(1, count + 1))
    assert True in ways and False in ways
