"""A child process that is one item of an operation: waited for, killed on a stop or past its time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

POLL = 0.2


class RunTimedOut(Exception):
    """The child ran past its time; its process group was killed."""


async def wait_or_stop(ctx: Any, proc: asyncio.subprocess.Process, timeout: float) -> int | None:
    """The child's exit code; None when a stop (pause, cancel, timeout of the operation) was asked for
    meanwhile: the child's process group is killed and the caller leaves the item undone (``break``), so
    a resume runs it again. RunTimedOut past ``timeout`` seconds. Call it inside an item body."""
    start = time.monotonic()
    end = start + timeout
    waiter = asyncio.ensure_future(proc.wait())
    try:
        while True:
            # A beat for the stall clock: the child is alive (its own timeout bounds a hung one).
            ctx.progress(run_seconds=round(time.monotonic() - start, 1))
            if ctx.cancelled:
                await _kill(proc)
                return None
            left = end - time.monotonic()
            if left <= 0:
                await _kill(proc)
                raise RunTimedOut(f"ran more than {timeout:g}s; its process group was killed")
            done, _ = await asyncio.wait({waiter}, timeout=min(POLL, left))
            if done:
                return waiter.result()
    finally:
        waiter.cancel()  # a forced stop: the engine kills the children (ctx.spawn)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
