"""A request's answer: an ACK that comes quickly is not a refusal."""

from __future__ import annotations

from datetime import datetime, timezone

from zchat.client import events as ev
from zchat.client.request import Request


def test_refused_only_when_the_answer_is_a_refusal() -> None:
    quick = Request("enter", "m1", "#dev")
    assert not quick.refused()  # no answer yet
    quick.resolve(ev.Ack("m1", datetime.now(timezone.utc), "accepted", "#dev", command="enter"))
    assert quick.done() and not quick.refused()
    bad = Request("enter", "m2", "dev")
    bad.resolve(bad.refusal(ev.USAGE, "not a room"))
    assert bad.refused()
