"""A REST operation's description, for the OpenAPI document the app serves.

Each module that serves REST routes lists its operations next to them; the composition root
collects them into ``/openapi.json``. Schemas are JSON Schema dicts (OpenAPI 3.1).
"""

from __future__ import annotations

from typing import Any

import attrs

JsonSchema = dict[str, Any]

ERROR_SCHEMA: JsonSchema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "retriable"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "retriable": {"type": "boolean"},
            },
        }
    },
}


@attrs.frozen(kw_only=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    request_body: JsonSchema | None = None
    parameters: tuple[dict[str, Any], ...] = ()
    responses: dict[int, tuple[str, JsonSchema | None]] = attrs.field(factory=dict)
    authenticated: bool = True
