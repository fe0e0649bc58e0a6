"""Flood control with a real broker: the flooder is limited, the others are not."""

from __future__ import annotations

from pathlib import Path

from tests.chat import chat
from tests.support import start_broker
from zchat.client import events as ev


def test_a_flooder_is_refused_while_others_chat_normally(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "--rate", "20", "--burst", "20")
    try:
        with chat("flooder", broker.endpoint) as flooder, chat("alice", broker.endpoint) as alice, \
                chat("bob", broker.endpoint) as bob:  # fmt: skip
            flood = [flooder.client.broadcast(f"spam {i}") for i in range(40)]
            talk = [alice.client.send("bob", f"hello {i}") for i in range(10)]
            outcomes = [r.wait(10) for r in flood]
            refused = [o for o in outcomes if isinstance(o, ev.Refusal)]
            assert refused and all(o.code == 429 and "retry after" in o.text for o in refused)
            assert sum(isinstance(o, ev.Ack) for o in outcomes) >= 20  # its burst went through
            assert all(isinstance(r.wait(10), ev.Ack) for r in talk)
            for i in range(10):
                bob.message(f"hello {i}")
    finally:
        broker.stop()
