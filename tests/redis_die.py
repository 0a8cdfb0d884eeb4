"""A plugin for the Redis kill tests: the process SIGKILLs itself as its OUTLAST_TEST_REDIS_DIE_AT-th request
to Redis starts (OUTLAST_TEST_REDIS_DIE_WHEN=before: requests 1 .. N-1 were answered, N never sent), or right
after it returns (=after: Redis applied it, the process never acted on the reply). With OUTLAST_TEST_REDIS_DIE_TRACE
every request is appended to that file, ``N KIND NAME`` one a line (and ``killed WHEN N`` before the kill). With
OUTLAST_TEST_REDIS_DIE_NAME (a name as the trace shows it: ``EVALSHA:WRITE``, ``HMGET``), N counts only the requests
of that name: ``AT=1 NAME=EVALSHA:WRITE WHEN=after`` kills right after the first WRITE script returns.

A request is one command (``Redis.execute_command``), one pipeline (``Pipeline.execute``, all its commands), one
script call (``AsyncScript.__call__``: its EVALSHA, and on NOSCRIPT its SCRIPT LOAD and EVALSHA again), or one command
sent on a connection directly (``Connection.send_packed_command`` then ``read_response``: the store sends its scripts'
EVALSHA so). Only redis-py's public API is wrapped; a command sent from inside another (the connection's handshake)
is part of it.

A kill at a random moment rarely lands between two requests that run within a millisecond of each other."""

from __future__ import annotations

import contextvars
import hashlib
import os
import signal
import weakref
from typing import Any

import redis.asyncio.client as client
import redis.asyncio.connection as connection
import redis.commands.core as commands

AT = int(os.environ.get("OUTLAST_TEST_REDIS_DIE_AT", "0"))
WHEN = os.environ.get("OUTLAST_TEST_REDIS_DIE_WHEN", "before")
NAME = os.environ.get("OUTLAST_TEST_REDIS_DIE_NAME", "")
TRACE = os.environ.get("OUTLAST_TEST_REDIS_DIE_TRACE", "")
if WHEN not in ("before", "after"):
    raise ValueError(f"OUTLAST_TEST_REDIS_DIE_WHEN={WHEN!r}: expected before or after")

_count = [0]
_named = [0]
"""Requests named NAME so far."""
_target = [0 if NAME else AT]
"""The number of the request to kill at (with NAME: known once the AT-th of that name starts)."""
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("redis_die_inside", default=False)
_pending: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
"""Connections a counted command was sent on directly, whose reply is not read yet: their request's number."""
_scripts: dict[bytes, str] = {}
_trace = open(TRACE, "a", buffering=1) if TRACE else None  # noqa: SIM115  (lives as long as the process)


def _die(when: str, n: int) -> None:
    if _trace is not None:
        _trace.write(f"killed {when} {n}\n")
        _trace.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _start(kind: str, name: str) -> int:
    _count[0] += 1
    n = _count[0]
    if _trace is not None:
        _trace.write(f"{n} {kind} {name}\n")
    if NAME and name == NAME:
        _named[0] += 1
        if _named[0] == AT:
            _target[0] = n
    if n == _target[0] and WHEN == "before":
        _die("before", n)
    return n


def _end(n: int) -> None:
    if n == _target[0] and WHEN == "after":
        _die("after", n)


def _text(word: Any) -> str:
    return word.decode(errors="replace") if isinstance(word, bytes) else str(word)


def _script_name(sha: bytes) -> str:
    """The store's script (a public constant of its lua module) whose SHA1 ``sha`` is, for the trace."""
    if not _scripts:
        from engine.store.redis import lua

        for attr in dir(lua):
            value = getattr(lua, attr)
            if attr.isupper() and isinstance(value, str):
                _scripts[hashlib.sha1(value.encode()).hexdigest().encode()] = attr
    return _scripts.get(sha, sha[:8].decode(errors="replace"))


def _packed_name(packed: Any) -> str:
    data = b"".join(bytes(p) for p in packed) if isinstance(packed, list | tuple) else bytes(packed)
    words = data.split(b"\r\n")  # *N, $len, NAME, $len, FIRST ARG, ...
    name = words[2].decode(errors="replace").upper() if len(words) > 2 else "?"
    if name == "EVALSHA" and len(words) > 4:
        return f"EVALSHA:{_script_name(words[4])}"
    return name


_execute_command = client.Redis.execute_command


async def execute_command(self: Any, *args: Any, **options: Any) -> Any:
    if _inside.get():
        return await _execute_command(self, *args, **options)
    name = _text(args[0]).upper() if args else "?"
    if name == "EVALSHA" and len(args) > 1:
        name = f"EVALSHA:{_script_name(_text(args[1]).encode())}"
    n = _start("command", name)
    token = _inside.set(True)
    try:
        return await _execute_command(self, *args, **options)
    finally:
        _inside.reset(token)
        _end(n)


_script_call = commands.AsyncScript.__call__


async def script_call(self: Any, keys: Any = None, args: Any = None, client: Any = None) -> Any:
    """A script run through redis-py (EVALSHA, and on NOSCRIPT its SCRIPT LOAD and EVALSHA again): one request."""
    if _inside.get():
        return await _script_call(self, keys, args, client)
    n = _start("script", "EVALSHA:" + _script_name(self.sha.encode() if isinstance(self.sha, str) else self.sha))
    token = _inside.set(True)
    try:
        return await _script_call(self, keys, args, client)
    finally:
        _inside.reset(token)
        _end(n)


_pipeline_execute = client.Pipeline.execute


async def pipeline_execute(self: Any, raise_on_error: bool = True) -> Any:
    if _inside.get() or not self.command_stack:
        return await _pipeline_execute(self, raise_on_error)
    names = [_text(args[0]).upper() for args, _options in self.command_stack]
    shown = ",".join(dict.fromkeys(names))
    n = _start("pipeline", f"{shown}x{len(names)}")
    token = _inside.set(True)
    try:
        return await _pipeline_execute(self, raise_on_error)
    finally:
        _inside.reset(token)
        _end(n)


_connect_check_health = connection.AbstractConnection.connect_check_health


async def connect_check_health(self: Any, *args: Any, **kwargs: Any) -> None:
    token = _inside.set(True)  # the handshake is part of the request that made the connection
    try:
        await _connect_check_health(self, *args, **kwargs)
    finally:
        _inside.reset(token)


_send_packed_command = connection.AbstractConnection.send_packed_command


async def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
    if _inside.get():
        return await _send_packed_command(self, command, check_health)
    n = _start("direct", _packed_name(command))
    _pending[self] = n
    try:
        await _send_packed_command(self, command, check_health)
    except BaseException:
        _pending.pop(self, None)
        _end(n)
        raise


_read_response = connection.AbstractConnection.read_response


async def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
    n = None if _inside.get() else _pending.pop(self, None)
    if n is None:
        return await _read_response(self, *args, **kwargs)
    try:
        return await _read_response(self, *args, **kwargs)
    finally:
        _end(n)


client.Redis.execute_command = execute_command  # type: ignore[method-assign]
commands.AsyncScript.__call__ = script_call  # type: ignore[method-assign]
client.Pipeline.execute = pipeline_execute  # type: ignore[method-assign]
connection.AbstractConnection.connect_check_health = connect_check_health  # type: ignore[method-assign]
connection.AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
connection.AbstractConnection.read_response = read_response  # type: ignore[method-assign]
