"""A plugin for one test (``outlast --plugin tests.ops_stall_after_spawn worker``): the command operation's
event loop stalls for 3 s right after it started the command, before it goes on, so that a worker can be
SIGKILLed in that moment as deterministically as a test can."""

from __future__ import annotations

import time
from typing import Any

import engine.operations.command as command

_start = command._start


async def _stalled_start(*args: Any, **kwargs: Any) -> Any:
    proc = await _start(*args, **kwargs)
    time.sleep(3)  # blocking on purpose: nothing of the engine runs until the kill
    return proc


command._start = _stalled_start
