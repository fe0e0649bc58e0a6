"""`zchat stats`: a broker's metrics endpoint (metrics.py) as a person reads it.

Two scrapes an interval apart give rates per second; the histograms give the
median and 99th percentile of what the interval observed. In a terminal,
--watch redraws one block in place; otherwise each figure set is one plain
line of name=value pairs, for a log or a pipe. It reads the endpoint with
prometheus_client's text parser, so it needs zchat[metrics] as --metrics does.
"""

from __future__ import annotations

import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import click

from zchat.broker.metrics import ENDED, KINDS, listen_address

EXTRA_MISSING = "zchat stats needs the prometheus_client package: pip install 'zchat[metrics]'"
DEFAULT_URL = "http://127.0.0.1:9100/metrics"
#: Samples by (name, sorted label items).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_url(given: str) -> str:
    """A URL as given, or HOST:PORT (as `zchat broker --metrics` takes it) made into one."""
    if "://" in given:
        return given
    host, port = listen_address(given)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


def scrape(url: str, timeout: float = 5.0) -> Samples:
    """Every sample the endpoint serves; OSError (urllib's errors too) when it cannot be read."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as answer:
        text = answer.read().decode("utf-8", "replace")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@dataclass(frozen=True)
class Reading:
    """Two scrapes `seconds` apart."""

    before: Samples
    after: Samples
    seconds: float

    def now(self, name: str, **labels: str) -> float:
        return self.after.get((name, tuple(sorted(labels.items()))), 0.0)

    def rate(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        moved = self.after.get(key, 0.0) - self.before.get(key, 0.0)
        return max(0.0, moved) / self.seconds  # a restarted broker's counters start again

    def labelled(self, name: str, label: str) -> list[tuple[tuple[tuple[str, str], ...], str]]:
        """The label sets of `name`'s samples, with the value of `label` in each."""
        found = [(labels, dict(labels).get(label, "")) for (n, labels) in self.after if n == name]
        return sorted(found, key=lambda item: item[1])

    def quantile(self, name: str, q: float) -> float | None:
        """The q-quantile of what the histogram `name` observed in the interval, as
        Prometheus's histogram_quantile estimates it (linear within a bucket); None if nothing."""
        buckets = []
        for (n, labels), count in self.after.items():
            if n == f"{name}_bucket":
                bound = float(dict(labels)["le"])
                buckets.append((bound, count - self.before.get((n, labels), 0.0)))
        buckets.sort()
        if not buckets or buckets[-1][1] <= 0:
            return None
        rank, lower, below = q * buckets[-1][1], 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if math.isinf(bound):
                    return lower  # past the last bound: its value is all that is known
                inside = count - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = bound, count
        return lower


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def _per_s(value: float) -> str:
    return f"{value:,.1f}/s"


def refusals(r: Reading) -> list[tuple[str, float, float]]:
    """(code reason, rate, total) of each refusal code seen at all, busiest first."""
    found = []
    for labels, code in r.labelled("zchat_refusals_total", "code"):
        total = r.after[("zchat_refusals_total", labels)]
        if total:
            reason = dict(labels).get("reason", "")
            found.append((f"{code} {reason}".strip(), r.rate("zchat_refusals_total", **dict(labels)), total))
    return sorted(found, key=lambda row: (-row[1], -row[2]))


def block(r: Reading, url: str) -> list[str]:
    """The figures for a terminal: one line per subject."""
    info = dict(next((labels for name, labels in r.after if name == "zchat_build_info"), ()))
    when = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
    lines = [
        f"zchat broker at {url} (zchat {info.get('version', '?')}, {info.get('transport', '?')})  {when}",
        "",
        f"online      {r.now('zchat_clients_online'):,.0f} clients "
        f"({r.now('zchat_sessions', transport='web'):,.0f} on the web)   rooms {r.now('zchat_rooms'):,.0f}   "
        f"stuck {r.now('zchat_stuck_sessions'):,.0f}",
        "messages    "
        + "   ".join(
            f"{kind} {_per_s(r.rate('zchat_messages_routed_total', kind=kind))} "
            f"({r.now('zchat_messages_routed_total', kind=kind):,.0f})"
            for kind in KINDS
        ),
        f"            received {_per_s(r.rate('zchat_commands_received_total'))}   "
        f"mailboxed {_per_s(r.rate('zchat_messages_mailboxed_total'))}   "
        f"duplicates {_per_s(r.rate('zchat_messages_duplicate_total'))}",
    ]
    refused = refusals(r)
    shown = ", ".join(f"{what} {_per_s(rate)} ({total:,.0f})" for what, rate, total in refused[:4])
    lines.append(f"refused     {shown or 'none'}")
    ended = "   ".join(
        f"{reason} {r.now('zchat_sessions_ended_total', reason=reason):,.0f}"
        for reason in ENDED
        if r.now("zchat_sessions_ended_total", reason=reason)
    )
    lines.append(
        f"sessions    new {_per_s(r.rate('zchat_sessions_started_total', how='new'))}   "
        f"resumed {_per_s(r.rate('zchat_sessions_started_total', how='resumed'))}   ended: {ended or 'none'}"
    )
    lines.append(
        f"queue full  replies {_per_s(r.rate('zchat_queue_full_total', what='reply'))}   "
        f"messages {_per_s(r.rate('zchat_queue_full_total', what='message'))}   "
        f"unreachable {_per_s(r.rate('zchat_replies_unreachable_total'))}"
    )
    lines.append(
        f"floods      disconnected {r.now('zchat_sessions_ended_total', reason='flooding'):,.0f}   "
        f"bans {r.now('zchat_address_bans_total'):,.0f} (now {r.now('zchat_addresses_banned'):,.0f})   "
        f"handshakes refused {r.now('zchat_handshakes_refused_total'):,.0f}"
    )
    store = "up" if r.now("zchat_store_up") else "DOWN (refusing with 508)"
    lines.append(
        f"store       {store}   commit p50 {_ms(r.quantile('zchat_store_commit_seconds', 0.5))} "
        f"p99 {_ms(r.quantile('zchat_store_commit_seconds', 0.99))}   "
        f"failures {r.now('zchat_failures_total', what='store'):,.0f}"
    )
    lines.append(
        f"hand-off    p50 {_ms(r.quantile('zchat_handoff_seconds', 0.5))} "
        f"p99 {_ms(r.quantile('zchat_handoff_seconds', 0.99))}   "
        f"handler failures {r.now('zchat_failures_total', what='handler'):,.0f}"
    )
    if in_cluster(r):
        nats = "up" if r.now("zchat_cluster_nats_connected") else "DOWN (reconnecting)"
        lines.append(
            f"cluster     NATS {nats}   publish p50 {_ms(r.quantile('zchat_cluster_publish_seconds', 0.5))} "
            f"p99 {_ms(r.quantile('zchat_cluster_publish_seconds', 0.99))}   "
            f"lag {r.now('zchat_cluster_log_lag_messages'):,.0f} events "
            f"({r.now('zchat_cluster_log_lag_seconds'):.1f} s)   "
            f"lease failures {r.now('zchat_cluster_lease_renewals_failed_total'):,.0f}"
        )
    return lines


def in_cluster(r: Reading) -> bool:
    """Whether the broker is one of a cluster's (it shows zchat_cluster_* figures)."""
    return ("zchat_cluster_nats_connected", ()) in r.after


def line(r: Reading) -> str:
    """The figures as one plain line of name=value pairs, for a pipe or a log."""
    pairs: list[tuple[str, object]] = [
        ("time", datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")),
        ("online", int(r.now("zchat_clients_online"))),
        ("rooms", int(r.now("zchat_rooms"))),
    ]
    pairs += [(f"{kind}/s", round(r.rate("zchat_messages_routed_total", kind=kind), 1)) for kind in KINDS]
    pairs += [("received/s", round(r.rate("zchat_commands_received_total"), 1))]
    pairs += [("refused/s", round(sum(rate for _, rate, _ in refusals(r)), 1))]
    pairs += [(f"refused.{what.split()[0]}/s", round(rate, 1)) for what, rate, _ in refusals(r) if rate]
    pairs += [
        ("queue_full/s", round(r.rate("zchat_queue_full_total", what="reply")
                               + r.rate("zchat_queue_full_total", what="message"), 1)),
        ("timeouts", int(r.now("zchat_sessions_ended_total", reason="timeout"))),
        ("flood_disconnects", int(r.now("zchat_sessions_ended_total", reason="flooding"))),
        ("bans", int(r.now("zchat_address_bans_total"))),
        ("store_up", int(r.now("zchat_store_up"))),
        ("commit_p99_ms", _bare_ms(r.quantile("zchat_store_commit_seconds", 0.99))),
        ("handoff_p99_ms", _bare_ms(r.quantile("zchat_handoff_seconds", 0.99))),
    ]  # fmt: skip
    pairs.insert(2, ("web", int(r.now("zchat_sessions", transport="web"))))
    if in_cluster(r):
        pairs += [
            ("nats_connected", int(r.now("zchat_cluster_nats_connected"))),
            ("publish_p99_ms", _bare_ms(r.quantile("zchat_cluster_publish_seconds", 0.99))),
            ("lag_events", int(r.now("zchat_cluster_log_lag_messages"))),
            ("lag_s", round(r.now("zchat_cluster_log_lag_seconds"), 1)),
            ("lease_failures", int(r.now("zchat_cluster_lease_renewals_failed_total"))),
        ]
    return " ".join(f"{name}={value}" for name, value in pairs)


def _bare_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3f}"


#: Home, each line cleared to its end, what is left of the screen cleared: no flicker.
HOME, END_OF_LINE, REST = "\x1b[H", "\x1b[K", "\x1b[J"


def draw(lines: Sequence[str], write: Callable[[str], object]) -> None:
    write(HOME + "".join(f"{text}{END_OF_LINE}\n" for text in lines) + REST)


@click.command()
@click.option(
    "--metrics",
    "given",
    default=DEFAULT_URL,
    show_default=True,
    envvar="ZCHAT_METRICS",
    metavar="URL|HOST:PORT",
    help="The broker's metrics endpoint (`zchat broker --metrics`).",
)
@click.option("--watch", is_flag=True, help="Keep refreshing until Ctrl-C.")
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds between scrapes: rates are per second over it.",
)
def stats(given: str, watch: bool, interval: float) -> None:
    """A broker's figures, with rates per second: who is on, traffic, refusals, the store."""
    try:
        import prometheus_client.parser  # noqa: F401
    except ImportError:
        raise click.ClickException(EXTRA_MISSING) from None
    try:
        url = metrics_url(given)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--metrics") from None
    terminal = sys.stdout.isatty()
    out = sys.stdout

    def read() -> tuple[Samples, float]:
        try:
            return scrape(url), time.monotonic()
        except (OSError, ValueError) as e:  # refused, timed out, not the text format
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise click.ClickException(f"cannot read metrics at {url}: {reason}") from None

    try:
        before, then = read()
        if terminal and watch:
            out.write("\x1b[2J")
            draw([f"zchat broker at {url}: first figures in {interval:g} s"], out.write)
            out.flush()
        while True:
            time.sleep(interval)
            try:
                after, now = read()
            except click.ClickException as e:
                if not watch:
                    raise
                # A broker restarting: say so, and go on trying.
                if terminal:
                    draw([f"{e.message}; trying again every {interval:g} s"], out.write)
                else:
                    out.write(f"error={e.message!r}\n")
                out.flush()
                continue
            reading = Reading(before, after, max(1e-6, now - then))
            if terminal:
                if watch:
                    draw(block(reading, url), out.write)
                else:
                    out.write("\n".join(block(reading, url)) + "\n")
            else:
                out.write(line(reading) + "\n")
            out.flush()
            if not watch:
                return
            before, then = after, now
    except KeyboardInterrupt:
        if terminal:
            out.write("\n")
