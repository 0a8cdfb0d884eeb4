"""Hunt h136: load_testing, monitoring_collection, dependency_analysis, integration_testing, each broken the
ways a user breaks a long run (a kill, then its inputs changed before the resume)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from engine import Engine, OperationSpec, Status
from engine.operations.monitoring import Sampler
from tests.fixtures_analysis import checkpointed_items, tables
from tests.fixtures_cli import Cli
from tests.fixtures_ops import checkpoint_state, kill_worker_when, resume, run_json, submit

DB_FILES = ("", "-wal", "-shm")


def _project(root: Path, n: int, functions: int = 40) -> None:
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(functions))
    for i in range(n):
        (pkg / f"m{i:04d}.py").write_text(f"import json\nfrom . import m{(i + 1) % n:04d}\n{body}")


def _copy_db(src: Path, dst: Path) -> None:
    """``src`` (and its WAL) as ``dst``, whatever ``dst`` held before."""
    for suffix in DB_FILES:
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
        if Path(f"{src}{suffix}").exists():
            shutil.copy(f"{src}{suffix}", f"{dst}{suffix}")


RESTORED = {
    # type: files, functions a file, items done after the first kill before the second, the tables compared
    "dependency_analysis": (600, 3, 200, ("modules", "imports", "packages", "cycles")),
    "code_analysis": (300, 3, 100, ("files", "functions")),
    "codebase_indexing": (800, 3, 300, ("files", "symbols", "imports")),
}


@pytest.mark.parametrize("type_", list(RESTORED))
def test_an_analysis_into_a_database_restored_to_an_older_copy_analyses_the_lost_files_again(
    cli: Cli, tmp_path: Path, type_: str
) -> None:
    """Killed, the database copied, resumed and killed again further on, then the copy put back: the copy
    has the operation's token, so the resume took it for its own and skipped every file done since the copy,
    completing with 343 modules of 601 (dependency_analysis), 420 files of 601 (code_analysis), in silence."""
    n, functions, further, names = RESTORED[type_]
    root = tmp_path / "proj"
    _project(root, n, functions)
    code, whole, err = run_json(cli, "run", type_, "-p", f"root={root}", "-p", f"output={tmp_path}/a.db")
    assert code == 0, err
    db, copy = tmp_path / "b.db", tmp_path / "copy.db"
    # A checkpoint by count too: a quick run (small files, a fast machine) did every file between two
    # checkpoints, and the second kill found the attempt at its end. Not for the index: its batches of 256
    # files are written ahead of what they count, and the copy then held the files done at the second kill.
    every = ["checkpoint_every=50"] if type_ != "codebase_indexing" else []
    op_id = submit(cli, type_, {"root": str(root), "output": str(db)}, "checkpoint_interval=0.05", *every)
    kill_worker_when(cli, op_id, lambda op: checkpointed_items(cli, op_id) > 0)
    _copy_db(db, copy)
    first = checkpointed_items(cli, op_id)
    assert cli("resume", op_id, "--queue").returncode == 0
    killed = kill_worker_when(cli, op_id, lambda op: checkpointed_items(cli, op_id) > first + further, timeout=120)
    assert killed.status is Status.RUNNING, "the analysis was finished before the second kill"
    _copy_db(copy, db)
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    drop = ("database", "index", "removed", "reused")
    assert {k: v for k, v in final["result"].items() if k not in drop} == {
        k: v for k, v in whole["result"].items() if k not in drop
    }
    assert tables(str(db), *names) == tables(f"{tmp_path}/a.db", *names)


def _samples(db: Path) -> list[int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [s for (s,) in con.execute("SELECT seq FROM samples ORDER BY seq")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def test_monitoring_resumes_after_its_process_ended_while_the_worker_was_down(cli: Cli, tmp_path: Path) -> None:
    """A monitored process that ends mid-run is said and no longer sampled; one that ended while the worker was
    down made the params "no longer validate": the resume was refused, for good, and every sample still due
    was lost."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        db = tmp_path / "m.sqlite"
        params = {"interval": 0.05, "duration": 1.5, "pids": [child.pid], "output": str(db)}
        op_id = submit(cli, "monitoring_collection", params, "checkpoint_interval=0.2")
        kill_worker_when(cli, op_id, lambda op: len(_samples(db)) >= 5 if db.exists() else False)
    finally:
        child.kill()
        child.wait()
    assert len(_samples(db)) < 30, "the run finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert _samples(db) == list(range(30))  # none twice, none missing
    assert final["result"]["samples"] == 30
    assert f"process.{child.pid}.rss_bytes" in final["result"]["metrics"]  # sampled before the kill
    log = cli("logs", op_id).stdout
    assert f"process {child.pid} is gone" in log, log


def test_monitoring_does_not_sample_another_process_under_a_reused_pid() -> None:
    """On a resume, a pid that names a process started at another time than the one the first attempt sampled
    (the pid reused since) is gone: its numbers are not another program's under the same name."""
    me = os.getpid()
    again = Sampler([me], {str(me): psutil.Process(me).create_time()})
    assert again.gone == [] and me in again.procs
    started = {str(me): psutil.Process(me).create_time() - 3600}
    other = Sampler([me], started)
    assert other.gone == [me] and not other.procs
    assert f"process.{me}.rss_bytes" not in other.sample()


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def ipv4_server() -> Iterator[int]:
    s = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s.server_address[1]
    s.shutdown()
    s.server_close()


async def test_load_testing_localhost_reaches_a_server_on_127_0_0_1_when_it_resolves_to_1_first(
    engine: Engine, ipv4_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``localhost`` resolves to ::1 first on most Linux machines (``::1 localhost`` in /etc/hosts), and most
    development servers listen on 127.0.0.1 only (uvicorn's, flask's default): curl reaches them, trying the
    next address; the load test sent every request to ::1, and reported the whole run as refused."""
    real = socket.getaddrinfo

    def both(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host == "localhost":
            v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", int(port), 0, 0))
            v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port)))
            return [v6, v4]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", both)
    op = await engine.submit(
        OperationSpec(
            type="load_testing",
            params={"url": f"http://localhost:{ipv4_server}/", "requests": 20, "concurrency": 2, "duration": 5},
        )
    )
    rec = await engine.wait(op.id, timeout=30)
    assert rec.status is Status.COMPLETED, rec.error
    assert rec.result["requests"] == 20
    assert rec.result["ok"] == 20 and rec.result["errors"] == {}, rec.result


SUITE_A = (
    "import pytest\n\n\n@pytest.mark.integration\ndef test_a1():\n    pass\n\n\n"
    "@pytest.mark.integration\ndef test_a2():\n    pass\n"
)
SUITE_B = (
    "import time\n\nimport pytest\n\n\n@pytest.mark.integration\n@pytest.mark.parametrize('i', range(6))\n"
    "def test_b(i):\n    time.sleep(0.2)\n"
)
NEW_IN_A = '\n\n@pytest.mark.integration\ndef test_a3_new():\n    assert False, "added since"\n'
NEW_FILE = "import pytest\n\n\n@pytest.mark.integration\ndef test_c():\n    pass\n"


def test_integration_testing_resumed_after_tests_were_added_runs_them(cli: Cli, tmp_path: Path) -> None:
    """Killed, then a failing test added to a test file that had run and a new test file written: the resume ran
    the tests of the changed file again from the list collected before the change, so the new test never ran and
    the run completed "10 passed, ok" where the suite (as an uninterrupted run says) has a failing test."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\nmarkers = integration\n")
    (suite / "test_a.py").write_text(SUITE_A)
    (suite / "test_b.py").write_text(SUITE_B)
    op_id = submit(cli, "integration_testing", {"path": str(suite)}, "checkpoint_interval=0.05")
    killed = kill_worker_when(cli, op_id, lambda op: len(checkpoint_state(cli, op_id).get("results", {})) >= 3)
    assert killed.status is Status.RUNNING
    assert len(checkpoint_state(cli, op_id)["results"]) < 8, "the suite finished before the kill"
    with (suite / "test_a.py").open("a") as f:
        f.write(NEW_IN_A)
    (suite / "test_c.py").write_text(NEW_FILE)
    code, whole, err = run_json(cli, "run", "integration_testing", "-p", f"path={suite}")
    assert code == 1 and whole["status"] == "failed", err
    final = resume(cli, op_id)
    assert final["status"] == "failed", final
    assert "test_a.py::test_a3_new" in final["error"], final["error"]
    assert final["error"].split("; report:")[0] == whole["error"].split("; report:")[0]  # "1 of 12 tests failed ..."
    report = json.loads(Path(final["error"].split("report: ")[1].split(";")[0]).read_text())
    assert sorted(report["results"]) == sorted(
        ["test_a.py::test_a1", "test_a.py::test_a2", "test_a.py::test_a3_new", "test_c.py::test_c"]
        + [f"test_b.py::test_b[{i}]" for i in range(6)]
    )
    # test_c.py is new and its test ran: no change the results before may not survive (as a helper module's)
    assert "changed_since_run" not in report, report.get("changed_since_run")
