"""The lobby as a person sees it: recent history on arrival, nothing lost or doubled after an absence.

Real brokers on loopback; waits have deadlines, never sleeps.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from tests.chat import chat
from tests.support import ZCHAT, Broker, start_broker
from tests.test_cli import ENV
from zchat.client import events as ev

DEADLINE = 10.0


def test_a_newcomer_sees_the_lobby_s_last_messages_as_history_then_live_ones(broker: Broker) -> None:
    with chat("alice", broker.endpoint) as alice:
        for i in range(5):
            assert isinstance(alice.client.broadcast(f"early {i}").wait(DEADLINE), ev.Ack)
        with chat("bob", broker.endpoint, history_count=3) as bob:
            bob.message("early 4")
            assert isinstance(alice.client.broadcast("live").wait(DEADLINE), ev.Ack)
            assert not bob.message("live").history
            shown = [(m.text, m.history) for m in bob.messages()]
            assert shown == [("early 2", True), ("early 3", True), ("early 4", True), ("live", False)]


def test_messages_sent_while_the_broker_was_away_are_shown_live_not_as_history(tmp_path: Path) -> None:
    options = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1", "--store", str(tmp_path / "s.db"))
    broker = start_broker(tmp_path, *options)
    try:
        with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob:
            assert isinstance(alice.client.broadcast("before").wait(DEADLINE), ev.Ack)
            bob.message("before")
            port, pub_port = broker.port, broker.pub_port
            broker.stop(signal.SIGKILL)
            alice.state(ev.State.RECONNECTING)
            held = alice.client.broadcast("held back during the outage")
            broker = start_broker(tmp_path, *options, port=port, pub_port=pub_port)
            assert isinstance(held.wait(DEADLINE), ev.Ack)
            seen = bob.message("held back during the outage")
            assert not seen.history  # live to bob, however his client caught up
            assert [m.text for m in bob.messages()].count("before") == 1  # and nothing twice
    finally:
        broker.stop()


class JsonEvents:
    """The events a `zchat connect --json` process prints, read with deadlines (select)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.events: list[dict[str, object]] = []
        self.partial = b""

    def until(self, text: str, timeout: float) -> list[dict[str, object]]:
        """Every event so far, once one with this text has come."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while not any(e.get("text") == text for e in self.events):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, left))
            chunk = os.read(self.process.stdout.fileno(), 1 << 16) if ready else b""
            if not chunk:
                raise AssertionError(f"no {text!r} within {timeout}s: {self.events[-5:]}")
            *lines, self.partial = (self.partial + chunk).split(b"\n")
            self.events += [json.loads(line) for line in lines if line]
        return self.events


def json_client(name: str, endpoint: str) -> tuple[subprocess.Popen[bytes], JsonEvents]:
    process = subprocess.Popen(
        [ZCHAT, "connect", "--json", "--name", name, "--broker", endpoint],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    return process, JsonEvents(process)


def test_broadcasts_missed_while_a_client_was_stopped_are_shown_or_counted(broker: Broker) -> None:
    # Stopped for longer than its heartbeat timeout, the client is dropped; what it had
    # queued on its old SUB socket is lost with the socket. Continued, it signs in again and
    # fills the gap from the lobby's history; what is beyond one HISTORY is counted, not lost.
    # (The broker drops nothing here: 3,000 fit its queue; the client loses what it had not
    # read when it closes its old SUB socket to sign in again, as after any long stop.)
    process, printed = json_client("carol", broker.endpoint)
    try:
        with chat("alice", broker.endpoint, answer_timeout=60) as alice:
            assert isinstance(alice.client.broadcast("ready?").wait(DEADLINE), ev.Ack)
            printed.until("ready?", DEADLINE)
            process.send_signal(signal.SIGSTOP)
            sent = 3000
            for start in range(0, sent, 500):
                batch = [alice.client.broadcast(f"b{i}") for i in range(start, start + 500)]
                assert all(isinstance(r.wait(30), ev.Ack) for r in batch)
            alice.expect(lambda e: isinstance(e, ev.Presence) and e.name == "carol" and e.event == "leave")
            process.send_signal(signal.SIGCONT)
            assert isinstance(alice.client.broadcast("the end").wait(DEADLINE), ev.Ack)
            events = printed.until("the end", 30)
        texts = [str(e["text"]) for e in events if e.get("type") == "message" and e.get("from") == "alice"]
        numbers = [int(t[1:]) for t in texts if t.startswith("b")]
        assert numbers == sorted(set(numbers)), "a broadcast shown twice or out of order"
        counted = [e for e in events if e.get("type") == "status" and "not shown" in str(e.get("text"))]
        missing = sent - len(numbers)
        if missing:  # not shown: then told, with how many at least
            assert counted, f"{missing} broadcasts missed without a word"
            assert int(str(counted[0]["text"]).split()[0]) >= missing
        assert numbers[-1] == sent - 1
    finally:
        process.kill()
        process.wait(5)


def test_a_member_of_many_rooms_signs_in_within_the_rate_limit(tmp_path: Path) -> None:
    # 100 rooms with a message each, then a broker with the default rate and a burst of
    # 20: unpaced, the sign-in's 100 HISTORY requests would be refused and the user thrown
    # out for flooding (3 x burst refusals).
    store = ("--store", str(tmp_path / "rooms.db"))
    rooms = [f"#r{i}" for i in range(100)]
    broker = start_broker(tmp_path, *store)  # no rate limit while the rooms are made
    try:
        with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob:
            for client in (alice.client, bob.client):
                assert all(
                    isinstance(r.wait(DEADLINE), ev.Ack) for r in [client.enter(room) for room in rooms]
                )
            sent = [bob.client.send(room, f"said in {room}") for room in rooms]
            assert all(isinstance(r.wait(DEADLINE), ev.Ack) for r in sent)
    finally:
        broker.stop()
    broker = start_broker(tmp_path, *store, "--rate", "20", "--burst", "20", "--cool-off", "0")
    try:
        with chat("alice", broker.endpoint) as alice:
            every_room = len(rooms)
            alice.expect(
                lambda e: len({m.room for m in alice.messages() if m.history}) == every_room,
                30,
                "the history of every room",
            )
            assert alice.client.state is ev.State.ONLINE
    finally:
        broker.stop()
    assert "flooding" not in broker.log()
    assert "rate_limited" not in broker.log()


def test_after_a_broker_restart_without_a_store_nothing_said_meanwhile_is_hidden(tmp_path: Path) -> None:
    # The restarted broker numbers from 1 again: a client that asked only for what came
    # after its old numbers would be shown nothing of what was said while it was away.
    options = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1")
    broker = start_broker(tmp_path, *options)
    process, printed = json_client("bob", broker.endpoint)
    try:
        with chat("alice", broker.endpoint) as alice:
            for i in range(20):  # bob has seen numbers up to 20 and more
                alice.client.broadcast(f"before {i}")
            assert isinstance(alice.client.broadcast("before the restart").wait(DEADLINE), ev.Ack)
        printed.until("before the restart", DEADLINE)
        process.send_signal(signal.SIGSTOP)
        port, pub_port = broker.port, broker.pub_port
        broker.stop(signal.SIGKILL)
        broker = start_broker(tmp_path, *options, port=port, pub_port=pub_port)
        with chat("carol", broker.endpoint) as carol:
            for i in range(3):
                assert isinstance(carol.client.broadcast(f"while bob was away {i}").wait(DEADLINE), ev.Ack)
            process.send_signal(signal.SIGCONT)
            shown = printed.until("while bob was away 2", 30)
        texts = [e["text"] for e in shown if e.get("type") == "message"]
        assert [t for t in texts if str(t).startswith("while")] == [
            f"while bob was away {i}" for i in range(3)
        ]
    finally:
        process.kill()
        process.wait(5)
        broker.stop()
