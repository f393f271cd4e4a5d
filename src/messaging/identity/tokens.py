"""Access tokens: HS256 JWTs bound to a user, a device and that device's session epoch.

Claims: ``sub`` (user id), ``did`` (device id), ``sep`` (session epoch), ``iat``, ``exp``, ``jti``,
``iss`` and ``aud`` (both ``"messaging"``). Verification pins the algorithm (``algorithms=
["HS256"]``: a token's own ``alg`` header, ``none`` included, is never trusted), checks the
signature, issuer and audience with PyJWT, and checks ``iat``/``exp`` against the injected clock
(PyJWT reads the wall clock itself, which a test cannot move). Every refusal is
:class:`~messaging.identity.errors.TokenInvalid` (401, ``token_expired`` for an expired one); the
reason is in its message.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt

from messaging.domain.errors import DeviceMismatch
from messaging.identity.errors import TokenExpired, TokenInvalid
from messaging.identity.model import DEVICE_ID, IssuedToken, SessionPrincipal
from messaging.identity.ports import Clock

ALGORITHM = "HS256"
ISSUER = "messaging"
AUDIENCE = "messaging"
REQUIRED_CLAIMS = ("sub", "did", "sep", "iat", "exp", "jti", "iss", "aud")
CLOCK_SKEW_SECONDS = 60  # how far in the future an ``iat`` may be (app instances' clocks differ)


class JwtTokens:
    """Issues access tokens and verifies them (implements ``protocol.identity.TokenVerifier``)."""

    def __init__(self, secret: str, ttl_seconds: int, *, clock: Clock = time.time) -> None:
        if not secret:
            raise ValueError("the token secret must not be empty")
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def issue(self, user_id: str, device_id: str, session_epoch: int) -> IssuedToken:
        now = int(self._clock())
        token_id = secrets.token_urlsafe(16)
        claims = {
            "sub": user_id,
            "did": device_id,
            "sep": session_epoch,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": token_id,
            "iss": ISSUER,
            "aud": AUDIENCE,
        }
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return IssuedToken(
            token=token,
            token_id=token_id,
            expires_at=now + self.ttl_seconds,
            expires_in=self.ttl_seconds,
        )

    def verify(self, token: str) -> SessionPrincipal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    # Checked below against self._clock, not by PyJWT against the wall clock.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"invalid access token: {exc}") from None
        return self._principal(claims)

    def verify_for_device(self, token: str, device_id: str) -> SessionPrincipal:
        """As :meth:`verify`, and the token must have been issued to ``device_id``
        (:class:`~messaging.identity.errors.DeviceMismatch` otherwise)."""
        principal = self.verify(token)
        if principal.device_id != device_id:
            raise DeviceMismatch("the access token was issued to another device")
        return principal

    def _principal(self, claims: dict[str, Any]) -> SessionPrincipal:
        sub, did, sep, jti = claims["sub"], claims["did"], claims["sep"], claims["jti"]
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(sub, str) or not sub:
            raise TokenInvalid("invalid access token: claim 'sub' must be a non-empty string")
        if not isinstance(did, str) or DEVICE_ID.fullmatch(did) is None:
            raise TokenInvalid("invalid access token: claim 'did' is not a device id")
        if not isinstance(jti, str) or not jti:
            raise TokenInvalid("invalid access token: claim 'jti' must be a non-empty string")
        for name, value in (("sep", sep), ("iat", iat), ("exp", exp)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TokenInvalid(f"invalid access token: claim '{name}' must be an integer")
        now = self._clock()
        if exp <= now:
            raise TokenExpired("access token expired: log in again")
        if iat > now + CLOCK_SKEW_SECONDS:
            raise TokenInvalid("invalid access token: issued in the future")
        return SessionPrincipal(
            user_id=sub, device_id=did, token_id=jti, expires_at=exp, session_epoch=sep
        )
