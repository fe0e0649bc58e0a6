"""Closing one client's TCP connection under a ROUTER socket.

ZeroMQ has no call to drop one peer of a ROUTER; it does tell which file
descriptor a message came on (SRCFD). Shutting that socket down makes
libzmq see the peer hang up, and it cleans up as for any lost connection.
The broker holds a duplicate of the descriptor until then, so a number
reused by a newer connection can never be cut by mistake.
"""

from __future__ import annotations

import contextlib
import os
import socket

import zmq


def take_hold(frame: zmq.Frame) -> socket.socket | None:
    """A handle on the connection `frame` arrived on; None if it is gone or not TCP."""
    try:
        fd = frame.get(zmq.SRCFD)
        address = frame.get("Peer-Address")
    except zmq.ZMQError:
        return None
    if not isinstance(fd, int) or fd < 0:
        return None
    try:
        held = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        peer_host = held.getpeername()[0]
    except (OSError, IndexError, TypeError):
        peer_host = None
    if peer_host != address:  # closed, and the number given to another connection meanwhile
        held.close()
        return None
    return held


def cut(held: socket.socket) -> None:
    """Hang up the connection, then let go of the broker's handle on it."""
    with contextlib.suppress(OSError):  # the peer hung up first
        held.shutdown(socket.SHUT_RDWR)
    held.close()
