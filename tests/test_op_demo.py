"""demo: a process that crashes hard mid-run (os._exit) resumes to the result of an uninterrupted run; the seed's
scripts/demo.py does what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, resume, run_json


def test_crash_then_resume_equals_uninterrupted(cli: Cli) -> None:
    params = ["-p", "items=60", "-p", "seconds=0.01", "-p", "fail_every=7", "--profile", "checkpoint_interval=0.05"]
    params += ["--profile", "failure_threshold=20"]
    code, whole, err = run_json(cli, "run", "demo", *params)
    assert code == 0 and whole["status"] == "completed", err
    code, crashed, _ = run_json(cli, "run", "demo", *params, "-p", "crash_at=40")
    assert code == 137 and crashed == {}  # gone without a word, as a killed process is
    op_id = next(o["id"] for o in json.loads(cli("--json", "ls").stdout) if o["id"] != whole["id"])
    assert cli.op(op_id).checkpoint_seq, "no checkpoint before the crash to resume from"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert (
        final["result"] == whole["result"] == {"sum": sum(range(60)) - sum(range(6, 60, 7)), "items": 60, "failures": 8}
    )


def test_bad_params(cli: Cli) -> None:
    bad_params(cli, "demo", {"items": -1}, "items")
    bad_params(cli, "demo", {"itemz": 3}, "itemz")


def run_demo(tmp_path: Path, demo_type: str) -> str:
    """scripts/demo.py --demo-type DEMO_TYPE run as a user runs it; its output, once it said everything behaved.

    Its output goes to a file and the demo's own exit is waited for, not the end of a pipe: multiprocessing's
    resource tracker (the indexing demo's worker pool starts one) holds the output open after the demo exits,
    and one CI run waited on the pipe past the test's timeout (whether the demo had ended, its report could not
    say). A demo that does not end is still a failure here, with its output so far."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
    log = tmp_path / "demo.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "demo.py"), "--demo-type", demo_type],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
        try:
            code = proc.wait(timeout=100)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the demo did not end within 100 s:\n" + log.read_text()) from None
    text = log.read_text()
    assert code == 0, text
    assert "FAIL" not in text and "demo: everything behaved" in text, text
    return text


def test_demo_script_checkpoint(tmp_path: Path) -> None:
    """The seed's demo script: a worker SIGKILLed after a checkpoint, resumed to the uninterrupted result."""
    out = run_demo(tmp_path, "checkpoint")
    assert "SIGKILL worker pid" in out and "[resumed] completed 100.0% 200/200" in out


def test_demo_script_indexing(tmp_path: Path) -> None:
    """The seed's ``--demo-type indexing``: it failed ("did not behave: indexing", exit 1) once a file that is not
    UTF-8 was indexed as Latin-1 instead of counted as an item failure, as the demo still expected."""
    out = run_demo(tmp_path, "indexing")
    assert "every file indexed, Latin-1 too" in out
