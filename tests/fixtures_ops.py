"""Helpers for the built-in operations' tests: generated trees, a SIGKILLed worker, runs through the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Operation, open_store
from tests.fixtures_cli import Cli, Proc, main_here, until


def run_json(cli: Cli, *args: str, timeout: float = 90.0) -> tuple[int, dict[str, Any], str]:
    """``outlast --json ARGS`` to the end: (exit code, the final record, stderr)."""
    r = cli("--json", *args, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    return r.returncode, (json.loads(lines[-1]) if lines else {}), r.stderr


def submit(cli: Cli, type_: str, params: dict[str, Any], *profile: str, here: bool = True) -> str:
    """Queue an operation; its id. ``here=False``: by the console script, where this process holds a lock the
    submit's checks would drop (a POSIX lock goes with any descriptor of its file this process closes)."""
    args = ["-q", "submit", type_, "--params-json", json.dumps(params)]
    for p in profile:
        args += ["--profile", p]
    # Answered in this process (``Cli.here``, which tests.test_input_fuzz_cli checks answers as the console
    # script does): a submit only queues a row, and dozens of tests submit this way before the process under
    # test starts, 0.2 s of CPU each for a start-up none of them is about. A plugin the environment names
    # would stay imported in this process: the console script then.
    r = cli.here(*args) if here and "OUTLAST_PLUGINS" not in cli.env else cli(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def checkpoint_state(cli: Cli, op_id: str) -> dict[str, Any]:
    """``ctx.state`` of the newest valid checkpoint ({} when there is none), read from the store."""

    async def go() -> dict[str, Any]:
        store = open_store(cli.state_dir)
        await store.open()
        try:
            got = await store.load_checkpoint(op_id)
            return dict(got[0].state) if got else {}
        finally:
            await store.close()

    return asyncio.run(go())


def done_keys(state_dir: Path, op_id: str) -> set[str]:
    """The item keys done as of the newest valid checkpoint (none when there is none), read from the store."""

    async def go() -> set[str]:
        store = open_store(state_dir)
        await store.open()
        try:
            got = await store.load_checkpoint(op_id)
            return set(got[1].done) if got else set()
        finally:
            await store.close()

    return asyncio.run(go())


def kill_worker_when(
    cli: Cli,
    op_id: str,
    ready: Callable[[Operation], bool],
    timeout: float = 60.0,
    run_on: float = 0.05,
    stands: bool = True,
) -> Operation:
    """Start ``outlast worker``, SIGKILL it once ``ready(record)`` holds; the record as ``ready`` found it.

    The worker (``tests.checkpoint_gate``) stands still after each checkpoint it writes until ``ready`` was asked
    of what that checkpoint stored, and its attempt never completes: it stands still instead until the kill. A
    ``ready`` met at a checkpoint lets it run on for ``run_on`` seconds (work the kill loses, done again by the
    resume), at most to its next checkpoint or to the end of its work, and then kills it. On a loaded machine
    the operation used to run on and end within 0.2 s of the checkpoint the test waited for, before the kill.
    ``stands=False``: it never stands at a checkpoint (only at its end), for a ``ready`` that reads what a child
    process of the handler does, which goes on while the engine stands."""
    plugins = [p for p in cli.env.get("OUTLAST_PLUGINS", "").split(",") if p] + ["tests.checkpoint_gate"]
    with tempfile.TemporaryDirectory(prefix="outlast-gate-") as tmp:
        gate = Path(tmp)
        env = {**cli.env, "OUTLAST_TEST_CHECKPOINT_GATE": tmp, "OUTLAST_TEST_CHECKPOINT_STANDS": "1" if stands else "0"}
        worker = Proc([*(a for p in plugins for a in ("--plugin", p)), "worker", "--concurrency", "1"], env)
        cli.procs.append(worker)
        released = 0
        stood = False
        read_at = 0.0

        def look() -> Operation | None:
            nonlocal released, stood, read_at
            at = (gate / f"at-{released + 1}").exists()  # before the read: the read sees that checkpoint
            ended = (gate / "end").exists()
            if not (at or ended) and time.monotonic() - read_at < 0.1:
                return None  # a read opens the store (most of these tests' CPU): at once at a checkpoint only
            read_at = time.monotonic()
            op = cli.op(op_id)
            if op and ready(op):
                stood = at
                return op
            if ended:
                raise AssertionError(f"{op_id} ran to its end and ready() never held: {op}")
            if at:
                released += 1
                (gate / f"go-{released}").touch()
            return None

        try:
            seen = until(look, timeout, every=0.01, what="ready to kill")
            if stood:
                (gate / f"go-{released + 1}").touch()
                end = time.monotonic() + run_on
                while not ((gate / f"at-{released + 2}").exists() or (gate / "end").exists()):
                    if time.monotonic() > end:
                        break
                    time.sleep(0.005)
            os.kill(worker.popen.pid, signal.SIGKILL)
            worker.popen.wait(10)
        finally:
            worker.kill()
    return seen


def resume(cli: Cli, op_id: str) -> dict[str, Any]:
    """``outlast resume ID`` in the foreground (it finds the orphan first); the final record."""
    code, rec, err = run_json(cli, "resume", op_id)
    assert rec, f"no final record (exit {code}): {err}"
    assert rec["attempt"] >= 2, rec
    return rec


def in_process(cli: Cli, *args: str) -> tuple[int, str, str]:
    """``outlast ARGS`` on ``cli``'s state dir, in this process (``main_here``): (exit code, stdout, stderr)."""
    r = main_here(["--state-dir", str(cli.state_dir), *args])
    return r.returncode, r.stdout, r.stderr


def nothing_stored(cli: Cli) -> None:
    code, out, err = in_process(cli, "--json", "ls")
    assert code == 0 and json.loads(out) == [], (out, err)


def bad_params(cli: Cli, type_: str, params: dict[str, Any], expect: str, *global_args: str) -> None:
    """``outlast run`` with invalid params: one line naming the problem, exit 2, nothing stored. In this
    process unless a plugin is loaded (it would stay registered for the next tests)."""
    args = (*global_args, "run", type_, "--params-json", json.dumps(params))
    if "--plugin" in global_args:
        r = cli(*args)
        code, err = r.returncode, r.stderr
    else:
        code, _, err = in_process(cli, *args)
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err
    nothing_stored(cli)


def unreadable(path: Path) -> bool:
    """chmod 000 ``path``; True when that really makes it unreadable (not for root)."""
    path.chmod(0)
    try:
        with open(path, "rb"):
            return False
    except PermissionError:
        return True


def _drop_read_override() -> None:
    """In a child about to exec: give up CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that even root
    meets file modes (chmod 000 then really means unreadable). PR_CAPBSET_DROP is prctl option 24."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if prctl(24, cap, 0, 0, 0) != 0 and os.geteuid() == 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def as_user_who_cannot_read(cmd: list[str], locked: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` so that ``locked`` (mode 000) cannot be listed, even when the tests run as root;
    pytest.skip when this machine allows no such thing."""
    locked.chmod(0)
    probe = subprocess.run(
        [sys.executable, "-c", f"import os; os.listdir({str(locked)!r})"],
        preexec_fn=_drop_read_override,
        capture_output=True,
    )
    if probe.returncode == 0:
        pytest.skip("cannot make a directory unreadable here (capabilities not droppable)")
    return subprocess.run(cmd, preexec_fn=_drop_read_override, capture_output=True, text=True, **kw)


DEEPER_THAN_RECURSION = sys.getrecursionlimit() + 50
"""Nested directories one more level each: more than a walk that recurses per level goes through (its frames
come on top of its caller's, so it fails some levels before the limit). Not more: a retention run reaches each
directory from its base, N*N/2 opens (test_op_cleanup: 1,200 levels cost 6 CPU-s)."""


@contextlib.contextmanager
def deep_tree(root: Path, depth: int = DEEPER_THAN_RECURSION, leaf: str = "leaf.txt") -> Iterator[str]:
    """``root/d/d/.../d/leaf`` (``depth`` directories named ``d``, 2 bytes of path each: far under PATH_MAX),
    made through directory descriptors; gives the leaf's path relative to ``root``. Removed at the end with
    ``rm -rf``: pytest's own removal of tmp_path (shutil.rmtree, recursive in 3.11) fails on it."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(depth):
                os.mkdir("d", dir_fd=fd)
                sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = sub
            out = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(out, b"deep leaf\n")
            os.close(out)
        finally:
            os.close(fd)
        yield "/".join(["d"] * depth + [leaf])
    finally:
        subprocess.run(["rm", "-rf", "--", str(root)], check=True)


def run_here(base: Path, type_: str, **params: Any) -> Operation:
    """Run an operation to its end in this process, with an engine on its own state dir under ``base`` (no
    subprocess: an uninterrupted reference run costs no interpreter start, nor the imports of its type again);
    the final record, completed."""
    from engine import Engine, OperationSpec, Status, load_settings

    async def go() -> Operation:
        settings = load_settings(state_dir=base / "ref-state", grace_period=2.0)
        async with Engine(store=open_store(settings.state_dir), settings=settings) as engine:
            op = await engine.submit(OperationSpec(type=type_, params=params))
            return await engine.wait(op.id, timeout=120)

    final = asyncio.run(go())
    assert final.status is Status.COMPLETED, final.error
    return final


def as_json(value: Any) -> Any:
    """``value`` as a record printed by ``outlast --json`` gives it back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value))
