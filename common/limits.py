"""The open-file limit of a process that holds many connections (the broker, the gateway).

A login shell's soft limit is often 1,024 descriptors while the hard limit is far higher:
a broker at 1,024 holds some 500 clients, then libzmq fails to accept the next connection
(EMFILE) and the client waits in vain. Servers raise the soft limit to what they need, as
far as the hard limit lets them (Go's runtime does it at every start); so do these.
"""

from __future__ import annotations

import resource

#: Descriptors kept besides the connections: the store and its journal, libzmq's own
#: (a mailbox a socket, its I/O thread's poller), a metrics scrape, the log.
SPARE = 256


def raise_open_files(connections: int) -> tuple[int, int]:
    """Raise the soft limit towards `connections` + SPARE, never past the hard limit.

    Returns the limit now and the one wanted; the first is smaller when the hard limit
    is (the caller says so: only root, or the service's configuration, can raise it)."""
    want = connections + SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return want, want
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, want


def shortfall(limit: int, per: int, wanted: int, what: str, option: str) -> str:
    """What a process whose open-file `limit` holds fewer than the `wanted` of `option`
    (each `what` costing `per` descriptors) says at start."""
    return (
        f"open files are limited to {limit}: about {max(0, (limit - SPARE) // per)} {what}, "
        f"not the {wanted} of {option}; raise the hard limit (ulimit -Hn, or LimitNOFILE= for a "
        "systemd service)"
    )
