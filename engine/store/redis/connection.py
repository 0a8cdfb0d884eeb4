"""The Redis connection of the Redis store: URL parsing, one-line errors, retries through outages.

Every command goes through :meth:`RedisLink.call`. A connection error is retried with
backoff for up to ``retry_for`` seconds (the store is marked disconnected meanwhile, and
it says so once in the log), then becomes a StoreError. Once Redis has been unreachable
that long, a command is tried once, waiting ``DOWN_PROBE`` seconds for a reply, until one
is answered. Errors never show the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
import select
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    DataError,
    InvalidResponse,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...config import USERINFO_CUT, userinfo_cut
from ...errors import StoreRefused
from ...models import InvalidInput, StoreError

log = logging.getLogger("outlast.store.redis")
T = TypeVar("T")

DOWN_PROBE = 2.0
"""Seconds a command waits for a reply once Redis has been unreachable for ``retry_for``. A frozen
server (SIGSTOP, a host suspended, packets dropped) answers nothing: each command waited 10s for its
reply and then retried for 30s, so an engine stopping its work because of the outage took minutes
more to write (or give up writing) the final checkpoint, the logs and the status."""

FLAPPING = 10.0
"""Seconds after the connection came back in which a drop is part of the same outage, said already: a link
that keeps dropping (a Redis at its ``maxclients`` refusing some of the connections made, a proxy cutting
them) said "connection lost" and "connected again" for each drop (4 pairs in 9 s). Such drops are counted,
and the count said once the connection stays up that long (or the store closes)."""

STALL = 0.25
"""Seconds a call may wait for Redis before ``last_wait`` notes it."""

DROP_SAID = 5.0
"""Seconds a drop counted so (``FLAPPING``) may last before it is said all the same: an outage of its own."""

UNKNOWN = "outcome unknown (sent, with no reply: Redis may still apply it when it answers)"
"""How a write given up without a reply ends its line: never "not done", which may be untrue."""

STORE_PARAMS = ("lease_ttl", "retry_for")
"""Query parameters of a store URL that are Outlast's, not redis-py's."""
MAX_CONNECTIONS = 32
"""Connections to Redis per process at most."""
_READS = ("reading", "listing", "counting", "checking", "resolving")
"""How the ``what`` of a command that changes nothing begins (``call`` guesses a write from it otherwise)."""
_CONNECTING = re.compile(r"connecting to|connection refused", re.IGNORECASE)
"""A connection error raised before the command was sent (redis-py's "Error 111 connecting to ...",
"Timeout connecting to server"): the command cannot have been applied."""
_ERRNO = re.compile(r"^Error\s+(-?\d+)\s")
_UNKNOWN_COMMAND = re.compile(r"^unknown command [`'](\w+)['`]", re.IGNORECASE)
"""The server's reply to a command it does not know (Redis 7 quotes it '...', 6 `...`)."""
_SCRIPT_UNKNOWN = ("unknown redis command called from script", "invalid command passed to redis.acl_check_cmd")
"""How Redis says (lowercased) that a script ran a command it does not know."""
_ERRNO_PREFIX = re.compile(r"^(Error\s+-?\d+\s+)?(while\s+)?connecting to \S+:\d+\.\s*", re.IGNORECASE)


def parse_store_url(url: str) -> tuple[str, dict[str, str], str, str]:
    """``(url for redis-py, Outlast's own params, where for messages, url safe to show)``."""
    if userinfo_cut(url):  # a piece of the password would be read (and shown) as the port or the host
        raise InvalidInput(f"store URL: {USERINFO_CUT}")
    try:
        parts = urlsplit(url)
        port = parts.port if parts.scheme != "unix" else None
    except ValueError as e:
        raise InvalidInput(f"store URL: {e}") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in STORE_PARAMS}
    rest = urlencode([(k, v) for k, v in query if k not in STORE_PARAMS])
    base = url.split("?", 1)[0].split("#", 1)[0]
    clean = base + (f"?{rest}" if rest else "")
    where = (parts.path or "?") if parts.scheme == "unix" else f"{parts.hostname or 'localhost'}:{port or 6379}"
    shown = clean
    if parts.password is not None:
        hidden = f"{parts.username or ''}:***@{parts.netloc.rsplit('@', 1)[-1]}"
        shown = clean.replace(parts.netloc, hidden, 1)
    return clean, own, where, shown


def _reason(e: BaseException) -> str:
    """The cause of a Redis error in a few words: ``connection refused``, ``name or service not known``."""
    text = str(e).strip() or type(e).__name__
    m = _ERRNO.match(text)
    if m and int(m.group(1)) > 0:
        text = os.strerror(int(m.group(1)))
    else:
        text = _ERRNO_PREFIX.sub("", text).strip().rstrip(".")
    text = text.splitlines()[0] if text else type(e).__name__
    return text if text[1:2].isupper() else text[:1].lower() + text[1:]  # "DB index ...", not "dB index ..."


def _not_a_socket(url: str) -> str | None:
    """What a ``unix://`` URL's path is when it is there and no socket, else None: connecting to a directory
    or a plain file was said "connection refused", as if a Redis were there and down."""
    parts = urlsplit(url)
    if parts.scheme != "unix" or not parts.path:
        return None
    try:
        mode = os.stat(parts.path).st_mode
    except OSError:
        return None
    if stat.S_ISSOCK(mode):
        return None
    what = "a directory" if stat.S_ISDIR(mode) else "a plain file" if stat.S_ISREG(mode) else "a device or a FIFO"
    return f"it is {what}, not a socket: the URL names Redis's socket (its unixsocket setting)"


def _denied_command(text: str, source: str | None) -> str | None:
    """The command a script ran that the user's ACL refused, found on the script's line that Redis names
    ("... can't run this command or subcommand script: SHA, on @user_script:18"); None if not found."""
    m = re.search(r"@user_script:(\d+)", text)
    lines = source.splitlines() if source else []
    if m is None or not 0 < int(m.group(1)) <= len(lines):
        return None
    call = re.search(r"redis\.(?:call|acl_check_cmd)\('(\w+)'", lines[int(m.group(1)) - 1])
    return call.group(1).upper() if call else None


def _missing_command(text: str, source: str | None) -> str | None:
    """The command a server lacks (renamed or disabled by ``rename-command`` in its configuration), from
    its error: named by the server for a command sent, found on the script's line for one a script ran
    ("Unknown Redis command called from script", or the check before a script's writes that PUBLISH is
    allowed: "invalid command passed to redis.acl_check_cmd()"); "" when it cannot be told which."""
    m = _UNKNOWN_COMMAND.match(text)
    if m:
        return m.group(1).upper()
    if text.lower().startswith(_SCRIPT_UNKNOWN):
        return _denied_command(text, source) or ""
    return None


def _unknown_params(pool: aioredis.ConnectionPool) -> list[str]:
    """Keyword arguments the pool would hand its connections that no connection class along their MRO takes."""
    taken: set[str] = set()
    for cls in pool.connection_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is not None and cls is not object:
            taken.update(inspect.signature(init).parameters)
    return sorted(k for k in pool.connection_kwargs if k not in taken)


class OutcomeUnknown(StoreError):
    """A write sent to Redis that got no reply before the retries gave up: it may have been applied, or be
    applied when Redis answers again (a frozen server holds it in its socket buffer). Not "not done": a
    client told so retried a submit that had landed, and the work ran twice."""

    outcome_unknown = True
    """Read by the faces (``getattr(e, "outcome_unknown", False)``): they may not import this module."""


class _Pool(aioredis.ConnectionPool):
    """The client's connection pool, which hands out the connections it holds connected before one it holds
    unconnected (which it must make first). A connection that could not be made (Redis at its maxclients)
    went back on top of the pool's stack, and each retry of the command took it again and was refused: the
    command was given up after ``retry_for`` ("unreachable for 30s") while connections that worked sat below."""

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        idle = getattr(self, "_available_connections", None)  # the stack the pool takes from (its end first)
        if isinstance(idle, list) and idle and idle[-1] is connection and not connection.is_connected:
            idle.insert(0, idle.pop())


class RedisLink:
    """One redis.asyncio client and the policy around it (see module doc)."""

    def __init__(self, url: str, *, retry_for: float = 30.0, connect_timeout: float = 3.0, timeout: float = 10.0):
        self.raw_url = url
        clean, self.params, self.where, self.shown_url = parse_store_url(url)
        self._clean_url = clean
        self._password = urlsplit(url).password
        self.retry_for = float(self.params.get("retry_for", retry_for))
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.client: aioredis.Redis | None = None
        self.connected = False
        """False while Redis cannot be reached (the dashboard shows it); True again once it answers."""
        self._down_since: float | None = None
        """When the first command that failed in the current outage was sent (monotonic)."""
        self._said = False
        """"connection lost" was said for the current outage, and "connected again" not yet."""
        self._back_at = -FLAPPING
        """When the connection last came back (monotonic): a drop within FLAPPING of it is counted, not said."""
        self._why = ""
        """Why the connection was last lost (a few words)."""
        self._drops: list[float] = []
        """When each drop counted and not said yet came back (``FLAPPING``)."""
        self._stalled_at = -1.0
        """When (monotonic) a call last got its reply after waiting over ``STALL`` seconds (-1: never)."""
        self._stall_len = 0.0
        """How long that call waited, its retries included."""
        self._said_back_at = 0.0
        """When "connected again" was last said (monotonic): the drops counted since are over that long."""
        self.reconnects = 0
        """How many times the connection came back after an outage (a restarted Redis may be empty)."""
        self.on_reconnect: Callable[[], None] | None = None
        self._waiting: dict[object, float] = {}
        """When each call under way began (monotonic), retries included: ``unanswered_for``."""
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._busy = 0
        """Requests holding a slot now."""
        self._pool: Any = None
        """The client's connection pool, whose connections ``_idle`` holds."""
        self._idle: list[Any] = []
        """Connections the scripts keep between two calls (see ``_evalsha``): taken from the pool and not given
        back, so that a script's call skips its locks and counters. With the requests holding a slot, never
        more than MAX_CONNECTIONS (``_spare``): the pool never lacks a connection for a request."""

    def _client(self) -> aioredis.Redis:
        try:
            # Bounded connections per process: ``call`` holds one of MAX_CONNECTIONS slots per request, so
            # a burst waits for a slot instead of failing (cheaper per request than a blocking pool).
            pool = _Pool.from_url(
                self._clean_url,
                max_connections=MAX_CONNECTIONS,
                socket_connect_timeout=self.connect_timeout,
                socket_timeout=None,  # redis-py wraps every send in a task for one; ``call`` bounds the request
                retry=Retry(NoBackoff(), 0),  # retries are ours: bounded, logged, idempotent
                decode_responses=False,
            )
        except ValueError as e:
            raise InvalidInput(f"store URL: {self._scrub(str(e))}") from None
        unknown = _unknown_params(pool)
        if unknown:
            # redis-py hands any query parameter it does not know to the connection, which then fails with
            # a TypeError at the first command: an internal error instead of a line naming the typo.
            names = ", ".join(repr(k) for k in unknown)
            raise InvalidInput(
                f"store URL: unknown parameter{'s' if len(unknown) > 1 else ''} {names} (Outlast's own:"
                f" {', '.join(STORE_PARAMS)}; any other must be a redis-py connection option)"
            )
        return aioredis.Redis.from_pool(pool)

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def error(self, e: BaseException, source: str | None = None, opening: bool = False) -> StoreError:
        """A one-line StoreError for a Redis error (never with the password); ``source``: the Lua script
        that was running, whose line a refusal by the user's ACL names; ``opening``: raised by ``open``."""
        w = self.where
        text = str(e)
        kind = StoreError
        no_password = self._password is None and urlsplit(self.raw_url).username is None
        # Over a unix socket without a password, the server's refusal of HELLO is the same missing password.
        if "NOAUTH" in text or "already authenticated" in text or (isinstance(e, AuthenticationError) and no_password):
            msg = f"redis {w}: authentication required: put the password in the store URL (redis://:PASSWORD@HOST:PORT/DB)"
        elif (isinstance(e, AuthenticationError) or "WRONGPASS" in text) and self._password == "***":
            # A hint pasted as printed: Outlast never prints a password, and its place holds this mask.
            msg = (
                f"redis {w}: authentication failed: the store URL's password is ***, which Outlast prints in"
                " place of the password: put the real one in (or set OUTLAST_STORE and leave --store out)"
            )
        elif isinstance(e, AuthenticationError) or "WRONGPASS" in text:
            msg = f"redis {w}: authentication failed: check the user and password in the store URL"
        elif isinstance(e, AuthorizationError | NoPermissionError):
            msg = f"redis {w}: permission denied for this user ({_reason(e)})"
        elif "can't run this command" in text:  # an ACL refusal inside a script: its hash and line said nothing
            cmd = _denied_command(text, source)
            what = f"{cmd}, which the store runs: grant it (ACL SETUSER <user> +{cmd.lower()})" if cmd else "a command"
            msg = f"redis {w}: permission denied for this user: its ACL does not allow {what}"
        elif (cmd := _missing_command(text, source)) is not None:
            # Said by Redis as "unknown command 'EVALSHA', with args beginning with: <a script's hash and
            # keys>", or "invalid command passed to redis.acl_check_cmd() script: <hash>, on @user_script:18".
            what = f"the command {cmd}" if cmd else "a command"
            msg = (
                f"redis {w} does not run {what}, which the store uses: renamed or disabled (rename-command in"
                " its configuration); enable it there, or point the store URL at another Redis"
            )
        elif isinstance(e, ReadOnlyError):
            msg, kind = f"redis {w} is a read-only replica: point the store URL at the primary", StoreRefused
        elif isinstance(e, OutOfMemoryError) or "used memory > 'maxmemory'" in text:
            # Said by Redis as "command not allowed when used memory > 'maxmemory'. script: <sha>, on
            # @user_script:26": the script's hash and line are of no use to the person reading it.
            msg = f"redis {w} is full (its used memory is over maxmemory): raise maxmemory or free memory there"
            kind = StoreRefused
        elif "DB index is out of range" in text or (opening and "out of range" in text):
            # At connection, only the URL's database number (SELECT) can be out of range: past the server's
            # `databases`, or past a 32-bit number ("value is out of range, value must between ...").
            msg = (
                f"redis {w}: no such database: the number in the store URL (/DB) is not below the server's `databases`"
            )
        elif isinstance(e, InvalidResponse) and (opening or not self.connected):
            # Said by the parser as "protocol error, got "<" as reply type byte" (an HTTP server's page), or
            # "S" (an SSH server's banner): the URL's port is another server's.
            msg = (
                f"redis {w}: what answers there is not a Redis server ({_reason(e)}): check the host and port"
                " in the store URL"
            )
        elif isinstance(e, RedisConnectionError | RedisTimeoutError | OSError):
            msg = f"redis {w}: cannot connect: {_not_a_socket(self.raw_url) or _reason(e)}"
            if urlsplit(self.raw_url).scheme == "rediss" and not self.connected:
                msg += " (the URL asks for TLS, rediss://: does the server speak TLS on that port?)"
        else:
            msg = f"redis {w}: {_reason(e)}"
        return kind(self._scrub(msg))

    async def open(self) -> None:
        """Connect and PING once (no retries): an unreachable Redis at start is one clear line."""
        self.client = self._client()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)  # of this event loop, as the client's connections
        self._pool, self._idle, self._busy = self.client.connection_pool, [], 0
        try:
            await self.call_once(lambda c: c.ping(), self.client)
        except (RedisError, OSError) as e:
            await self.close()
            raise self.error(e, opening=True) from None
        self.connected = True

    async def close(self) -> None:
        self._say_drops()
        client, self.client = self.client, None
        self._pool, self._idle = None, []  # closed with the pool (it disconnects those it lent too)
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    @staticmethod
    def _transient(e: BaseException) -> bool:
        if isinstance(e, AuthenticationError | AuthorizationError):
            return False
        if isinstance(e, RedisConnectionError | RedisTimeoutError | OSError | asyncio.TimeoutError):
            return True
        return isinstance(e, ResponseError) and str(e).startswith(("LOADING", "TRYAGAIN", "MASTERDOWN"))

    async def call_once(self, fn: Callable[[Any], Awaitable[T]], client: Any, timeout: float | None = None) -> T:
        """One try of ``fn(client)`` (no retries), holding one of the connection slots; no reply within
        ``timeout`` (default: the link's) is an error (redis-py drops a connection whose request was cut off)."""
        wait = self.timeout if timeout is None else timeout
        async with self._slots:
            self._busy += 1
            try:
                if len(self._idle) + self._busy > MAX_CONNECTIONS:
                    await self._spare()
                async with asyncio.timeout(wait):
                    return await fn(client)
            except TimeoutError:
                raise RedisTimeoutError(f"no reply within {wait:g}s") from None
            finally:
                self._busy -= 1

    async def _spare(self) -> None:
        """Give a connection the scripts keep back to the pool: with one per request holding a slot, the
        pool (MAX_CONNECTIONS) would lack one for a request that takes its own (a pipeline, a read)."""
        conn = self._idle.pop()
        await self._pool.release(conn)

    async def _evalsha(self, client: Any, script: Any, keys: list[str], args: list[Any], sent: Sent) -> Any:
        """``await script(keys=keys, args=args, client=client)`` without redis-py's per-command layers: the
        EVALSHA packed in one C call (hiredis) and sent on a connection the link keeps for its scripts (one
        taken from the client's pool when it keeps none), its reply read there. Through redis-py a trivial
        EVALSHA took 90 us, and 62 us this way on a connection of the same pool, 50 on a kept one: its command
        dispatch, retry wrapper, observability hooks, per-argument encoder, and the pool's locks and counters
        were a sixth of a submit.

        A kept connection is checked as the pool checks one it hands out (``ensure_connection``: connected,
        nothing waiting to be read; a connection Redis closed while idle is made again, without an error).
        Any error but Redis's reply to the command (a connection error or timeout, cancelled mid-reply)
        disconnects it and gives it back to the pool. A NOSCRIPT reply (a Redis restarted, flushed or another
        server) goes through redis-py's script call, which loads the script and runs it again."""
        command = (b"EVALSHA", script.sha, len(keys), *keys, *args)
        packed: Any = None
        if _PACK is not None:
            try:  # str as UTF-8, numbers as their repr (as redis-py's encoder writes them); bool and None refused
                packed = _PACK(command)
            except TypeError as e:
                raise DataError(str(e)) from None
        pool = client.connection_pool
        if pool is self._pool and self._idle:
            conn = self._idle.pop()
            try:
                # As the pool checks a connection it hands out (``ensure_connection``), without its connect call
                # when connected: made again when Redis closed it or data no request waits for is there.
                try:
                    dirty = not conn.is_connected or _readable(conn) or await conn.can_read()
                except (RedisConnectionError, OSError):
                    dirty = True
                if dirty:
                    await conn.disconnect()
                    await pool.ensure_connection(conn)
            except BaseException:
                await pool.release(conn)
                raise
        else:
            conn = await pool.get_connection(*_POOL_ARGS)
        sent.sent = True  # connected (the handshake answered): from here it may reach Redis
        try:
            await conn.send_packed_command(conn.pack_command(*command) if packed is None else packed)
            result = await conn.read_response()
        except NoScriptError:  # back to the pool first: redis-py's call takes a connection from there
            await pool.release(conn)
            return await script(keys=keys, args=args, client=client)
        except ResponseError:  # Redis's reply, read whole: the connection is as good as before
            await self._keep(pool, conn)
            raise
        except BaseException:
            await conn.disconnect(nowait=True)
            await pool.release(conn)
            raise
        await self._keep(pool, conn)
        return result

    async def _keep(self, pool: Any, conn: Any) -> None:
        """A script's connection, its reply read: kept for the next script, or given back to ``pool`` when
        that is not (or no longer) the link's."""
        if pool is self._pool:
            self._idle.append(conn)
        else:
            await pool.release(conn)

    @staticmethod
    def _maybe_sent(e: BaseException) -> bool:
        """Whether a try that failed with the transient ``e`` may have reached Redis: anything but a
        failure to connect (refused, or no connection made) or a refusal by the server (LOADING, ...).
        No reply within the wait may be a command Redis holds and runs later."""
        if isinstance(e, ResponseError):
            return False
        return not _CONNECTING.search(str(e))

    def last_wait(self) -> tuple[float, float] | None:
        """(seconds ago, seconds long) of the last time Redis kept a call of this process waiting over ``STALL``
        seconds, its retries through an outage included; None: never. A Redis that stopped answering
        (SIGSTOPped, suspended) let every lease run out meanwhile, live workers' too, and they renew theirs
        only once it answers again."""
        if self._stalled_at < 0:
            return None
        return time.monotonic() - self._stalled_at, self._stall_len

    def unanswered_for(self) -> float:
        """Seconds the oldest call under way has waited for Redis, its retries included (0: none waits): a
        frozen Redis answers nothing, and each call gives up only after ``retry_for``."""
        if not self._waiting:
            return 0.0
        return max(0.0, time.monotonic() - min(self._waiting.values()))

    async def call(
        self,
        fn: Callable[[Any], Awaitable[T]],
        what: str = "request",
        source: str | None = None,
        writes: bool | None = None,
        reached: Sent | None = None,
    ) -> T:
        """``await fn(client)``, retried through a connection outage for up to ``retry_for`` seconds; once
        the outage is older than that, tried once with a short wait (``DOWN_PROBE``).

        Given up, it is "``what`` not done" only when no try can have been applied; a write (``writes``;
        None: guessed from ``what``, a read begins "reading", "listing", ...) sent without a reply is
        OutcomeUnknown: Redis may run it when it answers. Whether a try was sent: ``reached``, set by ``fn``
        once the command is handed to a connection; without it, guessed from the error (anything but a
        failure to connect may have been sent).

        The client is typed Any: redis-py types every reply ``bytes | str`` whatever decode_responses
        says, and this client never decodes (replies are bytes)."""
        client = self.client
        if client is None:
            raise StoreError(f"redis {self.where}: the store is not open")
        if writes is None:
            writes = bool(what) and not what.startswith(_READS)
        start = time.monotonic()
        token = object()
        self._waiting[token] = start  # unanswered_for
        try:
            down = self._down_since
            long_down = down is not None and start - down >= self.retry_for
            deadline = start if long_down else start + self.retry_for
            delay = 0.05
            unanswered = False
            """A try of this write may have reached Redis and got no reply: its outcome is unknown."""
            while True:
                sent = time.monotonic()
                try:
                    result = await self.call_once(fn, client, DOWN_PROBE if long_down else None)
                except (RedisError, OSError) as e:
                    if not self._transient(e):
                        if unanswered:  # refused now, but an earlier try may have been applied
                            raise OutcomeUnknown(f"{self.error(e, source)}; {what}: {UNKNOWN}") from None
                        raise self.error(e, source) from None
                    unanswered = unanswered or (
                        writes and (reached.sent if reached is not None else self._maybe_sent(e))
                    )
                    if self._down_since is None:
                        self._down_since = sent
                    now = time.monotonic()
                    if self.connected:
                        self.connected = False
                        self._why = self._scrub(_reason(e))
                    if not self._said and (
                        sent - self._back_at >= FLAPPING or now - min(start, self._down_since) >= DROP_SAID
                    ):
                        self._say_drops()
                        self._said = True
                        log.warning(
                            "redis %s: connection lost (%s); retrying for up to %gs",
                            self.where,
                            self._why,
                            self.retry_for,
                        )
                    if now + delay > deadline:
                        down_for = (
                            f"redis {self.where}: unreachable for {max(now - self._down_since, self.retry_for):.0f}s"
                        )
                        cause = f"{down_for} ({self._scrub(_reason(e))})"
                        if unanswered:
                            raise OutcomeUnknown(f"{cause}; {what}: {UNKNOWN}") from None
                        raise StoreError(f"{cause}; {what} not done") from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                # How long Redis kept this process waiting: this call, or the outage it ends (calls before it
                # that gave up after retry_for included).
                now = time.monotonic()
                waited = now - min(start, self._down_since if self._down_since is not None else start)
                self._down_since = None
                if waited > STALL:
                    self._stalled_at, self._stall_len = now, waited
                if not self.connected:
                    self.connected = True
                    self.reconnects += 1
                    self._back_at = time.monotonic()
                    if self._said:
                        self._said, self._said_back_at = False, self._back_at
                        log.warning("redis %s: connected again", self.where)
                    else:
                        self._drops.append(self._back_at)  # part of the outage said before (FLAPPING)
                    if self.on_reconnect is not None:
                        self.on_reconnect()
                elif self._drops and time.monotonic() - self._back_at >= FLAPPING:
                    self._say_drops()
                return result
        finally:
            del self._waiting[token]

    def _say_drops(self) -> None:
        """Say the drops counted since the connection came back (``FLAPPING``), once it stays up, or before
        an outage said on its own, or when the store closes."""
        if self._drops:
            n, span = len(self._drops), self._drops[-1] - self._said_back_at
            self._drops = []
            log.warning(
                "redis %s: the connection dropped and came back %d more time%s within %.1fs (%s)",
                self.where,
                n,
                "s" if n != 1 else "",
                span,
                self._why,
            )

    async def script(self, script: Any, keys: list[str], args: list[Any] | Callable[[], list[Any]], what: str) -> Any:
        """``script`` (a registered redis-py script) run with ``keys`` and ``args``, through ``call``: a
        write (every script of the store changes something, or may), whose outcome is unknown only once
        it was sent: a try cut off while its connection was being made (a frozen Redis does not answer
        the handshake) cannot have been applied. ``args`` may be a function: called for each try, whose
        arguments then say what holds when it is sent (the heartbeat's, ``liveness.py``)."""
        sent = Sent()
        return await self.call(
            lambda c: self._evalsha(c, script, keys, args() if callable(args) else args, sent),
            what,
            script.script,
            writes=True,
            reached=sent,
        )


_PACK = getattr(hiredis, "pack_command", None)
"""hiredis's packer of a command (hiredis 2.1 and later; else redis-py's, through the connection)."""
_get = inspect.signature(aioredis.ConnectionPool.get_connection).parameters.get("command_name")
_POOL_ARGS = ("EVALSHA",) if _get is not None and _get.default is inspect.Parameter.empty else ()
"""What the pool's get_connection takes: a command name up to redis-py 5.2; nothing since (it warns)."""


class Sent:
    """Set once a try of a command was handed to a connection (see ``RedisLink.call``)."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


def _readable(conn: Any) -> bool:
    """Whether a connection kept idle has something to read: its end closed by Redis (a Redis stopped,
    or an idle connection timed out there), or data no request waits for. Asked of the socket itself: the
    event loop may not have seen that yet (the pool's check reads what it saw), and a command sent there
    would end "outcome unknown" where the connection made anew is refused, "not done"."""
    writer = getattr(conn, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is None:
        return False
    try:  # poll, not select: a process with over 1,024 files open has descriptors select cannot take
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile: made again
        return True
