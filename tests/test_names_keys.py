"""With CURVE, names belong to keys: first use, or an allowlist; owners can always come back."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from tests.chat import Watcher
from tests.support import Broker, start_curve_broker
from zchat.client import events as ev
from zchat.client.session import Client, ConnectError
from zchat.common import keys


def pair() -> keys.KeyPair:
    return keys.KeyPair(*zmq.curve_keypair())


def connect(broker: Broker, server: keys.KeyPair, name: str, own: keys.KeyPair) -> Client:
    return Client(name, broker.endpoint, server_key=server.public, keys=own, connect_timeout=5).connect()


def test_a_name_belongs_to_the_first_key_and_its_owner_can_always_come_back(tmp_path: Path) -> None:
    broker, server = start_curve_broker(tmp_path)
    alice_key, mallory_key = pair(), pair()
    try:
        first = connect(broker, server, "alice", alice_key)
        with pytest.raises(ConnectError, match="belongs to another key"):
            connect(broker, server, "Alice", mallory_key)  # while alice is online
        # alice's old connection is still there (say, timing out): her key takes the session over.
        old = Watcher(first)
        second = connect(broker, server, "alice", alice_key)
        bob = Watcher(connect(broker, server, "bob", pair()))
        assert isinstance(second.send("bob", "from the new connection").wait(5), ev.Ack)
        assert bob.message("from the new connection").sender == "alice"
        # The old client, alive after all, is told and stops: it does not take the session back.
        gone = old.state(ev.State.OFFLINE)
        assert "signed in elsewhere" in gone.detail
        assert isinstance(bob.client.send("alice", "to whoever is alice").wait(5), ev.Ack)
        new = Watcher(second)
        new.message("to whoever is alice")
        assert first.state is ev.State.CLOSED and second.state is ev.State.ONLINE
        bob.client.close()
        second.close()
        first.close()
        with pytest.raises(ConnectError, match="belongs to another key"):
            connect(broker, server, "alice", mallory_key)  # and while she is away
    finally:
        broker.stop()


def test_an_allowlist_admits_only_listed_keys_under_their_names(tmp_path: Path) -> None:
    listed = tmp_path / "authorized"
    alice_key = keys.generate(tmp_path / "alice")
    listed.mkdir()
    (listed / "alice.pub").write_bytes((tmp_path / "alice" / keys.PUBLIC_FILE).read_bytes())
    broker, server = start_curve_broker(tmp_path, "--trust", "allowlist", "--authorized-keys", str(listed))
    try:
        with pytest.raises(ConnectError, match="not on this broker's list"):
            connect(broker, server, "bob", pair())
        with pytest.raises(ConnectError, match="belongs to another key"):
            connect(broker, server, "alice", pair())
        connect(broker, server, "alice", alice_key).close()
    finally:
        broker.stop()
