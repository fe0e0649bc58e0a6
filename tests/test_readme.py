"""README's commands stay true: CI runs the very test command README gives."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = next(c for c in readme_commands() if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_starts_the_broker_then_clients() -> None:
    commands = readme_commands()
    assert commands[0].endswith("zchat broker")
    assert "zchat connect --name alice" in commands[1]
