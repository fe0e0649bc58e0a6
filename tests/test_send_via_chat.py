"""`zchat send --name alice` while alice's `zchat connect` is open: sent through her chat, as typed.

The chats and senders are real processes on a real broker; each test has a runtime directory
of its own (XDG_RUNTIME_DIR, short: a socket's path has at most 107 bytes).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

from tests.chat import Watcher, chat
from tests.support import ZCHAT, Broker, wait_for
from tests.test_cli import ENV, read_until
from zchat.client import events as ev
from zchat.client import local
from zchat.client.request import Request
from zchat.client.session import UserRequests


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh XDG_RUNTIME_DIR (as the login manager makes it: 0700), here and for the processes."""
    folder = Path(tempfile.mkdtemp(prefix="zr"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def env_of(runtime: Path) -> dict[str, str]:
    return {**ENV, "XDG_RUNTIME_DIR": str(runtime)}


@dataclass
class OpenChat:
    """A `zchat connect` process in line mode (or --json), reading commands from our pipe."""

    process: subprocess.Popen[bytes]
    out: bytes = b""
    code: int | None = None
    lines: list[str] = field(default_factory=list)

    def finish(self) -> int:
        """Close its stdin (it leaves), and keep all it wrote."""
        rest, _ = self.process.communicate(timeout=15)  # closes stdin first
        self.out += rest
        self.lines = self.out.decode().splitlines()
        self.code = self.process.returncode
        return self.code


@contextmanager
def open_chat(name: str, broker: Broker, runtime: Path, *options: str) -> Iterator[OpenChat]:
    process = subprocess.Popen(
        [ZCHAT, "connect", "--name", name, "--broker", broker.endpoint, *options],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env_of(runtime),
    )  # fmt: skip
    try:
        # Online, and listening: the control socket is bound before the first line is read.
        opened = OpenChat(process, read_until(process, b"online"))
        wait_for(lambda: control_file(name, broker, runtime).exists(), what="the control socket")
        yield opened
        if opened.code is None:
            opened.finish()
    finally:
        process.kill()
        process.wait(10)


def control_file(name: str, broker: Broker, runtime: Path) -> Path:
    return local.control_path(broker.endpoint, name, runtime / "zchat")


def zchat_send(runtime: Path, *args: str, broker: Broker | None = None) -> subprocess.CompletedProcess[str]:
    where = ["--broker", broker.endpoint] if broker else []
    return subprocess.run(
        [ZCHAT, "send", *where, *args], capture_output=True, text=True, timeout=60, env=env_of(runtime)
    )


def presences_of(watcher: Watcher, name: str) -> list[ev.Presence]:
    return [e for e in watcher.seen if isinstance(e, ev.Presence) and e.name == name]


def no_join_or_leave_of(watcher: Watcher, name: str, broker: Broker) -> None:
    """Nothing of `name`'s presence came: an announced join after it arrives behind any that did."""
    with chat("carol", broker.endpoint):
        watcher.expect(lambda e: isinstance(e, ev.Presence) and e.name == "carol", what="carol's join")
    assert presences_of(watcher, name) == []


@pytest.mark.parametrize("mode", ["line", "json"])
@pytest.mark.parametrize("to", [("--to", "bob"), ("--all",)], ids=["private", "all"])
def test_send_goes_through_the_open_chat_as_its_user(
    broker: Broker, runtime: Path, mode: str, to: tuple[str, ...]
) -> None:
    with chat("bob", broker.endpoint) as bob, open_chat(
        "alice", broker, runtime, *(["--json"] if mode == "json" else [])
    ) as alice:  # fmt: skip
        bob.expect(lambda e: isinstance(e, ev.Presence) and e.name == "alice", what="alice's join")
        bob.forget()
        sent = zchat_send(runtime, "--name", "alice", *to, "hi", "there", broker=broker)
        assert sent.returncode == 0, sent.stderr  # not 409: alice's own chat sent it
        assert sent.stdout.startswith(f"sent to {'bob' if to[0] == '--to' else 'everyone'} (id ")
        message = bob.message("hi there")
        assert message.sender == "alice" and message.private == (to[0] == "--to")
        no_join_or_leave_of(bob, "alice", broker)
        assert alice.finish() == 0
    # Shown once, as her own, as when she types it (a receipt or an ack may name it besides).
    if mode == "json":
        shown = [json.loads(line) for line in alice.lines]
        messages = [e for e in shown if e["type"] == "message" and e["text"] == "hi there"]
        acks = [e for e in shown if e["type"] == "ack" and e.get("text") == "hi there"]
        assert len(acks) == 1 and acks[0]["status"] == "accepted", shown
        if to[0] == "--to":
            assert messages == [] and acks[0]["to"] == "bob", shown
        else:
            assert [(m["from"], m["to"]) for m in messages] == [("alice", "*")], shown
    else:
        said = [line for line in alice.lines if "hi there" in line and "delivered" not in line]
        assert len(said) == 1, alice.lines
        assert ("[private] you -> bob: hi there" if to[0] == "--to" else "<alice> hi there") in said[0]


def test_a_refusal_through_the_open_chat_fails_the_send_not_the_chat(broker: Broker, runtime: Path) -> None:
    with open_chat("alice", broker, runtime) as alice:
        refused = zchat_send(runtime, "--name", "Alice", "--to", "nobody", "hi", broker=broker)
        assert refused.returncode == 1 and "nobody is not online" in refused.stderr, refused.stderr
        assert alice.finish() == 0  # someone else's refused send is not the script's failure
    assert any("not sent to nobody" in line for line in alice.lines), alice.lines


def test_a_stale_control_file_falls_back_to_a_short_lived_session(broker: Broker, runtime: Path) -> None:
    folder = local.runtime_dir()
    stale = control_file("alice", broker, runtime)
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(stale))  # as a killed chat leaves it: the file, and nothing listening
    left.close()
    with chat("bob", broker.endpoint) as bob:
        started = time.monotonic()
        sent = zchat_send(runtime, "--name", "alice", "--to", "bob", "after a crash", broker=broker)
        assert sent.returncode == 0, sent.stderr
        assert bob.message("after a crash").sender == "alice"
        assert time.monotonic() - started < 30
        no_join_or_leave_of(bob, "alice", broker)
    assert not stale.exists()  # provably nobody's: removed
    assert folder.exists()


def test_a_chat_that_does_not_answer_is_given_nothing_and_kept(broker: Broker, runtime: Path) -> None:
    local.runtime_dir()
    hung = control_file("alice", broker, runtime)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(hung))
    listener.listen(8)  # connections wait in its backlog: a process stopped or hung
    try:
        with chat("bob", broker.endpoint) as bob:
            sent = zchat_send(runtime, "--name", "alice", "--all", "still sent", broker=broker)
            assert sent.returncode == 0, sent.stderr
            assert bob.message("still sent").sender == "alice"
        assert hung.exists()  # someone listens there: nothing proves it stale
    finally:
        listener.close()


def test_send_without_a_name_is_a_usage_error_naming_the_option(runtime: Path) -> None:
    env = {k: v for k, v in env_of(runtime).items() if k != "ZCHAT_NAME"}  # ZCHAT_CONFIG: no file
    result = subprocess.run(
        [ZCHAT, "send", "--all", "hi"], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 2 and "--name" in result.stderr and "Traceback" not in result.stderr


def test_the_runtime_directory_is_private_and_the_file_goes_with_the_chat(
    broker: Broker, runtime: Path
) -> None:
    with open_chat("alice", broker, runtime) as alice:
        folder = runtime / "zchat"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
        assert [path.name for path in folder.iterdir()] == [control_file("alice", broker, runtime).name]
        assert alice.finish() == 0
    assert list(folder.iterdir()) == []


def test_a_runtime_directory_others_may_use_is_refused(broker: Broker, runtime: Path) -> None:
    folder = runtime / "zchat"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # whatever the umask
    with pytest.raises(local.LocalError, match="may be used by others"):
        local.runtime_dir()
    process = subprocess.Popen(
        [ZCHAT, "connect", "--name", "alice", "--broker", broker.endpoint],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_of(runtime),
    )  # fmt: skip
    try:
        read_until(process, b"online")
        _, err = process.communicate(timeout=15)  # closes stdin: it leaves
        assert process.returncode == 0 and b"will not send through this chat" in err, err
    finally:
        process.kill()
        process.wait(10)
    assert list(folder.iterdir()) == []
    folder.rmdir()
    folder.symlink_to(runtime)
    with pytest.raises(local.LocalError, match="not a directory"):
        local.runtime_dir()


def test_runtime_dir_without_xdg_is_per_user_in_the_temp_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    temp = tempfile.mkdtemp(prefix="zt")
    monkeypatch.setattr(tempfile, "tempdir", temp)
    try:
        folder = local.runtime_dir()
        assert folder == Path(temp) / f"zchat-{os.getuid()}"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(temp)


# --- the endpoint and its codec, without a `zchat connect` --------------------------------


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_decode_takes_any_bytes_and_gives_a_message_or_malformed(frame: bytes) -> None:
    try:
        message = local.decode(frame)
    except local.Malformed:
        return
    assert local.decode(local.encode(message)) == message


@given(
    st.one_of(
        st.builds(local.Ping, st.text(), st.text()),
        st.builds(local.Send, st.text(), st.text(), st.text(), st.text()),
        st.builds(local.Sent, st.text(), st.text()),
        st.builds(local.Refused, st.integers(), st.text()),
        st.builds(local.Invalid, st.text()),
        st.builds(local.Here, st.text()),
    )
)
def test_encode_and_decode_are_inverse(message: local.LocalRequest | local.LocalAnswer) -> None:
    assert local.decode(local.encode(message)) == message


def test_a_malformed_request_is_answered_and_the_endpoint_goes_on(broker: Broker, runtime: Path) -> None:
    with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob:
        endpoint = local.LocalEndpoint(alice.client, "alice", broker.endpoint, answer_timeout=10)
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(f"ipc://{endpoint.path}")

            def ask(*frames: bytes) -> local.LocalAnswer:
                dealer.send_multipart(list(frames))
                assert dealer.poll(10_000), "no answer within 10s"
                answer = local.decode(dealer.recv_multipart()[-1])
                assert not isinstance(answer, local.Ping | local.Send)
                return answer

            for bad in (b"", b"\xff", b"[]", b"[" * 100_000, b'{"v": 2, "type": "ping"}',
                        b'{"v": 1, "type": "here", "name": "x"}', b'{"v": 1, "type": "ping", "name": 1}',
                        local.encode(local.Ping("mallory", broker.endpoint)),
                        local.encode(local.Ping("alice", "tcp://elsewhere:1"))):  # fmt: skip
                answer = ask(bad)
                assert isinstance(answer, local.Invalid), (bad[:40], answer)
            assert "version" in str(ask(b'{"v": 2, "type": "ping"}'))
            assert ask(local.encode(local.Ping("ALICE", broker.endpoint))) == local.Here("alice")
            sent = ask(local.encode(local.Send("alice", broker.endpoint, "bob", "still here")))
            assert isinstance(sent, local.Sent) and sent.status == "accepted"
            assert bob.message("still here").sender == "alice"
        finally:
            dealer.close()
            context.term()
            endpoint.close()
        assert not endpoint.path.exists()


def test_an_oversized_request_is_dropped_not_read(broker: Broker, runtime: Path) -> None:
    with chat("alice", broker.endpoint) as alice:
        endpoint = local.LocalEndpoint(alice.client, "alice", broker.endpoint, answer_timeout=10)
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            big = context.socket(zmq.DEALER)
            big.setsockopt(zmq.LINGER, 0)
            events = big.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            big.connect(f"ipc://{endpoint.path}")
            big.send(b"x" * (local.MAX_BYTES + 2048))
            seen: list[int] = []
            while zmq.EVENT_DISCONNECTED not in seen:  # the endpoint cut it off, unanswered
                assert events.poll(10_000), f"not cut off within 10s; saw {seen}"
                seen.append(recv_monitor_message(events)["event"])
            assert not big.poll(0)
            big.disable_monitor()
            events.close()
            big.close()
            # The endpoint goes on for others.
            answer = local.send_through_chat(broker.endpoint, "alice", "*", "after", answer_timeout=10)
            assert isinstance(answer, local.Sent)
            too_long = local.send_through_chat(broker.endpoint, "alice", "*", "x" * local.MAX_BYTES, 10)
            assert isinstance(too_long, local.Refused) and too_long.code == ev.USAGE
        finally:
            context.term()
            endpoint.close()


class HeldRequests(UserRequests):
    """A client whose sends wait until the test answers them."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: queue.SimpleQueue[Request] = queue.SimpleQueue()

    def _submit(self, request: Request) -> Request:
        self.taken.put(request)
        return request


def test_a_ping_is_answered_while_a_send_waits_for_its_outcome(runtime: Path) -> None:
    held = HeldRequests()
    endpoint = local.LocalEndpoint(held, "alice", "tcp://127.0.0.1:1", answer_timeout=30)
    outcome: queue.SimpleQueue[local.Sent | local.Refused | None] = queue.SimpleQueue()
    sender = threading.Thread(
        target=lambda: outcome.put(local.send_through_chat("tcp://127.0.0.1:1", "alice", "bob", "hi", 30))
    )
    try:
        sender.start()
        request = held.taken.get(timeout=10)
        assert (request.target, request.text) == ("bob", "hi")
        # Another sender's ping, while the first one's send has no outcome yet.
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"ipc://{endpoint.path}")
        dealer.send(local.encode(local.Ping("alice", "tcp://127.0.0.1:1")))
        assert dealer.poll(10_000), "the ping waited behind the send"
        assert local.decode(dealer.recv()) == local.Here("alice")
        dealer.close()
        context.term()
        assert outcome.empty()
        request.resolve(request.refusal(ev.CLOSED, "the client is closed"))  # as the chat's close does
        assert outcome.get(timeout=10) == local.Refused(ev.CLOSED, "the client is closed")
    finally:
        sender.join(10)
        endpoint.close()
