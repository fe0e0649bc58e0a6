"""ZMTP heartbeats (RFC 37): libzmq's own liveness, in its I/O thread, with no Python call.

The broker pings: its ROUTER sends a ZMTP PING every heartbeat interval, with a
TTL of the timeout, and closes a connection on which nothing at all (a PONG, a
message) came back within the rest of the timeout. The client's DEALER closes
the connection when nothing came from the broker for the TTL after one of its
PINGs; but libzmq arms that TTL only at a PING and cancels it at any later
frame, so a broker that stopped just after sending a message would never be
found by it. So the client pings too, as a backstop and less often: every
timeout, giving up when nothing came back within the timeout less the interval
(as the broker does after its PINGs). Any frame resets the other side's timer,
but libzmq sends each side's PINGs regardless.

What the timing costs is libzmq's timer list, not the frames: its I/O thread
keeps every timer of every connection in one ordered map, and cancelling one
(a PONG cancels its PING's timeout) walks it from the earliest. With the
timeout after a PING (timeout - interval) longer than the interval, every PONG
walked past all the connections' interval timers: 5,000 idle clients cost the
broker 21 % of a core at 2 s / 6 s. At 4 s / 6 s the timeout after a PING
(2 s) is due before the next interval timers, and it costs 5 % (docs/BENCHMARKS.md).
Either end learns of a closed connection from its socket monitor (PROTOCOL.md 7).
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


def set_client_heartbeats(sock: zmq.Socket[bytes], heartbeat_ms: int, timeout_ms: int) -> None:
    """The client's DEALER, given the broker's timing: a PING of its own every `timeout_ms`,
    the connection given up when nothing came back within `timeout_ms` - `heartbeat_ms`
    (the broker's own margin after its PINGs). A broker that stopped is found within
    `timeout_ms` by its TTL, and at worst within 2 x `timeout_ms` - `heartbeat_ms`
    (PROTOCOL.md 7.2)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(timeout_ms - heartbeat_ms, 1))
