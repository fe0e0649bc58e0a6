"""One namespace across the brokers of a cluster (docs/CLUSTER.md, issue 14 test 1)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.cluster_support import cluster
from tests.support import Broker, wait_for
from zchat.common import protocol as p
from zchat.common.protocol import Code

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Broker]]:
    """nats-server and three brokers, shared by the tests that leave no one online."""
    with cluster(tmp_path_factory.mktemp("cluster")) as (_, brokers):
        yield brokers


def hello(context: zmq.Context[zmq.Socket[bytes]], endpoint: str, name: str) -> zmq.Socket[bytes]:
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    dealer.send_multipart(p.encode_hello(b"h", name))
    return dealer


def answer(dealer: zmq.Socket[bytes]) -> p.ServerEvent | p.PublishedEvent:
    assert dealer.poll(10_000), "no answer from the broker"
    return p.decode_event(dealer.recv_multipart())


def who(context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> tuple[str, ...]:
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    dealer.send_multipart(p.encode_simple(b"WHO", b"w"))
    users = answer(dealer)
    dealer.close()
    assert isinstance(users, p.Users)
    return users.names


def claim_at_once(
    dealers: list[zmq.Socket[bytes]], names: list[str]
) -> list[p.ServerEvent | p.PublishedEvent]:
    """Each dealer says HELLO with its name at the same moment: their answers."""
    go = threading.Barrier(len(dealers))

    def claim(dealer: zmq.Socket[bytes], name: str) -> None:
        go.wait(5)
        dealer.send_multipart(p.encode_hello(b"h", name))

    threads = [threading.Thread(target=claim, args=pair) for pair in zip(dealers, names, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return [answer(dealer) for dealer in dealers]


def test_one_of_three_brokers_wins_a_name_claimed_on_all_at_once_in_any_case(
    three: list[Broker], zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    spellings = ["Alice", "alice", "ALICE"]
    for round_ in range(20):
        dealers = [zmq_context.socket(zmq.DEALER) for _ in three]
        for dealer, broker in zip(dealers, three, strict=True):
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(broker.endpoint)
        answers = claim_at_once(dealers, spellings[round_ % 3 :] + spellings[: round_ % 3])
        winners = [a for a in answers if isinstance(a, p.Welcome)]
        refused = [a for a in answers if isinstance(a, p.Error)]
        assert len(winners) == 1, f"round {round_}: {answers}"
        assert [e.code for e in refused] == [Code.NAME_TAKEN] * 2, f"round {round_}: {answers}"
        # Everyone sees the one winner, and only it, whichever broker they ask.
        assert_everywhere(zmq_context, three, (winners[0].name,))
        for dealer, got in zip(dealers, answers, strict=True):
            if isinstance(got, p.Welcome):
                dealer.send_multipart(p.encode_simple(b"BYE", b"b"))
                assert isinstance(answer(dealer), p.Ack)
            dealer.close()
        assert_everywhere(zmq_context, three, ())  # the name is free again everywhere


def assert_everywhere(
    context: zmq.Context[zmq.Socket[bytes]], brokers: list[Broker], names: tuple[str, ...]
) -> None:
    """WHO on every broker lists `names`, within 10 s."""
    for broker in brokers:
        endpoint = broker.endpoint
        wait_for(lambda: who(context, endpoint) == names, 10, what=f"WHO {names} at {endpoint}")  # noqa: B023


def test_a_name_released_on_one_broker_can_be_claimed_on_another(
    three: list[Broker], zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    first = hello(zmq_context, three[0].endpoint, "Bob")
    assert isinstance(answer(first), p.Welcome)
    second = hello(zmq_context, three[1].endpoint, "bob")
    refused = answer(second)
    assert isinstance(refused, p.Error) and refused.code == Code.NAME_TAKEN
    first.send_multipart(p.encode_simple(b"BYE", b"b"))
    assert isinstance(answer(first), p.Ack)

    def claimed() -> bool:
        second.send_multipart(p.encode_hello(b"again", "bob"))
        return isinstance(answer(second), p.Welcome)

    wait_for(claimed, 10, interval=0.1, what="bob claimed on the second broker")
    second.send_multipart(p.encode_simple(b"BYE", b"b"))
    assert isinstance(answer(second), p.Ack)
    for dealer in (first, second):
        dealer.close()


def test_without_nats_py_the_broker_names_the_extra_to_install(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['nats'] = None; from zchat.common.cli import main; sys.argv[0] = 'zchat'; main()"
    done = subprocess.run(
        [sys.executable, "-c", hide, "broker", "--port", "0", "--pub-port", "0", "--store", ":memory:",
         "--cluster", "nats://127.0.0.1:1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0
    assert "pip install 'zchat[cluster]'" in done.stderr


@pytest.mark.slow
def test_a_cluster_url_nobody_answers_ends_the_broker_with_a_clear_error() -> None:
    """Once joined, the broker rides out NATS going away; at the start, nobody there is an error."""
    zchat = str(Path(sys.executable).with_name("zchat"))
    done = subprocess.run(
        [zchat, "broker", "--host", "127.0.0.1", "--port", "0", "--pub-port", "0", "--store", ":memory:",
         "--cluster", "nats://127.0.0.1:1"],
        capture_output=True, text=True, timeout=40,
    )  # fmt: skip
    assert done.returncode == 1
    assert "no NATS server answered within 10 s" in done.stderr
    assert "Traceback" not in done.stderr
