"""Identity's refusals: each a domain error with its own stable ``code``.

They subclass the domain errors, so the REST mapping (``web/errors.py``) gives 401 or 422 without
knowing them, and a client (or the WebSocket gateway, through ``code``) can tell them apart.
"""

from __future__ import annotations

from messaging.domain.errors import Unauthenticated


class OtpInvalid(Unauthenticated):
    """The code does not match the one sent to this phone."""

    code = "otp_invalid"


class OtpExpired(Unauthenticated):
    """No code is pending for this phone: it expired, was used, was burned or never requested."""

    code = "otp_expired"


class OtpAttemptsExceeded(Unauthenticated):
    """Too many wrong tries; the code is burned, even the right one now fails."""

    code = "otp_attempts_exceeded"


class TokenInvalid(Unauthenticated):
    """The access token is malformed, forged, expired or lacks a claim."""

    code = "token_invalid"


class TokenExpired(TokenInvalid):
    """The access token was valid and is past its ``exp``: log in again."""

    code = "token_expired"


class SessionRevoked(Unauthenticated):
    """A valid token whose device session ended: logout, or a newer login on that device."""

    code = "session_revoked"
