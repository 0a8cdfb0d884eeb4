"""Fault suite (a): SIGKILL the real ``outlast`` at random points, ``outlast resume`` until done, and compare with an
uninterrupted run.

Three kinds of work, each run through the console script as a subprocess with ``--state-dir``:

- ``ledger`` (tests/ops_for_tests.py): counted items; every execution of an item body is appended to a side-effect
  file, so lost and repeated items are counted exactly. No item is lost; an item in the newest checkpoint when a
  kill landed is never run again; and a kill repeats at most one checkpoint interval (``explicit_every`` items).
- ``backup_operation``: the copy (modes, times, links, checksums) and its manifest equal an uninterrupted copy's.
- ``codebase_indexing``: every table of the index equals an uninterrupted index's.

Each round aims 1 to 3 kills, each at a random moment of an uninterrupted run's length (a third anywhere from the
interpreter's start-up on, the rest while the operation runs), then runs to the end. The seed is random unless
OUTLAST_FAULT_SEED is set, and is attached to the failure so a failing sequence can be replayed; the kill moments
are times, so a replay hits about, not exactly, the same points. By default a few rounds (seconds); OUTLAST_SOAK=1
runs OUTLAST_SOAK_ROUNDS rounds of each kind (default 100) and prints the figures (with -s).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine import Operation, Status, open_store
from tests import zygote
from tests.fixtures_cli import outlast_into
from tests.test_op_backup import make_tree as make_backup_tree
from tests.test_op_backup import partials, snapshot

SOAK = os.environ.get("OUTLAST_SOAK") == "1"
SEED = int(os.environ.get("OUTLAST_FAULT_SEED") or random.SystemRandom().randrange(2**32))
ROUNDS = (
    dict.fromkeys(("ledger", "backup", "indexing"), int(os.environ.get("OUTLAST_SOAK_ROUNDS", "100")))
    if SOAK
    else {"ledger": 2, "backup": 1, "indexing": 1}
)
MAX_KILLS = 3
STEPS = 20
"""Processes per round at most (kills included): more means resuming does not converge."""
LEDGER_ITEMS = 300
EVERY = 25
"""The ledger's explicit checkpoint interval in items: the most one kill may repeat."""
PLUGIN = ["--plugin", "tests.ops_for_tests"]


@dataclass
class Figures:
    """What the loop saw; every count but ``rounds``, ``kills`` and ``repeated`` must end at zero."""

    kind: str
    rounds: int = 0
    kills: int = 0
    kills_mid_run: int = 0
    """Kills that found the operation running (claimed), not still starting up or already finished."""
    lost: int = 0
    repeated: int = 0
    max_repeated_per_kill: int = 0
    redone_after_checkpoint: int = 0
    wrong: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"fault-kill {self.kind}: seed={SEED} rounds={self.rounds} kills={self.kills} "
            f"(mid-run {self.kills_mid_run}) items_lost={self.lost} "
            f"items_repeated={self.repeated} (at most {self.max_repeated_per_kill} per kill) "
            f"redone_after_checkpoint={self.redone_after_checkpoint} wrong_results={self.wrong}"
        )


# ---- processes and the store -----------------------------------------------------------------------------------


def outlast(state: Path, args: list[str], out: Path, kill_after: float | None, env: dict[str, str]) -> int | None:
    """``outlast --state-dir STATE ARGS``; SIGKILLed after ``kill_after`` seconds if still running (None: killed)."""
    return outlast_into(out, ["--state-dir", str(state), *PLUGIN], args, env, kill_after=kill_after)


def stored(state: Path) -> tuple[Operation | None, set[str]]:
    """The one operation in the store (or None) and the done items of its newest valid checkpoint."""

    async def go() -> tuple[Operation | None, set[str]]:
        store = open_store(state)
        await store.open()
        try:
            ops = await store.list_operations()
            if not ops:
                return None, set()
            got = await store.load_checkpoint(ops[0].id)
            return ops[0], (set(got[1].done) if got else set())
        finally:
            await store.close()

    db = state / "outlast.db"
    if not db.exists():
        return None, set()
    # Read-only first: opening through the store would create the schema in a database a kill left empty, and so
    # hide from the next `outlast` what the kill left.
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    if "operations" not in tables:
        return None, set()
    return asyncio.run(go())


@dataclass
class Kind:
    """One kind of work: how to start it, how long an uninterrupted run takes, and how to judge the outcome."""

    name: str
    run_args: Callable[[Path], list[str]]
    """``outlast run ...`` arguments for a round whose private directory is the argument."""
    reference: dict[str, Any]
    """What the uninterrupted run produced (compared by ``check``)."""
    startup: float
    """Seconds from the uninterrupted run's process start to its operation's start (interpreter, store, claim)."""
    work: float
    """Seconds its operation ran."""
    check: Callable[[Path, dict[str, Any], dict[str, Any], Figures], list[str]]
    """(round dir, final record, reference, figures) -> problems; updates the figures."""


def one_round(kind: Kind, rnd: random.Random, base: Path, env: dict[str, str], figures: Figures) -> list[str]:
    """Run, kill, resume until completed; the problems found."""
    state, out = base / "state", base / "outlast.out"
    kills_left = rnd.randint(1, MAX_KILLS)
    kills: list[dict[str, Any]] = []
    for _ in range(STEPS):
        op, _done = stored(state)
        if op is not None and op.status is Status.COMPLETED:
            break
        if op is None:  # killed before the submit was stored: run it again
            args = kind.run_args(base)
        elif op.status is Status.QUEUED:  # killed between the submit and the claim: a worker runs it
            args = ["worker", "--exit-when-idle", "--concurrency", "1"]
        else:  # running (an orphan the next engine finds) or stopped: resume it
            args = ["resume", op.id]
        kill_after = None
        if kills_left:  # a third anywhere (start-up included), the rest while the work runs
            whole = kind.startup + kind.work
            kill_after = rnd.uniform(0, whole) if rnd.random() < 1 / 3 else kind.startup + rnd.uniform(0, kind.work)
        log_before = _lines(base / "items.log")
        code = outlast(state, args, out, kill_after, env)
        if code is None:
            kills_left -= 1
            figures.kills += 1
            op, done = stored(state)
            figures.kills_mid_run += op is not None and op.status is Status.RUNNING
            kills.append({"from": log_before, "at": _lines(base / "items.log"), "done": done})
        elif code != 0:
            return [f"`outlast {' '.join(args)}` exited {code} unkilled: {_tail(out)}"]
    else:
        return [f"not completed after {STEPS} processes: {_tail(out)}"]
    op, _done = stored(state)
    assert op is not None
    record = op.model_dump(mode="json")
    record["kills"] = kills
    return kind.check(base, record, kind.reference, figures)


def _lines(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def _tail(path: Path, n: int = 6) -> str:
    return " | ".join(path.read_text().splitlines()[-n:]) if path.exists() else "(no output)"


# ---- the three kinds -------------------------------------------------------------------------------------------


def ledger_args(base: Path) -> list[str]:
    params = {"items": LEDGER_ITEMS, "seconds": 0.003, "log_file": str(base / "items.log"), "explicit_every": EVERY}
    return ["run", "ledger", "--params-json", json.dumps(params), "--profile", "checkpoint_interval=0.15"]


def ledger_check(base: Path, final: dict[str, Any], ref: dict[str, Any], figures: Figures) -> list[str]:
    problems = []
    items = (base / "items.log").read_text().split()
    counts = Counter(items)
    # Lost: never run, or run last by a killed attempt that had not checkpointed it (its effect died with it).
    last = {item: pos for pos, item in enumerate(items)}
    lost = sorted(
        {i for i in range(LEDGER_ITEMS) if str(i) not in counts}
        | {
            int(item)
            for kill in final["kills"]
            for item in items[kill["from"] : kill["at"]]
            if last[item] < kill["at"] and item not in kill["done"]
        }
    )
    figures.lost += len(lost)
    figures.repeated += sum(c - 1 for c in counts.values())
    if lost:
        problems.append(f"{len(lost)} items lost: {lost[:10]}")
    if final["result"] != ref["result"]:
        figures.wrong += 1
        problems.append(f"result {final['result']} != uninterrupted {ref['result']}")
    for k, kill in enumerate(final["kills"]):
        redone = set(items[kill["at"] :]) & kill["done"]
        figures.redone_after_checkpoint += len(redone)
        if redone:
            problems.append(
                f"kill {k + 1}: {len(redone)} items of its newest checkpoint run again: {sorted(redone)[:10]}"
            )
        uncovered = set(items[kill["from"] : kill["at"]]) - kill["done"]
        figures.max_repeated_per_kill = max(figures.max_repeated_per_kill, len(uncovered))
        if len(uncovered) > EVERY:
            problems.append(f"kill {k + 1}: {len(uncovered)} items run but not checkpointed (interval: {EVERY})")
    return problems


def backup_args(base: Path, src: Path) -> list[str]:
    params = {"source": str(src), "destination": str(base / "copy"), "chunk_checkpoint": 4 << 20}
    return ["run", "backup_operation", "--params-json", json.dumps(params), "--profile", "checkpoint_interval=0.2"]


def backup_check(base: Path, final: dict[str, Any], ref: dict[str, Any], figures: Figures) -> list[str]:
    dst = base / "copy"
    got, want = snapshot(dst), ref["snapshot"]
    problems = []
    missing = set(want) - set(got)
    figures.lost += len(missing)
    if got != want:
        differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        problems.append(f"copy differs from the uninterrupted copy at {differ[:10]}")
    if json.loads((dst / ".outlast-manifest.json").read_text()) != ref["manifest"]:
        problems.append("manifest differs from the uninterrupted run's")
    if partials(dst):
        problems.append(f"partial files left: {partials(dst)[:5]}")
    if {k: v for k, v in final["result"].items() if k != "manifest"} != ref["result"]:
        problems.append(f"result {final['result']} != uninterrupted {ref['result']}")
    figures.wrong += bool(problems)
    return problems


def index_args(base: Path, root: Path) -> list[str]:
    params = {"root": str(root), "output": str(base / "index.db")}
    return ["run", "codebase_indexing", "--params-json", json.dumps(params), "--profile", "checkpoint_interval=0.1"]


def index_tables(db: Path) -> dict[str, list[tuple]]:
    """Every table's rows, sorted; ``files.seen`` (the id of the operation that last saw a file) and
    ``outlast_run`` (a token of the run that wrote the database, the operation's own) left out."""
    con = sqlite3.connect(db)
    try:
        tables = [
            t
            for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
            if t != "outlast_run"
        ]
        out = {}
        for t in tables:
            cols = [c[1] for c in con.execute(f"PRAGMA table_info({t})") if not (t == "files" and c[1] == "seen")]
            out[t] = sorted(con.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall(), key=repr)
        return out
    finally:
        con.close()


def index_check(base: Path, final: dict[str, Any], ref: dict[str, Any], figures: Figures) -> list[str]:
    got, want = index_tables(base / "index.db"), ref["tables"]
    problems = []
    have = {r[0] for r in got.get("files", [])}
    figures.lost += len({r[0] for r in want["files"]} - have)
    for t in sorted(set(got) | set(want)):
        if got.get(t) != want.get(t):
            problems.append(f"index table {t} differs from the uninterrupted index's")
    if {k: v for k, v in final["result"].items() if k != "index"} != ref["result"]:
        problems.append(f"result {final['result']} != uninterrupted {ref['result']}")
    figures.wrong += bool(problems)
    return problems


def make_index_tree(root: Path) -> None:
    """701 files (the items a kill lands between) of 20 functions each: 60 doubled the run's CPU, not its items;
    checkpoints every 0.1 s keep about as many in the shorter run as 0.2 s did."""
    body = "".join(f"def f{i}(x):\n    # note {i}\n    return x + {i}\n\n" for i in range(20))
    for i in range(700):
        d = root / f"pkg{i // 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i:04d}.py").write_text(f"import os\n{body}class C{i}:\n    pass\n")
    (root / "pkg03" / "latin.txt").write_bytes(b"caf\xe9\n")  # not UTF-8: read as Latin-1, the same every time


def reference(name: str, base: Path, env: dict[str, str], args: list[str]) -> tuple[dict[str, Any], float, float]:
    """An uninterrupted run in ``base``: its final record, its start-up and its work in seconds. The tests' zygote
    is started first, as it is for the rounds' runs: started in the timed run (the test process's first command),
    it made the start-up measured ten times the rounds' one, and most kill moments fell after their run's end."""
    zygote.Zygote.get()
    t0 = time.time()
    code = outlast(base / "state", args, base / "outlast.out", None, env)
    op, _ = stored(base / "state")
    assert code == 0 and op is not None and op.status is Status.COMPLETED, f"{name}: {_tail(base / 'outlast.out')}"
    assert op.started_at is not None and op.finished_at is not None
    return op.model_dump(mode="json"), max(0.0, op.started_at - t0), op.finished_at - op.started_at


def make_kind(name: str, tmp: Path, env: dict[str, str]) -> Kind:
    ref_dir = tmp / "reference"
    ref_dir.mkdir()
    if name == "ledger":
        final, startup, work = reference(name, ref_dir, env, ledger_args(ref_dir))
        assert final["result"] == {"sum": sum(range(LEDGER_ITEMS))}
        return Kind(name, ledger_args, {"result": final["result"]}, startup, work, ledger_check)
    if name == "backup":
        src = tmp / "src"
        make_backup_tree(src, big_mb=40)
        final, startup, work = reference(name, ref_dir, env, backup_args(ref_dir, src))
        assert snapshot(ref_dir / "copy") == snapshot(src)
        ref = {
            "snapshot": snapshot(ref_dir / "copy"),
            "manifest": json.loads((ref_dir / "copy" / ".outlast-manifest.json").read_text()),
            "result": {k: v for k, v in final["result"].items() if k != "manifest"},
        }
        return Kind(name, lambda b: backup_args(b, src), ref, startup, work, backup_check)
    root = tmp / "tree"
    make_index_tree(root)
    final, startup, work = reference(name, ref_dir, env, index_args(ref_dir, root))
    ref = {
        "tables": index_tables(ref_dir / "index.db"),
        "result": {k: v for k, v in final["result"].items() if k != "index"},
    }
    assert ref["result"]["files"] == 701 and ref["result"]["failures"] == 0
    return Kind(name, lambda b: index_args(b, root), ref, startup, work, index_check)


@pytest.mark.slow
@pytest.mark.timeout(0 if SOAK else 240)
@pytest.mark.parametrize("name", list(ROUNDS))
def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(
    name: str, tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rnd = random.Random(f"{SEED}-{name}")
    env = {k: v for k, v in os.environ.items() if k != "OUTLAST_DEBUG"}
    kind = make_kind(name, tmp_path, env)
    figures = Figures(name)
    failed: list[str] = []
    for r in range(ROUNDS[name]):
        base = tmp_path / f"round{r:04d}"
        base.mkdir()
        try:
            problems = one_round(kind, rnd, base, env, figures)
        except Exception as exc:  # a hang, an unreadable store: this round's problem, not the end of the loop
            problems = [f"{type(exc).__name__}: {exc}"]
        figures.rounds += 1
        if problems:
            failed.append(f"round {r} ({base}): " + "; ".join(problems))
            if SOAK:
                with capsys.disabled():
                    print(f"\nFAILED {failed[-1]}", flush=True)
        else:
            shutil.rmtree(base)  # a soak of hundreds of rounds keeps only what failed
        if SOAK and (r + 1) % 10 == 0:
            with capsys.disabled():
                print(f"\n{figures.line()} (so far)", flush=True)
    if SOAK:
        with capsys.disabled():
            print(f"\n{figures.line()}", flush=True)
    assert not failed, f"{figures.line()}\nreplay with OUTLAST_FAULT_SEED={SEED}\n" + "\n".join(failed[:10])


def _schema(tmp: Path, env: dict[str, str]) -> list[tuple[str, str]]:
    """(name, SQL) of every table and index of a store the real CLI created, in creation order."""
    state = tmp / "whole"
    # A command that writes: a read (`ls`) of a state dir that is not there makes none.
    assert outlast(state, ["submit", "demo"], tmp / "whole.out", None, env) == 0, _tail(tmp / "whole.out")
    con = sqlite3.connect(state / "outlast.db")
    try:
        return con.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("killed_after", ["meta", "operations", "deltas"])
def test_a_kill_while_the_store_is_created_leaves_a_usable_store(
    killed_after: str, tmp_path: Path, state_dir: Path
) -> None:
    """A store whose creation was cut off by a kill: the schema up to some statement, as versions that created it
    one autocommitted statement at a time could leave it (found by the kill loop above). Today's store is made
    beside the path and linked in whole, in one transaction; one like this is completed when opened. The next
    ``outlast run`` must work."""
    env = {k: v for k, v in os.environ.items() if k != "OUTLAST_DEBUG"}
    schema = _schema(tmp_path, env)
    names = [name for name, _ in schema]
    state = tmp_path / "state-killed"
    state.mkdir(mode=0o700)
    con = sqlite3.connect(state / "outlast.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    for _name, sql in schema[: names.index(killed_after) + 1]:
        con.execute(sql)
    con.close()
    log = tmp_path / "items.log"
    params = {"items": 20, "log_file": str(log), "explicit_every": 5}
    code = outlast(state, ["run", "ledger", "--params-json", json.dumps(params)], tmp_path / "run.out", None, env)
    assert code == 0, _tail(tmp_path / "run.out")
    assert sorted(map(int, log.read_text().split())) == list(range(20))
