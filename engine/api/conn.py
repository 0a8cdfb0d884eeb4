"""Connections of ``outlast serve``: slow or idle clients cannot hold its file descriptors.

uvicorn (0.55, h11) times out only a connection idle after a response (``timeout_keep_alive``): one
that sends nothing, or half a request, was held for ever, and a few hundred of them used every file
descriptor the process had; the accept loop then failed thousands of times a second, each with a
traceback. Here a request must arrive whole (its head and body) within ``request_timeout`` of the
connection opening or of the previous response, and no more connections are held at once than a
share of the descriptor limit leaves room for: one over it is answered 503 and closed at once.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("outlast.api")

REQUEST_TIMEOUT = 30.0
"""Seconds a client has to send a whole request, from its connection or the previous response."""
MAX_CONNECTIONS = 1000
"""Connections (WebSockets included) held at once, at most; fewer under a low descriptor limit."""
SAY_EVERY = 60.0
"""Seconds between two lines saying connections were refused."""


def connection_cap(nofile: int | None = None) -> int:
    """Connections to hold at once: half the descriptor limit, less what the store, the engine's work
    and its logs need (16), and at most MAX_CONNECTIONS."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY or nofile <= 0:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, nofile // 2 - 16))


def _busy_response(cap: int) -> bytes:
    body = json.dumps({"detail": f"the server holds as many connections as it allows ({cap}): try again"}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\nretry-after: 1\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a time limit on receiving each request and a cap on connections."""

    cap: ClassVar[int] = MAX_CONNECTIONS
    request_timeout: ClassVar[float] = REQUEST_TIMEOUT
    _said: ClassVar[list[float]] = [float("-inf")]

    def connection_made(self, transport: Any) -> None:
        self._request_timer: Any = None
        super().connection_made(transport)
        if len(self.connections) > self.cap:
            now = time.monotonic()
            if now - self._said[0] >= SAY_EVERY:
                self._said[0] = now
                log.warning(
                    "%d connections open, the most this server holds: new ones are answered 503 and closed"
                    " (said once a minute at most)",
                    self.cap,
                )
            transport.write(_busy_response(self.cap))
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._request_timer = self.loop.call_later(self.request_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _receiving(self) -> bool:
        """A request is awaited or arriving: nothing of it yet, its head in part, or its body."""
        return self.transport.get_protocol() is self and self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_timer is not None and not self._receiving():
            self._disarm()  # the request is in (or the socket became a WebSocket): the app's time now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection is timed too, its first byte included

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """The server stops: a request whose body is still arriving is cut off now. uvicorn waited for it
        (5 s), then cancelled the app waiting on the body, which printed a 28-line traceback."""
        if self.cycle is not None and not self.cycle.response_complete and self.conn.their_state is h11.SEND_BODY:
            self.transport.close()  # the app waiting on the body sees the client gone, and returns
            return
        super().shutdown()

    def _timed_out(self) -> None:
        self._request_timer = None
        if self._receiving() and not self.transport.is_closing():
            self.transport.close()  # an app waiting on the body sees the client gone


def guarded_protocol(cap: int, request_timeout: float = REQUEST_TIMEOUT) -> type[GuardedH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"cap": cap, "request_timeout": request_timeout, "_said": [float("-inf")]},
    )


class OncePerCause(logging.Filter):
    """Let a record through once per ``every`` seconds per cause (its first line), as one line: the
    exception's text instead of its traceback. What an event loop out of file descriptors logs for each
    failed accept (45,000 tracebacks in 5 s) becomes one line a minute."""

    def __init__(self, every: float = SAY_EVERY) -> None:
        super().__init__()
        self.every = every
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        cause = record.getMessage().split("\n", 1)[0][:200]
        now = time.monotonic()
        if now - self._last.get(cause, float("-inf")) < self.every:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[cause] = now
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and os.environ.get("OUTLAST_DEBUG"):
            return True  # the traceback, as every outlast command shows it with OUTLAST_DEBUG=1
        if exc is not None:
            record.msg, record.args = f"{cause}: {type(exc).__name__}: {exc}", None
        else:
            record.msg, record.args = cause, None
        record.exc_info, record.exc_text = None, None
        return True
