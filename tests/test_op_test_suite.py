"""comprehensive_test_suite on a generated pytest suite with passing, failing, skipped, xfailing, hanging and
crashing tests: counts, failing ids with tracebacks, hung and crashed tests as item failures; a run paused
mid-way (its pytest process group killed) and resumed runs only the unfinished tests, to the same result."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Status
from tests.fixtures_cli import Cli
from tests.fixtures_engine import until
from tests.fixtures_ops import bad_params

SUITE = textwrap.dedent(
    """
    import os, subprocess, time, pytest

    def mark(name):
        with open(os.environ["SUITE_LOG"], "a") as fh:
            fh.write(name + "\\n")

    @pytest.fixture(autouse=True)
    def _ran(request):
        mark(request.node.nodeid)

    @pytest.mark.parametrize("n", range(4))
    def test_early(n):
        time.sleep(0.25)

    def test_fails():
        assert 1 + 1 == 3

    @pytest.mark.skip(reason="not today")
    def test_skipped():
        pass

    @pytest.mark.xfail(reason="known")
    def test_known_bug():
        assert False

    def test_hangs():
        sleeper = subprocess.Popen(["sleep", "120"])  # a grandchild of the engine: dies with the group
        with open(os.environ["SUITE_LOG"] + ".sleeper", "w") as fh:
            fh.write(str(sleeper.pid))
        time.sleep(120)

    def test_crashes():
        os._exit(3)

    @pytest.fixture
    def broken():
        raise RuntimeError("fixture broke")

    def test_setup_error(broken):
        pass

    @pytest.mark.parametrize("n", range(2))
    def test_late(n):
        pass
    """
)
HANG = "test_gen.py::test_hangs"
CRASH = "test_gen.py::test_crashes"
COUNTS = {"passed": 6, "failed": 1, "error": 1, "skipped": 1, "xfailed": 1, "hung": 1, "crashed": 1}


def alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """The result without what timing decides (durations, the slowest tests, where the report is)."""
    return {
        **{k: v for k, v in result.items() if k not in ("slowest", "duration", "report")},
        "failed": [{k: v for k, v in f.items() if k != "traceback"} for f in result["failed"]],
    }


async def run_suite(engine: Engine, suite: Path, log: Path, **params: Any) -> str:
    # The generated suite needs no third-party pytest plugin: not loading them saves seconds per pytest process.
    env = {"SUITE_LOG": str(log), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    op = await engine.submit(
        OperationSpec(
            type="comprehensive_test_suite",
            params={"path": str(suite), "timeout_per_test": 1.5, "env": env, "fail_on_test_failure": False, **params},
            profile={"progress_report_interval": 0.2},
        )
    )
    return op.id


async def test_suite_outcomes_and_resume_runs_only_unfinished_tests(engine: Engine, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_gen.py").write_text(SUITE)

    # Uninterrupted.
    whole = await engine.wait(await run_suite(engine, suite, tmp_path / "whole.log"), timeout=120)
    assert whole.status is Status.COMPLETED, whole.error
    res = whole.result
    assert res["tests"] == 12 and res["counts"] == COUNTS and res["ok"] is False
    failed = {f["id"]: f for f in res["failed"]}
    assert list(failed) == ["test_gen.py::test_fails", HANG, CRASH, "test_gen.py::test_setup_error"]
    assert failed["test_gen.py::test_fails"]["message"] == "assert (1 + 1) == 3"
    assert "in test_fails\n    assert 1 + 1 == 3" in failed["test_gen.py::test_fails"]["traceback"]
    assert "fixture broke" in failed["test_gen.py::test_setup_error"]["message"]
    assert "exit code 3" in failed[CRASH]["message"]
    _cp, ledger = await engine.store.load_checkpoint(whole.id)
    assert set(ledger.failed) == {HANG, CRASH}  # item failures; a failing test is a result
    assert whole.progress.failed == 2
    # The hung test ran until it was killed, and counts so; the suite's duration is its wall time, which holds it.
    assert res["slowest"][0]["id"] == HANG and res["slowest"][0]["duration"] >= 1.5
    assert res["duration"] >= res["slowest"][0]["duration"]
    sleeper = int((tmp_path / "whole.log.sleeper").read_text())
    await until(lambda: not alive(sleeper), timeout=10)  # the hung test's process group was killed
    assert sorted(lines(tmp_path / "whole.log")) == sorted(
        [f"test_gen.py::test_early[{n}]" for n in range(4)]
        + [f"test_gen.py::test_late[{n}]" for n in range(2)]
        + ["test_gen.py::" + t for t in ("test_fails", "test_known_bug", "test_hangs", "test_crashes")]
        + ["test_gen.py::test_setup_error"]
    )

    # Paused while the third test runs (its pytest process group killed), then resumed.
    log = tmp_path / "parts.log"
    op_id = await run_suite(engine, suite, log)
    steps: set[str] = set()

    def third_running() -> bool:
        live = engine.live(op_id)
        if live is not None and live.step:
            steps.add(live.step)
        return live is not None and live.done >= 2 and bool(engine.child_pids().get(op_id))

    await until(third_running, timeout=60, every=0.01)
    pids = engine.child_pids()[op_id]
    await engine.pause(op_id)
    paused = await engine.wait(op_id, timeout=30)
    assert paused.status is Status.PAUSED, paused.status_message
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert {"test_gen.py::test_early[0]", "test_gen.py::test_early[1]"} <= steps
    cp, _ = await engine.store.load_checkpoint(op_id)
    finished = set(cp.state["results"])
    assert 2 <= len(finished) < 12
    before = lines(log)
    await engine.resume(op_id)
    final = await engine.wait(op_id, timeout=120)
    assert final.status is Status.COMPLETED, final.error
    assert comparable(final.result) == comparable(res)
    after = lines(log)[len(before) :]
    assert not finished & set(after), "a test finished before the pause ran again"
    assert set(before) | set(after) == set(lines(tmp_path / "whole.log"))


async def test_max_failures_stops_early(engine: Engine, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_gen.py").write_text(SUITE)
    op = await engine.wait(await run_suite(engine, suite, tmp_path / "log", max_failures=1), timeout=60)
    assert op.status is Status.COMPLETED, op.error
    assert op.result["counts"] == {"passed": 4, "failed": 1, "not_run": 7}
    assert op.result["stopped_early"] is True and [f["id"] for f in op.result["failed"]] == ["test_gen.py::test_fails"]
    assert "test_gen.py::test_hangs" not in lines(tmp_path / "log")


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    bad_params(cli, "comprehensive_test_suite", {"path": str(tmp_path / "nope")}, "path")
    # Not a test file pytest could run: refused at submit, never waited on (a FIFO with no writer).
    fifo, notes = tmp_path / "fifo.py", tmp_path / "notes.txt"
    os.mkfifo(fifo)
    notes.write_text("def test_x(): pass\n")
    bad_params(cli, "comprehensive_test_suite", {"path": str(fifo)}, f"path {str(fifo)!r} is a FIFO")
    bad_params(
        cli, "comprehensive_test_suite", {"path": str(notes)}, f"path {str(notes)!r} is a file not ending in .py"
    )
    bad_params(cli, "comprehensive_test_suite", {"path": str(tmp_path), "max_failures": 0}, "max_failures")


FLAKY = textwrap.dedent(
    """
    import os

    def mark(name):
        with open(os.environ["SUITE_LOG"], "a") as fh:
            fh.write(name + "\\n")

    def test_a():
        mark("test_a")

    def test_flaky():
        mark("test_flaky")
        assert os.path.exists(os.environ["FIXED"]), "not fixed yet"

    def test_c():
        mark("test_c")
    """
)


async def test_failing_tests_fail_the_run_live_counts_and_resume_reruns_only_them(
    engine: Engine, tmp_path: Path
) -> None:
    """fail_on_test_failure (the default): failed with the counts; the resume runs only the failing test."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_flaky.py").write_text(FLAKY)
    log, fixed = tmp_path / "log", tmp_path / "fixed"
    env = {"SUITE_LOG": str(log), "FIXED": str(fixed), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    op = await engine.submit(OperationSpec(type="comprehensive_test_suite", params={"path": str(suite), "env": env}))
    first = await engine.wait(op.id, timeout=60)
    assert first.status is Status.FAILED and first.status.resumable
    assert "1 of 3 tests failed (2 passed, 1 failed): test_flaky.py::test_flaky" in first.error
    m = first.progress.metrics
    assert (m["passed"], m["failed"], m["skipped"], m["pass_rate"]) == (2, 1, 0, 0.6667)
    assert first.progress.done == 3  # a failing test is a finished test
    fixed.touch()
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    assert final.result["counts"] == {"passed": 3} and final.result["ok"] is True
    assert lines(log) == ["test_a", "test_flaky", "test_c", "test_flaky"]
    assert (final.progress.metrics["passed"], final.progress.metrics["failed"]) == (3, 0)
    assert (final.progress.done, final.progress.total) == (3, 3)
