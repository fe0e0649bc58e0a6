"""LoopClient against a real broker: what its sockets cost the context they share."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from tests.support import Broker
from zchat.client import events as ev
from zchat.client.loop import SOCKETS_PER_CLIENT, LoopClient
from zchat.client.settings import Settings


@pytest.mark.timeout(60)
def test_loop_clients_fit_a_context_of_sockets_per_client_each(broker: Broker) -> None:
    # A context sized for SOCKETS_PER_CLIENT a client, no more: the web gateway and the
    # restart benchmark size theirs so. One socket less a client and the last cannot sign in.
    count = 3

    async def sign_in_all() -> list[ev.State]:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        context.set(zmq.MAX_SOCKETS, SOCKETS_PER_CLIENT * count)
        clients = [LoopClient(Settings(f"loop{i}", broker.endpoint), context, lambda event: None)
                   for i in range(count)]  # fmt: skip
        try:
            for client in clients:
                await client.connect()
            return [client.state for client in clients]
        finally:
            for client in clients:
                await client.close()
            context.destroy(linger=0)

    assert asyncio.run(sign_in_all()) == [ev.State.ONLINE] * count
