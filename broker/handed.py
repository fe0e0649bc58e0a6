"""Private messages handed to their recipients and not yet confirmed (PROTOCOL.md 13.4).

A RECEIVED receipts only what the broker really handed over, so the core
notes each delivery in a `HandedOver` and takes it out at the confirmation.
`LocalHandedOver` is one broker's memory of them (the newest 100,000); in a
cluster a recipient may confirm on another broker than the one that
delivered, and the cluster gives a shared one, with no change to the core.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

#: (recipient's name key, sender's name key, message id)
Handed = tuple[str, str, bytes]
#: Handed over and not confirmed, remembered (the oldest forgotten first).
AWAITING_RECEIPTS = 100_000


class HandedOver(Protocol):
    def add(self, handed: Handed, from_mailbox: bool) -> None:
        """This message reached its recipient's connection, live or from its mailbox."""
        ...

    def confirm(self, handed: Handed) -> bool | None:
        """The recipient confirms it: None if it was never handed over (or confirmed
        already), else whether it came from the mailbox (then the mailbox lets it go)."""
        ...


class LocalHandedOver:
    def __init__(self, limit: int = AWAITING_RECEIPTS) -> None:
        self.limit = limit
        self.awaiting: OrderedDict[Handed, bool] = OrderedDict()

    def add(self, handed: Handed, from_mailbox: bool) -> None:
        # Forgotten oldest first: an unconfirmed live message then gets no receipt, and
        # unconfirmed mail stays in the mailbox, to be handed over (and awaited) again.
        self.awaiting[handed] = from_mailbox
        if len(self.awaiting) > self.limit:
            self.awaiting.popitem(last=False)

    def confirm(self, handed: Handed) -> bool | None:
        return self.awaiting.pop(handed, None)
