"""A plugin for the killed worker of ``tests.fixtures_ops.kill_worker_when`` (``outlast --plugin
tests.checkpoint_gate worker``, with ``OUTLAST_TEST_CHECKPOINT_GATE`` naming a directory). Once each checkpoint is
written (``at-N``), the whole process stands still (its event loop blocked, as in ``tests.ops_stall_after_spawn``)
until the test lets it go on (``go-N``); and an attempt whose handler returned stands still (``end``) instead of
completing, until it is killed. The test looks at the store while nothing moves, and whenever its kill comes,
the operation has not ended: a kill cannot come too late. ``OUTLAST_TEST_CHECKPOINT_STANDS=0``: it stands at
its end only."""

from __future__ import annotations

import os
import select
from pathlib import Path
from typing import Any, NoReturn

from engine.attempt import Attempt

_save = Attempt.save_checkpoint
_written = 0


def _gate() -> Path | None:
    gate = os.environ.get("OUTLAST_TEST_CHECKPOINT_GATE")
    return Path(gate) if gate else None


async def _gated_save(self: Attempt, *args: Any, **kwargs: Any) -> bool:
    global _written
    saved = await _save(self, *args, **kwargs)
    gate = _gate()
    if saved and gate is not None and os.environ.get("OUTLAST_TEST_CHECKPOINT_STANDS") != "0":
        _written += 1
        (gate / f"at-{_written}").touch()
        go = gate / f"go-{_written}"
        while not go.exists():  # blocking on purpose: nothing of the engine runs until the test says so
            # Not time.sleep: under libfaketime with a real monotonic clock (a worker whose wall clock is ahead)
            # its absolute monotonic deadline is shifted by the fake offset, and every call failed with EINVAL.
            select.select([], [], [], 0.005)
    return saved


async def _never_completed(self: Attempt, result: Any) -> NoReturn:
    gate = _gate()
    assert gate is not None, "tests.checkpoint_gate is for a worker given OUTLAST_TEST_CHECKPOINT_GATE"
    (gate / "end").touch()
    while True:  # until the SIGKILL
        select.select([], [], [], 1.0)  # not time.sleep: see _gated_save


Attempt.save_checkpoint = _gated_save  # type: ignore[method-assign]
Attempt._completed = _never_completed  # type: ignore[method-assign]
