"""Threads of ``asyncio.to_thread`` (a handler's blocking work) that are still blocked when the program ends.

A handler's thread stuck in a call that never returns (``open`` of a FIFO with no writer, a read from a hung
NFS mount or socket without a timeout) outlives its operation: the engine settles the operation (timed out,
cancelled) but cannot stop the thread. ``asyncio.run`` then waited for it for ever as it closed the loop,
and so did the interpreter at exit: ``outlast run`` and ``outlast worker --exit-when-idle`` never exited,
not even on SIGTERM. Now the loop's default executor is one of ours; at the end the threads still running
after a short grace are named, the loop is handed an idle executor to shut down, and the process ends with
``os._exit`` once everything it owns is written (:func:`exit_now_if_blocked`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import thread as _futures_thread
from typing import Any, TypeVar

T = TypeVar("T")

PREFIX = "outlast-to-thread"
GRACE = 1.0
"""Seconds the end of the program waits for threads still running (their operations already ended)."""

_blocked: list[tuple[threading.Thread, str]] = []
"""Each thread left blocked at the end, and where, once :meth:`LoopThreads.release` found any."""
_STDLIB = os.path.join(os.path.dirname(os.__file__), "")


class LoopThreads:
    """The event loop's default executor, whose threads still blocked at the end are left behind."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = ThreadPoolExecutor(thread_name_prefix=PREFIX)
        loop.set_default_executor(self._pool)

    def release(self, loop: asyncio.AbstractEventLoop, grace: float = GRACE) -> list[str]:
        """Shut the executor down and wait up to ``grace`` for its threads (idle ones exit at once: called as
        the program ends, this blocks nothing else); where each one still running is (also kept for
        :func:`exit_now_if_blocked`)."""
        if self._pool is None:
            return []
        self._pool.shutdown(wait=False)  # idle threads exit now; busy ones when their call returns
        self._pool = None
        # What runs on this loop afterwards (the loop's own close, a test going on) gets fresh threads; the
        # loop's close then shuts down those, not the blocked ones.
        loop.set_default_executor(ThreadPoolExecutor())
        end = time.monotonic() + grace
        for t in _running():
            t.join(max(0.0, end - time.monotonic()))
        left = _running()
        if not left:
            return []
        where = [_where(t) for t in left]
        _blocked.extend(zip(left, where, strict=True))
        return where


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, not waiting at its end for a thread still blocked (see the module doc)."""

    async def main() -> T:
        loop, threads = asyncio.get_running_loop(), LoopThreads()
        threads.install(loop)
        try:
            return await coro
        finally:
            threads.release(loop)

    return asyncio.run(main())


def _running() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(PREFIX) and t.is_alive()]


def _where(thread: threading.Thread) -> str:
    """``file.py:123 in function``: the thread's innermost frame outside the standard library (the handler's
    or a library's call that blocks)."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "(finished)"
    stack = traceback.extract_stack(frame)
    own = [f for f in stack if not f.filename.startswith(_STDLIB)]
    f = (own or stack)[-1]
    if not own and f.filename == _futures_thread.__file__:  # the executor's call of the function itself
        return "a builtin handed to asyncio.to_thread"
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}" + ("" if own else " (standard library)")


def exit_now_if_blocked(code: int) -> None:
    """End the process with ``code`` now when threads left blocked still are (the interpreter's exit would wait
    for them for ever), after one line saying where and the standard streams flushed; else return."""
    places = [where for t, where in _blocked if t.is_alive()]
    _blocked.clear()
    if not places:
        return
    print(
        f"outlast: exiting without waiting for {len(places)} thread(s) of ended operations still blocked at"
        f" {', '.join(dict.fromkeys(places))} (a blocking call that never returned: give it a timeout)",
        file=sys.stderr,
    )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
