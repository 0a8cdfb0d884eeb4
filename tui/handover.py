"""Quitting the dashboard without stopping its work: hand it over to a background worker.

No Textual here. What this dashboard's engine runs is paused at a checkpoint (its status line says
it was handed over), queued again at once, and a detached ``outlast worker --exit-when-idle`` on the
same store resumes it from that checkpoint; the worker exits when nothing is left to run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from engine import Engine, OutlastError, Settings, Status, open_store, run_by, taker, wait_taken

log = logging.getLogger("outlast.tui")

REASON = "handed over to a background worker"
"""Ends the status line of what was handed over: "paused: handed over to a background worker"."""


async def hand_over(engine: Engine, timeout: float) -> list[str]:
    """Pause what ``engine`` runs (a checkpoint each) and queue it again for another process; the ids
    queued. Nothing new starts here meanwhile; ``timeout``: how long to wait for the pauses."""
    running: list[str] = list(engine.running_ids)
    engine.run_queue = False
    engine.shutdown_reason = REASON
    engine.drain("shutdown")
    end = time.monotonic() + timeout
    while engine.running_ids and time.monotonic() < end:
        await asyncio.sleep(0.05)
    queued = []
    for op_id in running:
        try:
            await engine.resume(op_id, keep_place=True)  # its place in the queue: not behind newer work
        except OutlastError as e:  # finished meanwhile, or taken by another process: nothing to hand over
            log.info("not handed over: %s", e)
        else:
            queued.append(op_id)
    return queued


def spawn_worker(settings: Settings) -> tuple[int, Path]:
    """``start_worker``: its pid and log file."""
    proc, log_path = start_worker(settings)
    return proc.pid, log_path


def start_worker(settings: Settings) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``outlast worker --exit-when-idle`` on the same store, with the same config file, in a new
    session (it outlives the terminal); the process and its log file. A store URL goes through the environment
    (it may hold a password, and a command line is readable by every user)."""
    # Absolute: the log's path is printed after the dashboard exits, read later from anywhere (a relative
    # --state-dir printed "its log: rel/detached/..."), and the worker's --state-dir names the same store
    # whatever its working directory.
    state_dir = Path(os.path.abspath(Path(settings.state_dir).expanduser()))
    logs = state_dir / "detached"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = logs / f"worker-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    args = ["--state-dir", str(state_dir)]
    config = settings.config_file
    if config is not None and config.is_file():  # what else it set (a Redis namespace: where the work is)
        args += ["--config", str(config.resolve())]
    for plugin in settings.plugins:
        args += ["--plugin", plugin]
    env = dict(os.environ)
    if settings.store:
        env["OUTLAST_STORE"] = settings.store
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)  # never through a link
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *args, "worker", "--exit-when-idle"],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    finally:
        os.close(fd)
    return proc, log_path


async def handed_line(settings: Settings, queued: list[str], worker: str = "outlast worker") -> str:
    """Start the background worker for the ``queued`` operations and say, in one line, who runs them.

    A worker already running on the store may claim them first: the one started here then finds nothing
    to do and exits, and the line named its pid as the process running the work (a ``kill`` of it hit
    nothing, or whatever took the pid next). Wait until each is claimed (its start-up: about a second),
    and name who took them. ``worker``: the command that starts a worker on this store, for the line of a
    background worker that exited without running them."""
    runner, log_path = start_worker(settings)
    store = open_store(settings.store or settings.state_dir, settings=settings)
    await store.open()
    try:
        ops = await wait_taken(store.get, queued, runner)
    finally:
        await store.close()
    pid = runner.pid
    ours = [op for op in ops.values() if op.status is Status.QUEUED or run_by(op, pid)]
    others = sorted({taker(op) for op in ops.values() if op not in ours})
    if ours and runner.poll() is not None and all(op.status is Status.QUEUED for op in ours):
        n = len(ours)
        head = (
            f"{n} operation{'s' if n != 1 else ''} queued for a background worker (pid {pid}) that exited"
            f" (code {runner.returncode}) before running them; its log: {log_path}; run them with `{worker}`"
        )
    elif ours:
        n = len(ours)
        head = (
            f"{n} operation{'s' if n != 1 else ''} handed over to a background worker (pid {pid}), "
            f"which exits when the queue is empty; its log: {log_path}"
        )
    else:
        head = ""
    if others:
        n = len(ops) - len(ours)
        took = f"{n} operation{'s' if n != 1 else ''} handed over, taken meanwhile by {', '.join(others)}"
        head = f"{head}; {took}" if head else took
    return head
