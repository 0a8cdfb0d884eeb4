"""integration_testing and performance_testing: the pytest runner with the defaults each kind of suite needs.

integration_testing is comprehensive_test_suite (test by test, hung and crashed tests contained, resumable
per test) under its own timeout profile (120 s a test, stalled after 30 min) and, by default, only the
tests marked ``integration`` (``marker`` to choose another, ``marker=""`` for all).

performance_testing times a suite again and again: ``warmup`` runs, then ``repeats`` measured runs, each
one pytest process (its own process group, killed past ``timeout_per_run``) that reports every test's
duration through pytest's JUnit XML. Each run is one item, so a resume goes on at the next run. The
result has per-test statistics (median, mean, stdev, min, max over the measured runs) and the suite's
wall time, compared with a stored baseline: a test whose median is slower than the baseline's by more
than ``tolerance`` (and ``min_delta`` seconds) is a regression. The first run against a baseline path
that does not exist yet saves its figures there; ``update_baseline`` replaces it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..context import OperationContext, OperationFailed
from ..files import private_opener, replace_keeping_mode, write_private
from ..models import MAX_SECONDS
from ..registry import operation
from ._common import (
    JSON_MAGIC,
    check_output_file,
    existing_path,
    optional_dir,
    output_dir,
)
from ._program import EnvVars, ProgramArgs, PythonExecutable
from ._runs import RunTimedOut, wait_or_stop
from .test_suite import TestSuiteParams, run_test_suite

LIST_MAX = 20
BAD = ("failed", "error")


def _with_marker(args: list[str], marker: str | None) -> list[str]:
    """``args`` with ``-m MARKER`` added, unless the caller already selects by marker."""
    if not marker or any(a == "-m" or (a.startswith("-m") and len(a) > 2) for a in args):
        return args
    return [*args, "-m", marker]


class IntegrationParams(TestSuiteParams):
    __test__ = False
    marker: str | None = Field(default="integration", description='pytest marker the tests must carry ("" for all)')


@operation("integration_testing", params=IntegrationParams, description="run a suite's integration tests one by one")
async def integration_testing(ctx: OperationContext, p: IntegrationParams) -> dict[str, Any]:
    """comprehensive_test_suite with ``-m MARKER`` under the integration_testing profile."""
    args = _with_marker(p.args, p.marker)
    marker = p.marker if args != p.args else None  # None: no marker, or -m in args chose already
    todo = (
        f"no test is marked {marker!r}: mark them and resume (it collects again), or run again with"
        " marker='' to run every test"
        if marker
        else ""
    )
    result = await run_test_suite(
        ctx, TestSuiteParams.model_validate({**p.model_dump(exclude={"marker"}), "args": args}), todo
    )
    if result.get("tests") == 0 and marker:
        ctx.log.warning(f"no test is marked {marker!r}: give marker='' to run every test under {p.path}")
    return {"marker": marker, **result}


# ---- performance_testing ---------------------------------------------------------------------------


class PerformanceParams(BaseModel):
    __test__ = False
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="test file or directory given to pytest")
    args: ProgramArgs = Field(default_factory=list, description="more pytest arguments (e.g. -k expr)")
    marker: str | None = Field(default=None, description="pytest marker the timed tests must carry (default: all)")
    repeats: int = Field(default=5, ge=1, le=1000, description="measured runs of the suite")
    warmup: int = Field(default=1, ge=0, le=100, description="runs before the measured ones, not counted")
    timeout_per_run: float | None = Field(
        default=None, gt=0, le=MAX_SECONDS, description="seconds one run may take (default: per_item_timeout)"
    )
    baseline: str | None = Field(
        default=None, description="baseline JSON to compare with (default: one per path and args in the state dir)"
    )
    update_baseline: bool = Field(default=False, description="save this run's figures as the baseline")
    tolerance: float = Field(default=0.2, ge=0, le=100, description="fraction slower a median must be to regress")
    min_delta: float = Field(default=0.005, ge=0, le=MAX_SECONDS, description="seconds a change must exceed to count")
    python: PythonExecutable = Field(default=sys.executable, description="interpreter with pytest installed")
    cwd: str | None = Field(default=None, description="working directory (default: path, or its directory)")
    env: EnvVars = Field(default_factory=dict, description="extra environment variables for pytest")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return existing_path(v, "path")

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, v: str | None) -> str | None:
        return optional_dir(v, "cwd")

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, v: str | None) -> str | None:
        return check_output_file(v, "baseline", JSON_MAGIC, "a JSON baseline")


def _parse_junit(path: Path) -> dict[str, tuple[float, str]]:
    """{test id: (seconds, outcome)} from pytest's JUnit XML."""
    out: dict[str, tuple[float, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        cls, name, file = case.get("classname", ""), case.get("name", ""), case.get("file")
        tid = f"{cls}::{name}" if cls else name
        if file:  # xunit1 names the file: the id pytest prints, file::Class::name
            dotted = file.removesuffix(".py").replace("/", ".")
            inner = cls[len(dotted) + 1 :] if cls.startswith(dotted + ".") else ""
            tid = "::".join(x for x in (file, inner, name) if x)
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                break
        out[tid] = (float(case.get("time") or 0.0), outcome)
    return out


def stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": round(statistics.median(values), 6),
        "mean": round(statistics.fmean(values), 6),
        "stdev": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0,
        "min": round(min(values), 6),
        "max": round(max(values), 6),
    }


async def _one_run(ctx: OperationContext, p: PerformanceParams, key: str, run_dir: Path) -> dict[str, Any] | None:
    """One pytest process over the suite: its wall time and every test's duration and outcome (None when a
    stop was asked for while it ran: killed, to be run again on resume)."""
    xml = run_dir / f"{key}.xml"
    xml.unlink(missing_ok=True)
    argv = [
        p.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
        "-o", "junit_family=xunit1",
        p.path, *_with_marker(p.args, p.marker),
    ]  # fmt: skip
    cwd = p.cwd or (p.path if Path(p.path).is_dir() else str(Path(p.path).parent))
    timeout = p.timeout_per_run or ctx.profile.per_item_timeout
    with open(run_dir / f"{key}.log", "wb", opener=private_opener) as log:
        started = time.perf_counter()
        proc = await ctx.spawn(
            *argv, cwd=cwd, env={**os.environ, **p.env}, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
        )
        code = await wait_or_stop(ctx, proc, timeout)
        wall = time.perf_counter() - started
    if code is None:
        return None
    if code not in (0, 1) or not xml.exists():
        tail = (run_dir / f"{key}.log").read_text("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"pytest exited with code {code}: " + " | ".join(tail))
    tests = await asyncio.to_thread(_parse_junit, xml)
    return {"wall": round(wall, 6), "tests": {t: d for t, (d, _o) in tests.items()},
            "outcomes": {t: o for t, (_d, o) in tests.items() if o != "passed"}}  # fmt: skip


def _compare(now: dict[str, dict[str, float]], base: dict[str, Any] | None, p: PerformanceParams) -> dict[str, Any]:
    if not base:
        return {"regressions": [], "improvements": [], "new_tests": 0, "missing_tests": 0}
    old: dict[str, float] = {t: s["median"] for t, s in base.get("tests", {}).items()}
    reg, imp = [], []
    for t, s in now.items():
        if t not in old:
            continue
        m, b = s["median"], old[t]
        entry = {"id": t, "median": m, "baseline": b, "ratio": round(m / b, 3) if b > 0 else None}
        if m - b > p.min_delta and m > b * (1 + p.tolerance):
            reg.append(entry)
        elif b - m > p.min_delta and b > m * (1 + p.tolerance):
            imp.append(entry)
    order = lambda e: (-abs(e["median"] - e["baseline"]), e["id"])  # noqa: E731  biggest change first
    return {
        "regressions": sorted(reg, key=order)[:LIST_MAX],
        "improvements": sorted(imp, key=order)[:LIST_MAX],
        "new_tests": len(set(now) - set(old)),
        "missing_tests": len(set(old) - set(now)),
    }


def _load_baseline(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise OperationFailed(f"baseline {str(path)!r} cannot be read: {e}") from None
    return data if isinstance(data, dict) and isinstance(data.get("tests"), dict) else None


@operation("performance_testing", params=PerformanceParams, description="time a test suite over repeated runs")
async def performance_testing(ctx: OperationContext, p: PerformanceParams) -> dict[str, Any]:
    """Warm-up and measured runs (one item each), then statistics and the comparison with the baseline."""
    outputs = output_dir(ctx)
    run_dir = outputs / f"perf-{ctx.id}"
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    selector = json.dumps([p.path, _with_marker(p.args, p.marker)])
    baseline = Path(p.baseline or outputs / f"perf-baseline-{hashlib.sha1(selector.encode()).hexdigest()[:12]}.json")
    st = ctx.state
    if "baseline" not in st:  # read once: a resume compares with what the first attempt found
        st["baseline"] = await asyncio.to_thread(_load_baseline, baseline)
        st["runs"] = {}
        await ctx.checkpoint(next_step="running")
    keys = [f"warmup-{i + 1}" for i in range(p.warmup)] + [f"run-{i + 1}" for i in range(p.repeats)]
    ctx.progress(total=len(keys), step="timing")
    async for key in ctx.items(keys, key=str):
        ctx.step = key
        try:
            run = await _one_run(ctx, p, key, run_dir)
        except (RuntimeError, RunTimedOut) as e:
            st.setdefault("first_failure", f"{key}: {e}")  # why, for the operation's error
            ctx.fail(key, e)
            continue
        if run is None:
            break  # stopping: this run is not done
        st["runs"][key] = run
    ctx.progress(step="summarising")  # raises OperationStopped when stopping
    measured = [st["runs"][k] for k in keys if k.startswith("run-") and k in st["runs"]]
    if not measured:
        # why in the error, not only in a log line: "no measured run finished" alone sent the user to the log
        # for a '-m' expression pytest could not parse, or a '-k' that selected no test
        why = st.get("first_failure")
        raise OperationFailed("no measured run finished" + (f"; the first failed: {why}" if why else ""))
    per_test: dict[str, list[float]] = {}
    bad: dict[str, str] = {}
    for run in measured:
        for t, d in run["tests"].items():
            per_test.setdefault(t, []).append(d)
        bad.update({t: o for t, o in run["outcomes"].items() if o in BAD})
    tests = {t: stats(v) for t, v in sorted(per_test.items())}
    wall = stats([r["wall"] for r in measured])
    comparison = _compare(tests, st["baseline"], p)
    saved = False
    if p.update_baseline or st["baseline"] is None:
        figures = {"path": p.path, "args": _with_marker(p.args, p.marker), "wall": wall, "tests": tests}
        # whole or not at all: written over in place, a kill or a full disk left a cut file every later
        # run refused, in place of the baseline it had (a symlink to a baseline kept elsewhere stays one)
        await asyncio.to_thread(replace_keeping_mode, baseline, (json.dumps(figures, indent=1) + "\n").encode())
        saved = True
    report = {
        "runs": len(measured),
        "warmup": p.warmup,
        "tests": len(tests),
        "wall": wall,
        "failing": bad,
        **comparison,
    }
    await asyncio.to_thread(
        write_private,
        run_dir / "report.json",
        json.dumps({**report, "per_test": tests, "per_run": st["runs"]}, indent=1),
    )
    slowest = sorted(tests.items(), key=lambda kv: (-kv[1]["median"], kv[0]))[:LIST_MAX]
    if comparison["regressions"]:
        ctx.log.warning(f"{len(comparison['regressions'])} test(s) slower than the baseline")
    return {
        **report,
        "slowest": [{"id": t, **s} for t, s in slowest],
        "baseline": str(baseline),
        "baseline_compared": st["baseline"] is not None,
        "baseline_saved": saved,
        "report": str(run_dir / "report.json"),
    }
