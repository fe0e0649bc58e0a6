"""The broker's Store on disk: one SQLite file, schema migrated on open.

Same behaviour as store.MemoryStore; message bodies are indexed with FTS5 for
`search`. Nothing is durable until `commit()`, which the shell calls once per wake-up.
A write that fails (a full disk) rolls the whole transaction back, and `commit()` says
which messages were lost with it (StoreFailed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from pathlib import Path
from typing import TypeVar

from zchat.broker.store import StoredMessage, StoreError, StoreFailed, search_words
from zchat.common.protocol import name_key

log = logging.getLogger("zchat.broker")
S = TypeVar("S", bound="SqliteStore")

# One entry per schema version, applied in order; never edit a released one, append.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # room is "" for a private message; pending marks it as still in the recipient's mailbox
        # (private messages stay after delivery so that search finds them until expiry).
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY, room TEXT NOT NULL, seq INTEGER NOT NULL, msg_id BLOB NOT NULL,
            sender TEXT NOT NULL, sender_key TEXT NOT NULL, target TEXT NOT NULL, target_key TEXT NOT NULL,
            time_ms INTEGER NOT NULL, body BLOB NOT NULL, pending INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX messages_room ON messages (room, seq)",
        "CREATE INDEX messages_mailbox ON messages (target_key, pending, id)",
        "CREATE INDEX messages_time ON messages (time_ms)",
        # Kept apart from messages so that a room's sequence goes on after expiry emptied it.
        "CREATE TABLE room_seqs (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE TABLE members (room TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (room, user)) WITHOUT ROWID",
        "CREATE INDEX members_user ON members (user)",
        "CREATE TABLE users (user TEXT PRIMARY KEY) WITHOUT ROWID",
        # A rowid table: receipts are handed over in the order they were owed.
        """CREATE TABLE receipts (sender TEXT NOT NULL, msg_id BLOB NOT NULL, recipient TEXT NOT NULL,
            time_ms INTEGER NOT NULL, PRIMARY KEY (sender, msg_id))""",
        """CREATE TABLE seen (sender TEXT NOT NULL, msg_id BLOB NOT NULL, status TEXT NOT NULL,
            time_ms INTEGER NOT NULL, PRIMARY KEY (sender, msg_id)) WITHOUT ROWID""",
        # External content: the index reads the body from messages, no second copy. The triggers
        # hand FTS the very same stored value on insert and delete, so even a body that is not
        # UTF-8 is removed with the tokens it was indexed with. Diacritics are kept to match
        # MemoryStore ("café" is not "cafe").
        """CREATE VIRTUAL TABLE messages_fts USING fts5(body, content='messages', content_rowid='id',
            tokenize='unicode61 remove_diacritics 0')""",
        """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body); END""",
        """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body); END""",
    ),
    # 2: indexing for search leaves the hot path. Indexing a row costs more than storing it,
    # so rows are indexed in bulk when the broker is idle or a search comes (catch_up());
    # fts_state.upto is the last message id indexed, and only indexed rows are unindexed.
    (
        "DROP TRIGGER messages_fts_insert",
        "DROP TRIGGER messages_fts_delete",
        "CREATE TABLE fts_state (upto INTEGER NOT NULL)",
        "INSERT INTO fts_state SELECT coalesce(max(id), 0) FROM messages",
        """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
            WHEN old.id <= (SELECT upto FROM fts_state) BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body); END""",
    ),
    # 3: names bound to CURVE keys (trust on first use).
    ("CREATE TABLE owners (user TEXT PRIMARY KEY, key TEXT NOT NULL) WITHOUT ROWID",),
    # 4: room subjects (what /topic shows) (PROTOCOL.md 13.7).
    (
        """CREATE TABLE subjects (room TEXT PRIMARY KEY, text TEXT NOT NULL, setter TEXT NOT NULL,
            time_ms INTEGER NOT NULL) WITHOUT ROWID""",
    ),
    # 5: a confirmation finds its message in the mailbox at once: live private messages wait
    # there too now, and messages_mailbox would read every row waiting for the recipient.
    ("CREATE INDEX messages_taken ON messages (target_key, sender_key, msg_id) WHERE pending",),
)
#: Messages indexed per catch_up() call while idle, so that a backlog never stalls the broker.
INDEX_BATCH = 5000
#: A message out of its recipient's mailbox (delivered, take): the oldest of that id.
_TAKE = """UPDATE messages SET pending = 0 WHERE id = (SELECT id FROM messages
    WHERE target_key = ? AND pending AND sender_key = ? AND msg_id = ? ORDER BY id LIMIT 1)"""
#: Batches a search may index first: a backlog after long busy hours must not stall the broker
#: past its clients' heartbeat timeout (what is left is indexed a batch a second meanwhile).
SEARCH_INDEX_BATCHES = 4
SCHEMA_VERSION = len(MIGRATIONS)
#: SQLite's integers are 64-bit: a larger Python int raises OverflowError when bound.
SQL_MIN, SQL_MAX = -(2**63), 2**63 - 1
#: Writes besides messages (membership, names, receipts) kept to write again while the store
#: fails: each is small, but a user entering and leaving rooms on a full disk must not grow
#: them without end. Past this the oldest are dropped, and the log says so.
MAX_REPLAY = 10_000
#: Seconds to wait at open for a store another process holds.
OPEN_TIMEOUT = 2.0

_COLUMNS = "m.room, m.seq, m.msg_id, m.sender, m.target, m.time_ms, m.body"


def fts_query(words: str) -> str | None:
    """All `words`, each quoted as an FTS5 string so user text is never FTS syntax, and each
    a prefix query (`"depl" *` finds "deploy"; of `"don't" *` only the last part, "t").

    Words without a letter or digit would be empty phrases, which match nothing: they are
    dropped (as MemoryStore ignores them); None if no word is left."""
    kept = [w for w in search_words(words) if re.search(r"[^\W_]", w)]
    return " AND ".join('"' + w.replace('"', '""') + '" *' for w in kept) or None


class SqliteStore:
    """A Store in one SQLite file (or ":memory:")."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        # The per-message writes wait here and go in with executemany at the
        # next commit or read: far cheaper than one statement per message.
        self._new_messages: list[tuple[object, ...]] = []
        self._new_seen: dict[tuple[str, bytes], tuple[str, int]] = {}
        self._new_seqs: dict[str, int] = {}
        self._new_taken: list[tuple[str, str, bytes]] = []  # take(): made after the inserts
        # What the open transaction holds, for a failure to know what it loses (_fail):
        # (sender key, msg id) of the messages promised to be kept (room messages, mail),
        self._kept: set[tuple[str, bytes]] = set()
        # the sequence numbers handed out (never to be handed out again, stored or not),
        self._txn_seqs: dict[str, int] = {}
        # and every other write, in order, to make again after a rollback.
        self._replay: list[tuple[str, tuple[object, ...]]] = []
        self._replay_due = False  # the replay is not in the open transaction (or there is none)
        # Failures since the last commit(), which reports them: the first cause, and what was lost.
        self._failure: BaseException | None = None
        self._refused: set[tuple[str, bytes]] = set()
        self._replay_cut = False  # MAX_REPLAY was reached since the store last wrote
        self._messages_written = False  # the open transaction holds messages

    @classmethod
    def open(cls: type[S], path: str | os.PathLike[str]) -> S:
        name = os.fspath(path)
        try:
            if name != ":memory:":
                Path(name).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are ours, begun by _write() and ended by commit().
            # The timeout only matters at open: the file is ours alone after (_prepare), and a
            # broker restarted at once may wait a moment for the old one to let go of it.
            db = sqlite3.connect(name, isolation_level=None, timeout=OPEN_TIMEOUT)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the store {name}: {e}") from e
        try:
            _prepare(db, name)
        except sqlite3.OperationalError as e:
            db.close()
            if "locked" in str(e):  # SQLITE_BUSY: another process has it
                raise StoreError(
                    f"cannot use the store {name}: another process (a broker?) has it open"
                ) from e
            raise StoreError(f"cannot use the store {name}: {e}") from e
        except sqlite3.Error as e:
            db.close()
            raise StoreError(f"cannot use the store {name}: {e}") from e
        except StoreError:
            db.close()
            raise
        return cls(db)

    def _write(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        """One write, made now; StoreFailed if it cannot be (nothing of it is kept then)."""
        # One transaction per wake-up, ended by commit(): a commit per write would sync per write.
        self._flush()
        try:
            self._begin()
            cursor = self._db.execute(sql, params)
        except Exception as e:
            self._fail(e)
            raise StoreFailed(f"cannot write the store: {e}") from e
        self._replay.append((sql, params))
        return cursor

    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        if self._replay_due:  # what a failed transaction held besides messages goes in first
            self._replay_due = False
            for sql, params in self._replay:
                self._db.execute(sql, params)

    def _flush(self) -> None:
        """Write what waits in the buffers. A failure is not raised here but noted for
        commit() (see _fail): a read that flushed first goes on with the store as it was."""
        try:
            self._write_buffers()
        except Exception as e:
            self._fail(e)

    def _write_buffers(self) -> None:
        if self._new_messages:
            self._begin()
            self._db.executemany(
                "INSERT INTO messages VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self._new_messages
            )
            self._new_messages.clear()
            self._messages_written = True
        if self._new_seqs:
            self._begin()
            self._db.executemany(
                """INSERT INTO room_seqs VALUES (?, ?)
                ON CONFLICT (room) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)""",
                list(self._new_seqs.items()),
            )
            self._new_seqs.clear()
        if self._new_seen:
            self._begin()
            self._db.executemany(
                "INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?)",
                [(sender, msg_id, status, t) for (sender, msg_id), (status, t) in self._new_seen.items()],
            )
            self._new_seen.clear()
        if self._new_taken:
            self._begin()
            self._db.executemany(_TAKE, self._new_taken)
            # Made again after a rollback, as every write but the messages' own (_fail).
            self._replay.extend((_TAKE, taken) for taken in self._new_taken)
            self._new_taken.clear()

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        self._flush()  # reads see every write before them
        return self._read(sql, params)

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        writing = self._db.in_transaction
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as e:
            if writing and not self._db.in_transaction:  # SQLite rolled the transaction back itself
                self._fail(e)
            raise

    def _fail(self, cause: BaseException) -> None:
        """A write failed: roll back the whole transaction, so that nothing is half written.

        The messages promised to be kept in it (room messages, mail) are lost, and their
        seen ids with them: a resend is new. commit() names them, for their ACKs to become
        errors. Private messages handed to their online recipient were delivered (their ACK
        stands) but lose their copy for search and their seen id: a client resends only
        what was not acknowledged. The rest (membership, names, receipts, the sequence
        numbers handed out) is made again at once, and written with the next commit."""
        if self._failure is None:
            self._failure = cause
        self._refused |= self._kept
        self._kept.clear()
        self._new_messages.clear()
        self._new_seen.clear()
        for room, seq in self._txn_seqs.items():  # a number published, or told in HISTORY, stays used
            self._new_seqs[room] = max(seq, self._new_seqs.get(room, 0))
        if len(self._replay) > MAX_REPLAY:
            if not self._replay_cut:
                log.warning("the store cannot be written for long: changes beyond the last %d are lost",
                            MAX_REPLAY)  # fmt: skip
                self._replay_cut = True
            del self._replay[:-MAX_REPLAY]
        self._rollback()
        self._messages_written = False
        self._replay_due = bool(self._replay)
        if self._replay_due:
            try:
                self._begin()  # at once: reads until the next commit see what the rollback took
            except Exception:  # the disk is still full: made again at the next write or commit
                self._rollback()
                self._replay_due = True

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _messages(self, sql: str, params: tuple[object, ...]) -> list[StoredMessage]:
        return [StoredMessage(*row) for row in self._query(sql, params)]

    # --- rooms and history ---------------------------------------------------
    def add_room_message(self, message: StoredMessage) -> None:
        self._insert(message, message.room, pending=False)
        self.used_seq(message.room, message.seq)

    def used_seq(self, room: str, seq: int) -> None:
        self._new_seqs[room] = max(seq, self._new_seqs.get(room, 0))  # written at the next flush
        self._txn_seqs[room] = max(seq, self._txn_seqs.get(room, 0))

    def _insert(self, m: StoredMessage, target_key: str, pending: bool) -> None:
        sender_key = name_key(m.sender)
        self._new_messages.append((m.room, m.seq, m.msg_id, m.sender, sender_key, m.target,
                                   target_key, m.time_ms, m.body, pending))  # fmt: skip
        if m.room or pending:  # acknowledged as kept, not only delivered
            self._kept.add((sender_key, m.msg_id))

    def room_history(self, room: str, before_seq: int, limit: int, after_seq: int = 0) -> list[StoredMessage]:
        if limit <= 0:  # SQLite reads a negative LIMIT as "no limit"
            return []
        # Clamped, whoever asks: seqs are far below SQL_MAX, so nothing found changes.
        before_seq = min(max(before_seq, SQL_MIN), SQL_MAX)
        after_seq = min(max(after_seq, SQL_MIN), SQL_MAX)
        newest = self._messages(
            f"""SELECT {_COLUMNS} FROM messages m WHERE room = ? AND seq < ? AND seq > ?
            ORDER BY seq DESC LIMIT ?""",
            (room, before_seq, after_seq, min(limit, SQL_MAX)),
        )
        return newest[::-1]

    def last_seq(self, room: str) -> int:
        row = self._query("SELECT last_seq FROM room_seqs WHERE room = ?", (room,)).fetchone()
        return int(row[0]) if row else 0

    def set_member(self, user: str, room: str, member: bool) -> None:
        if member:
            self._write("INSERT OR IGNORE INTO members VALUES (?, ?)", (room, user))
        else:
            self._write("DELETE FROM members WHERE room = ? AND user = ?", (room, user))

    def rooms_of(self, user: str) -> set[str]:
        return {r for (r,) in self._query("SELECT room FROM members WHERE user = ?", (user,))}

    def members(self, room: str) -> set[str]:
        return {u for (u,) in self._query("SELECT user FROM members WHERE room = ?", (room,))}

    def room_sizes(self) -> dict[str, int]:
        return dict(self._query("SELECT room, count(*) FROM members GROUP BY room"))

    # --- users ---------------------------------------------------------------
    def add_user(self, user: str) -> None:
        self._write("INSERT OR IGNORE INTO users VALUES (?)", (user,))

    def is_known(self, user: str) -> bool:
        return self._query("SELECT 1 FROM users WHERE user = ?", (user,)).fetchone() is not None

    # --- private messages for offline users ----------------------------------
    def key_of(self, user: str) -> str | None:
        row = self._query("SELECT key FROM owners WHERE user = ?", (user,)).fetchone()
        return str(row[0]) if row else None

    def bind(self, user: str, key: str) -> None:
        self._write("INSERT OR REPLACE INTO owners VALUES (?, ?)", (user, key))

    def set_subject(self, room: str, text: str, setter: str, time_ms: int) -> None:
        if text:
            self._write("INSERT OR REPLACE INTO subjects VALUES (?, ?, ?, ?)", (room, text, setter, time_ms))
        else:
            self._write("DELETE FROM subjects WHERE room = ?", (room,))

    def subject(self, room: str) -> tuple[str, str, int] | None:
        row = self._query("SELECT text, setter, time_ms FROM subjects WHERE room = ?", (room,)).fetchone()
        return (str(row[0]), str(row[1]), int(row[2])) if row else None

    def enqueue(self, recipient: str, message: StoredMessage) -> None:
        self._insert(message, recipient, pending=True)

    def add_private(self, recipient: str, message: StoredMessage) -> None:
        self._insert(message, recipient, pending=False)

    def mailbox(self, recipient: str) -> list[StoredMessage]:
        return self._messages(
            f"SELECT {_COLUMNS} FROM messages m WHERE target_key = ? AND pending ORDER BY id", (recipient,)
        )

    def mailbox_usage(self, recipient: str) -> tuple[int, int]:
        count, size = self._query(
            "SELECT count(*), coalesce(sum(length(body)), 0) FROM messages WHERE target_key = ? AND pending",
            (recipient,),
        ).fetchone()
        return int(count), int(size)

    def delivered(self, recipient: str, sender: str, msg_id: bytes) -> bool:
        # Delivered mail only leaves the mailbox: it stays searchable until expiry.
        return self._write(_TAKE, (recipient, sender, msg_id)).rowcount == 1

    def take(self, recipient: str, sender: str, msg_id: bytes) -> None:
        self._new_taken.append((recipient, sender, msg_id))

    # --- delivery receipts owed to senders -----------------------------------
    def add_receipt(self, sender: str, msg_id: bytes, recipient: str, time_ms: int) -> None:
        # An upsert, not INSERT OR REPLACE: a receipt owed again keeps its place in the order.
        self._write(
            """INSERT INTO receipts VALUES (?, ?, ?, ?) ON CONFLICT (sender, msg_id)
            DO UPDATE SET recipient = excluded.recipient, time_ms = excluded.time_ms""",
            (sender, msg_id, recipient, time_ms),
        )

    def receipts(self, sender: str) -> list[tuple[bytes, str, int]]:
        rows = self._query(
            "SELECT msg_id, recipient, time_ms FROM receipts WHERE sender = ? ORDER BY rowid", (sender,)
        )
        return [(bytes(i), str(who), int(t)) for i, who, t in rows]

    def clear_receipt(self, sender: str, msg_id: bytes) -> None:
        self._write("DELETE FROM receipts WHERE sender = ? AND msg_id = ?", (sender, msg_id))

    # --- duplicates ------------------------------------------------------------
    def seen(self, sender: str, msg_id: bytes) -> str | None:
        waiting = self._new_seen.get((sender, msg_id))
        if waiting is not None:
            return waiting[0]
        row = self._read(  # no flush: what waits to be written was looked at above
            "SELECT status FROM seen WHERE sender = ? AND msg_id = ?", (sender, msg_id)
        ).fetchone()
        return str(row[0]) if row else None

    def seen_at(self, sender: str, msg_id: bytes) -> int | None:
        waiting = self._new_seen.get((sender, msg_id))
        if waiting is not None:
            return waiting[1]
        row = self._read(
            "SELECT time_ms FROM seen WHERE sender = ? AND msg_id = ?", (sender, msg_id)
        ).fetchone()
        return int(row[0]) if row else None

    def remember(self, sender: str, msg_id: bytes, status: str, time_ms: int) -> None:
        self._new_seen[(sender, msg_id)] = (status, time_ms)

    # --- search and retention --------------------------------------------------
    def catch_up(self, limit: int = INDEX_BATCH) -> bool:
        """Index up to `limit` new messages for search; True if more are waiting."""
        self._flush()
        (upto,) = self._read("SELECT upto FROM fts_state").fetchone()
        (newest,) = self._read("SELECT coalesce(max(id), 0) FROM messages").fetchone()
        if newest <= upto:
            return False
        last = min(newest, upto + limit)
        try:
            self._begin()
            self._db.execute(
                "INSERT INTO messages_fts (rowid, body) SELECT id, body FROM messages WHERE id > ? AND id <= ?",
                (upto, last),
            )
            self._db.execute("UPDATE fts_state SET upto = ?", (last,))
        except Exception as e:
            # The rollback takes fts_state back too: indexed later, from where it was.
            self._fail(e)
            return False  # not at once again: at the broker's next sweep
        return bool(last < newest)

    def search(self, user: str, words: str, limit: int) -> list[StoredMessage]:
        query = fts_query(words)
        if query is None or limit <= 0:
            return []
        for _ in range(SEARCH_INDEX_BATCHES):  # what was said a moment ago is found too
            if not self.catch_up():
                break
        # Rooms by membership now; private messages (room "") to or from the user.
        return self._messages(
            f"""SELECT {_COLUMNS} FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid
            WHERE messages_fts MATCH ?
              AND (m.room = '*' OR m.room IN (SELECT room FROM members WHERE user = ?)
                   OR (m.room = '' AND ? IN (m.sender_key, m.target_key)))
            ORDER BY m.time_ms DESC, m.id DESC LIMIT ?""",
            (query, user, user, limit),
        )

    def expire(self, before_ms: int) -> int:
        # Undelivered mail is kept whatever its age: the recipient has not had it yet.
        # The delete trigger keeps the FTS index in step.
        removed = self._write("DELETE FROM messages WHERE time_ms < ? AND NOT pending", (before_ms,)).rowcount
        # SQLite hands out the ids of deleted newest rows again: catch_up must index those
        # new rows, which it would skip (and the delete trigger then unindex) if upto stayed.
        self._write("UPDATE fts_state SET upto = min(upto, (SELECT coalesce(max(id), 0) FROM messages))", ())
        self._write("DELETE FROM seen WHERE time_ms < ?", (before_ms,))
        self._write("DELETE FROM receipts WHERE time_ms < ?", (before_ms,))
        return removed

    def commit(self) -> bool:
        # In WAL mode with synchronous=NORMAL a COMMIT is written to the WAL file (the OS has it)
        # but not fsynced: it survives the broker being killed (even SIGKILL), not a power loss.
        self._flush()
        wrote = False
        try:
            if self._replay_due:
                self._begin()
            if self._db.in_transaction:
                self._db.execute("COMMIT")
                wrote = self._messages_written
                # All of it is in the file now.
                self._kept.clear()
                self._txn_seqs.clear()
                self._replay.clear()
                self._replay_cut = False
                self._messages_written = False
        except Exception as e:
            self._fail(e)
        failure, refused = self._failure, frozenset(self._refused)
        if failure is not None:
            self._failure = None
            self._refused.clear()
            raise StoreFailed(f"cannot write the store: {failure}", refused) from failure
        return wrote

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()


def _prepare(db: sqlite3.Connection, name: str) -> None:
    """Set the journal up and bring the schema to SCHEMA_VERSION, or refuse a newer one."""
    if name != ":memory:":
        # EXCLUSIVE before WAL: SQLite then keeps the WAL index in the heap instead of a -shm
        # file mapped into memory, where a write the file system refuses (a full disk, an
        # immutable file) is SIGBUS, which ends the broker without a word. It also keeps the
        # file to this one broker: a second one fails at open (_in_use), not at its first write.
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        # Raises "file is not a database" first thing for a corrupt file.
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # see commit()
    # IMMEDIATE takes the write lock before reading the version, so two brokers cannot both
    # migrate; and it fails at once on a file we may read but not write.
    db.execute("BEGIN IMMEDIATE")
    try:
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"the store {name} was written by a newer zchat "
                f"(schema {found}, this one knows {SCHEMA_VERSION})"
            )
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                db.execute(statement)
        # Written even when unchanged: a read-only file fails here rather than at the first commit.
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
