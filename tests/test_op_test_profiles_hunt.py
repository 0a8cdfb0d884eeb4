"""performance_testing's baseline when its file system fills: the baseline it had is kept."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.fixtures_cli import Cli
from tests.fixtures_disk import fill
from tests.fixtures_ops import run_json


def test_a_baseline_update_on_a_full_disk_keeps_the_old_baseline(cli: Cli, small_fs: Path, tmp_path: Path) -> None:
    """The baseline was written over in place: truncated, then the write ran out of room, and the suite's
    baseline was a cut JSON file every later run refused ("baseline ... cannot be read")."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_a.py").write_text("def test_a():\n    pass\n")
    baseline = small_fs / "baseline.json"
    params = {"path": str(suite), "repeats": 1, "warmup": 0, "baseline": str(baseline), "python": sys.executable}
    code, rec, err = run_json(cli, "run", "performance_testing", "--params-json", json.dumps(params))
    assert code == 0 and rec["result"]["baseline_saved"], (rec, err)
    before = baseline.read_bytes()
    # 300 more tests: their baseline is larger than the old one and the room left together
    (suite / "test_b.py").write_text("".join(f"def test_{i}():\n    pass\n" for i in range(300)))
    filler = fill(small_fs)
    try:
        code, rec, err = run_json(
            cli, "run", "performance_testing", "--params-json", json.dumps({**params, "update_baseline": True})
        )
        assert code != 0, rec
        assert baseline.read_bytes() == before  # whole, as it was
        assert [p.name for p in small_fs.iterdir() if p.name not in ("fill", "baseline.json")] == []  # no temp left
    finally:
        filler.unlink()


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ({"marker": "slow and ("}, "Wrong expression passed to '-m'"),
        ({"args": "-k nothing_has_this_name"}, "pytest exited with code 5"),
        ({"timeout_per_run": 0.5, "args": "-k slow"}, "ran more than 0.5s"),
    ],
)
def test_no_measured_run_says_why(cli: Cli, tmp_path: Path, extra: dict, expect: str) -> None:
    """The operation's error was "no measured run finished" alone: the cause only in a log line."""
    (tmp_path / "test_a.py").write_text("import time\n\ndef test_slow():\n    time.sleep(5)\n")
    params = {"path": str(tmp_path), "repeats": 1, "warmup": 0, "python": sys.executable, **extra}
    code, rec, err = run_json(cli, "run", "performance_testing", "--params-json", json.dumps(params))
    assert code == 1 and rec["status"] == "failed", (rec, err)
    assert rec["error"].startswith("no measured run finished; the first failed: run-1: ") and expect in rec["error"]
