"""The FastAPI application: ``create_app(engine, token=None, allow_commands=False)``.

The engine is started and stopped by whoever owns it (``serve`` does); the app adds the
progress hub and the metrics recorder for its lifetime. Errors the engine raises on purpose
map to one status each and a body ``{"detail": "one line"}``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..engine import Engine
from ..files import private_dir
from ..humanize import escape_controls
from ..models import Conflict, InvalidInput, NotFound, OutlastError, StoreError
from ..offload import off_loop
from ..registry import ensure_loaded
from .confine import OutputRoots, outputs_dir
from .metrics import Metrics
from .progress import ProgressHub
from .routes import Forbidden, metrics_router, router, typed_router
from .ws import ws_router

log = logging.getLogger("outlast.api")

DESCRIPTION = """Start, watch, cancel, pause and resume Outlast operations.

Every operation submitted here is stored like any other: `outlast ls` and the dashboard show it.
Live progress: open a WebSocket on `/api/operations/{id}/progress` (one operation; closes after
its `final` message) or `/api/operations/progress` (all operations). Prometheus metrics: `/metrics`.

Paths a client names for what an operation writes (`codebase_indexing` and `security_scan` `output`,
`backup_operation` `destination`) must resolve, symbolic links and `..` included, under the state
directory's `outputs` or a directory the server allows (`outlast serve --allow-output-root DIR`);
anything else is refused with 403 naming the field and the allowed directories. A request body over
the server's limit (1 MiB by default) is refused with 413 before it is read whole.
"""

_STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (InvalidInput, 422),
    (Forbidden, 403),
    (StoreError, 503),
)


async def refuse(
    scope: Scope, send: Send, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """Answer from a middleware: ``{"detail": ...}`` with ``status``, or close a WebSocket (1008) saying why."""
    detail = escape_controls(detail)
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
        return
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class KnownHosts:
    """Answer only requests naming one of ``hosts`` in their Host header (the port aside): a loopback
    server without a token refuses a page whose own name was rebound to 127.0.0.1 (DNS rebinding)."""

    def __init__(self, app: ASGIApp, hosts: tuple[str, ...]) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers", ())).get(b"host", b"").decode("latin-1").lower()
        name = host if host.endswith("]") else host.rsplit(":", 1)[0]  # [::1]:8001, 127.0.0.1:8001
        if name in self.hosts:
            await self.app(scope, receive, send)
            return
        names = ", ".join(sorted(self.hosts))
        await refuse(scope, send, 400, f"host {host!r} is not one this server answers to ({names})")


class BearerAuth:
    """Every HTTP request and WebSocket needs ``Authorization: Bearer TOKEN`` (constant-time compare)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def allowed(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
        scheme, _, given = header.partition(b" ")
        protocols = scope.get("subprotocols") or []
        if scope["type"] == "websocket" and len(protocols) >= 2 and protocols[0] == "bearer":
            # Browsers cannot set headers on a WebSocket: new WebSocket(url, ["bearer", token]).
            scheme, given = b"bearer", str(protocols[1]).encode()
        # compare_digest runs in time independent of where the values differ.
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        detail = "a valid bearer token is required (Authorization: Bearer TOKEN)"
        await refuse(scope, send, 401, detail, ((b"www-authenticate", b'Bearer realm="outlast"'),))


class SameOrigin:
    """Refuse what a web page on another site could make a browser send: WebSockets and requests
    that change something, carrying an ``Origin`` that is not this server (or an allowed origin).

    Clients other than browsers send no Origin and are not affected. Without this, any page open in
    a browser on this machine could follow and cancel operations through a loopback server.
    """

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed}

    def refused(self, scope: Scope) -> bool:
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return False
        headers = dict(scope.get("headers", ()))
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
        if not origin or origin in self.allowed:
            return False
        host = headers.get(b"host", b"").decode("latin-1").lower()
        return origin.split("://", 1)[-1] != host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.refused(scope):
            await self.app(scope, receive, send)
            return
        await refuse(scope, send, 403, "cross-origin request refused (see OUTLAST_API_ORIGINS)")


MAX_BODY = 1 << 20
"""The default limit of a request body, in bytes (``outlast serve --max-body-size``)."""


def size_words(n: int) -> str:
    """``1 MiB``, ``64 KiB`` or ``1500 bytes``: the limit as an error message names it."""
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413 before it is read whole: at once when its
    Content-Length says so, else (a chunked body) as soon as the bytes received pass the limit.

    The body is read here, counted, and handed on in one piece, so nothing behind this ever holds
    more than ``limit`` bytes of one request.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            await self.refuse(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self.refuse(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: only the client's disconnect
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def refuse(self, scope: Scope, send: Send) -> None:
        detail = f"the request body is larger than the limit of {size_words(self.limit)} (--max-body-size)"
        await refuse(scope, send, 413, detail, ((b"connection", b"close"),))  # the rest is never read


def _validation_line(exc: RequestValidationError) -> str:
    """FastAPI's list of errors as one line naming the field: ``body.params: Field required``."""
    parts = []
    for err in exc.errors()[:3]:
        loc = [str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":  # its loc is ("body", offset): "body.14" read as a field
            at = f" at character {loc.pop()}" if len(loc) == 2 else ""
            msg = f"invalid JSON{at} ({err.get('ctx', {}).get('error', 'cannot parse')})"
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {msg}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _unparsed(exc: StarletteHTTPException) -> str:
    """Why FastAPI could not parse a JSON body, from what it raised ("There was an error parsing the body"
    said neither that the bytes were not UTF-8 nor that the JSON was nested too deep to read)."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{cause.object[cause.start]:02x} at offset {cause.start}): JSON is UTF-8"
    if isinstance(cause, RecursionError):
        return "JSON nested too deep to read"
    return str(exc.detail)


def error_response(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``{"detail": "one line"}``: control characters a client sent (a field name, an id) escaped, so
    the line stays one line wherever it is printed."""
    return JSONResponse({"detail": escape_controls(detail)}, status_code=status, headers=headers)


def _install_errors(app: FastAPI) -> None:
    async def outlast_error(request: Request, exc: Exception) -> JSONResponse:
        status = next((code for cls, code in _STATUS_OF if isinstance(exc, cls)), 500)
        return error_response(status, str(exc))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if isinstance(exc.body, (bytes, bytearray)) and exc.body:
            # A body FastAPI did not parse, as its Content-Type does not say JSON (curl -d sends a form type):
            # say so, not "body: Input should be a valid dictionary". Refused rather than parsed anyway, as a
            # form or text/plain body is one a page on another site can make a browser send without asking.
            ctype = request.headers.get("content-type")
            came = f"it came as {ctype!r}" if ctype else "it came without one"
            return error_response(415, f"the body must be JSON, sent with Content-Type: application/json ({came})")
        return error_response(422, _validation_line(exc))

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:  # a body that is not even text: invalid input like any other
            return error_response(422, f"body: {_unparsed(exc)}")
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(OutlastError, outlast_error)
    app.add_exception_handler(Forbidden, outlast_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _make_outputs(outputs: Path) -> None:
    """``outputs`` in the state dir, made 0700 as an operation makes it; left for it when it cannot be
    made here (a Redis store's state dir that does not exist: the refusal then says so)."""
    with contextlib.suppress(OSError, StoreError):
        private_dir(outputs.parent, outputs.name)


def create_app(
    engine: Engine,
    token: str | None = None,
    allow_commands: bool = False,
    allowed_origins: tuple[str, ...] = (),
    trusted_hosts: tuple[str, ...] | None = None,
    output_roots: tuple[str, ...] = (),
    max_body: int = MAX_BODY,
) -> FastAPI:
    """The API on ``engine`` (started by the caller). With ``token``, every request must carry it.
    Browsers' cross-origin WebSockets and writes are refused unless their origin is in ``allowed_origins``;
    with ``trusted_hosts``, requests naming another Host are refused (DNS rebinding of a loopback server).
    Outputs a client names must be under the state dir's outputs or one of ``output_roots``; a request
    body over ``max_body`` bytes is refused (413) before it is read whole."""
    hub = ProgressHub(engine)
    metrics = Metrics(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The outputs directory clients are told to write under exists: its first operation made it, and a
        # client's first output there was refused ("its directory does not exist").
        await off_loop(_make_outputs, app.state.output_roots.outputs)
        hub.start()
        metrics.start()
        try:
            yield
        finally:
            await hub.stop()
            await metrics.stop()

    app = FastAPI(title="Outlast", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.engine = engine
    app.state.hub = hub
    app.state.metrics = metrics
    app.state.allow_commands = allow_commands
    app.state.output_roots = OutputRoots(outputs_dir(engine.store, engine.settings.state_dir), output_roots)
    ensure_loaded(engine.settings.plugins)  # plugins' types document the typed endpoints
    app.include_router(router)
    app.include_router(typed_router())
    app.include_router(metrics_router)
    app.include_router(ws_router)
    _install_errors(app)
    app.add_middleware(BodyLimit, limit=max_body)  # innermost: a client without the token is refused unread
    if token:
        app.add_middleware(BearerAuth, token=token)
        _document_bearer(app)
    app.add_middleware(SameOrigin, allowed=tuple(allowed_origins))
    if allowed_origins:
        # The listed origins' pages may call the API with fetch(): preflights answered (before the token is
        # asked for: a browser sends none with them) and responses readable. Other origins get no CORS
        # header, so a browser keeps the answer from their page, and their writes are refused above.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted({o.rstrip("/").lower() for o in allowed_origins}),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    if trusted_hosts:
        app.add_middleware(KnownHosts, hosts=tuple(trusted_hosts))  # added last: runs first
    return app


def _document_bearer(app: FastAPI) -> None:
    """Say in /openapi.json that every endpoint needs the bearer token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
