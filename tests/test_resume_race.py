"""Two resumes of one stopped operation at once: the one whose write lands second finds it queued, by the other.
It was refused ("is queued already: another command made it so meanwhile", exit 7), where a moment later it
found it queued at its first look and went on: ``--queue`` said "already queued" (exit 0), a foreground resume
ran it. The same command's exit code depended on which side of a few milliseconds it landed. The other resume
lands at that exact point here (tests.resume_race, a real ``outlast resume --queue`` process)."""

from __future__ import annotations

import pytest

from engine import Status
from tests.fixtures_cli import CliAt
from tests.fixtures_ops import submit

RACE = ("--plugin", "tests.ops_for_tests", "--plugin", "tests.resume_race")


@pytest.fixture
def racing(state_dir):  # type: ignore[no-untyped-def]
    return CliAt(state_dir, OUTLAST_PLUGINS="tests.ops_for_tests")


def _paused(cli: CliAt) -> str:
    op_id = submit(cli, "ledger", {"items": 5})
    assert cli("pause", op_id).returncode == 0
    assert cli.op(op_id).status is Status.PAUSED
    return op_id


def test_resume_queue_racing_another_resume_is_already_queued(racing: CliAt) -> None:
    op_id = _paused(racing)
    r = racing(
        "--plugin",
        "tests.resume_race",
        "resume",
        op_id,
        "--queue",
        env={**racing.env, "OUTLAST_TEST_RESUME_RACE": op_id},
    )
    assert r.returncode == 0, r.stderr
    assert f"{op_id} is already queued" in r.stdout, (r.stdout, r.stderr)
    op = racing.op(op_id)
    assert op.status is Status.QUEUED and op.attempt == 2  # resumed once


def test_a_foreground_resume_racing_another_runs_it(racing: CliAt) -> None:
    op_id = _paused(racing)
    r = racing(*RACE, "resume", op_id, env={**racing.env, "OUTLAST_TEST_RESUME_RACE": op_id})
    assert r.returncode == 0, r.stderr
    op = racing.op(op_id)
    assert op.status is Status.COMPLETED and op.attempt == 2, op


def test_a_resume_racing_another_that_is_running_it_already_is_refused_as_running(racing: CliAt) -> None:
    """As a resume of running work is (exit 7, "is running"), not "is queued" of what another process runs."""
    op_id = submit(racing, "ledger", {"items": 400, "seconds": 0.02})
    env = {**racing.env, "OUTLAST_TEST_RESUME_RACE": op_id, "OUTLAST_TEST_RESUME_RACE_HOW": "detach"}
    try:
        for how in ([], ["--queue"]):
            assert racing("pause", op_id).returncode == 0
            assert racing.op(op_id).status is Status.PAUSED
            r = racing(*RACE, "resume", op_id, *how, env=env)
            assert r.returncode == 7 and f"operation {op_id} is running" in r.stderr, (r.returncode, r.stderr)
            assert racing.op(op_id).status is Status.RUNNING
    finally:
        racing("cancel", op_id)


def test_a_resume_from_a_checkpoint_racing_another_is_still_refused(racing: CliAt) -> None:
    """The other resume went on from the newest checkpoint: the one asked for is not what runs (as when the
    operation is found queued at the first look: a checkpoint applies to a stopped operation)."""
    op_id = _paused(racing)
    env = {**racing.env, "OUTLAST_TEST_RESUME_RACE": op_id}
    r = racing(*RACE, "resume", op_id, "--queue", "--profile", "stall_timeout=60", env=env)
    assert r.returncode == 7 and f"operation {op_id} is queued" in r.stderr, (r.returncode, r.stderr)
    assert racing.op(op_id).attempt == 2  # resumed once, by the other


def test_priority_of_work_claimed_meanwhile_is_refused(racing: CliAt) -> None:
    """``outlast priority ID high`` read the operation queued, then a process claimed it, then the priority was
    written on the running operation and the command said "ID priority high", exit 0, where re-prioritising
    running work is refused (exit 7), as it is when the command finds it running at its look."""
    op_id = submit(racing, "ledger", {"items": 400, "seconds": 0.02})
    try:
        env = {**racing.env, "OUTLAST_TEST_PRIORITY_RACE": op_id}
        r = racing(
            "--plugin", "tests.ops_for_tests", "--plugin", "tests.priority_race", "priority", op_id, "high", env=env
        )
        op = racing.op(op_id)
        assert op.status is Status.RUNNING, op.status
        assert r.returncode == 7 and f"operation {op_id} is running" in r.stderr, (r.returncode, r.stdout, r.stderr)
        assert op.priority.value == "normal"
    finally:
        racing("cancel", op_id)


def test_cancel_of_stopped_work_resumed_meanwhile_cancels_it(racing: CliAt) -> None:
    """``outlast cancel`` read the operation paused (or interrupted, as a worker's auto_resume queues it again),
    then another command queued it: the cancel was refused, "operation ID is queued: nothing to cancel", exit 7,
    and the work ran on, where a cancel of queued work cancels it (as it does when it finds it queued)."""
    op_id = _paused(racing)
    env = {**racing.env, "OUTLAST_TEST_CANCEL_RACE": op_id}
    r = racing("--plugin", "tests.ops_for_tests", "--plugin", "tests.cancel_resume_race", "cancel", op_id, env=env)
    assert r.returncode == 0 and f"{op_id} cancelled" in r.stdout, (r.returncode, r.stdout, r.stderr)
    op = racing.op(op_id)
    assert op.status is Status.CANCELLED and op.attempt == 2  # the resume landed, then the cancel
