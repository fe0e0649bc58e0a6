"""A broker stopped past its lease fences itself: no name is ever held twice (issue 14, test 5).

docs/CLUSTER.md, "Fencing". The broker is stopped with SIGSTOP for longer
than its lease, so the others count it dead, and a client given two brokers
moves to the other meanwhile; then it gets SIGCONT. Throughout, WHO is asked
of every broker, and no answer may list a name twice.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
import zmq

from tests.chat import chat
from tests.cluster_support import cluster
from tests.support import wait_for
from tests.test_cluster_messages import DEADLINE, ack, online
from tests.test_cluster_names import answer, hello, who
from zchat.client import events as ev
from zchat.common import protocol as p
from zchat.common.protocol import Code

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


class WhoPoller(threading.Thread):
    """Asks one broker WHO again and again, keeping every list it answers."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        super().__init__(daemon=True)
        self.dealer = context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(endpoint)
        self.lists: list[tuple[str, ...]] = []
        self.refusals: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        asked = 0
        while not self.done.is_set():
            asked += 1
            self.dealer.send_multipart(p.encode_simple(b"WHO", b"w%d" % asked))
            # A stopped broker answers nothing: ask again after a while (its answers queue up).
            while self.dealer.poll(500) and not self.done.is_set():
                got = p.decode_event(self.dealer.recv_multipart())
                if isinstance(got, p.Users):
                    self.lists.append(got.names)
                elif isinstance(got, p.Error):
                    self.refusals.append(got.code)
                if not self.dealer.poll(0):
                    break
            self.done.wait(0.02)
        self.dealer.close()


def twice(names: tuple[str, ...]) -> list[str]:
    keys = [n.lower() for n in names]
    return sorted({n for n in keys if keys.count(n) > 1})


def test_a_broker_stopped_past_its_lease_fences_itself_and_no_name_is_ever_listed_twice(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    fast = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "3")
    with cluster(tmp_path, 3, *fast) as (_, brokers):
        stopped, other, third = brokers
        pollers = [WhoPoller(zmq_context, b.endpoint) for b in brokers]
        with chat("kim", f"{stopped.endpoint},{other.endpoint}") as kim, chat("lee", third.endpoint) as lee:
            for poller in pollers:
                poller.start()
            try:
                online(lee, "kim")
                # A raw client of the stopped broker alone, to see what it is told.
                una = hello(zmq_context, stopped.endpoint, "Una")
                assert isinstance(answer(una), p.Welcome)
                online(lee, "kim", "Una")
                una.send_multipart(p.encode_simple(b"PING", b"p1"))  # alive until the stop
                assert isinstance(answer(una), p.Pong)
                stopped.process.send_signal(signal.SIGSTOP)
                try:
                    # kim's client finds its broker silent and resumes its session on the other.
                    kim.expect(lambda e: isinstance(e, ev.Status) and e.state is ev.State.ONLINE
                               and other.endpoint in e.detail, DEADLINE, "kim online at the other broker")  # fmt: skip
                    # The stopped broker's lease runs out: the others forget Una.
                    wait_for(lambda: "Una" not in who(zmq_context, third.endpoint), 15, interval=0.1,
                             what="Una forgotten once the stopped broker's lease ran out")  # fmt: skip
                finally:
                    stopped.process.send_signal(signal.SIGCONT)
                # Woken, it fences itself before anything else: Una is told to go elsewhere...
                notice = answer(una)
                assert isinstance(notice, p.Shutdown), notice
                assert "lease" in notice.reason
                # ...and its session is gone: refused while fenced (504), unknown once back (403).
                una.send_multipart(p.encode_send(b"s1", "lee", "still here?"))
                refusal = answer(una)
                assert isinstance(refusal, p.Error) and refusal.code in (Code.FENCED, Code.NOT_REGISTERED)
                una.close()
                # Back in the cluster, it takes new sessions again, and knows kim is elsewhere.
                vic = hello(zmq_context, stopped.endpoint, "Vic")

                def welcomed() -> bool:
                    got = answer(vic)
                    if isinstance(got, p.Error) and got.code == Code.FENCED:
                        vic.send_multipart(p.encode_hello(b"h", "Vic"))
                        return False
                    assert isinstance(got, p.Welcome), got
                    return True

                wait_for(welcomed, DEADLINE, interval=0.1, what="the fenced broker back in the cluster")
                wait_for(lambda: {"kim", "Vic", "lee"} <= set(who(zmq_context, stopped.endpoint)),
                         DEADLINE, interval=0.1, what="kim and Vic listed by the broker that was stopped")  # fmt: skip
                vic.close()
                # kim kept its name on the other broker: reachable, and nobody saw it leave.
                ack(lee.client.send("kim", "still you?").wait(DEADLINE))
                kim.message("still you?")
                ack(kim.client.broadcast("kim is back").wait(DEADLINE))
                lee.message("kim is back")  # after any LEAVE of kim in the lobby's one order
                left = [e for e in lee.seen if isinstance(e, ev.Presence) and e.name == "kim"
                        and e.event == "leave"]  # fmt: skip
                assert not left, left
            finally:
                for poller in pollers:
                    poller.done.set()
                for poller in pollers:
                    poller.join(5)
        assert "fenced" in stopped.log()
        for broker, poller in zip(brokers, pollers, strict=True):
            assert poller.lists, f"no WHO answered by {broker.endpoint}"
            doubles = [names for names in poller.lists if twice(names)]
            assert not doubles, f"{broker.endpoint} listed a name twice: {doubles[:3]}"


def test_a_session_taken_over_on_another_broker_ends_on_the_first_without_a_leave(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    fast = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2")
    with cluster(tmp_path, 3, *fast) as (_, (first, second, third)), chat("lee", third.endpoint) as lee:
        old = hello(zmq_context, first.endpoint, "Zed")
        welcome = answer(old)
        assert isinstance(welcome, p.Welcome)
        old.send_multipart(p.encode_simple(b"READY", b"r"))
        assert isinstance(answer(old), p.Ack)
        online(lee, "Zed")
        # Zed's client found its broker unreachable and resumes on another; the first
        # broker still holds the old connection until its timeout.
        new = zmq_context.socket(zmq.DEALER)
        new.setsockopt(zmq.LINGER, 0)
        new.connect(second.endpoint)
        new.send_multipart(p.encode_hello(b"h2", "Zed", welcome.token))
        assert isinstance(answer(new), p.Welcome)
        assert isinstance(answer(old), p.Replaced)  # through the first broker, from the second
        assert who(zmq_context, first.endpoint).count("Zed") == 1

        # Its old connection ends (libzmq's heartbeats would keep an open one alive): the
        # first broker sees it close, and that ends nothing of the session on the second.
        old.close()
        wait_for(
            lambda: "Zed left (disconnected" in first.log(), DEADLINE, interval=0.2,
            what="the old connection's end seen on the first broker",
        )  # fmt: skip
        assert who(zmq_context, first.endpoint).count("Zed") == 1
        ack(lee.client.broadcast("after the timeout").wait(DEADLINE))
        lee.message("after the timeout")  # after any LEAVE of Zed in the lobby's one order
        left = [e for e in lee.seen if isinstance(e, ev.Presence) and e.name == "Zed" and e.event == "leave"]
        assert not left, left
        new.close()
