"""The interactive terminal UI: a prompt_toolkit prompt with events printed above it.

Events arrive on the client's poller thread and are written through
`patch_stdout`, which redraws the input line below them, so nothing the user
is typing is ever clobbered. The prompt shows the connection state.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from zchat.client import commands as cmd
from zchat.client import events as ev
from zchat.client.readstate import ReadState, history_file, mentions, state_file
from zchat.client.render import Renderer, colour_of, visible
from zchat.client.script import execute
from zchat.client.session import Client, ConnectError
from zchat.client.settings import Settings

#: Seconds to wait, on the way out, for answers to messages just sent.
DRAIN_TIMEOUT = 3.0
PRIVATE_WORDS = ("/msg", "/m", "/tell")
STYLE = Style.from_dict({"reconnecting": "fg:ansiyellow bold", "offline": "fg:ansired bold"})


class Roster:
    """The names known to be online and the rooms known, kept from events."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._names: set[str] = set()
        self._rooms: set[str] = set()
        self._lock = threading.Lock()  # written on the poller thread, read on the UI one

    def update(self, event: ev.Event) -> None:
        with self._lock:
            if isinstance(event, ev.Users):
                if event.room:
                    self._names |= set(event.names)  # a room's members are online too
                    self._rooms.add(event.room)
                else:
                    self._names = set(event.names)
            elif isinstance(event, ev.Presence):
                if event.room != "*":
                    self._rooms.add(event.room)  # leaving a room is not leaving the chat
                    if event.event == "join":
                        self._names.add(event.name)
                elif event.event == "join":
                    self._names.add(event.name)
                else:
                    self._names.discard(event.name)
            elif isinstance(event, ev.Message):
                if not event.history:
                    self._names.add(event.sender)
                if event.room and event.room != "*":
                    self._rooms.add(event.room)
            elif isinstance(event, ev.RoomList):
                self._rooms |= {room for room, _ in event.sizes} | set(event.mine)
            elif isinstance(event, ev.Ack) and event.command == "enter":
                self._rooms.add(event.target)

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
                    suffix = " " if word in ("/msg", "/me", *cmd.ROOM_WORDS, "/search") else ""
                    yield from self._matching([word], before, suffix)
                return
            if before.startswith("@"):
                yield from self._matching(self.roster.others(), before[1:], suffix=" ")
                return
        word = document.get_word_before_cursor(WORD=True)
        first, _, rest = before.partition(" ")
        if first.lower() in PRIVATE_WORDS and " " not in rest:
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


class Screen:
    """Where events go: a line each above the prompt, and a redraw on state changes."""

    def __init__(self, me: str, colour: bool, bell: bool = True) -> None:
        self.me = me
        self.bell = bell
        self.renderer = Renderer(me, colour, width=self.columns)
        self.roster = Roster(me)
        self.session: PromptSession[str] | None = None
        self.quiet = False  # set on the way out: the closing status is noise
        self.room = "*"  # the current room: plain text goes there; the prompt shows it
        self.clearing = False  # /clear: the screen is cleared as the next prompt starts
        self._held: list[str] | None = []  # lines from before the connection was made
        self._lock = threading.RLock()
        #: Called (on the poller thread) when the client gives up for good, e.g. signed in elsewhere.
        self.on_given_up: Callable[[], None] | None = None

    def __call__(self, event: ev.Event) -> None:
        """The client's on_event: runs on the poller thread."""
        self.roster.update(event)
        line = None if self.quiet else self.renderer.line(event)
        if line is not None and self.bell and self._calls_for_me(event):
            line += "\a"  # the bell: terminals and tmux mark the window, desktops raise the urgency hint
        if line is not None:
            with self._lock:
                if self._held is not None:
                    self._held.append(line)
                else:
                    self.write(line)
        if isinstance(event, ev.Status) and self.session is not None:
            self.session.app.invalidate()  # thread-safe: the prompt shows the state
            if event.state is ev.State.OFFLINE and self.on_given_up is not None:
                self.on_given_up()  # nothing typed could go anywhere now: leave

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
                self.write(line)

    def show_help(self, word: str = "") -> None:
        self.write((cmd.help_of(word) if word else None) or cmd.HELP)

    def clear(self) -> None:
        """The screen cleared as the next prompt starts: by prompt_toolkit's renderer, which
        knows where its prompt is (an escape written here would leave it lost)."""
        self.clearing = True

    def write(self, text: str) -> None:
        # sys.stdout is patch_stdout's proxy while the prompt runs: it prints above it.
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()


def prompt_for(client: Client, colour: bool, room: str = "*") -> StyleAndTextTuples:
    name_style = f"fg:ansi{_ANSI_NAMES[colour_of(client.name)]}" if colour else ""
    state = client.state
    fragments: StyleAndTextTuples = [(name_style, client.name)]
    if room != "*":
        fragments.append(("", f" {room}"))
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


class _Hangup(Exception):
    """SIGTERM or SIGHUP, or the client gave up: leave the prompt."""


def run_tui(settings: Settings, colour: bool) -> int:
    """Chat until /quit, Ctrl-D or Ctrl-C; 1 if the connection failed or was given up."""
    name, broker = settings.name, settings.broker
    screen = Screen(name, colour, settings.bell)
    # What was read is kept in the user's data folder: after a restart the join says what is new.
    client = Client.from_settings(settings, on_event=screen,
                                  read_state=ReadState(state_file(settings.name, settings.broker)))  # fmt: skip
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
    try:
        return _chat(client, screen, colour)
    finally:
        screen.quiet = True
        unsent = client.unanswered_sends()  # held back by the rate limit, or no connection
        client.close()
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

    @bindings.add("c-c")
    def _clear_or_quit(event: KeyPressEvent) -> None:
        """Ctrl-C drops a half-typed line, as in a shell; on an empty line it quits."""
        if event.current_buffer.text:
            event.current_buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt())

    return bindings


def _chat(client: Client, screen: Screen, colour: bool) -> int:
    session: PromptSession[str] = PromptSession(
        lambda: prompt_for(client, colour, screen.room),
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
        if hangup.is_set():
            session.app.exit(exception=_Hangup())
        elif screen.clearing:
            screen.clearing = False
            sys.stdout.flush()  # what came before the /clear goes with it
            output = session.app.output  # the prompt is not drawn yet: it starts at the top
            output.erase_screen()
            output.cursor_goto(0, 0)
            output.flush()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with patch_stdout(raw=True):
            screen.release(show=True)
            client.who()  # fills the roster for completion, and shows who is here
            while not hangup.is_set():
                try:
                    line = session.prompt(pre_run=leave_if_told)
                except (EOFError, KeyboardInterrupt, _Hangup):
                    break
                commands = [cmd.parse(part) for part in line.split("\n")]  # Alt-Enter or a paste: a line each
                if any(isinstance(command, cmd.Quit) for command in commands):
                    break
                for command in commands:
                    if command is not None:
                        execute(client, command, screen)
            if client.state is ev.State.ONLINE and not hangup.is_set():
                client.flush(DRAIN_TIMEOUT)  # a line typed just before /quit still goes
    except (_Hangup, KeyboardInterrupt):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if gave_up.is_set() or client.state is ev.State.OFFLINE else 0
