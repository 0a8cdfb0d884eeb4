"""Fault suite: a machine that runs short: of file descriptors (``ulimit -n``), of processes and threads
(a container's pids limit, ``ulimit -u``).

A worker told to run 30 operations at once under ``ulimit -n 40`` started all 30: each holds a lock
file, and importing their handler then found no descriptor left, so every one of them was settled
failed ("[Errno 24] Too many open files") in the second it started, never to run unless someone
noticed. Under a pids limit of 12, 10 of 12 command operations failed ("Resource temporarily
unavailable" forking, "can't start new thread"). Checked here: the worker runs the whole queue and says
once why it runs fewer at once; an attempt that runs short anyway (its handler, an item, its parameters,
its process) is queued again and completes, whatever its retry policy says; log lines that could not be
written for want of a thread are kept; and the budget's own arithmetic.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from engine import Engine, LogRecord, OperationContext, OperationSpec, Settings, Status, open_store, operation
from engine.shortage import FileBudget, ProcessBudget, out_of_files, ran_short, ran_short_said, short_of_processes
from tests import zygote
from tests.fixtures_cli import REPO, Cli
from tests.fixtures_engine import make_engine

LIMIT = 40
"""Open files the worker may have: a few more than it needs idle (about 15), far fewer than 30
operations' lock files and what their start opens."""


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


async def _queue(
    state_dir: Path,
    n: int,
    type_: str = "demo",
    params: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
) -> list[str]:
    params = {"items": 20, "seconds": 0.02} if params is None else params
    async with Engine(store=open_store(state_dir), settings=Settings(state_dir=state_dir), run_queue=False) as e:
        ops = [await e.submit(OperationSpec(type=type_, params=params, profile=profile or {})) for _ in range(n)]
    return [op.id for op in ops]


def _outlast(state_dir: Path, cli: Cli, preexec: Callable[[], None], *args: str) -> subprocess.CompletedProcess[str]:
    """``outlast ARGS`` on ``state_dir``, ``preexec`` run in its process before it starts (a limit set,
    a cgroup joined)."""
    return zygote.run(
        [*args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env={**cli.env, "OUTLAST_STATE_DIR": str(state_dir)},
        cwd=REPO,
        preexec_fn=preexec,
    )


def _worker(state_dir: Path, cli: Cli, slots: int, preexec: Callable[[], None]) -> str:
    """A worker of ``slots`` that exits when the queue is done: its output, once it exited 0."""
    r = _outlast(state_dir, cli, preexec, "worker", "--concurrency", str(slots), "--exit-when-idle")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return out


def test_a_worker_with_more_slots_than_open_files_runs_the_whole_queue(state_dir: Path, cli: Cli) -> None:
    ids = asyncio.run(_queue(state_dir, 30))
    out = _worker(state_dir, cli, 30, _low_limit)
    listed = json.loads(cli("ls", "--json", "--limit", "100").stdout)
    statuses = {rec["id"]: rec["status"] for rec in listed}
    assert {statuses[i] for i in ids} == {"completed"}, {i: s for i, s in statuses.items() if s != "completed"}
    assert "Too many open files" not in out, out[-3000:]
    said = [ln for ln in out.splitlines() if "open files near this process's limit of 40 (ulimit -n)" in ln]
    assert len(said) == 1, out[-3000:]


@pytest.fixture
def pids_cgroup(tmp_path: Path) -> Iterator[Path]:
    """A cgroup of the pids controller to start a process in (cgroup v1 ``pids``, or v2 with ``pids``
    enabled below the root); skipped with the reason where it cannot be made (not root, no controller)."""
    name = f"outlast-test-{os.getpid()}-{tmp_path.name}"
    for parent in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        group = parent / name
        try:
            if not (parent / "cgroup.procs").exists() or (
                parent.name == "cgroup" and "pids" not in (parent / "cgroup.subtree_control").read_text()
            ):
                continue
            group.mkdir()
        except OSError:
            continue
        try:
            yield group
        finally:
            with contextlib.suppress(OSError):
                group.rmdir()
        return
    pytest.skip("no pids cgroup can be made here (needs root and the pids controller)")


def test_a_worker_under_a_limit_its_reserve_does_not_fit_still_runs_one_at_a_time(state_dir: Path, cli: Cli) -> None:
    """``ulimit -n 24``: the store's own descriptors and the reserve leave no room by the budget's sums, and
    a worker of one slot waited for ever on a queue of two (``--exit-when-idle`` never exited). With
    nothing running here, one operation starts whatever the sums say."""
    asyncio.run(_queue(state_dir, 2))

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))

    _worker(state_dir, cli, 1, low)
    records = json.loads(cli("ls", "--json").stdout)
    assert [rec["status"] for rec in records] == ["completed", "completed"]


def test_a_worker_under_a_pids_limit_runs_every_command_it_could_not_fork(
    state_dir: Path, cli: Cli, pids_cgroup: Path
) -> None:
    """A container's pids limit (cgroup ``pids.max``) under a worker of 12 slots: 10 of 12 command
    operations failed, "Resource temporarily unavailable" forking their command, or "can't start new
    thread", each under a policy of one attempt. A command whose process was never forked runs when the
    machine has room. (The command forks nothing itself: one that does, and fails at the limit by itself,
    "sh: Cannot fork", fails as its policy says.)"""
    n = 12
    # A shorter backoff than the default (2 s, doubling: the suite's slowest test, waiting); 0.5 s ran out of
    # its five attempts under the full suite's load, the limit still met.
    asyncio.run(_queue(state_dir, n, "command", {"command": "sleep 0.3"}, {"retry": {"backoff_base": 1.0}}))
    (pids_cgroup / "pids.max").write_text("14\n")

    def into_group() -> None:
        (pids_cgroup / "cgroup.procs").write_text(str(os.getpid()))

    out = _worker(state_dir, cli, n, into_group)
    assert "Resource temporarily unavailable" in out or "can't start new thread" in out, "the limit was never met"
    assert "running at most" in out, "no fewer ran at once once the limit was met"
    records = json.loads(cli("ls", "--json", "--limit", "100").stdout)
    # A command forked, then refused the thread asyncio watches it with, ran (a moment): killed at once and
    # failed, never run a second time (test_a_command_forked_then_not_watched_...). Only those may fail.
    unwatched = "could not be watched (RuntimeError: can't start new thread): "
    failed = [rec["error"] for rec in records if rec["status"] != "completed"]
    assert all(unwatched in (e or "") and "not run again" in (e or "") for e in failed), failed
    assert len(failed) < n // 2, failed


class FlakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    where: str

    @field_validator("where")
    @classmethod
    def _open_files(cls, v: str) -> str:
        _READ[v] = _READ.get(v, 0) + 1
        if v == "params" and _READ[v] == 2:  # read at submit, then by the first attempt
            raise OSError(errno.EMFILE, "Too many open files")
        return v


_READ: dict[str, int] = {}
_RAN: dict[str, list[list[str]]] = {}
"""Per ``where``: the item keys each attempt of the handler ran."""


@operation("out_of_files_once", params=FlakyParams)
async def out_of_files_once(ctx: OperationContext, p: FlakyParams) -> None:
    """Runs out of descriptors on its first attempt (where ``p.where`` says), then completes."""
    runs = _RAN.setdefault(p.where, [])
    runs.append([])
    async for key in ctx.items((str(i) for i in range(10)), key=str):
        runs[-1].append(key)
        if p.where == "handler" and len(runs) == 1 and key == "4":
            await ctx.checkpoint()
            # The handler's own open failing, below the error it raises (as a library wraps it).
            raise RuntimeError("cannot read the next file") from OSError(errno.EMFILE, "Too many open files")
        if p.where == "fail" and len(runs) == 1 and key == "2":
            # What a built-in operation's worker thread sends back for a file it could not open.
            ctx.fail(key, "[Errno 24] Too many open files: '/src/a.py'")


async def test_an_attempt_that_runs_short_is_queued_again_not_failed(settings: Settings) -> None:
    """Neither a handler's EMFILE (below its own error, with a policy that lists no error as transient),
    nor one raised reading the parameters, nor an item failure whose text says so (as the built-in
    operations report a file they could not open) fails the operation or lists an item failed: each is
    retried after the backoff, from the newest checkpoint, even under a policy of one attempt (a
    command's: its process was never forked)."""
    _READ.clear()
    _RAN.clear()
    once = {"max_attempts": 1, "backoff_base": 0.1, "transient": []}
    async with make_engine(settings) as engine:
        ops = [
            await engine.submit(OperationSpec(type="out_of_files_once", params={"where": w}, profile={"retry": once}))
            for w in ("handler", "params", "fail")
        ]
        finals = [await engine.wait(op.id, timeout=30) for op in ops]
        said = [[r.message for r in (await engine.logs(op.id))[0]] for op in ops]
    for final in finals:
        assert final.status is Status.COMPLETED, (final.status, final.error)
        assert final.retries == 1 and final.item_failures == 0
    for lines in said:
        assert any(ln.startswith("retry 1/4 in") and "Too many open files" in ln for ln in lines), lines
        assert not any("item failed" in ln for ln in lines), lines
    # Items 0-3 were checkpointed done; item 4, whose body raised, runs again instead of being listed failed.
    assert _RAN["handler"] == [[str(i) for i in range(5)], [str(i) for i in range(4, 10)]]
    assert _RAN["fail"] == [[str(i) for i in range(3)], [str(i) for i in range(2, 10)]]
    assert _RAN["params"] == [[str(i) for i in range(10)]]  # its first attempt never began


def test_a_shortage_is_found_below_the_error_raised() -> None:
    assert ran_short(RuntimeError("x")) is None and ran_short(OSError(errno.ENOENT, "gone")) is None
    inner = OSError(errno.ENFILE, "Too many open files in system")
    try:
        try:
            raise inner
        except OSError:
            raise ValueError("wrapped")  # noqa: B904 - the implicit context, as a library leaves it
    except ValueError as e:
        assert ran_short(e) is inner and out_of_files(e) is inner
    try:  # "from None": the author says it was not caused by the EAGAIN it was raised under (a lock taken)
        try:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        except BlockingIOError:
            raise ValueError("output is being written by another operation") from None
    except ValueError as e:
        assert ran_short(e) is None, "retried five times as a shortage"
    fork = BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")  # what fork says at a pids limit
    thread = RuntimeError("can't start new thread")
    assert ran_short(fork) is fork and out_of_files(fork) is None and ran_short(thread) is thread
    for text in (
        "[Errno 24] Too many open files: 'a'",
        "[Errno 11] Resource temporarily unavailable",
        "can't start new thread",
    ):
        assert ran_short_said(text)
    assert ran_short_said("OSError: [Errno 24] Too many open files: '/dst/.a.outlast-partial'")  # backup's
    assert not ran_short_said("[Errno 2] No such file or directory: 'a'") and not ran_short_said(object())
    # A test of the user's that failed by itself quoting one: the item's failure, listed as such.
    assert not ran_short_said("failed: OSError: [Errno 24] Too many open files: 'leak.txt'")
    assert not ran_short_said("failed: [Errno 11] Resource temporarily unavailable")


async def test_log_lines_that_find_no_thread_to_write_them_are_kept_for_the_next_flush(settings: Settings) -> None:
    """``writing 1 log records failed: can't start new thread``: the lines were dropped."""
    async with make_engine(settings, run_queue=False) as engine:
        op = await engine.submit(OperationSpec(type="demo"))
        real = engine.store.append_logs
        calls = []

        async def short_once(op_id: str, records: list[LogRecord]) -> None:
            calls.append(len(records))
            if len(calls) == 1:
                raise RuntimeError("can't start new thread")
            await real(op_id, records)

        engine.store.append_logs = short_once  # type: ignore[method-assign]
        engine.log_buffer.append(op.id, LogRecord(ts=1.0, level="info", message="kept"))
        await engine.log_buffer.flush(op.id)
        await engine.log_buffer.flush(op.id)
        assert calls == [1, 1] and not engine.health.failing  # no thread is no store outage
        assert [r.message for r in (await engine.logs(op.id))[0]] == ["kept"]


def test_the_budget_counts_near_its_limit_and_seldom_far_from_it() -> None:
    counts = iter([20, 21, 30, 12])
    calls: list[int] = []
    now = [0.0]

    def count() -> int:
        calls.append(1)
        return next(counts)

    near = FileBudget(limit=40, count=count, clock=lambda: now[0])
    assert near.reserve == 16
    assert near.room(1) == 2  # counted 20: (40 - 16 - 20) // 2
    near.started()
    assert near.room(1) == 1 and len(calls) == 1  # taken as 22, not counted again yet
    near.started()
    assert near.room(1) == 0 and len(calls) == 1  # taken as 24: too near to start more on a guess
    now[0] += FileBudget.NEAR_EVERY
    assert near.room(1) == 1 and len(calls) == 2  # near the limit, counted again soon: 21
    near.started()
    now[0] += FileBudget.NEAR_EVERY
    assert near.room(1) == 0 and len(calls) == 3  # counted 30
    assert "limit of 40 (ulimit -n)" in (near.blocked(1) or "")  # no count: 30 is still now
    now[0] += FileBudget.NEAR_EVERY
    assert near.room(1) == 6 and len(calls) == 4  # what ended is seen at the next count: 12
    near.started(10)
    assert near.room(1) == 0 and near.room(0) == 1  # nothing running here: one starts, else none ever would
    calls.clear()
    far = FileBudget(limit=20_000, count=lambda: calls.append(1) or 60, clock=lambda: now[0])
    for _ in range(1000):
        far.room(1)
        far.started()
    assert len(calls) == 1  # 2,000 descriptors taken for 1,000 starts: still far, counted once a second
    now[0] += 1.5
    far.room(1)
    assert len(calls) == 2


def test_after_running_short_of_processes_fewer_run_at_once_for_a_while() -> None:
    """A fork refused (EAGAIN) with 12 running: at most 11 start until HOLD seconds pass without another
    shortage; each one lowers it again, and one always may run. Before, a worker under a pids limit went on
    starting every slot, and under load some commands ran short on all five attempts and failed."""
    now = [0.0]
    procs = ProcessBudget(clock=lambda: now[0])
    assert procs.room(12) > 1000 and procs.blocked(12) is None
    procs.short(12)
    assert procs.room(10) == 1 and procs.room(11) == 0 and procs.room(12) == 0
    assert "at most 11 at once" in (procs.blocked(11) or "")
    now[0] += ProcessBudget.HOLD / 2
    procs.short(8)  # again, with 8 running: 7
    assert procs.room(7) == 0 and procs.room(6) == 1
    now[0] += ProcessBudget.HOLD / 2  # 30 s after the first, 15 after the last: held
    assert procs.room(7) == 0
    procs.short(1)
    assert procs.room(1) == 0 and procs.room(0) == 1  # one at a time, never none
    now[0] += ProcessBudget.HOLD
    assert procs.room(12) > 1000 and procs.blocked(12) is None
    assert short_of_processes(OSError(errno.EAGAIN, "Resource temporarily unavailable"))
    assert short_of_processes(RuntimeError("can't start new thread"))
    assert not short_of_processes(OSError(errno.EMFILE, "Too many open files"))  # FileBudget's
    assert not short_of_processes(OSError(errno.ENOENT, "gone"))


def test_a_command_with_almost_no_descriptors_says_so_in_one_line(state_dir: Path, cli: Cli) -> None:
    """``ulimit -n 9``: too few to import an operation or open the store. One line, exit 8 (the store
    cannot be opened or written), not "internal error" (70, a bug), and nothing stored."""

    def tiny() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (9, 9))

    r = _outlast(state_dir, cli, tiny, "run", "demo", "-p", "items=3")
    assert r.returncode == 8, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0], r.stderr
    assert "ulimit -n" in lines[0] or "cannot be created" in lines[0], r.stderr
    assert json.loads(cli("ls", "--json").stdout) == []


def test_what_a_handler_raises_cannot_break_the_question() -> None:
    """``ran_short`` is asked of anything a handler raised, before the engine settles the attempt."""

    class Unreadable(RuntimeError):
        def __str__(self) -> str:
            raise ValueError("no text")

    class OddErrno(OSError):
        errno = [24]  # type: ignore[assignment]  # unhashable: `in` a frozenset raises

    class Falsy(Exception):
        def __bool__(self) -> bool:
            raise RuntimeError("no truth")

    assert ran_short(Unreadable()) is None and ran_short(OddErrno()) is None
    inner = OSError(errno.EMFILE, "Too many open files")
    outer = ValueError("x")
    outer.__cause__ = Falsy()
    outer.__cause__.__cause__ = inner
    assert ran_short(outer) is inner


class PausedAtOpenParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ask: str
    state_dir: str

    @model_validator(mode="after")
    def _asked_then_short(self) -> PausedAtOpenParams:
        _READ[self.ask] = _READ.get(self.ask, 0) + 1
        if _READ[self.ask] == 2:  # read by the first attempt as it opens: asked to stop, then short of descriptors
            failed: list[BaseException] = []
            ask = threading.Thread(target=_run, args=(_ask_from_elsewhere(self.state_dir, self.ask), failed))
            ask.start()
            ask.join()
            if failed:
                raise AssertionError(f"the request was not stored: {failed[0]!r}")
            raise OSError(errno.EMFILE, "Too many open files")
        return self


def _run(coro: Any, failed: list[BaseException]) -> None:
    try:
        asyncio.run(coro)
    except BaseException as e:
        failed.append(e)


async def _ask_from_elsewhere(state_dir: str, action: str) -> None:
    """The request stored as another process stores it (``outlast pause``: the operation runs elsewhere)."""
    store = open_store(state_dir)
    await store.open()
    try:
        [op] = await store.list_operations(statuses=[Status.RUNNING])
        await store.request_control(op.id, "pause" if action == "pause" else "cancel")
    finally:
        await store.close()


@operation("short_at_open", params=PausedAtOpenParams)
async def short_at_open(ctx: OperationContext, p: PausedAtOpenParams) -> None:
    runs = _RAN.setdefault(p.ask, [])
    runs.append([])
    async for key in ctx.items((str(i) for i in range(10)), key=str):
        runs[-1].append(key)


@pytest.mark.parametrize(("ask", "settled"), [("pause", Status.PAUSED), ("cancel", Status.CANCELLED)])
async def test_a_stop_asked_as_an_attempt_runs_short_at_its_start_keeps_the_retry_from_running(
    settings: Settings, ask: str, settled: Status
) -> None:
    """A pause (or cancel) stored while the attempt opened, which then found no descriptor left: the retry
    was queued with the request pending, claimed and run (the asker had been told "requested"). The retry
    is settled as asked in the same write, as one after a failure is."""
    _READ.clear()
    _RAN.clear()
    async with make_engine(settings) as engine:
        params = {"ask": ask, "state_dir": str(settings.state_dir)}
        op = await engine.submit(OperationSpec(type="short_at_open", params=params))
        final = await engine.wait(op.id, timeout=30)
    assert final.status is settled, (final.status, final.status_message)
    assert _RAN.get(ask) is None, "the retry ran though a stop was asked"


def test_a_results_database_opened_with_no_descriptor_left_says_so(tmp_path: Path, cli: Cli) -> None:
    """Under ``ulimit -n 13`` or 14 code_analysis failed "OperationalError: unable to open database file (at
    _results_db.py:107)" (or "cannot be read as SQLite: unable to open database file", checking its output
    again): SQLite's word for an open that failed, naming neither the cause nor the file, and not retried as
    a shortage. Each failure now names the limit, and one opening the results database names it too."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"m{i}.py").write_text(f"def f{i}():\n    pass\n")
    runs = {}
    for n in (12, 13, 14):

        def low(n: int = n) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

        args = ["--json", "--state-dir", str(tmp_path / f"st{n}"), "run", "code_analysis", "-p", f"root={src}"]
        runs[n] = zygote.popen(
            [*args, "--profile", "retry.backoff_base=0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=cli.env, cwd=REPO, preexec_fn=low,
        )  # fmt: skip
    errors = {}
    for n, proc in runs.items():
        out, err = proc.communicate(timeout=60)
        op = json.loads(out)
        if op["status"] == "completed":
            continue
        assert proc.returncode == 1 and op["status"] == "failed", (proc.returncode, out, err)
        assert op["attempt"] == 5, op  # a shortage: queued again, as often as any other
        errors[n] = op["error"]
        assert f"ran out of file descriptors (ulimit -n {n}: raise it)" in op["error"], op["error"]
    opening = [e for e in errors.values() if "opening the results database" in e and "code-analysis-" in e]
    assert opening, errors


def _refuse_to_watch_once(monkeypatch: pytest.MonkeyPatch, refused: list[int]) -> None:
    """asyncio's child watcher (whichever this Python uses) refuses, once, to watch a spawned command, as it does
    under a process limit after the fork ("can't start new thread" for its waitpid thread)."""
    import asyncio.unix_events as unix_events

    for name in ("ThreadedChildWatcher", "PidfdChildWatcher", "_ThreadedChildWatcher", "_PidfdChildWatcher"):
        cls = getattr(unix_events, name, None)
        if cls is None:
            continue

        def add(self: Any, pid: int, callback: Any, *args: Any, _original: Any = cls.add_child_handler) -> None:
            with contextlib.suppress(OSError):
                if not refused and b"OUTLAST_OPERATION_ID=" in Path(f"/proc/{pid}/environ").read_bytes():
                    refused.append(pid)
                    raise RuntimeError("can't start new thread")
            _original(self, pid, callback, *args)

        monkeypatch.setattr(cls, "add_child_handler", add)


async def test_a_command_forked_then_not_watched_is_killed_at_once_and_not_run_again(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``ulimit -u`` asyncio forked the command, then found no thread to watch it with: the attempt was
    queued again as if the command had never been forked, the running one was never killed, and the retry ran
    the whole command a second time (two pids in its output). It is killed at once now, said in the log, and
    the operation fails without a retry (its program had begun: only a resume runs it again)."""
    refused: list[int] = []
    _refuse_to_watch_once(monkeypatch, refused)
    ledger = tmp_path / "ledger"
    script = f"echo $$ start >> {ledger}; sleep 1; echo $$ end >> {ledger}"
    async with make_engine(settings) as engine:
        spec = OperationSpec(type="command", params={"argv": ["sh", "-c", script]}, profile={"retry.backoff_base": 0.1})
        op = await engine.submit(spec)
        final = await engine.wait(op.id, timeout=30)
        said = [r.message for r in (await engine.logs(op.id))[0]]
        await asyncio.sleep(1.2)  # what the first process would have written by now, had it run on
    assert refused, "the watcher was never asked"
    assert not Path(f"/proc/{refused[0]}").exists(), "the unwatched command runs on (or is left a zombie)"
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    assert all(ln.split()[0] == str(refused[0]) for ln in lines), f"the command ran twice: {lines}"
    assert f"{refused[0]} end" not in lines, lines
    assert final.status is Status.FAILED and final.retries == 0, (final.status, final.error)
    assert "could not be watched (RuntimeError: can't start new thread): killed at once" in (final.error or "")
    assert "not run again" in (final.error or "") and "RuntimeError:" not in (final.error or "").split(":")[0]
    assert any("was started, then could not be watched" in ln for ln in said), said


class _OwnSpawnLoop(asyncio.SelectorEventLoop):
    """An event loop that starts subprocesses its own way, as uvloop does (libuv's spawn, no
    ``subprocess.Popen``): a program not found, or a fork refused (``refused``, once each, to a command whose
    arguments name a ledger), is raised from its own code."""

    refused: ClassVar[list[OSError]] = []

    async def subprocess_exec(self, protocol_factory: Any, program: Any, *args: Any, **kwargs: Any) -> Any:
        if shutil.which(program) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        if self.refused and any("ledger" in str(a) for a in args):
            raise self.refused.pop(0)
        return await super().subprocess_exec(protocol_factory, program, *args, **kwargs)


def test_a_command_another_event_loop_could_not_start_is_said_as_such_and_a_shortage_queued_again(
    settings: Settings, tmp_path: Path
) -> None:
    """Under uvloop, a command whose program is not there failed "the process was started, then could not be
    watched (FileNotFoundError ...): it had exited already; not run again, as it may have begun its work", and
    a fork refused under a pids limit failed the same way instead of being queued again: only a refusal past
    ``subprocess.Popen`` was taken for one before the process ran. Under any loop, nothing of it ran."""
    ledger = tmp_path / "ledger"
    _OwnSpawnLoop.refused[:] = [BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))]

    async def go() -> list[Any]:
        async with make_engine(settings) as engine:
            missing = await engine.submit(OperationSpec(type="command", params={"argv": ["/no/such/program"]}))
            short = await engine.submit(
                OperationSpec(
                    type="command",
                    params={"argv": ["sh", "-c", f"echo $$ >> {ledger}"]},
                    profile={"retry.backoff_base": 0.1},
                )
            )
            return [await engine.wait(op.id, timeout=30) for op in (missing, short)]

    with asyncio.Runner(loop_factory=_OwnSpawnLoop) as runner:
        missing, short = runner.run(go())
    assert missing.status is Status.FAILED, (missing.status, missing.error)
    assert missing.error == "cannot start '/no/such/program': No such file or directory", missing.error
    assert short.status is Status.COMPLETED and short.retries == 1, (short.status, short.retries, short.error)
    assert not _OwnSpawnLoop.refused, "the loop was never asked"
    assert len(ledger.read_text().splitlines()) == 1  # run once: the refused start ran nothing


def _no_thread_for(monkeypatch: pytest.MonkeyPatch, target: str) -> list[str]:
    """``threading.Thread.start`` refuses ("can't start new thread", as under ``ulimit -u``) threads whose target
    is named ``target``; the names of those refused."""
    refused: list[str] = []
    real = threading.Thread.start

    def start(self: threading.Thread) -> None:
        name = getattr(getattr(self, "_target", None), "__name__", "")
        if name == target:
            refused.append(name)
            raise RuntimeError("can't start new thread")
        real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return refused


def test_the_end_of_the_program_finding_no_thread_is_no_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """At ``ulimit -u 2`` `outlast run` of an operation that completed exited 70 "internal error: can't start
    new thread": asyncio shuts its default executor down on a thread of its own as the loop closes, after the
    work is done and stored. The program's result stands; an error of its own is not hidden behind it."""
    from engine.threads import run

    refused = _no_thread_for(monkeypatch, "_do_shutdown")

    async def done() -> int:
        await asyncio.to_thread(int)  # the default executor used: its shutdown needs a thread
        return 7

    async def broken() -> None:
        await asyncio.to_thread(int)
        raise ValueError("the program's own")

    assert run(done()) == 7
    with pytest.raises(ValueError, match="the program's own"):
        run(broken())
    assert refused, "the loop's close never asked for a thread"


async def test_a_store_closed_with_no_thread_to_be_had_closes(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing the local store waits for its thread on a thread of the engine's pool: refused ("can't start new
    thread") as `outlast run` or a worker ended under ``ulimit -u``, it raised, an internal error (exit 70)
    after the work was stored. Its thread is told to stop and ends by itself."""
    from engine.threads import _close_engine_pool

    store = open_store(state_dir)
    await store.open()
    ours = {t for t in threading.enumerate() if t.name.startswith("outlast-sqlite")}
    assert ours
    _close_engine_pool()  # none of its threads is idle to take the call
    refused = _no_thread_for(monkeypatch, "_worker")  # concurrent.futures' thread
    await store.close()
    assert refused, "the close never asked for a thread"
    monkeypatch.undo()
    for t in ours:
        t.join(5)
        assert not t.is_alive(), "the store's thread runs on"
