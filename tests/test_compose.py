"""The docker-compose demo, really run: engine, image, `up`, a host client, the page, `down`.

The engine is the private one of docker/engine.sh (no Docker Hub here: a
local Debian base image). One test runs the files as README says, on a
bridge network with the ports published on 127.0.0.1; the other on host
networking. Either way nothing leaves the machine. In both, a WebSocket user
of the web gateway's page chats with the bots, as a browser on the host would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chat import chat
from tests.support import wait_for
from zchat.client import events as ev

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "docker" / "engine.sh"
COMPOSE = shutil.which("docker-compose")
IMAGE = "zchat:latest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if result.returncode:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (.ci/run installs it)")
def test_user_facing_compose_file_is_valid() -> None:
    run(str(COMPOSE), "config", "-q")  # what `docker-compose up` reads: the file and its override
    run(str(COMPOSE), "-f", "docker-compose.yml", "-f", "docker-compose.host.yml", "config", "-q")


@pytest.fixture(scope="module")
def docker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running private engine with the zchat image built on the local base image."""
    if COMPOSE is None or os.geteuid() != 0:
        pytest.skip("no Docker engine can be started here: needs root and docker-compose")
    started = subprocess.run([str(ENGINE), "base-image"], capture_output=True, text=True, timeout=900)
    if started.returncode:
        pytest.skip(f"no Docker engine could be started: {started.stderr.strip()[-500:]}")
    env = dict(os.environ)
    for line in started.stdout.splitlines():
        if line.startswith("export DOCKER_HOST="):
            env["DOCKER_HOST"] = line.split("=", 1)[1].strip("'\"")
    context = tmp_path_factory.mktemp("image")
    # Wheels built here: pip inside the build has no index to reach.
    run(
        str(Path(sys.executable).parent / "pip"), "wheel", "-q", f"{ROOT}[web]", "-w", str(context / "wheels")
    )
    shutil.copy(ROOT / "Dockerfile", context / "Dockerfile")
    run("/usr/bin/docker", "build", "-q", "--force-rm", "--build-arg", "BASE_IMAGE=zchat-base:local",
        "-t", IMAGE, str(context), env=env, timeout=600)  # fmt: skip
    # The build's intermediate images: on the vfs driver each is a full copy of the file system.
    run("/usr/bin/docker", "image", "prune", "-f", env=env, timeout=120)
    yield env
    subprocess.run([str(ENGINE), "stop"], capture_output=True, timeout=120)


def the_page(web_port: int) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=5) as page:
            return page.read() if page.status == 200 else None
    except OSError:  # not serving yet
        return None


def chat_from_the_page(web_port: int) -> None:
    """What a browser on the host does: load the page, open its WebSocket (with the page's
    Origin, which the gateway checks), sign in and have alice echo a private message."""
    from websockets.sync.client import connect
    from websockets.typing import Origin

    page = wait_for(
        lambda: the_page(web_port), timeout=60, interval=0.5, what="the gateway to serve the page"
    )
    assert b"<html" in page
    with connect(f"ws://127.0.0.1:{web_port}/ws", origin=Origin(f"http://127.0.0.1:{web_port}"),
                 open_timeout=10) as ws:  # fmt: skip

        def expect(match: Any, what: str) -> dict[str, Any]:
            deadline = time.monotonic() + 30
            while (left := deadline - time.monotonic()) > 0:
                event: dict[str, Any] = json.loads(ws.recv(timeout=left))
                if match(event):
                    return event
            raise AssertionError(f"no {what} within 30s")

        ws.send(json.dumps({"type": "hello", "name": "browser"}))
        assert expect(lambda e: e["type"] in ("welcome", "refused"), "welcome")["type"] == "welcome"
        ws.send(json.dumps({"type": "send", "cid": 1, "to": "alice", "text": "hello from the page"}))
        echo = expect(lambda e: e["type"] == "message" and e["text"] == "echo: hello from the page",
                      "alice's echo")  # fmt: skip
        assert echo["from"] == "alice" and echo["kind"] == "private"


@pytest.mark.timeout(900)
def test_compose_demo_bots_converse_and_a_host_client_joins(docker_env: dict[str, str]) -> None:
    port, pub_port, web_port = free_port(), free_port(), free_port()
    env = {**docker_env, "ZCHAT_PORT": str(port), "ZCHAT_PUB_PORT": str(pub_port),
           "ZCHAT_WEB_PORT": str(web_port)}  # fmt: skip
    compose = [str(COMPOSE), "-p", f"zchat{uuid.uuid4().hex[:8]}", "-f", "docker-compose.yml",
               "-f", "docker-compose.host.yml"]  # fmt: skip

    def logs() -> str:
        return run(*compose, "logs", "--no-color", env=env, timeout=60)

    try:
        run(*compose, "up", "-d", "--no-build", env=env, timeout=300)
        expected = (
            "[private] bob -> you: hello alice, this is private message",  # at alice
            "[private] alice -> you: echo: hello alice",  # bob echoes alice
            "<bob> bob here, public message",
            "<alice> alice here, public message",
        )
        wait_for(lambda: all(line in logs() for line in expected), timeout=120, interval=1,
                 what="the bots to converse")  # fmt: skip
        with chat("me", f"tcp://127.0.0.1:{port}") as me:
            assert isinstance(me.client.who().wait(10), ev.Users)
            assert {"alice", "bob"} <= set(me.expect(lambda e: isinstance(e, ev.Users)).names)  # type: ignore[union-attr]
            me.client.send("alice", "hello from the host").wait(10)
            assert me.message("echo: hello from the host", timeout=20).sender == "alice"
        chat_from_the_page(web_port)
        started = time.monotonic()
        run(*compose, "stop", "--timeout", "10", env=env, timeout=120)
        assert time.monotonic() - started < 30  # nobody waited for the kill after the grace period
        stopped = logs()
        assert "broker stopped" in stopped  # SIGTERM: clients told, sockets closed
        assert stopped.count("-- closed") == 2  # both bots said BYE and closed
        assert "the gateway stopped" in stopped
        run(*compose, "down", "--timeout", "10", env=env, timeout=120)
    finally:
        subprocess.run([*compose, "down", "--timeout", "5"], capture_output=True, env=env, timeout=120)


@pytest.mark.timeout(600)
def test_compose_demo_as_readme_runs_it_on_other_host_ports(docker_env: dict[str, str]) -> None:
    """docker-compose.yml with its override, on host ports that are not 5555/5556 (another
    broker may have those): a host client reaches the ROUTER on one and is sent by WELCOME
    to the PUB on the other, and the bots in the compose network still get broadcasts."""
    probe = f"zchat-probe-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["/usr/bin/docker", "network", "create", probe], capture_output=True,
                      env=docker_env, timeout=60).returncode:  # fmt: skip
        pytest.skip("this engine cannot make a bridge network, so it cannot publish ports")
    subprocess.run(
        ["/usr/bin/docker", "network", "rm", probe], capture_output=True, env=docker_env, timeout=60
    )
    port, pub_port, web_port = free_port(), free_port(), free_port()
    env = {**docker_env, "ZCHAT_PORT": str(port), "ZCHAT_PUB_PORT": str(pub_port),
           "ZCHAT_WEB_PORT": str(web_port)}  # fmt: skip
    compose = [str(COMPOSE), "-p", f"zchat{uuid.uuid4().hex[:8]}"]  # the files `docker-compose up` reads

    def heard(bot: str, other: str) -> bool:
        return f"<{other}> {other} here, public message" in run(
            *compose, "logs", "--no-color", bot, env=env, timeout=60
        )

    try:
        run(*compose, "up", "-d", "--no-build", env=env, timeout=300)
        wait_for(lambda: heard("alice", "bob") and heard("bob", "alice"), timeout=120, interval=1,
                 what="the bots to hear each other's broadcasts")  # fmt: skip
        with chat("me", f"tcp://127.0.0.1:{port}") as me:  # online: SYNCED came on the published PUB
            me.expect(lambda e: isinstance(e, ev.Message) and not e.private and e.sender in ("alice", "bob"),
                      timeout=30, what="a bot's broadcast")  # fmt: skip
            me.client.send("alice", "hello from the host").wait(10)
            assert me.message("echo: hello from the host", timeout=20).sender == "alice"
        chat_from_the_page(web_port)  # published on 127.0.0.1 from a gateway listening on 0.0.0.0
    finally:
        subprocess.run([*compose, "down", "--timeout", "5"], capture_output=True, env=env, timeout=120)
