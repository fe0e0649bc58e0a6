"""A broker killed under mixed traffic and restarted 10 s later (issue 14, test 3).

Six clients, two first on each of three brokers and given all three, send
about 200 messages a second in all (private, broadcast, room); one broker is
killed with SIGKILL and restarted on its ports 10 s later. Joining what was
acknowledged to the senders with what the recipients were shown, by sender
and message id: every acknowledged message reached each recipient exactly
once, and the clients of the killed broker were back elsewhere within 10 s.
And a private message acknowledged while its recipient's connection had it:
handed over again where the recipient resumes once its broker is killed.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
import zmq

from tests.chat import Watcher, chat
from tests.cluster_support import cluster
from tests.support import start_broker, wait_for
from tests.test_cluster_fencing import WhoPoller, twice
from tests.test_cluster_messages import DEADLINE, ack, online
from tests.test_server import Raw
from zchat.client import events as ev
from zchat.client.request import Request
from zchat.common import protocol as p

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
FAST = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2")
RATE = 200  # messages a second, all clients together
ROOM = "#mix"


class Reader(threading.Thread):
    """Keeps every event of one client, with when it came (time.monotonic)."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(daemon=True)
        self.watcher = watcher
        self.events: list[tuple[float, ev.Event]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            event = self.watcher.client.next_event(0.05)
            if event is not None:
                self.events.append((time.monotonic(), event))

    def shown(self) -> Counter[tuple[str, str]]:
        return Counter((e.sender, e.msg_id) for _, e in self.events if isinstance(e, ev.Message))


def test_a_broker_killed_under_load_loses_nothing_acknowledged_and_its_clients_are_back_within_10_s(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    with cluster(tmp_path, 3, *FAST) as (nats, brokers), ExitStack() as stack:
        names = [f"u{i}" for i in range(6)]
        watchers = []
        for i, name in enumerate(names):
            order = brokers[i % 3 :] + brokers[: i % 3]
            watchers.append(stack.enter_context(chat(name, ",".join(b.endpoint for b in order))))
        for w in watchers:
            ack(w.client.enter(ROOM).wait(DEADLINE))
        for w in watchers:
            online(w, *names)
        readers = [Reader(w) for w in watchers]
        pollers = [WhoPoller(zmq_context, b.endpoint) for b in brokers[1:]]  # the brokers that stay
        for thread in [*readers, *pollers]:
            thread.start()
        sent: list[tuple[str, str, Request]] = []  # sender, target, its request
        killed_at = 0.0
        doomed = brokers[0]
        started = time.monotonic()
        n = 0
        try:
            while (elapsed := time.monotonic() - started) < 24:
                if not killed_at and elapsed > 4:
                    doomed.stop(signal.SIGKILL)
                    killed_at = time.monotonic()
                if killed_at and brokers[0] is doomed and time.monotonic() - killed_at > 10:
                    brokers[0] = start_broker(tmp_path / "b0-again", "--cluster", nats.url, "--node", "b0", *FAST,
                                              port=doomed.port, pub_port=doomed.pub_port)  # fmt: skip
                i = n % len(watchers)
                client = watchers[i].client
                kind = n % 3
                target = names[(i + 1 + n // 3) % len(names)] if kind == 0 else ("*" if kind == 1 else ROOM)
                text = f"m{n}"
                request = client.send(target, text) if kind != 1 else client.broadcast(text)
                sent.append((names[i], target, request))
                n += 1
                # Paced by the clock, not by sleeping for each message's sake.
                ahead = started + n / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            outcomes = [(sender, target, request.wait(60)) for sender, target, request in sent]
            # Everyone hears a last broadcast of everyone: what was sent before it has arrived.
            for w in watchers:
                ack(w.client.broadcast(f"end of {w.client.name}").wait(DEADLINE))

            def all_ends() -> bool:
                return all(
                    {f"end of {name}" for name in names if name != w.client.name}
                    <= {e.text for _, e in r.events if isinstance(e, ev.Message)}
                    for w, r in zip(watchers, readers, strict=True)
                )

            wait_for(all_ends, 30, interval=0.2, what="every client's last broadcast everywhere")
        finally:
            for done in [*(r.done for r in readers), *(p.done for p in pollers)]:
                done.set()
            for thread in [*readers, *pollers]:
                thread.join(5)
        for poller in pollers:
            assert poller.lists and not [names for names in poller.lists if twice(names)]
        acked = [(s, t, o) for s, t, o in outcomes if isinstance(o, ev.Ack)]
        assert len(acked) > 0.8 * len(outcomes), Counter(type(o).__name__ for _, _, o in outcomes)
        shown = {name: r.shown() for name, r in zip(names, readers, strict=True)}
        wrong = []
        for sender, target, outcome in acked:
            recipients = [target] if target in names else [x for x in names if x != sender]
            for recipient in recipients:
                count = shown[recipient][(sender, outcome.msg_id)]
                if count != 1:
                    wrong.append((sender, outcome.msg_id, target, recipient, count))
        assert not wrong, f"{len(wrong)} deliveries not exactly once, e.g. {wrong[:5]}"
        repeated = {name: [k for k, c in s.items() if c > 1] for name, s in shown.items()}
        assert not any(repeated.values()), repeated
        # The clients of the killed broker were back online elsewhere within 10 s.
        for name, r in zip(names[::3], readers[::3], strict=True):
            back = [t for t, e in r.events if isinstance(e, ev.Status) and e.state is ev.State.ONLINE
                    and t > killed_at]  # fmt: skip
            assert back and back[0] - killed_at < 10, (name, back[:1], killed_at)


def test_a_live_message_acknowledged_comes_again_where_its_recipient_resumes_after_its_broker_died(
    tmp_path: Path, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    with cluster(tmp_path, 3, *FAST) as (_, brokers):
        bob = Raw(zmq_context, brokers[1].endpoint)  # reads nothing after its WELCOME
        bob.send(b"HELLO", b"h", "bob", "", p.VERSION)
        welcome = bob.next()
        assert isinstance(welcome, p.Welcome)
        alice = Raw(zmq_context, brokers[0].endpoint)
        alice.hello("alice")

        def bob_online() -> bool:
            alice.send(b"WHO", b"w")
            (users,) = alice.until(b"w")
            return isinstance(users, p.Users) and "bob" in users.names

        wait_for(bob_online, DEADLINE, interval=0.05, what="bob online on alice's broker")
        alice.send(b"SEND", b"m1", "bob", "before the crash")
        (acked,) = alice.until(b"m1")
        assert isinstance(acked, p.Ack) and acked.status == "accepted"
        brokers[1].stop(signal.SIGKILL)  # bob's connection had it at most, not bob
        back = Raw(zmq_context, brokers[2].endpoint)
        back.send(b"HELLO", b"h2", "bob", welcome.token, p.VERSION)  # the session taken over
        assert isinstance(back.next(), p.Welcome)
        back.send(b"PING", b"p")
        handed = [e for e in back.until(b"p") if isinstance(e, p.Message)]
        assert handed == [p.Message(b"m1", "alice", "bob", acked.time_ms, b"before the crash")]
        back.dealer.send_multipart(p.encode(p.Received(b"r", "alice", (b"m1",))))
        back.until(b"r")
        receipt = alice.next()
        assert isinstance(receipt, p.Receipt) and receipt.msg_ids == (b"m1",)
