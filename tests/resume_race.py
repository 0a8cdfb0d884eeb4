"""A plugin for the resume race test: in the process loaded with it, the first ``Engine.resume`` of the operation
OUTLAST_TEST_RESUME_RACE first runs ``outlast resume OP --queue`` (``--detach`` with
OUTLAST_TEST_RESUME_RACE_HOW=detach: it is claimed, and runs) as another process (the same store, named by the
environment) and waits for it: the other command's resume lands between this one's look at the operation (stopped)
and its own write, as two resumes typed at once may."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from engine import Engine

OP = os.environ.get("OUTLAST_TEST_RESUME_RACE", "")
HOW = os.environ.get("OUTLAST_TEST_RESUME_RACE_HOW", "queue")
_resume = Engine.resume
_fired = [False]


async def resume(self: Engine, op_id: str, *args: Any, **kw: Any) -> Any:
    if OP and op_id == OP and not _fired[0]:
        _fired[0] = True
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_TEST_RESUME_RACE")}
        other = subprocess.run(
            [sys.executable, "-m", "engine.cli", "resume", OP, f"--{HOW}"], env=env, capture_output=True, text=True
        )
        assert other.returncode == 0, other.stderr
    return await _resume(self, op_id, *args, **kw)


Engine.resume = resume  # type: ignore[method-assign]
