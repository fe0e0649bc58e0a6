"""Where the client's SUB socket connects, from WELCOME's advertised endpoint (PROTOCOL.md 5.1)."""

from __future__ import annotations

import pytest

from zchat.client.connection import pub_endpoint_for


@pytest.mark.parametrize(
    ("advertised", "broker", "expected"),
    [
        ("tcp://10.0.0.5:5556", "tcp://chat.example:5555", "tcp://10.0.0.5:5556"),
        ("tcp://*:5556", "tcp://chat.example:5555", "tcp://chat.example:5556"),
        ("tcp://*:5556", "tcp://[::1]:5555", "tcp://[::1]:5556"),
        # A source address (ZeroMQ's "SOURCE;HOST:PORT") is kept for the SUB socket too.
        ("tcp://*:5556", "tcp://127.0.0.2:0;127.0.0.1:5555", "tcp://127.0.0.2:0;127.0.0.1:5556"),
    ],
)
def test_a_star_host_means_the_host_the_router_was_reached_on(
    advertised: str, broker: str, expected: str
) -> None:
    assert pub_endpoint_for(advertised, broker) == expected
