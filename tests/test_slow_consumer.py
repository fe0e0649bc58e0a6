"""A client that never reads: its senders are told, it is dropped, the broker stays bounded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq

from tests.chat import chat
from tests.support import start_broker
from zchat.client import events as ev
from zchat.common import protocol as p

RSS_BOUND_MIB = 150  # the broker's whole resident memory while one client's queue is full


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)  # its own deadlines (60 s, 20 s) say what failed; the global 60 s would not
def test_a_client_that_never_reads_is_refused_to_its_senders_then_dropped(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        stuck = context.socket(zmq.DEALER)
        stuck.setsockopt(zmq.RCVHWM, 10)
        stuck.setsockopt(zmq.LINGER, 0)
        stuck.connect(broker.endpoint)
        stuck.send_multipart(p.encode_hello(b"h", "sloth"))
        assert stuck.poll(10_000)
        stuck.recv_multipart()  # the WELCOME: from now on it reads nothing, but keeps its heartbeats
        stuck.send_multipart(p.encode_simple(b"READY", b"r"))
        with (
            chat("alice", broker.endpoint, answer_timeout=60) as alice,
            chat("watcher", broker.endpoint) as watcher,
        ):
            body = "x" * 1000
            refused: ev.Refusal | None = None
            deadline = time.monotonic() + 60
            sent = 0
            while refused is None:
                assert time.monotonic() < deadline, f"no refusal after {sent} messages"
                batch = [alice.client.send("sloth", body) for _ in range(500)]
                sent += len(batch)
                stuck.send_multipart(p.encode_simple(b"PING", b"p%d" % sent))
                refused = next((o for o in (r.wait(30) for r in batch) if isinstance(o, ev.Refusal)), None)
            assert refused.code == 507, refused
            assert rss_mib(broker.process.pid) < RSS_BOUND_MIB

            # Nobody sends it anything more; it stays alive (PINGs) but full: the liveness
            # sweep drops it after the heartbeat timeout, its PONGs finding the queue full.
            deadline = time.monotonic() + 20
            while True:
                assert time.monotonic() < deadline, "the stuck client was not dropped"
                stuck.send_multipart(p.encode_simple(b"PING", b"alive"))
                event = watcher.client.next_event(0.2)
                if isinstance(event, ev.Presence) and event.name == "sloth" and event.event == "leave":
                    assert event.reason == "stuck"
                    break
            assert rss_mib(broker.process.pid) < RSS_BOUND_MIB
    finally:
        context.destroy(linger=0)
        broker.stop()
