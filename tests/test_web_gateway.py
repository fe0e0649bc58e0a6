"""The web gateway over a real WebSocket, with a real broker: sessions, resume, Origin, headers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("websockets", reason="the web gateway needs websockets: pip install 'zchat[web]'")

from websockets.exceptions import InvalidStatus

from tests.chat import chat
from tests.support import HOSTILE, Broker, start_broker, wait_for
from tests.web_support import WebGateway, WebUser, start_gateway
from zchat.client import events as ev

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    running = start_broker(tmp_path_factory.mktemp("broker"), "--heartbeat-interval", "0.5",
                           "--heartbeat-timeout", "3")  # fmt: skip
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[WebGateway]:
    running = start_gateway(tmp_path_factory.mktemp("web"), broker, "--resume-window", "2")
    yield running
    assert running.stop() == 0, running.log()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_page_is_served_with_a_policy_that_forbids_inline_scripts(gateway: WebGateway) -> None:
    status, headers, body = get(gateway.url + "/")
    assert status == 200 and b"<html" in body
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = get(gateway.url + "/static/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert get(gateway.url + "/static/../setup.cfg")[0] == 404
    assert get(gateway.url + "/nothing-here")[0] == 404


def test_a_websocket_from_another_origin_is_refused(gateway: WebGateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        WebUser(gateway, origin="http://evil.example")
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):  # the same host under another port is another origin
        WebUser(gateway, origin=gateway.url.rsplit(":", 1)[0] + ":1")
    own = WebUser(gateway)  # the page's own origin
    own.send({"type": "who"})
    assert own.expect(lambda e: e["type"] == "error")["code"] == 620  # sign in first
    own.close()


def test_web_users_and_a_terminal_user_talk_privately_in_the_lobby_and_in_a_room(
    gateway: WebGateway, broker: Broker
) -> None:
    ann, ben = WebUser(gateway), WebUser(gateway)
    assert ann.hello("ann")["type"] == "welcome"
    assert ben.hello("ben")["type"] == "welcome"
    with chat("term", broker.endpoint) as term:
        ann.line("/msg ben psst")
        private = ben.message("psst")
        assert private["kind"] == "private" and private["from"] == "ann"
        ann.expect(lambda e: e["type"] == "receipt" and e["id"] == private["id"], what="the receipt")

        ben.line("hello all")
        assert term.message("hello all").sender == "ben"
        assert ann.message("hello all")["kind"] == "broadcast"

        term.client.send("ann", "from a terminal").wait(5)
        assert ann.message("from a terminal")["from"] == "term"

        ann.line("/join #web")
        ann.expect(lambda e: e["type"] == "room" and e["room"] == "#web", what="switched to #web")
        ann.expect(lambda e: e["type"] == "ack" and e.get("command") == "enter", what="joined")
        ann.line("first in the room", where="#web")
        ann.message("first in the room")
        term.client.enter("#web").wait(5)
        history = term.message("first in the room")
        assert history.history  # what was said before, then live
        term.client.send("#web", "live from term").wait(5)
        live = ann.message("live from term")
        assert live["room"] == "#web" and "history" not in live
        ann.send({"type": "quit"})
        ann.expect(lambda e: e["type"] == "bye")
        term.expect(lambda e: isinstance(e, ev.Presence) and e.name == "ann" and e.event == "leave",
                    what="ann leaving")  # fmt: skip
    ben.send({"type": "quit"})
    ben.close()


def test_a_page_that_comes_back_gets_what_it_missed_once_and_its_queue_runs_once(
    gateway: WebGateway, broker: Broker
) -> None:
    cat = WebUser(gateway)
    cat.hello("cat")
    with chat("dan", broker.endpoint) as dan:
        dan.client.send("cat", "one").wait(5)
        cat.message("one")
        cat.close()  # the page's WebSocket drops
        dan.client.send("cat", "two").wait(5)
        dan.client.broadcast("three").wait(5)
        dan.message("three")  # it went round: the gateway has it for cat by now, surely after the private one

        again = WebUser(gateway)
        again.last_eid = cat.last_eid
        again.send({"type": "resume", "session": cat.session, "last": cat.last_eid})
        resumed = again.expect(lambda e: e["type"] == "resumed")
        assert resumed["last_cid"] == 0
        again.message("two")
        again.message("three")
        texts = [e["text"] for e in again.seen if e["type"] == "message"]
        assert texts == ["two", "three"]  # not "one" again

        # What the page typed while away is sent once, even when the page sends it twice.
        again.send({"type": "line", "cid": 1, "text": "/msg dan queued", "where": "*"})
        again.send({"type": "line", "cid": 1, "text": "/msg dan queued", "where": "*"})
        again.send({"type": "line", "cid": 2, "text": "/msg dan after", "where": "*"})
        dan.message("after")
        assert [m.text for m in dan.messages()].count("queued") == 1
        again.send({"type": "quit"})
        again.close()


def test_a_page_that_stays_away_ends_its_session_and_cannot_resume_it(
    gateway: WebGateway, broker: Broker
) -> None:
    eve = WebUser(gateway)
    eve.hello("eve")
    token = eve.session
    eve.close()
    with chat("watcher", broker.endpoint) as watcher:
        watcher.expect(lambda e: isinstance(e, ev.Presence) and e.name == "eve" and e.event == "leave"
                       and e.reason == "quit", timeout=15, what="eve signed out after the window")  # fmt: skip
    back = WebUser(gateway)
    back.send({"type": "resume", "session": token, "last": 0})
    assert back.expect(lambda e: e["type"] in ("reset", "resumed"))["type"] == "reset"
    assert back.hello("eve")["type"] == "welcome"  # the name is free again: start over cleanly
    back.send({"type": "quit"})
    back.close()


def test_hostile_texts_arrive_exactly_as_sent(gateway: WebGateway, broker: Broker) -> None:
    fay = WebUser(gateway)
    fay.hello("fay")
    markup = "<img src=x onerror=alert(1)></script><script>alert(2)</script>"
    with chat("gil", broker.endpoint) as gil:
        gil.client.send("fay", markup).wait(5)
        gil.client.send("fay", HOSTILE).wait(5)
        assert fay.message(markup)["text"] == markup
        assert fay.message(HOSTILE)
    fay.send({"type": "quit"})
    fay.close()


def test_malformed_commands_are_answered_and_the_session_goes_on(gateway: WebGateway) -> None:
    hal = WebUser(gateway)
    hal.send({"type": "hello", "name": "not a name!"})
    assert hal.expect(lambda e: e["type"] == "refused")["code"] == 400
    assert hal.hello("hal")["type"] == "welcome"
    for bad in (
        "not json",
        json.dumps([1]),
        json.dumps({"type": "nope"}),
        json.dumps({"type": "send", "cid": 1}),
    ):
        hal.ws.send(bad)
    hal.expect(lambda e: e["type"] == "error" and "send needs" in e["text"], what="the last refusal")
    hal.command("who")
    users = hal.expect(lambda e: e["type"] == "users")
    assert "hal" in users["names"]
    hal.send({"type": "quit"})
    hal.close()


def test_a_taken_name_is_refused_with_the_reason(gateway: WebGateway, broker: Broker) -> None:
    with chat("ivy", broker.endpoint):
        web = WebUser(gateway)
        refused = web.hello("ivy")
        assert refused["type"] == "refused" and "ivy" in refused["text"]
        web.close()


def threads_of(process_id: int) -> int:
    with open(f"/proc/{process_id}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="counts threads in /proc")
def test_sessions_run_on_the_gateways_loop_with_no_thread_of_their_own(
    tmp_path: Path, broker: Broker
) -> None:
    own = start_gateway(tmp_path, broker)
    first = WebUser(own)
    assert first.hello("t0")["type"] == "welcome"
    before = threads_of(own.process.pid)  # the loop's, and the one zmq context's I/O and reaper threads
    users = [WebUser(own) for _ in range(10)]
    for number, user in enumerate(users, 1):
        assert user.hello(f"t{number}")["type"] == "welcome"
    users[9].command("send", to="t0", text="from the tenth")
    assert first.message("from the tenth")["from"] == "t10"
    assert threads_of(own.process.pid) <= before + 1  # a session with threads would add 2-3 each
    assert own.stop() == 0, own.log()


def test_the_gateway_stops_cleanly_signing_everyone_out(tmp_path: Path, broker: Broker) -> None:
    own = start_gateway(tmp_path, broker)
    jo = WebUser(own)
    jo.hello("jo")
    with chat("kim", broker.endpoint) as kim:
        assert own.stop() == 0
        kim.expect(lambda e: isinstance(e, ev.Presence) and e.name == "jo" and e.event == "leave",
                   what="jo signed out")  # fmt: skip
    wait_for(lambda: own.process.poll() is not None)


def test_without_websockets_zchat_web_names_the_extra_to_install() -> None:
    import subprocess
    import sys

    code = "import sys; sys.modules['websockets'] = None\nfrom zchat.common.cli import main; main(['web'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "zchat[web]" in done.stderr


def test_sign_ins_under_way_count_against_max_sessions(tmp_path: Path, broker: Broker) -> None:
    own = start_gateway(tmp_path, broker, "--max-sessions", "2")
    users = [WebUser(own) for _ in range(4)]
    try:
        for i, user in enumerate(users):  # all at once: none has its answer when the next asks
            user.send({"type": "hello", "name": f"full{i}"})
        replies = [
            user.expect(lambda e: e["type"] in ("welcome", "refused"), what="welcome or refused")
            for user in users
        ]
        assert sorted(reply["type"] for reply in replies) == ["refused", "refused", "welcome", "welcome"]
        assert all("full" in reply["text"] for reply in replies if reply["type"] == "refused")
    finally:
        for user in users:
            user.close()
        assert own.stop() == 0
