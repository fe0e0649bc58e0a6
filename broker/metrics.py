"""The broker's Prometheus endpoint (`zchat broker --metrics HOST:PORT`), docs/OPERATING.md.

The loop pays nothing for it: it keeps the plain counters it always kept
(core.counters, the gate's, two histograms) and never knows it is scraped.
prometheus_client serves HTTP in its own thread, where `BrokerCollector`
reads those figures at each scrape. It takes no lock, and needs none: each
read is one C-level operation under the GIL, which the loop cannot interrupt
halfway (a copy of the counters dict, len() of a dict, one int, a copy of a
histogram's one list), so every figure is one the loop really had. Figures
of different metrics may be microseconds apart; none is torn. The collector
never iterates a structure the loop changes (it counts sessions by kind in
a copy of the dict of them), and never touches the store (its SQLite
connection belongs to the loop's thread). With --cluster it reads the NATS
thread's figures the same way (cluster/figures.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from zchat.broker.measures import Histogram
from zchat.common.protocol import Code

if TYPE_CHECKING:
    from zchat.broker.server import BrokerServer
    from zchat.cluster.figures import ClusterFigures

EXTRA_MISSING = "--metrics needs the prometheus_client package: pip install 'zchat[metrics]'"

#: Why a session ended, as core.py counts them (left.<reason>): the `reason` label's values.
ENDED = ("quit", "timeout", "stuck", "flooding", "disconnected")
#: Messages routed, by the core's counter: the `kind` label's values.
KINDS = ("private", "broadcast", "room")
#: The counters read from the core's `counters` as they are: name, help, label (None: none),
#: and each label value's counter (one, under "", when unlabelled).
COUNTERS: tuple[tuple[str, str, str | None, dict[str, str]], ...] = (
    ("zchat_sessions_started", "Sessions registered (new) or taken over on a new connection (resumed).",
     "how", {"new": "joined", "resumed": "resumed"}),
    ("zchat_sessions_ended", "Sessions ended, by reason.", "reason", {r: f"left.{r}" for r in ENDED}),
    ("zchat_commands_received", "Messages read from clients, readable or not.", None, {"": "received"}),
    ("zchat_messages_routed", "Messages routed, by kind: private, broadcast (the lobby), room.",
     "kind", {kind: kind for kind in KINDS}),
    ("zchat_messages_mailboxed", "Private messages kept in an offline user's mailbox.", None, {"": "stored"}),
    ("zchat_messages_duplicate", "Messages resent with an id already accepted: answered, not routed again.",
     None, {"": "duplicate"}),
    ("zchat_queue_full", "Sends that found a client's queue full: a reply, or a private message (507).",
     "what", {"reply": "dropped.busy", "message": "undelivered.busy"}),
    ("zchat_replies_unreachable", "Replies to a connection that was gone.", None, {"": "dropped.unreachable"}),
    ("zchat_flooder_messages_ignored", "Messages ignored from connections disconnected for flooding.",
     None, {"": "dropped.flooder"}),
    ("zchat_address_bans", "Addresses turned away after a flood (not counting exempt ones).",
     None, {"": "banned"}),
    ("zchat_failures", "The broker's own failures: a command or task that raised, a store write.",
     "what", {"handler": "failed", "store": "store.failed"}),
)  # fmt: skip
#: HELLO's client kinds (PROTOCOL.md 4.1) as the `client` label: any other is "other", none "unnamed".
CLIENTS = {"terminal": "terminal", "web": "web", "library": "library", "bot": "bot", "": "unnamed"}
CLIENT_LABELS = (*dict.fromkeys(CLIENTS.values()), "other")


class MetricsUnavailable(Exception):
    """prometheus_client is not installed: the message names the extra."""


def listen_address(spec: str) -> tuple[str, int]:
    """(host, port) from "HOST:PORT", "[IPv6]:PORT" or "PORT" (loopback); ValueError says why."""
    host, colon, port = spec.rpartition(":")
    if not colon:
        host, port = "127.0.0.1", spec
    if not (port.isascii() and port.isdigit() and 0 <= int(port) < 65536):
        raise ValueError(f"{spec!r}: give HOST:PORT, the port a number from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{spec!r}: {host!r} in brackets is not an IPv6 address") from None
    elif not host or ":" in host:
        raise ValueError(f"{spec!r}: give HOST:PORT, e.g. 127.0.0.1:9100 or [::1]:9100")
    return host, int(port)


def zchat_version() -> str:
    try:
        return version("zchat")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


class MetricsServer:
    """The HTTP endpoint in prometheus_client's thread; `url` is where it listens."""

    def __init__(self, broker: BrokerServer, spec: str) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
            from prometheus_client.process_collector import ProcessCollector
        except ImportError:
            raise MetricsUnavailable(EXTRA_MISSING) from None
        host, port = listen_address(spec)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BrokerCollector(broker))
        ProcessCollector(registry=registry)  # CPU, memory, file descriptors: what a process costs
        self._http, self._thread = start_http_server(port, addr=host, registry=registry)
        bound = self._http.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/metrics"

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)


def _histogram(family: Any, histogram: Histogram) -> Any:
    buckets, total = histogram.cumulative()
    family.add_metric([], [(_le(bound), count) for bound, count in buckets], total)
    return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class BrokerCollector:
    """Reads the broker's figures at each scrape (prometheus_client's Collector protocol)."""

    def __init__(self, broker: BrokerServer) -> None:
        self.broker = broker
        self.transport = "curve" if broker.settings.curve is not None else "plain"
        self.version = zchat_version()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        broker, core = self.broker, self.broker.core
        counters = dict(core.counters)  # one atomic copy: every counter below from the same moment
        count = counters.get

        info = GaugeMetricFamily("zchat_build_info", "The broker's version and transport (always 1).",
                                 labels=["version", "transport"])  # fmt: skip
        info.add_metric([self.version, self.transport], 1)
        yield info

        # One C-level copy, then only reads of it: each session's HELLO kind, a plain str.
        online_now = list(core.by_peer.values())
        online = len(online_now)
        yield GaugeMetricFamily(
            "zchat_clients_online", "Sessions registered on this broker now.", value=online
        )
        kinds = dict.fromkeys(CLIENT_LABELS, 0)
        for session in online_now:
            kinds[CLIENTS.get(session.client, "other")] += 1
        sessions = GaugeMetricFamily(
            "zchat_sessions", "Sessions on this broker now, by transport: web (a browser through the web "
            "gateway, by its HELLO), else the broker's own (plain or curve).", labels=["transport"],
        )  # fmt: skip
        for transport in ("plain", "curve"):
            sessions.add_metric([transport], online - kinds["web"] if transport == self.transport else 0)
        sessions.add_metric(["web"], kinds["web"])
        yield sessions
        by_client = GaugeMetricFamily(
            "zchat_sessions_by_client", "Sessions on this broker now, by the client kind their HELLO gave "
            "(informational, not trusted).", labels=["client"],
        )  # fmt: skip
        for kind, sessions_of_kind in kinds.items():
            by_client.add_metric([kind], sessions_of_kind)
        yield by_client
        rooms = core.rooms_in_use
        yield GaugeMetricFamily("zchat_rooms", "Rooms with at least one member.", value=rooms or 0)
        yield GaugeMetricFamily(
            "zchat_stuck_sessions", "Sessions whose queue is full now (dropped after the heartbeat timeout).",
            value=len(core.stuck),
        )  # fmt: skip

        for name, help_text, label, keys in COUNTERS:
            if label is None:
                yield CounterMetricFamily(name, help_text, value=count(keys[""], 0))
                continue
            family = CounterMetricFamily(name, help_text, labels=[label])
            for label_value, key in keys.items():
                family.add_metric([label_value], count(key, 0))
            yield family

        refusals = CounterMetricFamily(
            "zchat_refusals",
            "Commands answered with ERROR, by code (PROTOCOL.md 9).",
            labels=["code", "reason"],
        )
        for code in Code:
            reason = code.name.lower()
            refusals.add_metric([str(int(code)), reason], count(f"refused.{reason}", 0))
        yield refusals

        gate = broker.gate
        yield GaugeMetricFamily(
            "zchat_addresses_banned", "Addresses turned away now.", value=len(gate.banned.until)
        )
        yield CounterMetricFamily(
            "zchat_handshakes_refused", "Connections refused in the ZeroMQ handshake (a banned address).",
            value=gate.turned_away,
        )  # fmt: skip

        yield GaugeMetricFamily(
            "zchat_store_up", "1 while the store can be written, 0 after a failed commit until one succeeds.",
            value=0 if core.failures.store_down else 1,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "zchat_store_waiting", "Events to publish and connections with ACKs, held now for the next commit.",
            value=len(core._to_publish) + len(core._acks),
        )  # fmt: skip
        yield _histogram(
            HistogramMetricFamily(
                "zchat_store_commit_seconds", "Time of each store commit that wrote messages.", unit="seconds"
            ),
            core.commit_time,
        )
        yield _histogram(
            HistogramMetricFamily(
                "zchat_handoff_seconds",
                "From the wake-up that read a message to the flush that handed its effects to ZeroMQ "
                "(one observation per flush, weighted by its messages).",
                unit="seconds",
            ),
            broker.handoff,
        )
        if broker.cluster is not None:
            yield from _cluster(broker.cluster.engine.figures)


def _cluster(figures: ClusterFigures) -> Iterator[Any]:
    """The NATS thread's own figures (cluster/figures.py), with --cluster only."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    yield GaugeMetricFamily(
        "zchat_cluster_nats_connected", "1 while the connection to NATS is up, 0 while it reconnects.",
        value=figures.connected,
    )  # fmt: skip
    yield _histogram(
        HistogramMetricFamily(
            "zchat_cluster_publish_seconds",
            "From publishing an event into the cluster's log (JetStream) to its PubAck.",
            unit="seconds",
        ),
        figures.publish_time,
    )
    yield CounterMetricFamily(
        "zchat_cluster_publish_failures", "Publishes into the log that got no PubAck in 5 s, or an error.",
        value=figures.publish_failed,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "zchat_cluster_log_lag_messages", "Events of the log not yet delivered to this broker (checked each second).",
        value=figures.lag_messages,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "zchat_cluster_log_lag_seconds", "How long the oldest event not yet delivered to this broker has waited.",
        value=figures.lag_seconds, unit="seconds",
    )  # fmt: skip
    yield GaugeMetricFamily(
        "zchat_cluster_log_last_sequence", "The log's last sequence number, as last checked.",
        value=figures.stream_last_seq,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "zchat_cluster_log_delivered_sequence", "The sequence number of the last event of the log delivered here.",
        value=figures.delivered_seq,
    )  # fmt: skip
    yield CounterMetricFamily(
        "zchat_cluster_lease_renewals_failed", "Renewals of this broker's lease that failed (NATS away).",
        value=figures.lease_renewals_failed,
    )  # fmt: skip
