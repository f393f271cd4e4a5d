"""The identity service: phone + OTP login, device sessions, lookup by phone.

Pure logic over the ports in :mod:`messaging.identity.ports`; the clock and the user-id source
are injected, so unit tests drive it with in-memory fakes and a fake clock.

Login: ``request_otp`` (rate-limited per client address and per phone) stores a keyed hash of a
fresh code and sends the code; ``verify_otp`` counts the try atomically *before* comparing, burns
the code after ``otp_max_attempts`` wrong tries, and on a match consumes it with a
compare-and-delete, so of two concurrent verifies with the right code exactly one wins. The first
successful login of a phone creates its user (a conditional write decides concurrent firsts);
every login starts a new session epoch on the device, carried by the token as ``sep``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import attrs

from messaging.domain import ids
from messaging.domain.errors import NotFound, RateLimited, Unauthenticated
from messaging.domain.phone import mask_phone, normalize_phone
from messaging.identity.errors import OtpAttemptsExceeded, OtpExpired, OtpInvalid, SessionRevoked
from messaging.identity.model import (
    DirectoryEntry,
    OtpChallenge,
    Session,
    SessionPrincipal,
    validate_device_id,
    validate_otp_code,
)
from messaging.identity.otp import OtpCodes
from messaging.identity.ports import (
    Clock,
    DeviceSessions,
    DevOtpInbox,
    OtpSender,
    OtpStore,
    RateLimiter,
    UserDirectory,
)
from messaging.identity.tokens import JwtTokens
from messaging.protocol.identity import Principal

log = logging.getLogger(__name__)


def _default_verifies_per_address(config: IdentityConfig) -> int:
    # Each code an address may request gets its full number of tries, and no more.
    return config.otp_requests_per_address * config.otp_max_attempts


@attrs.frozen(kw_only=True)
class IdentityConfig:
    """Plain values from the composition root (identity never reads settings itself)."""

    otp_ttl_seconds: int = 300
    otp_max_attempts: int = 5
    otp_requests_per_phone: int = 5
    otp_requests_per_address: int = 30
    rate_window_seconds: int = 600
    verifies_per_address: int = attrs.field(
        default=attrs.Factory(_default_verifies_per_address, takes_self=True)
    )
    lookups_per_user: int = 120


@attrs.frozen(kw_only=True)
class OtpRequested:
    phone: str
    expires_in: int


class IdentityService:
    def __init__(
        self,
        *,
        config: IdentityConfig,
        codes: OtpCodes,
        tokens: JwtTokens,
        otps: OtpStore,
        limiter: RateLimiter,
        sender: OtpSender,
        users: UserDirectory,
        devices: DeviceSessions,
        dev_inbox: DevOtpInbox | None = None,
        clock: Clock = time.time,
        new_user_id: Callable[[], str] = ids.new_user_id,
    ) -> None:
        self._config = config
        self._codes = codes
        self._tokens = tokens
        self._otps = otps
        self._limiter = limiter
        self._sender = sender
        self._users = users
        self._devices = devices
        self._dev_inbox = dev_inbox
        self._clock = clock
        self._new_user_id = new_user_id

    async def request_otp(self, raw_phone: str, address: str) -> OtpRequested:
        phone = normalize_phone(raw_phone)
        window = self._config.rate_window_seconds
        await self._limit(
            f"otp:addr:{address}",
            self._config.otp_requests_per_address,
            "too many code requests from this address",
        )
        await self._limit(
            f"otp:phone:{phone}",
            self._config.otp_requests_per_phone,
            f"too many code requests for this phone (at most "
            f"{self._config.otp_requests_per_phone} per {window}s)",
        )
        code = self._codes.generate()
        ttl = self._config.otp_ttl_seconds
        challenge = OtpChallenge(
            digest=self._codes.digest(phone, code), attempts=0, expires_at=self._clock() + ttl
        )
        await self._otps.put(phone, challenge, ttl)
        await self._sender.send(phone, code, ttl)
        return OtpRequested(phone=phone, expires_in=ttl)

    async def verify_otp(
        self, raw_phone: str, code: str, raw_device_id: str, address: str
    ) -> Session:
        phone = normalize_phone(raw_phone)
        validate_otp_code(code)
        device_id = validate_device_id(raw_device_id)
        await self._limit(
            f"verify:addr:{address}",
            self._config.verifies_per_address,
            "too many verification attempts from this address",
        )
        challenge = await self._otps.attempt(phone)
        if challenge is None:
            raise OtpExpired(
                "no code is pending for this phone (expired, used, or never requested): "
                "request a new one"
            )
        if challenge.attempts > self._config.otp_max_attempts:
            await self._otps.consume(phone, challenge.digest)
            raise OtpAttemptsExceeded("too many wrong codes: this code is void, request a new one")
        if self._clock() >= challenge.expires_at:
            await self._otps.consume(phone, challenge.digest)
            raise OtpExpired("the code expired: request a new one")
        if not self._codes.matches(phone, code, challenge.digest):
            left = self._config.otp_max_attempts - challenge.attempts
            raise OtpInvalid(f"wrong code ({left} tries left)")
        if not await self._otps.consume(phone, challenge.digest):
            raise OtpExpired("the code was already used: request a new one")
        return await self._log_in(phone, device_id)

    async def _log_in(self, phone: str, device_id: str) -> Session:
        now = self._clock()
        user_id = await self._users.find(phone)
        new_user = False
        if user_id is None:
            candidate = self._new_user_id()
            user_id = await self._users.create(phone, candidate, now)
            new_user = user_id == candidate
        epoch = await self._devices.begin(user_id, device_id, now)
        issued = self._tokens.issue(user_id, device_id, epoch)
        log.info(
            "login: user %s device %s epoch %d (%s, phone %s)",
            user_id,
            device_id,
            epoch,
            "new user" if new_user else "existing user",
            mask_phone(phone),
        )
        return Session(
            user_id=user_id,
            device_id=device_id,
            access_token=issued.token,
            expires_in=issued.expires_in,
            new_user=new_user,
        )

    async def lookup_by_phone(self, principal: Principal, raw_phone: str) -> DirectoryEntry:
        """The user with this phone number, for an authenticated caller (rate-limited per
        caller, since answering at all tells whether a number is registered)."""
        phone = normalize_phone(raw_phone)
        await self._limit(
            f"lookup:user:{principal.user_id}",
            self._config.lookups_per_user,
            "too many phone lookups",
        )
        user_id = await self._users.find(phone)
        if user_id is None:
            raise NotFound("no user has this phone number")
        return DirectoryEntry(user_id=user_id, phone=phone)

    async def logout(self, principal: Principal) -> None:
        """End the token's device session: every token of it stops passing ``check_session``.
        Idempotent; a token of an older session does not end the newer one."""
        ended = await self._devices.end(
            principal.user_id, principal.device_id, self._epoch(principal)
        )
        log.info(
            "logout: user %s device %s (%s)",
            principal.user_id,
            principal.device_id,
            "ended" if ended else "already ended",
        )

    async def check_session(self, principal: Principal) -> None:
        """Raise :class:`SessionRevoked` unless the token's session is still the device's
        current one (for the WebSocket gateway at connect; REST stays stateless)."""
        current = await self._devices.current(principal.user_id, principal.device_id)
        if current != self._epoch(principal):
            raise SessionRevoked(
                "this session ended (logout, or a newer login on this device): log in again"
            )

    async def dev_latest_code(self, raw_phone: str) -> str:
        """Development only: the last code sent to ``raw_phone``."""
        if self._dev_inbox is None:
            raise NotFound("the development OTP inbox is disabled")
        phone = normalize_phone(raw_phone)
        code = await self._dev_inbox.latest(phone)
        if code is None:
            raise NotFound("no code was sent to this phone recently")
        return code

    @staticmethod
    def _epoch(principal: Principal) -> int:
        if not isinstance(principal, SessionPrincipal):
            raise Unauthenticated("the principal carries no session epoch")
        return principal.session_epoch

    async def _limit(self, bucket: str, limit: int, message: str) -> None:
        decision = await self._limiter.hit(bucket, limit, self._config.rate_window_seconds)
        if not decision.allowed:
            retry = max(1, decision.retry_after_seconds)
            raise RateLimited(f"{message}; retry in {retry}s", retry)
