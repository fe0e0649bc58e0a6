"""Encryption on the client's sockets, why a connection fails before any answer, and when it drops.

With CURVE a wrong or missing server key does not raise: libzmq just drops
the connection (and with a wrong key tries again). A socket monitor sees the failed handshake,
so the user hears what is wrong instead of only "no answer". The same monitor then
tells when the connection closes: the broker hung up, or libzmq's heartbeats found it
silent (PROTOCOL.md 7).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from zchat.common import protocol as p
from zchat.common.keys import KeyPair

FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
WATCHED = FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED
#: How long a failed encrypted handshake waits for the plain probe that tells why (accepts_plain).
PROBE_WAIT = 1.0


def secure(sock: zmq.Socket[bytes], server_key: bytes | None, keys: KeyPair | None) -> None:
    """CURVE client options, set before connecting; nothing without a server key."""
    if server_key is None:
        return
    assert keys is not None, "a server key needs a key pair of our own"
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


class Monitored(NamedTuple):
    """What the monitor told since it was last read."""

    #: Why the first handshake failed, if it did.
    refused: str | None = None
    #: The connection, once its handshake succeeded, closed.
    lost: bool = False


class HandshakeWatch:
    """Watches one socket's first handshake, then whether its connection closes."""

    def __init__(self, sock: zmq.Socket[bytes], encrypted: bool) -> None:
        self.sock = sock
        self.encrypted = encrypted
        self.monitor: zmq.Socket[bytes] | None = sock.get_monitor_socket(WATCHED | zmq.EVENT_DISCONNECTED)
        self.connected = False

    def read(self) -> Monitored:
        """What happened since the last call (the shell reads the monitor when it is readable)."""
        while self.monitor is not None:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            kind, value = event["event"], event["value"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
            elif kind == zmq.EVENT_DISCONNECTED and self.connected:
                return Monitored(lost=True)  # before: the end of a failed handshake, told as such
            elif kind & FAILED and not self.connected:
                return Monitored(refused=self.explain(kind, value, event["endpoint"].decode()))
        return Monitored()

    def failure(self) -> str | None:
        """Why the handshake failed, if it did; None while nothing went wrong (or once it worked)."""
        return self.read().refused

    def explain(self, kind: int, value: int, endpoint: str) -> str:
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH and value == p.TURNED_AWAY_STATUS:
            return (
                "the broker turned this connection away: it refuses this address for a while "
                "after a client from it was disconnected for flooding; try again later"
            )
        mismatch = kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and (
            value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        )
        if self.encrypted and not mismatch and kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            # A plain broker that sees a CURVE greeting closes the connection, and libzmq
            # reports the mismatch only if it read the broker's greeting first: a race. A
            # wrong server key looks the same. One plain handshake tells the two apart.
            mismatch = accepts_plain(self.sock.context, endpoint, PROBE_WAIT)
        if mismatch and self.encrypted:
            return "the broker refused the handshake: it does not use encryption, but a server key was given"
        if mismatch:
            return (
                "the broker refused the handshake: it requires encryption (CURVE); "
                "give its public key with --server-key"
            )
        if not self.encrypted:  # libzmq does not always say why: either is possible
            return (
                "the broker closed the connection during the handshake: it may require encryption "
                "(CURVE; give its public key with --server-key), or it may not be a zchat broker"
            )
        return (
            "the broker refused the encrypted handshake: the server key may be wrong (check --server-key), "
            "or the broker may not use encryption"
        )

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None


def accepts_plain(context: zmq.Context[zmq.Socket[bytes]], endpoint: str, wait: float) -> bool:
    """Whether the broker at `endpoint` takes an unencrypted (NULL) handshake, within `wait` seconds.

    Nothing is sent past the handshake. A refusal by ZAP (an address turned away, ZAP status
    400) also means the NULL mechanism was agreed: the broker does not use encryption."""
    probe = context.socket(zmq.DEALER)
    monitor = probe.get_monitor_socket(WATCHED)
    try:
        probe.connect(endpoint)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0 and monitor.poll(max(1, int(left * 1000))):
            kind = recv_monitor_message(monitor)["event"]
            if kind in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_HANDSHAKE_FAILED_AUTH):
                return True
            if kind & FAILED:
                return False
        return False
    finally:
        probe.disable_monitor()
        monitor.close(linger=0)
        probe.close(linger=0)
