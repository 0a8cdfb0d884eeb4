"""comprehensive_test_suite against suites and settings that fooled it: never "completed" with tests that did
not run (ids that change between pytest processes, --collect-only in args, a pytest that never collected),
pytest-xdist, a helper process a test forks that outlives pytest, a test that prints without end."""

from __future__ import annotations

import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from engine import Engine, OperationSpec, Settings, Status
from tests.fixtures_engine import make_engine, until
from tests.test_op_test_suite import alive

NO_AUTOLOAD = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def write_suite(tmp_path: Path, files: dict[str, str]) -> Path:
    suite = tmp_path / "suite"
    suite.mkdir(parents=True)
    for name, text in files.items():
        (suite / name).write_text(textwrap.dedent(text))
    return suite


async def run(engine: Engine, suite: Path, timeout: float = 60, **params: Any) -> Any:
    params = {"path": str(suite), "env": NO_AUTOLOAD, **params}
    op = await engine.submit(OperationSpec(type="comprehensive_test_suite", params=params))
    return await engine.wait(op.id, timeout=timeout)


RANDOM_IDS = """
    import random, pytest

    @pytest.mark.parametrize("seed", [random.randint(0, 10**9) for _ in range(3)])
    def test_fuzz(seed):
        pass

    def test_stable():
        pass
"""


async def test_ids_that_change_between_processes_fail_the_run_naming_them(engine: Engine, tmp_path: Path) -> None:
    """Collected in one process, not found in the next: failed, one line, never "completed at 1/4"."""
    suite = write_suite(tmp_path, {"test_r.py": RANDOM_IDS})
    for fail_on_test_failure in (True, False):
        op = await run(engine, suite, fail_on_test_failure=fail_on_test_failure)
        assert op.status is Status.FAILED and op.status.resumable, (op.status, op.result)
        assert "3 of 4 tests never ran: the pytest that runs them did not collect their ids again" in op.error
        assert "test_r.py::test_fuzz[" in op.error and "fixed ids" in op.error and "\n" not in op.error
        assert "1 passed, 3 not_run" in op.error


async def test_collect_only_in_args_fails_the_run(engine: Engine, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, {"test_a.py": "def test_a(): pass\ndef test_b(): assert False\n"})
    op = await run(engine, suite, args=["--co"])
    assert op.status is Status.FAILED, (op.status, op.result)
    assert "pytest ran none of the 2 tests given to it (--collect-only in args); 2 not_run" in op.error


async def test_a_pytest_that_never_finished_collecting_fails_the_run(engine: Engine, tmp_path: Path) -> None:
    """No "collected" from the plugin is no list of tests, not an empty one: never "completed, tests: 0"."""
    suite = write_suite(tmp_path, {"test_a.py": "def test_a(): assert False, 'this suite must fail'\n"})
    no_pytest = tmp_path / "python-without-pytest"
    no_pytest.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # -S: no site-packages, so no pytest
    no_pytest.chmod(0o755)
    exits = write_suite(
        tmp_path / "exits", {"test_a.py": "def test_a(): pass\n", "conftest.py": "import os\nos._exit(1)\n"}
    )
    before = "before its collection finished: "
    for where, python, said in (
        (suite, str(no_pytest), f"{no_pytest} -m pytest exited with code 1 {before}"),
        (exits, sys.executable, f"{sys.executable} -m pytest exited with code 1 {before}no output"),
        (suite, "/bin/true", f"/bin/true -m pytest exited with code 0 {before}no output"),
    ):
        op = await run(engine, where, python=python)
        assert op.status is Status.FAILED, (python, op.status, op.result)
        assert f"pytest could not collect: {said}" in op.error and "\n" not in op.error
        if python == str(no_pytest):
            assert "No module named pytest" in op.error


XDIST = """
    import os, pytest

    @pytest.mark.parametrize("n", range(3))
    def test_passes(n):
        pass

    def test_fails():
        assert 1 + 1 == 3

    def test_crashes():
        os._exit(3)
"""


async def test_pytest_xdist_workers_report_through_their_controller(engine: Engine, tmp_path: Path) -> None:
    """-n 2: the workers do not inherit the event stream's variable (they crashed on its descriptor); every
    test's outcome arrives through the controller, a worker that dies in a test makes it "crashed". The plugins
    installed here load as users' do, from their entry points (xdist among them): the one run of the suite
    that does (tests/conftest.py turns that off for the others). Five that import a great deal and have no
    part in it are blocked by name, as a user may (1.3 s of CPU a pytest process with them, 0.4 without;
    this run starts four or five)."""
    suite = write_suite(tmp_path, {"test_x.py": XDIST})
    autoload = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": ""}
    heavy = ("schemathesis", "textual-snapshot", "syrupy", "hypothesispytest", "anyio")
    args = ["-n", "2", *(f"-pno:{name}" for name in heavy)]
    op = await run(engine, suite, args=args, fail_on_test_failure=False, env=autoload)
    assert op.status is Status.COMPLETED, op.error
    assert op.result["tests"] == 5 and op.result["counts"] == {"passed": 3, "failed": 1, "crashed": 1}
    failed = {f["id"]: f for f in op.result["failed"]}
    assert "crashed while running 'test_x.py::test_crashes'" in failed["test_x.py::test_crashes"]["message"]
    assert (op.progress.done, op.progress.total, op.progress.failed) == (5, 5, 1)
    log = "".join(p.read_text() for p in Path(op.result["report"]).parent.glob("pytest-*-run.log"))
    # Run by xdist's workers ("[gw0] node down" names the one that died; which others the log names depends
    # on which finished first: "gw1" was missing from one run's).
    assert "INTERNALERROR" not in log, log[-3000:]
    assert re.search(r"\bgw\d\b", log), log[-3000:]


FORKS = """
    import os, time

    def helper():
        # A process forked without exec (a server fixture, multiprocessing with fork) that outlives pytest:
        # it holds the event pipe open.
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        with open(os.path.join(os.environ["PIDS"], str(pid)), "w"):
            pass
"""


async def test_a_process_a_test_forked_does_not_hold_the_run_open(engine: Engine, tmp_path: Path) -> None:
    """Once pytest has exited, what it wrote is read and its stream ends, whoever else holds the pipe: the
    suite completes at once (it ended "pytest reported nothing for 5s", or waited for the helper)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    at_import = "\nhelper()  # at import: in the collecting pytest and in the running one\n"
    test = "from conftest import helper\n\ndef test_forks():\n    helper()\n\ndef test_two():\n    pass\n"
    suite = write_suite(tmp_path, {"conftest.py": textwrap.dedent(FORKS) + at_import, "test_f.py": test})
    t0 = time.monotonic()
    op = await run(engine, suite, collect_timeout=5, env={**NO_AUTOLOAD, "PIDS": str(pids)})
    assert op.status is Status.COMPLETED, op.error
    assert op.result["counts"] == {"passed": 2}
    # Not a speed check: waiting for the helpers took their 60 s; "nothing for 5s" ended the run failed.
    assert time.monotonic() - t0 < 30
    assert len(list(pids.iterdir())) == 3
    for pid in (int(p.name) for p in pids.iterdir()):  # killed when the attempt ended (they carry its mark)
        await until(lambda pid=pid: not alive(pid), timeout=10)


PRINTS = """
    import sys

    def test_prints_a_lot():
        line = "x" * 99 + "\\n"
        for _ in range(50_000):  # 5 MB
            sys.stdout.write(line)
        print("the last line")

    def test_fails():
        assert False, "the failure"
"""


async def test_pytest_output_is_capped_at_log_limit_keeping_its_head_and_tail(
    settings: Settings, tmp_path: Path
) -> None:
    """-s and a test printing 5 MB with log_limit 256 KiB: pytest's output file keeps its first 256 KiB and
    its last, with a line saying what was left out between, and the operation log says so too."""
    limit = 256 * 1024
    suite = write_suite(tmp_path, {"test_p.py": PRINTS})
    async with make_engine(settings.model_copy(update={"log_limit": limit})) as engine:
        op = await run(engine, suite, args=["-s"], fail_on_test_failure=False)
        await engine.log_buffer.flush(op.id)
        logs = [r.message for r in (await engine.store.read_logs(op.id))[0]]
    assert op.status is Status.COMPLETED, op.error
    assert op.result["counts"] == {"passed": 1, "failed": 1}
    out = Path(op.result["report"]).parent / "pytest-2-run.log"
    data = out.read_bytes()
    assert limit < len(data) < 2 * limit + 1024
    assert data.startswith(b"x" * 99 + b"\n" + b"x" * 99 + b"\n")
    note = re.search(rb"\n\[outlast: ([\d.]+)M of pytest's output left out here: .* log_limit \(256.0K\)", data)
    assert note and 4.0 < float(note[1]) < 5.0, data[limit - 100 : limit + 300]
    assert b"the last line" in data and re.search(rb"\n1 failed, 1 passed in [\d.]+s\n$", data)
    assert b"the failure" in data[-limit:]
    assert any("pytest's output reached log_limit (256.0K)" in m and str(out) in m for m in logs), logs


async def test_a_suite_that_collects_no_tests_fails(engine: Engine, tmp_path: Path) -> None:
    """A path or -k that selects nothing completed "tests: 0, ok: true" where pytest itself exits 5: a CI
    job pointed at the wrong place passed. It fails, saying nothing was collected."""
    suite = write_suite(tmp_path, {"test_a.py": "def test_a(): assert False\n"})
    op = await run(engine, suite, args=["-k", "nothing_matches_this"])
    assert op.status is Status.FAILED, (op.status, op.result)
    assert "pytest collected no tests in" in (op.error or ""), op.error


async def test_a_collection_error_counts_in_the_failed_line(engine: Engine, tmp_path: Path) -> None:
    """Two test files of one name in directories without __init__.py: pytest collects one and errors on the
    other, which the line counted as a failure but not among the tests: "1 of 1 tests failed (1 passed, 1
    error)"."""
    suite = tmp_path / "suite"
    for d, name in (("a", "test_x"), ("b", "test_y")):
        (suite / d).mkdir(parents=True)
        (suite / d / "test_same.py").write_text(f"def {name}(): pass\n")
    op = await run(engine, suite)
    assert op.status is Status.FAILED, (op.status, op.result)
    assert "1 of 2 tests failed (1 passed, 1 error)" in (op.error or ""), op.error


async def test_a_node_id_holding_a_newline_runs(engine: Engine, tmp_path: Path) -> None:
    """A directory named with a newline makes node ids with one: the selection given to each pytest keeps them
    whole (it was a file of lines, which cut the id in two: "2 of 1 tests never ran")."""
    suite = write_suite(tmp_path, {})
    (suite / "tésts\nx").mkdir()
    (suite / "tésts\nx" / "test_ü.py").write_text("def test_a(): pass\ndef test_b(): assert False\n")
    op = await run(engine, suite, fail_on_test_failure=False)
    assert op.status is Status.COMPLETED, (op.status, op.error)
    assert op.result["counts"] == {"passed": 1, "failed": 1}, op.result
    assert op.result["failed"][0]["id"] == "tésts\nx/test_ü.py::test_b"
