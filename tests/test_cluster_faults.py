"""A broker of a cluster dies: its users' names are free again everywhere (leases, docs/CLUSTER.md)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import zmq

from tests.cluster_support import cluster
from tests.test_cluster_names import answer, assert_everywhere, hello

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def test_a_killed_brokers_names_leave_every_who_within_10_s_and_can_be_claimed_again(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    from zchat.common import protocol as p

    with cluster(tmp_path, 3, "--heartbeat-timeout", "60") as (_, brokers):
        doomed = hello(zmq_context, brokers[2].endpoint, "Zoe")
        assert isinstance(answer(doomed), p.Welcome)
        kept = hello(zmq_context, brokers[0].endpoint, "Yann")
        assert isinstance(answer(kept), p.Welcome)
        assert_everywhere(zmq_context, brokers, ("Yann", "Zoe"))
        brokers[2].stop(signal.SIGKILL)
        # Its lease runs out (6 s) and the others forget its sessions: within 10 s.
        assert_everywhere(zmq_context, brokers[:2], ("Yann",))
        again = hello(zmq_context, brokers[1].endpoint, "zoe")
        assert isinstance(answer(again), p.Welcome)
        assert_everywhere(zmq_context, brokers[:2], ("Yann", "zoe"))
        for dealer in (doomed, kept, again):
            dealer.close()
