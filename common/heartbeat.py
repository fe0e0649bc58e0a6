"""ZMTP heartbeats (RFC 37): libzmq's own liveness, in its I/O thread, with no Python call.

Both ends of the DEALER-ROUTER connection send a ZMTP PING every heartbeat
interval, and close the connection when nothing at all (a PONG, a PING, a
message) has come back within the rest of the timeout: a peer silent for the
whole timeout is cut within `timeout_ms`. The other end learns it as a
disconnect from its socket monitor (PROTOCOL.md 7).
"""

from __future__ import annotations

import zmq

#: libzmq sends the TTL in tenths of a second and multiplies it by 100 in 16 bits on
#: receipt: above 65.5 s it would wrap around to a much shorter time.
MAX_TTL_MS = 65_500


def set_heartbeats(sock: zmq.Socket[bytes], heartbeat_ms: int, timeout_ms: int) -> None:
    """Heartbeats on `sock`'s connections made from now on (set before bind or connect).

    A PING goes every `heartbeat_ms`; its timeout runs from the PING, so it is the
    rest of `timeout_ms`. The TTL asks the peer to close the connection when we fall
    silent for `timeout_ms` after one of our PINGs.
    """
    sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(timeout_ms - heartbeat_ms, 1))
    sock.setsockopt(zmq.HEARTBEAT_TTL, min(timeout_ms, MAX_TTL_MS))
