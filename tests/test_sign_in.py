"""Signing in and sending against a broker that misbehaves on purpose.

A scripted broker (a ROUTER and a PUB in a thread, speaking just enough of
PROTOCOL.md) shows what the real one cannot: a READY never acknowledged, a
message that costs the session every time it is sent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq

from tests.support import ZCHAT, start_broker, wait_for
from zchat.client import events as ev
from zchat.client.session import Client, ConnectError
from zchat.common import protocol as p
from zchat.common.protocol import Code


class ScriptedBroker:
    """Answers HELLO, SYNC, PING, ROOMS and HISTORY as a broker does; READY and SEND as told."""

    def __init__(
        self,
        ack_ready: bool = True,
        lose_session_on_send: bool = False,
        refuse_first_rooms: bool = False,
        fail_first_history: bool = False,
        sends: tuple[str, ...] = (),
        taken_after_restart: int = 0,
    ) -> None:
        #: Forget the session at the first SEND (a restart), then answer that many HELLOs 409.
        self.taken_after_restart = taken_after_restart
        self.ack_ready = ack_ready
        self.lose_session_on_send = lose_session_on_send
        self.refuse_first_rooms = refuse_first_rooms
        self.fail_first_history = fail_first_history
        #: How the SENDs are answered in turn ("429", "403", "ack"), then as lose_session_on_send says.
        self.script = list(sends)
        self.commands: Counter[bytes] = Counter()
        self.sends: Counter[bytes] = Counter()  # message id -> times it came
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.pub = self.context.socket(zmq.PUB)
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        names: dict[bytes, str] = {}
        while not self.stopping.is_set():
            if not self.router.poll(50):
                continue
            peer, *frames = self.router.recv_multipart()
            request = p.decode_command(frames)
            command, msg_id = p.command_of(request), request.msg_id
            self.commands[command] += 1
            now = int(time.time() * 1000)
            reply: p.ServerEvent | None = p.Ack(msg_id, now, "accepted")
            if command == b"HELLO" and 1 < self.commands[command] <= 1 + self.taken_after_restart:
                reply = p.Error(msg_id, Code.NAME_TAKEN, "the name is taken", 0)
            elif isinstance(request, p.Hello):
                names[peer] = request.name
                rate = (6000, 10) if self.script else (0, 0)  # flood control only where a 429 is scripted
                reply = p.Welcome(msg_id, names[peer], "token", pub_endpoint, 200, 1000, 65536, 0, *rate)
            elif command == b"SYNC":
                self.pub.send_multipart(
                    p.encode_published(p.Published(p.private_topic(names[peer]), 0, p.Synced(msg_id)))
                )
            elif command == b"READY" and not self.ack_ready:
                reply = None
            elif command == b"SEND" and self.taken_after_restart and self.commands[command] == 1:
                reply = p.Error(msg_id, Code.NOT_REGISTERED, "send HELLO first", 0)
            elif command == b"PING":
                reply = p.Pong(msg_id, now)
            elif command == b"ROOMS" and self.refuse_first_rooms and self.commands[command] == 1:
                reply = p.Error(msg_id, Code.RATE_LIMITED, "slow down", 100)
            elif command == b"ROOMS":
                reply = p.RoomList(msg_id, (), ())
            elif command == b"HISTORY" and self.fail_first_history and self.commands[command] == 1:
                reply = p.Error(msg_id, Code.INTERNAL, "the broker failed on this command", 0)
            elif isinstance(request, p.HistoryRequest):
                reply = p.History(msg_id, request.room, 0, ())
            elif command == b"SEND":
                self.sends[msg_id] += 1
                answer = self.script.pop(0) if self.script else ""
                if answer == "429":
                    reply = p.Error(msg_id, Code.RATE_LIMITED, "slow down", 50)
                elif answer == "403" or self.lose_session_on_send:
                    reply = p.Error(msg_id, Code.NOT_REGISTERED, "send HELLO first", 0)
            if reply is not None:
                self.router.send_multipart([peer, *p.encode(reply)])

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.context.destroy(linger=0)


@contextmanager
def scripted(**behaviour: Any) -> Iterator[ScriptedBroker]:
    broker = ScriptedBroker(**behaviour)
    broker.thread.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_client_is_not_online_before_its_ready_is_acknowledged() -> None:
    # The broker announces a client at READY: online before its ACK, a client killed
    # at once would have been "online" without anyone seeing it come or go.
    with scripted(ack_ready=False) as broker:
        client = Client("alice", broker.endpoint, connect_timeout=5)
        with pytest.raises(ConnectError):
            client.connect()
        assert broker.commands[b"READY"] >= 1  # it got as far as READY
        assert client.state is not ev.State.ONLINE
    with scripted(ack_ready=True) as broker, Client("alice", broker.endpoint, connect_timeout=5) as client:
        assert client.state is ev.State.ONLINE


def test_a_message_that_costs_the_session_each_time_is_refused_after_three_tries() -> None:
    with (
        scripted(lose_session_on_send=True) as broker,
        Client("alice", broker.endpoint, connect_timeout=5, answer_timeout=60) as client,
    ):
        outcome = client.broadcast("poison").wait(30)
        assert isinstance(outcome, ev.Refusal) and outcome.code == ev.LOST, outcome
        assert broker.sends[outcome.msg_id.encode()] == 3
        assert broker.commands[b"HELLO"] >= 3  # it signed in again each time, then gave the message up


def test_only_lost_connections_count_towards_giving_a_message_up() -> None:
    # Two 429s are the broker's pace, not a lost connection: one drop, then it is accepted.
    with (
        scripted(sends=("429", "429", "403", "ack")) as broker,
        Client("alice", broker.endpoint, connect_timeout=5) as client,
    ):
        outcome = client.broadcast("patience").wait(30)
        assert isinstance(outcome, ev.Ack), outcome
        assert broker.sends[outcome.msg_id.encode()] == 4


def test_text_that_is_not_utf8_is_refused_and_the_client_goes_on(small_broker: str) -> None:
    with Client("alice", small_broker) as client:
        # A byte a C locale cannot decode comes from stdin or argv as a lone surrogate.
        outcome = client.broadcast(b"caf\xff".decode("utf-8", "surrogateescape")).wait(10)
        assert isinstance(outcome, ev.Refusal) and outcome.code == ev.USAGE, outcome
        assert isinstance(client.broadcast("after").wait(10), ev.Ack)


def test_line_mode_in_a_c_locale_refuses_an_undecodable_line_and_sends_the_next(small_broker: str) -> None:
    done = subprocess.run(
        [ZCHAT, "connect", "--name", "carl", "--broker", small_broker],
        input=b"caf\xff\nhello after\n", capture_output=True, timeout=30,
        env={**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "NO_COLOR": "1", "ZCHAT_STORE": ":memory:"},
    )  # fmt: skip
    assert b"hello after" in done.stdout and b"internal error" not in done.stdout + done.stderr, done


def test_a_join_history_the_broker_failed_on_is_asked_again() -> None:
    with scripted(fail_first_history=True) as broker, Client("alice", broker.endpoint, connect_timeout=5):
        wait_for(lambda: broker.commands[b"HISTORY"] >= 2, 10, what="the lobby's HISTORY asked again")


def test_a_name_held_by_our_own_last_connection_is_waited_for_not_given_up() -> None:
    # After a restart a HELLO of ours may register while we time out waiting for its
    # WELCOME: our next HELLO, with the old token, gets 409 until that session expires.
    with (
        scripted(taken_after_restart=2) as broker,
        Client("alice", broker.endpoint, connect_timeout=5) as client,
    ):
        back = client.broadcast("back")  # refused 403: the broker restarted meanwhile
        wait_for(lambda: broker.commands[b"HELLO"] >= 4, 10, what="HELLO after the two 409s")
        assert back.wait(10).__class__ is ev.Ack  # sent again once signed in
        assert client.state is ev.State.ONLINE


def test_the_sign_in_s_own_requests_refused_for_the_rate_go_again() -> None:
    # Without ROOMS answered, the client would never subscribe to its rooms again.
    with scripted(refuse_first_rooms=True) as broker, Client("alice", broker.endpoint, connect_timeout=5):
        wait_for(lambda: broker.commands[b"ROOMS"] >= 2, 10, what="ROOMS asked again")


@pytest.fixture(scope="module")
def small_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = start_broker(tmp_path_factory.mktemp("small"), "--max-message-size", "1000")
    try:
        yield broker.endpoint
    finally:
        broker.stop()
        assert "resumed" not in broker.log(), "a message over the limit cost a connection"


@pytest.mark.parametrize("size", [1001, 70_000, 2 << 20])
def test_a_message_over_the_broker_limit_is_refused_at_once_naming_the_limit(
    small_broker: str, size: int
) -> None:
    with Client("alice", small_broker) as client:
        started = time.monotonic()
        outcome = client.broadcast("é" * (size // 2) + "x").wait(10)  # UTF-8 bytes, not characters
        assert isinstance(outcome, ev.Refusal) and outcome.code == Code.TOO_LARGE, outcome
        assert "1000" in outcome.text
        assert time.monotonic() - started < 5
        assert isinstance(client.broadcast("x" * 1000).wait(10), ev.Ack)  # the limit itself is fine


def test_zchat_send_over_the_limit_exits_1_with_the_reason(small_broker: str) -> None:
    done = subprocess.run(
        [ZCHAT, "send", "--name", "bob", "--broker", small_broker, "--all", "y" * 5000],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert "1000" in done.stderr and "Traceback" not in done.stderr


def test_a_first_connection_goes_on_to_the_next_broker_of_the_list_when_the_first_is_silent(
    small_broker: str,
) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        silent = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    events: list[ev.Event] = []
    with Client("dora", f"{silent},{small_broker}", connect_timeout=1, on_event=events.append) as client:
        assert client.state is ev.State.ONLINE
        statuses = [e.detail for e in events if isinstance(e, ev.Status)]
        assert any(f"{silent} within 1s; trying {small_broker}" in s for s in statuses), statuses
        assert isinstance(client.broadcast("made it").wait(10), ev.Ack)
