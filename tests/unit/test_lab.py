"""The lab console's guards, without processes (ADR 0032): ``/lab`` in the main app only
outside production; the console's state-changing requests refused unless they carry the page's
token from the console's own origin; ``messaging lab`` refused in production; the traffic plan
bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from messaging import cli
from messaging.bootstrap import create_app
from messaging.lab.console import TOKEN_HEADER, Lab, create_lab_app
from messaging.lab.traffic import MAX_SECONDS, MAX_USERS, Plan, PlanError
from messaging.settings import Settings

TOKEN = "t0k3n-for-the-test"
PRODUCTION = Settings(env="production", jwt_secret="x" * 40, otp_sender="log-only")


async def _get(settings: Settings, path: str) -> httpx.Response:
    # No lifespan: /lab needs no running service (and nothing here opens a socket).
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.get(path)


async def test_main_app_answers_lab_outside_production_only() -> None:
    dev = await _get(Settings(env="dev"), "/lab")
    assert dev.status_code == 200
    assert "messaging lab" in dev.text
    assert "script-src 'self'" in dev.headers["content-security-policy"]
    assert (await _get(PRODUCTION, "/lab")).status_code == 404


def test_lab_command_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESSAGING_ENV", "production")
    monkeypatch.setenv("MESSAGING_JWT_SECRET", "x" * 40)
    monkeypatch.setenv("MESSAGING_OTP_SENDER", "log-only")
    assert cli.main(["lab", "--port", "1"]) == 2
    assert "refused when MESSAGING_ENV=production" in capsys.readouterr().err


@asynccontextmanager
async def _console(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The console's app with its lifespan run (a lab of no process), over ASGI."""
    settings = Settings(env="test", stack_dir=tmp_path)  # no stack recorded there: no probe

    async def factory() -> AsyncIterator[Lab]:
        yield Lab(settings, [], None, stack_faults=False)

    app = create_lab_app(factory, token=TOKEN)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8010") as http:
            yield http


GOOD = {TOKEN_HEADER: TOKEN, "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Content-Type": "application/json"}, "X-Lab-Token"),
        ({**GOOD, TOKEN_HEADER: "guess"}, "X-Lab-Token"),
        ({**GOOD, "Origin": "http://evil.example"}, "cross-origin"),
        ({**GOOD, "Sec-Fetch-Site": "cross-site"}, "cross-site"),
        ({**GOOD, "Sec-Fetch-Site": "same-site"}, "cross-site"),
        ({**GOOD, "Content-Type": "text/plain"}, "Content-Type"),
    ],
)
async def test_state_changing_requests_need_the_token_from_the_same_origin(
    tmp_path: Path, headers: dict[str, str], why: str
) -> None:
    async with _console(tmp_path) as console:
        for path in ("/lab/api/traffic", "/lab/api/fault", "/lab/api/check"):
            answer = await console.post(path, content=b'{"action": "stop"}', headers=headers)
            assert answer.status_code == 403, (path, answer.text)
            assert why in answer.json()["message"]


async def test_a_same_origin_request_with_the_token_is_accepted(tmp_path: Path) -> None:
    async with _console(tmp_path) as console:
        page = await console.get("/lab")
        assert page.status_code == 200
        assert f'content="{TOKEN}"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        assert (await console.get("/lab/api/traffic")).status_code == 405  # POST only
        headers = {**GOOD, "Origin": "http://127.0.0.1:8010", "Sec-Fetch-Site": "same-origin"}
        answer = await console.post("/lab/api/traffic", json={"action": "stop"}, headers=headers)
        assert answer.status_code == 200, answer.text
        # Past the guard: the lab itself says why it cannot.
        kill = await console.post(
            "/lab/api/fault", json={"action": "kill", "app": "x"}, headers=GOOD
        )
        assert kill.status_code == 409
        assert "unknown app process" in kill.json()["message"]
        flush = await console.post("/lab/api/fault", json={"action": "flushall"}, headers=GOOD)
        assert flush.status_code == 409
        assert "disabled" in flush.json()["message"]
        stop = await console.post(
            "/lab/api/fault", json={"action": "stop_service", "service": "kafka"}, headers=GOOD
        )
        assert stop.status_code == 409
        state = (await console.get("/lab/api/state")).json()
        assert state["stack_faults"] is False
        assert state["apps"] == []


def test_the_plan_is_bounded() -> None:
    assert Plan.parse({}) == Plan()
    assert Plan.parse({"users": 10, "group_size": 2}).group_size == 2
    for bad in (
        {"users": MAX_USERS + 1},
        {"seconds": MAX_SECONDS + 1},
        {"rate": 0},
        {"users": 3, "group_size": 4},
        {"users": "many"},
        {"surprise": 1},
    ):
        with pytest.raises(PlanError):
            Plan.parse(bad)


async def test_another_host_name_is_refused(tmp_path: Path) -> None:
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 reads nothing."""
    async with _console(tmp_path) as console:
        answer = await console.get("/lab", headers={"Host": "evil.example:8010"})
        assert answer.status_code == 400
        assert TOKEN not in answer.text
        assert (await console.get("/lab", headers={"Host": "localhost:8010"})).status_code == 200
