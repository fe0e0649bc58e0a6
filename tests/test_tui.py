"""The terminal UI in a real terminal: `zchat connect` inside a private tmux server.

Each test drives alice's UI with keystrokes, as a person would, while bob is a
Client in the test; assertions read the screen with capture-pane.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support import HOSTILE, HOSTILE_SHOWN, ZCHAT, Broker, start_curve_broker, wait_for
from zchat.client import events as ev
from zchat.client.commands import ACTION_PREFIX
from zchat.client.render import colour_of
from zchat.client.session import Client
from zchat.common import keys

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

DEADLINE = 15.0
E = TypeVar("E")
T = TypeVar("T")


class Terminal:
    """One tmux server of our own (its own socket), with one 120x40 window."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"zchat-test-{secrets.token_hex(6)}"
        # The pane stays after its process exits, so what it printed last can be read.
        self.config = tmp_path / "tmux.conf"
        self.config.write_text("set -g remain-on-exit on\nset -g history-limit 1000\n")
        # Written by the pane's shell: tmux's #{pane_dead_status} sometimes stays empty.
        self.status_file = tmp_path / "exit-status"
        # The user's data folder (what was read, kept across restarts): the test's own.
        self.data = tmp_path / "data"
        self.started = False
        self.target = "t"  # the session's current window; "t:0" the chat's once another is opened

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, "-f", str(self.config), *args],
            capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip
        if result.returncode:  # with what tmux said: CalledProcessError's message leaves it out
            raise RuntimeError(f"tmux {shlex.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def start(self, *argv: str, colour: bool = False, columns: int = 120) -> None:
        env = (
            "env -u NO_COLOR" if colour else "env NO_COLOR=1"
        ) + f" XDG_DATA_HOME={shlex.quote(str(self.data))} ZCHAT_CONFIG={os.devnull}"
        status, partial = shlex.quote(str(self.status_file)), shlex.quote(f"{self.status_file}.partial")
        command = f"{env} {shlex.join(argv)}; echo $? > {partial} && mv {partial} {status}"
        self.tmux("new-session", "-d", "-s", "t", "-x", str(columns), "-y", "40", command)
        self.started = True
        self.socket_path = Path(self.tmux("display-message", "-p", "#{socket_path}").strip())

    def keys(self, *keys: str) -> None:
        """Named keys: Enter, Tab, Up, C-c..."""
        self.tmux("send-keys", "-t", self.target, *keys)

    def type(self, text: str) -> None:
        """Literal text, without Enter."""
        self.tmux("send-keys", "-t", self.target, "-l", text)

    def screen(self, escapes: bool = False) -> str:
        """The scrollback and the visible screen (tmux may scroll a dead pane's lines off)."""
        return self.tmux("capture-pane", "-p", "-S", "-", "-t", self.target, *(["-e"] if escapes else []))

    def visible(self) -> str:
        """The visible screen only, without the scrollback."""
        return self.tmux("capture-pane", "-p", "-t", self.target)

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen().splitlines() if line.strip()]

    def input_line(self) -> str:
        lines = self.lines()
        return lines[-1] if lines else ""

    def wait(self, check: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
        """wait_for, with the screen in the failure message."""
        try:
            return wait_for(check, timeout, 0.05, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; the screen:\n{self.screen()}") from None

    def wait_screen(self, text: str) -> str:
        def showing() -> str | None:
            screen = self.screen()
            return screen if text in screen else None

        return self.wait(showing, f"{text!r} on screen")

    def wait_input(self, text: str) -> None:
        self.wait(lambda: self.input_line() == text, f"input line {text!r}")

    def exit_status(self) -> int | None:
        return int(self.status_file.read_text()) if self.status_file.exists() else None

    def wait_exit(self) -> int:
        def exited() -> tuple[int] | None:
            status = self.exit_status()
            return None if status is None else (status,)  # a tuple: 0 is an exit status too

        return self.wait(exited, "the process to exit")[0]

    def again(self, folder: Path) -> Terminal:
        """A new terminal in `folder` for the same user: this one's data folder, as after a restart."""
        folder.mkdir()
        terminal = Terminal(folder)
        terminal.data = self.data
        return terminal

    def close(self) -> None:
        if self.started:
            self.started = False
            subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=DEADLINE)
            self.socket_path.unlink(missing_ok=True)  # tmux leaves it behind


class Peer:
    """Another user, driven from the test through the Client library."""

    def __init__(self, name: str, endpoint: str) -> None:
        self.client = Client(name, endpoint, connect_timeout=DEADLINE).connect()
        self.seen: list[ev.Event] = []

    def expect(self, what: str, kind: type[E], **fields: object) -> E:
        """The first event of this kind with these field values, waiting for it if need be."""

        def found() -> E | None:
            for seen in self.seen:
                if isinstance(seen, kind) and all(getattr(seen, k) == v for k, v in fields.items()):
                    return seen
            event = self.client.next_event(0.05)
            if event is not None:
                self.seen.append(event)
            return None

        return wait_for(found, DEADLINE, 0, what)

    def count(self, text: str) -> int:
        """How many messages with this text came so far."""
        while (event := self.client.next_event(0)) is not None:
            self.seen.append(event)
        return sum(1 for e in self.seen if isinstance(e, ev.Message) and e.text == text)

    def message(self, text: str) -> ev.Message:
        return self.expect(f"message {text!r}", ev.Message, text=text)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
    yield term
    term.close()


@pytest.fixture
def bob(broker: Broker) -> Iterator[Peer]:
    peer = Peer("bob", broker.endpoint)
    yield peer
    peer.client.close()


def start_alice(terminal: Terminal, broker: Broker, colour: bool = False, columns: int = 120) -> None:
    terminal.start(
        ZCHAT, "connect", "--name", "alice", "--broker", broker.endpoint, colour=colour, columns=columns
    )
    terminal.wait_input("alice>")  # capture-pane drops the prompt's trailing space
    terminal.wait_screen("online (")  # the first /who has come back: completion knows the names


def test_incoming_messages_appear_above_a_half_typed_line(
    terminal: Terminal, broker: Broker, bob: Peer
) -> None:
    start_alice(terminal, broker)
    terminal.type("hello wor")
    terminal.wait_input("alice> hello wor")
    bob.client.broadcast("hi everyone").wait(DEADLINE)
    bob.client.send("alice", "just for you").wait(DEADLINE)

    def shown_above_intact_input() -> list[str] | None:
        # Polled: between printing a line and redrawing the prompt, the input is briefly gone.
        *above, last = terminal.lines() or [""]
        broadcast = any(line.endswith("<bob> hi everyone") for line in above)
        private = any(line.endswith("[private] bob -> you: just for you") for line in above)
        return above if broadcast and private and last == "alice> hello wor" else None

    terminal.wait(shown_above_intact_input, "the messages above the intact input line")
    terminal.type("ld")
    terminal.keys("Enter")
    message = bob.message("hello world")
    assert (message.sender, message.private) == ("alice", False)
    terminal.wait_screen("<alice> hello world")
    terminal.wait_input("alice>")


def test_private_messages_actions_and_who(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker)
    for line in ("/msg bob hi", "@bob psst", "/me waves", "/who", "/help"):
        terminal.type(line)
        terminal.keys("Enter")
    assert bob.message("hi").private and bob.message("psst").private
    assert bob.message(ACTION_PREFIX + "waves").sender == "alice"
    for shown in (
        "[private] you -> bob: hi",
        "[private] you -> bob: psst",
        "* alice waves",
        "/msg NAME TEXT",
    ):
        terminal.wait_screen(shown)
    # Once when the UI started, once for the /who typed.
    terminal.wait(lambda: terminal.screen().count("online (2): alice, bob") == 2, "/who's answer")


def test_unknown_recipient_and_unknown_command_are_reported(terminal: Terminal, broker: Broker) -> None:
    start_alice(terminal, broker)
    terminal.type("/msg nobody hello")
    terminal.keys("Enter")
    terminal.wait_screen("not sent to nobody")
    terminal.type("/frobnicate")
    terminal.keys("Enter")
    terminal.wait_screen("unknown command /frobnicate")
    terminal.wait_input("alice>")


def test_tab_completes_command_words_and_online_names(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker)
    terminal.type("/whoi")
    terminal.keys("Tab")
    terminal.wait_input("alice> /whois")
    terminal.type("bob")
    terminal.keys("Enter")
    terminal.wait_screen("bob: online, in no room with you")
    terminal.type("@b")
    terminal.keys("Tab")
    terminal.wait_input("alice> @bob")
    terminal.type("yo")  # the completion added the space after the name
    terminal.keys("Enter")
    assert bob.message("yo").private
    terminal.type("/msg b")
    terminal.keys("Tab")
    terminal.wait_input("alice> /msg bob")
    terminal.type("again")
    terminal.keys("Enter")
    assert bob.message("again").private


def test_a_name_that_joins_later_completes(terminal: Terminal, broker: Broker) -> None:
    start_alice(terminal, broker)
    carol = Peer("carol", broker.endpoint)
    try:
        terminal.wait_screen("carol joined")
        terminal.type("/msg ca")
        terminal.keys("Tab")
        terminal.wait_input("alice> /msg carol")
    finally:
        carol.client.close()


def test_up_arrow_recalls_the_previous_line(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker)
    terminal.type("first line")
    terminal.keys("Enter")
    bob.message("first line")
    terminal.wait_input("alice>")
    terminal.keys("Up")
    terminal.wait_input("alice> first line")
    terminal.keys("Enter")
    wait_for(lambda: bob.count("first line") == 2, DEADLINE, 0.05, "the line sent again")


@pytest.mark.parametrize("keys", [("/quit", "Enter"), ("C-d",), ("C-c",)], ids=["quit", "ctrl-d", "ctrl-c"])
def test_leaving_exits_zero_and_says_goodbye(
    terminal: Terminal, broker: Broker, bob: Peer, keys: tuple[str, ...]
) -> None:
    start_alice(terminal, broker)
    bob.expect("alice joined", ev.Presence, name="alice", event="join")
    if keys[0].startswith("/"):
        terminal.type(keys[0])
        keys = keys[1:]
    terminal.keys(*keys)
    assert terminal.wait_exit() == 0, terminal.screen()
    # A clean goodbye, not a heartbeat timeout: the client was closed.
    bob.expect("alice to quit", ev.Presence, name="alice", event="leave", reason="quit")


def test_closing_the_terminal_says_goodbye(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker)
    bob.expect("alice joined", ev.Presence, name="alice", event="join")
    terminal.close()  # the pane's process gets SIGHUP
    bob.expect("alice to quit", ev.Presence, name="alice", event="leave", reason="quit")


def test_prompt_shows_the_connection_state(terminal: Terminal, broker: Broker) -> None:
    start_alice(terminal, broker)
    terminal.type("half")
    broker.stop()
    terminal.wait(
        lambda: terminal.input_line() == "alice (reconnecting)> half", "the prompt to show the state"
    )
    terminal.keys("C-u")
    terminal.type("said while the broker is away")
    terminal.keys("Enter")
    terminal.type("/quit")
    terminal.keys("Enter")
    assert terminal.wait_exit() == 0
    # Its refusal at closing is not shown line by line: one line says it was not sent.
    assert "1 message(s) not sent" in terminal.screen(), terminal.screen()


def test_a_taken_name_exits_non_zero_with_a_clear_message(terminal: Terminal, broker: Broker) -> None:
    alice = Client("alice", broker.endpoint, connect_timeout=DEADLINE).connect()
    try:
        terminal.start(ZCHAT, "connect", "--name", "alice", "--broker", broker.endpoint)
        assert terminal.wait_exit() == 1
        screen = terminal.screen()
        assert "cannot join" in screen and "the name alice is taken" in screen, screen
        assert "alice>" not in screen  # no UI was started
    finally:
        alice.close()


def test_signed_in_elsewhere_the_terminal_says_so_and_exits(terminal: Terminal, tmp_path: Path) -> None:
    broker, server = start_curve_broker(tmp_path / "broker")
    home = tmp_path / "alice-home"
    own = keys.generate(home)  # the same key in the terminal and in the other client
    elsewhere: Client | None = None
    try:
        terminal.start("env", f"ZCHAT_HOME={home}", ZCHAT, "connect", "--name", "alice",
                       "--broker", broker.endpoint, "--server-key", server.public.decode())  # fmt: skip
        terminal.wait_input("alice>")
        elsewhere = Client(
            "alice", broker.endpoint, server_key=server.public, keys=own, connect_timeout=DEADLINE
        )
        elsewhere.connect()
        assert terminal.wait_exit() == 1
        assert "signed in elsewhere" in terminal.screen(), terminal.screen()
        assert elsewhere.state is ev.State.ONLINE  # the session stays with the newer one: no tug of war
    finally:
        if elsewhere is not None:
            elsewhere.close()
        broker.stop()


def test_an_unreachable_broker_exits_non_zero_after_the_timeout(terminal: Terminal, broker: Broker) -> None:
    endpoint = broker.endpoint
    broker.stop()
    terminal.start(ZCHAT, "connect", "--name", "alice", "--broker", endpoint, "--connect-timeout", "0.5")
    assert terminal.wait_exit() == 1
    screen = terminal.screen()
    assert f"cannot join {endpoint} as alice" in screen and "alice>" not in screen, screen


def test_names_have_colours_without_no_color(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker, colour=True)
    bob.client.broadcast("in colour").wait(DEADLINE)
    terminal.wait_screen("in colour")
    screen = terminal.screen(escapes=True)
    assert f"\x1b[{colour_of('bob')}mbob" in screen, repr(screen)
    # The prompt too (below the status bar: tmux may reset the background between).
    assert re.search(rf"\x1b\[{colour_of('alice')}m(\x1b\[49m)?alice", screen), repr(screen)


def test_no_color_means_no_colour(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker)
    bob.client.broadcast("plain").wait(DEADLINE)
    terminal.wait_screen("<bob> plain")
    assert "\x1b[" not in terminal.screen(escapes=True).replace("\x1b[39m", "").replace("\x1b[49m", "")


def test_escapes_in_another_users_text_are_shown_not_obeyed(terminal: Terminal, broker: Broker) -> None:
    start_alice(terminal, broker, colour=True)  # our colours are escapes too: only theirs must not work
    mallory = Peer("mallory", broker.endpoint)
    try:
        terminal.wait_screen("mallory joined")
        mallory.client.broadcast(HOSTILE).wait(DEADLINE)
        terminal.wait_screen("tail-end")
    finally:
        mallory.client.close()
    visible = terminal.tmux("capture-pane", "-p", "-t", terminal.target)  # the screen itself, no scrollback
    assert "mallory joined" in visible, visible  # the line before it: not cleared
    line = next(line for line in visible.splitlines() if "<mallory>" in line)
    assert HOSTILE_SHOWN in line, line  # on one line, where it was written
    assert not any(line.startswith("[00:00:00]") for line in visible.splitlines()), visible
    assert "pwned" not in terminal.tmux("display-message", "-p", "-t", terminal.target, "#{pane_title}")


# --- the habits of irssi and WeeChat users (issue 15) --------------------------------------

TIME = re.compile(r"^(\[\d\d:\d\d:\d\d\]|\d\d:\d\d) ")


def enter(terminal: Terminal, line: str) -> None:
    terminal.type(line)
    terminal.keys("Enter")


def test_own_messages_are_shown_once(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker)
    enter(terminal, "said once")
    enter(terminal, "/msg bob privately once")
    bob.message("said once")
    terminal.wait_screen("<alice> said once")
    terminal.wait_screen("[private] you -> bob: privately once")
    terminal.wait_input("alice>")
    screen = terminal.screen()
    assert screen.count("said once") == 1 and screen.count("-> bob: privately once") == 1, screen


def test_lines_typed_while_a_burst_is_printed_are_shown_once_and_leave_nothing_behind(
    terminal: Terminal, broker: Broker, bob: Peer
) -> None:
    start_alice(terminal, broker)
    burst, typed = [f"burst {i:03d}" for i in range(300)], [f"typed {i:02d} line" for i in range(12)]
    for i, text in enumerate(typed):
        for said in burst[i * 25 : (i + 1) * 25]:  # printing while alice types, and as she presses Enter
            bob.client.broadcast(said)
        enter(terminal, text)
    terminal.wait_screen(f"<alice> {typed[-1]}")
    terminal.wait_screen(f"<bob> {burst[-1]}")
    terminal.wait_input("alice>")
    lines = terminal.lines()
    for text in typed:  # once, as the broker sent it back: never as a stray echo or a prompt left behind
        shown = [line for line in lines if text in line]
        assert len(shown) == 1 and shown[0].endswith(f"<alice> {text}"), (text, "\n".join(lines))
    assert all(f"<bob> {said}" in "\n".join(lines) for said in burst), "\n".join(lines)
    prompts = [i for i, line in enumerate(lines) if line.startswith("alice>") or line.startswith("[*1:")]
    assert prompts == [len(lines) - 2, len(lines) - 1], "\n".join(lines)  # one status bar, one prompt


def test_ctrl_c_clears_a_half_typed_line_and_keeps_the_client(terminal: Terminal, broker: Broker) -> None:
    start_alice(terminal, broker)
    terminal.type("half a thought")
    terminal.wait_input("alice> half a thought")
    terminal.keys("C-c")
    terminal.wait_input("alice>")
    assert terminal.exit_status() is None
    enter(terminal, "still here")
    terminal.wait_screen("<alice> still here")
    terminal.keys("C-c")  # on an empty line: quits
    assert terminal.wait_exit() == 0


def test_status_lines_carry_a_time_and_plain_words(terminal: Terminal, broker: Broker) -> None:
    start_alice(terminal, broker)
    enter(terminal, "/frobnicate")
    enter(terminal, "/msg nobody hello")
    line = terminal.wait(
        lambda: next((x for x in terminal.lines() if "unknown command /frobnicate" in x), None), "the error"
    )
    refused = terminal.wait(lambda: next((x for x in terminal.lines() if "not sent to nobody" in x), None),
                            "the refusal")  # fmt: skip
    for shown in (line, refused):
        assert TIME.match(shown), shown
        assert not re.search(r"\(\d{3}\)", shown), shown  # no internal code


def test_wrapped_lines_are_indented_under_the_text_in_40_columns(
    terminal: Terminal, broker: Broker, bob: Peer
) -> None:
    start_alice(terminal, broker, columns=40)
    said = "the deploy of the new broker went well and nobody noticed a thing at all today"
    words = said.split(" ")
    bob.client.broadcast(said).wait(DEADLINE)
    terminal.wait_screen("today")
    rows = terminal.screen().splitlines()
    first = next(i for i, row in enumerate(rows) if "<bob> the" in row)
    indent = rows[first].index("the deploy")
    assert indent <= 14, rows[first]  # a short time: the text keeps most of the width
    wrapped = [rows[first]]
    while "today" not in wrapped[-1]:
        wrapped.append(rows[first + len(wrapped)])
    assert len(wrapped) >= 3 and all(len(row.rstrip()) <= 40 for row in wrapped), wrapped
    assert all(row[:indent].strip() == "" and row[indent] != " " for row in wrapped[1:]), wrapped
    assert " ".join(row[indent:].strip() for row in wrapped).split() == words  # no word broken


def test_room_commands_say_what_is_so(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker)
    enter(terminal, "/room #elsewhere")
    terminal.wait_screen("you are not in #elsewhere")
    terminal.wait_input("alice>")  # still in the lobby
    enter(terminal, "/leave #dev")
    terminal.wait_screen("you are not in #dev")
    assert "you left #dev" not in terminal.screen()
    enter(terminal, "/names #nosuch")
    terminal.wait_screen("nobody in #nosuch is online")
    enter(terminal, "/join #dev")
    terminal.wait_input("alice #dev>")
    bob.client.enter("#dev").wait(DEADLINE)
    bob.client.send("#dev", "about to go").wait(DEADLINE)
    terminal.wait_screen("<bob> about to go")  # as history or live: either way alice's room is live now
    bob.client.exit("#dev").wait(DEADLINE)
    line = terminal.wait(
        lambda: next((x for x in terminal.lines() if "bob left #dev" in x), None), "bob leaving"
    )
    assert line.endswith("bob left #dev"), line  # not "left #dev (left)"
    enter(terminal, "/leave")
    terminal.wait_screen("you left #dev")
    terminal.wait_input("alice>")


def test_after_a_restart_the_join_marks_what_is_unread(tmp_path: Path, broker: Broker, bob: Peer) -> None:
    first = Terminal(tmp_path)
    try:
        start_alice(first, broker)
        bob.client.broadcast("read before leaving").wait(DEADLINE)
        first.wait_screen("<bob> read before leaving")
        enter(first, "/quit")
        assert first.wait_exit() == 0
    finally:
        first.close()
    bob.client.broadcast("said while alice was away").wait(DEADLINE)
    bob.client.broadcast("and more").wait(DEADLINE)
    again = first.again(tmp_path / "again")
    try:
        start_alice(again, broker)
        again.wait_screen("and more")
        lines = again.lines()
        marker = next(i for i, line in enumerate(lines) if "unread since" in line)
        before = next(i for i, line in enumerate(lines) if "<bob> read before leaving" in line)
        missed = next(i for i, line in enumerate(lines) if "<bob> said while alice was away" in line)
        assert before < marker < missed, lines
        assert "the lobby" in lines[marker] and TIME.match(lines[marker]), lines[marker]
    finally:
        again.close()


def test_history_shows_the_newest_each_time_and_more_pages_back(
    terminal: Terminal, broker: Broker, bob: Peer
) -> None:
    bob.client.enter("#dev").wait(DEADLINE)
    for i in range(1, 5):
        bob.client.send("#dev", f"note {i}").wait(DEADLINE)
    start_alice(terminal, broker)
    enter(terminal, "/join #dev")
    terminal.wait_screen("<bob> note 4")
    assert "unread since" not in terminal.screen()  # nothing of #dev was read before
    enter(terminal, "/clear")
    terminal.wait(lambda: "note" not in terminal.visible(), "the screen cleared")
    enter(terminal, "/history #dev 2")  # the same, newest two, each time
    terminal.wait(lambda: "2 message(s) of #dev above" in terminal.visible(), "the first answer")
    enter(terminal, "/history #dev 2")  # typed once the first answer is in
    terminal.wait(lambda: terminal.visible().count("2 message(s) of #dev above") == 2, "two answers")
    screen = terminal.visible()
    assert screen.count("<bob> note 4") == 2 and screen.count("<bob> note 3") == 2 and "note 2" not in screen
    assert "/history" not in screen  # the typed lines are gone, the screen in order
    enter(terminal, "/more #dev 1")  # the join showed all four: nothing is older
    terminal.wait_screen("no earlier messages in #dev")
    enter(terminal, "/help join")
    terminal.wait_screen("/join #ROOM")
    assert "/quit" not in terminal.screen()


def bell_rang(terminal: Terminal) -> bool:
    """tmux flags a bell in a window that is not the one shown: the chat is window 0."""
    return terminal.tmux("display-message", "-p", "-t", "t:0", "#{window_bell_flag}").strip() == "1"


def look_away(terminal: Terminal) -> None:
    terminal.target = "t:0"
    # The shown window now: the chat's bell is flagged. "t:" is session t's next free index;
    # a bare "t" may be taken for a window of that name or prefix (tmux tries windows first).
    terminal.tmux("new-window", "-t", "t:")


def test_a_mention_or_a_private_message_rings_the_bell(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker)
    look_away(terminal)
    bob.client.broadcast("nothing for malice here").wait(DEADLINE)
    terminal.wait_screen("nothing for malice here")
    assert not bell_rang(terminal)  # the bell is written with the line: it would have rung by now
    bob.client.broadcast("Alice: the deploy is done").wait(DEADLINE)
    terminal.wait(lambda: bell_rang(terminal), "the bell for a mention")
    terminal.tmux("select-window", "-t", "t:0")  # looked at: the flag goes
    look_away(terminal)
    bob.client.send("alice", "a word in private").wait(DEADLINE)
    terminal.wait(lambda: bell_rang(terminal), "the bell for a private message")


def test_no_bell_means_no_bell(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    terminal.start(ZCHAT, "connect", "--name", "alice", "--broker", broker.endpoint, "--no-bell")
    terminal.wait_screen("online (")
    look_away(terminal)
    bob.client.send("alice", "quietly").wait(DEADLINE)
    terminal.wait_screen("quietly")
    assert not bell_rang(terminal)


def test_what_was_typed_is_recalled_after_a_restart(tmp_path: Path, broker: Broker) -> None:
    first = Terminal(tmp_path)
    try:
        start_alice(first, broker)
        enter(first, "typed in the first session")
        first.wait_screen("<alice> typed in the first session")
        enter(first, "/quit")
        assert first.wait_exit() == 0
    finally:
        first.close()
    again = first.again(tmp_path / "again")
    try:
        start_alice(again, broker)
        again.keys("Up")
        again.wait_input("alice> /quit")
        again.keys("Up")
        again.wait_input("alice> typed in the first session")
    finally:
        again.close()


def test_alt_enter_adds_a_line_and_each_line_goes_as_a_message(
    terminal: Terminal, broker: Broker, bob: Peer
) -> None:
    start_alice(terminal, broker)
    terminal.type("first of two")
    terminal.keys("M-Enter")
    terminal.type("second of two")
    terminal.wait_screen("second of two")
    assert bob.count("first of two") == 0  # not sent yet
    terminal.keys("Enter")
    assert bob.message("first of two").target == "*" and bob.message("second of two").target == "*"


def test_lines_before_a_quit_in_one_entry_are_sent_then_it_quits(
    terminal: Terminal, broker: Broker, bob: Peer
) -> None:
    start_alice(terminal, broker)
    terminal.type("last words")
    terminal.keys("M-Enter")
    terminal.type("/quit")
    terminal.keys("Enter")
    assert terminal.wait_exit() == 0
    assert bob.message("last words").target == "*"


def test_a_long_paste_waits_for_a_second_enter(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker)
    pasted = [f"pasted line {i}" for i in range(1, 9)]
    terminal.tmux("set-buffer", "-b", "paste", "\n".join(pasted))
    terminal.tmux("paste-buffer", "-p", "-b", "paste", "-t", "t")  # bracketed, as a terminal pastes
    terminal.wait_screen("pasted line 8")
    terminal.keys("Enter")
    terminal.wait_screen("8 lines: Enter again")
    assert bob.count("pasted line 1") == 0
    terminal.keys("Enter")
    for line in pasted:
        bob.message(line)
    terminal.wait_screen("<alice> pasted line 8")


def test_buffers_count_what_came_elsewhere_and_switching_shows_it(
    terminal: Terminal, broker: Broker, bob: Peer
) -> None:
    bob.client.enter("#dev").wait(DEADLINE)
    start_alice(terminal, broker)
    enter(terminal, "/join #dev")
    terminal.wait_input("alice #dev>")
    terminal.wait_screen("[1:lobby] [*2:#dev]")
    bob.client.broadcast("said in the lobby").wait(DEADLINE)
    bob.client.broadcast("alice: a mention in the lobby").wait(DEADLINE)
    terminal.wait_screen("[1:lobby 2!] [*2:#dev]")  # counted there, not shown here
    assert "said in the lobby" not in terminal.visible()
    bob.client.send("#dev", "said in dev").wait(DEADLINE)
    terminal.wait(lambda: "<bob> said in dev" in terminal.visible(), "the current buffer's line")
    terminal.type("half typed")
    terminal.keys("M-1")  # the lobby: its lines shown, its count cleared, the line kept
    terminal.wait_input("alice> half typed")
    terminal.wait(lambda: "[*1:lobby] [2:#dev]" in terminal.visible(), "the lobby current, counts cleared")
    screen = terminal.visible()
    assert "<bob> said in the lobby" in screen and "said in dev" not in screen, screen
    terminal.keys("C-c")
    bob.client.send("#dev", "while away from dev").wait(DEADLINE)
    terminal.wait_screen("[*1:lobby] [2:#dev 1]")
    enter(terminal, "/buffer #dev")
    terminal.wait(lambda: "<bob> while away from dev" in terminal.visible(), "#dev's lines")
    enter(terminal, "back in dev")
    assert bob.message("back in dev").target == "#dev"  # plain text goes to the current buffer's room
    enter(terminal, "/query bob")
    terminal.wait_screen("[1:lobby] [2:#dev] [*3:bob]")
    enter(terminal, "just us")
    assert bob.message("just us").private
    terminal.keys("C-p")
    terminal.wait_input("alice #dev>")
    bob.client.send("alice", "in private").wait(DEADLINE)
    terminal.wait_screen("[3:bob 1!]")
    terminal.keys("C-n")
    terminal.wait(lambda: "[private] bob -> you: in private" in terminal.visible(), "the private buffer")
    enter(terminal, "/leave")  # a private buffer: closed, the lobby shown
    terminal.wait_input("alice>")
    terminal.wait(lambda: terminal.visible().count("[*1:lobby] [2:#dev]\n") == 1, "bob's buffer gone")
    enter(terminal, "/buffer 7")
    terminal.wait_screen("no buffer 7")


def test_ignore_hides_a_users_messages_until_unignored(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    start_alice(terminal, broker)
    enter(terminal, "/ignore bob")
    terminal.wait_screen("ignoring bob")
    bob.client.broadcast("not for alice's eyes").wait(DEADLINE)
    bob.client.send("alice", "nor this").wait(DEADLINE)
    enter(terminal, "/ignore")
    terminal.wait_screen("ignored: bob")
    enter(terminal, "/unignore bob")
    terminal.wait_screen("showing bob's messages again")
    bob.client.broadcast("seen again").wait(DEADLINE)
    terminal.wait_screen("<bob> seen again")
    screen = terminal.screen()
    assert "not for alice" not in screen and "nor this" not in screen, screen


def test_whois_says_online_and_rooms_in_common(terminal: Terminal, broker: Broker, bob: Peer) -> None:
    bob.client.enter("#dev").wait(DEADLINE)
    start_alice(terminal, broker)
    enter(terminal, "/join #dev")
    terminal.wait_screen("in #dev (2)")
    enter(terminal, "/whois bob")
    terminal.wait_screen("bob: online, in #dev with you")
    bob.client.close()
    terminal.keys("M-1")  # leaving the chat is said in the lobby
    terminal.wait(lambda: "bob left" in terminal.visible(), "bob leaving")
    enter(terminal, "/whois bob")
    terminal.wait_screen("bob: not online, in no room with you")


def test_what_came_to_a_buffer_not_viewed_is_unread_after_a_restart(
    tmp_path: Path, broker: Broker, bob: Peer
) -> None:
    bob.client.enter("#dev").wait(DEADLINE)
    first = Terminal(tmp_path)
    try:
        start_alice(first, broker)
        enter(first, "/join #dev")
        bob.client.send("#dev", "seen in dev").wait(DEADLINE)
        first.wait(lambda: "<bob> seen in dev" in first.visible(), "#dev's message in view")
        first.keys("M-1")
        first.wait_screen("[*1:lobby] [2:#dev]")
        bob.client.send("#dev", "came while you looked at the lobby").wait(DEADLINE)
        first.wait_screen("[*1:lobby] [2:#dev 1]")
        enter(first, "/quit")
        assert first.wait_exit() == 0
    finally:
        first.close()
    again = first.again(tmp_path / "again")
    try:
        start_alice(again, broker)
        again.wait_screen("unread since")  # the rooms' history comes on signing in, behind the lobby
        assert "in #dev" in next(line for line in again.lines() if "unread since" in line)
        enter(again, "/buffer #dev")
        lines = again.wait(lambda: again.visible() if "looked at the lobby" in again.visible() else None,
                           "#dev's history")  # fmt: skip
        assert lines.index("seen in dev") < lines.index("came while you looked at the lobby"), lines
    finally:
        again.close()


def test_a_mention_in_a_buffer_not_in_view_rings_the_bell(
    terminal: Terminal, broker: Broker, bob: Peer
) -> None:
    start_alice(terminal, broker)
    enter(terminal, "/join #dev")
    terminal.wait_screen("[1:lobby] [*2:#dev]")
    look_away(terminal)
    bob.client.broadcast("alice: in the lobby").wait(DEADLINE)
    terminal.wait(lambda: bell_rang(terminal), "the bell for a mention behind another buffer")
    assert "in the lobby" not in terminal.tmux("capture-pane", "-p", "-t", "t:0")
    terminal.wait_screen("[1:lobby 1!] [*2:#dev]")


def start_as(terminal: Terminal, broker: Broker, name: str) -> None:
    terminal.start(ZCHAT, "connect", "--name", name, "--broker", broker.endpoint)
    terminal.wait_input(f"{name}>")
    terminal.wait_screen("online (")


@pytest.fixture
def bobs_terminal(tmp_path: Path) -> Iterator[Terminal]:
    (tmp_path / "bob").mkdir()
    term = Terminal(tmp_path / "bob")
    yield term
    term.close()


def test_away_and_ignore_as_another_user_sees_them(
    terminal: Terminal, bobs_terminal: Terminal, broker: Broker
) -> None:
    start_alice(terminal, broker)
    start_as(bobs_terminal, broker, "bob")
    enter(terminal, "/away at lunch")
    terminal.wait_screen("you are away: at lunch")
    enter(bobs_terminal, "/who")
    bobs_terminal.wait_screen("online (2): alice (away: at lunch), bob")
    enter(bobs_terminal, "/msg alice are you there?")
    bobs_terminal.wait_screen("alice is away: at lunch")
    terminal.wait_screen("[private] bob -> you: are you there?")  # delivered all the same
    enter(bobs_terminal, "/whois alice")
    bobs_terminal.wait_screen("alice: online, away: at lunch")
    enter(terminal, "/away")
    terminal.wait_screen("you are back")
    enter(terminal, "/ignore bob")
    terminal.wait_screen("ignoring bob")
    enter(bobs_terminal, "/who")
    bobs_terminal.wait(lambda: bobs_terminal.screen().count("online (2): alice, bob") == 2, "alice back")
    enter(bobs_terminal, "/msg alice still there?")  # bob is not told he is ignored, nor that she is away
    bobs_terminal.wait_screen("[private] you -> alice: still there?")
    enter(terminal, "/unignore bob")
    terminal.wait_screen("showing bob's messages again")
    bob_screen, alice_screen = bobs_terminal.screen(), terminal.screen()
    assert bob_screen.count("alice is away") == 1, bob_screen
    assert "still there?" not in alice_screen, alice_screen


def test_topic_as_another_user_sees_it(terminal: Terminal, bobs_terminal: Terminal, broker: Broker) -> None:
    start_alice(terminal, broker)
    enter(terminal, "/join #dev")
    terminal.wait_screen("you joined #dev")
    enter(terminal, "/topic")
    terminal.wait_screen("#dev has no topic")
    enter(terminal, "/topic #dev release on friday")
    terminal.wait_screen("alice set the topic of #dev: release on friday")
    start_as(bobs_terminal, broker, "bob")
    enter(bobs_terminal, "/topic #dev mine now")  # not a member: any member may, nobody else
    bobs_terminal.wait_screen("join #dev to set its topic")
    enter(bobs_terminal, "/join #dev")
    bobs_terminal.wait_screen("topic of #dev: release on friday (set by alice")  # shown on joining
    carol = Peer("carol", broker.endpoint)
    try:
        carol.client.enter("#dev").wait(DEADLINE)
        assert isinstance(carol.client.set_topic("#dev", HOSTILE).wait(DEADLINE), ev.Ack)
        said = "".join(("carol set the topic of #dev: " + HOSTILE_SHOWN).split())  # across its wrapping
        for term in (terminal, bobs_terminal):

            def shown(t: Terminal = term) -> bool | None:
                return said in "".join(t.screen().split()) or None

            term.wait(shown, "carol's topic, shown safely")
    finally:
        carol.client.close()
    enter(bobs_terminal, "/topic -")
    terminal.wait_screen("bob cleared the topic of #dev")
    bobs_terminal.wait_screen("bob cleared the topic of #dev")
    assert "mine now" not in terminal.screen()


def test_zchat_send_as_alice_goes_through_her_open_terminal(
    terminal: Terminal, broker: Broker, bob: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="zr"))  # short: a socket's path has at most 107 bytes
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))  # the terminal's too: its tmux starts here
    try:
        start_alice(terminal, broker)
        for where, text in ((["--to", "bob"], "from the shell"), (["--all"], "to all from the shell")):
            sent = subprocess.run(
                [ZCHAT, "send", "--name", "alice", "--broker", broker.endpoint, *where, text],
                capture_output=True, text=True, timeout=60, env={**os.environ, "ZCHAT_CONFIG": os.devnull},
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr  # her chat sent it: not 409
            assert bob.message(text).sender == "alice"
        terminal.wait_screen("<alice> to all from the shell")
        screen = terminal.screen()
        assert screen.count("[private] you -> bob: from the shell") == 1, screen  # once, as her own
        assert screen.count("<alice> to all from the shell") == 1, screen
        assert len(list((runtime / "zchat").iterdir())) == 1
        terminal.type("/quit")
        terminal.keys("Enter")
        assert terminal.wait_exit() == 0
        assert list((runtime / "zchat").iterdir()) == []  # gone with the chat
        # The lobby's events come in order: a send's session would have joined and left before.
        bob.expect("alice to quit", ev.Presence, name="alice", event="leave")
        presences = [e.event for e in bob.seen if isinstance(e, ev.Presence) and e.name == "alice"]
        assert presences == ["join", "leave"]
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
