"""comprehensive_test_suite killed with SIGKILL at a seeded random moment, then resumed.

A pause reaches a safe point and saves what finished (test_op_test_suite); a SIGKILL of the worker does not:
what was written of each finished test's outcome before the kill is all the resume has. The promise: every
test runs to an outcome, none is lost, and a test is run again only when the kill came before its outcome
was kept (the one in flight, and at most one checkpoint interval of finished ones). Each test appends its id
to a ledger when it starts, so a test run twice shows twice; the final result must equal an uninterrupted
run's, outcome by outcome.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_cli import Cli
from tests.fixtures_ops import kill_worker_when, resume, run_json, submit

SEED = int(os.environ.get("OUTLAST_FAULT_SEED") or random.SystemRandom().randrange(2**32))
N = 40
SUITE = """
import os, time
import pytest

def _ran(request):
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (request.node.nodeid + "\\n").encode())
    os.close(fd)

@pytest.mark.parametrize("n", range({n}))
def test_item(n, request):
    _ran(request)
    time.sleep(0.03)
    assert n % 13 != 7, "thirteen's seventh"

def test_skipped(request):
    _ran(request)
    pytest.skip("not here")
"""


def _suite(tmp_path: Path, name: str) -> tuple[Path, Path]:
    suite = tmp_path / name
    suite.mkdir()
    (suite / "test_many.py").write_text(SUITE.replace("{n}", str(N)))
    return suite, tmp_path / f"{name}.ledger"


def _params(suite: Path, ledger: Path) -> dict[str, Any]:
    # No third-party pytest plugin loaded into the suite's pytest (ours is named with -p): 1 s less a process.
    env = {"LEDGER": str(ledger), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return {"path": str(suite), "env": env, "fail_on_test_failure": False}


def _outcomes(result: dict[str, Any]) -> tuple[Any, ...]:
    """What a run found, without what differs between runs (durations, paths, the slowest)."""
    failed = sorted((f["id"], f["message"]) for f in result["failed"])
    return result["tests"], result["counts"], failed


def _ledger(path: Path) -> Counter[str]:
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


@pytest.mark.timeout(120)
def test_a_killed_suite_resumes_every_test_once_but_the_unkept(cli: Cli, tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    where = f"seed {SEED} (OUTLAST_FAULT_SEED={SEED} replays it)"

    whole_suite, whole_ledger = _suite(tmp_path, "whole")
    params = json.dumps(_params(whole_suite, whole_ledger))
    code, whole, err = run_json(cli, "run", "comprehensive_test_suite", "--params-json", params)
    assert code == 0 and whole["status"] == "completed", (code, err)
    assert set(_ledger(whole_ledger).values()) == {1} and len(_ledger(whole_ledger)) == N + 1

    suite, ledger = _suite(tmp_path, "killed")
    op_id = submit(cli, "comprehensive_test_suite", _params(suite, ledger))
    kill_at = rnd.randrange(15, N - 2)  # past one checkpoint interval (10 tests), so a lost one shows
    # Its pytest goes on while the engine would stand at a checkpoint: the engine stands at its end only.
    kill_worker_when(cli, op_id, lambda _op: sum(_ledger(ledger).values()) >= kill_at, timeout=60, stands=False)
    ran_before = _ledger(ledger)

    final = resume(cli, op_id)
    assert final["status"] == "completed", (where, final.get("error"))
    assert _outcomes(final["result"]) == _outcomes(whole["result"]), where

    ran = _ledger(ledger)
    assert set(ran) == set(_ledger(whole_ledger)), f"{where}: a test never ran"
    again = sorted(t for t, n in ran.items() if n > 1)
    assert all(n <= 2 for n in ran.values()), f"{where}: a test ran three times: {ran}"
    # Run again: only tests the first attempt started (none it had not reached), and of those only the
    # last few: a kill costs the test in flight and what was finished since the outcomes were last kept.
    assert set(again) <= set(ran_before), f"{where}: {again}"
    started = list(dict.fromkeys(ledger.read_text().splitlines()))[: len(ran_before)]
    assert set(again) <= set(started[-(_interval(final) + 1) :]), f"{where}: killed after {kill_at}, again {again}"


def _interval(record: dict[str, Any]) -> int:
    """Finished tests a kill may cost: the operation's checkpoint_every (items between checkpoints)."""
    every = record["profile"]["checkpoint_every"]
    assert every, record["profile"]
    return int(every)


def test_code_changed_between_the_kill_and_the_resume(cli: Cli, tmp_path: Path) -> None:
    """A test file broken between the kill and the resume: its tests that had passed were kept as passed, and the
    suite "ok" where pytest said they fail. They are run again; a change elsewhere (a module the tests may
    import) is said in the result, as the tests run before it may not hold now."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_a.py").write_text("import time\n\ndef test_a():\n    time.sleep(0.05)\n")
    (suite / "test_b.py").write_text(
        "import time, pytest\n\n@pytest.mark.parametrize('n', range(60))\ndef test_b(n):\n    time.sleep(0.05)\n"
    )
    params = {"path": str(suite), "env": {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}, "fail_on_test_failure": False}
    op_id = submit(cli, "comprehensive_test_suite", params, "checkpoint_interval=0.1")
    killed = kill_worker_when(
        cli, op_id, lambda op: op.status.value not in ("queued", "running") or op.progress.done >= 3
    )
    assert killed.status.value == "running", "finished before the kill"
    (suite / "test_a.py").write_text("import time\n\ndef test_a():\n    assert False, 'broken since'\n")
    (suite / "helper.py").write_text("X = 1\n")

    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    res = final["result"]
    assert res["counts"] == {"passed": 60, "failed": 1} and [f["id"] for f in res["failed"]] == ["test_a.py::test_a"]
    assert res["changed_since_run"] == ["helper.py"] and not res["ok"]
