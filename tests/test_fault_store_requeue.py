"""Work a live worker stopped because the store could not be written, once the store works again.

A worker whose store writes fail for ``store_outage_limit`` stops its running work at a safe point. When the
store is back by the time that stop is written (a peer SIGSTOPped while it held the database's write lock,
for longer than SQLite's busy wait; checkpoints too large for the disk until something freed room), the
worker lives on, and the work was written ``interrupted``: ``auto_resume`` queues again only what a dead
process left (found orphaned), so it sat interrupted for good beside idle workers that had ``auto_resume``.
Here the worker's checkpoint writes fail (tests.store_flaky, only statements writing checkpoints) while its
other writes work, then work again."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures_cli import CliAt, until
from tests.fixtures_ops import done_keys, submit

N = 500


def test_work_stopped_for_the_store_is_queued_again_once_it_works(state_dir: Path, tmp_path: Path) -> None:
    flag = tmp_path / "checkpoints-fail"
    cli = CliAt(
        state_dir,
        OUTLAST_PLUGINS="tests.ops_for_tests,tests.store_flaky",
        OUTLAST_AUTO_RESUME="1",
        OUTLAST_STORE_OUTAGE_LIMIT="1",
        OUTLAST_GRACE_PERIOD="2",
        OUTLAST_CONTROL_POLL_INTERVAL="0.05",
        OUTLAST_TEST_FLAKY_FLAG=str(flag),
        OUTLAST_TEST_FLAKY_P="1",
        OUTLAST_TEST_FLAKY_MATCH="INTO checkpoints",
    )
    trace = tmp_path / "items"
    params = {"items": N, "seconds": 0.006, "log_file": str(trace)}
    op_id = submit(cli, "ledger", params, "checkpoint_interval=0.2", "retry.backoff_base=0.2")
    worker = cli.start("worker")
    try:
        until(lambda: cli.op(op_id).checkpoint_seq, 30, what="a checkpoint")
        flag.touch()
        stopped = until(
            lambda: (op := cli.op(op_id)) and (op.status.value == "interrupted" or op.attempt > 1) and op,
            30,
            what="the stop for the store",
        )
        checkpointed = done_keys(state_dir, op_id)
        flag.unlink()
        final = cli.wait_status(op_id, {"completed"}, 30)
        assert worker.popen.poll() is None, worker.err  # the store came back: the worker lives on
    finally:
        worker.kill()
        cli.close()
    assert stopped.attempt == 2 and "could not be written" in (stopped.status_message or ""), stopped
    assert final.result == {"sum": N * (N - 1) // 2}
    ran = trace.read_text().split()
    assert sorted(set(ran), key=int) == [str(i) for i in range(N)]
    assert all(ran.count(k) == 1 for k in checkpointed), "an item of a stored checkpoint ran again"
