"""``outlast serve``: the HTTP API and an engine that runs queued work, on one event loop.

Loopback by default; any other address needs a bearer token (``--token-file`` or
OUTLAST_API_TOKEN). SIGINT, SIGTERM and SIGHUP (left ignored under nohup) stop taking requests and pause
running operations with a checkpoint (with auto_resume: queue them again from it), as ``outlast worker``
does; a second signal forces the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import threads
from ..config import Settings
from ..engine import stop_signals
from ..exitcodes import ExitCode
from ..humanize import clock, escape_controls
from ..models import InvalidInput, OutlastError, StoreError

TOKEN_ENV = "OUTLAST_API_TOKEN"
ORIGINS_ENV = "OUTLAST_API_ORIGINS"
"""Comma-separated origins (``https://ops.example.org``) whose pages may use the API from a browser."""
log = logging.getLogger("outlast.api")
TIMEOUT_ENV = "OUTLAST_API_REQUEST_TIMEOUT"
"""Seconds a client has to send a whole request (30 by default): a slow or silent one is disconnected."""
BACKLOG = 64
"""Pending connections the kernel queues; also how often one wake of the event loop tries accept()."""
MIN_TOKEN_LENGTH = 16
WS_MAX_RECEIVE = 64 << 10
"""Bytes of one message a WebSocket client may send (clients have nothing to say; it is ignored)."""


class EscapeControls(logging.Filter):
    """Escapes control characters in every record a handler writes (message, and traceback but its newlines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn ends some messages with a newline ("Exception in ASGI application\n"): not a literal "\n".
        record.msg, record.args = escape_controls(record.getMessage().rstrip("\r\n")), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = escape_controls(record.exc_text, keep_newlines=True)
        return True


class Unwritten(logging.Filter):
    """Pass only a record no logger on its way to the root wrote already: one from ``outlast.store``
    was printed twice, by the ``outlast`` logger's handler and again by the root's."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if logger.handlers:
                return False
            if not logger.propagate:
                return True
            logger = logger.parent
        return True


def escape_log_lines() -> None:
    """Put EscapeControls on the handlers that write this server's log: the engine's, uvicorn's and the
    root's (given one here, so that no record falls through to logging's unfiltered last resort, for
    the records no other handler wrote)."""
    root = logging.getLogger()
    if not root.handlers:
        fallback = logging.StreamHandler(sys.stderr)
        fallback.setLevel(logging.WARNING)
        fallback.addFilter(Unwritten())
        fallback.setFormatter(logging.Formatter("outlast serve: %(name)s: %(levelname)s: %(message)s"))
        root.addHandler(fallback)
    for name in ("outlast", "uvicorn", "uvicorn.error", "uvicorn.access", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, EscapeControls) for f in handler.filters):
                handler.addFilter(EscapeControls())


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it counts as exposed


def load_token(host: str, token_file: str | None, env: dict[str, str] | None = None) -> str | None:
    """The bearer token from the file or the environment; InvalidInput when one is needed and missing."""
    env = dict(os.environ) if env is None else env
    token: str | None
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInput(f"--token-file {token_file}: cannot read it ({e})") from None
        if not token:
            raise InvalidInput(f"--token-file {token_file}: the file is empty")
    else:
        token = env.get(TOKEN_ENV, "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise InvalidInput(
            f"the API token is too short ({len(token)} characters): use at least {MIN_TOKEN_LENGTH}, e.g. from "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if token is None and not is_loopback(host):
        raise InvalidInput(
            f"--host {host} is not a loopback address: a bearer token is required (--token-file FILE or {TOKEN_ENV})"
        )
    return token


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so a busy port is one clear line before anything starts."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise InvalidInput(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise InvalidInput(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(False)
    return sock


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8001,
    token_file: str | None = None,
    allow_commands: bool = False,
    output_roots: tuple[str, ...] = (),
    max_body: int = 1 << 20,
) -> int:
    """Run the API until a signal; returns the exit code. Errors are one line on stderr."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        print(f"outlast serve: the API needs the api extra ({e}): pip install 'outlast[api]'", file=sys.stderr)
        return ExitCode.USAGE
    try:
        token = load_token(host, token_file)
        sock = bind(host, port)
    except InvalidInput as e:
        print(f"outlast serve: {e}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        return threads.run(_serve(settings, sock, token, allow_commands, output_roots, max_body))
    except StoreError as e:
        print(f"outlast serve: {e}", file=sys.stderr)
        return ExitCode.STORE
    except OutlastError as e:
        print(f"outlast serve: {e}", file=sys.stderr)
        return ExitCode.USAGE
    finally:
        sock.close()


async def _serve(
    settings: Settings,
    sock: socket.socket,
    token: str | None,
    allow_commands: bool,
    output_roots: tuple[str, ...],
    max_body: int,
) -> int:
    import uvicorn

    from ..engine import Engine
    from ..store import open_store
    from .app import LOOPBACK_HOSTS, create_app
    from .conn import REQUEST_TIMEOUT, OncePerCause, connection_cap, guarded_protocol

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # signals are handled below, on the loop, so the engine gets to pause its work

    timeout = _request_timeout(os.environ.get(TIMEOUT_ENV), REQUEST_TIMEOUT)
    engine = Engine(
        open_store(settings.store or settings.state_dir, settings=settings), settings=settings, worker_name="api"
    )
    origins = tuple(o.strip() for o in os.environ.get(ORIGINS_ENV, "").split(",") if o.strip())
    # Without a token, a loopback server answers only to loopback host names: a page whose own name
    # was rebound to 127.0.0.1 (DNS rebinding) is refused.
    hosts = LOOPBACK_HOSTS if token is None else None
    app = create_app(
        engine,
        token=token,
        allow_commands=allow_commands,
        allowed_origins=origins,
        trusted_hosts=hosts,
        output_roots=output_roots,
        max_body=max_body,
    )
    config = uvicorn.Config(
        app,
        http=guarded_protocol(connection_cap(), timeout),  # slow clients timed out, connections capped
        backlog=BACKLOG,  # Python 3.11 tries accept() this many times per wake even when it fails (EMFILE)
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        ws_ping_interval=20,
        ws_max_size=WS_MAX_RECEIVE,
        proxy_headers=False,
    )
    server = Server(config)  # uvicorn's handlers exist from here on
    escape_log_lines()
    for name in ("asyncio", "uvicorn.error"):  # one line per cause a minute: never a flood of tracebacks
        logging.getLogger(name).addFilter(OncePerCause())
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    async with engine:
        _install_signals(server, engine)
        # A notice, not an error: on stdout with the time first, as `outlast worker` says it is up ("outlast:"
        # begins the error lines on stderr, and this line read as one).
        print(
            f"{clock(time.time())} API on http://{shown}:{port} ({'bearer token required' if token else 'no token'}; "
            f"{engine.max_concurrent} slots; store {engine.store.url.rsplit('@', 1)[-1]}); "
            "Ctrl-C or SIGTERM "
            + (
                "queues running work again from a checkpoint"
                if engine.requeues_stopped
                else "pauses running work with a checkpoint"
            ),
            flush=True,
        )
        settler = asyncio.create_task(_settle_abandoned(server, engine), name="outlast-api-abandoned")
        try:
            await server.serve(sockets=[sock])
        finally:
            settler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await settler
        if engine.unwritten and not engine.health.lost:
            await _write_abandoned(engine)  # the last chance before the lock goes with this process
        failed = engine.store_failed
        left = sorted(engine.abandoned)
        lost, why = engine.health.lost, engine.health.why
    if failed:
        # One line, as ``outlast worker`` ends: the lock goes with this process, so the next engine to
        # open the store finds the operation interrupted (unless its record went with the state dir).
        if lost:
            line = (
                f"the store cannot be written ({why}): {', '.join(left)} stopped; its record went with the"
                " state dir, so it cannot be resumed, only run again"
            )
        else:
            line = (
                f"{failed} ({', '.join(left)}); the next outlast process finds it interrupted; once the store"
                f" can be written: outlast resume {' '.join(left)}"
            )
        print(f"outlast serve: stopped: {line}", file=sys.stderr, flush=True)
        return ExitCode.STORE
    print(f"{clock(time.time())} API stopped", flush=True)
    return ExitCode.OK


SETTLE_EVERY = 0.5
"""Seconds between two tries at writing the final status of work given up during a store outage."""


async def _write_abandoned(engine: Any) -> list[str]:
    """``engine.write_abandoned()``, said in one line when it wrote something; [] while the store fails."""
    try:
        written: list[str] = await engine.write_abandoned()
    except Exception as e:  # not the store failing (that returns []): said, and tried again later
        log.error("writing the status of work stopped during the store outage failed: %s", e)
        return []
    if written:
        log.warning(
            "the store takes writes again: %s, stopped while it could not be written, marked as stopped",
            ", ".join(written),
        )
    return written


async def _settle_abandoned(server: Any, engine: Any) -> None:
    """Settle what the engine gave up writing during a store outage (its attempts ended, but their
    final status could not be stored, so they were listed running, their WebSockets waiting for ever).

    Written as soon as the store takes writes again (a disk full for a while), which announces it to
    the WebSockets like any settle. A store whose file was deleted under a running operation never takes
    its record again: the server stops, exit 8, as ``outlast worker`` does."""
    while True:
        await asyncio.sleep(SETTLE_EVERY)
        if not engine.unwritten:
            continue
        if engine.health.lost:
            server.should_exit = True
            engine.drain("shutdown")
            return
        await _write_abandoned(engine)


def _request_timeout(raw: str | None, default: float) -> float:
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e6:
        raise InvalidInput(f"{TIMEOUT_ENV}={raw!r}: expected seconds, a positive number")
    return value


def _install_signals(server: Any, engine: Any) -> None:
    loop = asyncio.get_running_loop()
    count = [0]

    def on_signal(sig: int) -> None:
        count[0] += 1
        server.should_exit = True
        engine.stop_for_signal(sig)  # as `outlast worker`: paused, or with auto_resume queued again
        engine.exit_if_store_hangs()  # a disk that never answers (a dead NFS server): exit 8, not a hang
        if count[0] > 1:
            server.force_exit = True
            engine.settings.grace_period = 0

    for sig in stop_signals():  # SIGHUP left ignored under nohup, as for `outlast run`
        loop.add_signal_handler(sig, on_signal, sig)
