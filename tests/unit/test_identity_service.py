"""The identity service over in-memory fakes of its ports and a fake clock."""

from __future__ import annotations

import asyncio
import itertools

import attrs
import pytest

from messaging.domain.errors import InvalidInput, NotFound, RateLimited, Unauthenticated
from messaging.identity import otp as otp_module
from messaging.identity.errors import (
    OtpAttemptsExceeded,
    OtpExpired,
    OtpInvalid,
    SessionRevoked,
)
from messaging.identity.model import OtpChallenge, Session
from messaging.identity.otp import OtpCodes, derive_otp_key
from messaging.identity.service import IdentityConfig, IdentityService
from messaging.identity.tokens import JwtTokens
from messaging.protocol.identity import Principal
from tests.fakes.identity import (
    FakeClock,
    InMemoryDeviceSessions,
    InMemoryOtpStore,
    InMemoryRateLimiter,
    InMemoryUserDirectory,
    RecordingSender,
)

SECRET = "unit-test-secret-of-at-least-32-bytes-0123456789"
PHONE = "+442079460958"
DEVICE_A = "device-aaaa-0001"
DEVICE_B = "device-bbbb-0002"
ADDRESS = "203.0.113.7"


@attrs.define
class World:
    clock: FakeClock
    otps: InMemoryOtpStore
    sender: RecordingSender
    users: InMemoryUserDirectory
    devices: InMemoryDeviceSessions
    tokens: JwtTokens
    service: IdentityService

    async def code_for(self, phone: str = PHONE, address: str = ADDRESS) -> str:
        await self.service.request_otp(phone, address)
        return self.sender.sent[-1][1]

    async def log_in(self, device_id: str = DEVICE_A, phone: str = PHONE) -> Session:
        code = await self.code_for(phone)
        return await self.service.verify_otp(phone, code, device_id, ADDRESS)

    def principal(self, session: Session) -> Principal:
        return self.tokens.verify(session.access_token)


def world(
    config: IdentityConfig | None = None,
    store_type: type[InMemoryOtpStore] = InMemoryOtpStore,
) -> World:
    clock = FakeClock()
    store = store_type(clock)
    sender = RecordingSender()
    users = InMemoryUserDirectory()
    devices = InMemoryDeviceSessions()
    tokens = JwtTokens(SECRET, 3600, clock=clock)
    ids = (f"user-{n}" for n in itertools.count(1))
    service = IdentityService(
        config=config or IdentityConfig(),
        codes=OtpCodes(derive_otp_key(SECRET)),
        tokens=tokens,
        otps=store,
        limiter=InMemoryRateLimiter(clock),
        sender=sender,
        users=users,
        devices=devices,
        dev_inbox=sender,
        clock=clock,
        new_user_id=lambda: next(ids),
    )
    return World(clock, store, sender, users, devices, tokens, service)


@pytest.fixture
def w() -> World:
    return world()


# ----------------------------------------------------------------------------- requesting


async def test_a_request_sends_a_six_digit_code_and_stores_only_its_hash(w: World) -> None:
    sent = await w.service.request_otp("+44 20 7946 0958", ADDRESS)
    assert (sent.phone, sent.expires_in) == (PHONE, 300)
    [(phone, code)] = w.sender.sent
    assert phone == PHONE
    assert len(code) == 6
    assert code.isdigit()
    challenge = await w.otps.attempt(PHONE)
    assert challenge is not None
    assert code not in challenge.digest
    assert challenge.digest == OtpCodes(derive_otp_key(SECRET)).digest(PHONE, code)


def test_codes_keep_leading_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otp_module.secrets, "randbelow", lambda _n: 42)
    assert OtpCodes.generate() == "000042"


def test_the_hash_is_keyed_and_binds_the_phone() -> None:
    codes = OtpCodes(derive_otp_key(SECRET))
    other = OtpCodes(derive_otp_key(SECRET + "x"))
    assert codes.digest(PHONE, "123456") != codes.digest("+14155550100", "123456")
    assert codes.digest(PHONE, "123456") != other.digest(PHONE, "123456")
    assert codes.matches(PHONE, "123456", codes.digest(PHONE, "123456"))
    assert derive_otp_key(SECRET) != SECRET.encode()
    with pytest.raises(ValueError, match="32 bytes"):
        OtpCodes(b"short")


async def test_a_malformed_phone_is_refused_before_anything_is_sent(w: World) -> None:
    with pytest.raises(InvalidInput, match="must start with"):
        await w.service.request_otp("020 7946 0958", ADDRESS)
    assert w.sender.sent == []


async def test_requests_are_limited_per_phone(w: World) -> None:
    for _ in range(5):
        await w.service.request_otp(PHONE, ADDRESS)
    with pytest.raises(RateLimited) as info:
        await w.service.request_otp(PHONE, ADDRESS)
    assert info.value.retry_after_seconds == 600
    assert len(w.sender.sent) == 5
    await w.service.request_otp("+14155550100", ADDRESS)  # another phone is not affected
    w.clock.advance(600)
    await w.service.request_otp(PHONE, ADDRESS)


async def test_requests_are_limited_per_address() -> None:
    w = world(IdentityConfig(otp_requests_per_address=3))
    for n in range(3):
        await w.service.request_otp(f"+1415555010{n}", ADDRESS)
    w.clock.advance(100)
    with pytest.raises(RateLimited) as info:
        await w.service.request_otp("+14155550109", ADDRESS)
    assert info.value.retry_after_seconds == 500
    await w.service.request_otp("+14155550109", "198.51.100.1")


# ----------------------------------------------------------------------------- verifying


async def test_the_first_login_creates_the_user_and_binds_the_token(w: World) -> None:
    session = await w.log_in()
    assert (session.user_id, session.device_id, session.new_user) == ("user-1", DEVICE_A, True)
    assert session.expires_in == 3600
    principal = w.principal(session)
    assert (principal.user_id, principal.device_id) == ("user-1", DEVICE_A)
    assert w.users.by_phone == {PHONE: "user-1"}
    again = await w.log_in(DEVICE_B)
    assert (again.user_id, again.new_user) == ("user-1", False)


async def test_a_formatted_phone_logs_into_the_same_user(w: World) -> None:
    first = await w.log_in(phone="+44 20 7946 0958")
    second = await w.log_in(phone="+44-20-7946-0958")
    assert first.user_id == second.user_id


async def test_a_wrong_code_is_refused_and_says_how_many_tries_are_left(w: World) -> None:
    code = await w.code_for()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    with pytest.raises(OtpInvalid, match="4 tries left") as info:
        await w.service.verify_otp(PHONE, wrong, DEVICE_A, ADDRESS)
    assert info.value.code == "otp_invalid"
    assert (await w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS)).user_id == "user-1"


async def test_the_fifth_try_may_still_succeed(w: World) -> None:
    code = await w.code_for()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(4):
        with pytest.raises(OtpInvalid):
            await w.service.verify_otp(PHONE, wrong, DEVICE_A, ADDRESS)
    assert await w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS)


async def test_the_sixth_try_fails_even_with_the_right_code_and_burns_it(w: World) -> None:
    code = await w.code_for()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(5):
        with pytest.raises(OtpInvalid):
            await w.service.verify_otp(PHONE, wrong, DEVICE_A, ADDRESS)
    with pytest.raises(OtpAttemptsExceeded):
        await w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS)
    with pytest.raises(OtpExpired):
        await w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS)
    assert w.users.by_phone == {}


async def test_a_code_is_single_use(w: World) -> None:
    code = await w.code_for()
    await w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS)
    with pytest.raises(OtpExpired):
        await w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS)


async def test_of_two_concurrent_verifies_with_the_right_code_one_wins(w: World) -> None:
    code = await w.code_for()
    results = await asyncio.gather(
        w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS),
        w.service.verify_otp(PHONE, code, DEVICE_B, ADDRESS),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["OtpExpired", "Session"]


async def test_an_expired_code_is_refused(w: World) -> None:
    code = await w.code_for()
    w.clock.advance(300)
    with pytest.raises(OtpExpired):
        await w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS)


async def test_a_code_is_valid_until_its_ttl_ends(w: World) -> None:
    code = await w.code_for()
    w.clock.advance(299)
    assert await w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS)


class ForgetfulStore(InMemoryOtpStore):
    """A store that keeps codes ten times longer than asked (a TTL that was not applied)."""

    async def put(self, phone: str, challenge: OtpChallenge, ttl_seconds: float) -> None:
        await super().put(phone, challenge, ttl_seconds * 10)


async def test_the_service_refuses_an_expired_code_the_store_still_holds() -> None:
    w = world(store_type=ForgetfulStore)
    code = await w.code_for()
    w.clock.advance(300)
    with pytest.raises(OtpExpired, match="the code expired"):
        await w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS)
    assert await w.otps.attempt(PHONE) is None  # and it is gone


async def test_a_new_request_replaces_the_code_and_resets_the_tries(w: World) -> None:
    old = await w.code_for()
    wrong = f"{(int(old) + 1) % 10**6:06d}"
    for _ in range(5):
        with pytest.raises(OtpInvalid):
            await w.service.verify_otp(PHONE, wrong, DEVICE_A, ADDRESS)
    new = await w.code_for()
    if old != new:
        with pytest.raises(OtpInvalid):
            await w.service.verify_otp(PHONE, old, DEVICE_A, ADDRESS)
    assert await w.service.verify_otp(PHONE, new, DEVICE_A, ADDRESS)


async def test_verifying_without_a_request_is_refused(w: World) -> None:
    with pytest.raises(OtpExpired, match="request a new one"):
        await w.service.verify_otp(PHONE, "123456", DEVICE_A, ADDRESS)


@pytest.mark.parametrize(
    ("code", "device_id", "says"),
    [
        ("12345", DEVICE_A, "6 digits"),
        ("12345a", DEVICE_A, "6 digits"),
        ("\uff11\uff12\uff13\uff14\uff15\uff16", DEVICE_A, "6 digits"),  # fullwidth digits
        ("123456", "short", "device_id"),
        ("123456", "has space in it", "device_id"),
        ("123456", "x" * 65, "device_id"),
    ],
)
async def test_malformed_input_is_refused_without_spending_a_try(
    w: World, code: str, device_id: str, says: str
) -> None:
    real = await w.code_for()
    with pytest.raises(InvalidInput, match=says):
        await w.service.verify_otp(PHONE, code, device_id, ADDRESS)
    challenge = await w.otps.attempt(PHONE)
    assert challenge is not None
    assert challenge.attempts == 1  # only the line above counted
    assert await w.service.verify_otp(PHONE, real, DEVICE_A, ADDRESS)


async def test_verifies_are_limited_per_address() -> None:
    w = world(IdentityConfig(verifies_per_address=2))
    code = await w.code_for()
    for _ in range(2):
        with pytest.raises(OtpInvalid):
            await w.service.verify_otp(PHONE, f"{(int(code) + 1) % 10**6:06d}", DEVICE_A, ADDRESS)
    with pytest.raises(RateLimited):
        await w.service.verify_otp(PHONE, code, DEVICE_A, ADDRESS)
    assert await w.service.verify_otp(PHONE, code, DEVICE_A, "198.51.100.1")


def test_verifies_per_address_default_to_every_requested_codes_tries() -> None:
    config = IdentityConfig(otp_requests_per_address=30, otp_max_attempts=5)
    assert config.verifies_per_address == 150


# ----------------------------------------------------------------------------- sessions


async def test_two_devices_of_one_user_hold_sessions_at_once(w: World) -> None:
    a = await w.log_in(DEVICE_A)
    b = await w.log_in(DEVICE_B)
    pa, pb = w.principal(a), w.principal(b)
    assert pa.user_id == pb.user_id
    assert (pa.device_id, pb.device_id) == (DEVICE_A, DEVICE_B)
    await w.service.check_session(pa)
    await w.service.check_session(pb)
    await w.service.logout(pa)
    with pytest.raises(SessionRevoked):
        await w.service.check_session(pa)
    await w.service.check_session(pb)


async def test_a_second_login_on_a_device_supersedes_the_first(w: World) -> None:
    first = w.principal(await w.log_in(DEVICE_A))
    second = w.principal(await w.log_in(DEVICE_A))
    assert first.token_id != second.token_id
    with pytest.raises(SessionRevoked) as info:
        await w.service.check_session(first)
    assert info.value.code == "session_revoked"
    await w.service.check_session(second)


async def test_logout_is_idempotent_and_a_stale_token_cannot_end_a_newer_session(
    w: World,
) -> None:
    stale = w.principal(await w.log_in(DEVICE_A))
    current = w.principal(await w.log_in(DEVICE_A))
    await w.service.logout(stale)
    await w.service.check_session(current)
    await w.service.logout(current)
    await w.service.logout(current)
    with pytest.raises(SessionRevoked):
        await w.service.check_session(current)
    relogin = w.principal(await w.log_in(DEVICE_A))
    await w.service.check_session(relogin)


async def test_a_principal_without_a_session_epoch_is_refused(w: World) -> None:
    plain = Principal(user_id="user-1", device_id=DEVICE_A, token_id="t", expires_at=0)
    with pytest.raises(Unauthenticated):
        await w.service.check_session(plain)


async def test_a_device_that_never_logged_in_has_no_session(w: World) -> None:
    principal = w.principal(await w.log_in(DEVICE_A))
    with pytest.raises(SessionRevoked):
        await w.service.check_session(attrs.evolve(principal, device_id=DEVICE_B))


# ----------------------------------------------------------------------------- lookup


async def test_lookup_by_phone_finds_a_registered_user(w: World) -> None:
    caller = w.principal(await w.log_in(DEVICE_A))
    entry = await w.service.lookup_by_phone(caller, "+44 (20) 7946-0958")
    assert (entry.user_id, entry.phone) == ("user-1", PHONE)
    with pytest.raises(NotFound):
        await w.service.lookup_by_phone(caller, "+14155550100")
    with pytest.raises(InvalidInput):
        await w.service.lookup_by_phone(caller, "not a phone")


async def test_lookups_are_limited_per_caller() -> None:
    w = world(IdentityConfig(lookups_per_user=2))
    caller = w.principal(await w.log_in(DEVICE_A))
    for _ in range(2):
        await w.service.lookup_by_phone(caller, PHONE)
    with pytest.raises(RateLimited):
        await w.service.lookup_by_phone(caller, PHONE)


# ----------------------------------------------------------------------------- dev inbox


async def test_the_dev_inbox_serves_the_latest_code(w: World) -> None:
    with pytest.raises(NotFound):
        await w.service.dev_latest_code(PHONE)
    code = await w.code_for()
    assert await w.service.dev_latest_code("+44 20 7946 0958") == code


async def test_without_a_dev_inbox_there_is_no_code_to_read(w: World) -> None:
    service = IdentityService(
        config=IdentityConfig(),
        codes=OtpCodes(derive_otp_key(SECRET)),
        tokens=w.tokens,
        otps=w.otps,
        limiter=InMemoryRateLimiter(w.clock),
        sender=w.sender,
        users=w.users,
        devices=w.devices,
        clock=w.clock,
    )
    await service.request_otp(PHONE, ADDRESS)
    with pytest.raises(NotFound, match="disabled"):
        await service.dev_latest_code(PHONE)
