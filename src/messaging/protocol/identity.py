"""What the other planes know of identity: who is calling, from which device."""

from __future__ import annotations

from typing import Protocol

import attrs


@attrs.frozen
class Principal:
    """An authenticated caller: a user on one device, holding one access token."""

    user_id: str
    device_id: str
    token_id: str
    expires_at: int


class TokenVerifier(Protocol):
    """Verifies an access token; raises ``Unauthenticated`` when it is not acceptable."""

    def verify(self, token: str) -> Principal: ...

    def verify_for_device(self, token: str, device_id: str) -> Principal:
        """As ``verify``, and the token must belong to ``device_id`` (else ``DeviceMismatch``)."""
        ...


class SessionChecker(Protocol):
    async def check_session(self, principal: Principal) -> None:
        """Raise ``Unauthenticated`` unless the principal's device session is still current
        (logout and a newer login on the device end it)."""
        ...
