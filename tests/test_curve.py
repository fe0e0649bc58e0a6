"""CURVE encryption: key files, an encrypted chat, clear failures, and nothing readable on the wire."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq

from tests.chat import Watcher
from tests.support import ZCHAT, Broker, start_broker, start_curve_broker, wait_for
from zchat.client.session import Client, ConnectError
from zchat.common import keys

TIMEOUT = 3.0  # the connect timeout the failing clients get


def zchat(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "ZCHAT_STORE": ":memory:", "ZCHAT_HOME": str(home)}
    env.pop("ZCHAT_SERVER_KEY", None)
    return subprocess.run([ZCHAT, *args], capture_output=True, text=True, timeout=timeout, env=env)


@contextmanager
def chat(
    name: str, endpoint: str, server_key: bytes | None, pair: keys.KeyPair | None = None
) -> Iterator[Watcher]:
    """tests.chat.chat with the encryption options."""
    client = Client(name, endpoint, server_key=server_key, keys=pair).connect()
    try:
        yield Watcher(client)
    finally:
        client.close()


@pytest.fixture
def curve_pair(tmp_path: Path) -> Iterator[tuple[Broker, keys.KeyPair]]:
    running, server = start_curve_broker(tmp_path)
    yield running, server
    running.stop()


@pytest.fixture
def curve_broker(curve_pair: tuple[Broker, keys.KeyPair]) -> Broker:
    return curve_pair[0]


@pytest.fixture
def server_keys(curve_pair: tuple[Broker, keys.KeyPair]) -> keys.KeyPair:
    return curve_pair[1]


def test_keygen_writes_a_private_secret_and_a_public_key_and_prints_it(tmp_path: Path) -> None:
    result = zchat(tmp_path / "home", "keygen", "--out", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    secret, public = tmp_path / "k" / "zchat.key", tmp_path / "k" / "zchat.pub"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pair = keys.load_pair(secret)
    assert result.stdout.strip() == pair.public.decode()
    assert keys.server_key(str(public)) == pair.public
    assert b"secret-key" not in public.read_bytes()
    assert zmq.curve_public(pair.secret) == pair.public  # a real CURVE pair, made by libzmq


def test_keygen_defaults_to_zchat_home_and_never_replaces_a_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = zchat(home, "keygen")
    assert first.returncode == 0 and (home / "zchat.key").exists()
    again = zchat(home, "keygen")
    assert again.returncode == 1 and "exists already" in again.stderr
    assert keys.load_pair(home / "zchat.key").public.decode() == first.stdout.strip()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    keys.generate(tmp_path)
    secret = tmp_path / keys.SECRET_FILE
    secret.chmod(mode)
    with pytest.raises(keys.KeyFileError, match="group or others may access it"):
        keys.load_pair(secret)
    result = zchat(tmp_path, "broker", "--port", "0", "--pub-port", "0", "--curve-secret", str(secret))
    assert result.returncode == 1
    assert "refusing to use the secret key file" in result.stderr and "chmod 600" in result.stderr
    # the user's own pair (here in ZCHAT_HOME) is checked the same way
    who = zchat(tmp_path, "who", "--server-key", zmq.curve_keypair()[0].decode())
    assert who.returncode == 1 and "refusing to use the secret key file" in who.stderr


def test_a_curve_broker_says_so_and_logs_its_public_key(
    curve_broker: Broker, server_keys: keys.KeyPair
) -> None:
    log = curve_broker.log()
    assert "traffic is encrypted (CURVE)" in log and "plain" not in log
    assert server_keys.public.decode() in log


def test_encrypted_chat_carries_private_and_broadcast_messages(
    curve_broker: Broker, server_keys: keys.KeyPair
) -> None:
    key = server_keys.public
    with (
        chat("alice", curve_broker.endpoint, server_key=key) as alice,
        chat("bob", curve_broker.endpoint, server_key=key, pair=keys.KeyPair(*zmq.curve_keypair())) as bob,
    ):
        alice.client.send("bob", "only for bob").wait(5)
        alice.client.broadcast("for everyone").wait(5)
        assert bob.message("only for bob").private
        assert not bob.message("for everyone").private
        assert not alice.message("for everyone").private


def test_the_cli_chats_encrypted_and_makes_the_users_key_pair_on_first_use(
    tmp_path: Path, curve_broker: Broker, server_keys: keys.KeyPair
) -> None:
    home = tmp_path / "user"
    with chat("bob", curve_broker.endpoint, server_key=server_keys.public) as bob:
        public_file = str(tmp_path / "broker-keys" / keys.PUBLIC_FILE)
        sent = zchat(home, "send", "--name", "alice", "--broker", curve_broker.endpoint,
                     "--server-key", public_file, "--to", "bob", "psst")  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert f"made your key pair in {home}" in sent.stderr
        assert stat.S_IMODE((home / keys.SECRET_FILE).stat().st_mode) == 0o600
        bob.message("psst")
        who = zchat(
            home, "who", "--broker", curve_broker.endpoint, "--server-key", server_keys.public.decode()
        )
        assert who.returncode == 0 and who.stdout.split() == ["bob"]
        assert "made your key pair" not in who.stderr  # made once, then used


@pytest.mark.parametrize(
    ("server_key", "says"),
    [
        (zmq.curve_keypair()[0], "the server key may be wrong"),
        # libzmq reports a mechanism mismatch, or sometimes only a closed connection: both say what to do.
        (None, "encryption (CURVE"),
    ],
    ids=["wrong-key", "no-key"],
)
def test_a_wrong_or_missing_server_key_fails_clearly_within_the_timeout(
    curve_broker: Broker, server_key: bytes | None, says: str
) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"refused|closed the connection") as failure:
        Client("mallory", curve_broker.endpoint, connect_timeout=TIMEOUT, server_key=server_key).connect()
    assert says in str(failure.value) and "--server-key" in str(failure.value)
    assert time.monotonic() - started < TIMEOUT


@pytest.mark.parametrize("command", ["who", "send"])
def test_the_cli_says_why_it_cannot_reach_a_curve_broker(
    tmp_path: Path, curve_broker: Broker, command: str
) -> None:
    extra = ["--name", "mallory", "--all", "hi"] if command == "send" else []
    wrong = zmq.curve_keypair()[0].decode()
    args = [command, "--broker", curve_broker.endpoint, "--connect-timeout", str(TIMEOUT), *extra]
    for key_args, says in [(["--server-key", wrong], "server key may be wrong"), ([], "--server-key")]:
        started = time.monotonic()
        result = zchat(tmp_path, *args, *key_args)
        assert result.returncode == 1 and says in result.stderr, result.stderr
        assert time.monotonic() - started < TIMEOUT + 5  # the process starts, then fails early


def test_a_server_key_against_a_plain_broker_fails_clearly(broker: Broker) -> None:
    # libzmq reports a mechanism mismatch or only a closed connection, by a race: the client
    # tells the two apart, and every time names the problem rather than a possible one.
    started = time.monotonic()
    with pytest.raises(ConnectError) as failure:
        Client("eve", broker.endpoint, connect_timeout=TIMEOUT, server_key=zmq.curve_keypair()[0]).connect()
    assert "does not use encryption" in str(failure.value)
    assert time.monotonic() - started < TIMEOUT


# --- what an eavesdropper on the network sees ----------------------------------


class Capture:
    """tcpdump on loopback, on the given ports only, writing a pcap file.

    Without --immediate-mode packets wait in the kernel's capture buffer, and
    an interrupted tcpdump exits without writing them.
    """

    def __init__(self, path: Path, ports: list[int]) -> None:
        self.path = path
        self.log = path.with_suffix(".log")
        expression = " or ".join(f"tcp port {port}" for port in ports)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U", "-w", str(path), expression],
                stdout=log,
                stderr=log,
            )

        def listening() -> bool:
            text = self.log.read_text(errors="replace")
            if self.process.poll() is not None:
                pytest.skip(f"tcpdump cannot capture here: {text.strip()}")
            return "listening on" in text

        wait_for(listening, 10, what="tcpdump to listen")

    def stop(self) -> bytes:
        # Each packet is written as it comes (--immediate-mode -U): wait for the file to hold some.
        wait_for(lambda: self.path.stat().st_size > 4096, 10, what="packets in the capture file")
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # tcpdump writes out what it holds, then exits
        self.process.wait(10)
        return self.path.read_bytes()


def tcpdump_or_skip() -> None:
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed (Debian package tcpdump; .ci/run installs it)")


@pytest.mark.parametrize("encrypted", [True, False], ids=["curve", "plain"])
def test_a_packet_capture_shows_message_texts_only_without_curve(tmp_path: Path, encrypted: bool) -> None:
    tcpdump_or_skip()
    pair = keys.generate(tmp_path / "broker-keys")
    args = ["--curve-secret", str(tmp_path / "broker-keys" / keys.SECRET_FILE)] if encrypted else []
    running = start_broker(tmp_path, *args)
    try:
        capture = Capture(tmp_path / "chat.pcap", [running.port, running.pub_port])
        key = pair.public if encrypted else None
        texts = [b"a private canary 5Kq9", b"a public canary Zr7w"]
        try:
            with (
                chat("alice", running.endpoint, server_key=key) as alice,
                chat("bob", running.endpoint, server_key=key) as bob,
            ):
                alice.client.send("bob", texts[0].decode()).wait(5)
                alice.client.broadcast(texts[1].decode()).wait(5)
                bob.message(texts[0].decode())
                bob.message(texts[1].decode())
        finally:
            packets = capture.stop()
    finally:
        running.stop()
    assert len(packets) > 24 + 16 * 10, "the capture holds hardly any packets: did it see the chat?"
    found = [text for text in texts if text in packets]
    assert found == ([] if encrypted else texts)


def test_a_peer_that_speaks_no_zeromq_is_named_as_a_possibility(tmp_path: Path) -> None:
    """Something else on the port (here a web server's refusal) ends the handshake: the client says what it may be."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    stop = threading.Event()

    def refuse_everyone() -> None:
        while not stop.is_set():
            try:
                peer, _ = listener.accept()
            except TimeoutError:
                continue
            with peer:
                peer.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    server = threading.Thread(target=refuse_everyone, daemon=True)
    server.start()
    try:
        port = listener.getsockname()[1]
        with pytest.raises(ConnectError, match="may not be a zchat broker"):
            Client("alice", f"tcp://127.0.0.1:{port}", connect_timeout=TIMEOUT).connect()
    finally:
        stop.set()
        server.join(5)
        listener.close()
