"""Markdown tables, the docs page and the latency plot, from the results JSON.

    python -m benchmarks.report results.json [--docs docs/BENCHMARKS.md] [--plot docs/benchmarks-latency.png]

regenerates the page from a saved run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _get(row: Row | None, key: str) -> Any:
    return row.get(key) if row else None  # a figure a row has not (a ratio with no ceiling row)


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def _ratio(row: Row | None) -> str:
    ratio = row.get("ratio_to_ceiling") if row else None
    return "-" if ratio is None else f"{ratio:.2f}"


def _cost(z: Row | None, c: Row | None) -> str:
    """Server main-thread microseconds per message, zchat / ceiling (and their ratio)."""
    zc, cc = _get(z, "server_main_us_per_msg"), _get(c, "server_main_us_per_msg")
    text = f"{'-' if zc is None else f'{zc:.1f}'} / {'-' if cc is None else f'{cc:.1f}'}"
    ratio = _get(z, "cost_ratio_to_ceiling")
    return text + (f" ({ratio:.1f}x)" if ratio else "")


def _loss(*rows: Row | None) -> str:
    present = [r for r in rows if r]
    lost = sum(r["lost"] for r in present)
    dup = sum(r["duplicated"] for r in present)
    unanswered = sum(r.get("unanswered") or 0 for r in present)
    text = f"{lost} / {dup}"
    return text + (f" ({unanswered} unanswered)" if unanswered else "")


def _refused(*rows: Row | None) -> str:
    codes: dict[str, int] = {}
    for r in rows:
        for code, n in ((r or {}).get("refused") or {}).items():
            codes[code] = codes.get(code, 0) + n
    return ", ".join(f"{n} x {code}" for code, n in sorted(codes.items())) or "0"


def _table(header: list[str], rows: list[list[str]]) -> str:
    align = [":---", *("---:" for _ in header[1:])]  # text first, figures right-aligned
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _pairs_of(rows: list[Row], key: str) -> list[tuple[Row | None, Row | None]]:
    """(zchat row, ceiling row) for each workload, in the order run."""
    order: list[Any] = []
    by: dict[Any, dict[str, Row]] = {}
    for r in rows:
        k = (r.get("kind"), r.get(key), r.get("offered_per_s"))
        if k not in by:
            order.append(k)
            by[k] = {}
        by[k][r["target"]] = r
    return [(by[k].get("zchat"), by[k].get("ceiling")) for k in order]


def machine(meta: dict[str, Any]) -> str:
    return "\n".join([
        f"- CPU: {meta['cpu_model']}, {meta['nproc']} cores (nproc); {meta['memory_gib']} GiB; "
        f"Linux {meta['kernel']}",
        f"- Python {meta['python']}, pyzmq {meta['pyzmq']}, libzmq {meta['libzmq']}",
        f"- broker: {meta.get('broker_source', 'work tree')} at commit {meta['zchat_commit']}"
        + (f" (**{meta['zchat_commit_end']} at the end: mixed versions**)"
           if meta.get("zchat_commit_end", meta["zchat_commit"]) != meta["zchat_commit"] else "")
        + f"; run {meta['date']}; "
        f"{'quick' if meta['quick'] else 'full'} mode, {meta.get('duration_s', '?')} s in all",
        f"- load average at the start: {', '.join(str(x) for x in meta['load_average'])}",
    ])  # fmt: skip


def private_table(rows: list[Row]) -> str:
    body = []
    for z, c in _pairs_of(rows, "pairs"):
        ref = z or c
        assert ref is not None
        body.append([
            str(ref["pairs"]), _n(_get(z, "msgs_per_s")), _n(_get(c, "msgs_per_s")), _ratio(z), _cost(z, c),
            f"{z['server_cpu_pct']} ({z['server_main_thread_pct']})" if z else "-",
            f"{c['server_cpu_pct']} ({c['server_main_thread_pct']})" if c else "-",
            f"{z['load_cpu_pct']} / {z['machine_cpu_pct']}" if z else "-",
            _loss(z, c), _refused(z, c),
        ])  # fmt: skip
    return _table(["pairs", "zchat msg/s", "ceiling msg/s", "ratio", "server us/msg, main thread: zchat / ceiling",
                   "zchat CPU % (main)", "ceiling CPU % (main)", "zchat run: load / machine CPU %", "lost / dup",
                   "refused"], body)  # fmt: skip


def broadcast_table(rows: list[Row]) -> str:
    body = []
    for z, c in _pairs_of(rows, "subscribers"):
        ref = z or c
        assert ref is not None
        body.append([
            str(ref["subscribers"]), _n(_get(z, "deliveries_per_s")), _n(_get(c, "deliveries_per_s")), _ratio(z),
            _n(_get(z, "msgs_per_s")), _n(_get(c, "msgs_per_s")), _cost(z, c),
            f"{z['server_cpu_pct']} ({z['server_main_thread_pct']})" if z else "-",
            f"{c['server_cpu_pct']} ({c['server_main_thread_pct']})" if c else "-",
            f"{z['load_cpu_pct']} / {z['machine_cpu_pct']}" if z else "-",
            _loss(z, c),
        ])  # fmt: skip
    return _table(["SUBs", "zchat deliveries/s", "ceiling deliveries/s", "ratio", "zchat msg/s", "ceiling msg/s",
                   "server us/msg, main thread: zchat / ceiling", "zchat CPU % (main)", "ceiling CPU % (main)",
                   "zchat run: load / machine CPU %", "lost / dup"], body)  # fmt: skip


def latency_table(rows: list[Row]) -> str:
    body = []
    for z, c in _pairs_of(rows, "pairs"):
        ref = z or c
        assert ref is not None
        zl = (z or {}).get("latency") or {}
        cl = (c or {}).get("latency") or {}
        body.append([
            ref["kind"], f"{_n(ref['offered_per_s'])} ({ref['load']})",
            _n(_get(z, "msgs_per_s")), _ms(zl.get("p50_us")), _ms(zl.get("p99_us")), _ms(zl.get("p999_us")),
            _ms(zl.get("max_us")),
            _n(_get(c, "msgs_per_s")), _ms(cl.get("p50_us")), _ms(cl.get("p99_us")), _ms(cl.get("p999_us")),
            _ratio(z), _loss(z, c),
        ])  # fmt: skip
    return _table(["kind", "offered msg/s", "zchat achieved", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
                   "ceiling achieved", "p50 ms", "p99 ms", "p99.9 ms", "p99 ratio", "lost / dup"],
                  body)  # fmt: skip


def idle_table(rows: list[Row]) -> str:
    def cpu(r: Row | None) -> str:
        return f"{r['server_cpu_pct']} ({r['server_main_thread_pct']})" if r else "-"

    def ratio(r: Row | None, key: str) -> str:
        value = _get(r, key)
        return "-" if value is None else f"{value:.2f}"

    body = []
    for z, c in _pairs_of(rows, "clients"):
        ref = z or c
        assert ref is not None
        body.append([
            _n(ref["clients"]), f"{_get(z, 'register_s')}", _n(_get(z, "register_cpu_us_per_client")),
            cpu(z), cpu(c), ratio(z, "server_cpu_pct_ratio_to_ceiling"),
            f"{_get(z, 'server_main_us_per_ping')} / {_get(c, 'server_main_us_per_ping')}" if c else "-",
            f"{_get(z, 'rss_mib')} ({_get(z, 'rss_before_mib')})",
            f"{_get(c, 'rss_mib')} ({_get(c, 'rss_before_mib')})" if c else "-",
            ratio(z, "rss_mib_ratio_to_ceiling"), _n(_get(z, "pings")), str(_get(z, "dropped")), _loss(z, c),
        ])  # fmt: skip
    return _table(["clients", "zchat register s", "zchat CPU us/registration", "zchat CPU % (main)",
                   "ceiling CPU % (main)", "CPU ratio", "us/PING, main: zchat / ceiling",
                   "zchat RSS MiB (empty)", "ceiling RSS MiB (empty)", "RSS ratio", "zchat PINGs", "dropped",
                   "lost / dup"], body)  # fmt: skip


def targets_table(rows: list[Row]) -> str:
    def value(r: Row) -> str:
        v = r["value"]
        text = f"{v:,}" if isinstance(v, int) else f"{v}"
        return f"{text} {r['unit']}".strip()

    marks = {True: "met", False: "**missed**", None: "-"}
    return _table(["check", "measured", "target", ""], [[r["check"], value(r), r["target"], marks[r["met"]]]
                                                        for r in rows])  # fmt: skip


def profile_section(profile: dict[str, Any] | None) -> str:
    if not profile:
        return ""
    parts = ["## Where the broker spends its time (py-spy)", ""]
    for name, row in profile.items():
        prof = row.get("profile") or {}
        workload = f"{row['pairs']} pairs" if "pairs" in row else f"{row['subscribers']} subscribers"
        parts.append(f"### {name}, {workload}: {_n(row.get('deliveries_per_s') or row['msgs_per_s'])}/s "
                     f"under the profiler; main thread busy {prof.get('busy_pct')} % of the time")  # fmt: skip
        parts.append("")
        if prof.get("main_loop"):
            parts += [f"Every sample is under {prof['main_loop'][-1]}.", ""]
        own = prof.get("own") or []
        inclusive = prof.get("inclusive") or []
        lines = [[o["function"], f"{o['pct']}"] for o in own[:12]]
        parts.append(_table(["function (own time)", "% of samples"], lines))
        parts.append("")
        lines = [[o["function"], f"{o['pct']}"] for o in inclusive[:15]]
        parts.append(_table(["function (inclusive)", "% of samples"], lines))
        parts.append("")
    return "\n".join(parts)


def pyzmq_section(calls: dict[str, Any] | None) -> str:
    if not calls:
        return ""
    rows = [[name, f"{us:.2f}"] for name, us in calls["us_per_message"].items()]
    return "\n".join([
        f"## pyzmq call costs ({calls['frames']}-frame message, one process, inproc; best of runs)",
        "",
        _table(["call", "us per message"], rows),
        "",
    ])  # fmt: skip


def background(results: dict[str, Any]) -> str:
    values = sorted(
        row["background_cpu_pct"]
        for section in ("private_throughput", "broadcast_throughput", "latency", "idle_clients")
        for row in results.get(section) or []
        if row.get("background_cpu_pct") is not None
    )
    if not values:
        return ""
    return (f"CPU used by other processes of the machine just before each measurement: median "
            f"{values[len(values) // 2]} %, max {values[-1]} % (100 % = one core).")  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    """Every table, as printed after a run."""
    parts = ["## Machine", "", machine(results["meta"]), ""]
    if results.get("private_throughput"):
        parts += [
            "## Private messages (delivered to the recipient)",
            "",
            private_table(results["private_throughput"]),
            "",
        ]
    if results.get("broadcast_throughput"):
        parts += [
            "## Broadcasts (deliveries to SUB sockets)",
            "",
            broadcast_table(results["broadcast_throughput"]),
            "",
        ]
    if results.get("latency"):
        parts += ["## Latency at fixed offered loads", "", latency_table(results["latency"]), ""]
    if results.get("idle_clients"):
        parts += ["## Idle registered clients", "", idle_table(results["idle_clients"]), ""]
    parts += ["## Targets", "", targets_table(results["targets"]), ""]
    loss = results["loss"]
    parts += [f"Loss over {loss['runs']} runs: {loss['lost']} lost, {loss['duplicated']} duplicated, "
              f"{loss['unanswered']} unanswered, {loss['refused']} refused by the broker.", ""]  # fmt: skip
    noise = background(results)
    if noise:
        parts += [noise, ""]
    parts += [pyzmq_section(results.get("pyzmq_calls"))]
    profile = profile_section(results.get("profile"))
    if profile:
        parts += [profile]
    return "\n".join(parts)


def plot_latency(results: dict[str, Any], path: Path) -> None:
    """p50/p99/p99.9 against offered load, private and broadcast, zchat and ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results.get("latency") or []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = {"zchat": "-", "ceiling": "--"}
    for ax, kind in zip(axes, ("private", "broadcast"), strict=True):
        for target in ("zchat", "ceiling"):
            mine = sorted((r for r in rows if r["kind"] == kind and r["target"] == target),
                          key=lambda r: r["offered_per_s"])  # fmt: skip
            if not mine:
                continue
            x = [r["offered_per_s"] for r in mine]
            for pct, marker, color in (("p50_us", "o", "tab:blue"), ("p99_us", "s", "tab:orange"),
                                       ("p999_us", "^", "tab:red")):  # fmt: skip
                y = [r["latency"][pct] / 1000 for r in mine]
                label = f"{target} {pct[:-3].replace('p999', 'p99.9')}"
                ax.plot(x, y, styles[target], marker=marker, color=color, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        plan = results.get("plan", {})
        if kind == "private":
            ax.set_title(f"private messages, {plan.get('latency_pairs', '?')} pairs")
            ax.set_xlabel("offered load, messages/s")
        else:
            ax.set_title(f"broadcasts to {plan.get('latency_subscribers', '?')} SUBs")
            ax.set_xlabel("offered load, broadcasts/s (deliveries: x SUBs)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency, ms (send to delivery)")
    axes[1].legend(fontsize=8)
    meta = results["meta"]
    fig.suptitle(f"zchat vs raw ZeroMQ forwarder: {meta['cpu_model']}, {meta['nproc']} cores", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def document(results: dict[str, Any], plot: Path | None, docs_dir: Path) -> str:
    """docs/BENCHMARKS.md: how to run, what is measured, the figures."""
    here = Path(__file__).parent
    parts = [(here / "BENCHMARKS-intro.md").read_text().rstrip(), ""]
    findings = here / "BENCHMARKS-findings.md"
    if findings.exists():
        parts += [findings.read_text().rstrip(), ""]
    if plot:
        rel = os.path.relpath(plot, docs_dir)
        parts += ["## Latency against offered load", "", f"![latency against offered load]({rel})", ""]
    parts += [markdown(results)]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--docs", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    if args.plot:
        plot_latency(results, args.plot)
    if args.docs:
        args.docs.write_text(document(results, args.plot, args.docs.parent))
    else:
        print(markdown(results))


if __name__ == "__main__":
    main()
