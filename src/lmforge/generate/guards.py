"""What every HTTP request passes before it reaches the API: the Host header, the API key, the number of
requests in flight and the size of the body. Each is a small ASGI middleware that answers with
OpenAI's error body ({"error": {...}}) and never reads more than it must.

Order, outermost first (create_app adds them): Host check, API key, concurrency, body size; so a
request from a wrong origin or without the key costs no slot and no body read.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send



def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   kind: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    """An error as OpenAI writes it, so clients raise their usual exceptions."""
    body = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


def host_name(host_header: str) -> str:
    """The host of a Host header, without its port: "localhost:8000" -> "localhost", "[::1]:80" -> "[::1]"."""
    host = host_header.strip().lower()
    if host.startswith("["):  # an IPv6 address, whose colons are not a port
        return host[:host.find("]") + 1] if "]" in host else host
    return host.split(":", 1)[0].rstrip(".")  # "localhost." is "localhost" too


class HostCheck:
    """Refuse requests whose Host header is not one of ours (421), against DNS rebinding.

    A web page can make a browser send requests to 127.0.0.1 by pointing a domain it controls at that
    address; the browser then still writes the attacker's domain in the Host header. A server bound to
    loopback knows its only right names, so it can refuse every other one (as Jupyter and the MCP spec do).
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str]):
        self.app, self.allowed = app, {name.lower() for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = (_header(scope, b"host") or b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                response = error_response(421, f"this server does not answer to the host {host!r} "
                                               "(lmforge serve --allow-host NAME adds a name)", code="invalid_host")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class ApiKeyCheck:
    """Ask for `Authorization: Bearer <key>` on every path but the open ones (401 otherwise).

    hmac.compare_digest takes as long for a wrong key that shares a long prefix with the real one as for
    any other, so response times do not reveal the key a character at a time.
    """

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Iterable[str] = ("/health",)):
        self.app, self.key, self.open_paths = app, api_key.encode(), set(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            scheme, _, token = (_header(scope, b"authorization") or b"").partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
                response = error_response(401, "a valid API key is needed: send the header "
                                               "'Authorization: Bearer <key>'", code="invalid_api_key",
                                          headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class InFlight:
    """How many generation requests are being handled now (tokenized, queued, generating or streaming)."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0


class ConcurrencyLimit:
    """At most `in_flight.limit` generation requests at once; more get 429 with a Retry-After header.

    Counted from arrival until the last byte of the answer (a stream included). Everything here runs on
    the one event loop thread, so the counter needs no lock. TGI's --max-concurrent-requests does the same.
    """

    def __init__(self, app: ASGIApp, in_flight: InFlight, paths: Iterable[str], retry_after_s: Callable[[], int]):
        self.app, self.in_flight, self.paths, self.retry_after_s = app, in_flight, set(paths), retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        if self.in_flight.count >= self.in_flight.limit:
            response = error_response(429, f"the server is busy ({self.in_flight.limit} requests at once); "
                                           "retry later", kind="server_busy", code="too_many_requests",
                                      headers={"Retry-After": str(self.retry_after_s())})
            return await response(scope, receive, send)
        self.in_flight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.count -= 1


class BodySizeLimit:
    """Refuse a request body over `max_bytes` with 413, before anything parses it.

    A declared Content-Length is checked before reading a byte; a chunked body (no length declared) is
    read up to the limit and refused as soon as it passes it. The body read is then handed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and not declared.isdigit():
            return await error_response(400, "the Content-Length header is not a number")(scope, receive, send)
        if declared is not None and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        body = await self._read(receive)
        if body is None:
            return await self._too_large(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it is longer than max_bytes."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return b""
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"the request body is larger than {self.max_bytes} bytes "
                                       "(lmforge serve --max-body-bytes)", code="request_too_large",
                                  headers={"Connection": "close"})  # the rest of the body is never read
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that gives the body already read, then waits on the real one (e.g. for a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
