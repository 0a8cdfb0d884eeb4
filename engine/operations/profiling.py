"""performance_profiling: profile a Python script or module with cProfile (and py-spy's sampler when present).

Each of ``runs`` runs is one item: cProfile (``PROFILE``) writing ``run-K.pstats`` over the program (its own process
group, killed on a stop or past ``timeout_per_run``), and, with a sampler, the program again under
``py-spy record`` for real sampled stacks (``run-K.py-spy.speedscope.json``). A resume goes on at the next
run. Then the runs' statistics are merged into ``profile.pstats`` (for pstats, snakeviz, gprof2dot),
``profile.txt`` (pstats' table), and ``profile.speedscope.json`` (a call tree rebuilt from cProfile's
caller/callee totals, for speedscope), and the result lists the top functions.

The program's own exit code is recorded, not judged: a script that raises still has a profile.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pstats
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..context import OperationContext, OperationFailed
from ..files import private_opener, write_private
from ..models import MAX_SECONDS
from ..registry import operation
from ._common import check_output_dir, optional_dir, output_dir
from ._program import EnvVars, ProgramArgs, PythonExecutable
from ._results_db import exclusive
from ._runs import RunTimedOut, wait_or_stop

Func = tuple[str, int, str]
PROFILE = """import cProfile, sys
code = [0]
run = cProfile.Profile.runctx
def runctx(self, *args):
    try:
        return run(self, *args)
    except SystemExit as e:
        code[0] = e.code
        raise
cProfile.Profile.runctx = runctx
sys.argv[0] = cProfile.__file__
cProfile.main()
sys.exit(code[0])
"""
"""``python -c PROFILE -o FILE TARGET ARGS``: ``python -m cProfile``, exiting with the program's own code.
cProfile's runner swallows SystemExit (to write its statistics), so ``sys.exit(3)`` and an argparse usage
error (2) were recorded as exit code 0."""
SORTS = {"cumulative": "cumtime", "tottime": "tottime", "calls": "ncalls"}


class ProfileParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    script: str | None = Field(default=None, description="Python file to run (this or module)")
    module: str | None = Field(default=None, description="module to run as python -m MODULE (this or script)")
    args: ProgramArgs = Field(default_factory=list, description="arguments given to the program")
    python: PythonExecutable = Field(default=sys.executable, description="interpreter to run it with")
    cwd: str | None = Field(
        default=None,
        validate_default=True,
        description="working directory (default: the script's; for a module, the one it was submitted from)",
    )
    env: EnvVars = Field(default_factory=dict, description="extra environment variables")
    runs: int = Field(default=1, ge=1, le=100, description="times to run the program; statistics are merged")
    top: int = Field(default=25, ge=1, le=1000, description="functions listed in the result")
    sort: Literal["cumulative", "tottime", "calls"] = Field(default="cumulative", description="order of the table")
    sampler: Literal["auto", "py-spy", "none"] = Field(
        default="auto", description="also sample with py-spy (auto: when it is installed)"
    )
    rate: int = Field(default=100, ge=1, le=10_000, description="py-spy samples per second")
    timeout_per_run: float | None = Field(
        default=None, gt=0, le=MAX_SECONDS, description="seconds one run may take (default: the profile's max_timeout)"
    )
    output: str | None = Field(default=None, description="directory for the profiles (default: in the state dir)")

    @field_validator("script")
    @classmethod
    def _script(cls, v: str | None) -> str | None:
        if v is None:
            return None
        p = Path(v).expanduser()
        if not p.is_file():
            raise ValueError(f"script {v!r} is not a file")
        return str(p.resolve())

    @field_validator("module")
    @classmethod
    def _module(cls, v: str | None) -> str | None:
        if v is not None and not all(part.isidentifier() for part in v.split(".")):
            raise ValueError(f"module {v!r} is not a dotted module name")
        return v

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, v: str | None, info: ValidationInfo) -> str | None:
        """A module's default is the submitter's directory, stored with the params: a worker started
        elsewhere (or a resume typed in another directory) ran ``python -m MODULE`` in its own, where the
        module was not found, and the operation completed with a profile of runpy's ImportError."""
        if v is None and info.data.get("module") is not None:  # deleted: refused, as command's cwd
            return os.getcwd()
        return optional_dir(v, "cwd")

    @field_validator("output")
    @classmethod
    def _output(cls, v: str | None) -> str | None:
        return None if v is None else check_profile_dir(check_output_dir(v, "output"))

    @model_validator(mode="after")
    def _one_program(self) -> ProfileParams:
        if (self.script is None) == (self.module is None):
            raise ValueError("give script or module (one of them)")
        if self.sampler == "py-spy" and py_spy() is None:
            raise ValueError("sampler 'py-spy': py-spy is not installed (pip install py-spy)")
        return self


MARK = ".outlast-profile"
"""In an output directory this operation wrote: it may write (and remove) its files there again."""
OWN = re.compile(r"(profile\.(pstats|txt|speedscope\.json)|run-\d+\.(pstats|log|py-spy\.speedscope\.json))")
"""The names of the files it writes in its output directory."""


def check_profile_dir(path: str) -> str:
    """``path`` when it is new, holds none of the files this operation writes, or was written by it before.

    Any writable directory was taken: output=. in a project replaced its profile.txt and removed a run-1.log."""
    d = Path(path)
    if d.is_dir() and not (d / MARK).exists():
        try:
            clash = sorted(n for n in os.listdir(d) if OWN.fullmatch(n))
        except OSError as e:
            raise ValueError(f"output {path!r} cannot be listed: {e.strerror or e}") from None
        if clash:
            raise ValueError(
                f"output {path!r} holds {clash[0]}, which a profile would replace: choose a new or empty directory"
            )
    return path


def py_spy() -> str | None:
    """py-spy beside this interpreter (a virtualenv not on PATH), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("py-spy")


def _label(f: Func) -> str:
    file, line, name = f
    return name if file == "~" else f"{file}:{line}({name})"


def _table(st: pstats.Stats, sort: str, top: int) -> list[dict[str, Any]]:
    """The top functions: calls, primitive calls, own time, cumulative time."""
    raw: dict[Func, tuple[int, int, float, float, dict]] = st.stats  # type: ignore[attr-defined]
    key = {"cumulative": lambda v: v[3], "tottime": lambda v: v[2], "calls": lambda v: v[1]}[sort]
    rows = sorted(raw.items(), key=lambda kv: (-key(kv[1]), _label(kv[0])))[:top]
    return [
        {"function": _label(f), "calls": nc, "primitive_calls": cc, "tottime": round(tt, 6), "cumtime": round(ct, 6)}
        for f, (cc, nc, tt, ct, _callers) in rows
    ]


def speedscope(st: pstats.Stats, name: str) -> dict[str, Any]:
    """A speedscope "sampled" profile from cProfile's totals: the call tree is rebuilt from the roots down,
    each caller's cumulative time shared among its callees by the caller/callee totals (recursion cut
    where a function is already on the stack). Approximate where one function is reached by several
    paths; exact for a tree of calls."""
    raw: dict[Func, tuple[int, int, float, float, dict]] = st.stats  # type: ignore[attr-defined]
    callees: dict[Func, dict[Func, float]] = {}
    for f, (_cc, _nc, _tt, _ct, callers) in raw.items():
        for caller, edge in callers.items():
            callees.setdefault(caller, {})[f] = edge[3]  # cumulative time of f when called from caller
    frames: list[dict[str, Any]] = []
    index: dict[Func, int] = {}
    samples: list[list[int]] = []
    weights: list[float] = []

    def frame(f: Func) -> int:
        if f not in index:
            index[f] = len(frames)
            file, line, fname = f
            frames.append({"name": fname, "file": file, "line": line} if file != "~" else {"name": fname})
        return index[f]

    def walk(f: Func, budget: float, stack: list[Func], depth: int) -> None:
        kids = {c: t for c, t in callees.get(f, {}).items() if c not in stack and t > 0}
        total = sum(kids.values())
        scale = min(1.0, budget / total) if total > 0 else 0.0
        path = [*stack, f]
        own = budget - total * scale
        if own > 1e-9:
            samples.append([frame(x) for x in path])
            weights.append(round(own, 9))
        if depth < 200:
            for c, t in sorted(kids.items(), key=lambda kv: _label(kv[0])):
                if t * scale > 1e-9:
                    walk(c, t * scale, path, depth + 1)

    roots = sorted((f for f, v in raw.items() if not v[4]), key=_label)
    for r in roots:
        walk(r, raw[r][3], [], 0)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": "seconds",
                "startValue": 0,
                "endValue": round(sum(weights), 9),
                "samples": samples,
                "weights": weights,
            }
        ],
        "exporter": "outlast performance_profiling",
        "name": name,
    }


def _merge(files: list[Path], out: Path, sort: str, top: int, name: str) -> list[dict[str, Any]]:
    """Merge the runs' pstats into profile.pstats, profile.txt and profile.speedscope.json; the top table."""
    st = pstats.Stats(str(files[0]), stream=io.StringIO())
    for f in files[1:]:
        st.add(str(f))
    st.dump_stats(str(out / "profile.pstats"))
    text = io.StringIO()
    pstats.Stats(str(out / "profile.pstats"), stream=text).sort_stats(SORTS[sort]).print_stats(top)
    write_private(out / "profile.txt", text.getvalue())
    write_private(out / "profile.speedscope.json", json.dumps(speedscope(st, name)))
    return _table(st, sort, top)


async def _run(ctx: OperationContext, argv: list[str], p: ProfileParams, log: Path, timeout: float) -> int | None:
    cwd = p.cwd or (str(Path(p.script).parent) if p.script else None)
    with open(log, "ab", opener=private_opener) as out:
        proc = await ctx.spawn(
            *argv, cwd=cwd, env={**os.environ, **p.env}, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
        return await wait_or_stop(ctx, proc, timeout)


@operation("performance_profiling", params=ProfileParams, description="profile a Python program (cProfile, py-spy)")
async def profile_program(ctx: OperationContext, p: ProfileParams) -> dict[str, Any]:
    """Run the program ``runs`` times under cProfile (and py-spy), one item each; merge and report. One
    operation at a time writes an output directory: another one given it while it runs is refused."""
    out = Path(p.output) if p.output else output_dir(ctx) / f"profile-{ctx.id}"
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_profile_dir(str(out))  # again at run time: files may have come since the operation was submitted
    # Held while it runs (a lock on its mark): two operations given one output replaced each other's run-K
    # files as they went, and each merged the other's runs into its profile. The second is refused.
    with exclusive(str(out / MARK), output=str(out)):
        return await _profile_into(ctx, p, out)


async def _profile_into(ctx: OperationContext, p: ProfileParams, out: Path) -> dict[str, Any]:
    target = ["-m", p.module] if p.module else [str(p.script)]
    name = " ".join([p.module or Path(str(p.script)).name, *p.args])
    spy = py_spy() if p.sampler != "none" else None
    timeout = p.timeout_per_run or ctx.profile.max_timeout
    st = ctx.state
    runs: dict[str, dict[str, Any]] = st.setdefault("runs", {})
    keys = [f"run-{i + 1}" for i in range(p.runs)]
    ctx.progress(total=len(keys), step="profiling")

    async def one(key: str) -> dict[str, Any] | None:
        """Run ``key`` (under cProfile, then py-spy); what it left, or None when stopping."""
        ctx.step = key
        stats_file = out / f"{key}.pstats"
        stats_file.unlink(missing_ok=True)
        log = out / f"{key}.log"
        log.unlink(missing_ok=True)
        try:
            argv = [p.python, "-c", PROFILE, "-o", str(stats_file), *target, *p.args]
            code = await _run(ctx, argv, p, log, timeout)
        except RunTimedOut as e:
            raise RuntimeError(f"{key} {e}") from None
        if code is None:
            return None  # stopping: this run is not done
        if not stats_file.exists():
            raise RuntimeError(f"{key}: no profile written (exit code {code}); see {log}")
        run: dict[str, Any] = {"exit_code": code}
        if spy is not None and not st.get("sampler_error"):
            sampled = out / f"{key}.py-spy.speedscope.json"
            argv = [spy, "record", "-f", "speedscope", "-r", str(p.rate), "-o", str(sampled), "--", p.python]
            try:
                scode = await _run(ctx, [*argv, *target, *p.args], p, log, timeout)
            except RunTimedOut as e:
                raise RuntimeError(f"{key} under py-spy {e}") from None
            if scode is None:
                return None
            if sampled.exists():
                run["sampled"] = str(sampled)
            else:
                st["sampler_error"] = f"py-spy wrote no profile (exit code {scode}); see {log}"
                ctx.log.warning(st["sampler_error"] + ": going on with cProfile alone")
        return run

    # A run done by an earlier attempt whose statistics are gone (the output directory emptied or removed
    # between attempts) is run again: merged without it, the profile silently had fewer runs than asked.
    lost = [k for k in keys if ctx.is_done(k) and not (k in runs and (out / f"{k}.pstats").is_file())]
    if lost:
        ctx.log.warning(f"{len(lost)} earlier run(s) left no statistics in {out}: run again ({', '.join(lost)})")
    for key in lost:
        runs.pop(key, None)
        again = await one(key)
        if again is None:
            break
        runs[key] = again
    if all(k in runs for k in lost):
        async for key in ctx.items(keys, key=str):
            try:
                got = await one(key)
            except RuntimeError as e:
                st.setdefault("first_failure", str(e))  # why, for the operation's error
                ctx.fail(key, e)
                continue
            if got is None:
                break
            runs[key] = got
    ctx.progress(step="merging")  # raises OperationStopped when stopping
    done = [k for k in keys if k in runs]
    if not done:
        # why in the error: "no run finished" alone sent the user to the log for a script that cannot run
        why = st.get("first_failure")
        raise OperationFailed("no run finished" + (f"; the first failed: {why}" if why else ""))
    table = await asyncio.to_thread(_merge, [out / f"{k}.pstats" for k in done], out, p.sort, p.top, name)
    codes = sorted({runs[k]["exit_code"] for k in done})
    if codes != [0]:
        ctx.log.warning(f"the program exited with code(s) {codes}: its profile is still there")
    return {
        "runs": len(done),
        "exit_codes": codes,
        "sort": p.sort,
        "top": table,
        "pstats": str(out / "profile.pstats"),
        "table": str(out / "profile.txt"),
        "speedscope": str(out / "profile.speedscope.json"),
        "sampled": [runs[k]["sampled"] for k in done if "sampled" in runs[k]],
        "sampler": "py-spy" if any("sampled" in runs[k] for k in done) else None,
        "sampler_error": st.get("sampler_error"),
        "directory": str(out),
    }
