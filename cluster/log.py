"""The shared order of rooms' events: the core's Relay (broker/relay.py) over a stream.

Each event goes into the LOG stream on its room's subject, encoded as the PUB
message it will be (with sequence 0: each broker numbers it as it reads it).
A message carries its sender and id as the stream's Nats-Msg-Id, so that a
resend within JetStream's duplicate window (two minutes), even through
another broker, is stored once.
"""

from __future__ import annotations

from zchat.broker.relay import Waiting
from zchat.cluster.link import Link
from zchat.cluster.subjects import log_subject
from zchat.common import protocol as p


class ClusterLog:
    def __init__(self, link: Link) -> None:
        self.link = link
        #: Senders waiting for the PubAck of their message, by request number.
        self.waiting: dict[int, Waiting] = {}

    def relay(self, room: str, event: p.PublishedEvent, waiting: Waiting | None = None) -> None:
        (payload,) = p.encode_published(p.Published(p.topic_of(room), 0, event))
        msg_id = f"{waiting.key}:{waiting.msg_id.hex()}" if waiting is not None else ""
        number = self.link.request("relay", log_subject(room), payload, msg_id)
        if waiting is not None:
            self.waiting[number] = waiting


def read(payload: bytes) -> tuple[str, p.PublishedEvent]:
    """An event of the log: its room, and the event."""
    published = p.decode_published([payload])
    return published.topic[:-1].decode(), published.event
