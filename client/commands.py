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
class Buffer:
    which: str  # its number ("2") or name ("#dev", "bob", "lobby")


@dataclass(frozen=True)
class Query:
    name: str  # a private conversation with this person


@dataclass(frozen=True)
class Ignore:
    name: str  # "": list who is ignored
    on: bool = True  # False: /unignore


@dataclass(frozen=True)
class Whois:
    name: str


@dataclass(frozen=True)
class Away:
    text: str  # "": back


@dataclass(frozen=True)
class Topic:
    room: str  # "": the current room
    text: str | None = None  # None: show it; "": clear it


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
    | Buffer
    | Query
    | Ignore
    | Whois
    | Away
    | Topic
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
  /buffer N|NAME    show buffer N (or NAME: lobby, #ROOM, a person); also Alt-1..9, Ctrl-N/Ctrl-P
  /query NAME       a private conversation with NAME in a buffer of its own: plain text goes to NAME
  /ignore [NAME]    do not show NAME's messages (without NAME: who is ignored)
  /unignore NAME    show NAME's messages again
  /whois NAME       what this client knows of NAME: online or not, away, rooms in common
  /away [TEXT]      mark yourself away with TEXT (others see it in /who and when they message you);
                    without TEXT: back
  /topic [#ROOM] [TEXT]  the topic of ROOM (the current one if not given); with TEXT: set it
                    (any member may; TEXT "-" clears it)
  /search WORDS     messages of your rooms and yours with all of WORDS (or words starting so)
  /who              who is online
  /clear            clear the screen
  /help [COMMAND]   this help, or the help of COMMAND
  /quit             leave (also Ctrl-D, or Ctrl-C on an empty line)
keys: Alt-Enter another line (each goes as a message); Ctrl-C clears the line; Up recalls"""

#: Command words for completion.
WORDS = ("/msg", "/me", "/join", "/leave", "/room", "/rooms", "/names", "/history", "/more", "/search", "/who",
         "/buffer", "/query", "/ignore", "/unignore", "/whois", "/away", "/topic", "/clear", "/help",
         "/quit")  # fmt: skip
#: Command words whose argument is a room.
ROOM_WORDS = ("/join", "/leave", "/room", "/names", "/history", "/more", "/topic")


def help_of(word: str) -> str | None:
    """The lines of HELP about one command ("/join" or "join"), or None if there is none."""
    word = "/" + word.lstrip("/").lower()
    lines: list[str] = []
    for line in HELP.splitlines()[1:]:
        if line.split()[0] == word or (lines and line.startswith("    ")):  # and its continuation
            lines.append(line)
        elif lines:
            break
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
    if word == "/buffer":
        return Buffer(args[0]) if len(args) == 1 else Invalid("usage: /buffer N|NAME")
    if word == "/query":
        return Query(args[0]) if len(args) == 1 else Invalid("usage: /query NAME")
    if word == "/ignore":
        return Ignore(args[0] if args else "") if len(args) <= 1 else Invalid("usage: /ignore [NAME]")
    if word == "/unignore":
        return Ignore(args[0], on=False) if len(args) == 1 else Invalid("usage: /unignore NAME")
    if word == "/whois":
        return Whois(args[0]) if len(args) == 1 else Invalid("usage: /whois NAME")
    if word == "/away":
        return Away(rest.strip())
    if word == "/topic":
        return _topic(rest.strip())
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


def _topic(rest: str) -> Command:
    room = ""
    if rest.startswith("#"):
        room, _, rest = rest.partition(" ")
        rest = rest.strip()
    if not rest:
        return Topic(room)
    return Topic(room, "" if rest == "-" else rest)


def _private(rest: str, usage: str) -> Command:
    name, _, text = rest.strip().partition(" ")
    if not name or not text.strip():
        return Invalid(f"usage: {usage}")
    return Private(name, text)
