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
    a resume runs it again. RunTimedOut past ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        if ctx.cancelled:
            await _kill(proc)
            return None
        left = end - time.monotonic()
        if left <= 0:
            await _kill(proc)
            raise RunTimedOut(f"ran more than {timeout:g}s; its process group was killed")
        try:
            return await asyncio.wait_for(asyncio.shield(proc.wait()), min(POLL, left))
        except TimeoutError:
            continue


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
