"""What the user has read: per room (and the lobby) the last sequence number shown,
kept in the user's data folder across restarts, so that the join's history can
mark where the unread part starts ("unread since ..."). Also the text of the last
private messages sent, so that a receipt arriving after a restart names it.

Unread counts the messages of each conversation (the lobby, a room, a private
peer) that came while another one was in view, and how many of them call for the
user (a mention, or any private message); viewing a conversation clears its
counts. Front ends with buffers (the terminal UI, the web client) share it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from zchat.client import events as ev

log = logging.getLogger("zchat.client")

#: Private messages whose text is kept for their receipts (the oldest go first).
SENT_KEPT = 500


def mentions(text: str, name: str) -> bool:
    """`text` names `name` as a word of its own ("alice:", "@alice", not "malice"), any case."""
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", text, re.IGNORECASE) is not None


def conversation_of(message: ev.Message, me: str) -> str:
    """Which conversation `message` belongs to: "*" (the lobby), "#room", or the other
    person's name (lower case) for a private message, whichever way it went."""
    if not message.private:
        return message.room.lower()
    if message.sender.lower() == me.lower():
        return message.target.lower()  # ours, sent from here or another session of ours
    return message.sender.lower()


@dataclass(frozen=True, slots=True)
class Counts:
    unread: int = 0
    mentions: int = 0  # of the unread: those naming the user, and private ones


class Unread:
    """Unread and mention counts per conversation ("*", "#room", a peer's lower-case
    name); thread-safe: counted on the poller thread, read and cleared on the UI one."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._counts: dict[str, Counts] = {}
        self._lock = threading.Lock()

    def arrived(self, message: ev.Message, viewing: str | None) -> str | None:
        """Count `message` unless its conversation is `viewing`; the conversation it
        counted in, or None (in view, ours, or history: read when it was first shown)."""
        key = conversation_of(message, self.me)
        if message.history or key == viewing or message.sender.lower() == self.me.lower():
            return None
        called = message.private or mentions(message.text, self.me)
        with self._lock:
            old = self._counts.get(key, Counts())
            self._counts[key] = Counts(old.unread + 1, old.mentions + called)
        return key

    def viewed(self, key: str) -> None:
        """The conversation is in view: nothing of it is unread."""
        with self._lock:
            self._counts.pop(key.lower(), None)

    def counts(self, key: str) -> Counts:
        with self._lock:
            return self._counts.get(key.lower(), Counts())

    def all(self) -> dict[str, Counts]:
        """The conversations with something unread."""
        with self._lock:
            return dict(self._counts)


def history_file(name: str) -> Path:
    """Where the lines `name` typed are kept, for up-arrow after a restart."""
    return Path(platformdirs.user_data_dir("zchat")) / f"typed-{name.lower()}.txt"


def state_file(name: str, broker: str) -> Path:
    """Where `name`'s read state at `broker` is kept: one file per name and broker."""
    broker_tag = hashlib.blake2s(broker.encode(), digest_size=4).hexdigest()
    return Path(platformdirs.user_data_dir("zchat")) / f"read-{name.lower()}-{broker_tag}.json"


class ReadState:
    """The last sequence number shown of each room ("*": the lobby); thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._last: dict[str, int] = {}
        self._sent: dict[str, str] = {}  # message id -> text of a private message sent
        self._lock = threading.Lock()
        if path is not None:
            self._last, self._sent = _load(path)

    def last_read(self, room: str) -> int:
        with self._lock:
            return self._last.get(room, 0)

    def shown(self, room: str, seq: int) -> None:
        with self._lock:
            if seq > self._last.get(room, 0):
                self._last[room] = seq

    def sent(self, msg_id: str, text: str) -> None:
        with self._lock:
            self._sent[msg_id] = text
            if len(self._sent) > SENT_KEPT:
                del self._sent[next(iter(self._sent))]

    def sent_text(self, msg_id: str) -> str:
        with self._lock:
            return self._sent.get(msg_id, "")

    def forget(self, room: str) -> None:
        """The room was left (or renumbered by a broker that lost its store)."""
        with self._lock:
            self._last.pop(room, None)

    def save(self) -> None:
        """Written to a temporary file and renamed: a crash leaves the old state, never half."""
        if self.path is None:
            return
        with self._lock:
            data = json.dumps({"version": 1, "last_seq": self._last, "sent": self._sent})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            partial.write_text(data)
            os.replace(partial, self.path)
        except OSError as e:
            log.warning("could not keep what was read in %s: %s", self.path, e)


class ViewedReadState(ReadState):
    """What was read, for a front end with buffers: a room's messages are read once its
    buffer is in view (`viewing()` says which: "*", "#room", a peer), not when they come
    to a buffer in the background; `viewed(room)` catches up as it is switched to."""

    def __init__(self, path: Path | None, viewing: Callable[[], str]) -> None:
        super().__init__(path)
        self._viewing = viewing
        self._waiting: dict[str, int] = {}  # room -> the newest sequence number come, not yet viewed
        self._waiting_lock = threading.Lock()

    def shown(self, room: str, seq: int) -> None:
        if room.lower() == self._viewing().lower():
            super().shown(room, seq)
            return
        with self._waiting_lock:
            self._waiting[room.lower()] = max(seq, self._waiting.get(room.lower(), 0))

    def viewed(self, room: str) -> None:
        with self._waiting_lock:
            seq = self._waiting.pop(room.lower(), 0)
        if seq:
            super().shown(room.lower(), seq)

    def forget(self, room: str) -> None:
        with self._waiting_lock:
            self._waiting.pop(room.lower(), None)
        super().forget(room)


def _load(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    try:
        data = json.loads(path.read_text())
        last = {str(room): int(seq) for room, seq in data["last_seq"].items() if int(seq) > 0}
        sent = {str(msg_id): str(text) for msg_id, text in data.get("sent", {}).items()}
        return last, sent
    except FileNotFoundError:
        return {}, {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
        log.warning("ignored what was read, in %s: %s", path, e)  # started afresh, not crashed
        return {}, {}
