"""A broker of a cluster dies: its users' names are free again everywhere (leases, docs/CLUSTER.md)."""

from __future__ import annotations

import queue
import signal
import threading
from pathlib import Path

import pytest
import zmq

from tests.chat import chat
from tests.cluster_support import cluster, start_cluster_broker, start_nats
from tests.test_cluster_messages import DEADLINE, ack, online
from tests.test_cluster_names import answer, assert_everywhere, hello
from zchat.broker.server import BrokerServer
from zchat.broker.settings import BrokerSettings
from zchat.client import events as ev
from zchat.common import protocol as p

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def test_a_killed_brokers_names_leave_every_who_within_10_s_and_can_be_claimed_again(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    with cluster(tmp_path, 3, "--heartbeat-timeout", "60") as (_, brokers):
        doomed = hello(zmq_context, brokers[2].endpoint, "Zoe")
        assert isinstance(answer(doomed), p.Welcome)
        kept = hello(zmq_context, brokers[0].endpoint, "Yann")
        assert isinstance(answer(kept), p.Welcome)
        assert_everywhere(zmq_context, brokers, ("Yann", "Zoe"))
        brokers[2].stop(signal.SIGKILL)
        # Its lease runs out (6 s) and the others forget its sessions: within 10 s.
        assert_everywhere(zmq_context, brokers[:2], ("Yann",))
        again = hello(zmq_context, brokers[1].endpoint, "zoe")
        assert isinstance(answer(again), p.Welcome)
        assert_everywhere(zmq_context, brokers[:2], ("Yann", "zoe"))
        for dealer in (doomed, kept, again):
            dealer.close()


def test_nats_killed_for_5_s_loses_nothing_acknowledged_and_the_chat_resumes_by_itself(
    tmp_path: Path,
) -> None:
    with (
        cluster(tmp_path, 2) as (nats, brokers),
        chat("amy", brokers[0].endpoint) as amy,
        chat("ben", brokers[1].endpoint) as ben,
    ):
        online(amy, "ben")
        ack(amy.client.broadcast("before").wait(DEADLINE))
        ben.message("before")
        nats.stop(signal.SIGKILL)
        # While NATS is away a broadcast is refused or held, never acknowledged and lost: its
        # broker fences itself (it cannot renew its lease), and amy's client holds it until
        # the broker is back in the cluster.
        sent = amy.client.broadcast("during")
        amy.expect(lambda e: isinstance(e, ev.Status) and e.state is ev.State.RECONNECTING, DEADLINE,
                   "the fenced broker's SHUTDOWN")  # fmt: skip
        nats.start()
        during = sent.wait(30)
        ack(amy.client.broadcast("after").wait(30))
        ben.message("after", timeout=30)
        texts = [m.text for m in ben.messages() if not m.history]
        assert texts.count("before") == 1 and texts.count("after") == 1
        if isinstance(during, ev.Ack):
            assert texts.count("during") == 1
        else:
            assert isinstance(during, ev.Refusal)


def test_a_client_given_two_brokers_resumes_on_the_other_when_its_broker_is_killed(tmp_path: Path) -> None:
    fast = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2")
    with cluster(tmp_path, 3, *fast) as (_, brokers):
        both = f"{brokers[0].endpoint},{brokers[1].endpoint}"
        with chat("kim", both) as kim, chat("lee", brokers[2].endpoint) as lee:
            ack(kim.client.enter("#ops").wait(DEADLINE))
            ack(lee.client.enter("#ops").wait(DEADLINE))
            online(lee, "kim")
            brokers[0].stop(signal.SIGKILL)
            kim.expect(
                lambda e: isinstance(e, ev.Status) and e.state is ev.State.RECONNECTING, DEADLINE, "the loss"
            )
            back = kim.expect(lambda e: isinstance(e, ev.Status) and e.state is ev.State.ONLINE
                              and brokers[1].endpoint in e.detail, DEADLINE, "kim online at the other broker")  # fmt: skip
            assert isinstance(back, ev.Status)
            # The same name, the same rooms: private and room messages reach kim there.
            ack(lee.client.send("kim", "found you").wait(DEADLINE))
            kim.message("found you")
            ack(lee.client.send("#ops", "ops still here").wait(DEADLINE))
            kim.message("ops still here")
            assert_who = lee.client.who().wait(DEADLINE)
            assert isinstance(assert_who, ev.Users) and assert_who.names.count("kim") == 1


def test_a_broker_restarted_on_its_sqlite_store_reads_the_log_on_from_where_it_stopped(
    tmp_path: Path,
) -> None:
    from tests.cluster_support import start_cluster_broker

    with cluster(tmp_path, 1) as (nats, brokers):
        store = str(tmp_path / "b9.db")
        disk = start_cluster_broker(tmp_path, nats, "b9", "--store", store)
        try:
            with chat("ron", brokers[0].endpoint) as ron:
                for i in range(3):
                    ack(ron.client.broadcast(f"before {i}").wait(DEADLINE))
                with chat("sue", disk.endpoint) as sue:
                    sue.message("before 2")
                disk.stop()
                ack(ron.client.broadcast("while it was down").wait(DEADLINE))
                disk = start_cluster_broker(tmp_path, nats, "b9", "--store", store)
                ack(ron.client.broadcast("after").wait(DEADLINE))
                with chat("sue", disk.endpoint) as sue:
                    sue.message("after")
                    histories = []
                    for watcher in (ron, sue):
                        got = watcher.client.history("*").wait(DEADLINE)
                        assert isinstance(got, ev.History), got
                        histories.append((got.last_seq, [m.text for m in got.messages]))
                    assert histories[0][1] == histories[1][1]
                    assert [t for t in histories[0][1] if t.startswith(("before", "while", "after"))] == [
                        "before 0", "before 1", "before 2", "while it was down", "after"]  # fmt: skip
        finally:
            disk.stop()


def test_a_broker_whose_nats_thread_dies_stops_with_status_1_and_its_client_goes_on_elsewhere(
    tmp_path: Path,
) -> None:
    # The NATS thread dies with the broker serving (a bug in it, say): the broker cannot serve
    # its part of the cluster nor renew its lease, so it stops, status 1, and says why; its
    # client, given two brokers, goes on at the other.
    nats = start_nats(tmp_path)
    other = start_cluster_broker(tmp_path, nats, "b1")
    made: queue.Queue[BrokerServer] = queue.Queue()
    statuses: list[int] = []

    def run() -> None:
        settings = BrokerSettings(
            port=0, pub_port=0, rate=0, store=":memory:", cluster=(nats.url,), node="b0"
        )
        server = BrokerServer(settings)
        made.put(server)
        server.run()
        statuses.append(server.exit_status)

    thread = threading.Thread(target=run, name="broker-b0", daemon=True)
    thread.start()
    server: BrokerServer | None = None
    try:
        server = made.get(timeout=DEADLINE)
        assert server.cluster is not None
        with (
            chat("vic", f"{server.router_endpoint},{other.endpoint}") as vic,
            chat("wes", other.endpoint) as wes,
        ):
            online(wes, "vic")
            engine = server.cluster.engine
            loop = engine.watching[0].get_loop()  # the thread's own event loop
            loop.call_soon_threadsafe(loop.stop)  # asyncio.run() raises: the thread ends
            thread.join(DEADLINE)
            assert not thread.is_alive() and not engine.is_alive(), "the broker did not stop"
            assert statuses == [1]
            vic.expect(lambda e: isinstance(e, ev.Status) and e.state is ev.State.ONLINE
                       and other.endpoint in e.detail, DEADLINE, "vic online at the other broker")  # fmt: skip
            ack(wes.client.send("vic", "still here?").wait(DEADLINE))
            vic.message("still here?")
    finally:
        if thread.is_alive() and server is not None:  # it did not stop by itself: stopped here
            server.stop()
            thread.join(DEADLINE)
        other.stop()
        nats.stop()
