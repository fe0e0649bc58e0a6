"""What the broker keeps: rooms, history, mailboxes, receipts, seen ids.

The routing core asks a `Store` and never does I/O itself. `MemoryStore`
keeps everything in dicts (tests, `--store :memory:`); sqlite_store.py keeps
the same on disk. Writes become durable at `commit()`, which the shell calls
once per wake-up, before it sends the acknowledgements of that wake-up.

Users are named by their name key (lower case, see protocol.name_key).
Rooms are named with their `#`; the lobby is "*".
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


def open_store(path: str) -> Store:
    """`:memory:` keeps nothing across restarts; anything else is an SQLite file."""
    if path == ":memory:":
        return MemoryStore()
    from zchat.broker.sqlite_store import SqliteStore  # only brokers with a file need sqlite3

    return SqliteStore.open(path)


class StoredMessage(NamedTuple):
    """One kept message. A NamedTuple, not a frozen dataclass: one is made for every
    message routed, and a frozen dataclass takes three times as long to make."""

    room: str  # "#name" or "*" for a room message; "" for a private one
    seq: int  # the room's sequence number; 0 for a private message
    msg_id: bytes
    sender: str  # as registered, with its case
    target: str  # the room, or the recipient's name as registered
    time_ms: int
    body: bytes


class StoreError(Exception):
    """The store cannot be used (newer schema, corrupt or read-only file)."""


class StoreFailed(StoreError):
    """Writes since the last commit were lost (a full disk, an unwritable file); the store
    rolled them back as a whole, and goes on: the next commit may well succeed.

    `refused` is (sender's name key, message id) of each message that was to be kept (a room
    or lobby message, mail for an offline user) and is not: its ACK must not go out, and its
    id is forgotten, so that a resend is taken as new. Raised by commit(), which reports
    every loss since the last commit, also those met first by a read; a write that cannot
    be made at all (a room's membership, say) raises it at once, with nothing refused
    beyond that one write."""

    def __init__(self, text: str, refused: frozenset[tuple[str, bytes]] = frozenset()) -> None:
        super().__init__(text)
        self.refused = refused


class Store(Protocol):
    # --- rooms and history ---------------------------------------------------
    def add_room_message(self, message: StoredMessage) -> None: ...

    def room_history(self, room: str, before_seq: int, limit: int, after_seq: int = 0) -> list[StoredMessage]:
        """The last `limit` messages of `room` with after_seq < seq < before_seq, oldest first."""
        ...

    def used_seq(self, room: str, seq: int) -> None:
        """`seq` went out on `room`'s topic (a message, or a JOIN/LEAVE that is
        not kept): it is never handed out again, also after a restart."""
        ...

    def last_seq(self, room: str) -> int:
        """The highest seq used on `room`, 0 if none: sequences go on after a restart."""
        ...

    def set_member(self, user: str, room: str, member: bool) -> None: ...

    def rooms_of(self, user: str) -> set[str]: ...

    def members(self, room: str) -> set[str]: ...

    def room_sizes(self) -> dict[str, int]:
        """Every room with at least one member, and its member count."""
        ...

    # --- users ---------------------------------------------------------------
    def add_user(self, user: str) -> None:
        """Remember that `user` has registered once: it may get mail when offline."""
        ...

    def is_known(self, user: str) -> bool: ...

    def key_of(self, user: str) -> str | None:
        """The CURVE public key (z85) that owns the name, if one does."""
        ...

    def bind(self, user: str, key: str) -> None:
        """From now on only `key` may register as `user` (trust on first use)."""
        ...

    # --- room subjects (PROTOCOL.md 13.7) ---------------------------------------
    def set_subject(self, room: str, text: str, setter: str, time_ms: int) -> None:
        """The room's subject (what /topic shows) from now on; "" clears it."""
        ...

    def subject(self, room: str) -> tuple[str, str, int] | None:
        """The room's subject, who set it and when; None when it has none."""
        ...

    # --- mailboxes: private messages until their recipient confirms them --------
    def enqueue(self, recipient: str, message: StoredMessage) -> None:
        """Into the recipient's mailbox (mail for a user offline, or a message handed to
        it live): kept until delivered() takes it out, and searchable."""
        ...

    def add_private(self, recipient: str, message: StoredMessage) -> None:
        """A private message handed to its online recipient: kept for search only."""
        ...

    def mailbox(self, recipient: str) -> list[StoredMessage]:
        """Undelivered private messages for `recipient`, in the order stored."""
        ...

    def mailbox_usage(self, recipient: str) -> tuple[int, int]:
        """(messages, body bytes) waiting for `recipient`."""
        ...

    def delivered(self, recipient: str, sender: str, msg_id: bytes) -> bool:
        """Remove a message from the mailbox; False if it was not there."""
        ...

    def take(self, recipient: str, sender: str, msg_id: bytes) -> None:
        """delivered() without its answer: the store may put it off to the commit, as it
        does with new messages (one confirmation per private message)."""
        ...

    # --- delivery receipts owed to senders -----------------------------------
    def add_receipt(self, sender: str, msg_id: bytes, recipient: str, time_ms: int) -> None: ...

    def receipts(self, sender: str) -> list[tuple[bytes, str, int]]:
        """(msg_id, recipient as registered, time_ms) of receipts not yet handed over."""
        ...

    def clear_receipt(self, sender: str, msg_id: bytes) -> None: ...

    # --- duplicates ------------------------------------------------------------
    def seen(self, sender: str, msg_id: bytes) -> str | None:
        """The ACK status given to this (sender, id) before, or None if it is new."""
        ...

    def seen_at(self, sender: str, msg_id: bytes) -> int | None:
        """The time (ms) remembered with this (sender, id), or None if it is new."""
        ...

    def remember(self, sender: str, msg_id: bytes, status: str, time_ms: int) -> None: ...

    # --- search and retention --------------------------------------------------
    def search(self, user: str, words: str, limit: int) -> list[StoredMessage]:
        """Messages with all `words`, newest first, that `user` was allowed to see:
        in the lobby and rooms it is a member of now, and private ones to or from it
        (delivered or not, until they expire).

        Words are separated by white space or control characters (a NUL too: see
        `search_words`), and match the start of words, without regard to case; a word with
        punctuation inside ("don't") matches its parts in a row, only the last as a start
        ("don" then "t..."); words with no letter or
        digit are ignored, and a search with none left finds nothing."""
        ...

    def catch_up(self) -> bool:
        """Work put off the hot path (indexing for search), a bounded step of it,
        done when the broker is idle; True if more is waiting."""
        ...

    def expire(self, before_ms: int) -> int:
        """Forget messages, receipts and seen ids older than `before_ms`; return how many messages.

        Undelivered private messages are kept, whatever their age."""
        ...

    def commit(self) -> bool:
        """Make every write since the last commit durable; True if messages were among them.

        Raises StoreFailed (having rolled back) for what it could not write."""
        ...

    def close(self) -> None: ...


#: MemoryStore keeps this much, so a long-running broker stays bounded.
MEMORY_HISTORY = 10_000  # messages per room
MEMORY_SEEN = 100_000  # (sender, id) pairs


class Kept(NamedTuple):
    """A message in MemoryStore, numbered in the order kept (SQLite's row id), for
    search to give the messages of one millisecond newest first."""

    order: int
    message: StoredMessage


class KeptPrivate(NamedTuple):
    order: int
    sender: str  # name keys
    recipient: str
    message: StoredMessage


@dataclass
class MemoryStore:
    """A Store in memory: nothing survives the process, and only recent history."""

    history: dict[str, list[Kept]] = field(default_factory=lambda: defaultdict(list))
    rooms: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    users: set[str] = field(default_factory=set)
    owners: dict[str, str] = field(default_factory=dict)
    mail: dict[str, list[StoredMessage]] = field(default_factory=lambda: defaultdict(list))
    private: list[KeptPrivate] = field(default_factory=list)
    owed: dict[str, dict[bytes, tuple[str, int]]] = field(default_factory=lambda: defaultdict(dict))
    seen_ids: dict[tuple[str, bytes], tuple[str, int]] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)  # outlives expiry: sequences never go back
    subjects: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def add_room_message(self, message: StoredMessage) -> None:
        messages = self.history[message.room]
        messages.append(Kept(next(self.counter), message))
        if len(messages) > MEMORY_HISTORY * 1.1:  # trim now and then, not at every message
            del messages[: len(messages) - MEMORY_HISTORY]
        self.used_seq(message.room, message.seq)

    def used_seq(self, room: str, seq: int) -> None:
        self.seqs[room] = max(seq, self.seqs.get(room, 0))

    def room_history(self, room: str, before_seq: int, limit: int, after_seq: int = 0) -> list[StoredMessage]:
        if limit <= 0:
            return []
        kept = self.history.get(room, [])  # in the order of seq: a page is found by bisection
        end = bisect.bisect_left(kept, before_seq, key=lambda k: k[1].seq)
        start = max(bisect.bisect_right(kept, after_seq, 0, end, key=lambda k: k[1].seq), end - limit)
        return [m for _, m in kept[start:end]]

    def last_seq(self, room: str) -> int:
        return self.seqs.get(room, 0)

    def set_member(self, user: str, room: str, member: bool) -> None:
        if member:
            self.rooms[room].add(user)
        else:
            self.rooms[room].discard(user)

    def rooms_of(self, user: str) -> set[str]:
        return {room for room, members in self.rooms.items() if user in members}

    def members(self, room: str) -> set[str]:
        return set(self.rooms.get(room, ()))

    def room_sizes(self) -> dict[str, int]:
        return {room: len(members) for room, members in self.rooms.items() if members}

    def add_user(self, user: str) -> None:
        self.users.add(user)

    def is_known(self, user: str) -> bool:
        return user in self.users

    def key_of(self, user: str) -> str | None:
        return self.owners.get(user)

    def bind(self, user: str, key: str) -> None:
        self.owners[user] = key

    def set_subject(self, room: str, text: str, setter: str, time_ms: int) -> None:
        if text:
            self.subjects[room] = (text, setter, time_ms)
        else:
            self.subjects.pop(room, None)

    def subject(self, room: str) -> tuple[str, str, int] | None:
        return self.subjects.get(room)

    def enqueue(self, recipient: str, message: StoredMessage) -> None:
        self.mail[recipient].append(message)
        self.add_private(recipient, message)  # searchable, and trimmed as the others

    def add_private(self, recipient: str, message: StoredMessage) -> None:
        self.private.append(KeptPrivate(next(self.counter), message.sender.lower(), recipient, message))
        if len(self.private) > MEMORY_HISTORY * 1.1:
            del self.private[: len(self.private) - MEMORY_HISTORY]

    def mailbox(self, recipient: str) -> list[StoredMessage]:
        return list(self.mail.get(recipient, ()))

    def mailbox_usage(self, recipient: str) -> tuple[int, int]:
        waiting = self.mail.get(recipient, [])
        return len(waiting), sum(len(m.body) for m in waiting)

    def delivered(self, recipient: str, sender: str, msg_id: bytes) -> bool:
        waiting = self.mail.get(recipient, [])
        for i, m in enumerate(waiting):
            if m.msg_id == msg_id and m.sender.lower() == sender:
                del waiting[i]
                return True
        return False

    def take(self, recipient: str, sender: str, msg_id: bytes) -> None:
        self.delivered(recipient, sender, msg_id)

    def add_receipt(self, sender: str, msg_id: bytes, recipient: str, time_ms: int) -> None:
        self.owed[sender][msg_id] = (recipient, time_ms)

    def receipts(self, sender: str) -> list[tuple[bytes, str, int]]:
        return [(msg_id, who, t) for msg_id, (who, t) in self.owed.get(sender, {}).items()]

    def clear_receipt(self, sender: str, msg_id: bytes) -> None:
        self.owed.get(sender, {}).pop(msg_id, None)

    def seen(self, sender: str, msg_id: bytes) -> str | None:
        known = self.seen_ids.get((sender, msg_id))
        return known[0] if known else None

    def seen_at(self, sender: str, msg_id: bytes) -> int | None:
        known = self.seen_ids.get((sender, msg_id))
        return known[1] if known else None

    def remember(self, sender: str, msg_id: bytes, status: str, time_ms: int) -> None:
        self.seen_ids[(sender, msg_id)] = (status, time_ms)
        if len(self.seen_ids) > MEMORY_SEEN:
            del self.seen_ids[next(iter(self.seen_ids))]  # the oldest: dicts keep insertion order

    def search(self, user: str, words: str, limit: int) -> list[StoredMessage]:
        wanted = [t for t in map(_words, search_words(words)) if t]
        if not wanted:
            return []
        allowed = self.rooms_of(user) | {"*"}
        candidates = [kept for room in allowed for kept in self.history.get(room, ())]
        candidates += [Kept(k.order, k.message) for k in self.private if user in (k.sender, k.recipient)]
        hits = [k for k in candidates if _has_all(_words(k.message.body.decode("utf-8", "replace")), wanted)]
        hits.sort(key=lambda k: (k.message.time_ms, k.order), reverse=True)  # as SQLite: time, then row id
        return [k.message for k in hits[:limit]]

    def expire(self, before_ms: int) -> int:
        count = 0
        for room, messages in self.history.items():
            kept = [k for k in messages if k.message.time_ms >= before_ms]
            count += len(messages) - len(kept)
            self.history[room] = kept
        kept_private = [
            k
            for k in self.private
            if k.message.time_ms >= before_ms or k.message in self.mail.get(k.recipient, ())
        ]
        count += len(self.private) - len(kept_private)
        self.private = kept_private
        self.seen_ids = {k: v for k, v in self.seen_ids.items() if v[1] >= before_ms}
        for owed in self.owed.values():
            for msg_id in [i for i, (_, t) in owed.items() if t < before_ms]:
                del owed[msg_id]
        return count

    def catch_up(self) -> bool:
        return False

    def commit(self) -> bool:
        return False  # nothing to write to

    def close(self) -> None:
        pass


#: Control characters (Unicode's Cc): between search words they separate them, as spaces do.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def search_words(words: str) -> list[str]:
    """The words of a search, for both stores alike. A control character is a separator:
    a NUL inside an FTS5 string would end the query text there (SQLite reads it as C)."""
    return _CONTROL.sub(" ", words).split()


def _words(text: str) -> list[str]:
    """Lower-case runs of letters and digits: what SQLite's FTS5 unicode61 tokenizer indexes."""
    return re.findall(r"[^\W_]+", text.lower())


def _has_all(words: list[str], wanted: list[list[str]]) -> bool:
    """Every run of `wanted` appears in `words`, its words in a row: whole words, and the
    last one the start of a word (as FTS5's prefix query `"run" *`)."""
    return all(any(_run_at(words, i, run) for i in range(len(words))) for run in wanted)


def _run_at(words: list[str], i: int, run: list[str]) -> bool:
    *whole, start = run
    end = i + len(whole)
    return words[i:end] == whole and end < len(words) and words[end].startswith(start)
