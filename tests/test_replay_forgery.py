"""Replayed traffic and a stolen session token: refused with CURVE, and not without it.

Each test runs against a plain broker as well, where the same attack works:
so the tests show that CURVE and the names bound to keys are what stop it.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq

from tests.chat import Watcher
from tests.support import Broker, start_broker, start_curve_broker
from zchat.client import events as ev
from zchat.client.session import Client
from zchat.common import keys
from zchat.common import protocol as p

LOOPBACK = "127.0.0.1"


class Recorder:
    """A TCP relay on loopback that records the conversation turn by turn."""

    def __init__(self, upstream_port: int) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.upstream_port = upstream_port
        #: (from the client?, bytes) in the order seen, a turn per change of direction.
        self.turns: list[tuple[bool, bytearray]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._relay, daemon=True)
        self.thread.start()

    def _relay(self) -> None:
        self.listener.settimeout(10)
        client, _ = self.listener.accept()
        broker = socket.create_connection((LOOPBACK, self.upstream_port), timeout=10)
        with client, broker:
            while not self.stopping.is_set():
                ready, _, _ = select.select([client, broker], [], [], 0.05)
                for side in ready:
                    data = side.recv(65536)
                    if not data:
                        return
                    from_client = side is client
                    if self.turns and self.turns[-1][0] == from_client:
                        self.turns[-1][1].extend(data)
                    else:
                        self.turns.append((from_client, bytearray(data)))
                    (broker if from_client else client).sendall(data)

    def stop(self) -> list[tuple[bool, bytearray]]:
        self.stopping.set()
        self.thread.join(10)
        self.listener.close()
        return self.turns


def replay(port: int, turns: list[tuple[bool, bytearray]], timeout: float = 2.0) -> bytes:
    """Play the client's side of a recorded conversation on a new connection,
    taking turns as the original did: before each of its sends, wait until the
    broker has sent as many bytes as it had by then in the original. Returns
    what the broker sent, up to the end or until it closed the connection.
    An answer may be shorter than the original's (a receipt is not sent twice):
    then the turn ends at `timeout`, which only paces the replay."""
    answer = bytearray()
    expected = 0  # bytes the broker had sent by this turn in the original
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as replayed:
        for from_client, data in turns:
            if not from_client:
                expected += len(data)
                continue
            deadline = time.monotonic() + timeout
            while len(answer) < expected and (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([replayed], [], [], left)
                received = replayed.recv(65536) if ready else b""
                if not received:
                    return bytes(answer)  # closed on us (or silent: nothing more will come)
                answer += received
            try:
                replayed.sendall(data)
            except OSError:
                break
    return bytes(answer)


@contextmanager
def broker_and_key(tmp_path: Path, encrypted: bool) -> Iterator[tuple[Broker, keys.KeyPair | None]]:
    running, server = start_curve_broker(tmp_path) if encrypted else (start_broker(tmp_path), None)
    try:
        yield running, server
    finally:
        running.stop()


def connect(name: str, endpoint: str, server: keys.KeyPair | None) -> Client:
    pair = keys.KeyPair(*zmq.curve_keypair()) if server else None
    return Client(name, endpoint, server_key=server.public if server else None, keys=pair).connect()


def joins_of(watcher: Watcher, name: str) -> int:
    return sum(isinstance(e, ev.Presence) and e.event == "join" and e.name == name for e in watcher.seen)


@pytest.mark.parametrize("encrypted", [True, False], ids=["curve", "plain"])
def test_a_recorded_session_replayed_on_a_new_connection_gets_nowhere_with_curve(
    tmp_path: Path, encrypted: bool
) -> None:
    with broker_and_key(tmp_path, encrypted) as (broker, server):
        bob = Watcher(connect("bob", broker.endpoint, server))
        recorder = Recorder(broker.port)
        try:
            alice = connect("alice", f"tcp://{LOOPBACK}:{recorder.port}", server)
            assert isinstance(alice.send("bob", "pay carol 10").wait(10), ev.Ack)
            bob.message("pay carol 10")
            alice.close()  # says BYE: her name is free again
            bob.expect(lambda e: isinstance(e, ev.Presence) and e.name == "alice" and e.event == "leave")
        finally:
            recorded = recorder.stop()
        sent = b"".join(data for from_client, data in recorded if from_client)
        assert (b"pay carol 10" in sent) != encrypted  # the recording holds the session, readable or not

        answer = replay(broker.port, recorded)
        # A marker broadcast: whatever the replay made the broker publish comes before it.
        assert isinstance(bob.client.broadcast("marker").wait(10), ev.Ack)
        bob.message("marker")
        sessions = broker.log().count("alice joined")
        if encrypted:
            # The handshake fails (new cookie, new nonces): nothing reaches the chat.
            assert (sessions, joins_of(bob, "alice")) == (1, 1)
        else:
            # Plain: the replay is a session of "alice" again, whoever sends it.
            assert b"WELCOME" in answer
            assert (sessions, joins_of(bob, "alice")) == (2, 2)
        bob.client.close()


@pytest.mark.parametrize("encrypted", [True, False], ids=["curve", "plain"])
def test_a_stolen_session_token_does_not_let_another_key_send_as_its_owner(
    tmp_path: Path, encrypted: bool
) -> None:
    with broker_and_key(tmp_path, encrypted) as (broker, server):
        alice = connect("alice", broker.endpoint, server)
        bob = Watcher(connect("bob", broker.endpoint, server))
        token = alice._poller.token  # what a thief would have to steal
        assert token
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        mallory = context.socket(zmq.DEALER)
        mallory.setsockopt(zmq.LINGER, 0)
        if server is not None:
            mallory.curve_publickey, mallory.curve_secretkey = zmq.curve_keypair()
            mallory.curve_serverkey = server.public
        mallory.connect(broker.endpoint)
        try:
            mallory.send_multipart(p.encode_hello(b"h1", "alice", token))
            assert mallory.poll(10_000), "no answer to the stolen token"
            answer = p.decode_event(mallory.recv_multipart())
            mallory.send_multipart(p.encode_send(b"m1", "bob", "send me your password"))
            assert mallory.poll(10_000), "no answer to the forged message"
            sent = p.decode_event(mallory.recv_multipart())
            if encrypted:
                assert isinstance(answer, p.Error) and answer.code == p.Code.NAME_OWNED
                assert isinstance(sent, p.Error) and sent.code == p.Code.NOT_REGISTERED
                # alice's own session is untouched: she still talks to bob.
                assert isinstance(alice.send("bob", "still me").wait(10), ev.Ack)
                bob.message("still me")
                assert "send me your password" not in [m.text for m in bob.messages()]
            else:
                assert isinstance(answer, p.Welcome)
                assert bob.message("send me your password").sender == "alice"
        finally:
            context.destroy(linger=0)
            alice.close()
            bob.client.close()
