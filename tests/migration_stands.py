"""A plugin for one test (``outlast --plugin tests.migration_stands worker``, with ``OUTLAST_TEST_MIGRATION_STANDS``
naming a migration): once that migration is applied and committed, the whole process stands still (its event loop
blocked, as in ``tests.ops_stall_after_spawn``) until it is killed. A SIGKILL then comes mid-run, after exactly the
migrations up to that one, however loaded the machine: the test waited for a count of migrations applied, and the
operation could apply all of them before the kill came (migrations need no checkpoint, so
``tests.checkpoint_gate`` cannot hold it)."""

from __future__ import annotations

import os
import time
from typing import Any

import engine.operations.migration as migration

_apply_one = migration._apply_one


async def _standing_apply_one(db: Any, table: str, m: migration.Migration, *args: Any, **kwargs: Any) -> str:
    outcome = await _apply_one(db, table, m, *args, **kwargs)
    if m.name == os.environ.get("OUTLAST_TEST_MIGRATION_STANDS"):
        while True:  # blocking on purpose: nothing of the engine runs until the SIGKILL
            time.sleep(1)
    return outcome


migration._apply_one = _standing_apply_one
