"""What a user types, parsed: shared by the terminal UI and line mode."""

from __future__ import annotations

from dataclasses import dataclass, replace

#: Convention (PROTOCOL.md, "Text conventions"): a body starting with this is an action.
ACTION_PREFIX = "\x01ACTION "


@dataclass(frozen=True)
class Say:
    text: str  # to the current room (the lobby: everyone)


@dataclass(frozen=True)
class Private:
    to: str
    text: str


@dataclass(frozen=True)
class Who:
    pass


@dataclass(frozen=True)
class Join:
    room: str


@dataclass(frozen=True)
class Leave:
    room: str  # "": the current room


@dataclass(frozen=True)
class Rooms:
    pass


@dataclass(frozen=True)
class Names:
    room: str  # "": the current room


@dataclass(frozen=True)
class SwitchRoom:
    room: str  # "*": the lobby


@dataclass(frozen=True)
class History:
    room: str  # "": the current room
    count: int
    older: bool = False  # /more: before the oldest shown so far, not the newest


@dataclass(frozen=True)
class Clear:
    pass


@dataclass(frozen=True)
class Search:
    words: str


@dataclass(frozen=True)
class Help:
    word: str = ""  # one command's help ("/join"), or all of it


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Invalid:
    reason: str


Command = (
    Say
    | Private
    | Who
    | Join
    | Leave
    | Rooms
    | Names
    | SwitchRoom
    | History
    | Search
    | Clear
    | Help
    | Quit
    | Invalid
)

HELP = """\
commands:
  TEXT              say TEXT in the current room (at first the lobby: everyone)
  /msg NAME TEXT    private message to NAME (also: @NAME TEXT)
  /me ACTION        say what you do, e.g. /me waves
  /join #ROOM       join ROOM (its last messages first) and make it the current room
  /leave [#ROOM]    leave ROOM (the current one if not given)
  /room [#ROOM]     switch the current room (without ROOM: the lobby)
  /rooms            the rooms, with their members
  /names [#ROOM]    who of ROOM is online
  /history [#ROOM] [N]  the last N messages of ROOM (default 50, at most 500)
  /more [#ROOM] [N] N messages of ROOM before the oldest shown
  /search WORDS     messages of your rooms and yours with all of WORDS (or words starting so)
  /who              who is online
  /clear            clear the screen
  /help [COMMAND]   this help, or the help of COMMAND
  /quit             leave (also Ctrl-D, or Ctrl-C on an empty line)
keys: Alt-Enter another line (each goes as a message); Ctrl-C clears the line; Up recalls"""

#: Command words for completion.
WORDS = ("/msg", "/me", "/join", "/leave", "/room", "/rooms", "/names", "/history", "/more", "/search", "/who",
         "/clear", "/help", "/quit")  # fmt: skip
#: Command words whose argument is a room.
ROOM_WORDS = ("/join", "/leave", "/room", "/names", "/history", "/more")


def help_of(word: str) -> str | None:
    """The lines of HELP about one command ("/join" or "join"), or None if there is none."""
    word = "/" + word.lstrip("/").lower()
    lines = [line for line in HELP.splitlines()[1:] if line.split()[0] == word]
    return "\n".join(lines) if lines else None


HISTORY_COUNT = 50


def parse(line: str) -> Command | None:
    """One input line to a command; None for a blank line."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if line.startswith("@"):
        return _private(line[1:], "@NAME TEXT")
    if not line.startswith("/") or line.startswith("//"):
        return Say(line[1:] if line.startswith("//") else line)  # "//" escapes a leading slash
    word, _, rest = line.partition(" ")
    word = word.lower()
    if word in ("/msg", "/m", "/tell"):
        return _private(rest, "/msg NAME TEXT")
    if word == "/me":
        return Say(ACTION_PREFIX + rest) if rest.strip() else Invalid("usage: /me ACTION")
    args = rest.split()
    if word == "/who":
        return Who()
    if word in ("/join", "/j"):
        return Join(args[0]) if len(args) == 1 else Invalid("usage: /join #ROOM")
    if word in ("/leave", "/part"):
        return Leave(args[0] if args else "") if len(args) <= 1 else Invalid("usage: /leave [#ROOM]")
    if word == "/room":
        return SwitchRoom(args[0] if args else "*") if len(args) <= 1 else Invalid("usage: /room [#ROOM]")
    if word in ("/rooms", "/list"):
        return Rooms()
    if word == "/names":
        return Names(args[0] if args else "") if len(args) <= 1 else Invalid("usage: /names [#ROOM]")
    if word == "/history":
        return _history(args)
    if word == "/more":
        history = _history(args)
        return (
            replace(history, older=True)
            if isinstance(history, History)
            else Invalid("usage: /more [#ROOM] [N]")
        )
    if word == "/clear":
        return Clear()
    if word == "/search":
        return Search(rest.strip()) if rest.strip() else Invalid("usage: /search WORDS")
    if word in ("/help", "/?"):
        if len(args) > 1:
            return Invalid("usage: /help [COMMAND]")
        return Help(args[0]) if args else Help()
    if word in ("/quit", "/exit", "/q"):
        return Quit()
    return Invalid(f"unknown command {word}; /help lists them")


def _history(args: list[str]) -> Command:
    room, count = "", HISTORY_COUNT
    if args and not args[0].isdigit():
        room, args = args[0], args[1:]
    if len(args) > 1 or (args and not (args[0].isdigit() and int(args[0]) > 0)):
        return Invalid("usage: /history [#ROOM] [N]")
    return History(room, int(args[0]) if args else count)


def _private(rest: str, usage: str) -> Command:
    name, _, text = rest.strip().partition(" ")
    if not name or not text.strip():
        return Invalid(f"usage: {usage}")
    return Private(name, text)
