"""cluster/log.py: every kind of entry comes out of the log as it went in."""

from __future__ import annotations

import pytest

from zchat.broker.relay import Entry, KeptLive, Known, Mail, Receipted, ReceiptsTaken, RoomEvent, Taken
from zchat.broker.store import StoredMessage
from zchat.cluster.log import read, write
from zchat.common import protocol as p

KEPT = StoredMessage("", 0, b"m1", "Ann", "bob", 1_700_000_000_000, "héllo".encode())


@pytest.mark.parametrize(
    "entry",
    [
        RoomEvent("#tea", p.Message(b"m2", "Ann", "#tea", 1_700_000_000_001, b"hi")),
        RoomEvent(p.EVERYONE, p.Leave("Ann", 1_700_000_000_002, "timeout")),
        Mail("bob", KEPT),
        KeptLive("bob", KEPT),
        Taken("bob", "ann", b"m1"),
        Receipted("ann", "Bob", 1_700_000_000_003, (b"m1", b"m3")),
        ReceiptsTaken("ann", (b"m1", b"m3")),
        Known("ann"),
    ],
    ids=lambda entry: type(entry).__name__,
)
def test_an_entry_comes_back_as_written(entry: Entry) -> None:
    assert read(*write(entry)) == entry
