"""Who may connect at all: the broker's ZAP handler (ZeroMQ RFC 27), no sockets.

libzmq asks before every handshake completes, with the peer's address and,
under CURVE, its public key. Any key may connect (the core binds names to
keys, SECURITY.md); an address disconnected for flooding is turned away
until its cool-off ends, so a flooder cannot come back on a new connection.
Some addresses are never turned away: by default loopback, where every
local user shares one address (as fail2ban's ignoreip).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from zmq.utils import z85

from zchat.broker.expiring import Expiring
from zchat.common import protocol as p

log = logging.getLogger("zchat.broker")

ZAP_VERSION = b"1.0"
REFUSED = str(p.TURNED_AWAY_STATUS).encode()
#: For a request too broken to name its id: REP must answer it all the same.
UNNAMED_REFUSAL = [ZAP_VERSION, b"", b"500", b"", b"", b""]
#: Addresses never banned unless the broker is told otherwise (--ban-exempt).
DEFAULT_EXEMPT = ("127.0.0.0/8", "::1")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(specs: Iterable[str]) -> list[Network]:
    """Addresses or networks ("10.0.0.0/8", "::1"); ValueError names a bad one."""
    return [ipaddress.ip_network(spec, strict=False) for spec in specs]


class Gate:
    """Address bans with an end, and the ZAP answers that follow from them."""

    def __init__(self, exempt: Iterable[str] = DEFAULT_EXEMPT) -> None:
        self.exempt = networks(exempt)
        #: Peer address (as ZeroMQ gives it: "127.0.0.2", "::1") -> banned until.
        self.banned: Expiring[str] = Expiring()
        self.turned_away = 0

    def ban(self, address: str, until: float) -> bool:
        """Turn `address` away until `until`; False if it is exempt (or no address)."""
        if not address or self.is_exempt(address):
            return False
        self.banned.add(address, until)
        return True

    def is_exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a v4 client of a broker bound to "::"
        return any(ip in network for network in self.exempt)

    def is_banned(self, address: str, now: float) -> bool:
        return self.banned.holds(address, now)

    def forget_expired(self, now: float) -> None:
        self.banned.forget_expired(now)

    def answer(self, request: list[bytes], now: float) -> list[bytes] | None:
        """The ZAP reply to one request; None when it is too broken to name its request id
        (UNNAMED_REFUSAL is then the answer)."""
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
