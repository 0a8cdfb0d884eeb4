"""integration_testing (the runner, marked tests only, its own profile) and performance_testing (repeated
timed runs, statistics, a baseline): each SIGKILLed mid-run and resumed to an uninterrupted run's result;
a slowed test reported as a regression; bad params; the API refuses both without --allow-commands."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from engine import Status
from tests.fixtures_api import Server
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, checkpoint_state, kill_worker_when, resume, run_json, submit
from tests.test_op_test_suite import comparable

SUITE = textwrap.dedent(
    """
    import os, time, pytest

    @pytest.mark.integration
    @pytest.mark.parametrize("n", range(6))
    def test_marked(n):
        time.sleep(0.1)

    @pytest.mark.integration
    def test_marked_fails():
        assert 1 + 1 == 3

    def test_unit():
        pass

    def test_timed():
        time.sleep(float(os.environ.get("DELAY", "0")))
    """
)
ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # no third-party plugin: seconds saved per pytest process


def make_suite(root: Path) -> Path:
    root.mkdir()
    (root / "test_gen.py").write_text(SUITE)
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    integration: talks to other processes\n")
    return root


def test_integration_runs_marked_tests_and_resumes_after_sigkill(cli: Cli, tmp_path: Path) -> None:
    suite = make_suite(tmp_path / "suite")
    # A failing test is a result here (fail_on_test_failure=true, the default for CI, fails the run).
    params = {"path": str(suite), "env": ENV, "fail_on_test_failure": False}
    code, whole, err = run_json(cli, "run", "integration_testing", "--params-json", json.dumps(params))
    assert code == 0, err
    res = whole["result"]
    assert res["marker"] == "integration" and res["tests"] == 7  # test_unit and test_timed not selected
    assert res["counts"] == {"passed": 6, "failed": 1}
    assert [f["id"] for f in res["failed"]] == ["test_gen.py::test_marked_fails"]

    op_id = submit(cli, "integration_testing", params, "checkpoint_interval=0.05")
    killed = kill_worker_when(cli, op_id, lambda op: len(checkpoint_state(cli, op_id).get("results", {})) >= 2)
    assert killed.status is Status.RUNNING, "the suite was finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert comparable(final["result"]) == comparable(res)


def test_integration_that_collects_nothing_says_what_helps_and_a_resume_collects_again(
    cli: Cli, tmp_path: Path
) -> None:
    """No test marked ``integration``: the failure suggested ``outlast resume``, which kept the empty list it
    had collected and failed the same way again. The error names the marker and ``marker=''``; a resume
    after a test is marked collects again and runs it."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_a.py").write_text("def test_unit():\n    pass\n")
    params = {"path": str(suite), "env": ENV}
    code, op, err = run_json(cli, "run", "integration_testing", "--params-json", json.dumps(params))
    assert op["status"] == "failed" and code == 1, (code, op, err)
    assert "no test is marked 'integration'" in op["error"] and "marker=''" in op["error"], op["error"]
    (suite / "test_b.py").write_text("import pytest\n\n@pytest.mark.integration\ndef test_marked():\n    pass\n")
    final = resume(cli, op["id"])
    assert final["status"] == "completed", final
    assert final["result"]["tests"] == 1 and final["result"]["counts"] == {"passed": 1}, final["result"]


def runs_compared(result: dict[str, Any]) -> dict[str, Any]:
    """What does not depend on timing: per run (report.json), the tests and their outcomes; the result's counts."""
    runs = json.loads(Path(result["report"]).read_text())["per_run"]
    return {
        "runs": {k: (sorted(r["tests"]), r["outcomes"]) for k, r in runs.items()},
        "result": {k: result[k] for k in ("runs", "warmup", "tests", "failing", "regressions", "baseline_saved")},
        "slowest": sorted(s["id"] for s in result["slowest"]),
    }


def test_performance_repeats_resume_after_sigkill_and_a_baseline_catches_a_slower_test(
    cli: Cli, tmp_path: Path
) -> None:
    suite = make_suite(tmp_path / "suite")
    params = {"path": str(suite), "args": ["-k", "timed or unit"], "repeats": 2, "warmup": 1, "env": ENV}
    whole_params = {**params, "baseline": str(tmp_path / "a.json")}
    code, whole, err = run_json(cli, "run", "performance_testing", "--params-json", json.dumps(whole_params))
    assert code == 0, err
    res = whole["result"]
    assert res["runs"] == 2 and res["tests"] == 2 and res["baseline_saved"] and not res["baseline_compared"]
    stats = {s["id"]: s for s in res["slowest"]}
    assert set(stats) == {"test_gen.py::test_timed", "test_gen.py::test_unit"}
    assert all(s["n"] == 2 and s["min"] <= s["median"] <= s["max"] for s in stats.values())
    assert res["wall"]["n"] == 2
    saved = json.loads((tmp_path / "a.json").read_text())
    assert {"id": "test_gen.py::test_timed", **saved["tests"]["test_gen.py::test_timed"]} == stats[
        "test_gen.py::test_timed"
    ]

    op_id = submit(
        cli, "performance_testing", {**params, "baseline": str(tmp_path / "b.json")}, "checkpoint_interval=0.05"
    )
    killed = kill_worker_when(cli, op_id, lambda op: len(checkpoint_state(cli, op_id).get("runs", {})) >= 1)
    assert killed.status is Status.RUNNING, "the runs were finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert runs_compared(final["result"]) == runs_compared(res)
    assert set(json.loads(Path(res["report"]).read_text())["per_run"]) == {"warmup-1", "run-1", "run-2"}

    # The same suite with test_timed half a second slower, against the first baseline. A change under 0.2 s
    # is not one: on a loaded machine test_unit's few milliseconds moved past the default 5 ms and it "regressed".
    slow = {**whole_params, "repeats": 1, "warmup": 0, "min_delta": 0.2, "env": {**ENV, "DELAY": "0.5"}}
    code, again, err = run_json(cli, "run", "performance_testing", "--params-json", json.dumps(slow))
    assert code == 0, err
    assert again["result"]["baseline_compared"] and not again["result"]["baseline_saved"]
    assert [r["id"] for r in again["result"]["regressions"]] == ["test_gen.py::test_timed"]


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    bad_params(cli, "integration_testing", {"path": str(tmp_path / "nope")}, "path")
    (tmp_path / "notes.txt").write_text("mine\n")
    bad_params(cli, "performance_testing", {"path": str(tmp_path), "baseline": str(tmp_path / "notes.txt")}, "baseline")
    bad_params(cli, "performance_testing", {"path": str(tmp_path), "repeats": 0}, "repeats")


def test_the_api_refuses_code_running_types_without_allow_commands(api: Server, tmp_path: Path) -> None:
    for type_, params in (
        ("integration_testing", {"path": str(tmp_path)}),
        ("performance_testing", {"path": str(tmp_path)}),
        ("performance_profiling", {"module": "json.tool"}),
    ):
        r = api.http.post("/api/operations", json={"type": type_, "params": params})
        assert r.status_code == 403 and "--allow-commands" in r.json()["detail"], (type_, r.text)
    for type_ in ("code_analysis", "dependency_analysis"):  # outputs stay under the allowed roots
        r = api.http.post(
            "/api/operations", json={"type": type_, "params": {"root": str(tmp_path), "output": str(tmp_path / "x.db")}}
        )
        assert r.status_code == 403 and "params.output" in r.json()["detail"], (type_, r.text)
