"""A plugin for the priority race test: in the process loaded with it, the first store write of a new priority for
the operation OUTLAST_TEST_PRIORITY_RACE is preceded by ``outlast resume OP --detach``, another process that claims
it (the same store, named by the environment): the claim lands between ``outlast priority``'s look at the operation
(queued) and its write, as a worker's may."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from engine.store.sqlite import LocalStore

OP = os.environ.get("OUTLAST_TEST_PRIORITY_RACE", "")
_update = LocalStore.update
_fired = [False]


async def update(self: LocalStore, op_id: str, **fields: Any) -> Any:
    if OP and op_id == OP and "priority" in fields and not _fired[0]:
        _fired[0] = True
        env = {k: v for k, v in os.environ.items() if k != "OUTLAST_TEST_PRIORITY_RACE"}
        other = subprocess.run(
            [sys.executable, "-m", "engine.cli", "--json", "resume", OP, "--detach"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert other.returncode == 0 and '"pid": null' not in other.stdout, (other.stdout, other.stderr)
    return await _update(self, op_id, **fields)


LocalStore.update = update  # type: ignore[method-assign]
