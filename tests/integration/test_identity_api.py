"""Identity over REST against real app processes: login, refusals, rate limits, sessions.

Each test sends from its own client address (``X-Forwarded-For``, which uvicorn honours from
127.0.0.1, its default trusted proxy), so per-address rate limits of one test never touch
another's. Codes come from the dev sender's route, as a developer would read them.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
import redis

from messaging.identity.adapters.redis_otp import otp_key
from messaging.settings import Settings, env_var
from tests.harness import AppProcess, free_port
from tests.integration.conftest import app_env

TIMEOUT = 10.0


def new_phone() -> str:
    return f"+1555{random.randrange(10**7):07d}"


def new_device() -> str:
    return f"device-{uuid.uuid4().hex[:12]}"


def new_address() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


class Client:
    """One client address talking to one app process."""

    def __init__(self, app: AppProcess, address: str | None = None) -> None:
        self.app = app
        self.address = address or new_address()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"X-Forwarded-For": self.address, **kwargs.pop("headers", {})}
        return httpx.request(
            method, self.app.base_url + path, headers=headers, timeout=TIMEOUT, **kwargs
        )

    def on(self, app: AppProcess) -> Client:
        return Client(app, self.address)

    def request_otp(self, phone: str) -> httpx.Response:
        return self.request("POST", "/v1/auth/otp", json={"phone": phone})

    def dev_code(self, phone: str) -> str:
        answer = self.request("GET", "/v1/dev/otp", params={"phone": phone})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["code"])

    def verify(self, phone: str, code: str, device_id: str) -> httpx.Response:
        body = {"phone": phone, "code": code, "device_id": device_id}
        return self.request("POST", "/v1/auth/verify", json=body)

    def log_in(self, phone: str, device_id: str) -> dict[str, Any]:
        assert self.request_otp(phone).status_code == 202
        answer = self.verify(phone, self.dev_code(phone), device_id)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def authed(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        return self.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def error_code(answer: httpx.Response) -> str:
    return str(answer.json()["error"]["code"])


def b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": "someone",
        "did": new_device(),
        "sep": 1,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "iss": "messaging",
        "aud": "messaging",
        **overrides,
    }


@pytest.fixture
def client(apps: list[AppProcess]) -> Client:
    return Client(apps[0])


# ----------------------------------------------------------------------------- login


def test_login_happy_path(apps: list[AppProcess], client: Client) -> None:
    phone, device = new_phone(), new_device()
    requested = client.request_otp("+1 (555) " + phone[5:8] + "-" + phone[8:])
    assert requested.status_code == 202
    assert requested.json() == {"phone": phone, "expires_in": 300}
    code = client.dev_code(phone)
    # The code requested through one app process is verified through the other.
    answer = client.on(apps[1]).verify(phone, code, device)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "user_id", "device_id"}
    assert (body["token_type"], body["expires_in"], body["device_id"]) == ("bearer", 3600, device)
    assert answer.headers["cache-control"] == "no-store"
    session = client.authed("GET", "/v1/auth/session", body["access_token"])
    assert session.status_code == 200
    assert (session.json()["user_id"], session.json()["device_id"]) == (body["user_id"], device)
    assert client.log_in(phone, new_device())["user_id"] == body["user_id"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"phone": "555 0100"}, "must start with '+'"),
        ({"phone": "+0 555 0100 99"}, "must not start with 0"),
        ({"phone": "+1 555 abc 0100"}, "contains 'a'"),
        ({"phone": 15550100}, "must be of type str"),
        ({}, "'phone' is required"),
    ],
)
def test_a_malformed_phone_is_422(client: Client, body: dict[str, Any], says: str) -> None:
    answer = client.request("POST", "/v1/auth/otp", json=body)
    assert answer.status_code == 422
    assert error_code(answer) == "invalid_input"
    assert says in answer.json()["error"]["message"]


def test_a_malformed_device_id_is_422(client: Client) -> None:
    phone = new_phone()
    assert client.request_otp(phone).status_code == 202
    answer = client.verify(phone, client.dev_code(phone), "bad device")
    assert answer.status_code == 422
    assert "device_id" in answer.json()["error"]["message"]


def test_a_wrong_code_is_401_otp_invalid(client: Client) -> None:
    phone = new_phone()
    assert client.request_otp(phone).status_code == 202
    answer = client.verify(phone, wrong(client.dev_code(phone)), new_device())
    assert answer.status_code == 401
    assert error_code(answer) == "otp_invalid"
    assert "4 tries left" in answer.json()["error"]["message"]


def test_an_expired_code_is_401_otp_expired(stack: Settings, client: Client) -> None:
    phone = new_phone()
    assert client.request_otp(phone).status_code == 202
    code = client.dev_code(phone)
    # Let the code's TTL run out now rather than in five minutes: Redis expiring the key is
    # exactly what happens at the end of a real TTL. (The service's own expiry check on a code
    # Redis still holds is covered with a fake clock in tests/unit/test_identity_service.py.)
    with redis.Redis.from_url(stack.redis_url) as client_redis:
        assert client_redis.pexpire(otp_key(stack.table_prefix, phone), 1)
        time.sleep(0.05)
        assert client_redis.exists(otp_key(stack.table_prefix, phone)) == 0
    answer = client.verify(phone, code, new_device())
    assert answer.status_code == 401
    assert error_code(answer) == "otp_expired"


def test_a_used_code_is_401(client: Client) -> None:
    phone = new_phone()
    assert client.request_otp(phone).status_code == 202
    code = client.dev_code(phone)
    assert client.verify(phone, code, new_device()).status_code == 200
    again = client.verify(phone, code, new_device())
    assert again.status_code == 401
    assert error_code(again) == "otp_expired"


def test_the_sixth_try_fails_even_with_the_right_code(client: Client) -> None:
    phone = new_phone()
    assert client.request_otp(phone).status_code == 202
    code = client.dev_code(phone)
    for _ in range(5):
        answer = client.verify(phone, wrong(code), new_device())
        assert answer.status_code == 401
        assert error_code(answer) == "otp_invalid"
    sixth = client.verify(phone, code, new_device())
    assert sixth.status_code == 401
    assert error_code(sixth) == "otp_attempts_exceeded"
    burned = client.verify(phone, code, new_device())
    assert burned.status_code == 401
    assert error_code(burned) == "otp_expired"


def test_of_two_concurrent_verifies_of_one_code_exactly_one_wins(
    apps: list[AppProcess], client: Client
) -> None:
    phone = new_phone()
    assert client.request_otp(phone).status_code == 202
    code = client.dev_code(phone)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda app: client.on(app).verify(phone, code, new_device()), apps))
    assert sorted(a.status_code for a in answers) == [200, 401]


# ----------------------------------------------------------------------------- rate limits


@pytest.fixture(scope="module")
def limited_app(stack: Settings) -> Iterator[AppProcess]:
    """An app with low OTP limits and the log-only sender (no dev route)."""
    env = {
        **app_env(stack),
        env_var("otp_sender"): "log-only",
        env_var("otp_requests_per_phone_per_window"): "2",
        env_var("otp_requests_per_address_per_window"): "4",
        env_var("otp_rate_window_seconds"): "120",
    }
    app = AppProcess("identity-limited", env).start()
    yield app
    app.terminate()


def test_otp_requests_are_rate_limited_per_phone_and_per_address(
    limited_app: AppProcess,
) -> None:
    client = Client(limited_app)
    first, second = new_phone(), new_phone()
    assert [client.request_otp(first).status_code for _ in range(2)] == [202, 202]
    per_phone = client.request_otp(first)
    assert per_phone.status_code == 429
    assert error_code(per_phone) == "rate_limited"
    assert 1 <= int(per_phone.headers["retry-after"]) <= 120
    assert "for this phone" in per_phone.json()["error"]["message"]
    # Another address may not ask for this phone either: the phone's limit is global.
    assert Client(limited_app).request_otp(first).status_code == 429
    # This address has made 3 requests; its 4th is allowed, its 5th is not.
    assert client.request_otp(second).status_code == 202
    per_address = client.request_otp(new_phone())
    assert per_address.status_code == 429
    assert "from this address" in per_address.json()["error"]["message"]
    assert 1 <= int(per_address.headers["retry-after"]) <= 120


def test_without_the_dev_sender_the_dev_route_does_not_exist(limited_app: AppProcess) -> None:
    client = Client(limited_app)
    phone = new_phone()
    assert client.request_otp(phone).status_code == 202
    answer = client.request("GET", "/v1/dev/otp", params={"phone": phone})
    assert answer.status_code == 404
    assert error_code(answer) == "not_found"
    paths = client.request("GET", "/openapi.json").json()["paths"]
    assert "/v1/dev/otp" not in paths
    assert "/v1/auth/otp" in paths


def test_openapi_lists_the_identity_operations(client: Client) -> None:
    paths = client.request("GET", "/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/v1/auth/otp",
        "/v1/auth/verify",
        "/v1/auth/session",
        "/v1/auth/logout",
        "/v1/users/by-phone",
        "/v1/dev/otp",
    }
    assert paths["/v1/users/by-phone"]["get"]["security"] == [{"bearer": []}]
    assert paths["/v1/auth/verify"]["post"]["security"] == []


# ----------------------------------------------------------------------------- tokens


def test_a_missing_token_is_401(client: Client) -> None:
    answer = client.request("GET", "/v1/users/by-phone", params={"phone": new_phone()})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_tampered_token_is_401(client: Client) -> None:
    token = client.log_in(new_phone(), new_device())["access_token"]
    head, payload, signature = token.split(".")
    tampered = f"{head}.{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    answer = client.authed("GET", "/v1/users/by-phone", tampered, params={"phone": new_phone()})
    assert answer.status_code == 401
    assert error_code(answer) == "token_invalid"
    forged = f"{head}.{b64(claims(sub='someone-else'))}.{signature}"
    answer = client.authed("GET", "/v1/users/by-phone", forged, params={"phone": new_phone()})
    assert answer.status_code == 401


def test_an_alg_none_token_is_401(client: Client) -> None:
    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}."
    answer = client.authed("GET", "/v1/users/by-phone", token, params={"phone": new_phone()})
    assert answer.status_code == 401
    assert error_code(answer) == "token_invalid"


def test_an_expired_token_is_401(stack: Settings, client: Client) -> None:
    past = int(time.time()) - 7200
    token = jwt.encode(claims(iat=past, exp=past + 3600), stack.jwt_secret, algorithm="HS256")
    answer = client.authed("GET", "/v1/users/by-phone", token, params={"phone": new_phone()})
    assert answer.status_code == 401
    assert error_code(answer) == "token_expired"


def test_a_token_with_the_wrong_audience_is_401(stack: Settings, client: Client) -> None:
    token = jwt.encode(claims(aud="another-service"), stack.jwt_secret, algorithm="HS256")
    answer = client.authed("GET", "/v1/users/by-phone", token, params={"phone": new_phone()})
    assert answer.status_code == 401


# ----------------------------------------------------------------------------- lookup


def test_lookup_by_phone(client: Client) -> None:
    alice_phone = new_phone()
    alice = client.log_in(alice_phone, new_device())
    bob = client.log_in(new_phone(), new_device())
    formatted = f"+1 555 {alice_phone[5:8]}.{alice_phone[8:]}"
    found = client.authed(
        "GET", "/v1/users/by-phone", bob["access_token"], params={"phone": formatted}
    )
    assert found.status_code == 200
    assert found.json() == {"user_id": alice["user_id"], "phone": alice_phone}
    unknown = client.authed(
        "GET", "/v1/users/by-phone", bob["access_token"], params={"phone": new_phone()}
    )
    assert unknown.status_code == 404
    malformed = client.authed(
        "GET", "/v1/users/by-phone", bob["access_token"], params={"phone": "0555"}
    )
    assert malformed.status_code == 422
    anonymous = client.request("GET", "/v1/users/by-phone", params={"phone": alice_phone})
    assert anonymous.status_code == 401


# ----------------------------------------------------------------------------- sessions


def test_two_devices_of_one_user_are_logged_in_at_once(
    apps: list[AppProcess], client: Client
) -> None:
    phone, device_a, device_b = new_phone(), new_device(), new_device()
    a = client.log_in(phone, device_a)
    b = client.on(apps[1]).log_in(phone, device_b)
    assert a["user_id"] == b["user_id"]
    for session, device in ((a, device_a), (b, device_b)):
        assert (
            jwt.decode(session["access_token"], options={"verify_signature": False})["did"]
            == device
        )
        answer = client.authed("GET", "/v1/auth/session", session["access_token"])
        assert answer.status_code == 200
        assert answer.json()["device_id"] == device
    assert client.authed("POST", "/v1/auth/logout", a["access_token"]).status_code == 204
    assert client.authed("GET", "/v1/auth/session", a["access_token"]).status_code == 401
    assert client.authed("GET", "/v1/auth/session", b["access_token"]).status_code == 200


def test_a_second_login_on_a_device_supersedes_the_first(client: Client) -> None:
    phone, device = new_phone(), new_device()
    old = client.log_in(phone, device)["access_token"]
    new = client.log_in(phone, device)["access_token"]
    revoked = client.authed("GET", "/v1/auth/session", old)
    assert revoked.status_code == 401
    assert error_code(revoked) == "session_revoked"
    assert client.authed("GET", "/v1/auth/session", new).status_code == 200
    # REST routes other than the session check stay stateless: the old token works until expiry.
    lookup = client.authed("GET", "/v1/users/by-phone", old, params={"phone": phone})
    assert lookup.status_code == 200


def test_logout_ends_the_session_and_is_idempotent(client: Client) -> None:
    token = client.log_in(new_phone(), new_device())["access_token"]
    assert client.authed("POST", "/v1/auth/logout", token).status_code == 204
    assert client.authed("POST", "/v1/auth/logout", token).status_code == 204
    answer = client.authed("GET", "/v1/auth/session", token)
    assert answer.status_code == 401
    assert error_code(answer) == "session_revoked"
    assert client.request("POST", "/v1/auth/logout").status_code == 401


# ----------------------------------------------------------------------------- production


def test_production_refuses_to_start_with_the_dev_sender() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESSAGING_")}
    env.update(
        {
            env_var("env"): "production",
            env_var("otp_sender"): "dev",
            env_var("jwt_secret"): "a-production-grade-secret-of-more-than-32-bytes",
            env_var("port"): str(free_port()),
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "messaging", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "MESSAGING_OTP_SENDER" in result.stderr
    assert "production" in result.stderr
