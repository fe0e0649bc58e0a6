"""What the user has read: per room (and the lobby) the last sequence number shown,
kept in the user's data folder across restarts, so that the join's history can
mark where the unread part starts ("unread since ..."). Also the text of the last
private messages sent, so that a receipt arriving after a restart names it.

The terminal UI shows every message as it comes: shown is read. A front end
with buffers (the web client) will count unread per buffer on top of this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path

import platformdirs

log = logging.getLogger("zchat.client")

#: Private messages whose text is kept for their receipts (the oldest go first).
SENT_KEPT = 500


def mentions(text: str, name: str) -> bool:
    """`text` names `name` as a word of its own ("alice:", "@alice", not "malice"), any case."""
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", text, re.IGNORECASE) is not None


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


def _load(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    try:
        data = json.loads(path.read_text())
        last = {str(room): int(seq) for room, seq in data["last_seq"].items() if int(seq) > 0}
        sent = {str(msg_id): str(text) for msg_id, text in data.get("sent", {}).items()}
        return last, sent
    except FileNotFoundError:
        return {}, {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ignored what was read, in %s: %s", path, e)  # started afresh, not crashed
        return {}, {}
