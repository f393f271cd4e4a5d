"""Browser tests of the demo page (``/``): headless Chromium driven by Playwright (async API),
against two real app processes on the local stack (the integration fixtures ``stack`` and
``apps``).

Chromium is the distribution's (``/usr/bin/chromium``), never a Playwright download: when it is
missing the set-up installs it with ``apt-get`` and fails with a clear message if it cannot.
Every page gets a screenshot in ``test-artifacts/e2e/`` when its test ends (passed or not), and
a test fails on any JavaScript error, Content-Security-Policy violation or dialog on the page.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    async_playwright,
    expect,
)
from playwright.async_api import Error as PlaywrightError

from tests.harness import ARTIFACTS, AppProcess
from tests.integration import conftest as integration

# The integration suite's session fixtures: the local stack prepared, two app processes.
stack = integration.stack
apps = integration.apps
close_leftover_sockets = integration.close_leftover_sockets

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ARTIFACTS / "e2e"
DESKTOP = {"width": 1100, "height": 720}
PHONE = {"width": 390, "height": 760}

expect.set_options(timeout=15_000)


def random_phone() -> str:
    return "+1555" + "".join(random.choice("0123456789") for _ in range(7))


def _install_chromium() -> str:
    """Debian's chromium at /usr/bin/chromium, installed with apt-get when missing."""
    if CHROMIUM.exists():
        return str(CHROMIUM)
    how = "install it with `apt-get update && apt-get install -y chromium` (as root)"
    if shutil.which("apt-get") is None:
        pytest.fail(f"Chromium is not at {CHROMIUM} and there is no apt-get here: {how}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            subprocess.run(command, check=True, capture_output=True, env=env, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            pytest.fail(
                f"Chromium is not at {CHROMIUM} and `{' '.join(command)}` failed ({exc}; "
                f"{detail.decode(errors='replace').strip()[-400:]}): {how}"
            )
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing: {how}")
    return str(CHROMIUM)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return _install_chromium()


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@attrs.define
class Person:
    """One user in their own browser context (own localStorage: own device id and session)."""

    name: str
    phone: str
    app: AppProcess
    context: BrowserContext
    page: Page
    problems: list[str] = attrs.field(factory=list)
    dialogs: list[str] = attrs.field(factory=list)

    async def login(self) -> None:
        page = self.page
        await page.goto(self.app.base_url + "/")
        await page.get_by_label("Phone number (E.164)").fill(self.phone)
        await page.get_by_role("button", name="Send code").click()
        # The page fills the code in from the dev route and says so.
        await expect(page.locator("#dev-note")).to_be_visible()
        await expect(page.get_by_label("6-digit code")).to_have_value(re.compile(r"^[0-9]{6}$"))
        await page.get_by_role("button", name="Log in").click()
        await self.wait_live()

    async def wait_live(self) -> None:
        await expect(self.page.locator("#conn-state")).to_have_attribute("data-state", "live")

    async def start_direct(self, other: Person) -> None:
        """By keyboard: the number, then Enter; focus lands in the message box."""
        field = self.page.get_by_label("Their phone number")
        await field.fill(other.phone)
        await field.press("Enter")
        await expect(self.page.locator("#chat-title")).to_have_text(other.phone)
        await expect(self.page.get_by_label("Message", exact=True)).to_be_focused()

    async def open_first_chat(self) -> None:
        item = self.page.locator("#chat-list .chat-item").first
        await expect(item).to_be_visible()
        await item.click()
        await expect(self.page.get_by_label("Message", exact=True)).to_be_enabled()

    async def send(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        await box.fill(text)
        await box.press("Enter")

    async def wait_message(self, text: str) -> int:
        """Waits for a delivered (sequenced) message with this text; its sequence."""
        item = self.page.locator("#messages li[data-seq]").filter(
            has=self.page.locator(".msg-text", has_text=text)
        )
        await expect(item).to_have_count(1)
        return int(await item.get_attribute("data-seq") or "0")

    async def messages(self) -> list[tuple[int, str]]:
        """(sequence, text) of every delivered message, in DOM order."""
        rows = await self.page.locator("#messages li[data-seq]").evaluate_all(
            "items => items.map(li => [Number(li.dataset.seq),"
            " li.querySelector('.msg-text').textContent])"
        )
        return [(int(seq), str(text)) for seq, text in rows]

    async def screenshot(self, label: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{label}-{self.name}.png"
        await self.page.screenshot(path=str(path))
        return path


People = Callable[..., Awaitable[Person]]


@pytest.fixture
async def people(
    browser: Browser, apps: list[AppProcess], request: pytest.FixtureRequest
) -> AsyncIterator[People]:
    """``await people("alice", app=0, viewport=DESKTOP)``: a fresh user and browser context.
    At the end: a screenshot of each page, and no page may have had an error or a dialog."""
    made: list[Person] = []

    async def make(name: str, app: int = 0, viewport: dict[str, int] | None = None) -> Person:
        context = await browser.new_context(viewport=viewport or DESKTOP, locale="en-US")
        page = await context.new_page()
        person = Person(name, random_phone(), apps[app], context, page)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                person.problems.append(f"console error: {message.text}")

        async def on_dialog(dialog: Dialog) -> None:
            person.dialogs.append(f"{dialog.type}: {dialog.message}")
            await dialog.dismiss()

        page.on("console", on_console)
        page.on("pageerror", lambda error: person.problems.append(f"page error: {error}"))
        page.on("dialog", on_dialog)
        made.append(person)
        return person

    yield make
    test_name = request.node.name.removeprefix("test_")
    for person in made:
        with contextlib.suppress(PlaywrightError):  # a page that is gone: the test says why
            await person.screenshot(test_name)
        await person.context.close()
    for person in made:
        assert not person.dialogs, f"{person.name}: a dialog opened: {person.dialogs}"
        assert not person.problems, f"{person.name}: {person.problems}"
