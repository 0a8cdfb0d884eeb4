"""command paused while its output is read: the ::outlast checkpoint it wrote before the stop is the one
the resume gets, and no step it checkpointed is run again."""

from __future__ import annotations

import collections
import sys
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


AHEAD = """#!/bin/sh
i=$(printf '%s' "${OUTLAST_CHECKPOINT:-}" | sed -n 's/.*"next": *\\([0-9]*\\).*/\\1/p')
i=${i:-0}
while [ "$i" -lt 300 ]; do
  echo "$i" >> "$1"
  i=$((i + 1))
  printf '::outlast progress %s/300\\n::outlast checkpoint {"next": %s}\\n' "$i" "$i"
done
[ -n "${OUTLAST_RESUME:-}" ] || exec sleep 60  # the first attempt stays running until the pause
"""


async def test_a_pause_of_a_command_ahead_of_the_engine_resumes_from_its_last_checkpoint(
    engine: Engine, tmp_path: Path
) -> None:
    """A command that checkpoints each quick step writes faster than checkpoints are stored. They were stored
    one per line, so the engine fell behind (hundreds of lines), and a pause that came while one was written
    raised the stop there: the lines after it were never read, and the resume did again every step they had
    checkpointed (found with 400 steps of a shell loop: 376 run twice). Now the last checkpoint of what one read
    brought is stored, and a stop reads the command's output before its final checkpoint."""
    script = tmp_path / "ahead.sh"
    script.write_text(AHEAD)
    script.chmod(0o755)
    done = tmp_path / "done"
    op = await engine.submit(OperationSpec(type="command", params={"argv": [str(script), str(done)]}))
    await until(lambda: done.exists() and len(done.read_text().split()) >= 300, timeout=20)
    await engine.pause(op.id)
    paused = await engine.wait(op.id, timeout=20)
    assert paused.status is Status.PAUSED, paused.error
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=30)
    counts = collections.Counter(int(x) for x in done.read_text().split())
    assert sorted(counts) == list(range(300))
    assert [k for k, n in counts.items() if n > 1] == []
    assert final.status is Status.COMPLETED, final.error


async def test_a_fraction_of_more_digits_than_int_takes_is_no_progress_and_no_failure(engine: Engine) -> None:
    """A line with a long run of digits after a slash ("3/1415926535...", 5,000 digits) met int()'s limit of
    4,300 digits in the search for progress: the operation failed with a ValueError at command.py, its
    command run to the end without a fault. Such a number is no count of items: the line is passed over."""
    code = "print('3/' + '1' * 5000); print('1' * 5000 + '/7'); print('2/4')"
    op = await engine.submit(OperationSpec(type="command", params={"argv": [sys.executable, "-c", code]}))
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED, final.error
    assert final.result is not None and final.result["lines"] == 3, final.result
