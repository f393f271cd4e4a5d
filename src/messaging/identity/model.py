"""Identity's values: pure data, no I/O."""

from __future__ import annotations

import re

import attrs

from messaging.domain.errors import InvalidInput
from messaging.protocol.identity import Principal

DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
OTP_DIGITS = 6
OTP_CODE = re.compile(rf"[0-9]{{{OTP_DIGITS}}}")


def validate_device_id(raw: str) -> str:
    """A client-generated device id: 8 to 64 characters of ``A-Z a-z 0-9 _ -``."""
    if DEVICE_ID.fullmatch(raw) is None:
        raise InvalidInput(
            "device_id must be 8 to 64 characters of letters, digits, '_' or '-' "
            "(generate it once per installation, e.g. a UUID)"
        )
    return raw


def validate_otp_code(raw: str) -> str:
    if OTP_CODE.fullmatch(raw) is None:
        raise InvalidInput(f"code must be exactly {OTP_DIGITS} digits")
    return raw


@attrs.frozen
class SessionPrincipal(Principal):
    """A principal from one of our tokens: it also names the device session it belongs to."""

    session_epoch: int


@attrs.frozen(kw_only=True)
class OtpChallenge:
    """A pending code as the store holds it: never the code, only its keyed hash."""

    digest: str  # hex HMAC-SHA256 over (phone, code)
    attempts: int  # tries so far, this one included
    expires_at: float  # seconds since the epoch, by the service's clock


@attrs.frozen(kw_only=True)
class RateDecision:
    allowed: bool
    count: int  # hits in the current window, this one included
    retry_after_seconds: int  # until the window ends


@attrs.frozen(kw_only=True)
class IssuedToken:
    token: str
    token_id: str
    expires_at: int
    expires_in: int


@attrs.frozen(kw_only=True)
class Session:
    """What a successful verification gives the client."""

    user_id: str
    device_id: str
    access_token: str
    expires_in: int
    new_user: bool


@attrs.frozen(kw_only=True)
class DirectoryEntry:
    user_id: str
    phone: str
