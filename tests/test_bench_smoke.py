"""scripts/bench.py --smoke runs every benchmark end to end (at a tenth of --quick's sizes) and reports
every figure.

A missed target is a result, not a failure; only a broken benchmark (or a malformed
report) fails here. No speed is asserted: the machines are shared and noisy.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench.py"


def _run(args: list[str], tmp_path: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)  # about 20 s here; the bench itself is cut at 240 s on a very loaded machine
def test_smoke_bench_reports_every_figure(tmp_path: Path, state_dir: Path) -> None:
    out = tmp_path / "bench.json"
    r = _run(["--smoke", "--json", str(out)], tmp_path)
    assert r.returncode == 0, f"bench broke:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["broken"] == []
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    names = set(_run(["--list"], tmp_path).stdout.split())
    figures = report["figures"]
    assert {f["name"] for f in figures} == names, "every benchmark reports at least one row"
    for f in figures:
        assert f["figure"] and f["target"], f
        for key in ("value", "anchor", "met"):
            assert key in f, (f["figure"], key)
        if not f["available"]:
            assert f["note"].startswith("not available: "), f
            assert f["value"] is None and f["met"] is None
            continue
        assert isinstance(f["value"], (int, float)) and math.isfinite(f["value"]) and f["value"] >= 0, f
        assert isinstance(f["met"], bool), f
        assert f["anchor"] is None or (isinstance(f["anchor"], (int, float)) and f["anchor"] > 0), f
        if f["anchor"] is not None and f["ratio"] is not None:
            assert math.isfinite(f["ratio"]) and f["ratio"] >= 0, f
    # The table printed to stdout names every figure.
    for f in figures:
        assert f["figure"] in r.stdout


def test_unknown_benchmark_is_one_clear_line(tmp_path: Path, state_dir: Path) -> None:
    r = _run(["--only", "no_such_bench"], tmp_path, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_bench" in lines[0] and "Traceback" not in r.stderr
