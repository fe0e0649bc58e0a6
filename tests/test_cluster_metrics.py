"""`zchat broker --cluster … --metrics`: the NATS link's figures, scraped from two real brokers.

One nats-server, two brokers with metrics on. The figures are read with
prometheus_client's parser (tests/test_metrics.py's helpers) and must move
with what the test's clients do through the cluster's log.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.chat import chat
from tests.cluster_support import cluster
from tests.support import ZCHAT, wait_for
from tests.test_metrics import Samples, metrics_url, scrape, value
from zchat.client import events as ev

pytestmark = pytest.mark.timeout(120)
DEADLINE = 10.0


def test_each_broker_shows_its_publish_round_trip_and_catches_up_with_the_log(tmp_path: Path) -> None:
    with cluster(tmp_path, 2, "--metrics", "127.0.0.1:0") as (_, brokers):
        urls = [metrics_url(broker) for broker in brokers]
        with chat("mia", brokers[0].endpoint) as mia, chat("ned", brokers[1].endpoint) as ned:
            before = [scrape(url) for url in urls]
            for samples in before:
                assert value(samples, "zchat_cluster_nats_connected") == 1
                assert value(samples, "zchat_cluster_lease_renewals_failed_total") == 0
                assert value(samples, "zchat_cluster_publish_failures_total") == 0
            texts = [f"logged {i}" for i in range(5)]
            for text in texts:  # each goes into the log, and is ACKed once JetStream has it
                assert isinstance(mia.client.broadcast(text).wait(DEADLINE), ev.Ack)
            for text in texts:
                ned.message(text)
            sent = scrape(urls[0])
            published = value(sent, "zchat_cluster_publish_seconds_count") - value(
                before[0], "zchat_cluster_publish_seconds_count"
            )
            assert published >= 5  # the five broadcasts (and any JOIN meanwhile)
            assert value(sent, "zchat_cluster_publish_seconds_bucket", le="+Inf") == value(
                sent, "zchat_cluster_publish_seconds_count"
            )
            assert value(sent, "zchat_cluster_publish_seconds_sum") > value(
                before[0], "zchat_cluster_publish_seconds_sum"
            )
            for url, earlier in zip(urls, before, strict=True):
                # Checked each second: the log has grown by the five, and this broker has read it all.
                def caught_up(url: str = url, earlier: Samples = earlier) -> Samples | None:
                    now = scrape(url)
                    last = value(now, "zchat_cluster_log_last_sequence")
                    done = (
                        last >= value(earlier, "zchat_cluster_log_last_sequence") + 5
                        and value(now, "zchat_cluster_log_delivered_sequence") == last
                        and value(now, "zchat_cluster_log_lag_messages") == 0
                        and value(now, "zchat_cluster_log_lag_seconds") == 0
                    )
                    return now if done else None

                wait_for(caught_up, DEADLINE, interval=0.1, what=f"{url} caught up with the log")
            # `zchat stats` in a pipe shows the link's figures too (no traffic now: no lag).
            out = subprocess.run([ZCHAT, "stats", "--metrics", urls[0], "--interval", "0.2"],
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
            assert out.returncode == 0, out.stderr
            pairs = dict(pair.split("=", 1) for pair in out.stdout.split())
            assert (
                pairs["nats_connected"] == "1"
                and pairs["lag_events"] == "0"
                and pairs["lease_failures"] == "0"
            )
            assert "publish_p99_ms" in pairs and "lag_s" in pairs


@pytest.mark.slow
def test_nats_away_shows_as_disconnected_and_failed_lease_renewals_until_it_is_back(tmp_path: Path) -> None:
    with cluster(tmp_path, 1, "--metrics", "127.0.0.1:0") as (nats, (broker,)):
        url = metrics_url(broker)
        assert value(scrape(url), "zchat_cluster_nats_connected") == 1
        nats.stop(signal.SIGKILL)

        def away() -> Samples | None:
            now = scrape(url)
            down = value(now, "zchat_cluster_nats_connected") == 0
            return now if down and value(now, "zchat_cluster_lease_renewals_failed_total") >= 1 else None

        wait_for(away, 20, interval=0.1, what="NATS shown away and a lease renewal failed")
        nats.start()
        wait_for(lambda: value(scrape(url), "zchat_cluster_nats_connected") == 1, 20, interval=0.1,
                 what="NATS shown connected again")  # fmt: skip
