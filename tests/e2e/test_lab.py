"""The lab console (``messaging lab``, ADR 0032) in headless Chromium against the real stack:
start traffic from the page, kill one of the lab's app processes from the page, see traffic go
on through the other, restart it, press Check and see a clean verdict.

The console runs as its own process with ``--no-stack-faults``: this test never stops or
flushes the shared stack's services (those buttons are disabled, and the console refuses them);
it only kills and restarts the console's own app processes. A screenshot of the page mid-fault
goes to ``test-artifacts/e2e/lab-mid-fault.png`` (and to ``$MESSAGING_TEST_LAB_SCREENSHOT``
when set: how docs/images/lab.png is made).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from messaging.settings import Settings
from tests.e2e.conftest import SHOTS
from tests.harness import ARTIFACTS, free_port


class Console:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc

    async def state(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            answer = await http.get(self.url + "/lab/api/state")
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result


def _spawn(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "messaging", "lab", "--port", str(port), "--apps", "2"]
    argv += ["--no-stack-faults", "--log-dir", str(ARTIFACTS / "lab")]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            env={**os.environ, "MESSAGING_ENV": "test"},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def wait_until(
    read: Callable[[], Awaitable[float]], above: float, seconds: float, what: str
) -> float:
    """Poll ``read()`` until it exceeds ``above``; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    value = await read()
    while value <= above:
        assert time.monotonic() < deadline, f"{what}: still {value} after {seconds} s"
        await asyncio.sleep(0.25)
        value = await read()
    return value


@pytest.fixture
async def console(stack: Settings) -> AsyncIterator[Console]:
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "lab-console.log"
    proc = await asyncio.to_thread(_spawn, port, log_path)
    console = Console(port, proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                state = await console.state()
                if state["apps"] and all(a.get("health") == "ok" for a in state["apps"]):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the lab console did not come up in 90 s"
            await asyncio.sleep(0.5)
        yield console
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # it stops its app processes, removes its paths
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def number(page: Page, selector: str) -> float:
    text = (await page.locator(selector).text_content() or "").split()[0]
    try:
        return float(text)
    except ValueError:
        return 0.0


async def test_kill_an_app_process_from_the_page_and_check(
    browser: Browser, console: Console
) -> None:
    context = await browser.new_context(viewport={"width": 1500, "height": 1000}, locale="en-US")
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        await page.goto(console.url + "/lab")
        rows = page.locator("#apps tbody tr")
        await expect(rows).to_have_count(2)
        for row in await rows.all():
            await expect(row).to_have_attribute("data-health", "ok")
        # The shared stack is never touched from this test: its buttons are disabled.
        await expect(page.locator("#flushall")).to_be_disabled()
        # Without the page's token, a state-changing request is refused.
        status = await page.evaluate(
            "fetch('/lab/api/check', {method: 'POST', headers: {'Content-Type':"
            " 'application/json'}, body: '{}'}).then(r => r.status)"
        )
        assert status == 403
        problems.clear()  # the browser logs that refusal as a failed resource

        await page.locator("#t-users").fill("6")
        await page.locator("#t-chats").fill("3")
        await page.locator("#t-group").fill("3")
        await page.locator("#t-rate").fill("20")
        await page.locator("#t-seconds").fill("60")
        await page.get_by_role("button", name="Start traffic").click()
        await expect(page.locator("#f-phase")).to_have_attribute("data-phase", "running")
        await wait_until(lambda: number(page, "#f-deliveries"), 0, 20, "deliveries/s on the page")

        await asyncio.sleep(5)  # steady traffic on the timeline before the fault
        victim, survivor = rows.nth(0), rows.nth(1)
        await victim.get_by_role("button", name="Kill").click()
        await expect(victim).to_have_attribute("data-health", "down")
        before = (await console.state())["traffic"]["deliveries"]
        # Traffic goes on through the other process: its clients keep sending and receiving.
        await wait_until(
            lambda: _deliveries(console), before + 20, 15, "deliveries while one process is down"
        )
        await expect(survivor).to_have_attribute("data-health", "ok")
        await expect(page.locator("#chart rect")).not_to_have_count(0)  # the fault window
        await asyncio.sleep(3)  # a few seconds of the window on the chart
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "lab-mid-fault.png"))
        if target := os.environ.get("MESSAGING_TEST_LAB_SCREENSHOT"):
            await page.screenshot(path=target)

        await victim.get_by_role("button", name="Restart").click()
        await expect(victim).to_have_attribute("data-health", "ok", timeout=60_000)
        await asyncio.sleep(3)  # its clients reconnect and resend what waited

        await page.get_by_role("button", name="Check").click()
        verdict = page.locator("#verdict")
        await expect(verdict).to_have_attribute("data-state", "clean", timeout=60_000)
        await expect(verdict).to_contain_text("no violation")
        await page.screenshot(path=str(SHOTS / "lab-checked.png"))
        result = (await console.state())["check"]
        assert result["ok"], result
        assert result["acked_sends"] > 50, result
        assert not problems, problems
    finally:
        await context.close()


async def _deliveries(console: Console) -> int:
    traffic = (await console.state())["traffic"]
    return int(traffic["deliveries"])


async def test_the_console_arms_stalls_slows_and_cuts_and_checks_clean(
    console: Console,
) -> None:
    """The console's other process and network faults, through its API as the page sends them
    (token from the page): arm ``after_persist`` (the process dies with a message persisted and
    unanswered), restart it, pause a client's reading, slow then cut one process's store path,
    heal; Check is clean and
    every fault has its window."""
    async with httpx.AsyncClient(base_url=console.url, timeout=30, trust_env=False) as http:
        page = (await http.get("/lab")).text
        token = page.split('name="lab-token" content="', 1)[1].split('"', 1)[0]

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            answer = await http.post(path, json=body, headers={"X-Lab-Token": token})
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()
            return result

        state = await console.state()
        first, second = (app["name"] for app in state["apps"])
        await post("/lab/api/traffic", {"action": "start", "rate": 15, "seconds": 60})
        await wait_until(lambda: _deliveries(console), 20, 20, "deliveries before the faults")

        await post("/lab/api/fault", {"action": "arm", "app": first, "point": "after_persist"})
        await wait_until(lambda: _down(console, first), 0, 10, f"{first} dying at its next send")
        await post("/lab/api/fault", {"action": "restart", "app": first})
        await post("/lab/api/fault", {"action": "stall", "seconds": 3})
        for action in ("slow", "cut"):
            await post("/lab/api/fault", {"action": action, "app": second, "path": "dynamodb"})
            await asyncio.sleep(3)
            await post("/lab/api/fault", {"action": "heal", "app": second, "path": "dynamodb"})
        await asyncio.sleep(2)
        await post("/lab/api/check", {})
        deadline = time.monotonic() + 60
        while (state := await console.state())["checking"] or state["check"] is None:
            assert time.monotonic() < deadline, "the check did not finish in 60 s"
            await asyncio.sleep(0.5)
    assert state["check"]["ok"], state["check"]
    labels = [w["label"] for w in state["windows"]]
    assert any("after_persist" in label for label in labels), labels
    assert any(label == f"{first} down" for label in labels), labels
    assert f"slow {second}-dynamodb" in labels, labels
    assert f"cut {second}-dynamodb" in labels, labels
    assert any(label.startswith("stall client") for label in labels), labels
    assert all(w["end"] is not None for w in state["windows"]), state["windows"]


async def _down(console: Console, name: str) -> int:
    apps = (await console.state())["apps"]
    return sum(1 for app in apps if app["name"] == name and app["health"] == "down")
