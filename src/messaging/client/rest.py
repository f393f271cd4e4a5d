"""REST client: login (OTP), users and chats, history (``/openapi.json`` is the contract).

One :class:`RestClient` per user: :meth:`RestClient.verify` (or :meth:`RestClient.login_dev`,
which reads the code from the dev-only ``GET /v1/dev/otp``) stores the :class:`Session` and every
later call sends ``Authorization: Bearer <token>``. A non-2xx answer raises
:class:`~messaging.client.errors.ClientApiError` with the body's ``code``, ``message`` and
``retriable``. Environment proxies are ignored unless ``trust_env=True`` (the lab talks to
127.0.0.1).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import httpx

from messaging.client.errors import ClientApiError, ClientError
from messaging.domain.model import Message
from messaging.protocol.frames import WS_PATH
from messaging.protocol.wire import message_from_json

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


@attrs.frozen(kw_only=True)
class Session:
    token: str
    user_id: str
    device_id: str
    phone: str
    expires_at: float = 0.0
    """``time.time()`` when the token expires (0: unknown)."""


@attrs.frozen(kw_only=True)
class ChatInfo:
    """A chat as REST returns it; the summary fields are set only by the chat list."""

    chat_id: str
    kind: str
    title: str
    head: int
    created_by: str | None = None
    created_at_ms: int | None = None
    visible_head: int | None = None
    joined_sequence: int | None = None
    last_acked_sequence: int | None = None
    unread: int | None = None
    last_message_at_ms: int | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChatInfo:
        def opt_int(name: str) -> int | None:
            value = data.get(name)
            return int(value) if value is not None else None

        created_by = data.get("created_by")
        return cls(
            chat_id=str(data["chat_id"]),
            kind=str(data["kind"]),
            title=str(data.get("title", "")),
            head=int(data.get("head", 0)),
            created_by=str(created_by) if created_by is not None else None,
            created_at_ms=opt_int("created_at_ms"),
            visible_head=opt_int("visible_head"),
            joined_sequence=opt_int("joined_sequence"),
            last_acked_sequence=opt_int("last_acked_sequence"),
            unread=opt_int("unread"),
            last_message_at_ms=opt_int("last_message_at_ms"),
            raw=dict(data),
        )


@attrs.frozen(kw_only=True)
class MessagePage:
    chat_id: str
    messages: tuple[Message, ...]
    visible_head: int
    has_more: bool


def ws_url_for(base_url: str) -> str:
    """``http://host:port/...`` -> ``ws://host:port/v1/ws`` (``https`` -> ``wss``)."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    return urlunsplit((scheme, parts.netloc, WS_PATH, "", ""))


class RestClient:
    """Async REST client over one ``httpx.AsyncClient`` (close it: ``async with`` or aclose)."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        session: Session | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, transport=transport, trust_env=trust_env
        )

    @property
    def ws_url(self) -> str:
        return ws_url_for(self.base_url)

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------ identity

    async def request_otp(self, phone: str) -> None:
        await self._call("POST", "/v1/auth/otp", json={"phone": phone}, auth=False)

    async def dev_otp(self, phone: str) -> str:
        """The last code sent to ``phone`` (dev environments only)."""
        body = await self._call("GET", "/v1/dev/otp", params={"phone": phone}, auth=False)
        return str(body["code"])

    async def verify(self, phone: str, code: str, device_id: str) -> Session:
        body = await self._call(
            "POST",
            "/v1/auth/verify",
            json={"phone": phone, "code": code, "device_id": device_id},
            auth=False,
        )
        expires_in = body.get("expires_in")
        self.session = Session(
            token=str(body["access_token"]),
            user_id=str(body["user_id"]),
            device_id=str(body.get("device_id", device_id)),
            phone=phone,
            expires_at=time.time() + float(expires_in) if expires_in is not None else 0.0,
        )
        return self.session

    async def login_dev(self, phone: str, device_id: str) -> Session:
        """The whole dev login: request an OTP, read it back, verify it."""
        await self.request_otp(phone)
        code = await self.dev_otp(phone)
        return await self.verify(phone, code, device_id)

    async def user_by_phone(self, phone: str) -> str:
        body = await self._call("GET", "/v1/users/by-phone", params={"phone": phone})
        return str(body["user_id"])

    # ------------------------------------------------------------ chats

    async def create_direct_chat(self, user_id: str) -> ChatInfo:
        body = await self._call("POST", "/v1/chats/direct", json={"user_id": user_id})
        return ChatInfo.from_json(body["chat"])

    async def create_group(self, title: str, member_ids: Iterable[str]) -> ChatInfo:
        body = await self._call(
            "POST", "/v1/chats/groups", json={"title": title, "member_ids": list(member_ids)}
        )
        return ChatInfo.from_json(body["chat"])

    async def list_chats(self) -> list[ChatInfo]:
        body = await self._call("GET", "/v1/chats")
        return [ChatInfo.from_json(chat) for chat in body["chats"]]

    async def messages(
        self,
        chat_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
    ) -> MessagePage:
        params = {
            name: value
            for name, value in (("after", after), ("before", before), ("limit", limit))
            if value is not None
        }
        body = await self._call("GET", f"/v1/chats/{chat_id}/messages", params=params)
        return MessagePage(
            chat_id=str(body.get("chat_id", chat_id)),
            messages=tuple(message_from_json(item) for item in body["messages"]),
            visible_head=int(body["visible_head"]),
            has_more=bool(body["has_more"]),
        )

    async def add_members(self, chat_id: str, user_ids: Iterable[str]) -> dict[str, Any]:
        return await self._call(
            "POST", f"/v1/chats/{chat_id}/members", json={"user_ids": list(user_ids)}
        )

    async def remove_member(self, chat_id: str, user_id: str) -> None:
        await self._call("DELETE", f"/v1/chats/{chat_id}/members/{user_id}")

    # ------------------------------------------------------------ plumbing

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        auth: bool = True,
    ) -> dict[str, Any]:
        headers = {}
        if auth:
            if self.session is None:
                raise ClientError(f"{method} {path} needs a session: log in first")
            headers["Authorization"] = f"Bearer {self.session.token}"
        response = await self._http.request(method, path, json=json, params=params, headers=headers)
        if not response.is_success:
            raise _api_error(response)
        if not response.content:
            return {}
        body = response.json()
        if not isinstance(body, dict):
            raise ClientApiError(
                response.status_code, "invalid_response", "expected a JSON object", retriable=False
            )
        return body


def _api_error(response: httpx.Response) -> ClientApiError:
    status = response.status_code
    code, message, retriable = f"http_{status}", response.reason_phrase, status >= 500
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code", code))
        message = str(error.get("message", message))
        retriable = bool(error.get("retriable", retriable))
    return ClientApiError(status, code, message, retriable=retriable)
