"""The broker's settings: one object, one default per setting.

`zchat broker` (cli.py) reads them once from its options and the environment
(each option's default is the one given here); the shell and the core take
the same object, so no setting is copied with a default of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from zchat.broker.gate import DEFAULT_EXEMPT
from zchat.common.keys import KeyPair


def default_store() -> str:
    """zchat.db in the user data folder: what a broker keeps across restarts."""
    return str(Path(platformdirs.user_data_dir("zchat")) / "zchat.db")


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 5555
    pub_port: int = 5556
    #: What WELCOME tells clients to connect their SUB to (--advertise-pub);
    #: None: the PUB's own endpoint (server.advertised).
    advertise_pub: str | None = None
    #: The broker's ZMTP PING on each connection; its PONG is due within timeout_ms less
    #: this. A timeout after a PING shorter than the interval keeps libzmq's timer list
    #: cheap: its cancel walks every timer due before the one cancelled (PROTOCOL.md 7.1).
    heartbeat_ms: int = 4000
    #: Silence after which a client is dropped; always longer than heartbeat_ms.
    timeout_ms: int = 6000
    max_body: int = 65536
    #: Per-peer queue limit on both sockets; see docs/PROTOCOL.md, "Limits".
    hwm: int = 10000
    #: An SQLite file, or ":memory:" to keep nothing across restarts.
    store: str = field(default_factory=default_store)
    history_days: float = 30.0
    #: Flood control: messages a second and burst per client (common/flood.py); rate 0: none.
    rate: float = 20.0
    burst: float = 100.0
    #: Seconds a flooder's address is turned away after it is disconnected
    #: (and what is still queued from its connection ignored).
    cool_off: float = 60.0
    #: Seconds the lobby is held during a presence storm, so that its joins go out in long
    #: PRESENCE runs (broker/presence.py); 0: never held.
    presence_hold: float = 0.25
    #: Addresses or networks a flooder's address ban never applies to (gate.py).
    ban_exempt: tuple[str, ...] = DEFAULT_EXEMPT
    #: The broker's CURVE key pair: with it both sockets encrypt (PROTOCOL.md 14).
    curve: KeyPair | None = None
    #: With CURVE: name key -> the only public key (z85) it may use; None: trust on first use.
    authorized: dict[str, str] | None = None
    #: Registration limits: clients in all, and sessions per CURVE key.
    max_clients: int = 10_000
    max_per_key: int = 8
    #: libzmq's I/O threads (its connections spread over them). Each keeps its connections'
    #: heartbeat timers in one ordered list that a PONG's cancel walks, so an idle client costs
    #: in proportion to the clients on its thread: past some 10,000, more threads keep the
    #: heartbeats cheap; below, one is faster for traffic (docs/OPERATING.md).
    io_threads: int = 1
    #: Rooms one user may be a member of, and rooms with members in all.
    max_rooms_per_user: int = 250
    max_rooms: int = 10_000
    #: An offline user's mailbox: messages and body bytes.
    mailbox_messages: int = 1000
    mailbox_bytes: int = 1 << 20
    #: Where to serve Prometheus metrics, HOST:PORT (metrics.py); None: nowhere.
    metrics: str | None = None
    #: NATS servers of a cluster of brokers (--cluster, docs/CLUSTER.md); (): a broker alone.
    cluster: tuple[str, ...] = ()
    #: This broker's name in the cluster; "": the host and port it listens on.
    node: str = ""
    #: Copies JetStream keeps of the cluster's stream and buckets, made with that many when
    #: the first broker creates them (docs/CLUSTER.md, "R1 and R3"): at most the NATS servers.
    replicas: int = 1

    @property
    def timeout(self) -> float:
        """timeout_ms in seconds, the core's clock."""
        return self.timeout_ms / 1000

    @property
    def welcome_rate(self) -> tuple[int, int]:
        """WELCOME's rate a minute and burst (PROTOCOL.md 5.1): whole messages, at least 1; 0, 0 without."""
        if self.rate <= 0:
            return 0, 0
        return max(1, int(self.rate * 60)), int(self.burst)


def default(name: str) -> Any:
    """The one default of a setting, for the command line to show and use."""
    (found,) = [f for f in fields(BrokerSettings) if f.name == name]
    return found.default
