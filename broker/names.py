"""Sessions and the names they hold: who is online under which name, and which
CURVE key owns a name (PROTOCOL.md 4.1, 14).

The core claims, releases and takes over names through a `NameRegistry`, as it
keeps messages through the Store. `LocalNames` is one broker's: a dict of the
sessions online, ownership from the allowlist or the store (trust on first use).
A cluster will give one whose claims hold across brokers, with no change to
the core.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from zchat.broker.store import Store
from zchat.common.flood import TokenBucket


@dataclass(slots=True)
class Session:
    #: The connection it is on: an opaque id given by the shell that carries it
    #: (a ROUTER routing id; a gateway's own ids), never read by the core.
    peer: bytes
    name: str  # as registered, with its case
    token: str
    last_seen: float
    key: str  # the name key (protocol.name_key)
    client_key: str = ""  # its CURVE public key (z85), "" without encryption
    #: JOIN goes out at READY, once the client hears the lobby: whatever
    #: others answer to a JOIN then reaches the newcomer.
    announced: bool = False
    bucket: TokenBucket | None = None
    #: HELLO's client kind, as the client said (PROTOCOL.md 4.1): a metric's label, trusted for nothing.
    client: str = ""
    #: AWAY's text (PROTOCOL.md 13.7); "": here. Kept across a takeover, gone with the session.
    away: str = ""


class Unreachable(Exception):
    """What the broker shares with others cannot be reached now (a cluster's NATS away, or
    electing a leader): the command is not carried out, and may be sent again (ERROR 508)."""


#: What `NameRegistry.owner` says of a name an allowlist does not list: nobody may use it.
UNLISTED = "\0unlisted"


class NameRegistry(Protocol):
    def holder(self, key: str) -> Session | None:
        """The session holding the name now, if any (409, takeovers, private messages)."""
        ...

    def still_held(self, key: str) -> Session | None:
        """The holder, asked again before a HELLO is refused 409 for it: in a cluster `holder`
        is a mirror, and a name just released on another broker may still show there."""
        ...

    def claim(self, session: Session) -> bool:
        """`session` holds its name from now on; False if another holds it (the core
        checked `holder` first, but brokers of a cluster claim names concurrently)."""
        ...

    def take_over(self, session: Session) -> None:
        """`session` goes on on another connection (its `peer` changed): not a new claim."""
        ...

    def release(self, session: Session) -> bool:
        """The session is gone: its name is free again, if that session still held it.
        Whether that is known now; False: not yet (a cluster's delete on its way, which
        finds the name freed or taken over on another broker), and a `Released` input
        says which later, so that a user online elsewhere is not announced as gone."""
        ...

    def sessions(self) -> Iterable[Session]:
        """Every session holding a name (WHO, limits)."""
        ...

    def count(self) -> int: ...

    def owner(self, key: str) -> str | None:
        """With CURVE: the public key that owns the name, None when it is free to take,
        UNLISTED when an allowlist does not name it."""
        ...

    def bind(self, key: str, client_key: str) -> None:
        """Trust on first use: from now on only `client_key` may use the name."""
        ...

    def changed_away(self, session: Session) -> None:
        """`session`'s away text changed: whoever lists sessions (WHO on every broker) sees it."""
        ...


class LocalNames:
    """One broker's names: sessions in a dict, owners from the allowlist or the store."""

    def __init__(self, store: Store, authorized: dict[str, str] | None = None) -> None:
        self.store = store
        self.authorized = authorized
        self.by_key: dict[str, Session] = {}
        # The dict's own get: every private message looks its recipient up here.
        self.holder = self.by_key.get  # type: ignore[method-assign, assignment]

    def holder(self, key: str) -> Session | None:
        return self.by_key.get(key)

    def still_held(self, key: str) -> Session | None:
        return self.by_key.get(key)

    def claim(self, session: Session) -> bool:
        return self.by_key.setdefault(session.key, session) is session

    def take_over(self, session: Session) -> None:
        pass  # the session object is the one held: nothing else to move here

    def release(self, session: Session) -> bool:
        if self.by_key.get(session.key) is session:  # else the name went on to another session
            del self.by_key[session.key]
        return True

    def sessions(self) -> Iterable[Session]:
        return self.by_key.values()

    def count(self) -> int:
        return len(self.by_key)

    def owner(self, key: str) -> str | None:
        if self.authorized is not None:
            return self.authorized.get(key, UNLISTED)
        return self.store.key_of(key)

    def bind(self, key: str, client_key: str) -> None:
        if self.authorized is None:
            self.store.bind(key, client_key)

    def changed_away(self, session: Session) -> None:
        pass  # the session is the one WHO lists
