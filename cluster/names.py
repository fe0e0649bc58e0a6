"""Names held across the cluster: one namespace, by compare-and-set in a KV bucket.

A claim is a create of the name key (it fails if any broker holds the name);
a release deletes only the revision this broker wrote, so that it never
frees a name that was taken over elsewhere meanwhile. Every broker watches
the bucket and keeps a mirror of who is online on the other brokers, so WHO
and the 409 check need no round trip; only a claim waits for JetStream
(one KV create, on HELLO, never on a message's path).

With CURVE and trust on first use, a name's key is bound once for the whole
cluster in a second bucket, by a create too: the first key wins everywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import msgpack

from zchat.broker.core import Released
from zchat.broker.names import UNLISTED, Session
from zchat.cluster.link import CallFailed, Link
from zchat.cluster.subjects import LEASE, LEASES, NAMES, OWNERS

log = logging.getLogger("zchat.cluster")

#: A remote session's peer starts so: a ROUTER's own routing ids are 5 bytes (0, then
#: a number), and a client may not choose one that starts with 0.
REMOTE = b"\0@cluster\0"


def kv_key(key: str) -> str:
    """A name key as a KV key: names may hold '.', a NATS subject's separator; never '='."""
    return key.replace(".", "=")


def name_key(kv: str) -> str:
    return kv.replace("=", ".")


def remote_peer(node: str, key: str) -> bytes:
    """The opaque peer of a session on another broker: its node and name key."""
    return REMOTE + node.encode() + b"\0" + key.encode()


def node_of(peer: bytes) -> tuple[str, str] | None:
    """(node, name key) of a remote peer, None for a local connection."""
    if not peer.startswith(REMOTE):
        return None
    node, _, key = peer[len(REMOTE) :].partition(b"\0")
    return node.decode(), key.decode()


class ClusterNames:
    """The NameRegistry of a broker in a cluster."""

    def __init__(self, link: Link, node: str, authorized: dict[str, str] | None = None) -> None:
        self.link = link
        self.node = node
        self.authorized = authorized
        self.local: dict[str, Session] = {}
        #: The revision of each name this broker holds: what a release deletes.
        self.revision: dict[str, int] = {}
        #: Who holds a name on another broker, from the bucket's watch.
        self.remote: dict[str, Session] = {}
        #: The bucket's revision of each name held elsewhere: what a dead node's release deletes.
        self.remote_revision: dict[str, int] = {}
        self.owners: dict[str, str] = {}
        #: When each other node's lease was last renewed (or first heard of), on our clock.
        self.lease_seen: dict[str, float] = {}
        #: Sessions of this broker taken over on another (their client failed over there),
        #: kept for the REPLACED the other broker sends them, or until their timeout here.
        self.moved: dict[str, Session] = {}
        #: Set when the sessions of other brokers changed: the core's WHO must be made again.
        self.changed = False
        #: Names this broker released whose delete NATS has not confirmed, with the revision
        #: to delete: tried again (`retry_releases`) and before a claim of the same name here,
        #: so that an entry left by a delete lost while NATS was away does not hold the name.
        self.unreleased: dict[str, int] = {}
        #: Deletes on their way, by request number: the name and revision each is of.
        self.releasing: dict[int, tuple[str, int]] = {}
        #: The session each unreleased name was released for: its LEAVE waits for the delete,
        #: which tells whether the name was freed or taken over elsewhere meanwhile.
        self.leaving: dict[str, Session] = {}
        #: Each release whose delete got its answer, for the core (`verdicts`).
        self._verdicts: list[Released] = []

    # --- NameRegistry ----------------------------------------------------------

    def holder(self, key: str) -> Session | None:
        return self.local.get(key) or self.remote.get(key)

    def still_held(self, key: str) -> Session | None:
        """Held on another broker, as the watch says: asked of the bucket itself, since the
        user may have just left there (a sign-in elsewhere right after a quit must not meet
        409 for the moment the delete takes to reach this broker's watch)."""
        session = self.holder(key)
        if session is None or key in self.local:
            return session
        try:
            revision = self.link.call("get", NAMES, kv_key(key))
        except CallFailed:
            return session  # NATS away: as the mirror says
        if revision:
            return session
        del self.remote[key]  # gone: the watch's delete is on its way
        self.remote_revision.pop(key, None)
        self.changed = True
        return None

    def claim(self, session: Session) -> bool:
        key = session.key
        if key in self.local or key in self.remote:
            return False
        if key in self.unreleased:
            self._delete_left(key)  # NATS still away: CallFailed, as the create would
        if session.client_key and self.authorized is None:
            owner = self.owners.get(key)
            if owner is not None and owner != session.client_key:
                return False  # bound elsewhere to another key since this broker looked (bind lost)
        revision = self.link.call("create", NAMES, kv_key(key), self._value(session))
        if not revision:
            return False  # another broker holds it: its watch update will tell who
        self.local[key] = session
        self.revision[key] = revision
        return True

    def take_over(self, session: Session) -> None:
        """On this broker: nothing changes in the bucket. From another broker (its client
        failed over): the entry moves to this node, by an update on its last revision."""
        key = session.key
        if self.remote.get(key) is not session:
            return
        revision = self.link.call(
            "update", NAMES, kv_key(key), self._value(session), self.remote_revision[key]
        )
        if not revision:
            raise RuntimeError(f"{session.name} was taken over elsewhere meanwhile")
        del self.remote[key]
        del self.remote_revision[key]
        self.local[key] = session
        self.revision[key] = revision
        self.changed = True

    def release(self, session: Session) -> bool:
        """A delete of the revision this broker wrote, sent without waiting: whether it
        freed the name (the session left) or found it taken over by another broker (its
        client failed over there before its watch here showed it) comes with its answer."""
        key = session.key
        if self.local.get(key) is session:
            del self.local[key]
            self.unreleased[key] = self.revision.pop(key)
            self.leaving[key] = session
            self._send_delete(key)
            return False
        if self.moved.get(key) is session:
            del self.moved[key]  # held elsewhere now: nothing to delete
        return True

    def sessions(self) -> Iterable[Session]:
        return _chain(self.local.values(), self.remote.values())

    def count(self) -> int:
        return len(self.local) + len(self.remote)

    def owner(self, key: str) -> str | None:
        if self.authorized is not None:
            return self.authorized.get(key, UNLISTED)
        return self.owners.get(key)

    def bind(self, key: str, client_key: str) -> None:
        if self.authorized is not None:
            return
        if self.link.call("create", OWNERS, kv_key(key), client_key.encode()):
            self.owners[key] = client_key
        # Else another key won it: its watch update is on the way, and claim() checks it.

    def changed_away(self, session: Session) -> None:
        """Into the name's entry, by an update on its revision: the other brokers' watches
        give it to their WHO. Lost (logged) if the entry moved meanwhile: it is not ours then."""
        key = session.key
        if self.local.get(key) is not session:
            return
        try:
            revision = self.link.call("update", NAMES, kv_key(key), self._value(session), self.revision[key])
        except CallFailed as e:  # set here all the same; the next change tries again
            log.warning("%s: the away text did not reach the cluster: %s", session.name, e)
            return
        if revision:
            self.revision[key] = revision
        else:
            log.warning("%s: the away text did not reach the cluster (its entry moved on)", session.name)

    # --- releases NATS did not confirm ------------------------------------------

    def _send_delete(self, key: str) -> None:
        revision = self.unreleased[key]
        number = self.link.request("delete", NAMES, kv_key(key), revision)
        self.releasing[number] = (key, revision)

    def released(self, number: int, ok: bool, deleted: object = True) -> bool:
        """The answer to a release's delete (True: it was one); a failed one is tried again.
        `deleted`, the delete's value: True if it freed the name, False if the entry had
        changed meanwhile (taken over elsewhere)."""
        released = self.releasing.pop(number, None)
        if released is None:
            return False
        key, revision = released
        # Deleted, or changed meanwhile (taken over): not ours to delete either way. (A later
        # release of the name, with a revision of its own, waits for its own answer.)
        if ok and self.unreleased.get(key) == revision:
            del self.unreleased[key]
            session = self.leaving.pop(key, None)
            if session is not None:
                self._verdicts.append(Released(session, deleted is True))
        return True

    def verdicts(self) -> list[Released]:
        """What the answered deletes found, in order, once: the core's inputs."""
        verdicts, self._verdicts = self._verdicts, []
        return verdicts

    def retry_releases(self) -> None:
        """Send again the deletes that failed (none on its way for that name)."""
        on_their_way = {key for key, _ in self.releasing.values()}
        for key in self.unreleased:
            if key not in on_their_way:
                self._send_delete(key)

    def _delete_left(self, key: str) -> None:
        """Delete the entry a release left, before claiming the name again (CallFailed: it
        could not be, and the claim is not made: the HELLO is refused 508, to try again)."""
        self.link.call("delete", NAMES, kv_key(key), self.unreleased[key])
        del self.unreleased[key]
        # The core announces the old session's LEAVE when this claim succeeds (a create: the
        # name was free), so no verdict is due for it.
        self.leaving.pop(key, None)

    # --- what the bucket's watch says ----------------------------------------

    def seen(self, bucket: str, kv: str, value: bytes | None, revision: int) -> None:
        if bucket == LEASES:
            if value is not None:
                self.lease_seen[bytes.fromhex(kv).decode()] = time.monotonic()
            return
        key = name_key(kv)
        if bucket == OWNERS:
            if value is not None:
                self.owners[key] = value.decode()
            return
        if value is None:
            if self.remote.pop(key, None) is not None:
                self.remote_revision.pop(key, None)
                self.changed = True
            return
        entry: dict[str, Any] = msgpack.unpackb(value)
        node = entry["node"]
        if node == self.node:
            if self.revision.get(key) != revision:
                # Left by this node's previous life (a crash, a kill): nobody holds it now.
                self.link.send("delete", 0, NAMES, kv, revision)
            return
        if self.local.get(key) is not None:
            # Taken over on another broker (its client failed over there): not held here any
            # more, so its timeout here is no LEAVE (the core asks holder()) and WHO lists it once.
            self.moved[key] = self.local.pop(key)  # until its REPLACED comes (node.py) or it times out
            self.revision.pop(key, None)
        self.lease_seen.setdefault(node, time.monotonic())  # dead if no lease comes within LEASE
        self.remote_revision[key] = revision
        self.remote[key] = Session(
            remote_peer(node, key),
            entry["name"],
            entry["token"],
            0.0,
            key,
            entry["client_key"],
            announced=True,
            away=entry.get("away", ""),  # written by brokers since AWAY was shared
        )
        self.changed = True

    def bury(self, now: float) -> None:
        """Forget the sessions of nodes whose lease ran out, and free their names (each
        delete is of the revision the dead node wrote: a name taken over meanwhile stays)."""
        dead = {node for node, seen in self.lease_seen.items() if now - seen > LEASE and node != self.node}
        if not dead:
            return
        for key, session in list(self.remote.items()):
            where = node_of(session.peer)
            if where is not None and where[0] in dead:
                del self.remote[key]
                self.link.send("delete", 0, NAMES, kv_key(key), self.remote_revision.pop(key))
                self.changed = True
        for node in dead:
            log.warning("node %s lost its lease: its sessions are gone", node)
            del self.lease_seen[node]

    def _value(self, session: Session) -> bytes:
        entry = {
            "node": self.node,
            "name": session.name,
            "token": session.token,
            "client_key": session.client_key,
            "away": session.away,
        }
        packed: bytes = msgpack.packb(entry)
        return packed


def _chain(*parts: Iterable[Session]) -> Iterator[Session]:
    for part in parts:
        yield from part
