"""The event loop's exception handler while an engine runs: an error in a callback said once, then counted.

Out of memory (``ulimit -v``), asyncio's own self-pipe reader (``BaseSelectorEventLoop._read_from_self``)
fails at every turn of the loop, its byte still unread: the default handler logged a traceback each time,
86,000 lines in 5 s on stderr (a systemd journal, a redirected file), even in runs where every operation
completed. Now each kind of error (its message, type and place) is said once, in one line when it is a
MemoryError, and the times it came again are counted and said once a minute at most, and when the engine
stops. Any other error is said the first time as asyncio says it (the default handler), its repeats counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("outlast.engine")

KINDS = 64
"""Kinds of error kept counted; beyond them, every further one is counted as one more of the last kind."""


class LoopErrors:
    """Installed with ``install`` on the loop an engine starts on (unless one is set already), removed by ``remove``."""

    EVERY = 60.0
    """Seconds between two lines counting the repeats of one kind of error."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kinds: dict[tuple[str, str, str], list[Any]] = {}
        """Each kind: [when its count was last said, repeats since, what it is (for the line)]."""
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.get_exception_handler() is None:  # the dashboard's or a program's own stays
            loop.set_exception_handler(self)
            self._loop = loop

    def remove(self) -> None:
        """Say the repeats not said yet, and give the loop its default handler back."""
        self.flush()
        loop, self._loop = self._loop, None
        if loop is not None and loop.get_exception_handler() is self:
            loop.set_exception_handler(None)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        with contextlib.suppress(MemoryError):  # even this found no memory: uncounted, never raised into the loop
            self._handle(loop, context)

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "an error in the event loop")
        key = (message, type(exc).__name__ if exc is not None else "", _where(exc))
        kind = self._kinds.get(key)
        if kind is not None:
            kind[1] += 1
            if self._clock() - kind[0] >= self.EVERY:
                self._say(kind)
            return
        if len(self._kinds) < KINDS:
            self._kinds[key] = [self._clock(), 0, f"{message}: {key[1] or 'error'}{f' at {key[2]}' if key[2] else ''}"]
        if isinstance(exc, MemoryError):  # one line: the traceback of asyncio's own code says nothing more
            log.error("%s: the machine ran out of memory (MemoryError%s)", message, f" at {key[2]}" if key[2] else "")
        else:
            loop.default_exception_handler(context)

    def _say(self, kind: list[Any]) -> None:
        n, kind[0], kind[1] = kind[1], self._clock(), 0
        if n:
            log.warning("%s: %s more like it since", kind[2], f"{n:,}")

    def flush(self) -> None:
        """Say the counts not said yet (the engine stops)."""
        with contextlib.suppress(MemoryError):
            for kind in self._kinds.values():
                self._say(kind)


def _where(exc: BaseException | None) -> str:
    """``file:line`` of the innermost frame ``exc`` was raised at ("" when it has no traceback); no source is read."""
    tb = exc.__traceback__ if exc is not None else None
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
