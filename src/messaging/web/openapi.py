"""``/openapi.json``: the OpenAPI 3.1 document built from every module's ``Operation`` list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from messaging.protocol.http import ERROR_SCHEMA, Operation

COMMON_ERRORS = {
    422: "Invalid input",
    429: "Rate limited (see Retry-After)",
    503: "A dependency is unavailable; retriable",
}


def document(operations: Sequence[Operation], *, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        responses: dict[str, Any] = {}
        for status, (description, schema) in sorted(op.responses.items()):
            entry: dict[str, Any] = {"description": description}
            if schema is not None:
                entry["content"] = {"application/json": {"schema": schema}}
            responses[str(status)] = entry
        errors = dict(COMMON_ERRORS)
        if op.authenticated:
            errors[401] = "Missing or invalid access token"
        for status, description in errors.items():
            responses.setdefault(
                str(status),
                {
                    "description": description,
                    "content": {"application/json": {"schema": ERROR_SCHEMA}},
                },
            )
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "responses": responses,
        }
        if op.parameters:
            operation["parameters"] = list(op.parameters)
        if op.request_body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": op.request_body}},
            }
        operation["security"] = [{"bearer": []}] if op.authenticated else []
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "messaging", "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
        },
    }


def routes(operations: Sequence[Operation], *, version: str) -> list[Route]:
    doc = document(operations, version=version)

    async def openapi(_: Request) -> JSONResponse:
        return JSONResponse(doc)

    return [Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)]
