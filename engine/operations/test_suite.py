"""comprehensive_test_suite: run a pytest suite test by test, resumable, with hung and crashed tests contained.

1. Collect: ``python -m pytest --collect-only -q PATH ARGS`` with our plugin (``_pytest_plugin``), which
   streams the node ids; they are kept in ``ctx.state`` so a resume runs the same list.
2. Run: pytest with the plugin, which streams each test's outcome as a JSON line through a pipe as soon as
   the test has finished (setup, call, teardown). Every outcome goes into ``ctx.state["results"]`` as one
   item of ``ctx.items``, so a checkpoint holds every finished test; a resume writes the node ids not yet
   finished to a file and the plugin deselects every other test. A test whose id that process did not
   collect again (an id built from a random value differs in every process) cannot be run test by test: the
   operation fails naming it rather than run it some other way, and it is never "completed" with tests that
   did not run but for those ``-x`` or ``max_failures`` left after a failing test.

A failing test is a result, counted live (``passed``, ``failed``, ``skipped``, ``pass_rate`` metrics; the
current test is the step). The result's ``duration`` is the suite's wall time: how long its pytest
processes ran (collecting and running, every attempt's, as checkpointed), not the sum of the times the
tests reported, which leaves out a hung or crashed test and pytest's own start-up; in ``slowest`` a hung or
crashed test counts with the time it ran until it was killed or died. With ``fail_on_test_failure`` (the
default, for CI) a suite with failing tests ends ``failed`` with the counts, and a resume runs only the
failing tests again; without it the operation completes and the result says which failed. A test that
runs longer than ``timeout_per_test`` (default: the profile's per_item_timeout) has its pytest process
group killed and is an item failure ("hung"); a pytest process that dies inside a test makes that test an item failure
("crashed"). Either way a new pytest process goes on with the tests that remain. Cancel, pause and
timeouts kill the process group (``ctx.spawn``).

The plugin is copied into the run's directory (``outputs/tests-ID/`` in the state dir, with pytest's
output per process and ``report.json``) and loaded as ``-p _outlast_pytest_plugin``: it needs only pytest,
so ``python`` may be a project's own virtualenv interpreter, and the engine is not imported into the tests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..context import OperationContext, OperationFailed
from ..files import private_opener, write_private
from ..humanize import size as human_size
from ..models import MAX_SECONDS
from ..registry import operation
from ._common import (
    changed_since,
    existing_path,
    optional_dir,
    output_dir,
    reading_mark,
    reading_since,
    skipped_dir,
)
from ._program import EnvVars, ProgramArgs, PythonExecutable

PLUGIN = "_outlast_pytest_plugin"
BAD = ("failed", "error", "hung", "crashed")
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "hung", "crashed", "not_run")
LIST_MAX = 50
SLOWEST = 10
POLL = 0.25
EXIT_GRACE = 30.0
DRAIN = 0.2
"""Seconds without news after pytest exited that end its stream (what it wrote is in the pipe already)."""
DRAIN_MAX = 5.0
OUTPUT_TAIL = 1 << 20
"""Bytes of pytest's output kept from its end once the attempt's log_limit is spent (as the operation log)."""
RECENT = 16384
_NOT_FILE = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}
_DOTS = re.compile(r"^[.sSFExX]+\s*(\[\s*\d+%\])?\s*$")


class TestSuiteParams(BaseModel):
    __test__ = False  # a params model, not a test class, though pytest finds it in test_suite.py
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="test file or directory given to pytest")
    args: ProgramArgs = Field(default_factory=list, description="more pytest arguments (e.g. -k expr, -m marker)")
    max_failures: int | None = Field(default=None, ge=1, description="stop after this many failing tests")
    timeout_per_test: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS,
        description="seconds before a test counts as hung (default: per_item_timeout)",
    )
    collect_timeout: float = Field(default=600, gt=0, le=MAX_SECONDS, description="seconds pytest may take to collect")
    python: PythonExecutable = Field(default=sys.executable, description="interpreter with pytest installed")
    cwd: str | None = Field(default=None, description="working directory (default: path, or its directory)")
    env: EnvVars = Field(default_factory=dict, description="extra environment variables for pytest")
    fail_on_test_failure: bool = Field(
        default=True,
        description="end failed when a test fails, with the counts (for CI); a resume re-runs only the failing tests",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        """A directory or a ``.py`` file: pytest said "not found" of anything else (a FIFO, a README) after
        the run had begun. Looked at with stat alone: opening a FIFO waits for a writer."""
        path = existing_path(v, "path")
        try:
            mode = os.stat(path).st_mode
        except OSError as e:
            raise ValueError(f"path {v!r}: {e.strerror}") from None
        if stat.S_ISDIR(mode) or (stat.S_ISREG(mode) and path.endswith(".py")):
            return path
        what = "a file not ending in .py" if stat.S_ISREG(mode) else _NOT_FILE.get(stat.S_IFMT(mode), "no file")
        raise ValueError(f"path {v!r} is {what}: give a test directory or a .py test file")

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, v: str | None) -> str | None:
        return optional_dir(v, "cwd")


class _Output(asyncio.Protocol):
    """pytest's output (stdout and stderr, through a pipe) into its file, capped as the operation log is: the
    attempt's pytest output writes ``log_limit`` bytes (``budget``, shared by its pytest processes), then
    keeps the last ``OUTPUT_TAIL`` bytes (at most ``log_limit``), written when the process ends after a line
    saying what was left out (a test printing without end filled the disk with it). The file is opened and
    written by a thread of its own, in order: never on the event loop."""

    def __init__(self, path: Path, budget: list[int], limit: int) -> None:
        self.path = path
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outlast-pytest-output")
        self._fh: BinaryIO | None = None
        self._closed = False
        self.budget = budget
        self.limit = limit
        self.recent = bytearray()  # the last RECENT bytes, for tail()
        self.over = bytearray()  # the last tail_max bytes past the budget
        self.tail_max = min(limit, OUTPUT_TAIL)
        self.cut = 0  # bytes left out
        self.received = 0
        self.ended = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.recent += data[-RECENT:]
        del self.recent[:-RECENT]
        room = self.budget[0] if not self._closed else 0
        if room > 0:
            head = data[:room]
            self._io.submit(self._write, head)
            self.budget[0] -= len(head)
            data = data[len(head) :]
        if data:
            self.over += data
            if len(self.over) > self.tail_max:
                self.cut += len(self.over) - self.tail_max
                del self.over[: -self.tail_max]

    def eof_received(self) -> bool:
        self.ended.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.set()

    def _write(self, data: bytes) -> None:
        """On the output's thread: append ``data`` to the file (opened at the first write)."""
        with contextlib.suppress(OSError, ValueError):
            if self._fh is None:
                self._fh = open(self.path, "wb", opener=private_opener)  # noqa: SIM115 (closed in _finish)
            self._fh.write(data)

    def _finish(self, tail: bytes) -> None:
        self._write(tail)
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()

    async def close(self) -> int:
        """Write what was kept past the budget; the bytes left out."""
        if self._closed:
            return self.cut
        self._closed = True
        tail = bytes(self.over)
        if self.cut:
            line = tail.find(b"\n") + 1  # from a whole line
            self.cut += line
            tail = tail[line:]
            note = (
                f"\n[outlast: {human_size(self.cut)} of pytest's output left out here: this attempt's pytest"
                f" output reached log_limit ({human_size(self.limit)}); its last {human_size(len(tail))} follow]\n"
            )
            tail = note.encode() + tail
        await asyncio.wrap_future(self._io.submit(self._finish, tail))
        self._io.shutdown(wait=False)
        return self.cut


class _Pytest:
    """One pytest process with our plugin: its event stream (a pipe) and its output (a pipe into a file)."""

    def __init__(self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader, log: Path) -> None:
        self.proc = proc
        self.reader = reader
        self.log = log
        self.output: _Output | None = None
        self._output_transport: asyncio.BaseTransport | None = None
        self._warn: Any = lambda _msg: None
        self.eof = False
        self._partial = b""
        self._exited: float | None = None
        """When the process was first seen gone: what it wrote is read, not the end of a pipe another holds."""
        self._transport: asyncio.BaseTransport | None = None

    @classmethod
    async def start(
        cls, ctx: OperationContext, argv: list[str], cwd: str, env: dict[str, str], log: Path, budget: list[int]
    ) -> _Pytest:
        loop = asyncio.get_running_loop()
        output = _Output(log, budget, ctx.log_limit)
        rfd, wfd = os.pipe()
        try:
            out_r, out_w = os.pipe()
        except BaseException:
            os.close(rfd)
            os.close(wfd)
            await output.close()
            raise
        try:
            try:
                proc = await ctx.spawn(
                    *argv,
                    cwd=cwd,
                    env={**env, "OUTLAST_PYTEST_FD": str(wfd)},
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=asyncio.subprocess.STDOUT,
                    pass_fds=(wfd,),
                )
            finally:
                os.close(wfd)
                os.close(out_w)
            out_transport, _ = await loop.connect_read_pipe(lambda: output, os.fdopen(out_r, "rb", 0))
        except BaseException:
            os.close(rfd)
            with contextlib.suppress(OSError):
                os.close(out_r)
            await output.close()
            raise
        reader = asyncio.StreamReader(limit=1 << 24)
        self = cls(proc, reader, log)
        self.output, self._output_transport, self._warn = output, out_transport, ctx.log.warning
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rfd, "rb", 0)
        )
        return self

    async def events(self, timeout: float) -> list[dict]:
        """The events that have arrived (waiting up to ``timeout`` seconds for the first); [] at the end
        of the stream (``self.eof``). One read takes every complete line: a fast suite sends thousands.

        The stream also ends once the process has exited and what it wrote has been read: a process a test
        forked (a server fixture, multiprocessing with fork) holds the pipe open as long as it lives."""
        if self.eof:
            return []
        if self._exited is None and self.proc.returncode is not None:
            self._exited = time.monotonic()
        try:
            chunk = await asyncio.wait_for(self.reader.read(1 << 16), timeout if self._exited is None else DRAIN)
        except TimeoutError:
            if self._exited is not None:  # nothing more within DRAIN of its exit: all it wrote is in
                self.eof, self._partial = True, b""
            return []
        data = self._partial + chunk
        if chunk:
            data, _, self._partial = data.rpartition(b"\n")
        if not chunk or (self._exited is not None and time.monotonic() - self._exited > DRAIN_MAX):
            self.eof, self._partial = True, b""  # (the end of a stream something it left goes on writing to)
        out: list[dict] = []
        for line in data.split(b"\n"):
            with contextlib.suppress(ValueError):
                ev = json.loads(line) if line.strip() else None
                if isinstance(ev, dict):
                    out.append(ev)
        return out

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def close(self) -> None:
        await self.kill()
        await self.output_read()
        if self._transport is not None:
            self._transport.close()
        if self._output_transport is not None:
            self._output_transport.close()
        if self.output is not None and await self.output.close():
            self._warn(
                f"pytest's output reached log_limit ({human_size(self.output.limit)}): {self.log} keeps its"
                f" beginning and its last lines; {human_size(self.output.cut)} between were left out"
            )

    async def output_read(self) -> None:
        """Once the process has exited: wait until its output is read (the end of the pipe, or DRAIN without
        news: a process a test forked may hold the pipe open), at most DRAIN_MAX seconds."""
        out = self.output
        if out is None or self.proc.returncode is None:
            return
        end, seen = time.monotonic() + DRAIN_MAX, -1
        while not out.ended.is_set() and out.received != seen and time.monotonic() < end:
            seen = out.received
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(out.ended.wait(), DRAIN)

    async def exit_code(self, grace: float) -> int | None:
        """The exit code once the stream has ended; a process still there after ``grace`` seconds (a thread
        a test left behind) is killed: every outcome is in by then."""
        try:
            code: int | None = await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            await self.kill()
            code = None
        await self.output_read()
        return code

    def tail(self, n: int = 15, prefix: str = "", one_line: bool = False) -> str:
        """The last ``n`` lines of pytest's output worth reading (``one_line``: joined with " | ")."""
        recent = bytes(self.output.recent) if self.output is not None else b""
        lines = recent.decode("utf-8", "replace").splitlines()
        lines = [ln for ln in lines if ln.strip() and not _DOTS.match(ln)]  # pytest -q progress: no news
        if not lines:
            return prefix + "no output" if one_line else ""
        return prefix + (" | " if one_line else "\n").join(ln.strip() if one_line else ln for ln in lines[-n:])


class _Suite:
    """The run of one operation attempt: argv, environment, results in ``ctx.state``."""

    def __init__(self, ctx: OperationContext, p: TestSuiteParams) -> None:
        self.ctx = ctx
        self.p = p
        self.dir = output_dir(ctx) / f"tests-{ctx.id}"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # No bytecode cache for the plugin: pytest would write its rewritten plugin into a __pycache__
        # made by the umask (0755, a 0644 file). A file of that name stops it, and Python's own cache
        # too, silently; the plugin is one small module.
        if not (self.dir / "__pycache__").exists():
            write_private(self.dir / "__pycache__", "")
        write_private(self.dir / f"{PLUGIN}.py", Path(__file__).with_name("_pytest_plugin.py").read_text("utf-8"))
        self.cwd = p.cwd or (p.path if Path(p.path).is_dir() else str(Path(p.path).parent))
        inherited = p.env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        pythonpath = os.pathsep.join(x for x in (str(self.dir), inherited) if x)
        self.env = {**os.environ, **p.env, "PYTHONPATH": pythonpath}
        for var in ("OUTLAST_PYTEST_FD", "OUTLAST_PYTEST_SELECT"):
            self.env.pop(var, None)
        self.timeout = p.timeout_per_test or ctx.profile.per_item_timeout
        self.results: dict[str, dict] = ctx.state.setdefault("results", {})
        self.runs = int(ctx.state.get("runs", 0))
        self.round = int(ctx.state.get("round", 0))
        """How many times the failing tests were run again (a resume of a run that failed on them)."""
        if ctx.state.pop("rerun_failures", False):
            self.round = ctx.state["round"] = self.round + 1
            tests = set(ctx.state.get("tests", ()))  # (a collection error stays: nothing to run again)
            for nodeid in [k for k, r in self.results.items() if r["outcome"] in BAD and k in tests]:
                del self.results[nodeid]
            ctx.progress(len(self.results), step="re-running the failing tests")
        self.counts = collections.Counter(r["outcome"] for r in self.results.values())
        self.budget = [ctx.log_limit]
        """Bytes of pytest output this attempt still writes in full (log_limit, as the operation log)."""
        self.not_run_why = ""
        """Why tests were left without an outcome when no failing test stopped the run (one line), or ""."""
        self.recollect = False
        """Python files changed since the tests before ran: the suite is collected again (``check_changes``)."""
        self.changed: list[str] = []
        """Those files (``check_changes``)."""
        self.live()

    async def check_changes(self) -> None:
        """On a resume, the Python files under the run's directory changed since the first attempt began (or since
        the last resume that looked): the tests of a changed test file are run again (a new round); any other
        change is said in the log and in the result (``changed_since_run``), as the tests run before it may not
        hold now. A resume after a test was broken reported "200 passed, ok" where pytest said 5 failed."""
        ctx = self.ctx
        since = reading_since(ctx)
        if since is None or not self.results:
            return
        mark = reading_mark()
        files = await asyncio.to_thread(_python_files, Path(self.cwd), self.dir)
        changed = await asyncio.to_thread(changed_since, self.cwd, files, since)
        ctx.state.update(mark)  # looked: the next resume looks at what changes from here on
        if not changed:
            return
        # Collected again: the list kept was of the files before the change, so a test added to a test file (or
        # a new test file) never ran, and the resume completed "ok" where the suite now fails; a test removed
        # failed the run as never found.
        self.recollect = True
        stale = [k for k in self.results if k.split("::", 1)[0] in changed]
        if stale:
            self.round = ctx.state["round"] = self.round + 1
            for nodeid in stale:
                del self.results[nodeid]
            self.counts = collections.Counter(r["outcome"] for r in self.results.values())
            ctx.progress(len(self.results), step="re-running the tests of changed files")
            # The tests done before stay done under their round's keys: this round's new keys are no sign
            # that the keys changed (the engine warns when a resume meets none of its done keys).
            ctx.is_done(next(iter(ctx.done_keys)))
            ctx.log.info(f"{len(stale)} tests run before are in files changed since: run again")
        self.changed = sorted(changed)  # said once the suite is collected again (``say_changed``)

    def say_changed(self, tests: list[str]) -> None:
        """Say the files changed since the tests before ran that hold none of ``tests`` (the suite as collected
        again): the results of tests that ran before them may not hold now. A new test file is not among them:
        its tests run now (it was said as a change that the results before may not survive)."""
        ctx = self.ctx
        holding = {k.split("::", 1)[0] for k in tests}
        others = sorted(f for f in self.changed if f not in holding)
        if others:
            kept = sorted({*ctx.state.get("changed", ()), *others})
            ctx.state["changed"] = kept
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            ctx.log.warning(
                f"{len(others)} files changed since the tests before the interruption ran ({shown}):"
                " their results may not hold now (run the suite again to know)"
            )

    def key(self, nodeid: str) -> str:
        """The item key of a test: a re-run of the failing tests is a new item."""
        return nodeid if not self.round else f"{nodeid} (re-run {self.round})"

    def live(self) -> None:
        """Pass/fail counts and rate as metrics, while the suite runs (the current test is the step)."""
        c = self.counts
        passed, failed = c["passed"] + c["xpassed"], sum(c[o] for o in BAD)
        self.ctx.metrics.update(passed=passed, failed=failed, skipped=c["skipped"] + c["xfailed"])
        if passed + failed:
            self.ctx.metrics["pass_rate"] = round(passed / (passed + failed), 4)

    def argv(self, *extra: str) -> list[str]:
        tb = [] if any(a.startswith("--tb") for a in self.p.args) else ["--tb=short"]
        return [self.p.python, "-m", "pytest", "-p", PLUGIN, *tb, *extra, self.p.path, *self.p.args]

    def log_path(self, what: str) -> Path:
        self.runs += 1
        self.ctx.state["runs"] = self.runs
        return self.dir / f"pytest-{self.runs}-{what}.log"

    def failures(self) -> int:
        return sum(r["outcome"] in BAD for r in self.results.values())

    # ---- collection ----------------------------------------------------------------------------

    async def collect(self) -> None:
        ctx = self.ctx
        ctx.progress(step="collecting")
        tests: list[str] = []
        errors: list[dict] = []
        finished = False  # the plugin's "collected": without it nothing says the list is whole
        began = time.monotonic()
        pt = await _Pytest.start(
            ctx, self.argv("--collect-only", "-q"), self.cwd, self.env, self.log_path("collect"), self.budget
        )
        deadline = time.monotonic() + self.p.collect_timeout
        try:
            while not pt.eof:
                if time.monotonic() > deadline:
                    raise OperationFailed(f"collection did not finish within {self.p.collect_timeout:g}s")
                for ev in await pt.events(POLL):
                    if ev["e"] == "item":
                        tests.append(ev["id"])
                    elif ev["e"] == "collect_error":
                        errors.append(ev)
                    elif ev["e"] == "collected":
                        finished = True
                ctx.progress()  # raises OperationStopped when a stop was asked for
            code = await pt.exit_code(EXIT_GRACE)
        finally:
            await pt.close()
            self.add_wall(began)
        if not finished or code not in (0, 1, 2, 5) or (code == 2 and not errors):
            # An interpreter without pytest, a conftest that exits, python=/bin/true: no list, not an empty one.
            how = f"exited with code {code}" + ("" if finished else " before its collection finished")
            raise OperationFailed(f"pytest could not collect: {self.p.python} -m pytest {how}{pt.tail(3, ': ', True)}")
        ctx.state["tests"] = tests
        if self.changed:
            self.say_changed(tests)
        if self.results:  # collected again (files changed): the results of tests no longer there are dropped
            now = {*tests, *(e["id"] or "<session>" for e in errors)}
            for nodeid in [k for k in self.results if k not in now]:
                del self.results[nodeid]
            self.counts = collections.Counter(r["outcome"] for r in self.results.values())
            self.live()
        ctx.progress(total=len(tests) + len(errors), step="collected")
        ctx.log.info(f"collected {len(tests)} tests" + (f", {len(errors)} collection errors" if errors else ""))
        async for ev in ctx.items(errors, key=lambda e: self.key(e["id"] or "<session>")):
            self.record(ev["id"] or "<session>", "error", 0.0, ev)
        await ctx.checkpoint(next_step="running")

    def add_wall(self, since: float) -> None:
        """Add the time since ``since`` (a pytest process's life) to the suite's wall time, the result's duration."""
        self.ctx.state["wall"] = self.ctx.state.get("wall", 0.0) + time.monotonic() - since

    def record(self, nodeid: str, outcome: str, duration: float, ev: dict) -> None:
        entry: dict[str, Any] = {"outcome": outcome, "duration": duration}
        if outcome in BAD:
            entry["message"] = ev.get("message", "")
            entry["traceback"] = ev.get("traceback", "")
            if outcome in ("failed", "error"):  # hung and crashed tests are logged as item failures
                self.ctx.log.warning(f"{outcome.upper()} {nodeid}: {entry['message']}")
        old = self.results.get(nodeid)
        if old is not None:
            self.counts[old["outcome"]] -= 1
        self.results[nodeid] = entry
        self.counts[outcome] += 1
        self.live()

    # ---- running -------------------------------------------------------------------------------

    def remaining(self) -> list[str]:
        return [t for t in self.ctx.state["tests"] if t not in self.results]

    async def run(self) -> bool:
        """Run the remaining tests in one pytest process; True when it ended early and should be followed."""
        ctx = self.ctx
        todo = self.remaining()
        select = self.dir / "select.json"
        write_private(select, json.dumps(todo))  # not lines: a node id may hold a newline
        extra = ["--continue-on-collection-errors", "-q"]
        if self.p.max_failures:
            extra.append(f"--maxfail={self.p.max_failures - self.failures()}")
        env = {**self.env, "OUTLAST_PYTEST_SELECT": str(select)}
        spawned = time.monotonic()
        pt = await _Pytest.start(ctx, self.argv(*extra), self.cwd, env, self.log_path("run"), self.budget)
        running: dict[str, float] = {}  # node id -> when it started (several at once under pytest-xdist)
        began, collect_only, unfound, missing = False, False, 0, []
        idle_since = time.monotonic()
        try:
            while not pt.eof:
                events = await pt.events(POLL)
                now = time.monotonic()
                ctx.progress()  # raises OperationStopped when a stop was asked for
                finished: list[dict] = []
                for ev in events:
                    if ev["e"] == "start":
                        running[ev["id"]] = now
                        ctx.step = ev["id"]
                        began = True
                    elif ev["e"] == "collected":
                        collect_only = bool(ev.get("collect_only"))
                        unfound, missing = int(ev.get("unfound", 0)), list(ev.get("missing", ()))
                    elif ev["e"] == "done":
                        started = running.pop(ev["id"], now)
                        if ev.get("outcome") == "crashed":  # a pytest-xdist worker died in it: no time of its own
                            ev["duration"] = max(ev.get("duration", 0.0), now - started)
                        finished.append(ev)
                if finished:
                    idle_since = now
                    async for e in ctx.items(finished, key=lambda e: self.key(e["id"])):
                        self.record(e["id"], e["outcome"], e.get("duration", 0.0), e)
                        if e["outcome"] == "crashed":  # a pytest-xdist worker died in it: as lost() below
                            ctx.fail(self.key(e["id"]), f"crashed: {e.get('message', '')}")
                            ctx.advance()
                if running:
                    nodeid, started = min(running.items(), key=lambda kv: kv[1])
                    if now - started > self.timeout:
                        await pt.kill()
                        why = f"no outcome after {self.timeout:g}s; process group killed"
                        await self.lost(nodeid, "hung", why, now - started)
                        return True
                elif now - idle_since > self.p.collect_timeout:
                    raise OperationFailed(f"pytest reported nothing for {self.p.collect_timeout:g}s{pt.tail(8, ': ')}")
            code = await pt.exit_code(EXIT_GRACE)
            if running:
                nodeid, started = min(running.items(), key=lambda kv: kv[1])
                why = f"pytest died (exit code {code}) inside the test{pt.tail(8, ': ')}"
                await self.lost(nodeid, "crashed", why, time.monotonic() - started)
                return True
            left = len(self.remaining())
            if not left:
                return False
            if unfound:  # deselected in this process: no new one would run them either
                self.not_run_why = _unfound_line(unfound, missing, len(todo))
                return False
            if not began:
                why = "--collect-only in args" if collect_only else f"exit code {code}{pt.tail(3, ': ', True)}"
                self.not_run_why = f"pytest ran none of the {len(todo)} tests given to it ({why})"
                return False
            if code in (0, 1, 2, 5):  # stopped on purpose (-x, --maxfail) after a failing test
                if not self.failures():
                    self.not_run_why = (
                        f"pytest ended (exit code {code}) with {left} tests not run and none failing"
                        f"{pt.tail(3, ': ', True)}"
                    )
                return False
            ctx.log.warning(f"pytest exited with code {code} between tests; a new one goes on with {left} tests")
            return True  # killed from outside or an internal error: it made progress, so go on
        finally:
            await pt.close()
            self.add_wall(spawned)

    async def lost(self, nodeid: str, outcome: str, why: str, took: float) -> None:
        """A test whose process hung or died: an item failure, recorded so a resume does not run it again, with
        the seconds it ran until then (``took``)."""
        self.record(nodeid, outcome, took, {"message": why, "traceback": ""})
        self.ctx.fail(self.key(nodeid), f"{outcome}: {why}")
        self.ctx.advance()

    def summary(self) -> dict:
        tests = self.ctx.state["tests"]
        counts = collections.Counter(r["outcome"] for r in self.results.values())
        not_run = len(self.remaining())
        counts["not_run"] = not_run
        order = {t: i for i, t in enumerate(tests)}
        bad = sorted(
            ((k, r) for k, r in self.results.items() if r["outcome"] in BAD), key=lambda kr: order.get(kr[0], -1)
        )
        slowest = sorted(self.results.items(), key=lambda kr: (-kr[1]["duration"], kr[0]))[:SLOWEST]
        report = {
            "tests": len(tests),
            "counts": {o: counts[o] for o in OUTCOMES if counts[o]},
            "ok": not bad and not not_run,
            "stopped_early": bool(not_run),
            "failed": [
                {"id": k, "outcome": r["outcome"], "message": r["message"], "traceback": r["traceback"]} for k, r in bad
            ],
            "slowest": [{"id": k, "duration": round(r["duration"], 3)} for k, r in slowest if r["duration"] > 0],
            "duration": round(self.ctx.state.get("wall", 0.0), 3),
        }
        if changed := self.ctx.state.get("changed"):
            report["changed_since_run"] = changed[:LIST_MAX]
        path = self.dir / "report.json"
        write_private(path, json.dumps({**report, "results": self.results}, indent=1) + "\n")
        return {**report, "failed": report["failed"][:LIST_MAX], "report": str(path)}


@operation("comprehensive_test_suite", params=TestSuiteParams, description="run a pytest suite test by test")
async def run_test_suite(ctx: OperationContext, p: TestSuiteParams, none_collected: str = "") -> dict:
    """Collect once, then run the tests not yet finished until none remain (or max_failures is reached).
    ``none_collected``: what to do when pytest collects no test, said after "pytest collected no tests"."""
    suite = _Suite(ctx, p)
    await suite.check_changes()
    if not ctx.state.get("tests") or suite.recollect:
        # Collected once and kept, unless nothing was: a resume after tests were added (or marked, or a
        # collection error fixed) collects again, where it only failed the same way again.
        await suite.collect()
    while suite.remaining():
        if p.max_failures and suite.failures() >= p.max_failures:
            break
        if not await suite.run():
            break  # pytest ended on its own: -x or --maxfail, or not_run_why says what went wrong
    ctx.progress(step="summarising")
    summary = await asyncio.to_thread(suite.summary)
    if suite.not_run_why and summary["counts"].get("not_run"):
        # Never "completed" with tests that did not run (README, failure model): -x and max_failures stop
        # after a failing test; this is pytest leaving tests out on its own.
        ctx.state["rerun_failures"] = bool(p.fail_on_test_failure and summary["failed"])
        await ctx.checkpoint(next_step="run the tests that did not run")
        raise TestsNotRun(f"{suite.not_run_why}; {_counts(summary)}; report: {summary['report']}")
    if p.fail_on_test_failure and not summary["tests"]:
        # pytest itself exits 5 for it: a root or args that select nothing is no passing suite.
        todo = none_collected or "give a path or args that select tests and run again, or add tests and resume"
        raise TestsNotRun(
            f"pytest collected no tests in {p.path} (args {p.args!r}): {todo}; report: {summary['report']}"
        )
    if p.fail_on_test_failure and summary["failed"]:
        ctx.state["rerun_failures"] = True  # a resume runs the failing tests again, and only them
        await ctx.checkpoint(next_step="re-run the failing tests")
        raise TestsFailed(_failed_line(summary))
    return summary


def _python_files(top: Path, own: Path) -> list[str]:
    """The ``*.py`` files under ``top``, relative to it (POSIX), leaving out caches, virtual environments,
    hidden directories and ``own`` (this run's directory, its plugin written at every attempt)."""
    out = []
    for d, dirs, names in os.walk(top):
        dirs[:] = [x for x in dirs if not x.startswith(".") and not skipped_dir(Path(d, x)) and Path(d, x) != own]
        rel = os.path.relpath(d, top)
        out += [n if rel == "." else f"{rel}/{n}".replace(os.sep, "/") for n in names if n.endswith(".py")]
    return out


class TestsFailed(OperationFailed):
    """A suite with failing tests, under fail_on_test_failure: the operation ends failed, resumable. Its
    error is the counts alone: "TestsFailed: ... (at test_suite.py:586)" read as a bug of Outlast's."""

    __test__ = False


class TestsNotRun(OperationFailed):
    """Tests left without an outcome by pytest itself (not by -x or max_failures): the operation fails."""

    __test__ = False


def _unfound_line(unfound: int, missing: list[str], given: int) -> str:
    """One line: the tests this pytest did not find again, and why that happens."""
    first = ", ".join(missing) + (f" and {unfound - len(missing)} more" if unfound > len(missing) else "")
    return (
        f"{unfound} of {given} tests never ran: the pytest that runs them did not collect their ids again ({first});"
        " ids must be the same in every pytest process (give random or time-based parametrize values fixed ids),"
        " or the tests were removed since collection"
    )


def _counts(summary: dict) -> str:
    return ", ".join(f"{k} {o}" for o, k in summary["counts"].items())


def _failed_line(summary: dict) -> str:
    """One line: how many failed, the counts, the first failing tests, the report."""
    n = sum(summary["counts"].get(o, 0) for o in BAD)
    first = ", ".join(f["id"] for f in summary["failed"][:3]) + (f" and {n - 3} more" if n > 3 else "")
    # Of every outcome counted: a file that did not collect is one (an error) but no collected test, and
    # "1 of 1 tests failed (1 passed, 1 error)" was the line.
    of = max(summary["tests"], sum(summary["counts"].values()))
    return (
        f"{n} of {of} tests failed ({_counts(summary)}): {first}; report: {summary['report']};"
        " resume to run the failing tests again (fail_on_test_failure=false completes instead)"
    )
