"""What the NATS thread measures of the cluster, for the metrics endpoint (broker/metrics.py).

The NATS thread writes these plain figures as it goes (an int, one
histogram observation); the collector reads them from prometheus_client's
thread at each scrape, each read one attribute or one list copy, atomic
under the GIL, as broker/measures.py explains. Nothing here talks to NATS.
"""

from __future__ import annotations

from zchat.broker.measures import SECONDS, Histogram

#: A publish waits at most engine.RELAY_TIMEOUT (5 s) for its PubAck: buckets up to there.
PUBLISH_SECONDS = (*SECONDS, 2.5, 5.0)


class ClusterFigures:
    __slots__ = (
        "connected",
        "delivered_seq",
        "lag_messages",
        "lag_seconds",
        "lease_renewals_failed",
        "publish_failed",
        "publish_time",
        "stream_last_seq",
    )

    def __init__(self, position: int) -> None:
        #: 1 while the NATS connection is up, 0 while it reconnects.
        self.connected = 0
        #: From publish_async to its PubAck, for each message put into the log.
        self.publish_time = Histogram(PUBLISH_SECONDS)
        #: Publishes whose PubAck never came (in RELAY_TIMEOUT) or that NATS refused.
        self.publish_failed = 0
        self.lease_renewals_failed = 0
        #: The last sequence of the log this broker's consumer delivered, and the stream's last.
        self.delivered_seq = position
        self.stream_last_seq = position
        #: Messages of the log not yet delivered here, and how long the oldest of them has waited.
        self.lag_messages = 0
        self.lag_seconds = 0.0
