"""Refusal logging: a flood of refusals gives a few lines and a summary."""

from __future__ import annotations

import logging

import pytest

from zchat.broker.quietlog import QuietLog


def test_a_flood_of_refusals_is_summarised_not_written_line_by_line(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.quietlog")
    quiet = QuietLog(logger, per_window=3, window=10.0)
    with caplog.at_level(logging.INFO, logger="test.quietlog"):
        for i in range(1000):
            quiet.refusal(1.0 + i / 1000, "rate_limited", "refused %d", i)
        quiet.refusal(2.0, "name_owned", "refused %s", "x")  # another kind has its own share
        for _ in range(4):
            quiet.refusal(2.0, "not_registered", "refused %s", "y")
        assert [r.getMessage() for r in caplog.records] == [
            "refused 0", "refused 1", "refused 2", "refused x", "refused y", "refused y", "refused y"
        ]  # fmt: skip
        quiet.flush(11.5)  # the window is over: one line for what was left out
        quiet.refusal(11.6, "malformed", "refused %s", "y")
    assert [r.getMessage() for r in caplog.records[7:]] == [
        "998 more refusals not logged (997 rate_limited, 1 not_registered)",
        "refused y",
    ]
