"""LoopClient against a real broker: what its sockets cost the context they share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

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


@pytest.mark.timeout(60)
def test_loop_clients_sending_and_receiving_at_once_leave_no_message_unread(broker: Broker) -> None:
    # zmq.FD is edge-triggered: a send on the DEALER (or a subscription on the SUB) may take
    # the edge of a message that came meanwhile, and a driver that did not ask EVENTS after
    # it would hold that message until the next one came. Here the last ones have no next.
    count = 400

    async def exchange() -> dict[str, int]:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        got = {"a": 0, "b": 0}
        everything = asyncio.Event()

        def counter(name: str) -> Callable[[ev.Event], None]:
            def on_event(event: ev.Event) -> None:
                if isinstance(event, ev.Message) and event.text.startswith("n"):
                    got[name] += 1
                    if got["a"] == got["b"] == count:
                        everything.set()

            return on_event

        a = LoopClient(Settings("a", broker.endpoint), context, counter("a"))
        b = LoopClient(Settings("b", broker.endpoint), context, counter("b"))
        try:
            await a.connect()
            await b.connect()
            for i in range(count):  # both ways at once, each send among the other's deliveries
                a.send("b", f"n{i}")
                b.send("a", f"n{i}")
                if i % 10 == 0:
                    await asyncio.sleep(0)  # a turn of the loop: deliveries come in meanwhile
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(everything.wait(), 20)
            return got
        finally:
            await a.close()
            await b.close()
            context.destroy(linger=0)

    assert asyncio.run(exchange()) == {"a": count, "b": count}
