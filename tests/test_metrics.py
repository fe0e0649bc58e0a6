"""`zchat broker --metrics`: the Prometheus endpoint scraped during real traffic.

Each figure is read with prometheus_client's own parser, before and after
the traffic, and must have moved by exactly what the test's clients did.
"""

from __future__ import annotations

import itertools
import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Broker, client_process, start_broker, wait_for
from zchat.common import protocol as p
from zchat.common.protocol import Code

METRICS_AT = re.compile(r"metrics for Prometheus at (\S+)")
#: (metric sample name, sorted label items) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def metrics_url(broker: Broker) -> str:
    return wait_for(lambda: METRICS_AT.search(broker.log()), what="the metrics line").group(1)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, str]]:
    """One broker with metrics on, a store on disk (so that commits are timed), short timeouts."""
    tmp = tmp_path_factory.mktemp("metrics")
    broker = start_broker(tmp, "--metrics", "127.0.0.1:0", "--store", str(tmp / "zchat.db"),
                          "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.0")  # fmt: skip
    yield broker, metrics_url(broker)
    broker.stop()


class Dealer:
    """A raw client: commands out, the broker's answers in, with deadlines."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str, name: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.connect(endpoint)
        self.name = name
        self.seen: list[p.ServerEvent] = []
        self.socket.send_multipart(p.encode_hello(b"hello", name))
        assert isinstance(self.next(), p.Welcome)

    def next(self) -> p.ServerEvent:
        assert self.socket.poll(15_000), f"{self.name}: no answer within 15 s"
        event = p.decode_event(self.socket.recv_multipart())
        assert not isinstance(event, p.Published)
        self.seen.append(event)  # type: ignore[arg-type]
        return event  # type: ignore[return-value]

    def answer(self, msg_id: bytes) -> p.Ack | p.Error:
        """Read until the ACK or ERROR that answers `msg_id`."""
        for seen in self.seen:
            if (isinstance(seen, p.Ack) and msg_id in seen.ids()) or (
                isinstance(seen, p.Error) and seen.msg_id == msg_id
            ):
                return seen
        while True:
            event = self.next()
            if isinstance(event, p.Ack) and msg_id in event.ids():
                return event
            if isinstance(event, p.Error) and event.msg_id == msg_id:
                return event

    def send(self, msg_id: bytes, target: str, text: str = "hi") -> p.Ack | p.Error:
        self.socket.send_multipart(p.encode_send(msg_id, target, text))
        return self.answer(msg_id)

    def leave(self) -> None:
        """BYE, answered: the session ends as `quit`, never as a timeout."""
        self.socket.send_multipart(p.encode_simple(b"BYE", b"bye"))
        assert isinstance(self.answer(b"bye"), p.Ack)
        self.close()

    def close(self) -> None:
        self.socket.close(linger=0)


def test_counters_move_by_what_clients_send_while_scraped(
    watched: tuple[Broker, str], zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    broker, url = watched
    before = scrape(url)
    # Scrapes go on all through the traffic: every one parses, and no counter ever goes back.
    stop, scrapes, problems = threading.Event(), [before], []

    def keep_scraping() -> None:
        while not stop.is_set():
            try:
                scrapes.append(scrape(url))
            except Exception as e:  # reported below, in the test's thread
                problems.append(e)
                return

    scraper = threading.Thread(target=keep_scraping)
    scraper.start()
    try:
        alice = Dealer(zmq_context, broker.endpoint, "m_alice")
        bob = Dealer(zmq_context, broker.endpoint, "m_bob")
        for i in range(3):
            assert isinstance(alice.send(f"p{i}".encode(), "m_bob"), p.Ack)
        for i in range(2):
            assert isinstance(alice.send(f"b{i}".encode(), "*"), p.Ack)
        alice.socket.send_multipart(p.encode_command(b"ENTER", b"enter", "#metrics"))
        assert isinstance(alice.answer(b"enter"), p.Ack)
        for i in range(4):
            assert isinstance(alice.send(f"r{i}".encode(), "#metrics"), p.Ack)
        not_member = bob.send(b"nm", "#metrics")
        assert isinstance(not_member, p.Error) and not_member.code == Code.NOT_MEMBER
        for i in range(2):
            unknown = alice.send(f"u{i}".encode(), "m_nobody")
            assert isinstance(unknown, p.Error) and unknown.code == Code.UNKNOWN_RECIPIENT

        def moved() -> Samples | None:
            now = scrape(url)
            return (
                now
                if value(now, "zchat_messages_routed_total", kind="room")
                >= 4 + value(before, "zchat_messages_routed_total", kind="room")
                else None
            )

        after = wait_for(moved, what="the room messages counted")
    finally:
        stop.set()
        scraper.join(10)
    assert not problems, problems
    assert len(scrapes) > 2

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("zchat_messages_routed_total", kind="private") == 3
    assert delta("zchat_messages_routed_total", kind="broadcast") == 2
    assert delta("zchat_messages_routed_total", kind="room") == 4
    assert delta("zchat_refusals_total", code="423", reason="not_member") == 1
    assert delta("zchat_refusals_total", code="404", reason="unknown_recipient") == 2
    assert delta("zchat_refusals_total", code="429", reason="rate_limited") == 0
    assert delta("zchat_sessions_started_total", how="new") == 2
    assert value(after, "zchat_clients_online") == value(before, "zchat_clients_online") + 2
    assert value(after, "zchat_rooms") == value(before, "zchat_rooms") + 1
    # 2 HELLOs, 3 + 2 + 4 + 1 + 2 SENDs, one ENTER
    assert delta("zchat_commands_received_total") == 15

    # Every message read is handed off in some flush. The loop notes a flush's hand-off just after
    # sending its answers, so a scrape may come between the last answer and that note: wait for it.
    def handed_off() -> Samples | None:
        now = scrape(url)
        return now if value(now, "zchat_handoff_seconds_count") >= 15 + value(
            before, "zchat_handoff_seconds_count") else None  # fmt: skip

    handed = wait_for(handed_off, what="every hand-off noted")
    assert value(handed, "zchat_handoff_seconds_count") == 15 + value(before, "zchat_handoff_seconds_count")
    assert delta("zchat_store_commit_seconds_count") >= 1  # the room messages were committed to disk
    assert value(after, "zchat_store_commit_seconds_bucket", le="+Inf") == value(
        after, "zchat_store_commit_seconds_count"
    )
    for earlier, later in itertools.pairwise(scrapes):
        for key, figure in earlier.items():
            if key[0].endswith(("_total", "_count", "_bucket")):
                assert later[key] >= figure, key
    alice.leave()
    bob.leave()


def test_sessions_are_counted_by_transport_and_client_kind_a_web_gateway_s_as_web(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    from tests.web_support import WebUser, start_gateway
    from zchat.client.session import Client

    broker = start_broker(tmp_path, "--metrics", "127.0.0.1:0")  # its own: every session here is the test's
    gateway = None
    try:
        url = metrics_url(broker)
        gateway = start_gateway(tmp_path, broker)
        page = WebUser(gateway)  # a browser tab: the gateway holds a session for it
        assert page.hello("m_page")["type"] == "welcome"
        library = Client("m_library", broker.endpoint, connect_timeout=5).connect()
        # Raw clients of their own: one says nothing of its kind (an older client), one an unknown kind.
        old = Dealer(zmq_context, broker.endpoint, "m_old")
        odd = zmq_context.socket(zmq.DEALER)
        odd.connect(broker.endpoint)
        odd.send_multipart(p.encode(p.Hello(b"hello", "m_odd", "", p.VERSION, "toaster")))
        assert isinstance(p.decode_event(odd.recv_multipart()), p.Welcome)
        during = scrape(url)
        assert value(during, "zchat_clients_online") == 4
        assert value(during, "zchat_sessions", transport="web") == 1
        assert value(during, "zchat_sessions", transport="plain") == 3  # the others: the broker's own
        assert value(during, "zchat_sessions", transport="curve") == 0
        kinds = {"web": 1, "library": 1, "unnamed": 1, "other": 1, "terminal": 0, "bot": 0}
        assert {kind: value(during, "zchat_sessions_by_client", client=kind) for kind in kinds} == kinds
        page.command("quit")
        library.close()
        old.leave()
        odd.close(linger=0)

        def web_gone() -> Samples | None:
            now = scrape(url)
            return now if value(now, "zchat_sessions", transport="web") == 0 else None

        after = wait_for(web_gone, what="the web session no longer counted")
        assert value(after, "zchat_sessions_by_client", client="web") == 0
    finally:
        if gateway is not None:
            gateway.stop()
        broker.stop()


def test_a_client_that_vanished_counts_as_disconnected(watched: tuple[Broker, str]) -> None:
    # Frozen by SIGSTOP, its process answers nothing, libzmq's heartbeats included, and its
    # TCP connection stays open: the broker's heartbeats cut it (PROTOCOL.md 7), and the
    # session ends as `disconnected`, the reason of every watched connection that closed.
    import signal

    broker, url = watched
    reasons = ("disconnected", "timeout", "quit")
    before = scrape(url)
    with client_process("m_vanished", broker.endpoint) as child:
        child.send_signal(signal.SIGSTOP)

        def ended() -> Samples | None:
            now = scrape(url)
            moved = sum(value(now, "zchat_sessions_ended_total", reason=r) for r in reasons)
            return (
                now
                if moved > sum(value(before, "zchat_sessions_ended_total", reason=r) for r in reasons)
                else None
            )

        after = wait_for(ended, timeout=10, interval=0.1, what="the vanished client counted")
    delta = {r: value(after, "zchat_sessions_ended_total", reason=r) - value(before, "zchat_sessions_ended_total", reason=r) for r in reasons}  # fmt: skip
    assert delta == {"disconnected": 1, "timeout": 0, "quit": 0}


def test_rate_limited_commands_are_counted_as_429(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    broker = start_broker(tmp_path, "--metrics", "127.0.0.1:0", "--rate", "1", "--burst", "2",
                          "--cool-off", "0")  # fmt: skip
    try:
        url = metrics_url(broker)
        flooder = Dealer(zmq_context, broker.endpoint, "m_flooder")
        refused = 0
        for i in range(5):  # a burst of 2, then 429s (not yet abuse: no disconnection)
            answer = flooder.send(f"f{i}".encode(), "*")
            refused += isinstance(answer, p.Error) and answer.code == Code.RATE_LIMITED
        assert refused >= 2
        samples = scrape(url)
        assert value(samples, "zchat_refusals_total", code="429", reason="rate_limited") == refused
        assert value(samples, "zchat_messages_routed_total", kind="broadcast") == 5 - refused
        flooder.leave()
    finally:
        broker.stop()


def test_metrics_on_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket
    import subprocess

    from tests.support import ZCHAT

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([ZCHAT, "broker", "--port", "0", "--pub-port", "0", "--store", ":memory:",
                              "--metrics", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode != 0
    assert "cannot serve metrics" in out.stderr and "Traceback" not in out.stderr


def test_a_bad_metrics_address_is_refused_before_anything_listens(tmp_path: Path) -> None:
    import subprocess

    from tests.support import ZCHAT

    out = subprocess.run([ZCHAT, "broker", "--port", "0", "--pub-port", "0", "--store", ":memory:",
                          "--metrics", "127.0.0.1:http"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 2 and "--metrics" in out.stderr
