"""monitoring_collection: a worker SIGKILLed mid-run resumes with the samples still to take (none twice, none
missing), equal item by item to an uninterrupted run; the summary; bad params."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from engine import Engine, InvalidInput, OperationSpec, Status
from engine.registry import get_handler
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, kill_worker_when, resume, run_json, submit

INTERVAL, DURATION = 0.05, 1.5
SAMPLES = round(DURATION / INTERVAL)


def samples(db: Path) -> list[tuple[int, int, tuple[str, ...]]]:
    """(seq, attempt, metric names) of every stored sample."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute("SELECT seq, attempt FROM samples ORDER BY seq").fetchall()
        names: dict[int, list[str]] = {}
        for seq, metric in con.execute("SELECT seq, metric FROM metrics ORDER BY seq, metric"):
            names.setdefault(seq, []).append(metric)
        return [(seq, attempt, tuple(names.get(seq, []))) for seq, attempt in rows]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def test_sigkill_mid_run_resumes_the_remaining_samples(cli: Cli, tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole.sqlite", tmp_path / "killed.sqlite"
    params = {"interval": INTERVAL, "duration": DURATION, "pids": [os.getpid()]}
    code, ref, err = run_json(
        cli, "run", "monitoring_collection", "--params-json", json.dumps({**params, "output": str(whole)})
    )
    assert code == 0, err
    op_id = submit(cli, "monitoring_collection", {**params, "output": str(killed)}, "checkpoint_interval=0.2")
    kill_worker_when(cli, op_id, lambda op: len(samples(killed)) >= 8)
    before = len(samples(killed))
    assert before < SAMPLES, "the run finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    got, want = samples(killed), samples(whole)
    assert [s for s, _, _ in got] == list(range(SAMPLES)) == [s for s, _, _ in want]  # none twice, none missing
    assert [n for _, _, n in got] == [n for _, _, n in want]  # the same metrics in every sample
    assert {a for _, a, _ in got[before:]} == {2}  # the rest was taken by the resumed attempt
    assert final["result"]["samples"] == ref["result"]["samples"] == SAMPLES
    assert final["result"]["metrics"].keys() == ref["result"]["metrics"].keys()
    assert f"process.{os.getpid()}.rss_bytes" in ref["result"]["metrics"]


async def test_summary(engine: Engine, tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite"
    op = await engine.submit(
        OperationSpec(type="monitoring_collection", params={"interval": 0.02, "duration": 0.2, "output": str(db)})
    )
    rec = await engine.wait(op.id, timeout=30)
    assert rec.status is Status.COMPLETED, rec.error
    assert rec.result["samples"] == 10 and rec.result["database"] == str(db)
    con = sqlite3.connect(db)
    mem = sorted(v for (v,) in con.execute("SELECT value FROM metrics WHERE metric='memory_percent'"))
    con.close()
    s = rec.result["metrics"]["memory_percent"]
    assert len(mem) == 10 and s["samples"] == 10
    assert (s["min"], s["max"], s["p95"]) == (round(mem[0], 3), round(mem[-1], 3), round(mem[9], 3))
    assert s["mean"] == round(sum(mem) / 10, 3)
    assert {"cpu_percent", "memory_used_bytes", "swap_percent"} <= rec.result["metrics"].keys()


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    bad_params(cli, "monitoring_collection", {"interval": 0, "duration": 5}, "interval")
    (tmp_path / "notes.txt").write_text("text\n")
    spec = get_handler("monitoring_collection")
    for params, expect in [
        ({"pids": [2**22 + 7]}, "no process"),
        ({"output": str(tmp_path / "notes.txt")}, "not an SQLite database"),
        ({"interval": 0.01, "duration": 10**6}, "samples: at most"),
        ({"duration": -1}, "duration"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(expect)):
            spec.parse_params(params, {})  # as at submit: a resume lets a process that ended since through


def test_a_watched_process_is_still_itself_after_the_clock_stepped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume knew a watched pid by psutil's start time, which is the boot time by the wall clock plus the
    process's start since boot: a clock stepped between two attempts (NTP, a VM restored) moved it, and the resume
    said the live process "is gone: not sampled", as if its pid were reused. The step is psutil's answer moved an
    hour (libfaketime moves this process's clock, not the kernel's boot time that psutil reads); a pid reused by
    another process is still told apart."""
    from engine.operations.monitoring import Sampler

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started: dict[str, Any] = {}
        assert Sampler([child.pid], started).gone == []  # the first attempt: who it is, kept in its state
        kept = dict(started)
        create_time = psutil.Process.create_time
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: create_time(self) + 3600.0)
        assert Sampler([child.pid], started).gone == []
        other = {str(child.pid): "another-boot/1"}  # as a pid reused by another process since
        assert Sampler([child.pid], other).gone == [child.pid]
        assert started == kept
    finally:
        child.kill()
        child.wait()
