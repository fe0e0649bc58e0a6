"""The broker's rule table and settings agree with the spec and the command line."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from zchat.broker import cli
from zchat.broker.core import COUNTED, RULES
from zchat.broker.settings import BrokerSettings, default
from zchat.common import protocol as p

SPEC = (Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text()
#: Each command's name in the spec (kept here, not taken from a codec's frames).
WIRE_NAMES = {
    p.Hello: "HELLO", p.Send: "SEND", p.Who: "WHO", p.Ping: "PING", p.Sync: "SYNC", p.Ready: "READY",
    p.Bye: "BYE", p.Enter: "ENTER", p.Exit: "EXIT", p.Rooms: "ROOMS", p.Names: "NAMES",
    p.HistoryRequest: "HISTORY", p.Search: "SEARCH", p.Received: "RECEIVED", p.Away: "AWAY",
    p.SubjectRequest: "SUBJECT", p.SetSubject: "SETSUBJECT",
}  # fmt: skip


def section(number: str) -> str:
    """The text of one numbered section (## N. or ### N.M) up to the next heading of its level."""
    level = "###" if "." in number else "##"
    start = re.search(rf"^{level} {re.escape(number)}\.? .*$", SPEC, re.M)
    assert start, f"no section {number} in PROTOCOL.md"
    end = re.compile(rf"^{level} ", re.M).search(SPEC, start.end())
    return SPEC[start.end() : end.start() if end else len(SPEC)]


def test_every_client_command_has_one_rule() -> None:
    assert set(RULES) == set(typing.get_args(p.ClientCommand)) == set(WIRE_NAMES)


def test_the_commands_that_need_hello_are_those_the_spec_names() -> None:
    needs = {}
    for row in re.findall(r"^\| `([A-Z]+)` \|.*\| (yes|no) \|[^|]*\|$", section("4"), re.M):
        needs[row[0]] = row[1] == "yes"
    rooms = section("13.1")
    assert "All need `HELLO` first" in rooms
    for name in re.findall(r"^\| `([A-Z]+)` \|", rooms, re.M):
        needs[name] = True
    assert {WIRE_NAMES[kind]: rule.needs_hello for kind, rule in RULES.items()} == needs


def test_flood_control_counts_what_the_spec_says_it_counts() -> None:
    limits = " ".join(section("8").split())
    found = re.search(r"Flood control .*?upkeep: (.*?) are counted(.*?) are not", limits)
    assert found, "section 8 no longer says what flood control counts"
    counted, not_counted = (set(re.findall(r"`([A-Z]+)`", part)) for part in found.groups())
    assert {WIRE_NAMES[kind] for kind in COUNTED} == counted
    assert {WIRE_NAMES[kind] for kind, rule in RULES.items() if not rule.counted} == not_counted


def test_the_command_line_defaults_are_the_settings_own() -> None:
    options: dict[str | None, Any] = {param.name: param.default for param in cli.broker.params}
    as_settings = {
        "host": options["host"],
        "port": options["port"],
        "pub_port": options["pub_port"],
        "heartbeat_ms": int(options["heartbeat_interval"] * 1000),
        "timeout_ms": int(options["heartbeat_timeout"] * 1000),
        "max_body": options["max_message_size"],
        "history_days": options["history_days"],
        "rate": options["rate"],
        "burst": options["burst"],
        "cool_off": options["cool_off"],
        "ban_exempt": tuple(options["ban_exempt"]),
        "max_clients": options["max_clients"],
        "max_per_key": options["max_sessions_per_key"],
        "max_rooms_per_user": options["max_rooms_per_user"],
        "max_rooms": options["max_rooms"],
    }
    assert as_settings == {name: default(name) for name in as_settings}
    assert options["store"] is None  # not given: the setting's own default, in the user data folder
    assert BrokerSettings().store.endswith("zchat.db")


def test_flood_control_is_on_by_default_everywhere() -> None:
    assert BrokerSettings().rate == default("rate") == 20
    assert BrokerSettings().welcome_rate == (1200, 100)
