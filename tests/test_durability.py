"""The store keeps its promises: what was acknowledged survives a broker crash.

Real processes: the broker is SIGKILLed mid-stream under load and restarted
on the same store file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import zmq

from tests.chat import chat
from tests.support import ZCHAT, start_broker, wait_for
from tests.test_server import Raw, answers
from zchat.client import events as ev
from zchat.common import protocol as p
from zchat.common.protocol import Code

FAST = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1")


def raw_records(endpoint: str, name: str, want: int, room: str) -> tuple[list[bytes], list[bytes]]:
    """As a bare spec client: the private messages waiting for `name`, then `room`'s history."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        dealer.send_multipart(p.encode_hello(b"h", name))
        mail: list[bytes] = []
        history: list[bytes] = []
        asked = False
        while True:
            assert dealer.poll(10_000), f"stalled with {len(mail)} of {want} messages"
            event = p.decode_event(dealer.recv_multipart())
            if isinstance(event, p.Message):
                mail.append(event.msg_id)
            elif isinstance(event, p.History):
                history = [r.msg_id for r in event.records]
                return mail, history
            if len(mail) >= want and not asked:  # everything kept has come: now the history
                dealer.send_multipart(p.encode_command(b"ENTER", b"e", room))
                dealer.send_multipart(p.encode(p.HistoryRequest(b"hi", room, 0, 500)))
                asked = True
    finally:
        context.destroy(linger=0)


def test_acknowledged_messages_survive_a_broker_crash_exactly_once(tmp_path: Path) -> None:
    store = str(tmp_path / "zchat.db")
    broker = start_broker(tmp_path, "--store", store, *FAST)
    port, pub_port = broker.port, broker.pub_port
    try:
        with chat("bob", broker.endpoint):
            pass  # bob is known from now on: private messages to him are kept while he is away
        with chat("alice", broker.endpoint) as alice:
            alice.client.enter("#load").wait(10)
            sends = []

            def send(first: int, last: int) -> None:
                for i in range(first, last):
                    sends.append(alice.client.send("bob", f"private {i}"))
                    sends.append(alice.client.send("#load", f"public {i}"))

            send(0, 300)
            wait_for(lambda: sum(r.done() for r in sends) >= 100, what="100 answers")
            # Mid-stream for certain, however fast the broker: frozen, it answers nothing more
            # of what is sent now, and is killed with it on its way.
            os.kill(broker.process.pid, signal.SIGSTOP)
            send(300, 400)
            broker.stop(signal.SIGKILL)  # some sent, some acknowledged, some in flight
            acked_before = {r.msg_id for r in sends if isinstance(r.wait(0) if r.done() else None, ev.Ack)}
            broker = start_broker(tmp_path, "--store", store, *FAST, port=port, pub_port=pub_port)
            outcomes = [r.wait(30) for r in sends]  # the client resends what was not answered
        assert all(isinstance(o, ev.Ack) for o in outcomes), [
            o for o in outcomes if not isinstance(o, ev.Ack)
        ]
        # The crash came mid-stream: after some acknowledgements, before all of them.
        assert 0 < len(acked_before) < len(sends), len(acked_before)
        private_ids = [r.msg_id.encode() for r in sends if r.target == "bob"]
        room_ids = [r.msg_id.encode() for r in sends if r.target == "#load"]
        mail, history = raw_records(broker.endpoint, "bob", len(private_ids), "#load")
        assert mail == private_ids  # every one, once, in order
        assert history == room_ids[-500:]  # every one, once, in order
    finally:
        broker.stop()


def test_a_corrupt_or_unusable_store_is_a_clear_error_at_start(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database at all" * 100)
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    for path in (corrupt, not_a_dir / "zchat.db"):
        result = subprocess.run([ZCHAT, "broker", "--port", "0", "--pub-port", "0", "--store", str(path)],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert str(path) in result.stderr and "Traceback" not in result.stderr


def test_the_broker_says_at_start_where_its_store_is(tmp_path: Path) -> None:
    """An operator must know what survives a restart: the absolute path, or nothing."""
    (tmp_path / "run").mkdir()
    broker = start_broker(tmp_path, "--store", "data/zchat.db", cwd=tmp_path / "run")
    try:
        assert str(tmp_path / "run" / "data" / "zchat.db") in broker.log()
        assert (tmp_path / "run" / "data" / "zchat.db").is_file()
    finally:
        broker.stop()
    broker = start_broker(tmp_path, "--store", ":memory:")
    try:
        assert ":memory:" in broker.log()
    finally:
        broker.stop()


def test_a_second_broker_on_the_same_store_fails_clearly_at_start(tmp_path: Path) -> None:
    store = str(tmp_path / "zchat.db")
    broker = start_broker(tmp_path, "--store", store)
    try:
        second = subprocess.run([ZCHAT, "broker", "--port", "0", "--pub-port", "0", "--store", store],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert store in second.stderr and "Traceback" not in second.stderr
        assert broker.process.poll() is None  # the first goes on
    finally:
        broker.stop()


def immutable(*paths: Path, on: bool) -> None:
    """chattr +i / -i: no process may write the files, root included; skip where it cannot be done."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("only root can make a file immutable (chattr +i)")
    done = subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"this file system cannot make a file immutable: {done.stderr!r}")


def test_an_unwritable_store_refuses_what_it_cannot_keep_and_the_broker_stays_up(tmp_path: Path) -> None:
    """Made immutable under a running broker (a stand-in for a disk gone bad): SQLite's
    writes fail, and no -shm file is mapped whose failed write would be a SIGBUS."""
    store = tmp_path / "zchat.db"
    broker = start_broker(tmp_path, "--store", str(store))
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    files = [f for f in (store, tmp_path / "zchat.db-wal", tmp_path / "zchat.db-shm") if f.exists()]
    try:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(broker.endpoint)

        def ask(command: bytes, *fields: bytes | int) -> p.ServerEvent | p.PublishedEvent:
            dealer.send_multipart(p.encode_command(command, *fields))
            assert dealer.poll(10_000), "no answer: " + broker.log()[-2000:]
            return p.decode_event(dealer.recv_multipart())

        assert isinstance(ask(b"HELLO", b"h", b"alice", b"", p.SIGNATURE), p.Welcome)
        assert isinstance(ask(b"SEND", b"m1", b"*", b"kept"), p.Ack)
        files = [f for f in (store, tmp_path / "zchat.db-wal", tmp_path / "zchat.db-shm") if f.exists()]
        immutable(*files, on=True)
        refused = ask(b"SEND", b"m2", b"*", b"not kept")
        assert isinstance(refused, p.Error) and refused.code == Code.STORE_FAILED
        assert isinstance(ask(b"PING", b"p"), p.Pong)  # still up, still serving
        immutable(*files, on=False)
        assert isinstance(ask(b"SEND", b"m2", b"*", b"kept after all"), p.Ack)  # the resend is new
        history = ask(b"HISTORY", b"hi", b"*", 0, 10)
        assert isinstance(history, p.History) and [r.msg_id for r in history.records] == [b"m1", b"m2"]
        assert broker.process.poll() is None
        errors = [line for line in broker.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1, errors  # the store's failure, said once
    finally:
        if files and os.geteuid() == 0 and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", *map(str, files)], capture_output=True)
        context.destroy(linger=0)
        broker.stop()
    assert "Fatal Python error" not in broker.log()


def signed_in(
    context: zmq.Context[zmq.Socket[bytes]], endpoint: str, name: str
) -> tuple[Raw, list[p.Message]]:
    """`name` signed in on a bare spec client, and the private messages handed over to it."""
    raw = Raw(context, endpoint)
    raw.hello(name)
    raw.send(b"PING", b"p")
    return raw, [e for e in raw.until(b"p") if isinstance(e, p.Message)]


def test_a_live_private_message_comes_again_at_each_sign_in_until_its_recipient_confirms_it(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    store = str(tmp_path / "zchat.db")
    broker = start_broker(tmp_path, "--store", store, *FAST)
    try:
        bob, _ = signed_in(zmq_context, broker.endpoint, "bob")
        alice, _ = signed_in(zmq_context, broker.endpoint, "alice")
        alice.send(b"SEND", b"m1", "bob", "are you there?")
        assert answers(alice.until(b"m1")) == [("ACK", b"m1", "accepted")]
        handed = bob.next()  # bob's connection has it; bob quits before confirming it
        assert isinstance(handed, p.Message) and handed.msg_id == b"m1"
        bob.send(b"BYE", b"b")
        bob.until(b"b")
        bob, again = signed_in(zmq_context, broker.endpoint, "bob")
        assert again == [handed]  # its id, sender and time as first handed
        bob.dealer.send_multipart(p.encode(p.Received(b"r", "alice", (b"m1",))))
        assert answers(bob.until(b"r")) == [("ACK", b"r", "accepted")]
        receipt = alice.next()
        assert isinstance(receipt, p.Receipt) and receipt.msg_ids == (b"m1",)
        port, pub_port = broker.port, broker.pub_port
        broker.stop(signal.SIGKILL)  # the confirmation was acknowledged: it is kept too
        broker = start_broker(tmp_path, "--store", store, *FAST, port=port, pub_port=pub_port)
        _, after = signed_in(zmq_context, broker.endpoint, "bob")
        assert after == []
    finally:
        broker.stop()


def test_a_live_private_message_acknowledged_just_before_a_crash_is_handed_over_after_the_restart(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    store = str(tmp_path / "zchat.db")
    broker = start_broker(tmp_path, "--store", store, *FAST)
    try:
        bob, _ = signed_in(zmq_context, broker.endpoint, "bob")  # online, and reads nothing more
        alice, _ = signed_in(zmq_context, broker.endpoint, "alice")
        alice.send(b"SEND", b"m1", "bob", "hello bob")
        (ack,) = alice.until(b"m1")
        assert isinstance(ack, p.Ack)
        port, pub_port = broker.port, broker.pub_port
        broker.stop(signal.SIGKILL)  # at once: bob's connection had it at most, not bob
        broker = start_broker(tmp_path, "--store", store, *FAST, port=port, pub_port=pub_port)
        _, handed = signed_in(zmq_context, broker.endpoint, "bob")
        assert handed == [p.Message(b"m1", "alice", "bob", ack.time_ms, b"hello bob")]
        bob.dealer.close()  # open until now: the first broker had a live connection to hand it to
    finally:
        broker.stop()
