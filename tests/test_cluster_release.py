"""cluster/names.py: a release whose delete NATS did not confirm is tried again, and a claim
of the same name on this broker deletes the entry left first (no 409 for one's own name).
A session's LEAVE waits for its name's delete: a user whose client failed over to another
broker before this one's watch showed it is not announced as gone."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest

from tests.test_core import PUB, events, feed, register, replies, say
from zchat.broker.core import BrokerCore, Tick
from zchat.broker.names import Session
from zchat.broker.settings import BrokerSettings
from zchat.broker.store import MemoryStore
from zchat.cluster.link import CallFailed
from zchat.cluster.names import ClusterNames
from zchat.cluster.subjects import NAMES
from zchat.common import protocol as p
from zchat.common.protocol import Code


class FakeLink:
    """The broker's end of the PAIR, with NATS's answers made up here."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, str, tuple[Any, ...]]] = []
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.nats_away = False
        #: Keys deleted in the bucket, which a broker's watch may not have shown yet.
        self.deleted: set[str] = set()
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
        if kind == "get":  # the bucket's own answer: the revision, 0 once deleted
            return 0 if args[1] in self.deleted else 3
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
    with pytest.raises(CallFailed):  # NATS still away: not claimed (508), the entry remembered
        names.claim(session(b"B"))
    assert names.unreleased == {"ann": 10}
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


def cluster_core() -> tuple[BrokerCore, ClusterNames, FakeLink]:
    """A core on ClusterNames, NATS's answers made up by the test."""
    link = FakeLink()
    names = ClusterNames(link, "b0")  # type: ignore[arg-type]
    settings = BrokerSettings(rate=0.0, heartbeat_ms=1000, timeout_ms=3000)
    return BrokerCore(settings, PUB, store=MemoryStore(), names=names), names, link


def answer(core: BrokerCore, names: ClusterNames, number: int, ok: bool, value: Any, now: float) -> list[Any]:
    """What node.py does with an answer of the NATS thread to a delete: the events published."""
    assert names.released(number, ok, value)
    return [event for verdict in names.verdicts() for event in events(feed(core, verdict, now))]


def test_a_session_taken_over_elsewhere_before_its_timeout_here_is_not_announced_as_gone() -> None:
    core, names, link = cluster_core()
    register(core, b"A", "ann", now=0.0)
    assert events(feed(core, Tick(3.1))) == []  # timed out here: its LEAVE waits for the delete
    assert core.holder("ann") is None
    ((number, kind, args),) = link.requests
    assert kind == "delete" and args[-1] == 10
    # The entry had changed: its client failed over and another broker took the session over.
    assert answer(core, names, number, True, False, 3.2) == []
    assert core.counters["left.moved"] == 1


def test_a_session_whose_name_the_delete_freed_is_announced_as_gone_then() -> None:
    core, names, link = cluster_core()
    register(core, b"A", "ann", now=0.0)
    assert events(feed(core, Tick(3.1))) == []
    ((number, _, _),) = link.requests
    assert answer(core, names, number, False, "NATS away", 3.2) == []  # not known yet: tried again
    names.retry_releases()
    (again, _, _) = link.requests[-1]
    assert answer(core, names, again, True, True, 4.0) == [p.Leave("ann", 3100, "timeout")]


def test_a_name_claimed_again_here_first_announces_the_old_sessions_leave() -> None:
    core, names, link = cluster_core()
    register(core, b"A", "ann", now=0.0)
    assert events(feed(core, Tick(3.1))) == []
    ((number, _, _),) = link.requests
    # Back on this broker before the delete's answer: the claim (a create) finds the name free.
    assert events(register(core, b"B", "ann", now=3.2)) == [
        p.Leave("ann", 3100, "timeout"),
        p.Join("ann", 3200),
    ]
    assert answer(core, names, number, True, False, 3.3) == []  # the late answer adds nothing
    assert core.holder("ann") is not None


def test_a_name_just_released_on_another_broker_is_free_here_before_the_watch_says_so() -> None:
    core, names, link = cluster_core()
    entry = {"node": "b1", "name": "Ann", "token": "t" * 32, "client_key": "", "away": ""}
    names.seen(NAMES, "ann", msgpack.packb(entry), 3)  # ann is online on b1, as the watch says
    (refused,) = replies(say(core, b"A", p.Hello(b"h1", "ann", ""), 1.0), b"A")
    assert isinstance(refused, p.Error) and refused.code == Code.NAME_TAKEN  # the bucket says so too
    link.deleted.add("ann")  # ann quit on b1; its delete has not reached this broker's watch
    (welcome,) = replies(say(core, b"B", p.Hello(b"h2", "ann", ""), 1.1), b"B")
    assert isinstance(welcome, p.Welcome) and welcome.name == "ann"
    assert [kind for kind, _ in link.calls] == ["get", "get", "create"]
