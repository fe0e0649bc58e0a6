"""What CURVE encryption costs: private messages through a plain and a CURVE broker.

python -m benchmarks.curve [--quick] [--out benchmarks/curve.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import zmq

from benchmarks.wire import CURVE_ENV
from benchmarks.workloads import run_private
from zchat.common import keys


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/curve.json")
    args = parser.parse_args()
    duration = 0.5 if args.quick else 5.0
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        server = keys.generate(log_dir / "broker")
        public, secret = zmq.curve_keypair()
        # Every load client shares one key pair: lift the per-key session cap.
        curve_args = ("--curve-secret", str(log_dir / "broker" / keys.SECRET_FILE),
                      "--max-sessions-per-key", "1000000")  # fmt: skip
        rows = {"plain": run_private("zchat", 10, duration=duration, procs=2, window=1000, log_dir=log_dir)}
        os.environ[CURVE_ENV] = " ".join(k.decode() for k in (server.public, public, secret))
        try:
            rows["curve"] = run_private("zchat", 10, duration=duration, procs=2, window=1000, log_dir=log_dir,
                                        server_args=curve_args)  # fmt: skip
        finally:
            del os.environ[CURVE_ENV]
    for label, row in rows.items():
        print(f"private, 10 pairs, {label}: {row['msgs_per_s']:,}/s (lost {row['lost']}, dup {row['duplicated']})",
              file=sys.stderr)  # fmt: skip
    result = {
        "private_plain_msgs_per_s": rows["plain"]["msgs_per_s"],
        "private_curve_msgs_per_s": rows["curve"]["msgs_per_s"],
        "curve_ratio": round(rows["curve"]["msgs_per_s"] / max(1, rows["plain"]["msgs_per_s"]), 2),
        "lost": sum(r["lost"] or 0 for r in rows.values()),
        "duplicated": sum(r["duplicated"] or 0 for r in rows.values()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
