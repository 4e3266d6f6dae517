"""OpenAI-style error answers and whole bodies read or sent within their limits."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping

from fastapi.responses import Response
from starlette.types import Send


def error_body(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    """OpenAI's error shape, which OpenAI client libraries turn into their exceptions."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def error_response(status: int, message: str, type_: str, code: str,
                   headers: Mapping[str, str] | None = None, param: str | None = None) -> Response:
    return Response(error_body(message, type_, code, param), status, headers, media_type="application/json")


def invalid(param: str, message: str, code: str) -> Response:
    """A 400 naming the request's field, as OpenAI answers one."""
    return error_response(400, message, "invalid_request_error", code, param=param)


def loggable(text: str) -> str:
    """The text with what UTF-8 cannot encode (a lone surrogate a client sent) replaced: a log line must be written."""
    return text.encode("utf-8", "replace").decode("utf-8")


def engine_fault(status: int) -> bool:
    """A 5xx, or the engine refusing the gateway's own key: a 503 for the client, whose request was not wrong."""
    return status >= 500 or status in (401, 403)


async def read_capped(declared: str, chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """A whole body, or None when it is larger than `limit` (by its Content-Length, or once that much has come):
    no more than that is read. A request's body and a whole answer of the engine's are read by it."""
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def send_whole(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
