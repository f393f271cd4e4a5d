"""Identity's REST routes (``/v1/auth/*``, ``/v1/users/by-phone``) and their OpenAPI operations.

Routes raise domain errors; the app's handlers (``web/errors.py``) turn them into HTTP answers.
The development route ``GET /v1/dev/otp`` exists only when ``dev_routes`` is true (the ``dev``
sender); with any other sender it is not routed at all, so it answers 404 like any unknown path.

The client address used for rate limits is ``request.client.host``: uvicorn sets it from
``X-Forwarded-For`` only when the peer is a trusted proxy (``FORWARDED_ALLOW_IPS``).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from messaging.domain.errors import InvalidInput
from messaging.domain.phone import normalize_phone
from messaging.identity.model import DEVICE_ID, OTP_DIGITS
from messaging.identity.service import IdentityService
from messaging.protocol.http import ERROR_SCHEMA, Operation
from messaging.protocol.identity import Principal, TokenVerifier
from messaging.web.requests import authenticate, field, json_object

TAG = "identity"
NO_STORE = {"Cache-Control": "no-store"}  # responses carrying a token or a code (RFC 6749 5.1)


def routes(
    get_service: Callable[[Request], IdentityService],
    get_verifier: Callable[[Request], TokenVerifier],
    *,
    dev_routes: bool,
) -> list[Route]:
    def principal(request: Request) -> Principal:
        return authenticate(request, get_verifier(request))

    async def request_otp(request: Request) -> Response:
        body = await json_object(request)
        sent = await get_service(request).request_otp(field(body, "phone", str), _address(request))
        return JSONResponse({"phone": sent.phone, "expires_in": sent.expires_in}, 202)

    async def verify(request: Request) -> Response:
        body = await json_object(request)
        session = await get_service(request).verify_otp(
            field(body, "phone", str),
            field(body, "code", str),
            field(body, "device_id", str),
            _address(request),
        )
        answer = {
            "access_token": session.access_token,
            "token_type": "bearer",
            "expires_in": session.expires_in,
            "user_id": session.user_id,
            "device_id": session.device_id,
        }
        return JSONResponse(answer, headers=NO_STORE)

    async def current_session(request: Request) -> Response:
        caller = principal(request)
        await get_service(request).check_session(caller)
        return JSONResponse(
            {
                "user_id": caller.user_id,
                "device_id": caller.device_id,
                "expires_at": caller.expires_at,
            }
        )

    async def logout(request: Request) -> Response:
        await get_service(request).logout(principal(request))
        return Response(status_code=204)

    async def by_phone(request: Request) -> Response:
        caller = principal(request)
        entry = await get_service(request).lookup_by_phone(caller, _query(request, "phone"))
        return JSONResponse({"user_id": entry.user_id, "phone": entry.phone})

    async def dev_otp(request: Request) -> Response:
        phone = normalize_phone(_query(request, "phone"))
        code = await get_service(request).dev_latest_code(phone)
        return JSONResponse({"phone": phone, "code": code}, headers=NO_STORE)

    found = [
        Route("/v1/auth/otp", request_otp, methods=["POST"]),
        Route("/v1/auth/verify", verify, methods=["POST"]),
        Route("/v1/auth/session", current_session, methods=["GET"]),
        Route("/v1/auth/logout", logout, methods=["POST"]),
        Route("/v1/users/by-phone", by_phone, methods=["GET"]),
    ]
    if dev_routes:
        found.append(Route("/v1/dev/otp", dev_otp, methods=["GET"]))
    return found


def _query(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if value is None:
        raise InvalidInput(f"query parameter '{name}' is required")
    return value


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# ------------------------------------------------------------------------------ OpenAPI
PHONE_SCHEMA = {
    "type": "string",
    "description": "E.164 (a leading '+', 8 to 15 digits); spaces, dashes, dots and "
    "parentheses are ignored",
    "examples": ["+14155550100", "+44 20 7946 0958"],
}
DEVICE_ID_SCHEMA = {"type": "string", "pattern": f"^{DEVICE_ID.pattern}$"}
PHONE_QUERY = {"name": "phone", "in": "query", "required": True, "schema": PHONE_SCHEMA}
SESSION_SCHEMA = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "user_id", "device_id"],
    "properties": {
        "access_token": {"type": "string", "description": "HS256 JWT bound to the device"},
        "token_type": {"const": "bearer"},
        "expires_in": {"type": "integer", "description": "seconds"},
        "user_id": {"type": "string"},
        "device_id": DEVICE_ID_SCHEMA,
    },
}
ERROR_401 = "Missing, invalid or expired access token (token_invalid, token_expired)"


def operations(*, dev_routes: bool) -> list[Operation]:
    """The identity routes' operations; the dev route only when it is served."""
    found = [
        Operation(
            method="POST",
            path="/v1/auth/otp",
            operation_id="requestOtp",
            summary="Send a one-time code to a phone (rate-limited per phone and per address)",
            tag=TAG,
            authenticated=False,
            request_body={
                "type": "object",
                "required": ["phone"],
                "properties": {"phone": PHONE_SCHEMA},
            },
            responses={
                202: (
                    "A code was sent; it expires after expires_in seconds",
                    {
                        "type": "object",
                        "required": ["phone", "expires_in"],
                        "properties": {
                            "phone": {"type": "string", "description": "normalised (E.164)"},
                            "expires_in": {"type": "integer"},
                        },
                    },
                )
            },
        ),
        Operation(
            method="POST",
            path="/v1/auth/verify",
            operation_id="verifyOtp",
            summary="Exchange a phone's code for an access token bound to a device; creates "
            "the user on the phone's first login",
            tag=TAG,
            authenticated=False,
            request_body={
                "type": "object",
                "required": ["phone", "code", "device_id"],
                "properties": {
                    "phone": PHONE_SCHEMA,
                    "code": {"type": "string", "pattern": f"^[0-9]{{{OTP_DIGITS}}}$"},
                    "device_id": DEVICE_ID_SCHEMA,
                },
            },
            responses={
                200: ("Logged in", SESSION_SCHEMA),
                401: (
                    "Wrong code (otp_invalid), none pending or expired (otp_expired), or too "
                    "many wrong tries (otp_attempts_exceeded)",
                    ERROR_SCHEMA,
                ),
            },
        ),
        Operation(
            method="GET",
            path="/v1/auth/session",
            operation_id="currentSession",
            summary="The caller's session, if it is still current (not logged out or "
            "replaced by a newer login on the device)",
            tag=TAG,
            responses={
                200: (
                    "The session is current",
                    {
                        "type": "object",
                        "required": ["user_id", "device_id", "expires_at"],
                        "properties": {
                            "user_id": {"type": "string"},
                            "device_id": DEVICE_ID_SCHEMA,
                            "expires_at": {"type": "integer"},
                        },
                    },
                ),
                401: (ERROR_401 + ", or the session ended (session_revoked)", ERROR_SCHEMA),
            },
        ),
        Operation(
            method="POST",
            path="/v1/auth/logout",
            operation_id="logout",
            summary="End the caller's device session (idempotent)",
            tag=TAG,
            responses={204: ("The session ended", None)},
        ),
        Operation(
            method="GET",
            path="/v1/users/by-phone",
            operation_id="lookupUserByPhone",
            summary="The user registered with a phone number (authenticated and rate-limited: "
            "it reveals whether a number is registered)",
            tag=TAG,
            parameters=(PHONE_QUERY,),
            responses={
                200: (
                    "The user",
                    {
                        "type": "object",
                        "required": ["user_id", "phone"],
                        "properties": {"user_id": {"type": "string"}, "phone": {"type": "string"}},
                    },
                ),
                404: ("No user has this phone number", ERROR_SCHEMA),
            },
        ),
    ]
    if dev_routes:
        found.append(
            Operation(
                method="GET",
                path="/v1/dev/otp",
                operation_id="devLatestOtp",
                summary="DEVELOPMENT ONLY (the dev sender): the last code sent to a phone",
                tag="development",
                authenticated=False,
                parameters=(PHONE_QUERY,),
                responses={
                    200: (
                        "The last code",
                        {
                            "type": "object",
                            "required": ["phone", "code"],
                            "properties": {
                                "phone": {"type": "string"},
                                "code": {"type": "string"},
                            },
                        },
                    ),
                    404: ("No code was sent to this phone recently", ERROR_SCHEMA),
                },
            )
        )
    return found


OPERATIONS: list[Operation] = operations(dev_routes=False)
