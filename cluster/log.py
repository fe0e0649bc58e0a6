"""The cluster's shared log: the core's Relay (broker/relay.py) over the stream LOG.

A room's event goes in on its room's subject, encoded as the PUB message it
will be (with sequence 0: each broker numbers it as it reads it); mailbox
entries and users known go in on subjects of their own, as MessagePack. A
message carries its sender and id as the stream's Nats-Msg-Id, so that a
resend within JetStream's duplicate window (two minutes), even through
another broker, is stored once.
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
    KEPT_SUBJECT,
    KNOWN_SUBJECT,
    MAIL_SUBJECT,
    RECEIPT_SUBJECT,
    RECEIPT_TAKEN_SUBJECT,
    TAKEN_SUBJECT,
    log_subject,
)
from zchat.common import protocol as p


class ClusterLog:
    def __init__(self, link: Link) -> None:
        self.link = link
        #: Senders waiting for the PubAck of their message, by request number.
        self.waiting: dict[int, Waiting] = {}

    def relay(self, entry: Entry, waiting: Waiting | None = None) -> None:
        subject, payload = write(entry)
        msg_id = f"{waiting.key}:{waiting.msg_id.hex()}" if waiting is not None else ""
        number = self.link.request("relay", subject, payload, msg_id)
        if waiting is not None:
            self.waiting[number] = waiting


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
