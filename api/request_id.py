"""The request id: taken from the caller's ``X-Request-ID`` (or made), answered in that header, and
kept in :data:`shared.platform.logs.request_id` while the request (or WebSocket) is handled, so that
log lines, the jobs it creates and the tasks it sends carry it."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.platform.logs import HEADER, accept_or_make, request_id


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        rid = accept_or_make(given)
        token = request_id.set(rid)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            request_id.reset(token)
