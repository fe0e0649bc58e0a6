"""The `zchat` command as scripts use it: line mode, --json, send, who, broker."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
import unicodedata
from pathlib import Path

import pytest
import zmq

from tests.chat import chat
from tests.support import HOSTILE, HOSTILE_SHOWN, ZCHAT, Broker, interruptible, start_broker, wait_for
from zchat.client import events as ev
from zchat.common import protocol as p

ENV = {
    **os.environ,
    "NO_COLOR": "1",
    "ZCHAT_STORE": ":memory:",
    "ZCHAT_CONFIG": os.devnull,
}  # never the user's own store or config


def zchat(*args: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ZCHAT, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=ENV
    )


def test_line_mode_reads_commands_and_prints_events(broker: Broker) -> None:
    with chat("bob", broker.endpoint) as bob:
        script = "hello everyone\n/msg bob psst\n@bob again\n/who\n/me waves\n"
        result = zchat("connect", "--name", "alice", "--broker", broker.endpoint, stdin=script)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "<alice> hello everyone" in out
        assert "[private] you -> bob: psst" in out
        assert "online (2): alice, bob" in out
        assert "* alice waves" in out
        assert bob.message("psst").private and bob.message("again").private
        assert not bob.message("hello everyone").private


def test_json_mode_prints_one_object_per_event(broker: Broker) -> None:
    with chat("bob", broker.endpoint) as bob:
        script = "/msg bob hi\n/msg nobody x\n/who\nto all\n"
        result = zchat("connect", "--name", "alice", "--broker", broker.endpoint, "--json", stdin=script)
        events = [json.loads(line) for line in result.stdout.splitlines()]
        by_type: dict[str, list[dict[str, object]]] = {}
        for event in events:
            by_type.setdefault(str(event["type"]), []).append(event)
        assert {"type": "users", "names": ["alice", "bob"]} in events
        private_ack = next(e for e in by_type["ack"] if e["to"] == "bob")
        assert private_ack["status"] == "accepted" and str(private_ack["time"]).endswith("Z")
        refusal = by_type["error"][0]
        assert (refusal["code"], refusal["to"]) == (404, "nobody")
        broadcast = next(e for e in by_type["message"] if e["text"] == "to all")
        assert (broadcast["kind"], broadcast["from"], broadcast["to"]) == ("broadcast", "alice", "*")
        assert by_type["status"][-1]["state"] == "closed"
        assert result.returncode == 1  # one message was refused
        bob.message("hi")


def test_incoming_events_reach_a_json_script(broker: Broker) -> None:
    process = subprocess.Popen(
        [ZCHAT, "connect", "--name", "carol", "--broker", broker.endpoint, "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    assert process.stdout is not None and process.stdin is not None
    try:
        assert json.loads(process.stdout.readline())["state"] == "online"
        with chat("dave", broker.endpoint) as dave:
            dave.client.send("carol", "psst carol").wait(5)
            lines: list[str] = []
            while not any("psst carol" in line for line in lines):
                lines.append(process.stdout.readline())
            message = json.loads(lines[-1])
            assert message["kind"] == "private" and message["from"] == "dave" and message["to"] == "carol"
            assert message["id"] and message["time"]
        process.stdin.close()
        assert process.wait(10) == 0
    finally:
        process.kill()


def test_send_exits_zero_only_when_accepted(broker: Broker) -> None:
    with chat("bob", broker.endpoint) as bob:
        ok = zchat("send", "--name", "alice", "--broker", broker.endpoint, "--to", "bob", "hi", "there")
        assert ok.returncode == 0, ok.stderr
        assert bob.message("hi there").sender == "alice"
        refused = zchat("send", "--name", "alice", "--broker", broker.endpoint, "--to", "nobody", "hi")
        assert refused.returncode == 1 and "nobody is not online" in refused.stderr
        everyone = zchat("send", "--name", "alice", "--broker", broker.endpoint, "--all", "to all")
        assert everyone.returncode == 0 and bob.message("to all").target == "*"


def test_send_is_seen_without_a_join_or_leave_of_its_sender(broker: Broker) -> None:
    with chat("bob", broker.endpoint) as bob:
        sent = zchat("send", "--name", "alice", "--broker", broker.endpoint, "--all", "deploy done")
        assert sent.returncode == 0, sent.stderr
        assert bob.message("deploy done").sender == "alice"
        with chat("carol", broker.endpoint):  # announced: the lobby's order puts alice's events before
            bob.expect(lambda e: isinstance(e, ev.Presence) and e.name == "carol", what="carol's join")
        said = [e for e in bob.seen if isinstance(e, ev.Presence) and e.name == "alice"]
        assert said == []


def test_who_prints_names_online(broker: Broker) -> None:
    with chat("bob", broker.endpoint), chat("alice", broker.endpoint):
        result = zchat("who", "--broker", broker.endpoint)
        assert result.returncode == 0 and result.stdout.split() == ["alice", "bob"]


def test_who_given_several_brokers_asks_until_one_answers(broker: Broker) -> None:
    with chat("bob", broker.endpoint):
        nobody = "tcp://127.0.0.1:1"  # nothing listens on port 1
        result = zchat("who", "--broker", f"{nobody}, {broker.endpoint}", "--connect-timeout", "1")
        assert result.returncode == 0 and result.stdout.split() == ["bob"], result.stderr


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--broker", "", "'' is not a broker endpoint"),
        ("--broker", "a,b", "'a' is not a broker endpoint"),
        ("--broker", "tcp://127.0.0.1:5555,", "'' is not a broker endpoint"),
        ("--connect-timeout", "nan", "give a number of seconds"),
    ],
)
def test_a_bad_broker_or_timeout_is_a_usage_error_not_a_traceback(option: str, value: str, says: str) -> None:
    for command in ("who", "connect --name x", "send --name x --all hi"):
        result = zchat(*command.split(), option, value, timeout=15)
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_taken_name_exits_nonzero_with_a_clear_message(broker: Broker) -> None:
    with chat("alice", broker.endpoint):
        result = zchat("connect", "--name", "Alice", "--broker", broker.endpoint, stdin="hi\n")
        assert result.returncode == 1 and "name alice is taken" in result.stderr


def test_invalid_name_and_unreachable_broker_are_clear_errors(tmp_path: Path) -> None:
    bad = zchat("connect", "--name", "no spaces", stdin="")
    assert bad.returncode == 2 and "a name is 1-32 letters" in bad.stderr
    gone = start_broker(tmp_path)
    gone.stop()
    result = zchat(
        "connect", "--name", "alice", "--broker", gone.endpoint, "--connect-timeout", "1", stdin=""
    )
    assert result.returncode == 1 and "no answer from the broker" in result.stderr
    who = zchat("who", "--broker", gone.endpoint, "--connect-timeout", "1")
    assert who.returncode == 1 and "no answer" in who.stderr


def test_broker_takes_options_from_the_environment_and_stops_on_sigint(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    env = {**ENV, "ZCHAT_PORT": "0", "ZCHAT_PUB_PORT": "0", "ZCHAT_MAX_MESSAGE_SIZE": "5"}
    with open(log, "wb") as out:
        process = subprocess.Popen([ZCHAT, "broker"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        line = wait_for(lambda: log.read_text() if "listening" in log.read_text() else None, what="listening")
        endpoint = line.split("commands on ")[1].split(",")[0]
        assert endpoint.startswith("tcp://127.0.0.1:")
        with chat("alice", endpoint) as alice:
            refusal = alice.client.broadcast("too long").wait(5)
            assert isinstance(refusal, ev.Refusal) and refusal.code == 413
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        assert "broker stopped" in log.read_text()
    finally:
        process.kill()


def test_broker_refuses_a_port_in_use_clearly(broker: Broker, tmp_path: Path) -> None:
    result = zchat("broker", "--port", str(broker.port), "--pub-port", "0", timeout=15)
    assert result.returncode == 1 and "cannot listen" in result.stderr


def test_ctrl_c_in_line_mode_leaves_properly(broker: Broker) -> None:
    with chat("watcher", broker.endpoint) as watcher:
        with interruptible():  # Ctrl-C reaches it, however this suite was started
            process = subprocess.Popen(
                [ZCHAT, "connect", "--name", "carol", "--broker", broker.endpoint],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**ENV, "PYTHONFAULTHANDLER": "1"},
            )  # fmt: skip
        assert process.stdout is not None
        try:
            assert "online as carol" in process.stdout.readline()
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(10)
            except subprocess.TimeoutExpired:  # say where it hangs: faulthandler dumps every thread
                process.send_signal(signal.SIGABRT)
                raise AssertionError(
                    f"still running 10 s after SIGINT:\n{process.communicate(timeout=10)[1]}"
                ) from None
            assert code == 130, process.communicate(timeout=10)[1]
            leave = watcher.expect(lambda e: isinstance(e, ev.Presence) and e.event == "leave")
            assert isinstance(leave, ev.Presence) and (leave.name, leave.reason) == ("carol", "quit")
        finally:
            process.kill()


def read_until(process: subprocess.Popen[bytes], done: bytes, count: int = 1, timeout: float = 10.0) -> bytes:
    """What the process writes to stdout until `done` has come `count` times, with a deadline."""
    assert process.stdout is not None
    out = b""
    deadline = time.monotonic() + timeout
    while out.count(done) < count:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, left))
        chunk = os.read(process.stdout.fileno(), 65536) if ready else b""
        if not chunk:
            raise AssertionError(f"no {done!r} x{count} within {timeout}s (or stdout closed); got {out!r}")
        out += chunk
    return out


def test_line_mode_shows_control_characters_from_others_visibly(broker: Broker) -> None:
    process = subprocess.Popen(
        [ZCHAT, "connect", "--name", "alice", "--broker", broker.endpoint],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    assert process.stdin is not None
    try:
        out = read_until(process, b"online as alice")
        with chat("mallory", broker.endpoint) as mallory:
            mallory.client.broadcast(HOSTILE).wait(10)
            mallory.client.send("alice", HOSTILE).wait(10)
            out += read_until(process, b"tail-end", count=2)
        process.stdin.close()
        assert process.wait(10) == 0
    finally:
        process.kill()
    text = out.decode()
    # Line ends are line mode's own; nothing else that steers a terminal is left.
    assert all(char == "\n" or unicodedata.category(char) != "Cc" for char in text), repr(text)
    assert "\u202e" not in text and "\x9b" not in text, repr(text)
    lines = [line for line in text.splitlines() if "tail-end" in line]
    assert len(lines) == 2, text
    assert any("] <mallory> " in line for line in lines) and any(
        "] [private] mallory -> you: " in line for line in lines
    )
    for line in lines:  # one message, one line, its controls shown
        assert HOSTILE_SHOWN in line, line
    assert not any(line.startswith("[00:00:00]") for line in text.splitlines()), text


def test_a_hostile_brokers_refusal_is_shown_not_obeyed_on_stderr(
    zmq_context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # Only a broker of someone else's can put its own words in the reason a client gives up.
    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    process = subprocess.Popen(
        [ZCHAT, "connect", "--name", "alice", "--broker", f"tcp://127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    try:
        assert router.poll(10_000), "no HELLO within 10s"
        peer, *frames = router.recv_multipart()
        hello = p.decode_command(frames)
        assert isinstance(hello, p.Hello)
        router.send_multipart([peer, *p.encode(p.Error(hello.msg_id, p.Code.NAME_TAKEN, HOSTILE, 0))])
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 1
    text = err.decode()
    assert HOSTILE_SHOWN in text, repr(text)
    assert all(char == "\n" or unicodedata.category(char) != "Cc" for char in text), repr(text)


def test_line_mode_exits_non_zero_after_an_unknown_command(broker: Broker) -> None:
    understood = zchat("connect", "--name", "alice", "--broker", broker.endpoint, stdin="hello\n")
    assert understood.returncode == 0, understood.stderr
    result = zchat("connect", "--name", "alice", "--broker", broker.endpoint, stdin="/frobnicate\nhello\n")
    assert result.returncode == 1, result.stdout
    assert "unknown command /frobnicate" in result.stdout
    assert "<alice> hello" in result.stdout  # the lines after it still ran


def test_line_mode_query_sends_plain_text_to_the_person(broker: Broker) -> None:
    with chat("bob", broker.endpoint) as bob:
        script = "/query bob\njust between us\n/buffer 2\n"
        result = zchat("connect", "--name", "alice", "--broker", broker.endpoint, stdin=script)
        assert "now talking with bob in private" in result.stdout
        assert "[private] you -> bob: just between us" in result.stdout
        assert "terminal UI" in result.stdout  # /buffer is the terminal UI's
        assert bob.message("just between us").private


def test_the_config_file_gives_defaults_and_options_still_win(broker: Broker, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'name = "carol"\nbroker = "{broker.endpoint}"\nconnect_timeout = 5\nbell = false\n')
    env = {**ENV, "ZCHAT_CONFIG": str(config)}
    env.pop("ZCHAT_NAME", None)
    env.pop("ZCHAT_BROKER", None)
    with chat("bob", broker.endpoint) as bob:
        sent = subprocess.run([ZCHAT, "send", "--all", "from", "the", "file"], capture_output=True, text=True,
                              timeout=30, env=env)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert bob.message("from the file").sender == "carol"
        named = subprocess.run([ZCHAT, "send", "--name", "dave", "--all", "named"], capture_output=True,
                               text=True, timeout=30, env=env)  # fmt: skip
        assert named.returncode == 0, named.stderr
        assert bob.message("named").sender == "dave"  # the option given wins


def test_a_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    for text, said in (("name = ", "config.toml"), ('nick = "x"', "unknown setting 'nick'"),
                       ("bell = 3", "bell must be a bool")):  # fmt: skip
        config.write_text(text)
        result = subprocess.run([ZCHAT, "who"], capture_output=True, text=True, timeout=30,
                                env={**ENV, "ZCHAT_CONFIG": str(config)})  # fmt: skip
        assert result.returncode != 0 and said in result.stderr, result.stderr


@pytest.mark.parametrize(("command", "kind"), [("connect", "terminal"), ("bot", "bot")])
def test_the_command_line_names_its_kind_in_hello(
    zmq_context: zmq.Context[zmq.Socket[bytes]], command: str, kind: str
) -> None:
    # PROTOCOL.md 4.1: HELLO's optional client kind, which the broker counts sessions by.
    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    process = subprocess.Popen(
        [ZCHAT, command, "--name", "kindly", "--broker", f"tcp://127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    try:
        assert router.poll(10_000), "no HELLO within 10s"
        _, *frames = router.recv_multipart()
        hello = p.decode_command(frames)
        assert isinstance(hello, p.Hello) and hello.client == kind
    finally:
        process.kill()
        process.wait(10)
