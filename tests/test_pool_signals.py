"""Ctrl-C or a supervisor's SIGTERM sent to the whole process group pauses work that runs on worker processes.

A terminal's Ctrl-C (and ``systemctl stop``) signals every process of the group, the indexer's workers
too: a KeyboardInterrupt in a worker's batch (or its death by SIGTERM) ended the operation ``failed``
(exit 1) while the engine was pausing it. Here a worker is held in a batch by a grammar of a user's
``languages.toml`` whose loading waits, so the signal reaches it mid-batch every time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import REPO

GRAMMAR = """
import multiprocessing, pathlib, time

def language():
    if multiprocessing.parent_process() is None:  # the engine's look at the grammars before the batches
        raise ValueError("loads in a worker only")
    pathlib.Path({ready!r}).write_text("in a batch")
    time.sleep(120)
"""


def _index_signalled(tmp_path: Path, root: Path, signum: int, ready: Callable[[], bool]) -> tuple[int, str]:
    """``outlast run codebase_indexing`` of ``root`` on two workers, in a process group of its own, sent
    ``signum`` once ``ready()``: its exit code and output."""
    env = {
        **os.environ,
        "OUTLAST_WORKERS": "2",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path / "lib")]),
    }
    cmd = [sys.executable, "-m", "engine.cli", "--state-dir", str(tmp_path / "state"), "run", "codebase_indexing"]
    cmd += ["-p", f"root={root}", "-p", f"output={tmp_path / 'index.sqlite'}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        while not ready() and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[0]
        os.killpg(proc.pid, signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_pauses_an_index_on_workers(tmp_path: Path, signum: int) -> None:
    ready = tmp_path / "ready"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "held_grammar.py").write_text(GRAMMAR.format(ready=str(ready)))
    (tmp_path / "config" / "outlast").mkdir(parents=True)
    (tmp_path / "config" / "outlast" / "languages.toml").write_text(
        '[held]\nextensions = [".held"]\ngrammar = "held_grammar:language"\n'
    )
    root = tmp_path / "tree"
    root.mkdir()
    for n in range(2):
        (root / f"f{n}.held").write_text("x\n")
    code, out = _index_signalled(tmp_path, root, signum, ready.exists)
    assert code == 6, out
    assert " paused at " in out and "failed" not in out, out


SITECUSTOMIZE = """
import os, sys, time

if "spawn_main" in " ".join(getattr(sys, "orig_argv", [])):  # a pool worker, before its initializer
    open(os.path.join({ready!r}, str(os.getpid())), "w").close()
    time.sleep(1.5)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_process_group_while_a_worker_starts_pauses_the_index(tmp_path: Path, signum: int) -> None:
    """A worker leaves the stop signals to the engine from its initializer on; before it (its interpreter
    starting, some 0.3 s), Ctrl-C raised KeyboardInterrupt in it and SIGTERM or SIGHUP killed it, and the
    operation failed (a broken pool) instead of pausing. Here each worker waits in its start-up, before
    the initializer, and the signal is sent to the group as soon as one is there."""
    ready = tmp_path / "ready"
    ready.mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "sitecustomize.py").write_text(SITECUSTOMIZE.format(ready=str(ready)))
    root = tmp_path / "tree"
    root.mkdir()
    for n in range(4):
        (root / f"m{n}.py").write_text(f"def f{n}():\n    return {n}\n")
    code, out = _index_signalled(tmp_path, root, signum, lambda: any(ready.iterdir()))
    assert code == 6, out
    assert " paused at " in out and "failed" not in out, out
