"""`zchat bot`: a greeter and echo bot, the worked example of building on Client.

It greets everyone who joins, answers private messages with an echo, and
with --chat-with keeps a conversation going with another user, privately
and in public. Everything it sees is logged as text lines on stdout.
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType
from typing import TextIO

from zchat.client import events as ev
from zchat.client.render import Renderer, visible
from zchat.client.session import Client, ConnectError
from zchat.client.settings import Settings

ECHO = "echo: "


class Bot:
    """Decides what to say; `Client` does all the talking to the broker."""

    def __init__(self, client: Client, out: TextIO, chat_with: str | None = None) -> None:
        self.client = client
        self.out = out
        self.chat_with = chat_with
        self.renderer = Renderer(client.name)
        self.said = 0
        self.online: set[str] = set()  # lower-case names, kept from presence events

    def handle(self, event: ev.Event) -> None:
        for one in ev.each(event):  # a run of joins and leaves, one by one
            self._handle(one)

    def _handle(self, event: ev.Event) -> None:
        self.log(event)
        me = self.client.name.lower()
        lobby = isinstance(event, ev.Presence) and event.room == "*"  # rooms' comings and goings aside
        if isinstance(event, ev.Users) and not event.room:
            self.online = {name.lower() for name in event.names}
        elif isinstance(event, ev.Presence) and lobby:
            (self.online.add if event.event == "join" else self.online.discard)(event.name.lower())
        if isinstance(event, ev.Presence) and lobby and event.event == "join" and event.name.lower() != me:
            self.client.broadcast(f"welcome, {event.name}! send me a private message and I echo it")
        elif (
            isinstance(event, ev.Message)
            and event.private
            and event.sender.lower() != me
            and not event.text.startswith(ECHO)  # never echo an echo: two bots would loop
        ):
            self.client.send(event.sender, ECHO + event.text)

    def chat(self) -> None:
        """One round of conversation: a private message and a public one.

        Rounds wait until the partner is online; without one the bot only answers.
        """
        if not self.chat_with or self.chat_with.lower() not in self.online:
            return
        self.said += 1
        self.client.send(self.chat_with, f"hello {self.chat_with}, this is private message {self.said}")
        self.client.broadcast(f"{self.client.name} here, public message {self.said}")

    def log(self, event: ev.Event) -> None:
        line = self.renderer.line(event)
        if line is not None:
            self.out.write(line + "\n")
            self.out.flush()


def run_bot(settings: Settings, chat_with: str | None, every: float, rounds: int) -> int:
    """Run until SIGINT/SIGTERM or `rounds` rounds of chat (0: forever)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    client = connect_patiently(settings)
    bot = Bot(client, sys.stdout, chat_with)
    client.who()  # its answer seeds the bot's list of who is online
    next_round = time.monotonic() + every
    try:
        while not rounds or bot.said < rounds:
            event = client.next_event(timeout=max(0.0, next_round - time.monotonic()))
            if event is not None:
                bot.handle(event)
            if time.monotonic() >= next_round:
                bot.chat()
                next_round += every
        client.flush(timeout=10)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
        for event in client.events(timeout=0):  # what came meanwhile, down to "closed"
            bot.log(event)
    return 0


def connect_patiently(settings: Settings) -> Client:
    """Bots start alongside their broker: keep trying until it answers."""
    delay = 0.5
    while True:
        try:
            return Client.from_settings(settings).connect()
        except ConnectError as e:
            if "taken" in str(e) or "refused" in str(e):  # a refused handshake too: keys do not change
                raise
            print(visible(f"-- {e}; trying again in {delay:g}s"), flush=True)
            time.sleep(delay)  # back-off between connection attempts, not synchronisation
            delay = min(delay * 2, 5.0)
