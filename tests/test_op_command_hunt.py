"""command paused while its output is read: the ::outlast checkpoint it wrote before the stop is the one
the resume gets, and no step it checkpointed is run again."""

from __future__ import annotations

import collections
from pathlib import Path

from engine import Engine, OperationSpec, Status
from tests.fixtures_engine import until

SCRIPT = """#!/bin/sh
i=$(printf '%s' "${OUTLAST_CHECKPOINT:-}" | sed -n 's/.*"next": *\\([0-9]*\\).*/\\1/p')
i=${i:-0}
while [ "$i" -lt 60 ]; do
  sleep 0.02
  echo "$i" >> "$1"
  i=$((i + 1))
  printf '::outlast progress %s/60\\n::outlast checkpoint {"next": %s}\\n' "$i" "$i"
done
"""


async def test_a_pause_keeps_the_checkpoint_written_with_the_last_progress(engine: Engine, tmp_path: Path) -> None:
    """The stop came while a read was in flight: its progress line raised the stop, and the checkpoint line
    read with it was dropped, so the resume did the step that line checkpointed again (every time, with a
    command that checkpoints each step). The two lines are one write: a kill between two writes may cost the
    step between them, as the command's own checkpoint interval."""
    script = tmp_path / "steps.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    for trial in range(2):
        done = tmp_path / f"done-{trial}"
        op = await engine.submit(OperationSpec(type="command", params={"argv": [str(script), str(done)]}))
        await until(lambda d=done, n=5 + 5 * trial: d.exists() and len(d.read_text().split()) >= n, timeout=20)
        await engine.pause(op.id)
        paused = await engine.wait(op.id, timeout=20)
        assert paused.status is Status.PAUSED, paused.error
        await engine.resume(op.id)
        final = await engine.wait(op.id, timeout=30)
        assert final.status is Status.COMPLETED, final.error
        counts = collections.Counter(int(x) for x in done.read_text().split())
        assert sorted(counts) == list(range(60))
        assert [k for k, n in counts.items() if n > 1] == [], f"run twice (trial {trial})"
