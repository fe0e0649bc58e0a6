"""A broker's membership of a cluster: what server.py builds with --cluster.

It starts the NATS thread, waits until it is connected and knows the
buckets, and hands the core the seams that hold across brokers. The shell
polls `socket` with its own sockets and calls `take` when it is readable.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from zchat.broker.settings import BrokerSettings
from zchat.cluster.link import Link, unpack
from zchat.cluster.names import ClusterNames

log = logging.getLogger("zchat.cluster")

#: How long a broker waits at start for NATS and its buckets.
START_TIMEOUT = 15.0
EXTRA = "pip install 'zchat[cluster]'"


class ClusterUnavailable(Exception):
    """The cluster cannot be joined: nats-py is missing, or NATS does not answer."""


class ClusterNode:
    def __init__(self, settings: BrokerSettings, context: zmq.Context[zmq.Socket[bytes]], node: str) -> None:
        try:
            from zchat.cluster.engine import Engine
        except ImportError as e:
            raise ClusterUnavailable(f"--cluster needs nats-py ({e}): {EXTRA}") from None
        self.node = node
        self.link = Link(context)
        self.names = ClusterNames(self.link, node, settings.authorized)
        self.engine = Engine(context, self.link.endpoint, list(settings.cluster), node)
        self.engine.start()
        self._wait_ready(settings)

    @property
    def socket(self) -> zmq.Socket[bytes]:
        return self.link.socket

    def _wait_ready(self, settings: BrokerSettings) -> None:
        synced: set[str] = set()
        deadline = time.monotonic() + START_TIMEOUT
        ready = False
        while not (ready and len(synced) == 2):
            if time.monotonic() > deadline:
                self.close()
                raise ClusterUnavailable(f"NATS at {','.join(settings.cluster)} did not answer within "
                                         f"{START_TIMEOUT:g} s")  # fmt: skip
            if not self.link.socket.poll(100):
                continue
            parts = unpack(self.link.socket.recv())
            if parts[0] == "ready":
                ready = True
            elif parts[0] == "failed":
                self.close()
                raise ClusterUnavailable(
                    f"cannot join the cluster at {','.join(settings.cluster)}: {parts[1]}"
                )
            elif parts[0] == "synced":
                synced.add(parts[1])
            else:
                self._one(parts)
        log.info("node %s joined the cluster at %s (%d online elsewhere)", self.node,
                 ",".join(settings.cluster), len(self.names.remote))  # fmt: skip

    def take(self) -> bool:
        """Carry out what the NATS thread sent; True if the sessions of other brokers changed."""
        for parts in self.link.drain():
            self._one(parts)
        changed, self.names.changed = self.names.changed, False
        return changed

    def _one(self, parts: list[Any]) -> None:
        kind = parts[0]
        if kind == "kv":
            self.names.seen(*parts[1:])
        elif kind == "failed":
            log.error("the cluster link failed: %s", parts[1])
        # "answer": a call that gave up waiting; "synced": nothing to do

    def close(self) -> None:
        if self.engine.is_alive():
            self.link.send("stop")
            self.engine.join(5)
        self.link.close()
