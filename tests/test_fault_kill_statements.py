"""Fault suite (a), exact: SIGKILL the real ``outlast`` as each SQL statement on its store starts, drive the work
to the end as ``test_fault_kill`` does, and check the ledger.

``test_fault_kill`` kills at random moments, and a kill at a random moment rarely lands between two statements that
run within a millisecond of each other (an output database killed between its tables and its kind row went unseen
for weeks). Here the tests.store_die plugin counts every statement run on the state dir's ``outlast.db`` (every
connection, every thread: the store's SQLite thread, the quick submit path, read-only peeks, and the database a new
store is built in) and kills the process as the N-th starts.

Scenarios (each kills one process of the sequence; the rest run unkilled):

- ``run``: ``outlast run ledger`` killed at N.
- ``submit``: ``outlast submit ledger`` (the quick path: no engine) killed at N.
- ``worker``: after a submit, ``outlast worker --exit-when-idle`` killed at N (its claim, checkpoints, settle).
- ``resume``: after a run killed halfway, ``outlast resume`` killed at N (its recovery of the orphan, its claim).
- ``pause`` / ``cancel``: while ``outlast run`` works, ``outlast pause`` (or ``cancel``) killed at N.
- ``submit-key``: ``outlast submit --idempotency-key`` killed at N, then retried: still one operation.
- ``sigint``: ``outlast run`` that gets Ctrl-C at a statement halfway, killed at N (its pause included).
- ``fail`` / ``retry``: the ledger fails once halfway (a lost connection), not retried (the run ends failed)
  or retried at once (queued and claimed again in the same process); killed at N.
- ``fold``: a checkpoint every 10 items, enough commits for the store's thread to fold its WAL; killed at N.

A traced, unkilled run of each scenario first says how many statements it runs (N goes one past: the kill then
lands nowhere, or on a statement a slower run adds). After the kill, the work is driven to completion exactly as
``test_fault_kill.one_round`` does (``run`` again when nothing was stored, ``worker`` for a queued record,
``resume`` otherwise), and ``test_fault_kill.ledger_check`` judges it: every item done, none lost, none of the
newest checkpoint at the kill run again, at most one checkpoint interval repeated per kill, the sum right; then
the record is completed at 300 of 300 items, it is the only one stored, the store opens, ``outlast ls`` lists
it, and no new database a killed process was building is left in the state dir.

By default, a seeded sample of kill points of ``run`` and one other scenario for about BUDGET seconds (seed:
OUTLAST_FAULT_SEED, else random; in the failure message). OUTLAST_SOAK=1: every statement of every scenario (two
at a time), with the figures printed (with -s). OUTLAST_KILL_POINTS=run:57,worker:12 replays those points only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine import Status
from tests import zygote
from tests.fixtures_cli import REPO, outlast_into
from tests.test_fault_kill import LEDGER_ITEMS, STEPS, Figures, ledger_args, ledger_check, stored

SOAK = os.environ.get("OUTLAST_SOAK") == "1"
SEED = int(os.environ.get("OUTLAST_FAULT_SEED") or random.SystemRandom().randrange(2**32))
POINTS = os.environ.get("OUTLAST_KILL_POINTS", "")
BUDGET = 10.0
"""Seconds of the whole test by default: the references (``run``'s and one other scenario's), then kill points
(three at least) until this is spent."""
PLUGINS = ["--plugin", "tests.ops_for_tests", "--plugin", "tests.store_die"]
KILLED = -9


def outlast(
    state: Path,
    args: list[str],
    out: Path,
    *,
    kill_at: int = 0,
    trace: Path | None = None,
    hit: Path | None = None,
    sigint_at: int = 0,
) -> int:
    """``outlast --state-dir STATE ARGS``, SIGKILLed as its ``kill_at``-th statement on the store starts (0: never);
    every statement written to ``trace``, the one killed at to ``hit``. Its exit code (-9: killed)."""
    env = {k: v for k, v in os.environ.items() if k != "OUTLAST_DEBUG" and not k.startswith("OUTLAST_TEST_STORE_DIE")}
    env["OUTLAST_TEST_STORE_DIE_DIR"] = str(state)
    if kill_at:
        env["OUTLAST_TEST_STORE_DIE_AT"] = str(kill_at)
    if trace is not None:
        env["OUTLAST_TEST_STORE_DIE_TRACE"] = str(trace)
    if hit is not None:
        env["OUTLAST_TEST_STORE_DIE_HIT"] = str(hit)
    if sigint_at:
        env["OUTLAST_TEST_STORE_DIE_SIGINT_AT"] = str(sigint_at)
    note = f"  [killed at statement {kill_at}]" if kill_at else ""
    return outlast_into(out, ["--state-dir", str(state), *PLUGINS], args, env, note=note)


def _lines(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def _tail(path: Path, n: int = 8) -> str:
    return " | ".join(path.read_text().splitlines()[-n:]) if path.exists() else "(no output)"


def _all_ids(state: Path) -> list[str]:
    con = sqlite3.connect(f"{(state / 'outlast.db').as_uri()}?mode=ro", uri=True)
    try:
        return [i for (i,) in con.execute("SELECT id FROM operations")]
    finally:
        con.close()


def _op_id(state: Path) -> str:
    op, _ = stored(state)
    assert op is not None, f"no operation stored in {state}"
    return op.id


# ---- the scenarios ---------------------------------------------------------------------------------------------


@dataclass
class Round:
    """One kill point's directory and what happened in it."""

    base: Path
    kills: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def out(self) -> Path:
        return self.base / "outlast.out"

    @property
    def log(self) -> Path:
        return self.base / "items.log"

    def step(
        self,
        args: list[str],
        *,
        kill_at: int = 0,
        trace: Path | None = None,
        hit: Path | None = None,
        sigint_at: int = 0,
    ) -> int:
        """One process; a kill is recorded as ``test_fault_kill.one_round`` records it (for ``ledger_check``)."""
        before = _lines(self.log)
        code = outlast(self.state, args, self.out, kill_at=kill_at, trace=trace, hit=hit, sigint_at=sigint_at)
        if code == KILLED:
            _op, done = stored(self.state)
            self.kills.append({"from": before, "at": _lines(self.log), "done": done})
        return code


def submit_args(base: Path) -> list[str]:
    return ["submit", *ledger_args(base)[1:]]


WORKER = ["worker", "--exit-when-idle", "--concurrency", "1"]


def slow_ledger_args(base: Path) -> list[str]:
    """``ledger_args``, 3 ms more per item: a pause or cancel asked after 40 items finds it running."""
    args = ledger_args(base)
    params = json.loads(args[3])
    args[3] = json.dumps({**params, "seconds": params["seconds"] + 0.003})
    return args


def while_running(r: Round, action: str, kill_at: int, trace: Path | None, hit: Path | None) -> int:
    """``outlast ACTION ID`` (pause or cancel) while ``outlast run`` works on the ledger; its exit code. The run's
    own end (completed, or paused or cancelled as asked) is not a problem; any other is."""
    with open(r.out, "a") as fh:
        fh.write("$ outlast run ledger ... (in the background)\n")
    env = {k: v for k, v in os.environ.items() if k != "OUTLAST_DEBUG" and not k.startswith("OUTLAST_TEST_STORE_DIE")}
    bg_out = r.base / "run.out"
    with open(bg_out, "w") as fh:
        run = zygote.popen(
            ["--state-dir", str(r.state), *PLUGINS, *slow_ledger_args(r.base)],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=fh,
            cwd=REPO,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while _lines(r.log) < 40 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        code = outlast(r.state, [action, _op_id(r.state), "--wait", "5"], r.out, kill_at=kill_at, trace=trace, hit=hit)
        ended = run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    want = {0, 6 if action == "pause" else 4}
    if ended not in want:
        r.problems.append(f"the run being {action}d exited {ended}: {_tail(bg_out)}")
    return code


@dataclass
class Scenario:
    name: str
    setup: Callable[[Round, int], None]
    """What runs before the killed process (given the resume scenario's setup kill point)."""
    killed: Callable[[Round, int, Path | None, Path | None], int]
    """The process killed at a statement: (round, kill_at, trace, hit) -> exit code."""
    ends: frozenset[int] = frozenset({0})
    """The exit codes of the killed process when it is not killed (and of its reference run)."""
    run_args: Callable[[Path], list[str]] = ledger_args
    """``outlast run`` of the work (the drive runs it when nothing was stored)."""
    may_fail: bool = False
    """A resume may end failed once (the ledger's one failure), then be resumed again."""


def _nothing(r: Round, _: int) -> None:
    pass


def _submitted(r: Round, _: int) -> None:
    assert r.step(submit_args(r.base)) == 0, _tail(r.out)


def _killed_halfway(r: Round, at: int) -> None:
    assert r.step(ledger_args(r.base), kill_at=at) == KILLED, f"not killed at statement {at}: {_tail(r.out)}"


def failing_args(base: Path) -> list[str]:
    """``ledger_args``, failing once after item 150 (a connection lost), not retried: the run ends failed, a
    resume goes on."""
    args = ledger_args(base)
    params = json.loads(args[3])
    args[3] = json.dumps({**params, "fail_at": 150, "flaky_file": str(base / "flaky")})
    return [*args, "--profile", "retry.max_attempts=1"]


def retrying_args(base: Path) -> list[str]:
    """``failing_args``, retried at once (the store's retry path: queued again, claimed again, in one run)."""
    return [*failing_args(base)[:-2], "--profile", "retry.backoff_base=0.01"]


def frequent_args(base: Path) -> list[str]:
    """``ledger_args`` with a checkpoint every 10 items: enough commits for the store's thread to fold its WAL."""
    args = ledger_args(base)
    params = json.loads(args[3])
    args[3] = json.dumps({**params, "explicit_every": 10})
    return args


def _keyed_submit(r: Round, n: int, t: Path | None, h: Path | None) -> int:
    """``outlast submit --idempotency-key`` killed at N, then the same submit retried (as a script would): one
    operation in the end."""
    args = ["submit", "--idempotency-key", "the-one", *ledger_args(r.base)[1:]]
    code = r.step(args, kill_at=n, trace=t, hit=h)
    if code == KILLED:
        retried = r.step(args)
        if retried != 0:
            r.problems.append(f"the retried submit exited {retried}: {_tail(r.out)}")
    return code


def _interrupted_at(at: int) -> Callable[[Round, int, Path | None, Path | None], int]:
    """``outlast run`` sent Ctrl-C (SIGINT) by itself as its ``at``-th statement starts: it pauses."""
    return lambda r, n, t, h: r.step(ledger_args(r.base), kill_at=n, trace=t, hit=h, sigint_at=at)


SIGINT_AT = 60
"""The sigint scenario's Ctrl-C: about halfway through the run's statements."""

SCENARIOS = {
    s.name: s
    for s in (
        Scenario("run", _nothing, lambda r, n, t, h: r.step(ledger_args(r.base), kill_at=n, trace=t, hit=h)),
        Scenario("submit", _nothing, lambda r, n, t, h: r.step(submit_args(r.base), kill_at=n, trace=t, hit=h)),
        Scenario("worker", _submitted, lambda r, n, t, h: r.step(WORKER, kill_at=n, trace=t, hit=h)),
        Scenario(
            "resume",
            _killed_halfway,
            lambda r, n, t, h: r.step(["resume", _op_id(r.state)], kill_at=n, trace=t, hit=h),
        ),
        Scenario("pause", _nothing, lambda r, n, t, h: while_running(r, "pause", n, t, h), frozenset({0, 7})),
        Scenario("cancel", _nothing, lambda r, n, t, h: while_running(r, "cancel", n, t, h), frozenset({0, 7})),
        Scenario("submit-key", _nothing, _keyed_submit),
        Scenario("sigint", _nothing, _interrupted_at(SIGINT_AT), frozenset({6})),
        Scenario(
            "fail",
            _nothing,
            lambda r, n, t, h: r.step(failing_args(r.base), kill_at=n, trace=t, hit=h),
            frozenset({1}),
            failing_args,
            may_fail=True,
        ),
        Scenario(
            "retry",
            _nothing,
            lambda r, n, t, h: r.step(retrying_args(r.base), kill_at=n, trace=t, hit=h),
            run_args=retrying_args,
            may_fail=True,
        ),
        Scenario(
            "fold",
            _nothing,
            lambda r, n, t, h: r.step(frequent_args(r.base), kill_at=n, trace=t, hit=h),
            run_args=frequent_args,
        ),
    )
}
"""pause and cancel may exit 7 (the run completed before they took effect); sigint pauses (6); fail fails (1)."""


def drive(r: Round, scenario: Scenario) -> None:
    """Run to completion as ``test_fault_kill.one_round`` does, unkilled."""
    for _ in range(STEPS):
        op, _done = stored(r.state)
        if op is not None and op.status is Status.COMPLETED:
            return
        if op is None:  # killed before the submit was stored: run it again
            args = scenario.run_args(r.base)
        elif op.status is Status.QUEUED:  # killed between the submit and the claim: a worker runs it
            args = WORKER
        else:  # running (an orphan the next engine finds) or stopped: resume it
            args = ["resume", op.id]
        code = r.step(args)
        if code != 0 and not (code == 1 and scenario.may_fail and not (r.base / "failed-once").exists()):
            r.problems.append(f"`outlast {' '.join(args)}` exited {code} unkilled: {_tail(r.out)}")
            return
        if code == 1:
            (r.base / "failed-once").touch()
    r.problems.append(f"not completed after {STEPS} processes: {_tail(r.out)}")


def one_point(scenario: Scenario, at: int, base: Path, setup_at: int) -> tuple[Round, Figures, str]:
    """Kill ``scenario``'s process as its ``at``-th statement starts, drive to the end, check; the round, its
    figures and the statement the kill hit ("" when the process ended before it)."""
    r = Round(base)
    base.mkdir(parents=True)
    figures = Figures(scenario.name)
    hit = base / "hit"
    try:
        scenario.setup(r, setup_at)
        code = scenario.killed(r, at, None, hit)
        if code != KILLED and code not in scenario.ends:
            r.problems.append(f"the killed process's step exited {code} unkilled: {_tail(r.out)}")
        if not r.problems:
            drive(r, scenario)
        if not r.problems:
            op, _done = stored(r.state)
            assert op is not None
            record = op.model_dump(mode="json")
            record["kills"] = r.kills
            progress = (op.progress.done, op.progress.total, op.progress.failed)
            if progress != (LEDGER_ITEMS, LEDGER_ITEMS, 0):
                r.problems.append(
                    f"completed at (done, total, failed) {progress}, not ({LEDGER_ITEMS}, {LEDGER_ITEMS}, 0)"
                )
            unfinished = sorted(p.name for p in r.state.iterdir() if p.name.startswith(".outlast.db.new-"))
            if unfinished:  # a store a killed process was building, beside the one made since
                r.problems.append(f"left in the state dir: {unfinished}")
            ids = _all_ids(r.state)
            if ids != [op.id]:
                r.problems.append(f"operations stored: {ids} (one was submitted)")
            r.problems += ledger_check(base, record, {"result": {"sum": sum(range(LEDGER_ITEMS))}}, figures)
            listed = zygote.run(
                ["--state-dir", str(r.state), "ls"], capture_output=True, text=True, timeout=60, cwd=REPO
            )
            if listed.returncode != 0 or op.id not in listed.stdout or "completed" not in listed.stdout:
                r.problems.append(f"`outlast ls` exited {listed.returncode}: {listed.stdout} {listed.stderr}")
    except Exception as exc:  # a hang, an unreadable store: this point's problem, not the end of the loop
        r.problems.append(f"{type(exc).__name__}: {exc}: {_tail(r.out)}")
    figures.kills = len(r.kills)
    return r, figures, hit.read_text().strip() if hit.exists() else ""


def reference(scenario: Scenario, tmp: Path, setup_at: int) -> list[str]:
    """The statements an unkilled, traced run of the scenario's process runs on the store (it must end well)."""
    r = Round(tmp / f"reference-{scenario.name}")
    r.base.mkdir()
    trace = r.base / "trace"
    scenario.setup(r, setup_at)
    code = scenario.killed(r, 0, trace, None)
    assert code in scenario.ends and not r.problems, f"{scenario.name}: exited {code} {r.problems}: {_tail(r.out)}"
    statements = trace.read_text().splitlines()
    assert statements, f"{scenario.name}: no statement traced on the store: is tests.store_die loaded?"
    if scenario.setup is _nothing and scenario.name not in ("pause", "cancel"):
        # A new state dir: the plugin saw the store from its first statement on (the new database's creation).
        assert statements[:2] == ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL"], statements[:5]
        assert any(s.startswith("CREATE TABLE IF NOT EXISTS meta") for s in statements[:5]), statements[:5]
    return statements


@pytest.mark.slow
@pytest.mark.timeout(0 if SOAK else 240)
def test_sigkill_at_each_statement_on_the_store_then_resume_completes(
    tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rnd = random.Random(SEED)
    replay = [(p.split(":")[0], int(p.split(":")[1])) for p in POINTS.split(",") if p]
    names = (
        sorted({n for n, _ in replay})
        if replay
        else list(SCENARIOS)
        if SOAK
        else sorted({"run", rnd.choice(sorted(SCENARIOS))})
    )
    started = time.monotonic()
    run_ref = reference(SCENARIOS["run"], tmp_path, 0)
    setup_at = len(run_ref) // 2  # the resume scenario's run: killed halfway through its statements
    refs = {name: (run_ref if name == "run" else reference(SCENARIOS[name], tmp_path, setup_at)) for name in names}
    traced = {name: len(statements) for name, statements in refs.items()}
    points = replay or [(name, at) for name in names for at in range(1, len(refs[name]) + 2)]
    if not (SOAK or replay):
        rnd.shuffle(points)

    tried: list[tuple[str, int, str]] = []
    failed: list[str] = []
    totals = Figures("statements")
    adding = threading.Lock()

    def go(k: int, point: tuple[str, int]) -> None:
        name, at = point
        r, figures, hit = one_point(SCENARIOS[name], at, tmp_path / f"{name}-{at:04d}-{k}", setup_at)
        with adding:  # two at a time in a soak
            tried.append((name, at, hit))
            for f in ("kills", "lost", "repeated", "redone_after_checkpoint", "wrong"):
                setattr(totals, f, getattr(totals, f) + getattr(figures, f))
            totals.max_repeated_per_kill = max(totals.max_repeated_per_kill, figures.max_repeated_per_kill)
        if r.problems:
            failed.append(
                f"{name}:{at} (killed at: {hit or 'nothing, it ended first'}; {r.base}): " + "; ".join(r.problems)
            )
            if SOAK:
                with capsys.disabled():
                    print(f"\nFAILED {failed[-1]}", flush=True)
        else:
            shutil.rmtree(r.base)

    if SOAK:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(go, range(len(points)), points))
    else:
        for k, point in enumerate(points):
            if k >= 3 and time.monotonic() - started > BUDGET:
                break
            go(k, point)
    line = (
        f"fault-kill-statements: seed={SEED} traced={traced} points={len(tried)}"
        f" (killed {sum(1 for *_, hit in tried if hit)}) kills={totals.kills} items_lost={totals.lost}"
        f" items_repeated={totals.repeated} (at most {totals.max_repeated_per_kill} per kill)"
        f" redone_after_checkpoint={totals.redone_after_checkpoint} wrong={totals.wrong}"
        f" wall={time.monotonic() - started:.0f}s"
    )
    if SOAK:
        with capsys.disabled():
            print(f"\n{line}", flush=True)
    else:
        print(line)  # shown with -s
    replay_with = ",".join(f"{n}:{a}" for n, a, _ in tried)
    assert not failed, (
        f"{line}\nreplay with OUTLAST_FAULT_SEED={SEED} (or OUTLAST_KILL_POINTS={replay_with})\n"
        + "\n".join(failed[:10])
    )
