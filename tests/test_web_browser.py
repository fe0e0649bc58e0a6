"""The web page in a real browser (Playwright driving Debian's Chromium, headless), against a
real gateway and broker: what a person sees and does. Screenshots of each check go to
test-artifacts/web/."""

from __future__ import annotations

import http.server
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chat import Watcher, chat
from tests.support import Broker, start_broker, wait_for
from tests.web_support import CuttableProxy, WebGateway, start_gateway
from zchat.client import events as ev

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import Browser, Dialog, Page, expect
    from playwright.sync_api import sync_playwright as sync_playwright  # test_web_curve.py uses it too
except ImportError:  # pragma: no cover - CI installs it
    sync_playwright = None  # type: ignore[assignment]

#: What every browser test needs, and its bound (test_web_curve.py too).
BROWSER_TESTS = [
    pytest.mark.skipif(
        sync_playwright is None, reason="browser tests need playwright: pip install -e '.[test]'"
    ),
    pytest.mark.skipif(CHROMIUM is None, reason="browser tests need Chromium: apt-get install chromium"),
    pytest.mark.timeout(120),
    pytest.mark.slow,
]
pytestmark = BROWSER_TESTS

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "web"
WAIT = 10_000  # ms: every expectation in the page has this deadline


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert sync_playwright is not None and CHROMIUM is not None
    with sync_playwright() as playwright:
        # Debian's Chromium, never a Playwright download (CI has none). A Browser's repr names
        # BrowserType.executable_path, where Playwright's own build would be: not what ran.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    running = start_broker(tmp_path_factory.mktemp("broker"), "--heartbeat-interval", "0.5",
                           "--heartbeat-timeout", "3")  # fmt: skip
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[WebGateway]:
    running = start_gateway(tmp_path_factory.mktemp("web"), broker)
    yield running
    running.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def new_page(browser: Browser) -> Page:
    return browser.new_context().new_page()


def sign_in(page: Page, url: str, name: str) -> None:
    page.goto(url + "/")
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_label("Message", exact=True)).to_be_visible(timeout=WAIT)


def say(page: Page, text: str) -> None:
    field = page.get_by_label("Message", exact=True)
    field.fill(text)
    field.press("Enter")


def log_of(page: Page, where: str) -> Any:
    return page.get_by_role("log", name=f"Messages in {where}")


def open_conversation(page: Page, label: str) -> None:
    page.get_by_role("navigation").get_by_role("button", name=re.compile(f"^{re.escape(label)}")).click()


def presence_of(watcher: Watcher, name: str, event: str) -> ev.Event:
    return watcher.expect(lambda e: isinstance(e, ev.Presence) and e.name == name and e.event == event
                          and e.room == "*", what=f"{name} {event}")  # fmt: skip


def test_two_browser_users_and_a_terminal_user_talk_privately_in_the_lobby_and_in_a_room(
    browser: Browser, gateway: WebGateway, broker: Broker
) -> None:
    with chat("term", broker.endpoint) as term:
        term.client.enter("#dev").wait(5)
        term.client.send("#dev", "said before anyone came").wait(5)
        ann, ben = new_page(browser), new_page(browser)
        sign_in(ann, gateway.url, "ann")
        sign_in(ben, gateway.url, "ben")
        presence_of(term, "ben", "join")
        online = ann.get_by_role("list", name=re.compile("^Online"))
        for name in ("ben", "term"):
            expect(online.get_by_role("button", name=f"Talk privately with {name}")).to_be_visible(
                timeout=WAIT
            )

        # Private, web to web: ben sees an unread count, opens it; ann gets the delivered tick.
        say(ann, "/msg ben hi ben, privately")
        expect(ben.get_by_role("button", name=re.compile("^ann.*1 unread"))).to_be_visible(timeout=WAIT)
        expect(ben).to_have_title("(1) zchat", timeout=WAIT)
        open_conversation(ben, "ann")
        expect(log_of(ben, "ann")).to_contain_text("hi ben, privately", timeout=WAIT)
        expect(ben).to_have_title("zchat")
        open_conversation(ann, "ben")
        sent = log_of(ann, "ben").locator("li", has_text="hi ben, privately")
        expect(sent.get_by_label("delivered to ben")).to_be_visible(timeout=WAIT)
        assert all("privately" not in m.text for m in term.messages())  # not seen by a third party
        shot(ann, "private-delivered")

        # Private, web to terminal, and back; the tick comes from the terminal user's client.
        open_conversation(ann, "Lobby")
        say(ann, "@term ping from the web")
        assert term.message("ping from the web").sender == "ann"
        open_conversation(ann, "term")
        expect(log_of(ann, "term").locator("li", has_text="ping from the web").get_by_label("delivered to term"))\
            .to_be_visible(timeout=WAIT)  # fmt: skip
        term.client.send("ann", "pong from a terminal").wait(5)
        expect(log_of(ann, "term")).to_contain_text("pong from a terminal", timeout=WAIT)

        # The lobby: everyone hears it.
        open_conversation(ann, "Lobby")
        say(ann, "hello, lobby")
        assert term.message("hello, lobby").sender == "ann"
        open_conversation(ben, "Lobby")
        expect(log_of(ben, "the lobby")).to_contain_text("hello, lobby", timeout=WAIT)
        term.client.broadcast("the terminal says hi").wait(5)
        expect(log_of(ann, "the lobby")).to_contain_text("the terminal says hi", timeout=WAIT)
        say(ben, "/me waves")
        expect(log_of(ann, "the lobby")).to_contain_text("* ben", timeout=WAIT)

        # A room: its history on opening it, then live messages, once each.
        say(ann, "/join #dev")
        dev = log_of(ann, "#dev")
        expect(dev).to_contain_text("said before anyone came", timeout=WAIT)
        expect(ann.get_by_role("heading", name="#dev")).to_be_visible()
        term.client.send("#dev", "live in dev").wait(5)
        expect(dev).to_contain_text("live in dev", timeout=WAIT)
        say(ann, "ann in dev")
        assert term.message("ann in dev").target == "#dev"
        expect(dev.locator("li", has_text="said before anyone came")).to_have_count(1)
        expect(dev.locator("li", has_text="live in dev")).to_have_count(1)
        shot(ann, "room-history-and-live")

        # Search, from the page.
        ann.get_by_role("searchbox", name="Search").fill("anyone")
        ann.get_by_role("button", name="Search", exact=True).click()
        expect(ann.get_by_role("region", name="Search results")).to_contain_text("said before anyone came",
                                                                                  timeout=WAIT)  # fmt: skip
        shot(ann, "search")

        # Presence: ben signs out, ann's list and the terminal see it.
        ben.get_by_role("button", name="Sign out").click()
        presence_of(term, "ben", "leave")
        expect(online.get_by_role("button", name="Talk privately with ben")).to_have_count(0, timeout=WAIT)
        ann.context.close()
        ben.context.close()


def test_away_and_room_topics_as_a_web_user_sees_them(
    browser: Browser, gateway: WebGateway, broker: Broker
) -> None:
    with chat("tea", broker.endpoint) as tea:
        assert isinstance(tea.client.away("at lunch").wait(5), ev.Ack)
        tea.client.enter("#ops").wait(5)
        assert isinstance(tea.client.set_topic("#ops", "deploy on friday").wait(5), ev.Ack)
        wes = new_page(browser)
        sign_in(wes, gateway.url, "wes")
        say(wes, "/msg tea are you there?")
        assert tea.message("are you there?").sender == "wes"
        open_conversation(wes, "tea")
        expect(log_of(wes, "tea")).to_contain_text("tea is away: at lunch", timeout=WAIT)
        open_conversation(wes, "Lobby")
        say(wes, "/join #ops")  # the topic is shown on joining
        ops = log_of(wes, "#ops")
        expect(ops).to_contain_text("topic of #ops: deploy on friday (set by tea)", timeout=WAIT)
        tea.client.set_topic("#ops", "deploy on monday").wait(5)
        expect(ops).to_contain_text("tea set the topic of #ops: deploy on monday", timeout=WAIT)
        shot(wes, "away-and-topic")
        wes.context.close()


def test_hostile_texts_appear_literally_and_run_nothing(
    browser: Browser, gateway: WebGateway, broker: Broker
) -> None:
    page = new_page(browser)
    dialogs: list[str] = []

    def dialog(shown: Dialog) -> None:
        dialogs.append(shown.message)
        shown.dismiss()

    page.on("dialog", dialog)
    sign_in(page, gateway.url, "cat")
    hostile = ["<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>",
               "<b>not bold</b> & &amp; <a href='javascript:alert(3)'>link</a>"]  # fmt: skip
    with chat("mal", broker.endpoint) as mal:
        for text in hostile:
            mal.client.broadcast(text).wait(5)
        mal.client.send("cat", "<img src=x onerror=alert(4)>").wait(5)
    lobby = log_of(page, "the lobby")
    for text in hostile:
        expect(lobby.locator("li", has_text=text)).to_have_count(1, timeout=WAIT)
    open_conversation(page, "mal")
    expect(log_of(page, "mal")).to_contain_text("<img src=x onerror=alert(4)>", timeout=WAIT)
    assert page.locator("#logs img, #logs script, #logs b, #logs a").count() == 0
    assert dialogs == []
    # And were markup ever to get in, the policy would not run it: no inline script, no handler.
    ran = page.evaluate("""() => { const s = document.createElement("script");
        s.textContent = "window.injected = 1"; document.body.append(s);
        const i = document.createElement("img"); i.setAttribute("onerror", "window.injected = 2");
        i.src = "x"; document.body.append(i); return window.injected ?? null; }""")  # fmt: skip
    assert ran is None
    shot(page, "hostile-texts-literal")
    page.context.close()


def test_a_websocket_from_another_sites_page_is_refused(browser: Browser, gateway: WebGateway) -> None:
    """Another site's page, in the visitor's browser, tries to open a chat as the visitor.
    (Served from loopback, another port: a public site would also meet Chromium's own
    private-network checks, which would hide whether the gateway refuses it.)"""
    script = f"""<!doctype html><title>evil</title><script>
      const ws = new WebSocket({gateway.ws_url!r});
      ws.onopen = () => (document.title = "opened");
      ws.onerror = () => (document.title = "refused");
    </script>""".encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(script)

        def log_message(self, *args: Any) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    page = new_page(browser)
    try:
        evil_origin = f"http://127.0.0.1:{evil.server_address[1]}"
        page.goto(evil_origin + "/")
        expect(page).to_have_title("refused", timeout=WAIT)
        wait_for(lambda: f"refused a WebSocket from origin '{evil_origin}'" in gateway.log(),
                 what="the gateway's refusal")  # fmt: skip
    finally:
        evil.shutdown()
        evil.server_close()
    # The page's own origin opens it (the same script, served by the gateway's origin).
    own = new_page(browser)
    own.goto(gateway.url + "/")
    opened = own.evaluate("""url => new Promise(done => { const ws = new WebSocket(url);
        ws.onopen = () => done("opened"); ws.onerror = () => done("refused"); })""", gateway.ws_url)  # fmt: skip
    assert opened == "opened"
    page.context.close()
    own.context.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_reconnects_show_the_banner_while_sending_cannot_work_and_lose_nothing(
    browser: Browser, tmp_path: Path
) -> None:
    """The page's WebSocket drops (resumed: nothing missed, nothing twice, what was typed is
    sent once), the broker restarts (banner, then chat goes on) and the gateway restarts
    (the page says it started over, and does)."""
    port, pub_port = free_port(), free_port()
    broker = start_broker(tmp_path / "b1", "--heartbeat-interval", "0.3", "--heartbeat-timeout", "2",
                          port=port, pub_port=pub_port)  # fmt: skip
    web_port = free_port()
    gateway = start_gateway(tmp_path / "w1", broker, "--origin", "http://127.0.0.1:0", port=web_port)
    proxy = CuttableProxy(web_port)
    gateway.stop()  # again, now allowing the proxy's origin (the page is reached through it)
    gateway = start_gateway(tmp_path / "w1", broker, "--origin", proxy.url, port=web_port)
    page = new_page(browser)
    banner = page.locator("#banner")
    try:
        sign_in(page, proxy.url, "dee")
        expect(banner).to_be_hidden()
        with chat("eli", broker.endpoint) as eli:
            # 1. The WebSocket drops: the banner stays up exactly while it is down.
            proxy.cut()
            expect(banner).to_be_visible(timeout=WAIT)
            expect(banner).to_contain_text("gateway")
            eli.client.send("dee", "sent while dee was away").wait(5)
            say(page, "typed while away")
            shot(page, "banner-websocket-down")
            proxy.restore()
            expect(banner).to_be_hidden(timeout=WAIT)
            assert eli.message("typed while away").sender == "dee"
            open_conversation(page, "eli")
            log = log_of(page, "eli")
            expect(log.locator("li", has_text="sent while dee was away")).to_have_count(1, timeout=WAIT)
            say(page, "after the resume")
            eli.message("after the resume")
            assert [m.text for m in eli.messages()].count("typed while away") == 1

        # 2. The broker restarts: the banner while the gateway's session reconnects, then on.
        broker.stop()
        expect(banner).to_be_visible(timeout=WAIT)
        expect(banner).to_contain_text("chat server")
        shot(page, "banner-broker-down")
        broker = start_broker(tmp_path / "b2", "--heartbeat-interval", "0.3", "--heartbeat-timeout", "2",
                              port=port, pub_port=pub_port)  # fmt: skip
        expect(banner).to_be_hidden(timeout=20_000)
        with chat("fin", broker.endpoint) as fin:
            say(page, "/msg fin the chat goes on")
            assert fin.message("the chat goes on").sender == "dee"

        # 3. The gateway restarts: the session cannot be resumed; the page says so and starts over.
        gateway.stop()
        expect(banner).to_be_visible(timeout=WAIT)
        gateway = start_gateway(tmp_path / "w2", broker, "--origin", proxy.url, port=web_port)
        expect(log_of(page, "the lobby")).to_contain_text("Started over", timeout=20_000)
        expect(banner).to_be_hidden(timeout=WAIT)
        with chat("gus", broker.endpoint) as gus:
            say(page, "/msg gus back after a gateway restart")
            assert gus.message("back after a gateway restart").sender == "dee"
        shot(page, "gateway-restarted")
    finally:
        page.context.close()
        proxy.close()
        gateway.stop()
        broker.stop()


def test_everything_has_an_accessible_name_and_works_from_the_keyboard(
    page: Page, gateway: WebGateway
) -> None:
    page.goto(gateway.url + "/")
    page.keyboard.type("kbd")  # the name field has the focus
    page.keyboard.press("Enter")
    message = page.get_by_label("Message", exact=True)
    expect(message).to_be_focused(timeout=WAIT)
    page.keyboard.type("/help")
    page.keyboard.press("Enter")
    expect(log_of(page, "the lobby")).to_contain_text("/join #ROOM", timeout=WAIT)
    page.keyboard.type("/join #keys")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="#keys")).to_be_visible(timeout=WAIT)
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, input')]
        .filter(e => e.offsetParent !== null)
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML)""")  # fmt: skip
    assert unnamed == []
    expect(log_of(page, "#keys")).to_have_attribute("aria-live", "polite")  # a live region
    shot(page, "keyboard")
    # A reload resumes the session from the start of its log: all shown again, once.
    page.reload()
    expect(page.get_by_role("heading", name="#keys")).to_be_visible(timeout=WAIT)
    open_conversation(page, "Lobby")
    expect(log_of(page, "the lobby").locator("li", has_text="/join #ROOM")).to_have_count(1, timeout=WAIT)
    expect(page.get_by_label("Name")).to_be_hidden()


def test_scrolling_back_loads_earlier_history_in_order_once(
    browser: Browser, gateway: WebGateway, broker: Broker
) -> None:
    with chat("old", broker.endpoint) as old:
        old.client.enter("#old").wait(5)
        for i in range(60):
            old.client.send("#old", f"old message {i:02}")
        assert old.client.flush(10)
    page = new_page(browser)
    sign_in(page, gateway.url, "reader")
    say(page, "/join #old")
    log = log_of(page, "#old")
    expect(log).to_contain_text("old message 59", timeout=WAIT)
    expect(log.locator("li", has_text="old message 10")).to_have_count(1, timeout=WAIT)  # the last 50
    expect(log.locator("li", has_text="old message 09")).to_have_count(0)
    # Each count of messages the reader could see: the earlier page comes in at once, not one
    # message at a time (the view would jump while read, and a half page look like all there is).
    log.evaluate("""log => {
        const count = () => [...log.querySelectorAll("li .text")]
            .filter((t) => t.textContent.startsWith("old message")).length;
        window.seenCounts = [count()];
        new MutationObserver(() => window.seenCounts.push(count())).observe(log, { childList: true });
    }""")
    log.evaluate("log => log.scrollTop = 0")  # scrolling to the top asks for more
    expect(log.locator("li", has_text="old message 00")).to_have_count(1, timeout=WAIT)
    texts = [t for t in log.locator("li .text").all_inner_texts() if t.startswith("old message")]
    assert texts == [f"old message {i:02}" for i in range(60)]  # in order, each once
    assert sorted(set(page.evaluate("window.seenCounts"))) == [50, 60]
    page.get_by_role("button", name="Load earlier messages").click()
    expect(log).to_contain_text("no earlier messages", timeout=WAIT)
    expect(page.get_by_role("button", name="Load earlier messages")).to_be_disabled()
    shot(page, "earlier-history")
    page.context.close()
