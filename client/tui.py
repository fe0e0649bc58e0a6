"""The interactive terminal UI (prompt_toolkit). Placeholder until it lands."""

from __future__ import annotations


def run_tui(name: str, broker: str, connect_timeout: float, colour: bool) -> int:
    raise NotImplementedError("the terminal UI is being written; use line mode (pipe stdin)")
