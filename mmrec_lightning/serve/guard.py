"""What the HTTP processes check before a request reaches a worker: its size, its content type, and that a
JSON body is JSON — each refused with a 4xx and one message (LitServe would answer a body it cannot parse
with a 500)."""

from __future__ import annotations

import json
from collections.abc import Collection

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestGuard:
    """ASGI middleware over the POST endpoints in ``json_paths`` (bodies of JSON) and ``multipart_paths``
    (JSON or a multipart form).

    Args:
        app: the application.
        max_bytes: the largest body accepted (413 beyond; announced sizes are refused before reading).
        json_paths: endpoints that take JSON.
        multipart_paths: endpoints that also take ``multipart/form-data``.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, json_paths: Collection[str], multipart_paths: Collection[str] = ()
    ) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.json_paths, self.multipart_paths = set(json_paths), set(multipart_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in self.json_paths | self.multipart_paths:
            await self.app(scope, receive, send)
            return
        problem, body = await self._check(scope, receive)
        if problem is not None:
            status, message = problem
            await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:  # the body read here, then whatever else the client sends
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _check(self, scope: Scope, receive: Receive) -> tuple[tuple[int, str] | None, bytes]:
        headers = Headers(scope=scope)
        too_large = (413, f"the body is larger than the {self.max_bytes:,} bytes this server accepts")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return too_large, b""
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        multipart = scope["path"] in self.multipart_paths and kind == "multipart/form-data"
        if kind != "application/json" and not multipart:
            accepted = "application/json" + (" or multipart/form-data" if scope["path"] in self.multipart_paths else "")
            return (415, f"Content-Type {kind or 'missing'}: {scope['path']} takes {accepted}"), b""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return (400, "the client disconnected before sending the whole body"), b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return too_large, b""
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not multipart:
            try:
                json.loads(body)
            except ValueError as error:  # also bytes that are not UTF-8
                return (400, f"the body is not valid JSON ({error})"), b""
        return None, body
