"""A request-body cap for the whole server (an ASGI middleware, installed through the
FastAPI app Gradio builds: ``launch(app_kwargs={"middleware": [...]})``).

Gradio caps uploaded files (``max_file_size``) but not the JSON body of an API call, where
a client can put a base64 ``data:`` URL of any size. This refuses, with HTTP 413 and a
one-line JSON ``detail``, any request whose ``Content-Length`` exceeds ``max_bytes``, and
any body that grows past it while streaming in (no ``Content-Length``), before the
application has read it all.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.middleware import Middleware

Scope = dict[str, Any]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: requests with more than ``max_bytes`` of body get 413."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def message(self) -> str:
        return (f"Request too large: at most {self.max_bytes / (1024 * 1024):.1f} MB "
                "(images at most the upload limit).")

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": self.message(), "error": self.message()}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = True
                if too_large:
                    await self._refuse(send)
                    return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)


def body_limit(max_bytes: int) -> Middleware:
    """The middleware entry for ``FastAPI(middleware=[...])``."""
    return Middleware(BodyLimit, max_bytes=max_bytes)
