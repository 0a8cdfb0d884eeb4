"""A plugin for the control race tests: a request and a recovery cross at an exact point, in the process loaded with
it, for the operation OUTLAST_TEST_CONTROL_RACE_OP, once.

- OUTLAST_TEST_CONTROL_RACE_WHEN=read (the default): right after a store's ``pending_controls`` returns an answer
  about that operation, it is asked to pause through the same store: the request lands between a recovery's look at
  the requests and its write, as one from another process may.
- OUTLAST_TEST_CONTROL_RACE_WHEN=ask: as this process is about to store a request for that operation
  (``request_control``), the process running it (pid OUTLAST_TEST_CONTROL_RACE_KILL) is SIGKILLed and ``outlast ls``
  (the store named by the environment) run until it has recovered the orphan; then the request goes on: it lands
  after the recovery's write, once the operation no longer runs.

Both stores' classes are wrapped (their public ``pending_controls`` and ``request_control``); a process that never
touches that operation is left as it was."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

from engine.models import Status
from engine.store.redis import RedisStore
from engine.store.sqlite import LocalStore

OP = os.environ.get("OUTLAST_TEST_CONTROL_RACE_OP", "")
WHEN = os.environ.get("OUTLAST_TEST_CONTROL_RACE_WHEN", "read")
KILL = int(os.environ.get("OUTLAST_TEST_CONTROL_RACE_KILL", "0"))
_fired = [False]


def _first(op_ids: list[str]) -> bool:
    if not OP or OP not in op_ids or _fired[0]:
        return False
    _fired[0] = True
    return True


async def _recover_elsewhere(store: Any) -> None:
    os.kill(KILL, signal.SIGKILL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_TEST_CONTROL_RACE_")}
    end = time.monotonic() + 30
    while (await store.get(OP)).status is Status.RUNNING:  # a Redis lease may still be running out
        if time.monotonic() > end:
            raise AssertionError(f"tests.control_race: {OP} still running 30 s after its process was killed")
        ls = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.cli", "ls", env=env, stdout=asyncio.subprocess.DEVNULL
        )
        await ls.wait()


def _wrap(cls: Any) -> None:
    read, ask = cls.pending_controls, cls.request_control

    async def pending_controls(self: Any, op_ids: list[str]) -> Any:
        found = await read(self, op_ids)
        if WHEN == "read" and _first(op_ids):
            await ask(self, OP, "pause")
        return found

    async def request_control(self: Any, op_id: str, action: Any) -> Any:
        if WHEN == "ask" and _first([op_id]):
            await _recover_elsewhere(self)
        return await ask(self, op_id, action)

    cls.pending_controls = pending_controls
    cls.request_control = request_control


for _cls in (LocalStore, RedisStore):
    _wrap(_cls)
