"""What `--metrics` costs: private throughput with and without it, in the same run.

python -m benchmarks.metrics [--quick] [--rounds N] [--against REF] [--out benchmarks/metrics.json]

Rounds alternate without and with `--metrics`, so that a machine that gets
busier or quieter during the run weighs on both alike; with it, the
endpoint is scraped every SCRAPE_EVERY seconds all through the run (much
more often than Prometheus would). `ratio` compares the medians; `paired_ratios`
each round's two runs, back to back.
--against REF adds a third run per round, of the broker of git REF (e.g.
main, before the counters the metrics read were added): what the counters
the loop keeps whether or not it is scraped cost.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

from benchmarks.servers import SNAPSHOT_ENV, snapshot
from benchmarks.workloads import run_private

#: Seconds between scrapes during a run with metrics (Prometheus' default is 60, often 15).
SCRAPE_EVERY = 1.0
PAIRS = 10
#: The issue's target: throughput with metrics at least this fraction of without.
TARGET = 0.97


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper:
    """Scrapes the endpoint every SCRAPE_EVERY s from a thread, as Prometheus would; counts what it got."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stopping = threading.Event()
        self.scraped = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.wait(SCRAPE_EVERY):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    answer.read()
                self.scraped += 1
            except OSError:  # the broker not yet listening, or gone
                pass

    def stop(self) -> int:
        self.stopping.set()
        self.thread.join(10)
        return self.scraped


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--against", metavar="REF", help="also run the broker of this git commit")
    parser.add_argument("--out", default="benchmarks/metrics.json")
    args = parser.parse_args()
    duration = 0.5 if args.quick else 4.0
    rounds = 1 if args.quick else max(1, args.rounds)
    labels = ("without", "with", *(("ref",) if args.against else ()))
    runs: dict[str, list[int]] = {label: [] for label in labels}
    scrapes, lost, duplicated = 0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        ref_sha = snapshot(args.against, log_dir / "ref") if args.against else None
        for _ in range(rounds):
            for label in labels:
                server_args: tuple[str, ...] = ()
                scraper = None
                if label == "with":
                    port = free_port()
                    server_args = ("--metrics", f"127.0.0.1:{port}")
                    scraper = Scraper(f"http://127.0.0.1:{port}/metrics")
                if label == "ref":
                    os.environ[SNAPSHOT_ENV] = str(log_dir / "ref")
                try:
                    row = run_private("zchat", PAIRS, duration=duration, procs=2, window=1000, log_dir=log_dir,
                                      server_args=server_args)  # fmt: skip
                finally:
                    os.environ.pop(SNAPSHOT_ENV, None)
                    if scraper is not None:
                        scrapes += scraper.stop()
                runs[label].append(row["msgs_per_s"])
                lost += row["lost"] or 0
                duplicated += row["duplicated"] or 0
                print(f"private, {PAIRS} pairs, {label} --metrics: {row['msgs_per_s']:,}/s", file=sys.stderr)
    medians = {label: statistics.median(figures) for label, figures in runs.items()}
    ratio = round(medians["with"] / max(1, medians["without"]), 3)
    # Each round's with/without pair ran back to back: its ratio is spared the drift of a shared machine.
    paired = [round(w / max(1, wo), 3) for w, wo in zip(runs["with"], runs["without"], strict=True)]
    result: dict[str, object] = {
        "pairs": PAIRS,
        "duration_s": duration,
        "rounds": rounds,
        "scrape_every_s": SCRAPE_EVERY,
        "scrapes": scrapes,
        "without_msgs_per_s": runs["without"],
        "with_msgs_per_s": runs["with"],
        "median_without": medians["without"],
        "median_with": medians["with"],
        "ratio": ratio,
        "paired_ratios": paired,
        "paired_ratio_median": statistics.median(paired),
        "target": TARGET,
        **(
            {
                "against": f"{args.against} ({ref_sha})",
                "ref_msgs_per_s": runs["ref"],
                "median_ref": medians["ref"],
                "ratio_without_to_ref": round(medians["without"] / max(1, medians["ref"]), 3),
            }
            if args.against
            else {}
        ),
        "lost": lost,
        "duplicated": duplicated,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if lost == 0 and duplicated == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
