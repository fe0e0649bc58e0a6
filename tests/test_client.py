"""The Client library against a real broker on loopback."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.chat import chat
from tests.support import Broker, client_process, start_broker
from zchat.client import events as ev
from zchat.client.session import Client, ConnectError


def test_private_message_is_seen_by_its_recipient_only(broker: Broker) -> None:
    with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob, \
            chat("carol", broker.endpoint) as carol:  # fmt: skip
        outcome = alice.client.send("bob", "for bob only").wait(5)
        assert isinstance(outcome, ev.Ack)
        received = bob.message("for bob only")
        assert (received.sender, received.target, received.private) == ("alice", "bob", True)
        # Anything carol could have got arrives before this later broadcast.
        alice.client.broadcast("marker").wait(5)
        carol.message("marker")
        assert [m.text for m in carol.messages()] == ["marker"]


def test_broadcast_reaches_everyone_with_the_broker_stamped_sender(broker: Broker) -> None:
    with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob:
        before = time.time()
        assert isinstance(bob.client.broadcast("hello all").wait(5), ev.Ack)
        for watcher in (alice, bob):
            message = watcher.message("hello all")
            assert message.sender == "bob" and not message.private
            assert abs(message.time.timestamp() - before) < 5


def test_presence_shows_joins_leaves_and_who_is_online(broker: Broker) -> None:
    with chat("alice", broker.endpoint) as alice:
        with chat("Bob", broker.endpoint):
            alice.expect(lambda e: isinstance(e, ev.Presence) and (e.name, e.event) == ("Bob", "join"))
            users = alice.client.who().wait(5)
            assert users == ev.Users(("alice", "Bob"))
        leave = alice.expect(lambda e: isinstance(e, ev.Presence) and e.event == "leave", what="Bob's leave")
        assert isinstance(leave, ev.Presence) and (leave.name, leave.reason) == ("Bob", "quit")


def test_taken_name_is_refused_without_regard_to_case(broker: Broker) -> None:
    with chat("alice", broker.endpoint), pytest.raises(ConnectError, match="taken"):
        Client("ALICE", broker.endpoint, connect_timeout=5).connect()


def test_unreachable_broker_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    dead = start_broker(tmp_path)
    endpoint = dead.endpoint
    dead.stop()
    started = time.monotonic()
    with pytest.raises(ConnectError, match="no answer"):
        Client("alice", endpoint, connect_timeout=1.0).connect()
    assert time.monotonic() - started < 4


def test_refusals_come_back_with_their_codes(tmp_path: Path) -> None:
    small = start_broker(tmp_path, "--max-message-size", "10")
    try:
        with chat("alice", small.endpoint) as alice:
            nobody = alice.client.send("nobody", "x").wait(5)
            assert isinstance(nobody, ev.Refusal) and nobody.code == 404
            big = alice.client.broadcast("x" * 11).wait(5)
            assert isinstance(big, ev.Refusal) and big.code == 413
            assert isinstance(alice.client.broadcast("x" * 10).wait(5), ev.Ack)
    finally:
        small.stop()


def test_clients_reconnect_after_the_broker_is_killed_and_restarted(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1")
    port, pub_port = broker.port, broker.pub_port
    try:
        with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob:
            broker.stop(signal.SIGKILL)
            alice.state(ev.State.RECONNECTING)
            bob.state(ev.State.RECONNECTING)
            during = alice.client.send("bob", "sent while the broker was down")
            broker = start_broker(tmp_path, "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1",
                                  port=port, pub_port=pub_port)  # fmt: skip
            alice.forget()
            bob.forget()
            alice.state(ev.State.ONLINE)
            bob.state(ev.State.ONLINE)
            # Delivered once, or reported failed (bob may come back after alice): never lost silently.
            outcome = during.wait(10)
            copies = [m for m in bob.messages() if m.text == "sent while the broker was down"]
            if isinstance(outcome, ev.Ack):
                bob.message("sent while the broker was down")
                copies = [m for m in bob.messages() if m.text == "sent while the broker was down"]
                assert len(copies) == 1
            else:
                assert isinstance(outcome, ev.Refusal) and outcome.code == 404 and copies == []
            assert isinstance(alice.client.send("bob", "after the restart").wait(5), ev.Ack)
            assert bob.message("after the restart").private
    finally:
        broker.stop()


def test_a_message_the_broker_never_answers_is_reported_failed(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1")
    with chat("alice", broker.endpoint, answer_timeout=1.5) as alice:
        broker.stop(signal.SIGKILL)
        alice.state(ev.State.RECONNECTING)
        outcome = alice.client.broadcast("into the void").wait(10)
        assert isinstance(outcome, ev.Refusal) and outcome.code == ev.NOT_ANSWERED


def test_broker_sigterm_tells_clients_and_exits_zero(broker: Broker) -> None:
    with chat("alice", broker.endpoint) as alice:
        assert broker.stop(signal.SIGTERM) == 0
        status = alice.state(ev.State.RECONNECTING)
        assert "shutting down" in status.detail


def test_sigkilled_client_is_announced_gone_and_its_name_freed(broker: Broker) -> None:
    with chat("alice", broker.endpoint) as alice:
        with client_process("mallory", broker.endpoint) as child:
            alice.expect(lambda e: isinstance(e, ev.Presence) and e.name == "mallory", what="mallory's join")
            child.kill()
            leave = alice.expect(lambda e: isinstance(e, ev.Presence) and e.event == "leave", timeout=5)
            assert isinstance(leave, ev.Presence) and leave.reason == "disconnected"  # seen at once
        with chat("mallory", broker.endpoint) as again:
            assert again.client.state is ev.State.ONLINE


def test_a_frozen_client_is_announced_gone_within_the_heartbeat_timeout(broker: Broker) -> None:
    # Stopped, its process answers nothing, libzmq's heartbeats included; its TCP connection
    # stays open. The broker's heartbeat timeout is 1 s.
    with chat("alice", broker.endpoint) as alice, client_process("mallory", broker.endpoint) as child:
        alice.expect(lambda e: isinstance(e, ev.Presence) and e.name == "mallory", what="mallory's join")
        child.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        leave = alice.expect(lambda e: isinstance(e, ev.Presence) and e.event == "leave", timeout=5)
        assert isinstance(leave, ev.Presence) and leave.name == "mallory"
        assert time.monotonic() - stopped < 3.0  # the timeout (1 s), not TCP's own minutes


def test_an_idle_client_stays_online_for_many_timeouts_sending_nothing(broker: Broker) -> None:
    # No PING of the application: libzmq's heartbeats keep both ends alive (timeout 1 s).
    with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob:
        deadline = time.monotonic() + 4.0
        while (left := deadline - time.monotonic()) > 0:
            event = bob.client.next_event(left)
            assert not (isinstance(event, ev.Presence) and event.event == "leave"), event
        assert alice.client.state is ev.State.ONLINE
        assert isinstance(alice.client.send("bob", "still here").wait(5), ev.Ack)
        assert bob.message("still here").private


@pytest.mark.slow
def test_a_client_of_a_frozen_broker_reconnects_and_resumes_once_it_thaws(broker: Broker) -> None:
    # The broker's process stops: no FIN, no heartbeat. Stopped just after its last replies,
    # its TTL was cancelled by them: the client's own heartbeats find it silent, within
    # 2 x (6 - 2) s on this first connection, which has the default timing (PROTOCOL.md 7.2).
    with chat("alice", broker.endpoint) as alice:
        alice.forget()
        broker.process.send_signal(signal.SIGSTOP)
        try:
            alice.state(ev.State.RECONNECTING, timeout=12)
        finally:
            broker.process.send_signal(signal.SIGCONT)
        alice.state(ev.State.ONLINE, timeout=10)
        assert isinstance(alice.client.broadcast("back").wait(5), ev.Ack)
