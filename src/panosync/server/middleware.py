"""The API's two ASGI middlewares, which answer before the app reads a request's body: the bearer
token (401) and the body size limit (413)."""

from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse

TOKEN_NEEDED = ("This server needs the header Authorization: Bearer <token>, with the token it was started with.")


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, whether they say their length or not,
    before the app reads them."""

    def __init__(self, app, max_bytes: int, hint: str = ""):
        self.app = app
        self.max_bytes = max_bytes
        self.hint = hint

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        message = f"The request body is larger than this server's limit of {self.max_bytes} bytes.{self.hint}"
        await JSONResponse({"detail": message, "message": message}, status_code=413)(scope, receive, send)


class BearerToken:
    """Refuse a request without `Authorization: Bearer <token>` with 401 before the app sees it, and
    so before its body is read or parsed: a stranger learns nothing from how a body is refused, and
    costs nothing by sending a large one. `open_paths` need no token."""

    def __init__(self, app, token: str, open_paths: tuple[str, ...]):
        self.app = app
        self.token = token.encode()
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            return await self.app(scope, receive, send)
        await JSONResponse({"detail": TOKEN_NEEDED, "message": TOKEN_NEEDED}, status_code=401,
                           headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)

    def _authorized(self, scope) -> bool:
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        # compare_digest takes as long for any wrong token of a length: the time says nothing of the token
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
