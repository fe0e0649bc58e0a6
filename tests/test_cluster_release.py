"""cluster/names.py: a release whose delete NATS did not confirm is tried again, and a claim
of the same name on this broker deletes the entry left first (no 409 for one's own name)."""

from __future__ import annotations

import itertools
from typing import Any

from zchat.broker.names import Session
from zchat.cluster.link import CallFailed
from zchat.cluster.names import ClusterNames


class FakeLink:
    """The broker's end of the PAIR, with NATS's answers made up here."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, str, tuple[Any, ...]]] = []
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.nats_away = False
        self._numbers = itertools.count(1)
        self._revisions = itertools.count(10)

    def request(self, kind: str, *args: Any) -> int:
        number = next(self._numbers)
        self.requests.append((number, kind, args))
        return number

    def send(self, *parts: Any) -> None:
        self.requests.append((0, parts[0], parts[2:]))

    def call(self, kind: str, *args: Any) -> Any:
        self.calls.append((kind, args))
        if self.nats_away:
            raise CallFailed(f"{kind}: NATS did not answer within 5 s")
        return next(self._revisions) if kind == "create" else True


def session(peer: bytes) -> Session:
    return Session(peer, "Ann", "token", 0.0, "ann")


def test_a_release_nats_lost_is_tried_again_and_a_claim_here_deletes_the_entry_first() -> None:
    link = FakeLink()
    names = ClusterNames(link, "b0")  # type: ignore[arg-type]  # only what it calls
    first = session(b"A")
    assert names.claim(first)
    names.release(first)
    ((number, kind, args),) = link.requests
    assert kind == "delete" and args[-1] == 10  # of the revision its create wrote
    assert names.released(number, ok=False)  # NATS away: the entry stays, and is remembered
    assert names.unreleased == {"ann": 10}
    names.retry_releases()
    assert [(k, a[-1]) for _, k, a in link.requests[1:]] == [("delete", 10)]
    names.retry_releases()  # one on its way: not sent twice
    assert len(link.requests) == 2

    # Back on this broker before a retry got through: the old entry goes, then the claim.
    link.nats_away = True
    assert not names.claim(session(b"B"))  # NATS still away: refused, the entry remembered
    link.nats_away = False
    again = session(b"C")
    assert names.claim(again)
    assert [kind for kind, _ in link.calls] == ["create", "delete", "delete", "create"]
    assert names.unreleased == {} and names.holder("ann") is again
    assert not names.released(999, ok=True)  # not a release's answer


def test_a_confirmed_release_is_forgotten() -> None:
    link = FakeLink()
    names = ClusterNames(link, "b0")  # type: ignore[arg-type]
    ann = session(b"A")
    assert names.claim(ann)
    names.release(ann)
    ((number, _, _),) = link.requests
    assert names.released(number, ok=True)
    assert names.unreleased == {} and names.releasing == {}
    names.retry_releases()
    assert len(link.requests) == 1
