"""A plugin for the cancel-and-resume race test: in the process loaded with it, the first store write that cancels
the operation OUTLAST_TEST_CANCEL_RACE is preceded by ``outlast resume OP --queue``, another process (the same store,
named by the environment), as a person's resume, or a worker's auto_resume of an interrupted operation, may land
between ``outlast cancel``'s look at the operation (stopped) and its write."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from engine.models import Status
from engine.store.sqlite import LocalStore

OP = os.environ.get("OUTLAST_TEST_CANCEL_RACE", "")
_transition = LocalStore.transition
_fired = [False]


async def transition(self: LocalStore, op_id: str, to: Status, **kw: Any) -> Any:
    if OP and op_id == OP and to is Status.CANCELLED and not _fired[0]:
        _fired[0] = True
        env = {k: v for k, v in os.environ.items() if k != "OUTLAST_TEST_CANCEL_RACE"}
        other = subprocess.run(
            [sys.executable, "-m", "engine.cli", "resume", OP, "--queue"], env=env, capture_output=True, text=True
        )
        assert other.returncode == 0, other.stderr
    return await _transition(self, op_id, to, **kw)


LocalStore.transition = transition  # type: ignore[method-assign]
