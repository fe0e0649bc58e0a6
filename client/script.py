"""Line mode: commands from stdin line by line, one event per line on stdout.

Used when stdin is not a terminal, or with --json. It exits when stdin
closes, once every message it sent has its answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol, TextIO

from zchat.client import commands as cmd
from zchat.client import events as ev
from zchat.client.render import Renderer, to_json
from zchat.client.request import Request
from zchat.client.session import Client, UserRequests
from zchat.common.protocol import valid_room


class LineWriter:
    """Writes events as lines; called from the poller thread and the main one."""

    def __init__(self, out: TextIO, me: str, json_mode: bool, colour: bool = False) -> None:
        self.out = out
        self.json_mode = json_mode
        self.renderer = Renderer(me, colour)
        self.lock = threading.Lock()
        self.refused = 0  # lines not understood, answers given up on
        self._refusals: list[str] = []  # the ids of messages refused
        self._others: set[str] = set()  # the ids of messages sent through this chat by `zchat send`
        self.room = "*"  # where plain text goes

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Refusal) and event.code != ev.USAGE:
            self._refusals.append(event.msg_id)
        for one in ev.each(event):  # a run of joins and leaves: a line each
            line = to_json(one) if self.json_mode else self.renderer.line(one)
            if line is not None:
                self.write(line)

    def sent_for_another(self, request: Request) -> None:
        """`request` is a `zchat send` through this chat (local.py): shown, but its refusal is
        that command's failure, not this script's. Told after it was sent, perhaps after its
        refusal was shown: failures() counts at the end."""
        self._others.add(request.msg_id)

    def failures(self) -> int:
        """What makes the script fail: lines not understood, answers given up on, and its own
        messages refused."""
        return self.refused + sum(msg_id not in self._others for msg_id in self._refusals)

    def show_help(self, word: str = "") -> None:
        text = (cmd.help_of(word) if word else None) or cmd.HELP
        self.write(to_json(ev.Status(ev.State.ONLINE, text)) if self.json_mode else text)

    def clear(self) -> None:
        """Nothing to clear in line mode: the lines are a script's output."""

    def write(self, line: str) -> None:
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()


def run_lines(client: Client, lines: Iterable[str], writer: LineWriter, drain_timeout: float) -> int:
    """Run commands until input ends or /quit; 0 if every line was understood and every
    message accepted."""
    for line in lines:
        command = cmd.parse(line)
        if command is None:
            continue
        if isinstance(command, cmd.Quit):
            break
        if isinstance(command, cmd.Invalid):
            writer.refused += 1  # a script with a line that means nothing has failed
        execute(client, command, writer)
    if not client.flush(drain_timeout):
        writer(ev.Status(client.state, f"gave up waiting for answers after {drain_timeout:g}s"))
        writer.refused += 1
    client.close()
    return 1 if writer.failures() else 0


class Output(Protocol):
    """Where a front end shows events and help: LineWriter here, the TUI's Screen."""

    room: str  # the current room: plain text goes there

    def __call__(self, event: ev.Event) -> None: ...

    def show_help(self, word: str = "") -> None: ...

    def clear(self) -> None: ...


def execute(client: UserRequests, command: cmd.Command, out: Output) -> None:
    """Send what a parsed line asks for; answers arrive later as events."""
    if isinstance(command, cmd.Say):
        client.send(out.room, command.text)
    elif isinstance(command, cmd.Private):
        client.send(command.to, command.text)
    elif isinstance(command, cmd.Who):
        client.who()
    elif isinstance(command, cmd.Join):
        # Refused at once when not a room name; a quick ACK must not count as that.
        if not client.enter(command.room).refused():
            out.room = command.room.lower()
    elif isinstance(command, cmd.Leave):
        room = (command.room or out.room).lower()
        if room == "*":
            out(ev.Refusal("", ev.USAGE, "the lobby cannot be left: /quit leaves the chat"))
        elif valid_room(room) and room not in client.joined():
            out(ev.Refusal("", ev.USAGE, f"you are not in {room}"))
        elif not client.exit(room).refused() and room == out.room:
            out.room = "*"
    elif isinstance(command, cmd.SwitchRoom):
        room = command.room.lower()
        if room != "*" and not valid_room(room):
            out(
                ev.Refusal(
                    "", ev.USAGE, f"{command.room!r} is not a room: '#' and 1-32 letters, digits, _ - ."
                )
            )
        elif room != "*" and room not in client.joined():
            out(ev.Refusal("", ev.USAGE, f"you are not in {room}: /join {room} joins it"))
        else:
            out.room = room
            out(ev.Status(client.state, f"now talking in {'the lobby' if room == '*' else room}"))
    elif isinstance(command, cmd.Rooms):
        client.rooms()
    elif isinstance(command, cmd.Names):
        room = command.room or out.room
        if room == "*":
            client.who()
        else:
            client.names(room)
    elif isinstance(command, cmd.History):
        # /history: the newest, every time; /more pages back from the oldest shown.
        client.history(command.room or out.room, before=-1 if command.older else 0, count=command.count)
    elif isinstance(command, cmd.Clear):
        out.clear()
    elif isinstance(command, cmd.Search):
        client.search(command.words)
    elif isinstance(command, cmd.Help):
        if command.word and cmd.help_of(command.word) is None:
            out(ev.Refusal("", ev.USAGE, f"no command {command.word}; /help lists them"))
        else:
            out.show_help(command.word)
    elif isinstance(command, cmd.Query):
        if ev.is_room(command.name):
            out(ev.Refusal("", ev.USAGE, f"{command.name} is a room: /join {command.name} or /room"))
        else:
            out.room = command.name  # plain text goes to them now
            out(ev.Status(client.state, f"now talking with {command.name} in private"))
    elif isinstance(command, cmd.Away):
        client.away(command.text)
    elif isinstance(command, cmd.Topic):
        room = (command.room or out.room).lower()
        if not ev.is_room(room) or room == "*":
            out(ev.Refusal("", ev.USAGE, "the lobby and private conversations have no topic: /topic #ROOM"))
        elif command.text is None:
            client.topic(room)
        else:
            client.set_topic(room, command.text)
    elif isinstance(command, cmd.Buffer | cmd.Ignore | cmd.Whois):
        out(ev.Refusal("", ev.USAGE, "buffers, /ignore and /whois are the terminal UI's (zchat connect)"))
    elif isinstance(command, cmd.Invalid):
        out(ev.Refusal("", ev.USAGE, command.reason))
