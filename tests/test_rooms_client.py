"""Rooms, history, offline mailboxes and receipts, as the client library and CLI see them.

Every test runs a real broker (PROTOCOL.md 13); waits have deadlines, never sleeps.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zmq

from tests.chat import Watcher, chat
from tests.support import ZCHAT, Broker, start_broker, wait_for
from tests.test_cli import ENV, zchat
from zchat.client import events as ev
from zchat.common import protocol as p

DEADLINE = 10.0


def room_texts(watcher: Watcher, room: str) -> list[str]:
    return [m.text for m in watcher.messages() if m.room == room]


def ack(request_outcome: ev.Outcome) -> ev.Ack:
    assert isinstance(request_outcome, ev.Ack), request_outcome
    return request_outcome


def test_a_member_of_one_room_never_receives_a_frame_of_another(
    broker: Broker, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    with chat("alice", broker.endpoint) as alice, chat("carol", broker.endpoint) as carol:
        for room in ("#a", "#ab"):  # "#a" is a prefix of "#ab": topics must match exactly
            ack(alice.client.enter(room).wait(DEADLINE))
        ack(carol.client.enter("#a").wait(DEADLINE))
        # A raw SUB subscribed as carol's client is: the lobby, her room, her own topic.
        raw = zmq_context.socket(zmq.SUB)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(broker.pub_endpoint)
        for topic in (p.LOBBY_TOPIC, p.topic_of("#a"), p.private_topic("carol")):
            raw.setsockopt(zmq.SUBSCRIBE, topic)
        frames: list[list[bytes]] = []

        def heard(text: bytes) -> bool:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                if raw.poll(100):
                    frames.append(raw.recv_multipart())
                    event = p.decode_published(frames[-1]).event
                    if isinstance(event, p.Message) and event.body == text:
                        return True
                else:
                    alice.client.send("#a", text.decode())  # until the raw subscription is live
            return False

        assert heard(b"ready?")
        for i in range(20):
            ack(alice.client.send("#ab", f"secret {i}").wait(DEADLINE))
        ack(alice.client.send("#a", "the end").wait(DEADLINE))
        assert heard(b"the end")
        assert {p.decode_published(f).topic for f in frames} <= {p.LOBBY_TOPIC, p.topic_of("#a")}
        carol.message("the end")
        assert not [m for m in carol.messages() if m.room == "#ab" or "secret" in m.text]
        assert "secret 19" in room_texts(alice, "#ab") or alice.message("secret 19")


def test_joining_shows_history_then_live_messages_without_gap_or_repeat(broker: Broker) -> None:
    with chat("alice", broker.endpoint) as alice:
        ack(alice.client.enter("#dev").wait(DEADLINE))
        for i in range(70):
            alice.client.send("#dev", f"m{i}")
        assert alice.client.flush(DEADLINE)
        sent = 70
        stop = threading.Event()

        def talk() -> None:  # alice keeps talking while bob joins
            nonlocal sent
            while not stop.is_set() and sent < 20000:
                ack(alice.client.send("#dev", f"m{sent}").wait(DEADLINE))
                sent += 1

        talker = threading.Thread(target=talk)
        talker.start()
        try:
            with chat("bob", broker.endpoint) as bob:
                ack(bob.client.enter("#dev").wait(DEADLINE))
                bob.expect(lambda e: isinstance(e, ev.Message) and not e.history, what="a live message")
                stop.set()
                talker.join(DEADLINE)
                bob.message(f"m{sent - 1}")
                messages = [m for m in bob.messages() if m.room == "#dev"]
        finally:
            stop.set()
            talker.join(DEADLINE)
    numbers = [int(m.text[1:]) for m in messages]
    assert numbers == list(range(numbers[0], sent)), "a gap or a repeat"
    history = [m for m in messages if m.history]
    assert len(history) == 50 and all(m.history for m in messages[:50])
    assert not any(m.history for m in messages[50:])
    seqs = [m.seq for m in messages]
    assert seqs == sorted(set(seqs))


def test_history_pages_further_back_until_the_start(broker: Broker) -> None:
    with chat("alice", broker.endpoint) as alice:
        ack(alice.client.enter("#dev").wait(DEADLINE))
        for i in range(25):
            alice.client.send("#dev", f"m{i}")
        assert alice.client.flush(DEADLINE)
        with chat("bob", broker.endpoint, history_count=10) as bob:
            ack(bob.client.enter("#dev").wait(DEADLINE))
            bob.message("m24")
            assert room_texts(bob, "#dev") == [f"m{i}" for i in range(15, 25)]
            pages = []
            for _ in range(3):
                page = bob.client.history("#dev", before=-1, count=10).wait(DEADLINE)
                assert isinstance(page, ev.History)
                pages.append([m.text for m in page.messages])
            assert pages == [[f"m{i}" for i in range(5, 15)], [f"m{i}" for i in range(5)], []]
            assert all(m.history for m in bob.messages())


def test_a_join_history_count_above_one_page_still_shows_the_history(broker: Broker) -> None:
    # The broker refuses a HISTORY count above 500 (PROTOCOL.md 13.1): the client asks no more.
    with chat("alice", broker.endpoint) as alice:
        ack(alice.client.enter("#dev").wait(DEADLINE))
        for i in range(3):
            ack(alice.client.send("#dev", f"m{i}").wait(DEADLINE))
        with chat("bob", broker.endpoint, history_count=p.MAX_HISTORY + 1000) as bob:
            ack(bob.client.enter("#dev").wait(DEADLINE))
            assert bob.message("m2").history
            assert room_texts(bob, "#dev") == ["m0", "m1", "m2"]
            page = bob.client.history("#dev", count=10**6).wait(DEADLINE)
            assert isinstance(page, ev.History) and [m.text for m in page.messages] == ["m0", "m1", "m2"]


def test_a_history_before_past_any_sequence_number_is_refused_by_the_client(broker: Broker) -> None:
    with chat("alice", broker.endpoint) as alice:
        refusal = alice.client.history("*", before=p.MAX_NUMBER + 1).wait(DEADLINE)
        assert isinstance(refusal, ev.Refusal) and refusal.code == ev.USAGE
        newest = alice.client.history("*", before=p.MAX_NUMBER).wait(DEADLINE)  # the highest there may be
        assert isinstance(newest, ev.History)
        assert isinstance(alice.client.who().wait(DEADLINE), ev.Users)


def test_search_never_finds_other_rooms_or_other_peoples_private_messages(broker: Broker) -> None:
    with (
        chat("alice", broker.endpoint) as alice,
        chat("bob", broker.endpoint) as bob,
        chat("carol", broker.endpoint) as carol,
    ):
        for room in ("#a", "#b"):
            ack(alice.client.enter(room).wait(DEADLINE))
        ack(bob.client.enter("#a").wait(DEADLINE))
        ack(alice.client.send("#a", "needle in a").wait(DEADLINE))
        ack(alice.client.send("#b", "needle in b").wait(DEADLINE))
        ack(alice.client.send("bob", "needle for bob").wait(DEADLINE))
        ack(alice.client.send("carol", "needle for carol").wait(DEADLINE))
        bob.message("needle for bob")
        carol.message("needle for carol")
        found = bob.client.search("needle").wait(DEADLINE)
        assert isinstance(found, ev.Found)
        texts = {m.text for m in found.messages}
        assert "needle in a" in texts and not texts & {"needle in b", "needle for carol"}
        assert all(m.history for m in found.messages)


def test_an_offline_user_gets_every_message_in_order_and_the_sender_every_receipt(broker: Broker) -> None:
    with chat("bob", broker.endpoint):
        pass  # bob has been here: messages to him are kept while he is away
    with chat("alice", broker.endpoint) as alice:
        requests = [alice.client.send("bob", f"note {i}") for i in range(100)]
        outcomes = [r.wait(DEADLINE) for r in requests]
        assert {ack(o).status for o in outcomes} == {"stored"}
    ids = [r.msg_id for r in requests]
    with chat("bob", broker.endpoint) as bob:
        bob.message("note 99")
        assert [m.text for m in bob.messages()] == [f"note {i}" for i in range(100)]
        assert all(m.private for m in bob.messages())
        # alice comes back later: the receipts were kept for her.
        with chat("alice", broker.endpoint) as alice:
            receipts: dict[str, ev.Receipt] = {}

            def all_receipts() -> bool:
                while (event := alice.client.next_event(0.1)) is not None:
                    if isinstance(event, ev.Receipt):
                        receipts[event.msg_id] = event
                return len(receipts) == 100

            wait_for(all_receipts, DEADLINE, what="100 receipts")
            assert sorted(receipts) == sorted(ids) and {r.recipient for r in receipts.values()} == {"bob"}
    # Confirmed with RECEIVED: bob is not given them again.
    with chat("bob", broker.endpoint) as bob:
        bob.client.send("bob", "to myself").wait(DEADLINE)
        bob.message("to myself")
        assert [m.text for m in bob.messages()] == ["to myself"]


def test_membership_survives_a_reconnect_and_a_broker_restart(tmp_path: Path) -> None:
    options = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1")
    broker = start_broker(tmp_path, *options)
    port, pub_port = broker.port, broker.pub_port
    try:
        with chat("bob", broker.endpoint) as bob:
            ack(bob.client.enter("#dev").wait(DEADLINE))
        with chat("alice", broker.endpoint) as alice, chat("bob", broker.endpoint) as bob:
            ack(alice.client.enter("#dev").wait(DEADLINE))
            rooms = bob.client.rooms().wait(DEADLINE)
            assert isinstance(rooms, ev.RoomList) and rooms.mine == ("#dev",)
            # bob entered nothing this time: the broker kept his room, his client subscribed again.
            ack(alice.client.send("#dev", "still there?").wait(DEADLINE))
            assert bob.message("still there?").room == "#dev"
            broker.stop(signal.SIGKILL)
            bob.state(ev.State.RECONNECTING)
            broker = start_broker(tmp_path, *options, port=port, pub_port=pub_port)
            bob.forget()
            alice.forget()
            bob.state(ev.State.ONLINE)
            alice.state(ev.State.ONLINE)

            def heard_after_restart() -> bool:
                alice.client.send("#dev", "after the restart").wait(DEADLINE)
                try:
                    bob.message("after the restart", timeout=0.5)
                except AssertionError:
                    return False
                return True

            wait_for(heard_after_restart, DEADLINE, what="bob in #dev after the restart")
    finally:
        broker.stop()


def test_json_events_carry_rooms_stored_status_and_receipts(broker: Broker) -> None:
    with chat("bob", broker.endpoint):
        pass
    process = subprocess.Popen(
        [ZCHAT, "connect", "--name", "alice", "--broker", broker.endpoint, "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    assert process.stdout is not None and process.stdin is not None
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:  # a thread, so that waiting for a line has a deadline
        for line in process.stdout or ():
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    events: list[dict[str, object]] = []

    def until(match: dict[str, object]) -> dict[str, object]:
        """The first event so far or to come with these fields (events can come in any order)."""
        deadline = time.monotonic() + DEADLINE
        seen = 0
        while True:
            for event in events[seen:]:
                if all(event.get(k) == v for k, v in match.items()):
                    return event
            seen = len(events)
            try:
                events.append(json.loads(lines.get(timeout=max(0.0, deadline - time.monotonic()))))
            except queue.Empty:
                raise AssertionError(f"no {match} within {DEADLINE}s; saw {events}") from None

    try:
        until({"type": "status", "state": "online"})
        process.stdin.write("/join #dev\nhello room\n/msg bob are you there?\n")
        process.stdin.flush()
        until({"type": "ack", "command": "enter", "to": "#dev"})
        message = until({"type": "message", "text": "hello room"})
        assert (message["room"], message["kind"], message["to"]) == ("#dev", "room", "#dev")
        stored = until({"type": "ack", "to": "bob"})
        assert stored["status"] == "stored"
        with chat("bob", broker.endpoint) as bob:
            assert bob.message("are you there?").private
            receipt = until({"type": "receipt"})
            assert (receipt["id"], receipt["to"]) == (stored["id"], "bob")
            ack(bob.client.enter("#dev").wait(DEADLINE))
            until({"type": "presence", "event": "join", "name": "bob", "room": "#dev"})
        process.stdin.close()
        assert process.wait(DEADLINE) == 0
    finally:
        process.kill()


def test_line_mode_room_commands(broker: Broker) -> None:
    with chat("bob", broker.endpoint) as bob:
        ack(bob.client.enter("#dev").wait(DEADLINE))
        ack(bob.client.send("#dev", "earlier words").wait(DEADLINE))
        # Our own lines may come back after stdin ends and the client leaves: bob checks them.
        script = "/join #dev\nhi dev\n/room\nhi lobby\n/rooms\n/names #dev\n/search earlier\n/leave #dev\n"
        result = zchat("connect", "--name", "alice", "--broker", broker.endpoint, stdin=script)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "-- you joined #dev" in out
        assert "[history] #dev <bob> earlier words" in out
        assert "-- now talking in the lobby" in out
        assert "rooms (1): #dev (2, yours)" in out
        assert "in #dev (2): alice, bob" in out
        assert "found 1, newest first:" in out
        assert "-- you left #dev" in out
        assert bob.message("hi dev").room == "#dev"
        assert bob.message("hi lobby").room == "*"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_tui_joins_a_room_shows_its_history_and_talks_there(broker: Broker, tmp_path: Path) -> None:
    from tests.test_tui import Peer, Terminal, start_alice

    terminal = Terminal(tmp_path)
    bob = Peer("bob", broker.endpoint)
    try:
        ack(bob.client.enter("#dev").wait(DEADLINE))
        ack(bob.client.send("#dev", "before you came").wait(DEADLINE))
        start_alice(terminal, broker)
        terminal.type("/join #dev")
        terminal.keys("Enter")
        terminal.wait_screen("-- you joined #dev")
        terminal.wait_screen("[history] #dev <bob> before you came")
        terminal.wait_input("alice #dev>")
        terminal.type("hello dev")
        terminal.keys("Enter")
        assert bob.message("hello dev").room == "#dev"
        terminal.wait_screen("#dev <alice> hello dev")
        bob.client.send("#dev", "welcome").wait(DEADLINE)
        terminal.wait_screen("#dev <bob> welcome")
        terminal.type("/names #d")
        terminal.keys("Tab")
        terminal.wait_input("alice #dev> /names #dev")
        terminal.keys("Enter")
        terminal.wait_screen("in #dev (2): alice, bob")
        terminal.type("/room")
        terminal.keys("Enter")
        terminal.wait_input("alice>")
        terminal.type("in the lobby")
        terminal.keys("Enter")
        assert bob.message("in the lobby").room == "*"
    finally:
        bob.client.close()
        terminal.close()


def test_room_commands_parse() -> None:
    from zchat.client import commands as cmd

    assert cmd.parse("/join #dev") == cmd.Join("#dev")
    assert cmd.parse("/leave") == cmd.Leave("")
    assert cmd.parse("/room") == cmd.SwitchRoom("*")
    assert cmd.parse("/names #dev") == cmd.Names("#dev")
    assert cmd.parse("/names") == cmd.Names("")
    assert cmd.parse("/history") == cmd.History("", 50)
    assert cmd.parse("/history #dev 20") == cmd.History("#dev", 20)
    assert cmd.parse("/history 5") == cmd.History("", 5)
    assert isinstance(cmd.parse("/history #dev x"), cmd.Invalid)
    assert cmd.parse("/search two words") == cmd.Search("two words")
    assert isinstance(cmd.parse("/join"), cmd.Invalid)


def test_stored_acks_receipts_and_room_lines_read_clearly() -> None:
    from datetime import datetime, timezone

    from zchat.client.render import Renderer, to_json

    now = datetime.now(timezone.utc)
    r = Renderer("alice")
    assert r.line(ev.Ack("i1", now, "stored", "bob", "hi")).endswith(  # type: ignore[union-attr]
        "[private] you -> bob: hi (stored: bob is offline)"
    )
    assert r.line(ev.Receipt("i1", "bob", now, "hi")).endswith("✓ delivered to bob: hi")  # type: ignore[union-attr]
    assert r.line(ev.Message("m", "bob", "#dev", "yo", now)).endswith("#dev <bob> yo")  # type: ignore[union-attr]
    assert r.line(ev.Message("m", "bob", "*", "yo", now)).endswith("] <bob> yo")  # type: ignore[union-attr]
    history = ev.Message("m", "bob", "#dev", "old", now, history=True, seq=3)
    assert "[history] #dev <bob> old" in (r.line(history) or "")
    assert json.loads(to_json(history))["history"] is True
    assert json.loads(to_json(ev.Receipt("i1", "bob", now)))["type"] == "receipt"
    assert json.loads(to_json(ev.Message("m", "bob", "alice", "p", now)))["room"] == ""


def test_a_bad_room_name_is_refused_without_asking_the_broker(broker: Broker) -> None:
    with chat("alice", broker.endpoint) as alice:
        refusal = alice.client.enter("dev").wait(DEADLINE)
        assert isinstance(refusal, ev.Refusal) and refusal.code == ev.USAGE
        refused = alice.client.send("#nowhere", "hello?").wait(DEADLINE)
        assert isinstance(refused, ev.Refusal) and refused.code == 423


def test_more_history_clear_and_help_of_one_command_parse() -> None:
    from zchat.client import commands as cmd

    assert cmd.parse("/more") == cmd.History("", 50, older=True)
    assert cmd.parse("/more #dev 5") == cmd.History("#dev", 5, older=True)
    assert isinstance(cmd.parse("/more #dev x"), cmd.Invalid)
    assert cmd.parse("/clear") == cmd.Clear()
    assert cmd.parse("/help join") == cmd.Help("join")
    assert (cmd.help_of("join") or "").startswith("  /join #ROOM")
    assert cmd.help_of("/frobnicate") is None
