"""The pages in a real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import asyncio
import os

import pytest
from playwright.async_api import async_playwright, expect

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is installed by make test")


@pytest.fixture
async def browser():
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        await b.close()


def two_servers(servers, redis_url, mode: str, env: dict | None = None):
    """The same server twice on one node, or two nodes sharing a Redis."""
    env = dict(env or {})
    if mode == "one-node":
        srv = servers(env=env)
        return srv, srv
    env["REDIS_URL"] = redis_url
    return servers(env=env), servers(env=env)


async def page_of(browser, url: str, init_script: str | None = None, **context_options):
    """A page at ``url`` in a context of its own (``context_options``: Playwright's), with its
    page errors collected in ``page.errors``; ``init_script`` runs before the page's own."""
    context = await browser.new_context(**context_options)
    if init_script is not None:
        await context.add_init_script(init_script)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(url)
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def test_landing_page_links_every_app(server, browser):
    page = await page_of(browser, server.url + "/")
    for link, target in (("#link-chat", "/chat.html"), ("#link-game", "/game.html"),
                         ("#link-collab", "/collab.html"), ("#link-admin", "/admin-ui/")):
        assert await page.get_attribute(link, "href") == target
    await page.click("#link-chat")
    await expect(page.locator("#status")).to_have_text("connected")


@pytest.mark.parametrize("mode", ["one-node", "two-nodes"])
async def test_two_browsers_chat(servers, browser, redis_url, mode):
    a_srv, b_srv = two_servers(servers, redis_url, mode)
    alice = await page_of(browser, a_srv.url + "/chat.html")
    bob = await page_of(browser, b_srv.url + "/chat.html?transport=polling")
    for page in (alice, bob):
        await expect(page.locator("#status")).to_have_text("connected")
        await expect(page.locator("#text")).to_be_enabled()
    await expect(bob.locator("#transport")).to_have_text("polling (forced)")
    await alice.fill("#text", "hello bob")
    await alice.press("#text", "Enter")
    await expect(bob.locator("#messages li .text")).to_have_text(["hello bob"])
    await bob.fill("#text", "hi alice")
    await bob.press("#text", "Enter")
    await expect(alice.locator("#messages li .text")).to_have_text(["hello bob", "hi alice"])
    await expect(alice.locator("#presence li")).to_have_count(2)
    assert alice.errors == [] and bob.errors == []


@pytest.mark.parametrize("mode", ["one-node", "two-nodes"])
async def test_two_browsers_edit_one_document_and_converge(servers, browser, redis_url, mode):
    a_srv, b_srv = two_servers(servers, redis_url, mode)
    # Not the welcome document: it starts with a text of its own.
    a = await page_of(browser, a_srv.url + "/collab.html?doc=converge")
    b = await page_of(browser, b_srv.url + "/collab.html?doc=converge")
    for page in (a, b):
        await expect(page.locator("#editor")).to_be_enabled()
    await a.click("#editor")
    await a.keyboard.type("alpha ")
    # b types after a's word once it has all of it (typing into a half-arrived word is a
    # legitimate merge, just not the one checked here); Control+End because where a click
    # lands in the text depends on layout.
    await b.wait_for_function("collabDebug.text() === 'alpha '")
    await b.click("#editor")
    await b.keyboard.press("Control+End")
    await b.keyboard.type("beta ")
    await asyncio.gather(a.keyboard.type("one "), b.keyboard.type("two "))
    for _ in range(100):
        ta, tb = await a.evaluate("collabDebug.text()"), await b.evaluate("collabDebug.text()")
        if ta == tb and all(w in ta for w in ("alpha", "beta", "one", "two")):
            break
        await asyncio.sleep(0.1)
    assert ta == tb, (ta, tb)
    assert all(w in ta for w in ("alpha", "beta", "one", "two")), ta
    assert await a.input_value("#editor") == ta
    assert a.errors == [] and b.errors == []


@pytest.mark.parametrize("mode", ["one-node", "two-nodes"])
async def test_two_browsers_play_a_game(servers, browser, redis_url, mode):
    a_srv, b_srv = two_servers(servers, redis_url, mode, {"GAME_DURATION": "3"})
    host = await page_of(browser, a_srv.url + "/game.html")
    guest = await page_of(browser, b_srv.url + "/game.html?transport=polling")
    for page in (host, guest):
        await expect(page.locator("#status")).to_have_text("connected")
    await host.click("#create")
    await expect(guest.locator("#games button")).to_have_count(1)
    await guest.click("#games button")
    await expect(host.locator("#scores li")).to_have_count(2)
    await expect(host.locator("#start")).to_be_enabled()
    await host.click("#start")
    await expect(guest.locator("#info")).to_contain_text("left")
    me = await host.evaluate("gameDebug.me")
    start = await host.evaluate("gameDebug.state.players.find(p => p.user === gameDebug.me)")
    key = "ArrowLeft" if start["x"] > 10 else "ArrowRight"
    await host.keyboard.press(key)
    await asyncio.sleep(0.5)
    moved = await guest.evaluate(f"gameDebug.state.players.find(p => p.user === {me!r})")
    assert moved["x"] != start["x"]  # the guest sees the host's move: the server owns the state
    await expect(host.locator("#result")).to_contain_text("Game over", timeout=8000)
    await expect(guest.locator("#result")).to_contain_text("Game over")
    assert host.errors == [] and guest.errors == []


async def test_official_admin_ui_shows_sockets_of_two_nodes(servers, browser, js, redis_url):
    env = {"REDIS_URL": redis_url, "ADMIN_PASSWORD": "operator-pass-1"}
    n1, n2 = servers(env=env), servers(env=env)
    sids = []
    for i, node in enumerate((n1, n2)):
        sids.append((await js.connect(f"u{i}", node.url + "/chat", transports=["websocket"]))["sid"])
    page = await page_of(browser, n1.url + "/admin-ui/")
    # a wrong password is refused
    await page.get_by_label("Username").fill("admin")
    await page.get_by_label("Password").fill("wrong")
    await page.get_by_role("button", name="Connect").click()
    await expect(page.get_by_text("Invalid credentials")).to_be_visible()
    await expect(page.get_by_text("connected", exact=True)).to_have_count(0)
    status = page.locator("header").get_by_text("connected", exact=True).first
    # the right one logs in
    await page.get_by_label("Password").fill("operator-pass-1")
    await page.get_by_role("button", name="Connect").click()
    await expect(status).to_be_visible()
    await page.goto(n1.url + "/admin-ui/#/servers")
    for node in (n1, n2):
        await expect(page.get_by_text(f"node-{node.port}")).to_be_visible()
    await page.goto(n1.url + "/admin-ui/#/sockets")
    for sid in sids:
        await expect(page.get_by_text(sid)).to_be_visible()
    # a reload reconnects with the session id, without the password
    await page.reload()
    await expect(status).to_be_visible()
