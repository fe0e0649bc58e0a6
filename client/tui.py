"""The interactive terminal UI: a prompt_toolkit prompt with events printed above it.

Events arrive on the client's poller thread. While a prompt runs, their lines are
printed from its own event loop (the prompt erased, the lines, the prompt drawn
again below them); between two prompts they are written at once. So output and
what the user is typing never interleave. The prompt shows the connection state.
"""

from __future__ import annotations

import shutil
import signal
import sys
import termios
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from zchat.client import commands as cmd
from zchat.client import events as ev
from zchat.client.local import listen
from zchat.client.readstate import Unread, ViewedReadState, history_file, mentions, state_file
from zchat.client.render import Renderer, colour_of, visible
from zchat.client.script import execute
from zchat.client.session import Client, ConnectError
from zchat.client.settings import Settings

#: Seconds to wait, on the way out, for answers to messages just sent.
DRAIN_TIMEOUT = 3.0
PRIVATE_WORDS = ("/msg", "/m", "/tell")
#: Command words whose argument is a person's name.
NAME_WORDS = ("/query", "/ignore", "/unignore", "/whois")
STYLE = Style.from_dict(
    {"bar": "reverse", "reconnecting": "fg:ansiyellow bold", "offline": "fg:ansired bold"}
)


class Roster:
    """The names known to be online and the rooms known, kept from events."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._names: set[str] = set()
        self._rooms: set[str] = set()
        self._members: dict[str, set[str]] = {}  # room -> the lower-case names known in it
        self._away: dict[str, str] = {}  # lower-case name -> away text, from the last /who or message
        self._lock = threading.Lock()  # written on the poller thread, read on the UI one

    def update(self, event: ev.Event) -> None:
        with self._lock:
            self._track_members(event)
            if isinstance(event, ev.Users):
                if event.room:
                    self._names |= set(event.names)  # a room's members are online too
                    self._rooms.add(event.room)
                else:
                    self._names = set(event.names)
                    self._away = {name.lower(): text for name, text in event.away}
            elif isinstance(event, ev.Away):
                self._away[event.name.lower()] = event.text
            elif isinstance(event, ev.Presence):
                if event.room != "*":
                    self._rooms.add(event.room)  # leaving a room is not leaving the chat
                    if event.event == "join":
                        self._names.add(event.name)
                elif event.event == "join":
                    self._names.add(event.name)
                else:
                    self._names.discard(event.name)
                    self._away.pop(event.name.lower(), None)
            elif isinstance(event, ev.Message):
                if not event.history:
                    self._names.add(event.sender)
                if event.room and event.room != "*":
                    self._rooms.add(event.room)
            elif isinstance(event, ev.RoomList):
                self._rooms |= {room for room, _ in event.sizes} | set(event.mine)
            elif isinstance(event, ev.Ack) and event.command == "enter":
                self._rooms.add(event.target)

    def _track_members(self, event: ev.Event) -> None:
        if isinstance(event, ev.Users) and event.room:
            self._members[event.room.lower()] = {name.lower() for name in event.names}
        elif isinstance(event, ev.Presence) and event.room != "*":
            members = self._members.setdefault(event.room.lower(), set())
            (members.add if event.event == "join" else members.discard)(event.name.lower())
        elif isinstance(event, ev.Presence) and event.event == "leave":
            for members in self._members.values():
                members.discard(event.name.lower())  # left the chat: every room
        elif isinstance(event, ev.Message) and not event.history and event.room not in ("", "*"):
            self._members.setdefault(event.room.lower(), set()).add(event.sender.lower())

    def whois(self, name: str, joined: Iterable[str]) -> str:
        """What is known of `name`: online (from WHO and who joined since), rooms in common."""
        key = name.lower()
        with self._lock:
            spelt = next((n for n in self._names if n.lower() == key), name)
            online = spelt in self._names
            common = sorted(r for r in joined if key in self._members.get(r.lower(), set()))
            away = self._away.get(key, "") if online else ""
        where = f"in {', '.join(common)} with you" if common else "in no room with you"
        state = f"online, away: {away}" if away else "online" if online else "not online"
        return f"{spelt}: {state}, {where}"

    def others(self) -> list[str]:
        with self._lock:
            return sorted(self._names - {self.me}, key=str.lower)

    def rooms(self) -> list[str]:
        with self._lock:
            return sorted(self._rooms)


class ChatCompleter(Completer):
    """Command words at the start of a line; names after `@`, `/msg ` and elsewhere."""

    def __init__(self, roster: Roster) -> None:
        self.roster = roster

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        before = document.text_before_cursor
        if " " not in before:
            if before.startswith("/"):
                for word in cmd.WORDS:
                    suffix = " " if word in ("/msg", "/me", *cmd.ROOM_WORDS, *NAME_WORDS, "/search") else ""
                    yield from self._matching([word], before, suffix)
                return
            if before.startswith("@"):
                yield from self._matching(self.roster.others(), before[1:], suffix=" ")
                return
        word = document.get_word_before_cursor(WORD=True)
        first, _, rest = before.partition(" ")
        if first.lower() in (*PRIVATE_WORDS, *NAME_WORDS) and " " not in rest:
            yield from self._matching(self.roster.others(), rest, suffix=" ")
        elif first.lower() in cmd.ROOM_WORDS and " " not in rest:
            yield from self._matching(self.roster.rooms(), rest, suffix="")
        elif word.startswith("#"):
            yield from self._matching(self.roster.rooms(), word, suffix="")
        elif word and not word.startswith(("/", "@")):
            yield from self._matching(self.roster.others(), word, suffix="")

    @staticmethod
    def _matching(candidates: Iterable[str], typed: str, suffix: str) -> Iterable[Completion]:
        for candidate in candidates:
            if candidate.lower().startswith(typed.lower()) and candidate != typed:
                yield Completion(candidate + suffix, start_position=-len(typed), display=candidate)


#: Lines kept per buffer, for showing it again when switched to.
SCROLLBACK = 2000


class Buffer:
    """One conversation's window: the lobby, a room or a private peer, with its own lines."""

    def __init__(self, key: str, title: str) -> None:
        self.key = key  # "*", "#room" or a peer's lower-case name
        self.title = title  # "lobby", "#room" or the peer's name as they spell it
        self.lines: deque[str] = deque(maxlen=SCROLLBACK)

    @property
    def target(self) -> str:
        """Where plain text typed in this buffer goes."""
        return "*" if self.key == "*" else self.title


class Screen:
    """Where events go: one buffer per conversation, the current one's lines above the
    prompt; a line for another buffer is kept there and counted in the status bar."""

    def __init__(self, me: str, colour: bool, bell: bool = True) -> None:
        self.me = me
        self.bell = bell
        self.renderer = Renderer(me, colour, width=self.columns)
        self.roster = Roster(me)
        self.unread = Unread(me)
        self.buffers = [Buffer("*", "lobby")]
        self.current = 0  # index in buffers
        self.read_state: ViewedReadState | None = None
        self.ignored: dict[str, str] = {}  # lower-case name -> as typed
        self.session: PromptSession[str] | None = None
        self.quiet = False  # set on the way out: the closing status is noise
        self.clearing = False  # /clear: the screen is cleared as the next prompt starts
        self.stash = ""  # the half-typed line, kept across a switch
        self.redrawing = False  # switched: the screen shows the current buffer as the next prompt starts
        self._held: list[str] | None = []  # lines from before the connection was made
        self._lock = threading.RLock()
        self._prompt: Application[str] | None = None  # the prompt running now: it owns the terminal
        self._pending: list[str] = []  # text for the terminal, printed by the prompt's loop
        self._printing = False  # a print of the pending text is scheduled in the prompt's loop
        #: Called (on the poller thread) when the client gives up for good, e.g. signed in elsewhere.
        self.on_given_up: Callable[[], None] | None = None

    def viewing(self) -> str:
        """The conversation in view: "*", "#room" or a peer's lower-case name."""
        with self._lock:
            return self.buffers[self.current].key

    @property
    def room(self) -> str:
        """Where plain text goes: the current buffer's room, the lobby "*" or a peer."""
        return self.buffers[self.current].target

    @room.setter
    def room(self, target: str) -> None:
        self.switch(self._open(target))

    def _open(self, target: str) -> int:
        """The index of the buffer of `target` ("*", "#room", a name), made if need be."""
        key = target.lower()
        with self._lock:
            for i, buffer in enumerate(self.buffers):
                if buffer.key == key:
                    return i
            self.buffers.append(Buffer(key, "lobby" if key == "*" else key if ev.is_room(key) else target))
            return len(self.buffers) - 1

    def switch(self, index: int) -> None:
        """Show buffer `index` (its lines, as the next prompt starts); its counts are cleared."""
        with self._lock:
            index %= len(self.buffers)
            if index != self.current:
                self.current = index
                self.redrawing = True
            self.unread.viewed(self.buffers[index].key)
            if self.read_state is not None:
                self.read_state.viewed(self.buffers[index].key)
        self._invalidate()

    def close_current(self) -> None:
        """A private buffer closed, or a room's left: back to the lobby."""
        with self._lock:
            if self.current:
                del self.buffers[self.current]
                self.current = -1  # not 0: the lobby is redrawn
                self.switch(0)

    def find(self, which: str) -> int | None:
        """A buffer by its number (from 1) or its name."""
        if which.isdigit():
            index = int(which) - 1
            return index if 0 <= index < len(self.buffers) else None
        key = "*" if which.lower() in ("lobby", "*") else which.lower()
        return next((i for i, b in enumerate(self.buffers) if b.key == key), None)

    def status_bar(self) -> str:
        """The buffers: "[1:lobby] [2:#dev 3] [3:bob 1!]", the current one marked "*"."""
        parts = []
        for i, buffer in enumerate(self.buffers):
            counts = self.unread.counts(buffer.key)
            mark = "*" if i == self.current else ""
            unread = f" {counts.unread}{'!' if counts.mentions else ''}" if counts.unread else ""
            parts.append(f"[{mark}{i + 1}:{buffer.title}{unread}]")
        return " ".join(parts)

    def __call__(self, event: ev.Event) -> None:
        """The client's on_event: runs on the poller thread."""
        for one in ev.each(event):  # a run of joins and leaves: a line each
            self._show(one)

    def _show(self, event: ev.Event) -> None:
        self.roster.update(event)
        if isinstance(event, ev.Message) and event.sender.lower() in self.ignored:
            return  # /ignore: not shown, not counted, no bell
        line = None if self.quiet else self.renderer.line(event)
        bell = line is not None and self.bell and self._calls_for_me(event)
        if line is not None:
            with self._lock:
                index = self._buffer_of(event)
                self.buffers[index].lines.append(line)
                if self._held is not None:
                    self._held.append(line + ("\a" if bell else ""))
                elif index == self.current:
                    # the bell: terminals and tmux mark the window, desktops raise the urgency hint
                    self.write(line + ("\a" if bell else ""), keep=False)
                else:
                    if isinstance(event, ev.Message):
                        self.unread.arrived(event, viewing=None)
                    if bell:
                        self.write("\a", keep=False, newline=False)
        if isinstance(event, ev.Ack) and event.command == "exit":
            self._drop(event.target)
        self._invalidate()
        if isinstance(event, ev.Status) and event.state is ev.State.OFFLINE and self.on_given_up is not None:
            self.on_given_up()  # nothing typed could go anywhere now: leave

    def _drop(self, room: str) -> None:
        """The room was left: its buffer goes (the lobby shown, if it was in view)."""
        with self._lock:
            index = self.find(room)
            if not index:
                return
            del self.buffers[index]
            if self.current == index:
                self.current = -1
                self.switch(0)
            elif self.current > index:
                self.current -= 1

    def _buffer_of(self, event: ev.Event) -> int:
        """Which buffer an event's line goes to: its conversation's, else the current one."""
        if isinstance(event, ev.Message) and not event.private:
            return self._open(event.room)  # a room's message: its buffer (made if need be)
        peer = ""  # a private message goes to its /query buffer if one is open, else is shown here
        if isinstance(event, ev.Message):
            peer = event.target if event.sender.lower() == self.me.lower() else event.sender
        elif isinstance(event, ev.Ack) and event.command == "send" and not ev.is_room(event.target):
            peer = event.target
        elif isinstance(event, ev.Away):
            peer = event.name
        if peer:
            found = self.find(peer)
            return found if found is not None else self.current
        if isinstance(event, ev.Ack) and event.command == "exit":
            return 0  # the room's buffer goes: "you left" is said in the lobby
        room = ""
        if isinstance(event, ev.Ack | ev.Presence | ev.Users | ev.History | ev.Topic):
            room = getattr(event, "target", "") or getattr(event, "room", "")
        elif isinstance(event, ev.Refusal):
            room = event.target
        if room and room != "*" and ev.is_room(room):
            found = self.find(room)
            return found if found is not None else self.current
        if isinstance(event, ev.Presence):
            return 0  # joining and leaving the chat: the lobby's
        return self.current

    def _invalidate(self) -> None:
        if self.session is not None:
            self.session.app.invalidate()  # thread-safe: the prompt shows the state and the buffers

    def _calls_for_me(self, event: ev.Event) -> bool:
        """A live private message to us, or a message that names us, from someone else."""
        if not isinstance(event, ev.Message) or event.history or event.sender.lower() == self.me.lower():
            return False
        return event.private or mentions(event.text, self.me)

    def columns(self) -> int:
        """The terminal's width now (it may be resized at any time)."""
        if self.session is not None:
            return self.session.app.output.get_size().columns
        return shutil.get_terminal_size().columns

    def release(self, show: bool) -> None:
        """Print (or drop, when connecting failed) the lines held until now."""
        with self._lock:
            held, self._held = self._held or [], None
            for line in held if show else ():
                self.write(line, keep=False)

    def show_help(self, word: str = "") -> None:
        self.write((cmd.help_of(word) if word else None) or cmd.HELP)

    def clear(self) -> None:
        """The screen cleared as the next prompt starts: by prompt_toolkit's renderer, which
        knows where its prompt is (an escape written here would leave it lost)."""
        with self._lock:
            self.buffers[self.current].lines.clear()
            self.clearing = True

    def redraw(self, output: Output) -> None:
        """As a prompt starts: the screen cleared, then (switched) the current buffer's last lines."""
        with self._lock:
            switched, self.redrawing = self.redrawing, False
            self.clearing = False
            sys.stdout.flush()  # what came before goes with it
            output.erase_screen()
            output.cursor_goto(0, 0)
            if switched:
                rows = output.get_size().rows - 3  # the status bar and the prompt below
                shown = "\n".join(self.buffers[self.current].lines).split("\n")[-rows:] if rows > 0 else []
                for line in shown:
                    output.write_raw(line + "\r\n")
            output.flush()

    def handle(self, client: Client, command: cmd.Command) -> bool:
        """The commands that are the terminal UI's own; False for the others."""
        if isinstance(command, cmd.Buffer):
            index = self.find(command.which)
            if index is None:
                self(ev.Refusal("", ev.USAGE, f"no buffer {command.which}: {self.status_bar()}"))
            else:
                self.switch(index)
        elif isinstance(command, cmd.Leave) and not command.room and not ev.is_room(self.room):
            self.close_current()  # a private buffer: closed
        elif isinstance(command, cmd.Ignore) and not command.name:
            names = ", ".join(sorted(self.ignored.values(), key=str.lower)) or "nobody"
            self(ev.Status(client.state, f"ignored: {names}"))
        elif isinstance(command, cmd.Ignore):
            known = command.name.lower() in self.ignored
            if command.on:
                self.ignored[command.name.lower()] = command.name
                said = f"{command.name} was already ignored" if known else f"ignoring {command.name}"
                said += ": their messages are not shown (/unignore shows them)"
            else:
                self.ignored.pop(command.name.lower(), None)
                said = (
                    f"showing {command.name}'s messages again" if known else f"{command.name} was not ignored"
                )
            self(ev.Status(client.state, said))
        elif isinstance(command, cmd.Whois):
            self(ev.Status(client.state, self.roster.whois(command.name, client.joined())
                           + (" (ignored)" if command.name.lower() in self.ignored else "")))  # fmt: skip
        else:
            return False
        return True

    def write(self, text: str, keep: bool = True, newline: bool = True) -> None:
        """A line above the prompt; `keep`: also in the current buffer's scrollback."""
        with self._lock:
            if keep:
                self.buffers[self.current].lines.append(text)
            text += "\n" if newline else ""
            app = self._prompt
            if app is None:
                self._emit(text)  # no prompt on the screen: nothing to draw around
                return
            self._pending.append(text)
            if self._printing or app.loop is None:
                return
            try:
                app.loop.call_soon_threadsafe(self._start_printing, app)
                self._printing = True
            except RuntimeError:
                pass  # its loop has closed: printed as the prompt returns (prompt_ended)

    def prompt_started(self, app: Application[str]) -> None:
        """In the prompt's loop, before it is first drawn: from now on it prints the lines."""
        with self._lock:
            self._prompt = app

    def prompt_ended(self) -> None:
        """The prompt has returned (its line erased): what it did not print is written now."""
        with self._lock:
            self._prompt, self._printing = None, False
            text, self._pending = "".join(self._pending), []
            if text:
                self._emit(text)

    def _start_printing(self, app: Application[str]) -> None:
        """In the prompt's loop: the printing is a task of the prompt, cancelled when it ends."""
        if app.is_running and not app.is_done:
            app.create_background_task(self._print_pending(app))
        else:
            with self._lock:
                self._printing = False  # the prompt is ending: prompt_ended writes the lines

    async def _print_pending(self, app: Application[str]) -> None:
        """Erase the prompt, print the lines, draw the prompt again below them. Not
        run_in_terminal: it switches the terminal to cooked mode, where a key typed
        meanwhile is echoed and stays on the screen as a stray line."""
        if app.output.responds_to_cpr:  # an answer about the old cursor position would misplace the prompt
            await app.renderer.wait_for_cpr_responses()
        with self._lock:
            self._printing = False
            # Once Enter is pressed the prompt is erasing itself: prompt_ended writes the lines.
            if self._prompt is not app or not app.is_running or app.is_done or not self._pending:
                return
            text, self._pending = "".join(self._pending), []
            app.renderer.erase()  # the cursor back at the prompt's first line, and below it cleared
            self._emit(text)
            app.renderer.request_absolute_cursor_position()  # the rows left below, for the menus
            app.invalidate()

    def _emit(self, text: str) -> None:
        """Straight to the terminal (the prompt is not drawing, or is erased): raw, our
        own escapes (the colours) kept; lines end in CR LF, as the terminal may be raw."""
        output = self.session.app.output if self.session is not None else None
        if output is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        output.write_raw(text.replace("\r\n", "\n").replace("\n", "\r\n"))
        output.flush()


def prompt_for(client: Client, colour: bool, room: str = "*", bar: str = "") -> StyleAndTextTuples:
    """The status bar (the buffers) on a line of its own, then "NAME [#ROOM|@PEER] (state)> "."""
    name_style = f"fg:ansi{_ANSI_NAMES[colour_of(client.name)]}" if colour else ""
    state = client.state
    fragments: StyleAndTextTuples = [("class:bar" if colour else "", bar + "\n")] if bar else []
    fragments.append((name_style, client.name))
    if room != "*":
        fragments.append(("", f" {room}" if ev.is_room(room) else f" @{room}"))
    if state is ev.State.RECONNECTING or state is ev.State.CONNECTING:
        fragments.append(("class:reconnecting", f" ({state.value})"))
    elif state is not ev.State.ONLINE:
        fragments.append(("class:offline", f" ({state.value})"))
    fragments.append(("", "> "))
    return fragments


#: SGR codes of render.PALETTE to prompt_toolkit's colour names, so the prompt matches the lines.
_ANSI_NAMES = {31: "red", 32: "green", 33: "yellow", 34: "blue", 35: "magenta", 36: "cyan",
               91: "brightred", 92: "brightgreen", 93: "brightyellow", 94: "brightblue",
               95: "brightmagenta", 96: "brightcyan"}  # fmt: skip


class _Switched(Exception):
    """Alt-number, Ctrl-N or Ctrl-P: the prompt starts again, over the buffer switched to."""


class _Hangup(Exception):
    """SIGTERM or SIGHUP, or the client gave up: leave the prompt."""


def run_tui(settings: Settings, colour: bool) -> int:
    """Chat until /quit, Ctrl-D or Ctrl-C; 1 if the connection failed or was given up."""
    name, broker = settings.name, settings.broker
    screen = Screen(name, colour, settings.bell)
    # What was read is kept in the user's data folder: after a restart the join says what is new.
    # A room's messages are read once its buffer is in view, not when they come behind another.
    screen.read_state = ViewedReadState(state_file(settings.name, settings.broker), screen.viewing)
    client = Client.from_settings(settings, on_event=screen, read_state=screen.read_state)
    try:
        client.connect()
    except ConnectError as e:
        screen.quiet = True
        screen.release(show=False)  # the message below says it all
        # The reason may be the broker's words (a refusal's text): shown, not obeyed.
        print(visible(f"zchat: cannot join {broker} as {name}: {e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        client.close()
        return 130
    endpoint = listen(client, settings, None, lambda text: screen(ev.Status(client.state, text)))
    try:
        return _chat(client, screen, colour)
    finally:
        screen.quiet = True
        unsent = client.unanswered_sends()  # held back by the rate limit, or no connection
        client.close()
        if endpoint is not None:
            endpoint.close()
        if unsent:  # the closing refusals are not shown: say so once
            print(f"zchat: {unsent} message(s) not sent: the client closed before the broker took them",
                  file=sys.stderr)  # fmt: skip


def typed_history(name: str) -> History:
    """What was typed, in the data folder (up-arrow recalls it after a restart); kept in
    memory only when the folder cannot be written."""
    path = history_file(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)  # what one types privately is one's own
    except OSError:
        return InMemoryHistory()
    return FileHistory(str(path))


#: A paste of more lines than this waits for a second Enter before it goes.
PASTE_LINES = 5


def key_bindings(screen: Screen) -> KeyBindings:
    bindings = KeyBindings()
    confirming: list[str] = []  # the text a first Enter asked about

    @bindings.add("escape", "enter")
    def _new_line(event: KeyPressEvent) -> None:
        """Alt-Enter: one more line; each line goes as a message of its own."""
        event.current_buffer.insert_text("\n")

    @bindings.add(Keys.BracketedPaste)
    def _paste(event: KeyPressEvent) -> None:
        text = event.data.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")
        event.current_buffer.insert_text(text)

    @bindings.add("enter")
    def _send(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        lines = buffer.text.count("\n") + 1
        if lines > PASTE_LINES and confirming != [buffer.text]:
            confirming[:] = [buffer.text]
            screen(
                ev.Status(ev.State.ONLINE, f"{lines} lines: Enter again sends them all, Ctrl-C drops them")
            )
            return
        confirming.clear()
        buffer.validate_and_handle()

    def switch_to(event: KeyPressEvent, index: int) -> None:
        screen.switch(index)
        if screen.redrawing:  # the screen shows the buffer as the prompt starts again, the line kept
            screen.stash = event.current_buffer.text
            event.app.exit(exception=_Switched())

    for digit in "123456789":

        @bindings.add("escape", digit)
        def _buffer_n(event: KeyPressEvent, index: int = int(digit) - 1) -> None:
            """Alt-1..9: that buffer."""
            if index < len(screen.buffers):
                switch_to(event, index)

    @bindings.add("c-n")
    def _next(event: KeyPressEvent) -> None:
        switch_to(event, screen.current + 1)

    @bindings.add("c-p")
    def _previous(event: KeyPressEvent) -> None:
        switch_to(event, screen.current - 1)

    @bindings.add("c-c")
    def _clear_or_quit(event: KeyPressEvent) -> None:
        """Ctrl-C drops a half-typed line, as in a shell; on an empty line it quits."""
        if event.current_buffer.text:
            event.current_buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt())

    return bindings


@contextmanager
def typed_ahead_unechoed() -> Iterator[None]:
    """No echo while the chat runs. Between two prompts the terminal is back in cooked mode:
    a key typed then (the next line, while the last one is handled) would be echoed where
    the cursor is and stay there, a stray line, once the next prompt reads and draws it."""
    try:
        fd = sys.stdin.fileno()
        before = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):  # not a terminal: nothing echoes
        yield
        return
    quiet = list(before)
    quiet[3] &= ~termios.ECHO  # lflag; each prompt's raw mode goes back to this, not to the echo
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, before)


def _chat(client: Client, screen: Screen, colour: bool) -> int:
    session: PromptSession[str] = PromptSession(
        lambda: prompt_for(client, colour, screen.room, screen.status_bar()),
        # The line typed goes once it is entered: what was said comes back from the broker
        # (a private message: its ACK), so it is shown once, as the others see it.
        erase_when_done=True,
        key_bindings=key_bindings(screen),
        history=typed_history(client.name),
        completer=ChatCompleter(screen.roster),
        complete_while_typing=False,
        style=STYLE,
        include_default_pygments_style=False,
    )
    screen.session = session
    hangup = threading.Event()

    def leave_prompt() -> None:
        hangup.set()
        app = session.app
        if app.is_running and app.loop is not None:
            # Ask the prompt to finish from inside its own loop: prompt() raises _Hangup.
            app.loop.call_soon_threadsafe(lambda: app.exit(exception=_Hangup()) if app.is_running else None)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        leave_prompt()
        if not session.app.is_running:
            raise _Hangup

    gave_up = threading.Event()  # the client's state turns "closed" soon after: remember it

    def on_given_up() -> None:
        gave_up.set()
        leave_prompt()

    screen.on_given_up = on_given_up

    def leave_if_told() -> None:
        """A give-up or signal between two prompts found no prompt to stop: stop this one as it starts."""
        screen.prompt_started(session.app)
        if hangup.is_set():
            session.app.exit(exception=_Hangup())
        elif screen.clearing or screen.redrawing:
            screen.redraw(session.app.output)  # the prompt is not drawn yet: it starts below

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        # patch_stdout: a stray print (not the Screen's) still goes above the prompt.
        with typed_ahead_unechoed(), patch_stdout(raw=True):
            screen.release(show=True)
            client.who()  # fills the roster for completion, and shows who is here
            while not hangup.is_set():
                try:
                    stash, screen.stash = screen.stash, ""
                    line = session.prompt(pre_run=leave_if_told, default=stash)
                except _Switched:
                    continue
                except (EOFError, KeyboardInterrupt, _Hangup):
                    break
                finally:
                    screen.prompt_ended()
                commands = [cmd.parse(part) for part in line.split("\n")]  # Alt-Enter or a paste: a line each
                quit_at = next((i for i, c in enumerate(commands) if isinstance(c, cmd.Quit)), None)
                for command in commands[:quit_at]:  # the lines before a /quit still go, in order
                    if command is not None and not screen.handle(client, command):
                        execute(client, command, screen)
                    if isinstance(command, cmd.Join) and screen.room == command.room.lower():
                        client.names(screen.room)  # who is there: for /whois, and shown as irssi does
                if quit_at is not None:
                    break
            if client.state is ev.State.ONLINE and not hangup.is_set():
                client.flush(DRAIN_TIMEOUT)  # a line typed just before /quit still goes
    except (_Hangup, KeyboardInterrupt):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if gave_up.is_set() or client.state is ev.State.OFFLINE else 0
