"""A plugin for the recovery race test: right after a store's ``pending_controls`` returns an answer about the
operation OUTLAST_TEST_CONTROL_RACE_OP, that operation is asked to OUTLAST_TEST_CONTROL_RACE_ACTION (pause by
default) through the same store, once: the request lands between a reader's look at the requests and what it
writes next, as one from another process may (``outlast pause`` while a recovery settles the orphan).

Both stores' classes are wrapped (their public ``pending_controls`` and ``request_control``); a process that never
asks about that operation is left as it was."""

from __future__ import annotations

import os
from typing import Any

from engine.store.redis import RedisStore
from engine.store.sqlite import LocalStore

OP = os.environ.get("OUTLAST_TEST_CONTROL_RACE_OP", "")
ACTION = os.environ.get("OUTLAST_TEST_CONTROL_RACE_ACTION", "pause")
_fired = [False]


def _wrap(cls: Any) -> None:
    read = cls.pending_controls

    async def pending_controls(self: Any, op_ids: list[str]) -> Any:
        found = await read(self, op_ids)
        if OP and OP in op_ids and not _fired[0]:
            _fired[0] = True
            await self.request_control(OP, ACTION)
        return found

    cls.pending_controls = pending_controls


for _cls in (LocalStore, RedisStore):
    _wrap(_cls)
