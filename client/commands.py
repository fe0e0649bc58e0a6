"""What a user types, parsed: shared by the terminal UI and line mode."""

from __future__ import annotations

from dataclasses import dataclass

#: Convention (PROTOCOL.md, "Text conventions"): a body starting with this is an action.
ACTION_PREFIX = "\x01ACTION "


@dataclass(frozen=True)
class Say:
    text: str  # to everyone


@dataclass(frozen=True)
class Private:
    to: str
    text: str


@dataclass(frozen=True)
class Who:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Invalid:
    reason: str


Command = Say | Private | Who | Help | Quit | Invalid

HELP = """\
commands:
  TEXT              say TEXT to everyone
  /msg NAME TEXT    private message to NAME (also: @NAME TEXT)
  /me ACTION        say what you do, e.g. /me waves
  /who              who is online
  /help             this help
  /quit             leave (also Ctrl-D)"""

#: Command words for completion.
WORDS = ("/msg", "/me", "/who", "/help", "/quit")


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
    if word in ("/who", "/names"):
        return Who()
    if word in ("/help", "/?"):
        return Help()
    if word in ("/quit", "/exit", "/q"):
        return Quit()
    return Invalid(f"unknown command {word}; /help lists them")


def _private(rest: str, usage: str) -> Command:
    name, _, text = rest.strip().partition(" ")
    if not name or not text.strip():
        return Invalid(f"usage: {usage}")
    return Private(name, text)
