"""A worker stopped by a signal (systemd's stop, a rolling restart, a dropped terminal) hands its running work
back to the queue when ``auto_resume`` is on: written paused, the work waited for an ``outlast resume`` nobody
gave, beside idle workers and the same worker restarted. Without ``auto_resume`` it is paused, as before."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.fixtures_api import Server, poll
from tests.fixtures_cli import CliAt, until
from tests.fixtures_ops import done_keys, submit

N = 120


def test_a_signalled_worker_with_auto_resume_queues_its_work_again_for_the_next(
    state_dir: Path, tmp_path: Path
) -> None:
    """SIGHUP here (the terminal a worker ran in hung up); SIGTERM and SIGINT take the same path."""
    cli = CliAt(state_dir, OUTLAST_PLUGINS="tests.ops_for_tests", OUTLAST_AUTO_RESUME="1")
    trace = tmp_path / "items"
    op_id = submit(cli, "ledger", {"items": N, "seconds": 0.02, "log_file": str(trace)}, "checkpoint_every=10")
    queued_at = cli.op(op_id).queued_at
    first = cli.start("worker")
    try:
        until(lambda: cli.op(op_id).progress.done >= 30, 30, what="30 items done")
        first.signal(signal.SIGHUP)
        assert first.wait(20) == 0, first.err
        handed = cli.op(op_id)
        checkpointed = done_keys(state_dir, op_id)
        assert handed.status.value == "queued" and handed.attempt == 2, handed  # it was: paused
        assert (handed.status_message or "").startswith("handed back by its worker: "), handed.status_message
        # Its place in the queue kept: queued anew, it waited behind work submitted after it (an outside hour),
        # and rolling restarts could keep sending it to the back.
        assert handed.queued_at == queued_at, (handed.queued_at, queued_at)
        assert len(checkpointed) >= 30
        second = cli.start("worker", "--exit-when-idle")  # the same worker restarted: no `resume` asked
        assert second.wait(60) == 0, second.err
    finally:
        cli.close()
    final = cli.op(op_id)
    assert final.status.value == "completed" and final.result == {"sum": N * (N - 1) // 2}, final
    ran = trace.read_text().split()
    assert sorted(set(ran), key=int) == [str(i) for i in range(N)]
    assert all(ran.count(k) == 1 for k in checkpointed), "an item of the stop's checkpoint ran again"


def test_a_signalled_worker_without_auto_resume_pauses_its_work(state_dir: Path, tmp_path: Path) -> None:
    cli = CliAt(state_dir, OUTLAST_PLUGINS="tests.ops_for_tests")
    op_id = submit(cli, "ledger", {"items": N, "seconds": 0.02}, "checkpoint_every=10")
    worker = cli.start("worker")
    try:
        until(lambda: cli.op(op_id).progress.done >= 10, 30, what="10 items done")
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0, worker.err
    finally:
        cli.close()
    assert cli.op(op_id).status.value == "paused"  # a person's `resume` (or the dashboard's key) goes on


def test_a_signalled_api_server_with_auto_resume_queues_its_work_again(tmp_path: Path) -> None:
    """``outlast serve`` runs queued work as a worker does, and its SIGTERM (its own handler: uvicorn's exit)
    wrote the work paused even with auto_resume."""
    server = Server(tmp_path / "srv", OUTLAST_PLUGINS="tests.ops_for_tests", OUTLAST_AUTO_RESUME="1")
    try:
        op_id = server.submit(type="ledger", params={"items": N, "seconds": 0.02}, profile={"checkpoint_every": 10})
        poll(lambda: server.op(op_id)["progress"]["done"] >= 10, 30, what="10 items done")
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.output()
    handed = CliAt(server.root / "state").op(op_id)
    assert handed.status.value == "queued" and handed.attempt == 2, handed  # it was: paused
    assert "queues running work again from a checkpoint" in server.output()  # and its first line says so
