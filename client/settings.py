"""The client program's settings: one object, one default per setting.

The library (`Client`), the command line (`zchat connect`, `send`, `who`, `bot`)
and the connection engine all read their defaults from here, so that a
default changed here changes everywhere. The command line reads each setting
once, from its option or its environment variable (`ENVIRONMENT`).
"""

from __future__ import annotations

from dataclasses import dataclass

from zchat.common.keys import KeyPair
from zchat.common.protocol import MAX_HISTORY

DEFAULT_BROKER = "tcp://127.0.0.1:5555"

#: The environment variable of each setting the command line reads (its option's `envvar`).
ENVIRONMENT = {
    "name": "ZCHAT_NAME",
    "broker": "ZCHAT_BROKER",
    "connect_timeout": "ZCHAT_CONNECT_TIMEOUT",
    "server_key": "ZCHAT_SERVER_KEY",
    "bell": "ZCHAT_BELL",
}


@dataclass(frozen=True)
class Settings:
    name: str
    #: One ROUTER endpoint, or several comma-separated (a cluster's brokers, docs/CLUSTER.md).
    broker: str = DEFAULT_BROKER
    #: Seconds the first connection may take to register; a reconnect waits at most this long
    #: (and at most the broker's heartbeat timeout, at least 3 s) for each answer of its registration.
    connect_timeout: float = 5.0
    #: Seconds a request may wait for its answer, counted from when it was first sent.
    answer_timeout: float = 30.0
    #: Requests held at most while there is no connection (or while paced for the rate).
    max_queued: int = 1000
    #: Messages of a room shown on joining it (and of the lobby on registering): at most 500.
    history_count: int = 50
    #: The broker's public key (z85): CURVE on both sockets when given (PROTOCOL.md 14).
    server_key: bytes | None = None
    keys: KeyPair | None = None  # our own pair; a fresh one per client when None
    #: The terminal UI rings the bell (a terminal's urgency hint) on a private message or a mention.
    bell: bool = True
    #: What HELLO tells the broker this program is (PROTOCOL.md 4.1): terminal, web, library, bot.
    client: str = "library"
    #: False: never send READY, so that nobody is told this session joined or left (PROTOCOL.md
    #: 4.6): `zchat send`'s short-lived session. It is online all the same (WHO lists it).
    announce: bool = True

    def __post_init__(self) -> None:
        # More than one HISTORY may ask for is refused by the broker (400): ask for what it gives.
        object.__setattr__(self, "history_count", min(max(self.history_count, 0), MAX_HISTORY))
