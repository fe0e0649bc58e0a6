"""`zchat bot`, the example of building on the Client library."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.chat import chat
from tests.support import ZCHAT, Broker, wait_for
from zchat.client import events as ev


def start_bot(tmp_path: Path, broker: Broker, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([ZCHAT, "bot", "--name", name, "--broker", broker.endpoint, *args],
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})  # fmt: skip
    return process, log


def test_bot_greets_newcomers_and_echoes_private_messages(broker: Broker, tmp_path: Path) -> None:
    bot, log = start_bot(tmp_path, broker, "greeter")
    try:
        wait_for(lambda: "online as greeter" in log.read_text(), what="the bot to come online")
        with chat("alice", broker.endpoint) as alice:
            greeting = alice.expect(lambda e: isinstance(e, ev.Message) and e.sender == "greeter")
            assert isinstance(greeting, ev.Message) and greeting.text.startswith("welcome, alice!")
            alice.client.send("greeter", "ping?").wait(5)
            echo = alice.message("echo: ping?")
            assert echo.private and echo.sender == "greeter"
        bot.send_signal(signal.SIGTERM)
        assert bot.wait(10) == 0
    finally:
        bot.kill()


def test_two_bots_converse_privately_and_in_public(broker: Broker, tmp_path: Path) -> None:
    first, first_log = start_bot(tmp_path, broker, "ann", "--chat-with", "ben", "--every", "0.2")
    second, second_log = start_bot(tmp_path, broker, "ben", "--chat-with", "ann", "--every", "0.2")
    try:
        expected = ("[private] ben -> you: hello ann, this is private message",
                    "[private] ben -> you: echo: hello ben, this is private message")  # fmt: skip
        wait_for(lambda: all(line in first_log.read_text() for line in expected), timeout=20,
                 what="ben's private message and echo at ann")  # fmt: skip
        wait_for(
            lambda: "<ann> ann here, public message" in second_log.read_text(), what="ann's broadcast at ben"
        )
        for bot in (first, second):
            bot.send_signal(signal.SIGTERM)
            assert bot.wait(10) == 0
    finally:
        first.kill()
        second.kill()
