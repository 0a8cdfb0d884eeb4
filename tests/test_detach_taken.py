"""Work queued for a background process that a worker already running claims first: the command that started
that process says who runs the work, not the pid of a process that found nothing to do and is gone."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from engine import Engine, OperationSpec, Status, load_settings, open_store
from tests.fixtures_cli import Cli, Proc, alive, until
from tests.fixtures_engine import until as until_async
from tui.handover import hand_over, handed_line

SLOW = ("--plugin", "tests.slow_runner")


def test_run_detach_says_the_worker_that_took_it_first(cli: Cli) -> None:
    worker = cli.start("worker")
    worker.wait_line(lambda ln: " slots" in ln)
    r = cli(*SLOW, "--json", "run", "demo", "-p", "items=20", "-p", "seconds=0.02", "--detach")
    assert r.returncode == 0, r.stderr
    said = json.loads(r.stdout)
    op_id = said["id"]
    until(lambda: cli.op(op_id).status is Status.COMPLETED, 30, what="the run completed")
    op = cli.op(op_id)
    assert op.attempt == 1 and op.worker is not None  # run once, by the worker
    assert op.worker.pid == worker.popen.pid
    # The pid printed is the process running the work, or none: not the runner that found nothing to do.
    assert said["pid"] is None, said
    assert said["taken_by"] == f"worker {socket.gethostname()}:{worker.popen.pid}", said
    log = cli.state_dir / "detached" / f"{op_id}.log"
    until(lambda: "not run here" in log.read_text(), 30, what="the runner's line")
    assert f"worker {op.worker} took {op_id} first" in log.read_text()

    # In words, on a resume: the same.
    r = cli(*SLOW, "rerun", op_id, "--detach")
    assert r.returncode == 0, r.stderr
    assert f"taken by worker {socket.gethostname()}:{worker.popen.pid} meanwhile" in r.stderr, r.stderr
    worker.kill()

    # A runner that exits without running it (no worker now): said, with its log, exit 1; the work stays queued.
    r = cli(*SLOW, "run", "demo", "-p", "items=2", "--detach", env={**cli.env, "OUTLAST_TEST_SLOW_RUNNER": "exit"})
    op_id = r.stdout.strip()
    assert r.returncode == 1 and ") without running it; its output: " in r.stderr, (r.returncode, r.stderr)
    assert "internal error" not in r.stderr and cli.op(op_id).status is Status.QUEUED


async def test_hand_over_names_the_worker_that_took_the_work_first(state_dir: Path, cli: Cli) -> None:
    worker = cli.start("worker")
    worker.wait_line(lambda ln: " slots" in ln)
    settings = load_settings(state_dir=state_dir, plugins=["tests.slow_runner"])
    async with Engine(store=open_store(state_dir), settings=settings, run_queue=False) as engine:
        op = await engine.submit(OperationSpec(type="demo", params={"items": 20, "seconds": 0.02}))
        line = await handed_line(settings, [op.id])
        host = f"{socket.gethostname()}:{worker.popen.pid}"
        assert line == f"1 operation handed over, taken meanwhile by worker {host}", line
        assert "pid" not in line
        done = await engine.get(op.id)
        assert done.worker is not None and done.worker.pid == worker.popen.pid
    worker.kill()
    assert not alive(worker.popen.pid)


async def test_work_handed_over_keeps_its_place_in_the_queue(state_dir: Path) -> None:
    """The dashboard's hand-over on quit paused its running work and resumed it as a person's resume does:
    queued now, behind everything submitted since, so the background worker ran newer work first (the worker's
    own hand-back on a signal keeps the place). It keeps the place it had."""
    settings = load_settings(state_dir=state_dir, max_concurrent=1)
    async with Engine(store=open_store(state_dir), settings=settings) as engine:
        first = await engine.submit(OperationSpec(type="demo", params={"items": 400, "seconds": 0.02}))
        await until_async(lambda: first.id in engine.running_ids, timeout=30)
        later = await engine.submit(OperationSpec(type="demo", params={"items": 1, "seconds": 0}))
        assert await hand_over(engine, 30) == [first.id]
        handed, newer = await engine.get(first.id), await engine.get(later.id)
        assert handed.status is Status.QUEUED and newer.status is Status.QUEUED
        assert handed.queued_at == first.queued_at < newer.queued_at, (handed.queued_at, newer.queued_at)
        assert handed.status_message == "resuming" and handed.attempt == 2


def test_resume_detach_of_work_stopped_by_another_command_meanwhile_names_no_worker(cli: Cli) -> None:
    """A resume queued for its background process, then paused (or cancelled) by another command before that
    process claimed it: nobody took it. The record still names the process of its last attempt, long gone, and
    the command said that one had taken it ("taken by worker HOST:PID meanwhile ...; follow with: outlast watch"),
    in --json too, and so did the runner's log."""
    first = cli.start("run", "demo", "-p", "items=400", "-p", "seconds=0.02")
    op_id = first.wait_line(lambda ln: " demo " in ln).split()[1]
    until(lambda: cli.op(op_id).progress.done >= 3, 30, what="a few items done")
    assert cli("pause", op_id).returncode == 0
    assert first.wait(30) == 6
    gone = cli.op(op_id).worker
    assert gone is not None and gone.pid == first.popen.pid
    log = cli.state_dir / "detached" / f"{op_id}.log"
    slow = {**cli.env, "OUTLAST_TEST_SLOW_RUNNER": "1"}
    for n, (json_, action, status) in enumerate(
        [(True, "pause", Status.PAUSED), (False, "pause", Status.PAUSED), (True, "cancel", Status.CANCELLED)], 1
    ):
        # Its runner sleeps 1 s before its claim: the other command lands while the resume waits for it.
        resume = Proc([*SLOW, *(["--json"] if json_ else []), "resume", op_id, "--detach"], slow)
        cli.procs.append(resume)
        until(lambda: cli.op(op_id).status is Status.QUEUED, 30, what="the resume queued")
        assert cli(action, op_id).returncode == 0
        assert resume.wait(30) == 0, resume.err
        err = "\n".join(resume.err)
        if json_:
            said = json.loads("\n".join(resume.out))
            assert said["id"] == op_id and said["pid"] is None, said
            assert said["taken_by"] == f"another command ({status.value})", said
        else:
            assert "taken by" not in err and f"{status.value} by another command meanwhile" in err, err
        assert cli.op(op_id).status is status
        until(lambda: log.read_text().count("not run here") == n, 30, what="the runner's line")  # noqa: B023
        assert f"worker {gone} took" not in log.read_text(), log.read_text()
