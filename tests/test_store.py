"""The Store contract, proved against MemoryStore and SqliteStore alike; then what only the file promises."""

from __future__ import annotations

import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.stores import BIG, fill_disk
from zchat.broker.sqlite_store import SCHEMA_VERSION, SqliteStore
from zchat.broker.store import MemoryStore, Store, StoredMessage, StoreError, StoreFailed

FOREVER = 2**62  # a before_seq past every message


def room_msg(
    room: str, seq: int, body: str = "hello", sender: str = "Alice", time_ms: int = 0
) -> StoredMessage:
    return StoredMessage(room, seq, f"{room}{seq}".encode(), sender, room, time_ms or seq, body.encode())


def private_msg(sender: str, target: str, n: int, body: str = "psst", time_ms: int = 0) -> StoredMessage:
    return StoredMessage("", 0, f"p{n}".encode(), sender, target, time_ms or n, body.encode())


def bodies(messages: list[StoredMessage]) -> list[str]:
    return [m.body.decode() for m in messages]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened: Store = MemoryStore() if request.param == "memory" else SqliteStore.open(tmp_path / "z.db")
    yield opened
    opened.close()


# --- the contract, for both stores ----------------------------------------------


def test_history_is_the_last_messages_before_seq_oldest_first(store: Store) -> None:
    for seq in range(1, 6):
        store.add_room_message(room_msg("#a", seq, f"a{seq}"))
    store.add_room_message(room_msg("#b", 1, "b1"))
    assert bodies(store.room_history("#a", FOREVER, 3)) == ["a3", "a4", "a5"]
    assert bodies(store.room_history("#a", 4, 2)) == ["a2", "a3"]
    assert bodies(store.room_history("#a", 2, 10)) == ["a1"]
    assert store.room_history("#a", FOREVER, 0) == []
    assert store.room_history("#nowhere", FOREVER, 5) == []
    assert store.room_history("#b", FOREVER, 5) == [room_msg("#b", 1, "b1")]


def test_history_after_a_number_gives_only_what_came_later_newest_first_cut(store: Store) -> None:
    for seq in range(1, 8):
        store.add_room_message(room_msg("#a", seq, f"a{seq}"))
    assert bodies(store.room_history("#a", FOREVER, 10, after_seq=5)) == ["a6", "a7"]
    assert bodies(store.room_history("#a", FOREVER, 2, after_seq=2)) == ["a6", "a7"]  # the newest of the gap
    assert store.room_history("#a", FOREVER, 10, after_seq=7) == []  # nothing missed
    assert bodies(store.room_history("#a", 5, 10, after_seq=2)) == ["a3", "a4"]
    assert store.room_history("#a", FOREVER, 10, after_seq=2**70) == []  # any number, no overflow


@pytest.mark.parametrize("before", [2**63 - 1, 2**63, 10**20 - 1, 2**200, -(2**63) - 1])
def test_history_takes_any_number_as_before_and_limit(store: Store, before: int) -> None:
    """The decoder lets 20 digits through, past SQLite's 64-bit integers: the store clamps."""
    store.add_room_message(room_msg("#a", 1, "a1"))
    expected = ["a1"] if before > 1 else []
    assert bodies(store.room_history("#a", before, 10)) == expected
    assert bodies(store.room_history("#a", before, 2**64)) == expected


def test_last_seq_is_zero_for_a_new_room_and_the_highest_after(store: Store) -> None:
    assert store.last_seq("#a") == 0
    store.add_room_message(room_msg("#a", 1))
    store.add_room_message(room_msg("#a", 2))
    assert (store.last_seq("#a"), store.last_seq("#b")) == (2, 0)


def test_a_seq_used_by_an_event_that_is_not_kept_counts_too(store: Store) -> None:
    store.add_room_message(room_msg("#a", 1, "words"))
    store.used_seq("#a", 3)  # say, a JOIN and a LEAVE after the message
    store.used_seq("#a", 2)  # never backwards
    store.commit()
    assert store.last_seq("#a") == 3


def test_last_seq_goes_on_after_expiry_emptied_the_room(store: Store) -> None:
    store.add_room_message(room_msg("#a", 7, time_ms=100))
    assert store.expire(before_ms=1000) == 1
    assert store.room_history("#a", FOREVER, 10) == []
    assert store.last_seq("#a") == 7


def test_membership_and_room_sizes(store: Store) -> None:
    store.set_member("alice", "#a", True)
    store.set_member("alice", "#a", True)  # joining twice is joining once
    store.set_member("bob", "#a", True)
    store.set_member("bob", "#b", True)
    store.set_member("bob", "#b", False)
    store.set_member("carol", "#c", False)  # leaving a room one is not in is harmless
    assert store.rooms_of("alice") == {"#a"}
    assert store.rooms_of("bob") == {"#a"}
    assert store.members("#a") == {"alice", "bob"}
    assert store.members("#b") == set()
    assert store.room_sizes() == {"#a": 2}


def test_a_room_subject_is_kept_replaced_and_cleared(store: Store) -> None:
    assert store.subject("#a") is None
    store.set_subject("#a", "release friday", "Alice", 5)
    store.set_subject("#a", "release monday ☕", "bob", 7)
    store.set_subject("#b", "other", "carol", 9)
    assert store.subject("#a") == ("release monday ☕", "bob", 7)
    store.set_subject("#a", "", "bob", 11)
    assert (store.subject("#a"), store.subject("#b")) == (None, ("other", "carol", 9))


def test_known_users(store: Store) -> None:
    store.add_user("alice")
    store.add_user("alice")
    assert store.is_known("alice")
    assert not store.is_known("bob")


def test_mailbox_keeps_order_until_delivered(store: Store) -> None:
    first, second = private_msg("Alice", "Bob", 1, "one"), private_msg("Carol", "Bob", 2, "three")
    store.enqueue("bob", first)
    store.enqueue("dave", private_msg("Alice", "Dave", 3, "x"))
    store.enqueue("bob", second)
    assert store.mailbox("bob") == [first, second]
    assert store.mailbox_usage("bob") == (2, len("one") + len("three"))
    assert store.delivered("bob", "alice", b"p1")  # the sender by its name key
    assert not store.delivered("bob", "alice", b"p1")
    assert store.mailbox("bob") == [second]
    assert store.mailbox_usage("bob") == (1, 5)
    assert store.mailbox_usage("erin") == (0, 0)
    assert [m.target for m in store.mailbox("dave")] == ["Dave"]


def test_take_leaves_the_mailbox_by_the_next_read_or_commit(store: Store) -> None:
    first, second = private_msg("Alice", "Bob", 1, "one"), private_msg("Alice", "Bob", 2, "two")
    store.enqueue("bob", first)
    store.enqueue("bob", second)
    store.take("bob", "alice", b"p1")  # in the same transaction as its enqueue
    assert store.mailbox("bob") == [second]
    store.commit()
    store.take("bob", "alice", b"p2")
    store.take("bob", "carol", b"p2")  # another sender's id: nothing
    store.commit()
    assert store.mailbox("bob") == []
    assert store.mailbox_usage("bob") == (0, 0)


def test_delivered_needs_the_right_sender_and_recipient(store: Store) -> None:
    store.enqueue("bob", private_msg("Alice", "Bob", 1))
    assert not store.delivered("bob", "carol", b"p1")
    assert not store.delivered("dave", "alice", b"p1")
    assert len(store.mailbox("bob")) == 1


def test_receipts_are_handed_over_in_order_until_cleared(store: Store) -> None:
    store.add_receipt("alice", b"m1", "Bob", 10)
    store.add_receipt("alice", b"m2", "Carol", 20)
    store.add_receipt("dave", b"m3", "Bob", 30)
    store.add_receipt("alice", b"m1", "Bob", 15)  # owed again: keeps its place
    assert store.receipts("alice") == [(b"m1", "Bob", 15), (b"m2", "Carol", 20)]
    store.clear_receipt("alice", b"m1")
    store.clear_receipt("alice", b"never")
    assert store.receipts("alice") == [(b"m2", "Carol", 20)]
    assert store.receipts("erin") == []


def test_seen_gives_back_the_status_remembered(store: Store) -> None:
    assert store.seen("alice", b"m1") is None
    store.remember("alice", b"m1", "OK", 10)
    store.remember("alice", b"m2", "QUEUED", 10)
    store.remember("alice", b"m2", "DELIVERED", 11)
    assert (store.seen("alice", b"m1"), store.seen("alice", b"m2")) == ("OK", "DELIVERED")
    assert store.seen("bob", b"m1") is None


def test_search_needs_all_words_and_gives_newest_first(store: Store) -> None:
    store.add_room_message(room_msg("*", 1, "the quick brown fox"))
    store.add_room_message(room_msg("*", 2, "a quick word"))
    store.add_room_message(room_msg("*", 3, "Quick, brown and done"))
    assert bodies(store.search("alice", "quick brown", 10)) == [
        "Quick, brown and done",
        "the quick brown fox",
    ]
    assert bodies(store.search("alice", "QUICK", 2)) == ["Quick, brown and done", "a quick word"]
    assert store.search("alice", "quick purple", 10) == []
    assert store.search("alice", "quick", 0) == []


def test_search_gives_messages_of_the_same_millisecond_newest_first(store: Store) -> None:
    """PROTOCOL.md 13.2: newest first, and within one millisecond the one kept last first."""
    store.set_member("alice", "#a", True)
    for seq in range(2, 5):
        store.add_room_message(room_msg("*", seq, f"same word {seq}", time_ms=5))
    store.enqueue("alice", private_msg("Bob", "Alice", 1, "same word mail", time_ms=5))
    store.add_room_message(room_msg("#a", 5, "same word 5", time_ms=5))
    for seq in range(6, 8):
        store.add_room_message(room_msg("*", seq, f"same word {seq}", time_ms=5))
    expected = ["7", "6", "5", "mail", "4", "3", "2"]
    assert [m.body.decode().split()[-1] for m in store.search("alice", "same word", 10)] == expected
    store.commit()
    assert [m.body.decode().split()[-1] for m in store.search("alice", "word", 3)] == expected[:3]


def test_search_matches_the_start_of_words(store: Store) -> None:
    store.add_room_message(room_msg("*", 1, "hello world, don't panic"))
    assert len(store.search("alice", "hello", 10)) == 1
    assert len(store.search("alice", "world don't", 10)) == 1
    assert len(store.search("alice", "hell wor", 10)) == 1
    assert store.search("alice", "ello", 10) == []  # the start of a word, not its middle
    assert len(store.search("alice", "don'", 10)) == 1 and len(store.search("alice", "don't p", 10)) == 1
    assert store.search("alice", "do't", 10) == []  # a run's parts but the last are whole words
    assert len(store.search("alice", "panic don't", 10)) == 1  # words in any order
    assert store.search("alice", "don't't", 10) == []  # a word's parts must follow each other


def test_search_skips_rooms_the_user_is_not_in_now(store: Store) -> None:
    store.set_member("alice", "#a", True)
    store.set_member("bob", "#b", True)
    store.add_room_message(room_msg("#a", 1, "secret plan a", time_ms=10))
    store.add_room_message(room_msg("#b", 1, "secret plan b", time_ms=20))
    store.add_room_message(room_msg("*", 1, "secret lobby", time_ms=30))
    assert bodies(store.search("alice", "secret", 10)) == ["secret lobby", "secret plan a"]
    store.set_member("alice", "#a", False)
    assert bodies(store.search("alice", "secret", 10)) == ["secret lobby"]


def test_search_finds_private_messages_to_or_from_the_user_only(store: Store) -> None:
    store.enqueue("bob", private_msg("Alice", "Bob", 1, "secret to bob"))
    store.enqueue("alice", private_msg("Bob", "Alice", 2, "secret to alice"))
    store.enqueue("dave", private_msg("Carol", "Dave", 3, "secret to dave"))
    store.delivered("bob", "alice", b"p1")  # delivered mail stays searchable
    assert bodies(store.search("bob", "secret", 10)) == ["secret to alice", "secret to bob"]
    assert bodies(store.search("alice", "secret", 10)) == ["secret to alice", "secret to bob"]
    assert bodies(store.search("erin", "secret", 10)) == []


@pytest.mark.parametrize(
    "words",
    [
        '"',
        "*",
        "OR",
        "AND",
        "NOT",
        "NEAR(",
        "NEAR(x y",
        "body:x",
        "^x",
        "-x",
        'a"b',
        "(",
        "x*",
        "' OR 1=1 --",
    ],
)
def test_search_words_are_never_query_syntax(store: Store, words: str) -> None:
    store.add_room_message(room_msg("*", 1, 'a"b or not near x and 1=1 body'))
    store.search("alice", words, 10)  # must not raise
    store.search("alice", f"x {words} body", 10)


def test_search_treats_operators_as_plain_words(store: Store) -> None:
    store.add_room_message(room_msg("*", 1, "this or that"))
    store.add_room_message(room_msg("*", 2, "near the end"))
    assert bodies(store.search("alice", "OR", 10)) == ["this or that"]
    assert bodies(store.search("alice", "NEAR( end", 10)) == ["near the end"]
    assert bodies(store.search("alice", 'this "that"', 10)) == ["this or that"]
    assert store.search("alice", '" * (', 10) == []  # no word left: nothing, not everything


@pytest.mark.parametrize("separator", ["\x00", "\x01", "\t", "\x1b", "\x1f", "\x7f", "\x85", "\x9f"])
def test_a_control_character_between_search_words_separates_them(store: Store, separator: str) -> None:
    store.add_room_message(room_msg("*", 1, "alpha then beta"))
    # Two words anywhere in the message, not a phrase "alpha beta" (punctuation would make one).
    assert bodies(store.search("alice", f"alpha{separator}beta", 10)) == ["alpha then beta"]
    assert store.search("alice", f"alpha{separator}gamma", 10) == []
    assert store.search("alice", separator * 3, 10) == []  # no word at all: nothing
    assert bodies(store.search("alice", f'{separator}"then{separator}"', 10)) == ["alpha then beta"]


def test_expire_forgets_old_messages_receipts_and_seen_ids_but_not_waiting_mail(store: Store) -> None:
    store.add_room_message(room_msg("*", 1, "old news", time_ms=100))
    store.add_room_message(room_msg("*", 2, "new news", time_ms=2000))
    store.enqueue("bob", private_msg("Alice", "Bob", 1, "old delivered news", time_ms=100))
    store.enqueue("bob", private_msg("Alice", "Bob", 2, "old waiting news", time_ms=100))
    store.delivered("bob", "alice", b"p1")
    store.remember("alice", b"old", "OK", 100)
    store.remember("alice", b"new", "OK", 2000)
    store.add_receipt("alice", b"old", "Bob", 100)
    store.add_receipt("alice", b"new", "Bob", 2000)

    assert store.expire(before_ms=1000) == 2
    assert bodies(store.room_history("*", FOREVER, 10)) == ["new news"]
    assert bodies(store.mailbox("bob")) == ["old waiting news"]
    assert bodies(store.search("bob", "news", 10)) == ["new news", "old waiting news"]
    assert (store.seen("alice", b"old"), store.seen("alice", b"new")) == (None, "OK")
    assert store.receipts("alice") == [(b"new", "Bob", 2000)]
    assert store.expire(before_ms=1000) == 0


def test_search_keeps_working_when_expiry_took_the_newest_messages(store: Store) -> None:
    # Expiry may remove the newest rows too; their ids come back for new messages.
    store.add_room_message(room_msg("*", 1, "old words", time_ms=100))
    assert bodies(store.search("bob", "words", 10)) == ["old words"]  # indexed
    assert store.expire(before_ms=1000) == 1
    store.add_room_message(room_msg("*", 2, "new words", time_ms=2000))
    assert bodies(store.search("bob", "words", 10)) == ["new words"]
    assert store.expire(before_ms=3000) == 1  # unindexing it must not break the index
    store.add_room_message(room_msg("*", 3, "newer words", time_ms=4000))
    assert bodies(store.search("bob", "words", 10)) == ["newer words"]
    store.commit()


def test_a_search_indexes_a_bounded_backlog_and_the_rest_comes_later(tmp_path: Path) -> None:
    from zchat.broker.sqlite_store import INDEX_BATCH, SEARCH_INDEX_BATCHES

    store = SqliteStore.open(tmp_path / "z.db")
    bound = INDEX_BATCH * SEARCH_INDEX_BATCHES
    for seq in range(1, bound + 2):  # one more than a search will index before it answers
        store.add_room_message(room_msg("*", seq, f"word {seq}", time_ms=seq))
    assert bodies(store.search("bob", "word", 1)) == [f"word {bound}"]
    while store.catch_up():  # the broker does this a batch at a time, idle or each second
        pass
    assert bodies(store.search("bob", "word", 1)) == [f"word {bound + 1}"]
    store.close()


# --- the file ----------------------------------------------------------------------


def fill(store: Store) -> None:
    store.add_user("alice")
    store.set_member("alice", "#a", True)
    store.add_room_message(room_msg("#a", 1, "kept words"))
    store.used_seq("#a", 2)
    store.enqueue("bob", private_msg("Alice", "Bob", 1, "kept mail"))
    store.add_receipt("alice", b"m1", "Bob", 10)
    store.remember("alice", b"m1", "OK", 10)


def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    fill(store := SqliteStore.open(tmp_path / "z.db"))
    store.close()
    again = SqliteStore.open(tmp_path / "z.db")
    assert again.is_known("alice")
    assert again.rooms_of("alice") == {"#a"}
    assert bodies(again.room_history("#a", FOREVER, 10)) == ["kept words"]
    assert again.last_seq("#a") == 2  # the message, then a JOIN in the room
    assert bodies(again.mailbox("bob")) == ["kept mail"]
    assert again.receipts("alice") == [(b"m1", "Bob", 10)]
    assert again.seen("alice", b"m1") == "OK"
    assert bodies(again.search("alice", "kept", 10)) == ["kept mail", "kept words"]
    again.close()


def test_writes_wait_for_commit(tmp_path: Path) -> None:
    """One transaction per wake-up: what was not committed is not in the file."""
    store = SqliteStore.open(tmp_path / "z.db")
    store.add_room_message(room_msg("#a", 1))
    store.add_user("alice")
    store.commit()
    store.add_room_message(room_msg("#a", 2))
    store.add_user("bob")
    store._db.close()  # no commit: as if the broker died here
    again = SqliteStore.open(tmp_path / "z.db")
    assert (again.is_known("alice"), again.is_known("bob")) == (True, False)
    assert [m.seq for m in again.room_history("#a", FOREVER, 10)] == [1]
    again.close()


def test_a_store_already_open_is_refused_at_open_naming_it(tmp_path: Path) -> None:
    """One broker per file: a second one fails at once and clearly, not at its first write
    (the file is held in SQLite's exclusive locking mode)."""
    first = SqliteStore.open(tmp_path / "z.db")
    with pytest.raises(StoreError, match="another process") as refused:
        SqliteStore.open(tmp_path / "z.db")
    assert str(tmp_path / "z.db") in str(refused.value)
    first.close()
    SqliteStore.open(tmp_path / "z.db").close()  # free once the first lets go


def test_the_wal_index_is_kept_in_memory_not_in_a_mapped_file(tmp_path: Path) -> None:
    """No -shm file: SQLite maps it, and a write the file system then refuses is SIGBUS."""
    store = SqliteStore.open(tmp_path / "z.db")
    store.add_room_message(room_msg("*", 1, BIG))
    store.commit()
    assert (tmp_path / "z.db-wal").exists() and not (tmp_path / "z.db-shm").exists()
    store.close()


CHILD = """
import sys, time
from zchat.broker.sqlite_store import SqliteStore
from zchat.broker.store import StoredMessage
store = SqliteStore.open(sys.argv[1])
store.add_room_message(StoredMessage("*", 1, b"m1", "Alice", "*", 1, b"committed words"))
store.commit()
store.add_room_message(StoredMessage("*", 2, b"m2", "Alice", "*", 2, b"uncommitted words"))
print("committed", flush=True)
time.sleep(60)
"""


def killed_after_commit(path: Path) -> SqliteStore:
    """Run a broker-like child that commits one message, writes another, and SIGKILL it."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 20)
        assert ready and child.stdout.readline() == "committed\n", "the child did not commit in time"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait(timeout=10)
    return SqliteStore.open(path)


def test_committed_data_survives_sigkill(tmp_path: Path) -> None:
    store = killed_after_commit(tmp_path / "z.db")
    assert bodies(store.room_history("*", FOREVER, 10))[:1] == ["committed words"]
    assert bodies(store.search("alice", "committed", 10)) == ["committed words"]
    store.close()


def test_uncommitted_data_does_not_survive_sigkill(tmp_path: Path) -> None:
    store = killed_after_commit(tmp_path / "z.db")
    assert bodies(store.room_history("*", FOREVER, 10)) == ["committed words"]
    assert store.last_seq("*") == 1
    store.close()


def test_a_full_disk_rolls_back_all_since_the_last_commit_and_names_the_messages_lost(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "z.db")
    store.add_room_message(room_msg("*", 1, "kept before"))
    store.remember("alice", b"*1", "accepted", 1)
    store.commit()
    fill_disk(store)
    store.add_room_message(room_msg("*", 2, "small"))  # fits where it is: lost all the same
    store.remember("alice", b"*2", "accepted", 2)
    store.add_room_message(room_msg("*", 3, BIG))
    store.remember("alice", b"*3", "accepted", 3)
    store.enqueue("bob", private_msg("Alice", "Bob", 4, BIG))
    store.remember("alice", b"p4", "stored", 4)
    store.add_private("carol", private_msg("Alice", "Carol", 5, BIG))  # delivered: not refused
    store.remember("alice", b"p5", "accepted", 5)
    store.used_seq("*", 4)  # say, a JOIN after them
    store.set_member("alice", "#a", True)  # writes what waits first: the failure is met here
    with pytest.raises(StoreFailed) as failed:
        store.commit()
    # The messages that were to be kept, (sender key, id): the shell refuses them.
    assert failed.value.refused == {("alice", b"*2"), ("alice", b"*3"), ("alice", b"p4")}
    # Nothing half written, and the ids forgotten: a resend is new.
    assert bodies(store.room_history("*", FOREVER, 10)) == ["kept before"]
    assert store.mailbox("bob") == []
    assert [store.seen("alice", i) for i in (b"*1", b"*2", b"*3", b"p4")] == ["accepted", None, None, None]
    # The rest is kept: membership, and every sequence number handed out (never reused).
    assert (store.rooms_of("alice"), store.last_seq("*")) == ({"#a"}, 4)
    fill_disk(store, full=False)  # space comes back: storing resumes
    store.add_room_message(room_msg("*", 5, BIG))
    store.remember("alice", b"*3", "accepted", 5)
    assert store.commit() is True
    store.close()
    again = SqliteStore.open(tmp_path / "z.db")
    assert bodies(again.room_history("*", FOREVER, 10)) == ["kept before", BIG]
    assert (again.rooms_of("alice"), again.last_seq("*"), again.seen("alice", b"*3")) == (
        {"#a"},
        5,
        "accepted",
    )
    again.close()


def test_a_write_the_full_disk_cannot_take_is_refused_and_the_rest_stays(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "z.db")
    store.commit()
    fill_disk(store)
    with pytest.raises(StoreFailed):
        for n in range(10_000):  # a page holds a few hundred
            store.set_member(f"user{n}", "#a", True)
    made = len(store.members("#a"))
    assert 0 < made < 10_000 and f"user{made}" not in store.members("#a")
    with pytest.raises(StoreFailed) as failed:  # commit() reports it too, with nothing refused
        store.commit()
    assert failed.value.refused == frozenset()
    store.close()
    again = SqliteStore.open(tmp_path / "z.db")
    assert len(again.members("#a")) == made  # what was made before the failure was written
    again.close()


def test_indexing_on_a_full_disk_waits_and_search_finds_what_is_indexed(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "z.db")
    store.add_room_message(room_msg("*", 1, "old words"))
    assert store.catch_up() is False
    for seq in range(2, 50):
        store.add_room_message(room_msg("*", seq, "new " + BIG))
    store.commit()
    fill_disk(store)
    assert store.catch_up() is False  # nothing more to do now: tried again at the next sweep
    assert bodies(store.search("bob", "old", 10)) == ["old words"]
    with pytest.raises(StoreFailed) as failed:
        store.commit()
    assert failed.value.refused == frozenset()
    fill_disk(store, full=False)
    assert len(store.search("bob", "new", 100)) == 48
    store.close()


def test_file_is_in_wal_mode_with_the_schema_version(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path / "z.db").close()
    db = sqlite3.connect(tmp_path / "z.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path / "var" / "lib" / "zchat" / "z.db").close()
    assert (tmp_path / "var" / "lib" / "zchat" / "z.db").is_file()


def test_memory_database_needs_no_file() -> None:
    store = SqliteStore.open(":memory:")
    fill(store)
    store.commit()
    assert bodies(store.search("alice", "kept", 10)) == ["kept mail", "kept words"]
    store.close()


def test_search_index_stays_in_step_after_expire(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "z.db")
    fill(store)
    store.add_room_message(StoredMessage("#a", 2, b"bin", "Alice", "#a", 5, b"\xff\xfe not utf-8 \x80"))
    store.delivered("bob", "alice", b"p1")
    assert store.expire(before_ms=FOREVER) == 3
    store.close()
    db = sqlite3.connect(tmp_path / "z.db")
    db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")  # raises if out of step
    assert db.execute(
        "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'kept OR utf'"
    ).fetchone() == (0,)
    db.close()


def test_store_written_by_a_newer_zchat_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "z.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(
        StoreError, match=rf"newer zchat \(schema {SCHEMA_VERSION + 1}, this one knows {SCHEMA_VERSION}\)"
    ):
        SqliteStore.open(tmp_path / "z.db")


def test_corrupt_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "z.db"
    path.write_bytes(b"this is no database " * 500)
    with pytest.raises(StoreError, match="not a database") as refused:
        SqliteStore.open(path)
    assert str(path) in str(refused.value)


@pytest.mark.parametrize("where", ["under a file", "a directory"])
def test_unwritable_path_is_refused_naming_it(tmp_path: Path, where: str) -> None:
    """Fails even for root, who writes through chmod: a file cannot hold a directory, nor a
    directory be opened as a database."""
    (tmp_path / "afile").write_text("")
    path = tmp_path / "afile" / "z.db" if where == "under a file" else tmp_path
    with pytest.raises(StoreError) as refused:
        SqliteStore.open(path)
    assert str(path) in str(refused.value)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` unwritable, also for root: file modes for others, the
    immutable attribute (chattr +i) for root, who writes through modes."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        path.parent.chmod(0o555)
        try:
            yield
        finally:
            path.parent.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("root writes through file modes, and this file system cannot make a file immutable")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_file_is_refused_naming_it(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path / "z.db").close()
    with read_only(tmp_path / "z.db"), pytest.raises(StoreError) as refused:
        SqliteStore.open(tmp_path / "z.db")
    assert str(tmp_path / "z.db") in str(refused.value)


def test_a_version_1_store_is_migrated_and_its_messages_stay_searchable(tmp_path: Path) -> None:
    from zchat.broker.sqlite_store import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute(
        "INSERT INTO messages VALUES (NULL, '*', 1, x'6d31', 'alice', 'alice', '*', '*', 5, x'6f6c64206e657773', 0)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = SqliteStore.open(path)
    try:
        assert [m.body for m in store.search("bob", "news", 10)] == [b"old news"]
        store.add_room_message(StoredMessage("*", 2, b"m2", "bob", "*", 6, b"fresh news"))
        store.commit()
        assert store.catch_up() is False  # one new message: indexed in one step, nothing left
        assert [m.body for m in store.search("bob", "news", 10)] == [b"fresh news", b"old news"]
    finally:
        store.close()


def test_a_room_subject_survives_reopening_and_a_version_3_file_gains_the_table(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "z.db")
    store.set_subject("#a", "kept", "Alice", 5)
    store.commit()
    store.close()
    reopened = SqliteStore.open(tmp_path / "z.db")
    assert reopened.subject("#a") == ("kept", "Alice", 5)
    reopened.close()
    db = sqlite3.connect(tmp_path / "z.db")  # as zchat before subjects left it
    db.execute("DROP TABLE subjects")
    db.execute("DROP INDEX messages_taken")  # schema 5's
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    again = SqliteStore.open(tmp_path / "z.db")
    assert again.subject("#a") is None
    again.set_subject("#a", "new", "bob", 6)
    assert again.subject("#a") == ("new", "bob", 6)
    again.close()
