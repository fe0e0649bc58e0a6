"""`zchat broker --log-format json`: every line one JSON object, carrying its event's fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.support import start_broker, wait_for
from tests.test_metrics import Dealer
from zchat.common import protocol as p
from zchat.common.jsonlog import JsonFormatter, fields


def events(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.strip()]


@pytest.mark.parametrize("how", ["option", "environment"])
def test_json_log_lines_parse_and_carry_the_fields(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zmq_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    if how == "environment":
        monkeypatch.setenv("ZCHAT_LOG_FORMAT", "json")
        broker = start_broker(tmp_path)
    else:
        broker = start_broker(tmp_path, "--log-format", "json")
    alice = Dealer(zmq_context, broker.endpoint, "j_alice")
    refused = alice.send(b"x1", "j_nobody")  # a refusal, logged with its code
    alice.leave()
    wait_for(lambda: '"left"' in broker.log(), what="the leave logged")
    broker.stop()
    lines = events(broker.log())  # each line parses, or json.loads fails the test
    for line in lines:
        assert {"time", "level", "event", "fields", "message"} <= line.keys()
        assert line["time"].endswith("Z") and line["level"] in {"debug", "info", "warning", "error"}
    by_event = {line["event"]: line for line in lines}
    assert by_event["listening"]["fields"]["commands"] == broker.endpoint
    assert by_event["joined"]["fields"] == {"name": "j_alice", "online": 1}
    assert by_event["left"]["fields"] == {"name": "j_alice", "reason": "quit", "online": 0}
    assert isinstance(refused, p.Error) and by_event["refused"]["fields"]["code"] == 404
    assert by_event["refused"]["fields"]["id"] == "x1"
    assert by_event["stopped"]["fields"]["joined"] == 1


def test_the_default_log_stays_readable_text(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    broker.stop()
    first = broker.log().splitlines()[0]
    assert not first.startswith("{") and "zchat broker listening" in first


def test_a_line_without_named_fields_keeps_its_arguments_and_traceback() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        record = logging.LogRecord("zchat.broker", logging.ERROR, __file__, 1, "%s failed at %d", ("x", 3),
                                   sys.exc_info())  # fmt: skip
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one line, whatever the message and traceback hold
    parsed = json.loads(line)
    assert parsed["event"] == "%s failed at %d" and parsed["fields"] == {"args": ["x", 3]}
    assert parsed["message"] == "x failed at 3" and "ValueError: boom" in parsed["exception"]
    named = logging.LogRecord("zchat.broker", logging.INFO, __file__, 1, "%s joined", ("a",), None)
    for key, value in fields("joined", name="a").items():
        setattr(named, key, value)
    assert json.loads(JsonFormatter().format(named))["fields"] == {"name": "a"}
