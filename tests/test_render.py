"""What a terminal is given of other people's text: shown, never obeyed."""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import datetime, timezone
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import HOSTILE, HOSTILE_SHOWN
from zchat.client import events as ev
from zchat.client.commands import ACTION_PREFIX
from zchat.client.render import Renderer, to_json, visible

#: Unicode's Bidi_Control property, written out here rather than taken from the code under test.
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
#: Controls (C0, DEL, C1), surrogates, line and paragraph separators.
STEERING_CATEGORIES: tuple[Literal["Cc", "Cs", "Zl", "Zp"], ...] = ("Cc", "Cs", "Zl", "Zp")
#: The colours the renderer adds itself.
OUR_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")
NOW = datetime.now(timezone.utc)


def steers(char: str) -> bool:
    return unicodedata.category(char) in STEERING_CATEGORIES or char in BIDI


every_char = st.characters(blacklist_categories=())  # surrogates too
steering_char = st.one_of(
    st.characters(whitelist_categories=STEERING_CATEGORIES), st.sampled_from(BIDI)
)  # fmt: skip
harmless_char = st.characters(blacklist_categories=STEERING_CATEGORIES, blacklist_characters=BIDI)


@given(st.text(st.one_of(every_char, steering_char)))
def test_visible_text_holds_nothing_that_steers_a_terminal(text: str) -> None:
    assert not any(steers(char) for char in visible(text))


@given(st.text(harmless_char))
def test_visible_leaves_printable_text_as_it_is(text: str) -> None:
    assert visible(text) == text


@given(steering_char)
def test_each_steering_character_leaves_a_printable_mark(char: str) -> None:
    shown = visible(char)
    assert shown and shown.isprintable(), repr(shown)


@given(st.text(st.one_of(every_char, steering_char)))
def test_showing_text_twice_shows_it_as_once(text: str) -> None:
    assert visible(visible(text)) == visible(text)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("\x1b[2J", "␛[2J"), ("a\rb", "a␍b"), ("a\x08b", "a␈b"), ("\x07", "␇"), ("a\nb", "a␤b"), ("\x7f", "␡"),
     ("\x9b", "<U+009B>"), ("\u202eabc", "<U+202E>abc"), ("\u2028", "<U+2028>"), ("a\tb", "a b")],
)  # fmt: skip
def test_controls_are_shown_as_control_pictures_or_code_points(raw: str, shown: str) -> None:
    assert visible(raw) == shown


def events_with_hostile_text() -> list[ev.Event]:
    """Every event that carries text from another user or from the broker."""
    message = ev.Message("m1", "mallory", "*", HOSTILE, NOW)
    return [
        message,
        ev.Message("m2", "mallory", "#dev", HOSTILE, NOW),
        ev.Message("m3", "mallory", "alice", HOSTILE, NOW),
        ev.Message("m4", "mallory", "*", ACTION_PREFIX + HOSTILE, NOW),
        ev.Message("m5", "mallory", "alice", ACTION_PREFIX + HOSTILE, NOW),
        ev.Message("m6", "mallory", "#dev", HOSTILE, NOW, history=True, seq=4),
        ev.Found((message, ev.Message("m7", "alice", "mallory", HOSTILE, NOW))),
        ev.Presence("mallory", "leave", NOW, reason=HOSTILE),
        ev.Presence("mallory", "leave", NOW, reason=HOSTILE, room="#dev"),
        ev.Refusal("m8", 404, HOSTILE, target="mallory"),
        ev.Receipt("m9", "mallory", NOW, HOSTILE),
        ev.Ack("m10", NOW, "stored", "mallory", HOSTILE),
        ev.Status(ev.State.RECONNECTING, f"the broker is shutting down ({HOSTILE})"),
        ev.Status(ev.State.OFFLINE, f"signed in elsewhere: {HOSTILE}"),
        ev.RoomList(((HOSTILE, 2),), (HOSTILE,)),
        ev.Users((HOSTILE,), room=HOSTILE),
        ev.History(HOSTILE, (), 0),
    ]


@pytest.mark.parametrize("colour", [False, True], ids=["plain", "colour"])
def test_rendered_lines_carry_no_escape_but_the_renderers_own(colour: bool) -> None:
    renderer = Renderer("alice", colour)
    for event in events_with_hostile_text():
        line = renderer.line(event)
        assert line is not None, event
        lines = OUR_ESCAPES.sub("", line).split("\n")
        assert not any(steers(char) for text in lines for char in text), repr(line)
        # One line per event; a search's answer has a heading and a line per message.
        assert len(lines) == (1 + len(event.messages) if isinstance(event, ev.Found) else 1), repr(line)
        assert "␛]0;pwned␇" in line, repr(line)  # shown, not dropped


def test_another_users_text_cannot_start_a_line_of_its_own() -> None:
    line = Renderer("alice").line(ev.Message("m1", "mallory", "*", HOSTILE, NOW))
    assert line is not None and "\n" not in line and "\r" not in line
    assert line.startswith("[") and line.endswith(f"] <mallory> {HOSTILE_SHOWN}")


def test_an_action_reads_as_one_with_its_text_shown() -> None:
    renderer = Renderer("alice")
    room = renderer.line(ev.Message("m1", "mallory", "*", ACTION_PREFIX + "waves\x1b[2J", NOW))
    private = renderer.line(ev.Message("m2", "mallory", "alice", ACTION_PREFIX + "waves\x1b[2J", NOW))
    assert room is not None and room.endswith("] * mallory waves␛[2J")
    assert private is not None and private.endswith("[private] mallory -> you: * waves␛[2J")


def test_away_and_topic_texts_from_others_are_shown_not_obeyed() -> None:
    renderer = Renderer("alice", colour=True)
    lines = [
        renderer.line(ev.Away("m1", "bob", HOSTILE)),
        renderer.line(ev.Topic("#dev", HOSTILE, "bob", NOW, changed=True)),
        renderer.line(ev.Topic("#dev", HOSTILE, "bob", NOW)),
        renderer.line(ev.Users(("alice", "bob"), away=(("bob", HOSTILE),))),
    ]
    for line in lines:
        assert line is not None and HOSTILE_SHOWN in line
        assert OUR_ESCAPES.sub("", line).isprintable()


def test_away_topic_and_who_read_as_a_person_reads_them() -> None:
    renderer = Renderer("alice", colour=False)
    assert "bob is away: lunch" in str(renderer.line(ev.Away("m1", "bob", "lunch")))
    assert "bob set the topic of #dev: ship it" in str(
        renderer.line(ev.Topic("#dev", "ship it", "bob", NOW, changed=True))
    )
    assert "bob cleared the topic of #dev" in str(
        renderer.line(ev.Topic("#dev", "", "bob", NOW, changed=True))
    )
    assert "#dev has no topic" in str(renderer.line(ev.Topic("#dev", "", "", None)))
    who = str(renderer.line(ev.Users(("alice", "Bob"), away=(("Bob", "lunch"),))))
    assert "alice, Bob (away: lunch)" in who
    assert "you are away: lunch" in str(
        renderer.line(ev.Ack("w", NOW, "accepted", text="lunch", command="away"))
    )


def test_a_run_of_joins_and_leaves_is_a_line_and_a_json_object_each() -> None:
    ms = int(NOW.timestamp() * 1000)
    run = ev.Presences("#dev", (("bob", ms, ""), (HOSTILE, ms, "timeout"), ("alice", ms, "")))
    line = Renderer("alice").line(run)  # our own join of a room is not shown
    assert line is not None
    rows = line.split("\n")
    assert len(rows) == 2 and rows[0].endswith("bob joined #dev"), rows
    assert HOSTILE_SHOWN in rows[1] and "left #dev" in rows[1], rows
    objects = [json.loads(row) for row in to_json(run).split("\n")]
    assert [(o["type"], o["event"], o["name"], o["room"]) for o in objects] == [
        ("presence", "join", "bob", "#dev"), ("presence", "leave", HOSTILE, "#dev"), ("presence", "join", "alice", "#dev")
    ]  # fmt: skip
    assert objects[1]["reason"] == "timeout"
