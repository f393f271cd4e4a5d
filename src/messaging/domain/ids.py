"""Identifiers: their formats and how new ones are made."""

from __future__ import annotations

import hashlib
import re
import uuid

from messaging.domain.errors import InvalidInput

_CLIENT_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_CHAT_ID = re.compile(r"^[dg]_[0-9a-f]{32}$")
_USER_ID = re.compile(r"^u_[0-9a-f]{32}$")


def new_user_id() -> str:
    return f"u_{uuid.uuid4().hex}"


def new_group_id() -> str:
    return f"g_{uuid.uuid4().hex}"


def direct_chat_id(user_a: str, user_b: str) -> str:
    """The one 1:1 chat of two users: derived from the pair, so creating it twice finds it."""
    low, high = sorted((user_a, user_b))
    return "d_" + hashlib.sha256(f"{low}\x00{high}".encode()).hexdigest()[:32]


def is_direct_chat_id(chat_id: str) -> bool:
    """A 1:1 chat: its two members are fixed at creation and never change."""
    return chat_id.startswith("d_")


def check_client_message_id(value: str) -> str:
    if not _CLIENT_MESSAGE_ID.match(value):
        raise InvalidInput(
            "client_message_id must be 1 to 64 characters of letters, digits, '_', '-', '.', ':'"
        )
    return value


def check_chat_id(value: str) -> str:
    if not _CHAT_ID.match(value):
        raise InvalidInput(f"chat_id {value[:80]!r} is not a chat id")
    return value


def check_user_id(value: str) -> str:
    if not _USER_ID.match(value):
        raise InvalidInput(f"user_id {value[:80]!r} is not a user id")
    return value
