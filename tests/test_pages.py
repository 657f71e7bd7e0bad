"""The demo pages and the Admin UI as a person sees them (issue 17, "Visible bugs"), in a real
headless Chromium, and the server's start-up on a busy port (a real process)."""

from __future__ import annotations

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
