"""Repeated measurements: which run of several to report, without hiding any loss.

On a small, shared machine one run can be disturbed; with `--repeat N` each
workload runs N times and the report keeps the *best* throughput run, the
*median* latency run (by p99) and the *median* idle run (by broker CPU). The
kept row carries every run's key figures in `repeats`, and its loss counts
are the sums over all runs.
"""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]
_SUMMED = ("lost", "duplicated", "unanswered")


def _rate(row: Row) -> float:
    return float(row.get("deliveries_per_s") or row.get("msgs_per_s") or 0)


def _summary(row: Row) -> Row:
    keys = ("msgs_per_s", "deliveries_per_s", "server_cpu_pct", "server_main_us_per_msg",
            "background_cpu_pct", "rss_mib", "register_s", *_SUMMED)  # fmt: skip
    out = {k: row[k] for k in keys if row.get(k) is not None}
    if row.get("latency"):
        out["p99_us"] = row["latency"]["p99_us"]
    return out


def choose(rows: list[Row]) -> Row:
    """The row to report out of repeated runs of one workload."""
    if len(rows) == 1:
        return rows[0]
    if rows[0].get("latency"):
        ranked = sorted(rows, key=lambda r: r["latency"]["p99_us"])
        kept = ranked[(len(ranked) - 1) // 2]  # the median, the better one of two
    elif "clients" in rows[0]:
        ranked = sorted(rows, key=lambda r: r["server_cpu_pct"])
        kept = ranked[(len(ranked) - 1) // 2]
    else:
        kept = max(rows, key=_rate)
    kept = dict(kept)
    kept["repeats"] = [_summary(r) for r in rows]
    for key in _SUMMED:
        if kept.get(key) is not None:
            kept[key] = sum(r.get(key) or 0 for r in rows)
    return kept
