"""Ratios to the ceiling, the targets met or missed, and the loss summary."""

from __future__ import annotations

from typing import Any

#: Rough figures expected of the ceiling on the reference machine.
CEILING_PRIVATE = 100_000
CEILING_FANOUT = 230_000
PRIVATE_RATIO = 0.5
PRIVATE_MIN = 40_000
BROADCAST_RATIO = 0.8
P99_LOW_LOAD_MS = 2.0
P99_HALF_MAX_MS = 10.0
IDLE_CLIENTS = 5000
IDLE_RSS_MIB = 300
IDLE_CPU_PCT = 5
#: The largest idle row (run.py's idle_most): its limits.
MOST_IDLE_CPU_PCT = 25
MOST_IDLE_RSS_MIB = 3 * 1024

_SECTIONS = ("private_throughput", "broadcast_throughput", "latency", "idle_clients")


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row.get("kind"),
        row.get("pairs"),
        row.get("subscribers"),
        row.get("clients"),
        row.get("offered_per_s"),
    )


def add_ratios(results: dict[str, Any]) -> None:
    """Give each zchat row its ratio to the ceiling row of the same workload."""
    for section, figure in (
        ("private_throughput", "msgs_per_s"),
        ("broadcast_throughput", "deliveries_per_s"),
        ("latency", "p99_us"),
    ):
        rows = results.get(section) or []
        ceiling = {_key(r): r for r in rows if r["target"] == "ceiling"}
        for row in rows:
            other = ceiling.get(_key(row))
            if row["target"] != "zchat" or other is None:
                continue
            if section == "latency":
                mine, theirs = row["latency"]["p99_us"], other["latency"]["p99_us"]
            else:
                mine, theirs = row[figure], other[figure]
            row["ratio_to_ceiling"] = round(mine / theirs, 3) if theirs else None
            mine, theirs = row.get("server_main_us_per_msg"), other.get("server_main_us_per_msg")
            row["cost_ratio_to_ceiling"] = round(mine / theirs, 2) if mine and theirs else None
    idle = results.get("idle_clients") or []
    ceiling = {_key(r): r for r in idle if r["target"] == "ceiling"}
    for row in idle:
        other = ceiling.get(_key(row))
        if row["target"] == "zchat" and other is not None:
            for figure in ("server_cpu_pct", "rss_mib"):
                theirs = other[figure]
                row[f"{figure}_ratio_to_ceiling"] = round(row[figure] / theirs, 2) if theirs else None


def _check(name: str, value: float | None, target: str, met: bool | None, unit: str = "") -> dict[str, Any]:
    return {"check": name, "value": value, "unit": unit, "target": target, "met": met}


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    private = results.get("private_throughput") or []
    broadcast = results.get("broadcast_throughput") or []
    ceiling_private = [r["msgs_per_s"] for r in private if r["target"] == "ceiling"]
    if ceiling_private:
        best = max(ceiling_private)
        checks.append(_check("ceiling: private msg/s (best)", best, f"~{CEILING_PRIVATE:,}",
                             best >= 0.9 * CEILING_PRIVATE, "msg/s"))  # fmt: skip
    ceiling_fanout = [r["deliveries_per_s"] for r in broadcast if r["target"] == "ceiling"]
    if ceiling_fanout:
        best = max(ceiling_fanout)
        checks.append(_check("ceiling: PUB fan-out deliveries/s (best)", best, f"~{CEILING_FANOUT:,}",
                             best >= 0.9 * CEILING_FANOUT, "deliveries/s"))  # fmt: skip
    for row in private:
        if row["target"] == "zchat":
            ratio = row.get("ratio_to_ceiling")
            met = row["msgs_per_s"] >= PRIVATE_MIN and ratio is not None and ratio >= PRIVATE_RATIO
            checks.append(_check(f"zchat private msg/s, {row['pairs']} pairs (ratio {ratio})", row["msgs_per_s"],
                                 f">= {PRIVATE_MIN:,} and >= {PRIVATE_RATIO} x ceiling", met, "msg/s"))  # fmt: skip
    for row in broadcast:
        if row["target"] == "zchat":
            ratio = row.get("ratio_to_ceiling")
            met = ratio is not None and ratio >= BROADCAST_RATIO
            checks.append(_check(f"zchat broadcast, {row['subscribers']} subscribers (deliveries/s)", ratio,
                                 f">= {BROADCAST_RATIO} x ceiling", met, "x ceiling"))  # fmt: skip
    for row in results.get("latency") or []:
        if row["target"] != "zchat":
            continue
        p99_ms = row["latency"]["p99_us"] / 1000
        if row["offered_per_s"] == 1000:
            limit = P99_LOW_LOAD_MS
        elif row["load"].endswith("of max"):
            limit = P99_HALF_MAX_MS
        else:
            continue
        checks.append(_check(f"zchat {row['kind']} p99 at {row['offered_per_s']:,.0f} msg/s ({row['load']})",
                             round(p99_ms, 3), f"< {limit:g} ms", p99_ms < limit, "ms"))  # fmt: skip
    idle = [
        r
        for r in results.get("idle_clients") or []
        if r["clients"] == IDLE_CLIENTS and r["target"] == "zchat"
    ]
    for row in idle:
        checks.append(_check(f"{IDLE_CLIENTS} idle clients: broker RSS", row["rss_mib"], f"< {IDLE_RSS_MIB} MiB",
                             row["rss_mib"] < IDLE_RSS_MIB, "MiB"))  # fmt: skip
        checks.append(_check(f"{IDLE_CLIENTS} idle clients: broker CPU", row["server_cpu_pct"],
                             f"< {IDLE_CPU_PCT} %", row["server_cpu_pct"] < IDLE_CPU_PCT, "%"))  # fmt: skip
    for row in results.get("idle_clients") or []:
        asked = row.get("clients_asked")
        if asked is None:
            continue
        ran = row["clients"]
        name = f"{asked:,} idle clients" + ("" if ran == asked else f" ({ran:,} run: the open-file limit)")
        # Fewer clients than asked tell nothing of the limits' being met: neither met nor missed.
        whole = ran == asked
        checks.append(_check(f"{name}: broker CPU", row["server_cpu_pct"], f"< {MOST_IDLE_CPU_PCT} %",
                             row["server_cpu_pct"] < MOST_IDLE_CPU_PCT if whole else None, "%"))  # fmt: skip
        checks.append(_check(f"{name}: broker RSS", row["rss_mib"], f"< {MOST_IDLE_RSS_MIB} MiB",
                             row["rss_mib"] < MOST_IDLE_RSS_MIB if whole else None, "MiB"))  # fmt: skip
        checks.append(_check(f"{name}: time to register", row["register_s"], "stated", None, "s"))
        checks.append(_check(f"{name}: dropped", row["dropped"], "0", row["dropped"] == 0))
    loss = loss_summary(results)
    checks.append(_check("lost + duplicated + unanswered, all runs",
                         loss["lost"] + loss["duplicated"] + loss["unanswered"], "0",
                         loss["lost"] == loss["duplicated"] == loss["unanswered"] == 0))  # fmt: skip
    return checks


def loss_summary(results: dict[str, Any]) -> dict[str, int]:
    runs = lost = duplicated = unanswered = refused = 0
    for section in _SECTIONS:
        for row in results.get(section) or []:
            runs += 1
            lost += row["lost"]
            duplicated += row["duplicated"]
            unanswered += row.get("unanswered") or 0
            refused += sum((row.get("refused") or {}).values())
    return {
        "runs": runs,
        "lost": lost,
        "duplicated": duplicated,
        "unanswered": unanswered,
        "refused": refused,
    }
