"""REST for chat management and history (decision 8: consistency paths over REST)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from messaging.domain.errors import InvalidInput
from messaging.durability.chats import ChatService
from messaging.durability.config import HISTORY_MAX_LIMIT, TITLE_MAX_CHARS
from messaging.protocol.http import JsonSchema, Operation
from messaging.protocol.identity import TokenVerifier
from messaging.protocol.wire import (
    CHAT_SCHEMA,
    MESSAGE_SCHEMA,
    SUMMARY_SCHEMA,
    chat_json,
    message_json,
    summary_json,
)
from messaging.web.requests import authenticate, field, json_object, query_int

MAX_SEQUENCE = 2**53 - 1
_USER_ID: JsonSchema = {"type": "string", "pattern": "^u_[0-9a-f]{32}$"}
_CHAT_PATH = {
    "name": "chat_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[dg]_[0-9a-f]{32}$"},
}
_CHAT_RESPONSE: JsonSchema = {
    "type": "object",
    "required": ["chat"],
    "properties": {"chat": CHAT_SCHEMA},
}


def _string_list(body: dict[str, object], name: str, *, max_items: int) -> list[str]:
    values = field(body, name, list)
    if len(values) > max_items or not all(isinstance(v, str) for v in values):
        raise InvalidInput(f"field '{name}' must be a list of at most {max_items} user ids")
    return list(values)


def routes(
    chats: Callable[[Request], ChatService], verifier: Callable[[Request], TokenVerifier]
) -> list[Route]:
    async def create_direct(request: Request) -> JSONResponse:
        principal = authenticate(request, verifier(request))
        body = await json_object(request)
        chat, created = await chats(request).create_direct(
            principal.user_id, field(body, "user_id", str)
        )
        return JSONResponse({"chat": chat_json(chat)}, status_code=201 if created else 200)

    async def create_group(request: Request) -> JSONResponse:
        principal = authenticate(request, verifier(request))
        body = await json_object(request)
        title = field(body, "title", str)
        members = _string_list(body, "member_ids", max_items=10_000)
        chat = await chats(request).create_group(principal.user_id, title, members)
        return JSONResponse({"chat": chat_json(chat)}, status_code=201)

    async def list_chats(request: Request) -> JSONResponse:
        principal = authenticate(request, verifier(request))
        summaries = await chats(request).list_chats(principal.user_id)
        return JSONResponse({"chats": [summary_json(s) for s in summaries]})

    async def list_members(request: Request) -> JSONResponse:
        principal = authenticate(request, verifier(request))
        chat_id = request.path_params["chat_id"]
        await chats(request).member_view(principal.user_id, chat_id)
        return JSONResponse({"members": sorted(await chats(request).active_members(chat_id))})

    async def add_members(request: Request) -> JSONResponse:
        principal = authenticate(request, verifier(request))
        body = await json_object(request)
        added = await chats(request).add_members(
            principal.user_id,
            request.path_params["chat_id"],
            _string_list(body, "user_ids", max_items=10_000),
        )
        return JSONResponse({"added": added})

    async def remove_member(request: Request) -> JSONResponse:
        principal = authenticate(request, verifier(request))
        removed_at = await chats(request).remove_member(
            principal.user_id, request.path_params["chat_id"], request.path_params["user_id"]
        )
        return JSONResponse({"removed_after_sequence": removed_at})

    async def history(request: Request) -> JSONResponse:
        principal = authenticate(request, verifier(request))
        page = await chats(request).history(
            principal.user_id,
            request.path_params["chat_id"],
            after=query_int(request, "after", None, 0, MAX_SEQUENCE),
            before=query_int(request, "before", None, 1, MAX_SEQUENCE),
            limit=query_int(request, "limit", 50, 1, HISTORY_MAX_LIMIT) or 50,
        )
        return JSONResponse(
            {
                "chat_id": page.chat_id,
                "messages": [message_json(m) for m in page.messages],
                "visible_head": page.visible_head,
                "has_more": page.has_more,
            }
        )

    return [
        Route("/v1/chats", list_chats, methods=["GET"]),
        Route("/v1/chats/direct", create_direct, methods=["POST"]),
        Route("/v1/chats/groups", create_group, methods=["POST"]),
        Route("/v1/chats/{chat_id}/members", list_members, methods=["GET"]),
        Route("/v1/chats/{chat_id}/members", add_members, methods=["POST"]),
        Route("/v1/chats/{chat_id}/members/{user_id}", remove_member, methods=["DELETE"]),
        Route("/v1/chats/{chat_id}/messages", history, methods=["GET"]),
    ]


def _query(name: str, low: int, high: int, description: str) -> dict[str, object]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": low, "maximum": high},
    }


OPERATIONS: list[Operation] = [
    Operation(
        method="GET",
        path="/v1/chats",
        operation_id="listChats",
        summary="My chats with head, last_acked_sequence and unread count",
        tag="chats",
        responses={
            200: (
                "The caller's chats, most recently active first",
                {
                    "type": "object",
                    "required": ["chats"],
                    "properties": {"chats": {"type": "array", "items": SUMMARY_SCHEMA}},
                },
            )
        },
    ),
    Operation(
        method="POST",
        path="/v1/chats/direct",
        operation_id="createDirectChat",
        summary="Create (or find) the 1:1 chat with another user",
        tag="chats",
        request_body={
            "type": "object",
            "required": ["user_id"],
            "properties": {"user_id": _USER_ID},
        },
        responses={
            200: ("The chat existed", _CHAT_RESPONSE),
            201: ("The chat was created", _CHAT_RESPONSE),
            404: ("Unknown user", None),
        },
    ),
    Operation(
        method="POST",
        path="/v1/chats/groups",
        operation_id="createGroup",
        summary="Create a group with members (the caller is added)",
        tag="chats",
        request_body={
            "type": "object",
            "required": ["title", "member_ids"],
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": TITLE_MAX_CHARS},
                "member_ids": {"type": "array", "items": _USER_ID},
            },
        },
        responses={201: ("The group", _CHAT_RESPONSE), 404: ("Unknown user(s), named", None)},
    ),
    Operation(
        method="GET",
        path="/v1/chats/{chat_id}/members",
        operation_id="listMembers",
        summary="Active members of a chat (members only)",
        tag="chats",
        parameters=(_CHAT_PATH,),
        responses={
            200: (
                "Member user ids",
                {
                    "type": "object",
                    "required": ["members"],
                    "properties": {"members": {"type": "array", "items": _USER_ID}},
                },
            ),
            403: ("No longer a member (removed)", None),
            404: ("No such chat, or you were never in it (the same answer)", None),
        },
    ),
    Operation(
        method="POST",
        path="/v1/chats/{chat_id}/members",
        operation_id="addMembers",
        summary="Add members to a group (members only); they see messages from now on",
        tag="chats",
        parameters=(_CHAT_PATH,),
        request_body={
            "type": "object",
            "required": ["user_ids"],
            "properties": {"user_ids": {"type": "array", "items": _USER_ID}},
        },
        responses={
            200: (
                "Who was added",
                {
                    "type": "object",
                    "required": ["added"],
                    "properties": {"added": {"type": "array", "items": _USER_ID}},
                },
            ),
            403: ("No longer a member (removed), or a 1:1 chat", None),
            404: ("No such chat or you were never in it, or unknown user(s)", None),
        },
    ),
    Operation(
        method="DELETE",
        path="/v1/chats/{chat_id}/members/{user_id}",
        operation_id="removeMember",
        summary="Remove a member from a group, or leave it (members only)",
        tag="chats",
        parameters=(
            _CHAT_PATH,
            {"name": "user_id", "in": "path", "required": True, "schema": _USER_ID},
        ),
        responses={
            200: (
                "The member sees nothing after this sequence",
                {
                    "type": "object",
                    "required": ["removed_after_sequence"],
                    "properties": {"removed_after_sequence": {"type": "integer"}},
                },
            ),
            403: ("No longer a member (removed), or a 1:1 chat", None),
            404: ("No such chat or you were never in it, or the user is not a member", None),
        },
    ),
    Operation(
        method="GET",
        path="/v1/chats/{chat_id}/messages",
        operation_id="readHistory",
        summary="History in sequence order: after a sequence, before one, or the newest page",
        tag="messages",
        parameters=(
            _CHAT_PATH,
            _query("after", 0, MAX_SEQUENCE, "Messages with a greater sequence, ascending"),
            _query("before", 1, MAX_SEQUENCE, "The page just before this sequence"),
            _query("limit", 1, HISTORY_MAX_LIMIT, "Page size (default 50)"),
        ),
        responses={
            200: (
                "A page of messages in ascending sequence order",
                {
                    "type": "object",
                    "required": ["chat_id", "messages", "visible_head", "has_more"],
                    "properties": {
                        "chat_id": {"type": "string"},
                        "messages": {"type": "array", "items": MESSAGE_SCHEMA},
                        "visible_head": {"type": "integer"},
                        "has_more": {"type": "boolean"},
                    },
                },
            ),
            403: ("No longer a member (removed)", None),
            404: ("No such chat, or you were never in it (the same answer)", None),
        },
    ),
]
