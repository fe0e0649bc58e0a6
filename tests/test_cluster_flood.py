"""Flood control per user, whichever broker of a cluster they use (issue 14).

A flooder thrown out by one broker is turned away by every broker for its
cool-off, and a session resumed on another broker brings no fresh tokens.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import zmq

from benchmarks.flood import from_source
from tests.chat import chat
from tests.cluster_support import cluster
from tests.support import wait_for
from tests.test_core import PUB, replies, say
from tests.test_flood import FLOODER_SOURCE, flood_until_thrown_out
from zchat.broker.core import BrokerCore
from zchat.broker.settings import BrokerSettings
from zchat.broker.store import MemoryStore
from zchat.client import events as ev
from zchat.client.session import Client, ConnectError
from zchat.cluster.names import ClusterNames
from zchat.cluster.subjects import NAMES
from zchat.common import protocol as p
from zchat.common.protocol import Code

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("elsewhere", [False, True])
def test_a_session_resumed_from_another_broker_brings_no_fresh_tokens(elsewhere: bool) -> None:
    class Link:  # NATS's answers to the takeover, made up
        def call(self, kind: str, *args: object) -> int:
            return 7

    names = ClusterNames(Link(), "b1")  # type: ignore[arg-type]  # only what it calls
    core = BrokerCore(BrokerSettings(rate=1.0, burst=5.0), PUB, store=MemoryStore(), names=names)
    if elsewhere:  # ann is online on b0, as b1's watch of the names bucket says
        entry = {"node": "b0", "name": "ann", "token": "t" * 32, "client_key": "", "away": ""}
        names.seen(NAMES, "ann", msgpack.packb(entry), 3)
    hello = replies(say(core, b"A", p.Hello(b"h", "ann", "t" * 32), 10.0), b"A")
    assert isinstance(hello[0], p.Welcome) and hello[0].token == "t" * 32
    (answer,) = replies(say(core, b"A", p.Send(b"m1", "*", b"hi"), 10.0), b"A")
    if elsewhere:  # its bucket stayed on b0: it starts empty here
        assert isinstance(answer, p.Error) and answer.code == Code.RATE_LIMITED
        assert answer.retry_after_ms == 1000
        (later,) = replies(say(core, b"A", p.Send(b"m2", "*", b"hi"), 11.0), b"A")
        assert isinstance(later, p.Ack)
    else:  # a new session: a second's worth
        assert isinstance(answer, p.Ack)


def turned_away(endpoint: str, context: zmq.Context[zmq.Socket[bytes]]) -> bool:
    """Whether a new connection from the flooder's address fails its handshake (ZAP 400)."""
    probe = context.socket(zmq.DEALER)
    probe.setsockopt(zmq.LINGER, 0)
    watch = probe.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    try:
        probe.connect(from_source(endpoint, FLOODER_SOURCE))
        if not watch.poll(5000):
            raise AssertionError("no handshake within 5 s")
        event = zmq.utils.monitor.recv_monitor_message(watch)
        return bool(event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    finally:
        watch.close(linger=0)
        probe.close(linger=0)


def test_a_flooder_thrown_out_by_one_broker_is_turned_away_by_the_others(tmp_path: Path) -> None:
    flags = ("--rate", "20", "--burst", "5", "--cool-off", "60", "--ban-exempt", "127.0.0.1")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with cluster(tmp_path, 2, *flags) as (_, (b0, b1)):
            assert not turned_away(b1.endpoint, context)  # before: the address may connect to b1
            flood_until_thrown_out(b0.endpoint, context)
            wait_for(lambda: turned_away(b1.endpoint, context), 10, interval=0.1,
                     what="b1 to turn the flooder's address away")  # fmt: skip
            with pytest.raises(ConnectError, match="turned this connection away"):
                Client("newcomer", from_source(b1.endpoint, FLOODER_SOURCE), connect_timeout=5).connect()
            with chat("alice", b1.endpoint) as alice:  # everyone else still signs in there
                assert isinstance(alice.client.send("*", "still here").wait(10), ev.Ack)
            assert "127.0.0.2 is turned away until" in b1.log()
            assert "a flooder on another broker" in b1.log()
    finally:
        context.destroy(linger=0)
