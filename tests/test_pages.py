"""The demo pages and the Admin UI as a person sees them (issue 17, "Visible bugs"), in a real
headless Chromium, and the server's start-up on a busy port (a real process)."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, Page, expect

from harness import ROOT
from test_browser import CHROMIUM, browser, page_of  # noqa: F401  (browser is a fixture)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is installed by make test")

EMPTY = re.compile(r"^\s*$")  # an indicator showing nothing (the pages keep a no-break space)
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


async def chat_page(browser, url: str) -> Page:
    """A chat page that has joined its room (the input is enabled once it has)."""
    page = await page_of(browser, url)
    await expect(page.locator("#text")).to_be_enabled()
    return page


async def type_into(page: Page, selector: str, text: str) -> None:
    await page.click(selector)
    await page.keyboard.type(text)


# ---------------------------------------------------------------------- chat: typing indicator


async def typing_changes(js, name: str, count: int) -> list[bool]:
    """The ``typing`` values client ``name`` received, repeats collapsed (a typist refreshes
    "typing" every 2 s), once there are ``count`` changes (or after 10 s, whatever there are)."""
    changes: list[bool] = []
    for _ in range(100):
        values = [e["args"][0]["typing"] for e in await js.events(name, "typing")]
        changes = [value for value, _ in itertools.groupby(values)]
        if len(changes) >= count:
            break
        await asyncio.sleep(0.1)
    return changes



async def test_typing_indicator_clears_after_the_typist_stops(server, browser):
    alice = await chat_page(browser, server.url + "/chat.html")
    bob = await chat_page(browser, server.url + "/chat.html")
    await expect(bob.locator("#presence li")).to_have_count(2)
    await type_into(alice, "#text", "hel")
    await expect(bob.locator("#typing")).to_contain_text("typing")
    # Alice stops typing (the text stays in her input): about 5 s later the indicator is gone.
    await expect(bob.locator("#typing")).to_have_text(EMPTY, timeout=12_000)
    assert alice.errors == [] and bob.errors == []


async def test_typing_indicator_clears_on_clear_and_on_send(server, browser, js):
    await js.connect("watcher", server.url + "/chat", transports=["websocket"])
    assert (await js.emit("watcher", "join", {"room": "lobby"}))["ok"]
    alice = await chat_page(browser, server.url + "/chat.html")
    bob = await chat_page(browser, server.url + "/chat.html")
    await type_into(alice, "#text", "hel")
    await expect(bob.locator("#typing")).to_contain_text("typing")
    # Emptying the input says "stopped" at once (a bystander client sees the event itself,
    # so this does not rely on the indicator's own expiry).
    await alice.press("#text", "Control+a")
    await alice.press("#text", "Backspace")
    assert await typing_changes(js, "watcher", 2) == [True, False]
    await expect(bob.locator("#typing")).to_have_text(EMPTY)
    # Typing again shows it again at once; sending clears it.
    await alice.keyboard.type("hello")
    await expect(bob.locator("#typing")).to_contain_text("typing")
    await alice.press("#text", "Enter")
    await expect(bob.locator("#messages li .text")).to_have_text(["hello"])
    assert await typing_changes(js, "watcher", 4) == [True, False, True, False]
    await expect(bob.locator("#typing")).to_have_text(EMPTY)
    assert alice.errors == [] and bob.errors == []


async def test_typing_indicator_clears_when_the_typist_leaves(server, browser, js):
    await js.connect("watcher", server.url + "/chat", transports=["websocket"])
    assert (await js.emit("watcher", "join", {"room": "lobby"}))["ok"]
    alice = await chat_page(browser, server.url + "/chat.html")
    bob = await chat_page(browser, server.url + "/chat.html")
    await expect(bob.locator("#presence li")).to_have_count(3)
    await type_into(alice, "#text", "bye")
    await expect(bob.locator("#typing")).to_contain_text("typing")
    await alice.context.close()  # the tab is closed
    # The page said goodbye: its user left the room at once (not after the presence TTL)...
    # (presence events: the watcher's, alice's and bob's joins, then alice's leave)
    [left] = [e for e in await js.wait("watcher", "presence", 4) if e["args"][0]["action"] == "leave"]
    await expect(bob.locator("#presence li")).to_have_count(2)
    # ...and with it its typing indicator.
    await expect(bob.locator("#typing")).to_have_text(EMPTY)
    assert left["args"][0]["room"] == "lobby"
    assert bob.errors == []


# ---------------------------------------------------------------------- chat: switching rooms


async def test_switching_rooms_shows_only_the_new_room_and_leaves_the_old(server, browser, js):
    await js.connect("watcher", server.url + "/chat", transports=["websocket"])
    assert (await js.emit("watcher", "join", {"room": "lobby"}))["ok"]
    page = await chat_page(browser, server.url + "/chat.html")
    await page.fill("#text", "said in the lobby")
    await page.press("#text", "Enter")
    await expect(page.locator("#messages li .text")).to_have_text(["said in the lobby"])
    assert len((await js.emit("watcher", "presence", {"room": "lobby"}))["members"]) == 2

    await page.fill("#room", "kitchen")
    await page.click("#join")
    await expect(page.locator("#messages li")).to_have_count(0)
    await page.fill("#text", "said in the kitchen")
    await page.press("#text", "Enter")
    await expect(page.locator("#messages li .text")).to_have_text(["said in the kitchen"])
    await expect(page.locator("#presence li")).to_have_count(1)
    # The socket left the lobby: the lobby's presence no longer counts this user.
    # (presence events: the watcher's and the page's joins, then the page's leave)
    [left] = [e for e in await js.wait("watcher", "presence", 3) if e["args"][0]["action"] == "leave"]
    assert left["args"][0]["room"] == "lobby"
    assert len((await js.emit("watcher", "presence", {"room": "lobby"}))["members"]) == 1
    assert (await js.emit("watcher", "message", {"room": "lobby", "text": "while you were away"}))["ok"]

    # Back in the lobby: its whole history again, the kitchen's message gone.
    await page.fill("#room", "lobby")
    await page.click("#join")
    await expect(page.locator("#messages li .text")).to_have_text(["said in the lobby", "while you were away"])
    await expect(page.locator("#presence li")).to_have_count(2)
    assert page.errors == []


# ---------------------------------------------------------------------- collab: awareness


async def test_editor_shows_other_editors_after_an_edit(server, browser):
    a = await page_of(browser, server.url + "/collab.html")
    b = await page_of(browser, server.url + "/collab.html")
    for page in (a, b):
        await expect(page.locator("#editor")).to_be_enabled()
    await a.click("#editor")
    await a.keyboard.type("x")
    await expect(b.locator("#peers")).to_have_text("1 other editor")
    await b.click("#editor")
    await b.keyboard.type("y")
    await expect(a.locator("#peers")).to_have_text("1 other editor")
    # a opens another document: b's label no longer counts it, and a counts nobody there.
    await a.fill("#doc", "elsewhere")
    await a.click("#open")
    await expect(b.locator("#peers")).to_have_text(EMPTY)
    await expect(a.locator("#peers")).to_have_text(EMPTY)
    assert a.errors == [] and b.errors == []


# ---------------------------------------------------------------------- the URL keeps the place


async def test_chat_reload_keeps_the_room(server, browser):
    page = await chat_page(browser, server.url + "/chat.html?transport=polling")
    await page.fill("#room", "kitchen")
    await page.click("#join")
    await expect(page).to_have_url(re.compile(r"[?&]room=kitchen(&|$)"))
    assert "transport=polling" in page.url  # the other parameters stay
    await page.fill("#text", "still here")
    await page.press("#text", "Enter")
    await expect(page.locator("#messages li .text")).to_have_text(["still here"])
    await page.reload()
    await expect(page.locator("#text")).to_be_enabled()
    await expect(page.locator("#room")).to_have_value("kitchen")
    await expect(page.locator("#messages li .text")).to_have_text(["still here"])
    # A link to a room opens it.
    other = await chat_page(browser, server.url + "/chat.html?room=kitchen")
    await expect(other.locator("#messages li .text")).to_have_text(["still here"])
    assert page.errors == [] and other.errors == []


async def test_editor_reload_keeps_the_document(server, browser):
    page = await page_of(browser, server.url + "/collab.html")
    await expect(page.locator("#editor")).to_be_enabled()
    await page.fill("#doc", "notes")
    await page.click("#open")
    await expect(page).to_have_url(re.compile(r"[?&]doc=notes(&|$)"))
    await page.click("#editor")
    await page.keyboard.type("kept")
    await page.wait_for_function("collabDebug.text() === 'kept'")
    await page.reload()
    await expect(page.locator("#doc")).to_have_value("notes")
    await expect(page.locator("#editor")).to_have_value("kept")
    assert page.errors == []


async def test_editor_opening_a_document_takes_none_of_the_previous_one(server, browser):
    # Typing while a newly opened document syncs (a slow connection, a loaded machine) must not
    # carry the previous document's text, still in the editor, into the new one.
    page = await page_of(browser, server.url + "/collab.html")
    await expect(page.locator("#editor")).to_be_enabled()
    await expect(page.locator("#editor")).not_to_have_value("")  # the seeded welcome document
    await page.evaluate("""() => {
        document.getElementById('doc').value = 'scratch';
        document.getElementById('open').click();
        const editor = document.getElementById('editor');  // typed in the same instant
        editor.value += 'x';
        editor.dispatchEvent(new Event('input'));
    }""")
    await expect(page.locator("#editor")).to_be_enabled()
    await page.wait_for_function("collabDebug.text() !== null")
    assert await page.evaluate("collabDebug.text()") == "x"
    await expect(page.locator("#editor")).to_have_value("x")
    assert page.errors == []


# ---------------------------------------------------------------------- no request leaves the machine


async def offline_context(browser, **options) -> tuple[BrowserContext, dict[str, list[str]]]:
    """A browser context on an air-gapped machine: every request to another host fails.

    :param options: passed to ``new_context`` (a viewport, say).
    :returns: the context and what happened: ``outside`` (requests that tried to leave
              loopback), ``failed`` (requests that failed), ``bad`` (answers 400 or above).
    """
    context = await browser.new_context(**options)
    seen: dict[str, list[str]] = {"outside": [], "failed": [], "bad": []}

    async def route(r) -> None:
        if urlsplit(r.request.url).hostname in LOOPBACK or r.request.url.startswith("data:"):
            await r.continue_()
        else:
            seen["outside"].append(r.request.url)
            await r.abort("internetdisconnected")

    await context.route("**/*", route)
    context.on("requestfailed", lambda r: seen["failed"].append(f"{r.url} {r.failure}"))
    context.on("response", lambda r: r.status >= 400 and seen["bad"].append(f"{r.status} {r.url}"))
    return context, seen


@pytest.mark.parametrize("path", ["/", "/chat.html", "/game.html", "/collab.html"])
async def test_demo_pages_work_offline(servers, browser, path):
    srv = servers()
    context, seen = await offline_context(browser)
    page = await context.new_page()
    await page.goto(srv.url + path)
    await page.wait_for_load_state("networkidle")
    if path != "/":
        await expect(page.locator("#status")).to_have_text("connected")
    assert seen == {"outside": [], "failed": [], "bad": []}


async def icon_fonts(page: Page) -> dict[str, list[str]]:
    """The status of every loaded font face of the Admin UI's two families."""
    return await page.evaluate("""async () => {
        await document.fonts.ready;
        await Promise.all([document.fonts.load('24px "Material Design Icons"'), document.fonts.load('16px Roboto')]);
        const out = {mdi: [], roboto: []};
        for (const face of document.fonts) {
            const family = face.family.replace(/["']/g, "");
            if (family === "Material Design Icons") out.mdi.push(face.status);
            if (family === "Roboto") out.roboto.push(face.status);
        }
        return out;
    }""")


async def test_admin_ui_works_offline_icons_and_narrow_navigation(servers, browser):
    srv = servers(env={"ADMIN_PASSWORD": "operator-pass-1"})
    # Below 1264 px the navigation sits behind the app bar's menu icon button.
    context, seen = await offline_context(browser, viewport={"width": 1000, "height": 800})
    page = await context.new_page()
    await page.goto(srv.url + "/admin-ui/")
    await page.get_by_label("Username").fill("admin")
    await page.get_by_label("Password").fill("operator-pass-1")
    await page.get_by_role("button", name="Connect").click()
    await expect(page.get_by_label("Password")).to_be_hidden()  # logged in: the dialog is gone
    fonts = await icon_fonts(page)
    assert "loaded" in fonts["mdi"], fonts  # the icons are drawn, not blank boxes
    assert "loaded" in fonts["roboto"], fonts
    menu = page.locator("header .v-app-bar__nav-icon")
    await expect(menu).to_be_visible()
    box = await menu.locator(".v-icon").bounding_box()
    assert box is not None and box["width"] > 0
    await menu.click()
    nav = page.locator("nav.v-navigation-drawer")
    await expect(nav).to_have_class(re.compile(r"v-navigation-drawer--open"))
    await nav.get_by_text("Sockets").click()
    await expect(page).to_have_url(re.compile(r"#/sockets$"))
    await page.wait_for_load_state("networkidle")
    assert seen == {"outside": [], "failed": [], "bad": []}


# ---------------------------------------------------------------------- start-up on a busy port


def test_busy_port_fails_first_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1"}
        out = subprocess.run([sys.executable, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60)
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 1, (out.returncode, lines)
    # One line, naming the address and the cause; nothing claimed listening or ready before it.
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0] and "address already in use" in lines[0].lower(), lines


# ---------------------------------------------------------------------- the connection badge

BADGE_HISTORY = """() => {
    // Every text the badge shows from now on, in order.
    window.badgeTexts = [];
    new MutationObserver(() => window.badgeTexts.push(document.querySelector("#status").textContent))
        .observe(document.querySelector("#status"), {childList: true, characterData: true, subtree: true});
}"""


async def test_badge_says_offline_with_a_countdown_and_hides_the_transport(servers, browser):
    srv = servers()
    page = await page_of(browser, srv.url + "/chat.html")
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(page.locator("#transport")).to_have_text("WebSocket")
    await page.evaluate(BADGE_HISTORY)
    srv.kill()
    await expect(page.locator("#status")).to_have_text(re.compile(r"^offline — retrying in \d+ s$"))
    await expect(page.locator("#transport")).to_have_text("")
    # An attempt fails (the server is still down): back to the countdown, never "error: ...".
    await page.wait_for_function("window.badgeTexts.includes('reconnecting…')")
    await expect(page.locator("#status")).to_have_text(re.compile(r"^offline — retrying in \d+ s$"))
    texts = set(await page.evaluate("window.badgeTexts"))
    assert all(t == "reconnecting…" or t.startswith("offline — retrying") for t in texts), texts
    servers(port=srv.port)  # the server is back on the same address
    await expect(page.locator("#status")).to_have_text("connected", timeout=15_000)
    await expect(page.locator("#transport")).to_have_text("WebSocket")
    assert page.errors == []


async def test_transport_label_polling_forced_and_fallback(server, browser, proxies):
    forced = await page_of(browser, server.url + "/game.html?transport=polling")
    await expect(forced.locator("#status")).to_have_text("connected")
    await expect(forced.locator("#transport")).to_have_text("polling (forced)")
    # Behind a proxy that refuses WebSocket the upgrade fails: polling as a fallback.
    proxy = await proxies([server.port], refuse_websocket=True)
    behind = await page_of(browser, proxy.url + "/game.html")
    await expect(behind.locator("#status")).to_have_text("connected")
    await expect(behind.locator("#transport")).to_have_text("polling fallback")
    assert forced.errors == [] and behind.errors == []


# ---------------------------------------------------------------------- 404s


def raw_get(url: str) -> tuple[int, str, bytes]:
    """GET ``url``: status, Content-Type and body, whatever the status."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_not_found_is_a_short_text_naming_the_path(server):
    for path in ("/nope", "/nope.html", "/js/nope.js", "/healthz/x", "/vendor/lib0/nope",
                 "/admin-ui/nope.js", "/admin-ui-assets/mdi/nope.css", "/admin-ui-assets/nope/a.css",
                 "/%2e%2e/server/app.py", "/js/%2e%2e/%2e%2e/config.toml"):
        status, kind, body = raw_get(server.url + path)
        assert status == 404, (path, status)
        assert kind.startswith("text/plain"), (path, kind)
        text = body.decode()
        assert 0 < len(text) < 200 and text.startswith("404"), (path, text)
        assert "not installed" not in text, (path, text)  # the packages are installed: the file is not there
    # what exists is still served
    for path in ("/", "/chat.html", "/js/connection.js", "/style.css"):
        assert raw_get(server.url + path)[0] == 200, path


# ---------------------------------------------------------------------- /admin without a password


def test_a_warning_when_admin_is_disabled_for_lack_of_a_password(servers):
    without = servers()
    [line] = [line for line in without.output().splitlines() if "WARNING" in line and "/admin" in line]
    assert "disabled" in line and "ADMIN_PASSWORD" in line and "admin.password" in line, line
    with_password = servers(env={"ADMIN_PASSWORD": "operator-pass-1"})
    assert "ready" in with_password.output()
    assert not [line for line in with_password.output().splitlines() if "WARNING" in line and "/admin" in line]


# ---------------------------------------------------------------------- names (issue 17, "What a user expects")


async def set_name(page: Page, name: str) -> None:
    await page.fill("#name", name)
    await page.click("#set-name")


async def test_a_picked_name_is_shown_kept_and_marked_you(server, browser):
    alice = await chat_page(browser, server.url + "/chat.html")
    bob = await chat_page(browser, server.url + "/chat.html")
    await set_name(alice, "  Alice Ünal ")  # trimmed
    await expect(alice.locator("#me")).to_have_text("you are Alice Ünal")
    await expect(alice.locator("#presence li")).to_have_count(2)
    await expect(alice.locator("#presence li").first).to_have_text("Alice Ünal (you)")
    await expect(bob.locator("#presence li", has_text="Alice Ünal")).to_have_count(1)
    await expect(bob.locator("#presence li", has_text="(you)")).not_to_have_text(re.compile("Alice"))
    await alice.fill("#text", "hi, I am Alice")
    await alice.press("#text", "Enter")
    await expect(bob.locator("#messages li .who")).to_have_text(["Alice Ünal"])
    await expect(alice.locator("#messages li .who")).to_have_text(["Alice Ünal (you)"])
    # Kept in the browser: a reload, and another page, connect with it.
    await alice.reload()
    await expect(alice.locator("#me")).to_have_text("you are Alice Ünal")
    await expect(alice.locator("#name")).to_have_value("Alice Ünal")
    game = await alice.context.new_page()
    await game.goto(server.url + "/game.html")
    await expect(game.locator("#name")).to_have_value("Alice Ünal")
    assert alice.errors == [] and bob.errors == []


async def test_a_bad_name_is_refused_with_its_reason(server, browser, js):
    # The server's rule, for any client: trimmed, 1-32 characters, no control characters.
    for i, (bad, reason) in enumerate((("x" * 33, "32 characters"), ("   ", "blank"), ("a\u0007b", "control"),
                                       ("a\u202eb", "invisible"), ("guest-2c84a24b9c8d", "guest-"), (7, "string"))):
        state = await js.connect(f"bad{i}", server.url + "/chat", transports=["websocket"], auth={"name": bad},
                                 expect_error=True)
        assert not state["connected"], bad
        assert state["errors"][0]["data"] == {"code": "invalid_name"}, state["errors"]
        assert reason in state["errors"][0]["message"], (bad, state["errors"])
    await js.connect("good", server.url + "/chat", transports=["websocket"], auth={"name": " Zoë "})
    assert (await js.emit("good", "whoami"))["name"] == "Zoë"
    # The page says why, at once for what it can check itself, else with the server's reason.
    page = await chat_page(browser, server.url + "/chat.html")
    await set_name(page, "guest-2c84a24b9c8d")
    await expect(page.locator("#name-error")).to_contain_text("guest-")
    await expect(page.locator("#status")).to_have_text("connected")  # nothing was sent
    await page.evaluate("localStorage.setItem('displayName', 'x\\u0085y')")  # NEL: a C1 control
    await page.reload()
    await expect(page.locator("#name-error")).to_contain_text("control")
    await expect(page.locator("#status")).to_contain_text("refused")
    await set_name(page, "Fixed")
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(page.locator("#me")).to_have_text("you are Fixed")
    await expect(page.locator("#name-error")).to_have_text("")
    assert page.errors == []


async def test_a_guest_credential_not_honoured_is_explained(server, browser, js):
    await js.connect("bare", server.url + "/chat", transports=["websocket"], auth={"guest": "guest-2c84a24b9c8d"})
    assert "proves nothing" in (await js.emit("bare", "whoami"))["notice"]
    await js.connect("plain", server.url + "/chat", transports=["websocket"])
    assert "notice" not in await js.emit("plain", "whoami")
    context = await browser.new_context()
    await context.add_init_script("""if (!sessionStorage.getItem('seeded')) {
        sessionStorage.setItem('seeded', '1'); sessionStorage.setItem('guestToken', 'guest-1234.not-a-token'); }""")
    page = await context.new_page()
    await page.goto(server.url + "/chat.html")
    await expect(page.locator("#notice")).to_be_visible()
    await expect(page.locator("#notice")).to_contain_text("malformed")
    me = await page.evaluate("sessionStorage.getItem('guestToken')")
    assert me.startswith("guest-") and me != "guest-1234.not-a-token"  # the new one is kept
    await page.reload()
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(page.locator("#notice")).to_be_hidden()


async def test_the_winner_reads_you_won(servers, browser):
    srv = servers(env={"GAME_DURATION": "2"})
    host = await page_of(browser, srv.url + "/game.html")
    other = await page_of(browser, srv.url + "/game.html")
    await set_name(host, "Hana")
    await set_name(other, "Omar")
    for page in (host, other):
        await expect(page.locator("#status")).to_have_text("connected")
    await host.click("#create")
    await expect(other.locator("#games button")).to_have_count(1)
    await other.click("#games button")
    await expect(host.locator("#scores li")).to_have_count(2)
    await expect(host.locator("#scores li", has_text="(you)")).to_have_text(re.compile(r"^Hana \(you\): \d+$"))
    await expect(other.locator("#scores li", has_text="Hana")).to_have_text(re.compile(r"^Hana: \d+$"))
    await host.click("#start")
    # Hana walks onto nothing; nobody scores: the first player listed (by score, then join order) wins.
    await expect(host.locator("#result")).to_contain_text("Game over", timeout=8000)
    winner = await host.get_attribute("#result", "data-winner")
    me = await host.evaluate("gameDebug.me")
    won, lost = (host, other) if winner == me else (other, host)
    await expect(won.locator("#result")).to_have_text("Game over. You won!")
    await expect(lost.locator("#result")).to_have_text(re.compile(r"^Game over\. (Hana|Omar) won\.$"))
    assert host.errors == [] and other.errors == []


# ---------------------------------------------------------------------- chat: what a user expects


async def test_chat_messages_have_timestamps_and_mine_stand_apart(server, browser):
    alice = await chat_page(browser, server.url + "/chat.html")
    bob = await chat_page(browser, server.url + "/chat.html")
    await alice.fill("#text", "from alice")
    await alice.press("#text", "Enter")
    await bob.fill("#text", "from bob")
    await bob.press("#text", "Enter")
    await expect(alice.locator("#messages li .text")).to_have_text(["from alice", "from bob"])
    await expect(alice.locator("#messages li.mine .text")).to_have_text(["from alice"])
    await expect(bob.locator("#messages li.mine .text")).to_have_text(["from bob"])
    # A time of day on each message, its full date and time in the element.
    await expect(alice.locator("#messages li time.ts")).to_have_text([re.compile(r"\d{1,2}:\d{2}")] * 2)
    stamp = await alice.locator("#messages li time.ts").first.get_attribute("datetime")
    assert re.match(r"^\d{4}-\d{2}-\d{2}T", stamp or ""), stamp
    styles = await alice.evaluate("""() => [...document.querySelectorAll('#messages li')]
        .map((li) => getComputedStyle(li).borderLeftStyle)""")
    assert styles[0] != styles[1], styles  # set apart visually, not only by a class
    assert alice.errors == [] and bob.errors == []


async def test_direct_messages_between_two_pages(server, browser):
    alice = await chat_page(browser, server.url + "/chat.html")
    bob = await chat_page(browser, server.url + "/chat.html")
    await set_name(alice, "Alice")
    await set_name(bob, "Bob")
    await expect(alice.locator("#presence li")).to_have_count(2)
    await expect(alice.locator("#presence li", has_text="Bob")).to_have_count(1)
    await alice.locator("#presence li", has_text="Bob").locator(".dm-open").click()
    await expect(alice.locator("#dm-title")).to_have_text("Direct messages with Bob")
    await alice.fill("#dm-text", "psst, bob")
    await alice.press("#dm-text", "Enter")
    await expect(alice.locator("#dm-messages li .text")).to_have_text(["psst, bob"])
    # Bob sees an unread count on the conversation; opening it shows the message and clears it.
    await expect(bob.locator("#dms li", has_text="Alice").locator(".unread")).to_have_text("1")
    await bob.locator("#dms li", has_text="Alice").locator("button").click()
    await expect(bob.locator("#dm-messages li .text")).to_have_text(["psst, bob"])
    await expect(bob.locator("#dm-messages li .who")).to_have_text(["Alice"])
    await expect(bob.locator("#dms .unread")).to_have_count(0)
    await bob.fill("#dm-text", "hi alice")
    await bob.press("#dm-text", "Enter")
    await expect(alice.locator("#dm-messages li .text")).to_have_text(["psst, bob", "hi alice"])
    await expect(alice.locator("#dm-messages li.mine .text")).to_have_text(["psst, bob"])
    # Acknowledged: the server does not send it again (it re-sends every 5 s until acked).
    await asyncio.sleep(6)
    await expect(bob.locator("#dm-messages li")).to_have_count(2)
    # The room shows none of it.
    await expect(bob.locator("#messages li")).to_have_count(0)
    # Kept by the browser across a reload.
    await bob.reload()
    await expect(bob.locator("#dms li", has_text="Alice")).to_have_count(1)
    assert alice.errors == [] and bob.errors == []


async def test_unread_counts_per_room(server, browser, js):
    await js.connect("talker", server.url + "/chat", transports=["websocket"])
    for room in ("kitchen", "lobby"):
        assert (await js.emit("talker", "join", {"room": room}))["ok"]
    page = await chat_page(browser, server.url + "/chat.html")
    await page.fill("#room", "kitchen")
    await page.click("#join")
    await expect(page.locator("#rooms li")).to_have_count(2)
    for i in range(3):
        assert (await js.emit("talker", "message", {"room": "lobby", "text": f"lobby {i}"}))["ok"]
    assert (await js.emit("talker", "message", {"room": "kitchen", "text": "kitchen 0"}))["ok"]
    lobby = page.locator("#rooms li[data-room=lobby]")
    await expect(lobby.locator(".unread")).to_have_text("3", timeout=10_000)
    await expect(page.locator("#rooms li[data-room=kitchen] .unread")).to_have_count(0)  # the one shown
    await lobby.locator("button").click()
    await expect(page.locator("#messages li .text")).to_have_text(["lobby 0", "lobby 1", "lobby 2"])
    await expect(lobby.locator(".unread")).to_have_count(0)
    assert (await js.emit("talker", "message", {"room": "kitchen", "text": "kitchen 1"}))["ok"]
    await expect(page.locator("#rooms li[data-room=kitchen] .unread")).to_have_text("1", timeout=10_000)
    assert page.errors == []


async def test_history_loads_older_messages_on_scroll(server, browser, js):
    await js.connect("talker", server.url + "/chat", transports=["websocket"])
    assert (await js.emit("talker", "join", {"room": "archive"}))["ok"]
    for i in range(120):
        assert (await js.emit("talker", "message", {"room": "archive", "text": f"m{i:03d}"}))["ok"]
        if i % 40 == 39:
            await asyncio.sleep(1)  # under the per-connection rate limit (50/s, burst 100)
    page = await chat_page(browser, server.url + "/chat.html?room=archive")
    texts = page.locator("#messages li .text")
    await expect(texts).to_have_count(50)
    await expect(texts.first).to_have_text("m070")
    await expect(page.locator("#history-note")).to_have_text("")
    for count in (100, 120):
        await page.eval_on_selector("#messages", "el => { el.scrollTop = 0; }")
        await expect(texts).to_have_count(count)
    assert await texts.all_text_contents() == [f"m{i:03d}" for i in range(120)]
    await expect(page.locator("#history-note")).to_contain_text("beginning")
    # What the reader looked at stays in view (the list did not jump to the oldest).
    assert await page.eval_on_selector("#messages", "el => el.scrollTop") > 0
    assert page.errors == []


# ---------------------------------------------------------------------- game: what a user expects


async def player_x(page: Page) -> int:
    return await page.evaluate("gameDebug.state.players.find(p => p.user === gameDebug.me).x")


async def test_game_created_with_name_and_size_start_keys_spectators_and_play_again(servers, browser):
    srv = servers(env={"GAME_DURATION": "4"})
    host = await page_of(browser, srv.url + "/game.html")
    other = await page_of(browser, srv.url + "/game.html")
    fan = await page_of(browser, srv.url + "/game.html")
    for page in (host, other, fan):
        await expect(page.locator("#status")).to_have_text("connected")
    # Name and player count chosen at creation.
    await host.fill("#game-name", "Duel")
    await host.select_option("#game-capacity", "3")
    await host.click("#create")
    game = other.locator("#games button")
    await expect(game).to_have_text("Duel (1/3, waiting)")
    await expect(host.locator("#start")).to_be_disabled()  # alone: nobody to play with
    await game.click()
    await expect(host.locator("#start")).to_be_enabled()
    await expect(other.locator("#start")).to_be_disabled()  # not the host
    await host.click("#start")
    # Start is disabled once playing.
    await expect(host.locator("#info")).to_contain_text("left")
    await expect(host.locator("#start")).to_be_disabled()
    # A spectator: the game has started, so the lobby offers to watch it.
    watch = fan.locator("#games button")
    await expect(watch).to_have_attribute("data-action", "watch")
    await watch.click()
    await expect(fan.locator("#info")).to_contain_text("watching")
    await expect(fan.locator("#scores li")).to_have_count(2)
    await expect(host.locator("#games button")).to_contain_text("1 watching")
    # Keys move while held and stop when released.
    start = await player_x(host)
    key = "ArrowLeft" if start > 10 else "ArrowRight"
    await host.keyboard.down(key)
    await asyncio.sleep(0.4)
    await host.keyboard.up(key)
    await asyncio.sleep(0.4)
    stopped = await player_x(host)
    assert stopped != start
    await asyncio.sleep(0.6)
    assert await player_x(host) == stopped  # released: it stays put
    assert await fan.evaluate(f"gameDebug.state.players.find(p => p.x === {stopped}) !== undefined")
    # The finished game stays in the lobby with its results; "Play again" leads both to one new game.
    await expect(host.locator("#result")).to_contain_text("Game over", timeout=8000)
    finished = other.locator("#games li", has_text="over")
    await expect(finished).to_contain_text("winner")
    await expect(fan.locator("#again")).to_be_hidden()  # spectators do not play again
    await host.click("#again")
    await expect(host.locator("#games button[data-action=join]")).to_have_count(1)
    await other.click("#again")
    await expect(host.locator("#scores li")).to_have_count(2)
    await expect(host.locator("#games button[data-action=join]")).to_have_text("Duel (2/3, waiting)")
    await expect(host.locator("#games li", has_text="over")).to_have_count(1)  # the old one is still listed
    assert host.errors == [] and other.errors == [] and fan.errors == []


async def test_game_canvas_fills_its_panel(server, browser):
    page = await page_of(browser, server.url + "/game.html")
    await page.set_viewport_size({"width": 1280, "height": 900})
    await expect(page.locator("#status")).to_have_text("connected")
    sizes = await page.evaluate("""() => {
        const canvas = document.querySelector('#board'), panel = canvas.closest('.panel');
        const style = getComputedStyle(panel);
        const inner = panel.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        const box = canvas.getBoundingClientRect();
        return {inner, width: box.width, height: box.height, pixels: canvas.width};
    }""")
    assert abs(sizes["width"] - sizes["inner"]) <= 2, sizes
    assert abs(sizes["height"] - sizes["width"]) <= 2 and sizes["width"] > 500, sizes
    assert sizes["pixels"] >= sizes["width"] - 2, sizes  # drawn at its size, not stretched from 400 px


# ---------------------------------------------------------------------- editor: what a user expects


async def test_editor_shows_remote_cursors_and_selections_with_names_and_colours(server, browser):
    a = await page_of(browser, server.url + "/collab.html?doc=cursors")
    b = await page_of(browser, server.url + "/collab.html?doc=cursors")
    await set_name(a, "Ada")
    await set_name(b, "Bo")
    for page in (a, b):
        await expect(page.locator("#status")).to_have_text("connected")
        await expect(page.locator("#editor")).to_be_enabled()
    await a.click("#editor")
    await a.keyboard.type("hello brave new world")
    await b.wait_for_function("collabDebug.text() === 'hello brave new world'")
    # Ada selects "brave": Bo sees her selection and her caret, named and coloured.
    await a.evaluate("() => { const e = document.querySelector('#editor'); e.focus(); e.setSelectionRange(6, 11); }")
    caret = b.locator(".remote-caret")
    await expect(caret).to_have_count(1)
    await expect(caret.locator(".remote-name")).to_have_text("Ada")
    await expect(b.locator("mark.remote-sel")).to_have_text("brave")
    colour = await caret.evaluate("el => getComputedStyle(el).borderLeftColor")
    assert colour not in ("", "rgba(0, 0, 0, 0)"), colour
    assert await b.locator("mark.remote-sel").evaluate("el => getComputedStyle(el).backgroundColor") != "rgba(0, 0, 0, 0)"
    # The caret sits where Ada's selection ends, over the same character in Bo's textarea.
    at = await b.evaluate("""() => {
        const caret = document.querySelector('.remote-caret').getBoundingClientRect();
        const mark = document.querySelector('mark.remote-sel').getBoundingClientRect();
        return {caret: caret.left, markRight: mark.right};
    }""")
    assert abs(at["caret"] - at["markRight"]) < 4, at
    # Bo types before it: Ada's selection stays on "brave" (Yjs relative positions).
    await b.evaluate("() => { const e = document.querySelector('#editor'); e.focus(); e.setSelectionRange(0, 0); }")
    await b.keyboard.type(">> ")
    await expect(b.locator("mark.remote-sel")).to_have_text("brave")
    # Each editor's caret is drawn in that editor's colour, the one the list of editors shows
    # (a colour taken from the user id: two ids may share a hue, ~1 in 360, so "another colour"
    # is not a property; this is).
    await expect(a.locator(".remote-caret .remote-name")).to_have_text("Bo")
    await expect(a.locator("#editors li")).to_have_text(["Bo"])
    await expect(b.locator("#editors li")).to_have_text(["Ada"])
    # Both are drawn anew at every awareness update, and an element replaced meanwhile has no
    # computed style (""): read the two in one task of the page.
    both = """() => [getComputedStyle(document.querySelector('.remote-caret')).borderLeftColor,
                     getComputedStyle(document.querySelector('#editors li .swatch')).backgroundColor]"""
    other, other_swatch = await a.evaluate(both)
    assert other not in ("", "rgba(0, 0, 0, 0)") and other == other_swatch, (other, other_swatch)
    assert await b.evaluate(both) == [colour, colour]
    assert a.errors == [] and b.errors == []


async def test_editor_welcome_document_and_document_list(server, browser):
    page = await page_of(browser, server.url + "/collab.html")
    await expect(page.locator("#editor")).to_be_enabled()
    await expect(page.locator("#editor")).to_have_value(re.compile(r"second window"))
    # Two nodes, or two first visitors, seed it once: a second page sees the same text, not twice.
    other = await page_of(browser, server.url + "/collab.html")
    await expect(other.locator("#editor")).to_be_enabled()
    text = await page.input_value("#editor")
    assert await other.input_value("#editor") == text and text.count("Welcome") == 1
    # The documents opened in this browser are listed; one click opens one.
    await page.fill("#doc", "plans")
    await page.click("#open")
    await expect(page.locator("#docs li")).to_have_text(["welcome", "plans"])
    await page.locator("#docs li[data-doc=welcome] button").click()
    await expect(page).to_have_url(re.compile(r"[?&]doc=welcome(&|$)"))
    await expect(page.locator("#editor")).to_have_value(text)
    assert page.errors == [] and other.errors == []


# ---------------------------------------------------------------------- the landing page


async def test_landing_page_says_what_each_demo_shows_and_how_to_try_it(server, browser):
    page = await page_of(browser, server.url + "/")
    for card, link in (("chat", "/chat.html"), ("game", "/game.html"), ("collab", "/collab.html"),
                       ("admin", "/admin-ui/")):
        assert await page.get_attribute(f"#card-{card} h2 a", "href") == link
    # How to see each demo: two windows, and the offline switch where recovery is the point.
    for card in ("chat", "game", "collab"):
        await expect(page.locator(f"#card-{card} ol.try li").first).to_be_visible()
        await expect(page.locator(f"#card-{card} .try")).to_contain_text(re.compile(r"second window|two windows"))
    for card in ("chat", "collab"):
        await expect(page.locator(f"#card-{card} .try")).to_contain_text("Offline")
    await expect(page.locator("#card-admin")).to_contain_text("ADMIN_PASSWORD")
    # The operator's links work (the API's is off without keys, which the page says).
    assert raw_get(server.url + await page.get_attribute("#link-metrics", "href"))[0] == 200
    assert raw_get(server.url + await page.get_attribute("#link-readyz", "href"))[0] == 200
    await expect(page.locator("main")).to_contain_text("API_KEYS")
    await page.click("#card-game h2 a")
    await expect(page.locator("#status")).to_have_text("connected")
    assert page.errors == []


async def test_presence_shows_a_cut_user_as_away_until_it_is_back(server, browser, js, proxies):
    proxy = await proxies([server.port])
    alice = await chat_page(browser, server.url + "/chat.html")
    await js.connect("bob", proxy.url + "/chat", transports=["websocket"], auth={"name": "Bob"})
    assert (await js.emit("bob", "join", {"room": "lobby"}))["ok"]
    bob = alice.locator("#presence li", has_text="Bob")
    await expect(bob).to_have_count(1)
    await expect(bob.locator(".away-label")).to_have_count(0)
    proxy.down()  # bob's tab lost its connection: not a ghost "here", and not gone yet
    await expect(bob.locator(".away-label")).to_have_text("away")
    proxy.up()
    assert (await js.call("waitConnects", name="bob", count=2))["recovered"] is True
    await expect(bob.locator(".away-label")).to_have_count(0)
    await expect(bob).to_have_count(1)
    assert alice.errors == []


# ---------------------------------------------------------------------- the README's screenshots

SCREENSHOTS = ROOT / "web" / "screenshots"


async def named_page(browser, url: str, name: str) -> Page:
    """A page whose user picked the display name ``name`` (kept in localStorage, as the form does)."""
    return await page_of(browser, url, f"localStorage.setItem('displayName', {name!r})",
                         viewport={"width": 1100, "height": 700})


async def test_the_readmes_screenshots_are_taken_from_the_running_demos(servers, browser):
    """The README shows web/screenshots/*.png: this test takes them, so they stay current
    (commit them when they change)."""
    srv = servers(env={"ADMIN_PASSWORD": "operator-pass-1"})
    SCREENSHOTS.mkdir(exist_ok=True)

    ada = await named_page(browser, srv.url + "/chat.html", "Ada")
    bob = await named_page(browser, srv.url + "/chat.html", "Bob")
    for page, text in ((ada, "Hello from Ada"), (bob, "Hi Ada, Bob here"), (ada, "Close this tab and reopen it")):
        await expect(page.locator("#text")).to_be_enabled()
        await page.fill("#text", text)
        await page.press("#text", "Enter")
        await expect(page.locator("#messages li .text").last).to_have_text(text)
    await expect(ada.locator("#messages li .text")).to_have_count(3)
    await ada.screenshot(path=str(SCREENSHOTS / "chat.png"))

    game = await named_page(browser, srv.url + "/game.html", "Ada")
    other = await named_page(browser, srv.url + "/game.html", "Bob")
    await game.fill("#game-name", "Friday match")
    await game.click("#create")
    await expect(other.locator("#games li")).to_have_count(1)
    await other.locator("#games li button").first.click()
    await expect(game.locator("#start")).to_be_enabled()
    await game.click("#start")
    await game.wait_for_timeout(1500)
    await game.screenshot(path=str(SCREENSHOTS / "game.png"))

    editor = await named_page(browser, srv.url + "/collab.html", "Ada")
    await named_page(browser, srv.url + "/collab.html", "Bob")
    await expect(editor.locator("#editor")).to_be_enabled()
    await expect(editor.locator("#editors li")).not_to_have_count(0)
    await editor.screenshot(path=str(SCREENSHOTS / "editor.png"))

    admin = await named_page(browser, srv.url + "/admin-ui/", "Ada")
    await admin.get_by_label("Username").fill("admin")
    await admin.get_by_label("Password").fill("operator-pass-1")
    await admin.get_by_role("button", name="Connect").click()
    await expect(admin.get_by_label("Password")).to_be_hidden()
    await admin.wait_for_load_state("networkidle")
    await admin.wait_for_timeout(1000)
    await admin.screenshot(path=str(SCREENSHOTS / "admin-ui.png"))

    for name in ("chat", "game", "editor", "admin-ui"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 5000, name
    for page in (ada, bob, game, other, editor):
        assert page.errors == [], page.errors
