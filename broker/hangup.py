"""Closing one client's TCP connection under a ROUTER socket.

ZeroMQ has no call to drop one peer of a ROUTER; it does tell which file
descriptor a message came on (SRCFD). Shutting that socket down makes
libzmq see the peer hang up, and it cleans up as for any lost connection.

A descriptor number is reused as soon as its connection closes, and a
message may be read after that. So the broker notes the full peer (host
and port) when a connection says HELLO, if its host is the one ZeroMQ
gives for the message (Peer-Address), and cuts only a socket that still
has that peer; it holds a duplicate of the descriptor until the cut. What
is left: a HELLO read only after its connection closed and its number went
to a new connection from the same host would name that connection (a
local user could get a neighbour's connection cut, who then reconnects).
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

import zmq

#: A TCP peer as getpeername() gives it: (host, port) or (host, port, flow, scope).
Peer = tuple[Any, ...]


def _connection_of(frame: zmq.Frame) -> socket.socket | None:
    """A duplicate handle on the connection `frame` arrived on; None if gone or not TCP."""
    try:
        fd = frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return None
    if not isinstance(fd, int) or fd < 0:
        return None
    try:
        copy = os.dup(fd)
    except OSError:
        return None
    try:
        return socket.socket(fileno=copy)
    except OSError:  # the number is no socket now
        os.close(copy)
        return None


def _peer(held: socket.socket) -> Peer | None:
    try:
        return tuple(held.getpeername())
    except (OSError, TypeError):
        return None


def address_of(frame: zmq.Frame) -> str:
    """The peer's IP address as ZeroMQ recorded it for this message ("" if it has none)."""
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return ""


def peer_of_descriptor(fd: int) -> Peer | None:
    """Who is at the other end of descriptor `fd` now; None if it is no open TCP socket."""
    try:
        copy = os.dup(fd)
    except OSError:
        return None
    try:
        held = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return None
    try:
        return _peer(held)
    finally:
        held.close()


def origin_of(frame: zmq.Frame) -> Peer | None:
    """Who is at the other end of the connection `frame` arrived on; None when that
    cannot be the connection the message came on (closed, or now another host's)."""
    held = _connection_of(frame)
    if held is None:
        return None
    try:
        peer = _peer(held)
    finally:
        held.close()
    return peer if peer is not None and peer[0] == address_of(frame) else None


def take_hold(frame: zmq.Frame, expected: Peer) -> socket.socket | None:
    """A handle on `frame`'s connection if it is still the one to `expected`, else None."""
    held = _connection_of(frame)
    if held is not None and _peer(held) != expected:
        held.close()  # closed, and the number given to another connection meanwhile
        return None
    return held


def cut(held: socket.socket) -> None:
    """Hang up the connection, then let go of the broker's handle on it."""
    with contextlib.suppress(OSError):  # the peer hung up first
        held.shutdown(socket.SHUT_RDWR)
    held.close()
