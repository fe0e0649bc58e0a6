"""The cluster on three nats-servers with `--replicas 3`: the stream and buckets have three
copies, and the chat goes on when the server leading the log, or the names bucket, is
killed (docs/CLUSTER.md)."""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chat import Watcher, chat
from tests.cluster_support import Nats, start_nats_cluster
from tests.support import start_broker, wait_for
from tests.test_cluster_messages import DEADLINE, ack, online
from zchat.client import events as ev
from zchat.client.request import Request
from zchat.cluster.subjects import LOG, NAMES

nats = pytest.importorskip("nats")

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def replicas_and_leader(server: Nats, stream: str) -> tuple[int, str, int]:
    """The stream's replicas as configured, its leader's name, and how many copies follow it."""

    async def ask() -> tuple[int, str, int]:
        nc = await nats.connect(server.url, connect_timeout=5)
        try:
            info = await nc.jetstream().stream_info(stream)
            assert info.cluster is not None, info
            return info.config.num_replicas or 1, info.cluster.leader or "", len(info.cluster.replicas or [])
        finally:
            await nc.close()

    return asyncio.run(asyncio.wait_for(ask(), DEADLINE))


def who(watcher: Watcher) -> tuple[str, ...]:
    users = watcher.client.who().wait(DEADLINE)
    return users.names if isinstance(users, ev.Users) else ()


def sent_once_it_can(send: Callable[[str], Request], text: str, sender: Watcher) -> str:
    """Send `text` (numbered: "after #2") until it is acknowledged; refusals may only be 508."""
    deadline = time.monotonic() + 30
    for attempt in itertools.count(1):
        numbered = f"{text} #{attempt}"
        outcome = send(numbered).wait(30)
        if isinstance(outcome, ev.Ack):
            return numbered
        statuses = [e for e in sender.seen if isinstance(e, ev.Status)]
        assert isinstance(outcome, ev.Refusal) and outcome.code == 508, (outcome, statuses)
        assert time.monotonic() < deadline, f"still refused after {attempt} attempts"
        threading.Event().wait(0.2)  # a pause between tries, not a synchronisation
    raise AssertionError("unreachable")


@pytest.mark.parametrize("stream", [LOG, f"KV_{NAMES}"])
def test_with_replicas_3_the_chat_goes_on_when_the_nats_server_leading_the_log_dies(
    tmp_path: Path, stream: str
) -> None:
    """The leader of the log (the brokers' consumer of it is made again), or of the names
    bucket (their watches of it are): the chat goes on, and WHO agrees within 10 s."""
    servers = start_nats_cluster(tmp_path, 3)
    urls = ",".join(s.url for s in servers)
    brokers = []
    try:
        for node in ("b0", "b1"):
            brokers.append(
                start_broker(tmp_path / node, "--cluster", urls, "--node", node, "--replicas", "3")
            )
        with chat("ann", brokers[0].endpoint) as ann, chat("bo", brokers[1].endpoint) as bo:
            online(ann, "bo")
            ack(ann.client.broadcast("before").wait(DEADLINE))
            bo.message("before")
            for stream in (LOG, f"KV_{NAMES}"):
                configured, leader, followers = replicas_and_leader(servers[1], stream)
                assert (configured, followers) == (3, 2), (stream, configured, followers)
            _, leader, _ = replicas_and_leader(servers[1], stream)
            (doomed,) = [s for s in servers if s.name == leader]
            doomed.stop(signal.SIGKILL)
            # The others elect a new leader of the log; the brokers' links reconnect to them.
            alive = [s for s in servers if s is not doomed]
            # While they elect it, a message may be refused 508 (not kept: send it again), never
            # acknowledged and lost; then every message is acknowledged and delivered again.
            text = sent_once_it_can(lambda text: ann.client.broadcast(text), "after", ann)
            bo.message(text, timeout=30)
            text = sent_once_it_can(lambda text: bo.client.send("ann", text), "still one chat", bo)
            ann.message(text, timeout=30)
            # A new name is claimed in the bucket. While the bucket elects a new leader (up to
            # nats-server's election timeout, some 4-9 s, after its leader died), a HELLO is
            # refused 508, and the client tries again: it signs in once the bucket answers.
            with chat("cy", brokers[1].endpoint, connect_timeout=30):
                # Every broker's WHO agrees within 10 s (issue 14), the nats-server leading
                # the names bucket dead or not: its watch heartbeats every second.
                wait_for(lambda: "cy" in who(ann), 10, interval=0.1, what="cy online at the other broker")
            assert replicas_and_leader(alive[0], stream)[1] in {s.name for s in alive}
    finally:
        for broker in brokers:
            broker.stop()
        for server in servers:
            server.stop()
