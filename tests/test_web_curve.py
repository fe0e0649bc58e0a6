"""The gateway in front of a CURVE broker: web users sign in by invitation, with a key the
gateway holds for them, and nobody signs in through it under a name bound to another key."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.support import ZCHAT, Broker, start_curve_broker
from tests.test_web_browser import BROWSER_TESTS, CHROMIUM, WAIT, say, shot, sync_playwright
from tests.web_support import WebGateway, WebUser, start_gateway
from zchat.client import events as ev
from zchat.client.session import Client
from zchat.common.keys import KeyPair

pytestmark = BROWSER_TESTS


@pytest.fixture
def curve(tmp_path: Path) -> Iterator[tuple[Broker, KeyPair]]:
    broker, server = start_curve_broker(tmp_path)
    yield broker, server
    broker.stop()


def invite(folder: Path, name: str, url: str) -> str:
    done = subprocess.run([ZCHAT, "web", "invite", name, "--keys", str(folder), "--url", url],
                          capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    return done.stdout.strip()


def test_web_users_sign_in_by_invitation_and_never_as_a_name_bound_to_another_key(
    tmp_path: Path, curve: tuple[Broker, KeyPair]
) -> None:
    from playwright.sync_api import expect

    assert sync_playwright is not None and CHROMIUM is not None
    broker, server = curve
    alice = Client("alice", broker.endpoint, server_key=server.public, keys=KeyPair(*zmq.curve_keypair()))
    alice.connect()  # alice's name is now bound to her own key (first use)
    folder = tmp_path / "web-keys"
    gateway: WebGateway = start_gateway(tmp_path, broker, "--server-key", server.public.decode(),
                                        "--keys", str(folder))  # fmt: skip
    try:
        bob_link = invite(folder, "bob", gateway.url)
        assert bob_link.startswith(gateway.url + "/#invite=bob:")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            # bob, invited: the link fills his name in and signs him in under his gateway-held key.
            page = browser.new_context().new_page()
            page.goto(bob_link)
            expect(page.get_by_label("Name")).to_have_value("bob")
            assert "invite" not in page.url  # the token leaves the address bar at once
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_label("Message", exact=True)).to_be_visible(timeout=WAIT)
            say(page, "@alice hello over CURVE")
            got = alice.next_event(10)
            while got is not None and not (isinstance(got, ev.Message) and got.text == "hello over CURVE"):
                got = alice.next_event(10)
            assert isinstance(got, ev.Message) and got.sender == "bob"
            shot(page, "curve-invited-bob")

            # Without an invitation: refused by the gateway.
            other = browser.new_context().new_page()
            other.goto(gateway.url + "/")
            other.get_by_label("Name").fill("alice")
            other.get_by_role("button", name="Sign in").click()
            expect(other.get_by_role("alert")).to_contain_text("invitation", timeout=WAIT)
            shot(other, "curve-alice-not-invited")

            # With an invitation for alice, but alice's name is bound to her own key: the
            # broker refuses the gateway's key for it.
            alice_link = invite(folder, "alice", gateway.url)
            taker = browser.new_context().new_page()
            taker.goto(alice_link)
            taker.get_by_role("button", name="Sign in").click()
            expect(taker.get_by_role("alert")).to_contain_text("alice", timeout=WAIT)
            expect(taker.get_by_label("Message", exact=True)).to_be_hidden()
            shot(taker, "curve-alice-bound-elsewhere")
            browser.close()

        # bob's token does not sign in as anyone else, nor does a made-up one as bob.
        bob_token = bob_link.rsplit(":", 1)[1]
        web = WebUser(gateway)
        assert web.hello("carol", invite=bob_token)["code"] == 621
        assert web.hello("bob", invite=bob_token[:-2] + "xx")["code"] == 621
        web.close()
        assert alice.state is ev.State.ONLINE  # the real alice never noticed
    finally:
        alice.close()
        gateway.stop()
