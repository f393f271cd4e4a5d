"""Access tokens: what is issued, and every kind of token that must be refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest

from messaging.domain.errors import DeviceMismatch
from messaging.identity.errors import TokenExpired, TokenInvalid
from messaging.identity.model import SessionPrincipal
from messaging.identity.tokens import JwtTokens
from tests.fakes.identity import FakeClock

SECRET = "unit-test-secret-of-at-least-32-bytes-0123456789"
OTHER_SECRET = "another-secret-of-at-least-32-bytes-9876543210"
DEVICE = "device-aaaa-0001"


def b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(clock: FakeClock, **overrides: object) -> dict[str, object]:
    now = int(clock())
    base: dict[str, object] = {
        "sub": "user-1",
        "did": DEVICE,
        "sep": 1,
        "iat": now,
        "exp": now + 3600,
        "jti": "token-1",
        "iss": "messaging",
        "aud": "messaging",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(clock: FakeClock) -> JwtTokens:
    return JwtTokens(SECRET, 3600, clock=clock)


def test_an_issued_token_verifies_to_its_principal(tokens: JwtTokens, clock: FakeClock) -> None:
    issued = tokens.issue("user-1", DEVICE, 7)
    principal = tokens.verify(issued.token)
    assert principal == SessionPrincipal(
        user_id="user-1",
        device_id=DEVICE,
        token_id=issued.token_id,
        expires_at=int(clock()) + 3600,
        session_epoch=7,
    )
    assert issued.expires_in == 3600


def test_the_token_carries_the_documented_claims_and_hs256(tokens: JwtTokens) -> None:
    token = tokens.issue("user-1", DEVICE, 1).token
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"sub", "did", "sep", "iat", "exp", "jti", "iss", "aud"}
    assert (payload["iss"], payload["aud"]) == ("messaging", "messaging")


def test_each_token_has_its_own_id(tokens: JwtTokens) -> None:
    first, second = tokens.issue("u", DEVICE, 1), tokens.issue("u", DEVICE, 1)
    assert first.token_id != second.token_id


def test_a_tampered_signature_is_refused(tokens: JwtTokens) -> None:
    token = tokens.issue("user-1", DEVICE, 1).token
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(TokenInvalid, match="Signature verification failed"):
        tokens.verify(f"{head}.{payload}.{flipped}")


def test_a_tampered_payload_is_refused(tokens: JwtTokens, clock: FakeClock) -> None:
    head, _, signature = tokens.issue("user-1", DEVICE, 1).token.split(".")
    forged = b64(claims(clock, sub="someone-else"))
    with pytest.raises(TokenInvalid):
        tokens.verify(f"{head}.{forged}.{signature}")


def test_a_token_signed_with_another_key_is_refused(tokens: JwtTokens, clock: FakeClock) -> None:
    token = jwt.encode(claims(clock), OTHER_SECRET, algorithm="HS256")
    with pytest.raises(TokenInvalid):
        tokens.verify(token)


@pytest.mark.parametrize("signature", ["", "c2lnbmF0dXJl"])
def test_alg_none_is_refused(tokens: JwtTokens, clock: FakeClock, signature: str) -> None:
    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(clock))}.{signature}"
    with pytest.raises(TokenInvalid, match="alg"):
        tokens.verify(token)


def test_another_hmac_algorithm_is_refused(tokens: JwtTokens, clock: FakeClock) -> None:
    # A header naming another algorithm (HS512, signed with the same key) is not accepted either.
    header, payload = b64({"alg": "HS512", "typ": "JWT"}), b64(claims(clock))
    digest = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha512).digest()
    signature = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    token = f"{header}.{payload}.{signature}"
    with pytest.raises(TokenInvalid, match="alg"):
        tokens.verify(token)


def test_an_expired_token_is_refused(tokens: JwtTokens, clock: FakeClock) -> None:
    token = tokens.issue("user-1", DEVICE, 1).token
    clock.advance(3599)
    assert tokens.verify(token).user_id == "user-1"
    clock.advance(1)
    with pytest.raises(TokenExpired, match="expired"):
        tokens.verify(token)


def test_a_token_issued_in_the_future_is_refused(tokens: JwtTokens, clock: FakeClock) -> None:
    token = jwt.encode(claims(clock, iat=int(clock()) + 3600), SECRET, algorithm="HS256")
    with pytest.raises(TokenInvalid, match="future"):
        tokens.verify(token)


@pytest.mark.parametrize(
    "overrides",
    [{"iss": "someone-else"}, {"aud": "another-service"}, {"aud": ["another-service"]}],
    ids=["issuer", "audience", "audience-list"],
)
def test_wrong_issuer_or_audience_is_refused(
    tokens: JwtTokens, clock: FakeClock, overrides: dict[str, object]
) -> None:
    token = jwt.encode(claims(clock, **overrides), SECRET, algorithm="HS256")
    with pytest.raises(TokenInvalid):
        tokens.verify(token)


@pytest.mark.parametrize("missing", ["sub", "did", "sep", "iat", "exp", "jti", "iss", "aud"])
def test_a_missing_claim_is_refused(tokens: JwtTokens, clock: FakeClock, missing: str) -> None:
    token = jwt.encode(claims(clock, **{missing: None}), SECRET, algorithm="HS256")
    with pytest.raises(TokenInvalid):
        tokens.verify(token)


@pytest.mark.parametrize(
    "overrides",
    [{"sub": ""}, {"sub": 42}, {"did": "short"}, {"sep": "1"}, {"sep": True}, {"jti": 5}],
)
def test_a_malformed_claim_is_refused(
    tokens: JwtTokens, clock: FakeClock, overrides: dict[str, object]
) -> None:
    token = jwt.encode(claims(clock, **overrides), SECRET, algorithm="HS256")
    with pytest.raises(TokenInvalid):
        tokens.verify(token)


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "a.b"])
def test_garbage_is_refused(tokens: JwtTokens, garbage: str) -> None:
    with pytest.raises(TokenInvalid):
        tokens.verify(garbage)


def test_a_token_for_another_device_is_refused(tokens: JwtTokens) -> None:
    token = tokens.issue("user-1", DEVICE, 1).token
    assert tokens.verify_for_device(token, DEVICE).device_id == DEVICE
    with pytest.raises(DeviceMismatch) as info:
        tokens.verify_for_device(token, "device-bbbb-0002")
    assert info.value.code == "device_mismatch"


def test_device_check_still_verifies_the_token(tokens: JwtTokens, clock: FakeClock) -> None:
    token = jwt.encode(claims(clock), OTHER_SECRET, algorithm="HS256")
    with pytest.raises(TokenInvalid):
        tokens.verify_for_device(token, DEVICE)
