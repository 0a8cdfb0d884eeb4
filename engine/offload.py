"""``off_loop``: ``asyncio.to_thread`` for the engine's own blocking calls, on threads of their own.

On the loop's default executor they waited behind a handler's calls that never return (all its threads
blocked), and the settle of a stalled operation, its log lines and the stop of the process waited with them,
for ever (``threads.engine_executor``). A module of its own, importing nothing at import: the store's modules
that use it load on paths that run no event loop (a quick ``outlast submit``), where asyncio is not loaded."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


async def off_loop(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on one of the engine's own threads, awaited."""
    import asyncio
    import functools

    from .threads import engine_executor

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(engine_executor(), functools.partial(fn, *args, **kwargs))
