"""What the user has read, kept in the data folder (client/readstate.py)."""

from __future__ import annotations

from pathlib import Path

from tests.chat import chat
from tests.support import Broker
from zchat.client import events as ev
from zchat.client.readstate import ReadState, state_file
from zchat.client.session import Client

DEADLINE = 10.0


def until_message(client: Client, text: str) -> list[ev.Event]:
    """The events up to the message `text`, within the deadline."""
    seen: list[ev.Event] = []
    for event in client.events(timeout=DEADLINE):
        seen.append(event)
        if isinstance(event, ev.Message) and event.text == text:
            return seen
    raise AssertionError(f"no message {text!r} in {seen}")


def test_what_was_read_outlives_the_process(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "read.json"
    state = ReadState(path)
    state.shown("#dev", 7)
    state.shown("#dev", 3)  # an older one does not take it back
    state.shown("*", 2)
    state.save()
    again = ReadState(path)
    assert (again.last_read("#dev"), again.last_read("*"), again.last_read("#other")) == (7, 2, 0)
    again.forget("#dev")
    assert again.last_read("#dev") == 0


def test_a_broken_state_file_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "read.json"
    for broken in ("{not json", '{"last_seq": [1, 2]}', '{"last_seq": {"#dev": "x"}}', "[]"):
        path.write_text(broken)
        assert ReadState(path).last_read("#dev") == 0


def test_one_file_per_name_and_broker() -> None:
    assert state_file("alice", "tcp://a:1") == state_file("Alice", "tcp://a:1")
    assert state_file("alice", "tcp://a:1") != state_file("alice", "tcp://a:2")
    assert state_file("alice", "tcp://a:1") != state_file("bob", "tcp://a:1")


def test_the_join_says_where_the_unread_part_starts(broker: Broker, tmp_path: Path) -> None:
    path = tmp_path / "read.json"
    with chat("bob", broker.endpoint) as bob:
        bob.client.broadcast("old").wait(DEADLINE)
        first = Client("alice", broker.endpoint, read_state=ReadState(path)).connect()
        until_message(first, "old")
        first.close()
        bob.client.broadcast("new").wait(DEADLINE)
        again = Client("alice", broker.endpoint, read_state=ReadState(path)).connect()
        try:
            seen = until_message(again, "new")
        finally:
            again.close()
    shown = [
        e.text if isinstance(e, ev.Message) else e.detail
        for e in seen
        if isinstance(e, ev.Message | ev.Status)
    ]
    marker = next(i for i, text in enumerate(shown) if text.startswith("unread since"))
    assert shown.index("old") < marker < shown.index("new"), shown


def test_a_receipt_after_a_restart_names_the_message(broker: Broker, tmp_path: Path) -> None:
    path = tmp_path / "read.json"
    with chat("bob", broker.endpoint):
        pass  # bob has registered once: mail for him is kept while he is away
    first = Client("alice", broker.endpoint, read_state=ReadState(path)).connect()
    ack = first.send("bob", "see you tomorrow").wait(DEADLINE)
    first.close()
    assert isinstance(ack, ev.Ack) and ack.status == "stored"
    with chat("bob", broker.endpoint) as bob:
        bob.message("see you tomorrow")
        again = Client("alice", broker.endpoint, read_state=ReadState(path)).connect()
        try:
            receipt = next(e for e in again.events(timeout=DEADLINE) if isinstance(e, ev.Receipt))
        finally:
            again.close()
    assert (receipt.msg_id, receipt.text) == (ack.msg_id, "see you tomorrow")


def test_a_mention_is_the_name_as_a_word_of_its_own() -> None:
    from zchat.client.readstate import mentions

    for text in ("alice: hi", "hi @Alice", "ALICE, look", "ping alice."):
        assert mentions(text, "alice"), text
    for text in ("malice", "alice_b said", "alice-bot", "alicexyz", "a.alice"):
        assert not mentions(text, "alice"), text
