"""The request guard: token on mutating calls, same-origin check, request body limit.

One pure ASGI middleware in front of every route, so a route added later cannot
forget it. Safe methods (GET, HEAD, OPTIONS) pass through untouched.
"""
from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_HEADER = "x-simcore-token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def presented_token(headers: Headers) -> str | None:
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get(TOKEN_HEADER) or None


def _same_origin(origin: str, host: str | None) -> bool:
    if origin == "null" or host is None:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


class Guard:
    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int):
        self.app = app
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        # Browsers always send Origin on cross-site POSTs: refuse them (CSRF from any web page).
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, headers.get("host")):
            await JSONResponse({"detail": "cross-origin request refused"}, 403)(scope, receive, send)
            return
        if self.token is not None:
            given = presented_token(headers)
            if given is None:
                await JSONResponse({"detail": "token required (Authorization: Bearer <token>)"}, 401,
                                   headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                await JSONResponse({"detail": "invalid token"}, 403)(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await JSONResponse({"detail": "invalid Content-Length"}, 400)(scope, receive, send)
                return
            if int(length) > self.max_body:
                await self._too_large(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            # bodies without Content-Length (chunked) are counted as they arrive
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise HTTPException(413, f"request body over {self.max_body} bytes")
            return message

        await self.app(scope, limited, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": f"request body over {self.max_body} bytes"}, 413,
                           headers={"Connection": "close"})(scope, receive, send)
