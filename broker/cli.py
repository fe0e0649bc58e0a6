"""`zchat broker`: options, logging and the process lifetime of the broker.

The options make one BrokerSettings (settings.py), read once from the command
line and the environment; each option's default is the setting's own.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import sys
from pathlib import Path

import click
import zmq

from zchat.broker.gate import networks
from zchat.broker.metrics import MetricsUnavailable, listen_address
from zchat.broker.server import BrokerServer, ClusterUnavailable, advertisable
from zchat.broker.settings import BrokerSettings, default
from zchat.broker.store import StoreError
from zchat.common import jsonlog, keys


@click.command()
@click.option(
    "--host",
    default=default("host"),
    show_default=True,
    envvar="ZCHAT_HOST",
    help="Interface to bind; 0.0.0.0 for every interface (containers).",
)
@click.option(
    "--port",
    default=default("port"),
    show_default=True,
    envvar="ZCHAT_PORT",
    type=click.IntRange(0, 65535),
    help="ROUTER port for commands (0: any free port).",
)
@click.option(
    "--pub-port",
    default=default("pub_port"),
    show_default=True,
    envvar="ZCHAT_PUB_PORT",
    type=click.IntRange(0, 65535),
    help="PUB port for broadcasts and presence (0: any free port).",
)
@click.option(
    "--advertise-pub",
    default=None,
    envvar="ZCHAT_ADVERTISE_PUB",
    metavar="ENDPOINT",
    help="Tell clients to connect to broadcasts here, e.g. tcp://*:7001 behind a published or forwarded "
    "port ('*': the host the client reached the broker on) [default: where the PUB listens].",
)
@click.option(
    "--heartbeat-interval",
    default=default("heartbeat_ms") / 1000,
    show_default=True,
    envvar="ZCHAT_HEARTBEAT_INTERVAL",
    type=click.FloatRange(0.05, 3600),
    help="Seconds between client heartbeats (told to clients).",
)
@click.option(
    "--heartbeat-timeout",
    default=default("timeout_ms") / 1000,
    show_default=True,
    envvar="ZCHAT_HEARTBEAT_TIMEOUT",
    type=click.FloatRange(0.1, 86400),
    help="Seconds of silence after which a client is dropped.",
)
@click.option(
    "--max-message-size",
    default=default("max_body"),
    show_default=True,
    envvar="ZCHAT_MAX_MESSAGE_SIZE",
    type=click.IntRange(1, 64 * 1024 * 1024),
    help="Largest message text in bytes.",
)
@click.option(
    "--store",
    default=None,
    envvar="ZCHAT_STORE",
    metavar="PATH",
    help="SQLite file for rooms, history and mailboxes [default: zchat.db in the user data folder]; "
    ":memory: keeps nothing.",
)
@click.option(
    "--history-days",
    default=default("history_days"),
    show_default=True,
    envvar="ZCHAT_HISTORY_DAYS",
    type=click.FloatRange(0.001, 36500),
    help="Days of history to keep.",
)
@click.option(
    "--curve-secret",
    default=None,
    envvar="ZCHAT_CURVE_SECRET",
    metavar="FILE",
    help="Encrypt all traffic with CURVE, with the key pair in FILE (from `zchat keygen`).",
)
@click.option(
    "--trust",
    type=click.Choice(["first-use", "allowlist"]),
    default="first-use",
    show_default=True,
    envvar="ZCHAT_TRUST",
    help="With CURVE: a name belongs to the first key that uses it, or only to its key in --authorized-keys.",
)
@click.option(
    "--authorized-keys",
    default=None,
    envvar="ZCHAT_AUTHORIZED_KEYS",
    metavar="DIR",
    help="With --trust allowlist: NAME.pub files, each the public key that may use NAME.",
)
@click.option(
    "--max-clients",
    default=default("max_clients"),
    show_default=True,
    envvar="ZCHAT_MAX_CLIENTS",
    type=click.IntRange(1),
    help="Clients registered at once, in all.",
)
@click.option(
    "--io-threads",
    default=default("io_threads"),
    show_default=True,
    envvar="ZCHAT_IO_THREADS",
    type=click.IntRange(1, 64),
    help="ZeroMQ I/O threads. Past some 10,000 clients, one per 2,000 keeps their heartbeats cheap; "
    "below, one is fastest (docs/OPERATING.md).",
)
@click.option(
    "--max-rooms-per-user",
    default=default("max_rooms_per_user"),
    show_default=True,
    envvar="ZCHAT_MAX_ROOMS_PER_USER",
    type=click.IntRange(1),
    help="Rooms one user may be a member of at once.",
)
@click.option(
    "--max-rooms",
    default=default("max_rooms"),
    show_default=True,
    envvar="ZCHAT_MAX_ROOMS",
    type=click.IntRange(1),
    help="Rooms with members, in all.",
)
@click.option(
    "--max-sessions-per-key",
    default=default("max_per_key"),
    show_default=True,
    envvar="ZCHAT_MAX_SESSIONS_PER_KEY",
    type=click.IntRange(1),
    help="With CURVE: sessions one client key may hold at once.",
)
@click.option(
    "--rate",
    default=default("rate"),
    show_default=True,
    envvar="ZCHAT_RATE",
    type=click.FloatRange(0, 1e9),
    help="Messages and other requests (rooms, listings, history, search, receipts) a second per client "
    "(0: no limit).",
)
@click.option(
    "--burst",
    default=int(default("burst")),
    show_default=True,
    envvar="ZCHAT_BURST",
    type=click.IntRange(1, 10**9),
    help="Most a client may send at once, saved up while it is quiet.",
)
@click.option(
    "--cool-off",
    default=default("cool_off"),
    show_default=True,
    envvar="ZCHAT_COOL_OFF",
    type=click.FloatRange(0, 86400),
    help="Seconds a client's address is turned away after it is disconnected for flooding.",
)
@click.option(
    "--presence-hold",
    default=int(default("presence_hold") * 1000),
    show_default=True,
    envvar="ZCHAT_PRESENCE_HOLD",
    type=click.IntRange(0, 1000),
    help="Milliseconds the lobby is held during a storm of joins and leaves (fifty or more in that "
    "time: everyone signing in again after a restart), so that they go out together; 0: never.",
)
@click.option(
    "--ban-exempt",
    multiple=True,
    default=default("ban_exempt"),
    show_default=True,
    envvar="ZCHAT_BAN_EXEMPT",
    metavar="ADDRESS|NETWORK",
    help="Never turn these away after a flood, e.g. a proxy or NAT that many users share. "
    "Given, they replace the default; repeat for several, 'none' for none.",
)
@click.option(
    "--metrics",
    default=None,
    envvar="ZCHAT_METRICS",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics over HTTP there, e.g. 127.0.0.1:9100 (docs/OPERATING.md; "
    "needs zchat[metrics]) [default: none].",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    envvar="ZCHAT_LOG_FORMAT",
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="Log lines as readable text, or as one JSON object each (time, level, event, fields).",
)
@click.option(
    "--cluster",
    default=None,
    envvar="ZCHAT_CLUSTER",
    metavar="URL[,URL...]",
    help="Join the brokers of a cluster over NATS JetStream, e.g. nats://127.0.0.1:4222 "
    "(docs/CLUSTER.md; needs pip install 'zchat[cluster]') [default: a broker alone].",
)
@click.option(
    "--node",
    default=default("node"),
    envvar="ZCHAT_NODE",
    metavar="NAME",
    help="This broker's name in the cluster [default: the host and port it listens on].",
)
@click.option(
    "--replicas",
    default=default("replicas"),
    show_default=True,
    envvar="ZCHAT_REPLICAS",
    type=click.IntRange(1, 5),
    help="Copies NATS JetStream keeps of what the cluster shares (3 with three NATS servers: "
    "any one may fail); given when the first broker creates them (docs/CLUSTER.md).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar="ZCHAT_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def broker(
    host: str,
    port: int,
    pub_port: int,
    advertise_pub: str | None,
    heartbeat_interval: float,
    heartbeat_timeout: float,
    max_message_size: int,
    store: str | None,
    history_days: float,
    rate: float,
    burst: int,
    cool_off: float,
    presence_hold: int,
    ban_exempt: tuple[str, ...],
    curve_secret: str | None,
    trust: str,
    max_clients: int,
    io_threads: int,
    max_sessions_per_key: int,
    max_rooms_per_user: int,
    max_rooms: int,
    authorized_keys: str | None,
    metrics: str | None,
    log_format: str,
    cluster: str | None,
    node: str,
    replicas: int,
    log_level: str,
) -> None:
    """Run the zchat broker until SIGINT or SIGTERM."""
    jsonlog.configure(log_level, log_format.lower())
    faulthandler.enable()  # a fatal signal (SIGSEGV, SIGBUS, ...) leaves a traceback in the log
    if heartbeat_timeout <= heartbeat_interval:
        raise click.BadParameter("must be longer than --heartbeat-interval", param_hint="--heartbeat-timeout")
    if trust == "allowlist" and not (curve_secret and authorized_keys):
        raise click.UsageError("--trust allowlist needs --curve-secret and --authorized-keys DIR")
    if advertise_pub is not None:
        try:
            advertisable(advertise_pub)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--advertise-pub") from None
    if metrics is not None:
        try:
            listen_address(metrics)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--metrics") from None
    exempt = tuple(spec for spec in ban_exempt if spec.lower() != "none")
    try:
        networks(exempt)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--ban-exempt") from None
    try:
        curve = keys.load_pair(Path(curve_secret)) if curve_secret else None
        authorized = (
            keys.allowlist(Path(authorized_keys)) if trust == "allowlist" and authorized_keys else None
        )
    except keys.KeyFileError as e:
        raise click.ClickException(str(e)) from None
    settings = BrokerSettings(
        host=host,
        port=port,
        pub_port=pub_port,
        advertise_pub=advertise_pub,
        heartbeat_ms=int(heartbeat_interval * 1000),
        timeout_ms=int(heartbeat_timeout * 1000),
        max_body=max_message_size,
        history_days=history_days,
        rate=rate,
        burst=burst,
        cool_off=cool_off,
        presence_hold=presence_hold / 1000,
        ban_exempt=exempt,
        curve=curve,
        authorized=authorized,
        max_clients=max_clients,
        io_threads=io_threads,
        max_per_key=max_sessions_per_key,
        max_rooms_per_user=max_rooms_per_user,
        max_rooms=max_rooms,
        metrics=metrics,
        cluster=tuple(url.strip() for url in cluster.split(",") if url.strip()) if cluster else (),
        node=node,
        replicas=replicas,
    )
    if store:  # else the setting's own default, in the user data folder
        settings = dataclasses.replace(settings, store=store)
    try:
        server = BrokerServer(settings)
    except zmq.ZMQError as e:
        raise click.ClickException(f"cannot listen on {host} ports {port}/{pub_port}: {e}") from None
    except (StoreError, ClusterUnavailable) as e:
        raise click.ClickException(str(e)) from None
    except MetricsUnavailable as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # the metrics port (ZeroMQ's own errors are ZMQError, above)
        raise click.ClickException(f"cannot serve metrics on {metrics}: {e}") from None
    server.install_signal_handlers()
    server.run()
    sys.exit(server.exit_status)
