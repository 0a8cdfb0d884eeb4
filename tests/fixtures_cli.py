"""Fixtures for CLI tests: the real console script in subprocesses, against an isolated state dir."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import pytest

from engine import Operation, open_store

from . import zygote
from .zygote import CLI, REPO


def until(pred: Callable[[], Any], timeout: float = 30.0, every: float = 0.1, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(every)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


@contextlib.contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` is ``env`` inside, and what it was after."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main_here(
    args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``outlast ARGS`` answered by ``engine.cli.main`` in this process (with ``env`` as the whole
    environment, in ``cwd``), as the console script's CompletedProcess would be. The same answer
    (test_input_fuzz_cli checks that) without a start-up: about 0.3 s of CPU a call, which a suite
    of refused-input checks spends hundreds of times. Not for what runs work, takes signals, or loads
    a plugin (it would stay imported for the next test) other than tests.ops_for_tests, which the
    engine fixtures load in this process anyway."""
    from engine.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.ExitStack() as stack:
        if env is not None:
            stack.enter_context(environ(env))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            cli_main(list(args))
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(["outlast", *args], int(code or 0), out.getvalue(), err.getvalue())


@overload
def outlast_into(
    out: Path,
    options: Sequence[str],
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    note: str = ...,
    kill_after: None = ...,
    timeout: float = ...,
) -> int: ...
@overload
def outlast_into(
    out: Path,
    options: Sequence[str],
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    note: str = ...,
    kill_after: float | None,
    timeout: float = ...,
) -> int | None: ...
def outlast_into(
    out: Path,
    options: Sequence[str],
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    note: str = "",
    kill_after: float | None = None,
    timeout: float = 120.0,
) -> int | None:
    """``outlast OPTIONS ARGS`` to its end, its output appended to ``out`` after a line ``$ outlast ARGS`` and
    ``note``: its exit code (-9: killed, by itself through a kill plugin). With ``kill_after``, SIGKILLed that many
    seconds in if still running, which ``out`` says: None. Else one still running after ``timeout`` seconds is
    killed and fails the test. (The fault suites' kills: tests.test_fault_kill and its exact siblings.)"""
    with open(out, "a") as fh:
        fh.write(f"$ outlast {' '.join(args)}{note}\n")
        fh.flush()
        p = zygote.popen([*options, *args], stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, cwd=REPO, env=env)
        try:
            return p.wait(timeout=timeout if kill_after is None else kill_after)
        except subprocess.TimeoutExpired:
            p.kill()  # SIGKILL
            p.wait(10)
            if kill_after is None:
                raise AssertionError(f"outlast {' '.join(args)} did not end within {timeout:g} s") from None
            fh.write(f"[SIGKILL after {kill_after:.3f}s]\n")
            return None


class Proc:
    """A running ``outlast`` with its output collected line by line in the background: forked from the
    tests' zygote, or started as the console script with ``real`` (for what reads its command line)."""

    def __init__(self, args: list[str], env: dict[str, str], *, real: bool = False, **kw: Any) -> None:
        self.args = args
        self.popen = (subprocess.Popen if real else zygote.popen)(
            [*CLI, *args] if real else args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
            **kw,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        try:
            for line in stream:
                sink.append(line.rstrip("\n"))
        except (ValueError, OSError):  # the test closed the pipe on purpose
            return

    def wait_line(self, pred: Callable[[str], bool], timeout: float = 30.0) -> str:
        found = lambda: next((ln for ln in list(self.out) if pred(ln)), None)  # noqa: E731
        return until(found, timeout, what=f"line in {self.args}")

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        rc = self.popen.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)


def run_cli(*args: str, env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``outlast ARGS`` run to the end from the repository with ``env``: stdin closed, its output captured."""
    return zygote.run(
        args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


class Cli:
    """``cli("ls", "--json")`` runs the console script to the end; ``cli.start(...)`` runs it in the background."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.procs: list[Proc] = []

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("OUTLAST_DEBUG", None)
        return env

    def __call__(
        self, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return run_cli(*args, env=env or self.env, timeout=timeout)

    def here(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """As a call, answered in this process (``main_here``): for refused input and reads."""
        return main_here(args, env or self.env, REPO)

    def start(self, *args: str) -> Proc:
        p = Proc(list(args), self.env)
        self.procs.append(p)
        return p

    def op(self, op_id: str) -> Operation:
        """The stored record, read straight from the store (cheaper than a subprocess per poll)."""

        async def go() -> Operation:
            store = open_store(self.state_dir)
            await store.open()
            try:
                return await store.get(op_id)
            finally:
                await store.close()

        return asyncio.run(go())

    def wait_status(self, op_id: str, statuses: set[str], timeout: float = 40.0) -> Operation:
        return until(
            lambda: (op := self.op(op_id)).status.value in statuses and op,
            timeout,
            every=0.1,
            what=f"{op_id} in {statuses}",
        )

    def close(self) -> None:
        for p in self.procs:
            p.kill()


class CliAt(Cli):
    """The console script against ``state_dir`` (given in its environment), with extra environment."""

    def __init__(self, state_dir: Path, **env: str) -> None:
        super().__init__(state_dir)
        self.extra = env

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "OUTLAST_STATE_DIR": str(self.state_dir), **self.extra}


@pytest.fixture
def cli(state_dir: Path) -> Cli:
    c = Cli(state_dir)
    yield c
    c.close()
