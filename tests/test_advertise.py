"""`zchat broker --advertise-pub`: WELCOME sends clients to a PUB endpoint other than the bound one.

The case it is for: the PUB is reached through a forwarded port (Docker's
published ports, a NAT), so the port clients must use is not the one the
broker listens on. Here a TCP port forward on loopback plays that part.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.chat import chat
from tests.support import ZCHAT, start_broker
from zchat.broker.server import BrokerServer, BrokerSettings, advertisable
from zchat.common import protocol as p


class Forwarder:
    """A TCP port forward, as Docker's userland proxy does for a published port.

    It listens on a free loopback port at once (so the port can be advertised
    before the broker starts) and connects each connection it accepts on to
    the target given to `start`.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self._wake, self._waker = socket.socketpair()
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> None:
        self._thread = threading.Thread(target=self._run, args=((host, port),), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._waker.send(b"x")
        if self._thread is not None:
            self._thread.join(10)
        for sock in (self.listener, self._wake, self._waker):
            sock.close()

    def _run(self, target: tuple[str, int]) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self._wake, selectors.EVENT_READ)
        other: dict[socket.socket, socket.socket] = {}
        try:
            while True:
                for key, _ in selector.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake:
                        return
                    if sock is self.listener:
                        inbound, _ = self.listener.accept()
                        outbound = socket.create_connection(target, timeout=5)
                        other[inbound], other[outbound] = outbound, inbound
                        for end in (inbound, outbound):
                            selector.register(end, selectors.EVENT_READ)
                        self.accepted += 1
                        continue
                    try:
                        data = sock.recv(65536)
                        if data:
                            other[sock].sendall(data)
                            continue
                    except (ConnectionResetError, BrokenPipeError):  # reset (a linger-0 close): closed
                        pass
                    for end in (sock, other.pop(sock)):  # one end closed: close the pair
                        other.pop(end, None)
                        selector.unregister(end)
                        end.close()
        finally:
            for end in other:
                end.close()
            selector.close()


@pytest.fixture
def forwarder() -> Iterator[Forwarder]:
    forward = Forwarder()
    yield forward
    forward.stop()


@pytest.mark.parametrize("host", ["*", "127.0.0.1"])
def test_clients_subscribe_where_the_broker_advertises_not_where_it_listens(
    tmp_path: Path, forwarder: Forwarder, zmq_context: zmq.Context[zmq.Socket[bytes]], host: str
) -> None:
    advertised = f"tcp://{host}:{forwarder.port}"
    broker = start_broker(tmp_path, "--advertise-pub", advertised)
    try:
        assert broker.pub_port != forwarder.port
        forwarder.start("127.0.0.1", broker.pub_port)
        dealer = zmq_context.socket(zmq.DEALER)
        dealer.connect(broker.endpoint)
        dealer.send_multipart(p.encode_hello(b"h", "carol"))
        assert dealer.poll(10_000)
        welcome = p.decode_event(dealer.recv_multipart())
        assert isinstance(welcome, p.Welcome) and welcome.pub_endpoint == advertised
        dealer.close(linger=0)
        # Real clients that reach the ROUTER directly and the PUB only through the forward:
        # online at all means their SUB got SYNCED there (PROTOCOL.md 4.2).
        with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob:
            assert forwarder.accepted == 2  # each SUB, and nothing else, came through the forward
            alice.client.broadcast("through the forward").wait(10)
            assert bob.message("through the forward").sender == "alice"
            assert alice.message("through the forward").sender == "alice"
    finally:
        broker.stop()


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://*:7001", "tcp://chat.example:7001", "tcp://zchat_broker_1:7001", "tcp://10.0.0.5:7001",
     "tcp://[::1]:7001", "tcp://[2001:db8::7]:65535"],
)  # fmt: skip
def test_reachable_endpoints_may_be_advertised(endpoint: str) -> None:
    assert advertisable(endpoint) == endpoint


@pytest.mark.parametrize(
    "endpoint",
    ["", "7001", "*:7001", "ipc:///tmp/pub", "udp://*:7001", "tcp://*", "tcp://*:0", "tcp://*:65536",
     "tcp://*:port", "tcp://0.0.0.0:7001", "tcp://[::]:7001", "tcp://::1:7001", "tcp://[10.0.0.5]:7001",
     "tcp://:7001", "tcp://bad host:7001", "tcp://-chat:7001", "tcp://10:7001", "tcp://300.1.1.1:7001",
     "tcp://127.0.0.2:0;127.0.0.1:7001"],
)  # fmt: skip
def test_unreachable_or_malformed_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ValueError):
        advertisable(endpoint)
    with pytest.raises(ValueError):  # the library refuses it too, before taking a port
        BrokerServer(BrokerSettings(port=0, pub_port=0, advertise_pub=endpoint))


def test_a_bad_advertised_endpoint_stops_the_broker_at_start_from_option_or_environment() -> None:
    env = {**os.environ, "ZCHAT_PORT": "0", "ZCHAT_PUB_PORT": "0", "ZCHAT_STORE": ":memory:"}
    given = subprocess.run([ZCHAT, "broker", "--advertise-pub", "tcp://0.0.0.0:7001"],
                           capture_output=True, text=True, env=env, timeout=15)  # fmt: skip
    assert given.returncode == 2 and "--advertise-pub" in given.stderr
    from_env = subprocess.run([ZCHAT, "broker"], capture_output=True, text=True, timeout=15,
                              env={**env, "ZCHAT_ADVERTISE_PUB": "tcp://*:0"})  # fmt: skip
    assert from_env.returncode == 2 and "--advertise-pub" in from_env.stderr


def test_without_the_option_the_broker_advertises_where_its_pub_listens(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    broker = start_broker(tmp_path)
    try:
        dealer = zmq_context.socket(zmq.DEALER)
        dealer.connect(broker.endpoint)
        dealer.send_multipart(p.encode_hello(b"h", "carol"))
        assert dealer.poll(10_000)
        welcome = p.decode_event(dealer.recv_multipart())
        assert isinstance(welcome, p.Welcome) and welcome.pub_endpoint == broker.pub_endpoint
        dealer.close(linger=0)
    finally:
        broker.stop()
