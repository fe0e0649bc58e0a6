"""Who may connect at all: the broker's ZAP handler (ZeroMQ RFC 27), no sockets.

libzmq asks before every handshake completes, with the peer's address and,
under CURVE, its public key. Any key may connect (the core binds names to
keys, SECURITY.md); an address disconnected for flooding is turned away
until its cool-off ends, so a flooder cannot come back on a new connection.
"""

from __future__ import annotations

import logging

from zmq.utils import z85

log = logging.getLogger("zchat.broker")

ZAP_VERSION = b"1.0"
#: The ZAP status the broker gives a banned address; the client sees it as
#: a failed handshake with this code (PROTOCOL.md 8).
REFUSED = b"400"


class Gate:
    """Address bans with an end, and the ZAP answers that follow from them."""

    def __init__(self) -> None:
        #: Peer address (as ZeroMQ gives it: "127.0.0.2", "::1") -> banned until.
        self.banned: dict[str, float] = {}
        self.turned_away = 0

    def ban(self, address: str, until: float) -> None:
        if address:
            self.banned[address] = max(until, self.banned.get(address, 0.0))

    def is_banned(self, address: str, now: float) -> bool:
        until = self.banned.get(address)
        if until is None:
            return False
        if now < until:
            return True
        del self.banned[address]
        return False

    def forget_expired(self, now: float) -> None:
        for address in [a for a, until in self.banned.items() if until <= now]:
            del self.banned[address]

    def answer(self, request: list[bytes], now: float) -> list[bytes] | None:
        """The ZAP reply to one request; None when it is too broken to name its request id."""
        if len(request) < 2:
            log.error("ZAP request without a request id: %r", request[:8])
            return None
        request_id = request[1]
        if len(request) < 6 or request[0] != ZAP_VERSION:
            log.error("malformed ZAP request: %r", request[:8])
            return [ZAP_VERSION, request_id, b"500", b"malformed ZAP request", b"", b""]
        address, mechanism, credentials = request[3].decode("ascii", "replace"), request[5], request[6:]
        if self.is_banned(address, now):
            self.turned_away += 1
            return [ZAP_VERSION, request_id, REFUSED, b"address cooling off after a flood", b"", b""]
        # Under CURVE the user id is the client's key in z85: the core reads it
        # from every message as its User-Id property.
        user_id = b""
        if mechanism == b"CURVE" and credentials and len(credentials[0]) == 32:
            user_id = z85.encode(credentials[0])
        return [ZAP_VERSION, request_id, b"200", b"OK", user_id, b""]
