"""The cluster's shared log: the core's Relay (broker/relay.py) over the stream LOG.

A room's event is encoded as the PUB message it will be (with sequence 0:
each broker numbers it as it reads it); mailbox entries and users known as
MessagePack, each with the subject it had when each entry was a message of
its own (a stream written so is still read). The entries of one wake-up go
in as one message of the stream, a batch (BATCH_SUBJECT): one publish and
one PubAck for them all, and the senders waiting on any are acknowledged
once it is stored. A resend of a message (same sender and id) may so be in
the log twice, through this broker or another: each broker's core drops
the copies after the first as it reads them (it remembers every id it read,
as a broker alone does), rather than JetStream by a Nats-Msg-Id per message.
"""

from __future__ import annotations

import msgpack

from zchat.broker.relay import (
    Entry,
    KeptLive,
    Known,
    Mail,
    Receipted,
    ReceiptsTaken,
    RoomEvent,
    Taken,
    Waiting,
)
from zchat.broker.store import StoredMessage
from zchat.cluster.link import Link
from zchat.cluster.subjects import (
    BATCH_SUBJECT,
    KEPT_SUBJECT,
    KNOWN_SUBJECT,
    MAIL_SUBJECT,
    RECEIPT_SUBJECT,
    RECEIPT_TAKEN_SUBJECT,
    TAKEN_SUBJECT,
    log_subject,
)
from zchat.common import protocol as p

#: A batch goes once it holds this many entries, or bytes: far below NATS's largest message
#: (1 MiB by default), with one body of the largest size (64 KiB) on top.
BATCH_ENTRIES = 500
BATCH_BYTES = 256 * 1024


class ClusterLog:
    def __init__(self, link: Link) -> None:
        self.link = link
        #: Senders waiting for the PubAck of a batch, by request number.
        self.waiting: dict[int, list[Waiting]] = {}
        #: This wake-up's entries, written, and the senders waiting on them: sent by `flush`.
        self.batch: list[tuple[str, bytes]] = []
        self.batch_waiting: list[Waiting] = []
        self._batch_bytes = 0

    def relay(self, entry: Entry, waiting: Waiting | None = None) -> None:
        subject, payload = write(entry)
        self.batch.append((subject, payload))
        self._batch_bytes += len(payload)
        if waiting is not None:
            self.batch_waiting.append(waiting)
        if len(self.batch) >= BATCH_ENTRIES or self._batch_bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Send what `relay` gathered, in its order: one message of the log, one PubAck."""
        if not self.batch:
            return
        number = self.link.request("relay", BATCH_SUBJECT, write_batch(self.batch))
        if self.batch_waiting:
            self.waiting[number] = self.batch_waiting
        self.batch, self.batch_waiting, self._batch_bytes = [], [], 0


def write(entry: Entry) -> tuple[str, bytes]:
    """An entry as the log keeps it: its subject and payload."""
    packed: bytes
    if type(entry) is RoomEvent:
        room, event = entry
        (packed,) = p.encode_published(p.Published(p.topic_of(room), 0, event))
        return log_subject(room), packed
    if type(entry) is Mail or type(entry) is KeptLive:
        recipient, m = entry
        packed = msgpack.packb([recipient, m.msg_id, m.sender, m.target, m.time_ms, m.body])
        return MAIL_SUBJECT if type(entry) is Mail else KEPT_SUBJECT, packed
    if type(entry) is Taken:
        packed = msgpack.packb(list(entry))
        return TAKEN_SUBJECT, packed
    if type(entry) is Receipted:
        packed = msgpack.packb(list(entry))
        return RECEIPT_SUBJECT, packed
    if type(entry) is ReceiptsTaken:
        packed = msgpack.packb(list(entry))
        return RECEIPT_TAKEN_SUBJECT, packed
    assert type(entry) is Known
    packed = msgpack.packb(list(entry))
    return KNOWN_SUBJECT, packed


def write_batch(written: list[tuple[str, bytes]]) -> bytes:
    """Entries as written (subject, payload), as one message of the log."""
    packed: bytes = msgpack.packb([[subject, payload] for subject, payload in written], use_bin_type=True)
    return packed


def read_all(subject: str, payload: bytes) -> list[Entry]:
    """The entries of one message of the log: a batch, or one entry (as brokers wrote them before)."""
    if subject == BATCH_SUBJECT:
        return [read(s, data) for s, data in msgpack.unpackb(payload, raw=False)]
    return [read(subject, payload)]


def read(subject: str, payload: bytes) -> Entry:
    """An entry of the log, from its subject and payload."""
    if subject in (MAIL_SUBJECT, KEPT_SUBJECT):
        recipient, msg_id, sender, target, time_ms, body = msgpack.unpackb(payload)
        kept = StoredMessage("", 0, msg_id, sender, target, time_ms, body)
        return Mail(recipient, kept) if subject == MAIL_SUBJECT else KeptLive(recipient, kept)
    if subject == TAKEN_SUBJECT:
        return Taken(*msgpack.unpackb(payload))
    if subject == RECEIPT_SUBJECT:
        sender, recipient, time_ms, msg_ids = msgpack.unpackb(payload)
        return Receipted(sender, recipient, time_ms, tuple(msg_ids))
    if subject == RECEIPT_TAKEN_SUBJECT:
        sender, msg_ids = msgpack.unpackb(payload)
        return ReceiptsTaken(sender, tuple(msg_ids))
    if subject == KNOWN_SUBJECT:
        return Known(*msgpack.unpackb(payload))
    published = p.decode_published([payload])
    return RoomEvent(published.topic[:-1].decode(), published.event)
