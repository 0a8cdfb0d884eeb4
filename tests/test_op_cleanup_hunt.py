"""cleanup_operation's retention and what later operations build on: the knowledge base and the baselines."""

from __future__ import annotations

import os
import time
from pathlib import Path

from engine import Engine, OperationSpec, Status

OLD = time.time() - 90 * 86400


async def test_retention_keeps_the_knowledge_base_and_the_baselines(engine: Engine, tmp_path: Path) -> None:
    """A month without a kb_population took the knowledge base (its sources perhaps gone since), a month
    without a timed run the performance baseline (the next run silently wrote a new one to compare with):
    no operation of the last N days named them. An old report beside them still goes."""
    outputs = Path(engine.settings.state_dir) / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    lasting = ["kb.sqlite", "kb.sqlite-wal", "kb.sqlite-shm", "perf-baseline-0123456789ab.json"]
    for name in [*lasting, "report.json", "sub/kb.sqlite"]:
        (outputs / name).parent.mkdir(exist_ok=True)
        (outputs / name).write_text("x")
        os.utime(outputs / name, (OLD, OLD))
    spec = OperationSpec(type="cleanup_operation", params={"retention_days": 30, "dry_run": False})
    done = await engine.wait((await engine.submit(spec)).id, 30)
    assert done.status is Status.COMPLETED, done.error
    assert all((outputs / name).exists() for name in lasting)
    assert not (outputs / "report.json").exists() and not (outputs / "sub").exists()  # only at the top: the default
