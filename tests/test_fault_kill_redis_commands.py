"""Fault suite (a) on the Redis store, exactly: SIGKILL the real ``outlast`` as its N-th request to Redis starts, or
right after it returns (Redis applied it, the process never learnt it), for kill points N of an uninterrupted run,
then drive the operation to its end and check what was lost, what ran twice, and what the store holds.

The kill is exact (the tests.redis_die plugin counts redis-py's requests: commands, pipelines, script calls): a kill
at a random moment (test_fault_kill, test_fault_redis_zombie) rarely lands between two requests that run within a
millisecond of each other, and the local store's kill test at every statement found at once a bug random kills had
missed for weeks.

Seven scenarios, on a real redis-server (fixtures_redis; OUTLAST_REQUIRE_REDIS=1 makes its absence a failure):

- ``run``: ``outlast --store redis://... run ledger`` killed at N, then ``resume`` (``run`` again when the submit was
  never stored) until completed;
- ``worker``: ``outlast submit ledger`` then ``outlast worker --exit-when-idle`` (claims, lease renewals, settle),
  either killed at N, then driven on by workers alone (``submit`` again when the submit was never stored), as a
  fleet of workers would;
- ``run-resume`` and ``worker-recover``: the same killed mid-run (after its third checkpoint), then the ``resume``
  (or the worker) that recovers the orphan killed at N: marking it interrupted, queueing it again, resuming;
- ``worker-retry``: the ledger's first attempt fails transiently (a retry after a backoff), the worker killed at N;
- ``submit-again``: ``outlast submit --idempotency-key`` killed at N, then submitted again with the same key (as
  anyone not knowing whether the first landed would), then workers: still one operation, run once;
- ``worker-mirror``: ``worker`` with a checkpoint mirror (records and checkpoints also written to files, after Redis
  took them), the worker killed at N.

What must hold after each: the ledger lost no item; a kill repeated at most one checkpoint interval (``EVERY`` items)
and nothing of the checkpoint it left; the record is completed with the uninterrupted result; the indexes agree
with the record (only in ``st:completed``, in no queue, no lease left, its handle naming it) and ``outlast ls`` lists
it completed.

By default a seeded sample: two scenarios (``sampled``; the others are skipped), their pinned points
(``pinned``) and random ones among a process's first GUESS requests, for about SAMPLE_SECONDS of wall time per
scenario, without a reference run (the seed is random unless OUTLAST_FAULT_SEED is set, and is printed with a
failure). OUTLAST_SOAK=1 counts the requests of an uninterrupted run of each scenario, tries every point (each
request, before and after) and prints the figures (with -s); OUTLAST_FAULT_POINTS replays the points a failure names.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine import Operation, Status, open_store
from engine.store.redis import lua
from engine.store.redis.keys import Keys
from tests import zygote
from tests.fixtures_cli import REPO, outlast_into
from tests.fixtures_redis import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SOAK = os.environ.get("OUTLAST_SOAK") == "1"
SEED = int(os.environ.get("OUTLAST_FAULT_SEED") or random.SystemRandom().randrange(2**32))
ONLY = [p for p in os.environ.get("OUTLAST_FAULT_POINTS", "").split(",") if p]
"""``role:when:n[:name],...``: only these points (a failure's replay), e.g. ``recover:after:10`` or
``recover:after:1:EVALSHA:WRITE``."""
GUESS = 40
"""The sample's points are among the first GUESS requests of a process (a run makes 40 to 50)."""
SAMPLE_SECONDS = 15 / 3
"""Wall time of each scenario's sampled kill points by default (two scenarios of the seven, ``sampled``:
about 10 s); the pinned points and the first sampled one are always tried."""
LEASE_TTL = 1.0
LEDGER_ITEMS = 120
EVERY = 10
"""The ledger's explicit checkpoint interval in items: the most one kill may repeat."""
FAIL_AT = 64
"""In the retry scenario, the item after which the first attempt to get there fails transiently."""
STEPS = 8
"""Processes after the kill at most: more means driving the operation on does not converge."""
PLUGINS = ["--plugin", "tests.ops_for_tests", "--plugin", "tests.redis_die"]


@dataclass
class Figures:
    scenario: str
    points: int = 0
    killed: int = 0
    not_reached: int = 0
    """Points past the requests this run made (a run's requests vary a little with timing: lease renewals)."""
    repeated: int = 0
    max_repeated_per_kill: int = 0
    traced: Counter[str] = field(default_factory=Counter)
    """The requests of the uninterrupted reference runs, by kind and name."""
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"redis-kill {self.scenario}: seed={SEED} points={self.points} killed={self.killed}"
            f" not_reached={self.not_reached} items_repeated={self.repeated} (at most"
            f" {self.max_repeated_per_kill} per kill) failures={len(self.failures)}"
        )


class Case:
    """One scenario on one redis-server: each kill point in its own namespace."""

    def __init__(self, server: RedisServer, tmp: Path) -> None:
        self.server, self.tmp = server, tmp
        self.url = f"{server.url}?lease_ttl={LEASE_TTL:g}"
        self.redis = server.client()
        self.env = {k: v for k, v in os.environ.items() if k != "OUTLAST_DEBUG" and not k.startswith("OUTLAST_TEST_")}
        # Every script in Redis's cache, as after any earlier run: a run's requests are then the same from the
        # first one on (a script Redis lacks costs its first call a NOSCRIPT and a second request).
        for name in dir(lua):
            if name.isupper() and isinstance(getattr(lua, name), str):
                self.redis.script_load(getattr(lua, name))

    def outlast(self, ns: str, base: Path, args: list[str], kill: dict[str, str] | None = None) -> int:
        """``outlast --store URL ARGS`` in namespace ``ns`` (its output appended to ``base/outlast.out``)."""
        env = {**self.env, "OUTLAST_NAMESPACE": ns, "OUTLAST_TEST_REDIS_DIE_TRACE": str(base / "requests.trace")}
        env.update(kill or {})
        with open(base / "requests.trace", "a") as tr:
            tr.write(f"$ outlast {' '.join(args[:2])}\n")
        note = f"  {json.dumps(kill)}" if kill else ""
        return outlast_into(base / "outlast.out", ["--store", self.url, *PLUGINS], args, env, note=note)

    def stored(self, ns: str) -> tuple[Operation | None, set[str]]:
        """The one operation of the namespace (None before its submit was stored) and its newest checkpoint's
        done items. Read through a store only once a record exists (opening marks an empty namespace)."""
        ids = self.redis.zrange(Keys(ns).all, 0, -1)
        if not ids:
            return None, set()
        assert len(ids) == 1, ids
        op_id = ids[0].decode()

        async def go() -> tuple[Operation, set[str]]:
            async with open_store(self.url, namespace=ns, checkpoint_mirror=None) as store:  # type: ignore[attr-defined]
                op = await store.get(op_id)
                got = await store.load_checkpoint(op_id)
                return op, (set(got[1].done) if got else set())

        return asyncio.run(go())

    def lease_held(self, ns: str, op_id: str) -> bool:
        return bool(self.redis.exists(Keys(ns).lease(op_id)))


def ledger_params(base: Path, retry: bool = False) -> list[str]:
    """The ledger's arguments; ``retry``: its first attempt to reach item FAIL_AT fails transiently (a retry)."""
    params: dict[str, Any] = {"items": LEDGER_ITEMS, "seconds": 0.003, "log_file": str(base / "items.log")}
    params["explicit_every"] = EVERY
    profile = ["--profile", "checkpoint_interval=0.15"]
    if retry:
        params.update(fail_at=FAIL_AT, flaky_file=str(base / "flaky"))
        profile += ["--profile", "retry=" + json.dumps({"backoff_base": 0.3, "jitter": 0, "max_attempts": 10})]
    return ["ledger", "--params-json", json.dumps(params), *profile]


WHEN = ("before", "after")
WORKER = ["worker", "--exit-when-idle", "--concurrency", "1"]


Stage = tuple[str, Callable[[Operation | None], list[str]]]
"""(role, the process's args from the stored operation) of one process of a scenario."""


def stages(scenario: str, base: Path) -> list[Stage]:
    """The processes an uninterrupted run of the scenario is. In the recovery scenarios, the last but one is
    killed at a fixed point mid-run (the prelude) and the last one recovers the orphan it left."""
    ledger = ledger_params(base, retry=scenario == "worker-retry")
    out: list[Stage]
    if scenario == "submit-again":
        ledger = [*ledger, "--idempotency-key", "the-ledger"]
    if scenario.startswith("run"):
        out = [("run", lambda op: ["run", *ledger])]
    else:
        out = [("submit", lambda op: ["submit", *ledger]), ("worker", lambda op: WORKER)]
    if scenario == "run-resume":
        out.append(("resume", lambda op: ["resume", _id(op)]))
    elif scenario == "worker-recover":
        out.append(("recover", lambda op: WORKER))
    return out


def _id(op: Operation | None) -> str:
    assert op is not None, "no operation stored"
    return op.id


def next_args(scenario: str, op: Operation | None, base: Path) -> list[list[str]]:
    """The processes that drive the operation on from what is stored."""
    if op is None:  # killed before its submit was stored: submitted again
        return [args(None) for _role, args in stages(scenario, base)[:2]]
    if scenario.startswith("run"):
        return [["resume", op.id]]  # a queued one is run as it is; an orphan is found and resumed
    # Workers alone, as a fleet has: a worker's engine finds an orphan (running, its lease expired) and queues it
    # again, and one found and left interrupted by an engine killed before it queued it again.
    return [WORKER]


def _lines(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def _tail(path: Path, n: int = 8) -> str:
    return " | ".join(path.read_text().splitlines()[-n:]) if path.exists() else "(no output)"


def killed_at(base: Path) -> str:
    """The request the kill landed on, from the killed process's trace."""
    lines = (base / "requests.trace").read_text().splitlines()
    for k in range(len(lines) - 1, -1, -1):
        if lines[k].startswith("killed "):
            n = lines[k].split()[2]
            named = next((ln for ln in reversed(lines[:k]) if ln.split()[0] == n), "?")
            return f"{lines[k].split()[1]} {named}"
    return "?"


Point = tuple[str, str, int, str]
"""(role, before or after, N, name) of a kill: as the N-th request of the process of that role (of that name, if
one is given: ``EVALSHA:WRITE``) starts or returns."""


def kill_env(point: Point) -> dict[str, str]:
    _role, when, at, name = point
    return {
        "OUTLAST_TEST_REDIS_DIE_AT": str(at),
        "OUTLAST_TEST_REDIS_DIE_WHEN": when,
        "OUTLAST_TEST_REDIS_DIE_NAME": name,
    }


def prelude_of(scenario: str) -> Point | None:
    """In a recovery scenario, where the process before the recovering one is killed: after its third checkpoint."""
    if scenario == "run-resume":
        return ("run", "after", 3, "EVALSHA:SAVE_CHECKPOINT")
    if scenario == "worker-recover":
        return ("worker", "after", 3, "EVALSHA:SAVE_CHECKPOINT")
    return None


def point_roles(scenario: str) -> list[str]:
    """The processes killed at every point (the others' are the run and worker scenarios')."""
    named = {"run": ["run"], "worker": ["submit", "worker"], "worker-mirror": ["worker"], "submit-again": ["submit"]}
    return named.get(scenario) or [stages(scenario, Path())[-1][0]]


def pinned(scenario: str) -> list[Point]:
    """Points always tried: in a recovery scenario, right after the recovering process marked the orphan
    interrupted (its first WRITE), before it queued it again."""
    if prelude_of(scenario) is None:
        return []
    return [(point_roles(scenario)[0], "after", 1, "EVALSHA:WRITE")]


def one_point(case: Case, scenario: str, point: Point, base: Path, figures: Figures) -> list[str]:
    """Kill the process of role ``point[0]`` at ``point`` (in a recovery scenario, the one before it at its prelude
    first), then drive the operation to its end; the problems found."""
    prelude = prelude_of(scenario)
    ns = base.name
    kills: list[dict[str, Any]] = []
    for role, args_of in stages(scenario, base):
        kill = point if role == point[0] else prelude if prelude is not None and role == prelude[0] else None
        op, _done = case.stored(ns)
        wait_for_lease(case, ns, op)
        args = args_of(op)
        log_before = _lines(base / "items.log")
        code = case.outlast(ns, base, args, kill_env(kill) if kill else None)
        if code == -9:
            op, done = case.stored(ns)
            kills.append({"from": log_before, "at": _lines(base / "items.log"), "done": done, "what": killed_at(base)})
            if role == point[0]:
                break
            continue
        if code != 0:
            return [f"`outlast {' '.join(args[:2])}` exited {code} unkilled: {_tail(base / 'outlast.out')}"]
        if prelude is not None and role == prelude[0]:  # the prelude did not land: nothing to recover
            figures.not_reached += 1
            return []
    if len(kills) < (2 if prelude else 1):
        figures.not_reached += 1
    else:
        figures.killed += 1
    where = kills[-1]["what"] if kills else f"(not reached: {' '.join(map(str, point)).strip()})"
    if scenario == "submit-again":  # not knowing whether its submit landed, the user submits again (same key)
        args = stages(scenario, base)[0][1](None)
        code = case.outlast(ns, base, args)
        if code != 0:
            return [f"killed {where}: the submit again exited {code}: {_tail(base / 'outlast.out')}"]
    for _ in range(STEPS):
        op, _done = case.stored(ns)
        if op is not None and op.status is Status.COMPLETED:
            break
        wait_for_lease(case, ns, op)
        for args in next_args(scenario, op, base):
            code = case.outlast(ns, base, args)
            if code != 0:
                return [f"killed {where}: `outlast {' '.join(args[:2])}` exited {code}: {_tail(base / 'outlast.out')}"]
    else:
        return [f"killed {where}: not completed after {STEPS} steps: {_tail(base / 'outlast.out')}"]
    problems = [f"killed {where}: {p}" for p in check(case, ns, base, kills, figures)]
    return problems


def wait_for_lease(case: Case, ns: str, op: Operation | None) -> None:
    """Until the lease of a running operation expired (its process is dead): the next engine finds it orphaned."""
    if op is not None and op.status is Status.RUNNING:
        end = time.monotonic() + LEASE_TTL * 3 + 2
        while case.lease_held(ns, op.id) and time.monotonic() < end:
            time.sleep(0.05)


def check(case: Case, ns: str, base: Path, kills: list[dict[str, Any]], figures: Figures) -> list[str]:
    problems: list[str] = []
    op, _done = case.stored(ns)
    assert op is not None
    if op.status is not Status.COMPLETED or op.result != {"sum": sum(range(LEDGER_ITEMS))}:
        problems.append(f"final record {op.status.value}, result {op.result}")
    items = (base / "items.log").read_text().split()
    counts = Counter(items)
    last = {item: pos for pos, item in enumerate(items)}
    lost = sorted(
        {i for i in range(LEDGER_ITEMS) if str(i) not in counts}
        | {
            int(item)
            for kill in kills
            for item in items[kill["from"] : kill["at"]]
            if last[item] < kill["at"] and item not in kill["done"]
        }
    )
    if lost:
        problems.append(f"{len(lost)} items lost: {lost[:10]}")
    figures.repeated += sum(c - 1 for c in counts.values())
    for kill in kills:
        redone = set(items[kill["at"] :]) & kill["done"]
        if redone:
            problems.append(f"{len(redone)} items of the newest checkpoint run again: {sorted(redone)[:10]}")
        uncovered = set(items[kill["from"] : kill["at"]]) - kill["done"]
        figures.max_repeated_per_kill = max(figures.max_repeated_per_kill, len(uncovered))
        if len(uncovered) > EVERY:
            problems.append(f"{len(uncovered)} items run but not checkpointed (interval: {EVERY})")
    if sum(c - 1 for c in counts.values()) > EVERY * (len(kills) + op.retries):
        repeated = sum(c - 1 for c in counts.values())
        problems.append(f"{repeated} items repeated for {len(kills)} kill(s) and {op.retries} retries")
    problems += indexes(case, ns, op)
    out = base / "ls.out"
    with open(out, "w") as fh:
        code = zygote.run(
            ["--store", case.url, "ls", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**case.env, "OUTLAST_NAMESPACE": ns},
            timeout=60,
        ).returncode
    listed = json.loads(out.read_text()) if code == 0 else None
    if listed is None or [(o["id"], o["status"]) for o in listed] != [(op.id, "completed")]:
        problems.append(f"`outlast ls` exited {code}, listed {listed and [(o['id'], o['status']) for o in listed]}")
    return problems


def indexes(case: Case, ns: str, op: Operation) -> list[str]:
    """Where the store's keys disagree with the (completed) record."""
    r, k = case.redis, Keys(ns)
    problems = []
    for s in Status:
        members = {m.decode() for m in r.zrange(k.status(s.value), 0, -1)}
        want = {op.id} if s is op.status else set()
        if members != want:
            problems.append(f"st:{s.value} holds {sorted(members)}")
    for rank in range(3):
        for key in (k.queue(rank), k.delayed(rank)):
            if r.zcard(key):
                problems.append(f"{key} holds {r.zrange(key, 0, -1)}")
    if r.exists(k.lease(op.id)):
        problems.append(f"a lease is left: {r.get(k.lease(op.id))!r}")
    for key in (k.all, k.ids):
        if {m.decode() for m in r.zrange(key, 0, -1)} != {op.id}:
            problems.append(f"{key} does not hold exactly the operation")
    handles = {h.decode(): i.decode() for h, i in r.hgetall(k.handles).items()}
    if handles != {str(op.handle): op.id}:
        problems.append(f"handles {handles} (record's handle {op.handle})")
    if r.scard(k.gone):
        problems.append(f"gone holds {r.smembers(k.gone)}")
    return problems


def traced(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def reference(case: Case, scenario: str, figures: Figures) -> dict[str, int]:
    """The requests each process of an uninterrupted run makes (in a recovery scenario, of the recovering one
    after its prelude)."""
    base = case.tmp / "reference"
    base.mkdir()
    counts: dict[str, int] = {}
    prelude = prelude_of(scenario)
    for role, args_of in stages(scenario, base):
        op, _ = case.stored(base.name)
        wait_for_lease(case, base.name, op)
        before = len(traced(base / "requests.trace"))
        kill = prelude if prelude is not None and role == prelude[0] else None
        code = case.outlast(base.name, base, args_of(op), kill_env(kill) if kill else None)
        assert code == (-9 if kill else 0), _tail(base / "outlast.out")
        mine = [ln for ln in traced(base / "requests.trace")[before:] if ln[:1].isdigit()]
        if kill is None:
            counts[role] = len(mine)
            figures.traced.update(" ".join(ln.split()[1:3]) for ln in mine)
    op, _ = case.stored(base.name)
    assert op is not None and op.status is Status.COMPLETED and op.result == {"sum": sum(range(LEDGER_ITEMS))}
    assert not indexes(case, base.name, op), indexes(case, base.name, op)
    return {role: n for role, n in counts.items() if role in point_roles(scenario)}


SCENARIOS = ["run", "worker", "run-resume", "worker-recover", "worker-retry", "submit-again", "worker-mirror"]


def sampled(scenario: str) -> bool:
    """Whether a default run tries the scenario: the one a bug was found in (its pinned point) always, and one
    other, by OUTLAST_FAULT_SEED or else by the hour (the same in every xdist process: each has its own random
    seed, and drawn per process with odds of 1 in 3, up to all seven ran, a minute of the suite's five)."""
    others = [s for s in SCENARIOS if s != "worker-recover"]
    pick = int(os.environ.get("OUTLAST_FAULT_SEED") or time.time() // 3600) % len(others)
    return scenario in ("worker-recover", others[pick])


@pytest.mark.timeout(0 if SOAK else 300)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_kill_at_each_redis_request_is_driven_to_an_uninterrupted_result(
    scenario: str,
    redis_server: RedisServer,
    tmp_path: Path,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not (SOAK or ONLY or sampled(scenario)):
        pytest.skip(f"not in the sample of seed {SEED} (OUTLAST_SOAK=1 tries every scenario)")
    # A store trusts no missing lease until Redis has been up a lease time and a second (live workers renew
    # theirs first): before that, a resume right after a kill was told the operation is running.
    asyncio.run(redis_server.up_for(int(LEASE_TTL) + 2))
    case = Case(redis_server, tmp_path)
    if scenario == "worker-mirror":  # records and checkpoints also written to files, after Redis took them
        case.env["OUTLAST_CHECKPOINT_MIRROR"] = str(tmp_path / "mirror")
    figures = Figures(scenario)
    rnd = random.Random(f"{SEED}-{scenario}")
    counts: dict[str, int] = {}
    if SOAK or ONLY:
        # Every request of each process, killed before it and after it; one past the last (most runs do not get
        # there: a run's renewals vary a little with timing).
        counts = reference(case, scenario, figures)
        points = [(role, when, n, "") for role, total in counts.items() for n in range(1, total + 2) for when in WHEN]
        points = pinned(scenario) + points
        if ONLY:
            points = [p for p in points if ":".join(map(str, p)).rstrip(":") in ONLY]
    else:  # no reference run (its seconds are the sample's): a point past a run's last request is not reached
        roles = point_roles(scenario)
        points = pinned(scenario) + [
            (rnd.choice(roles), rnd.choice(WHEN), rnd.randint(1, GUESS), "") for _ in range(50)
        ]
    start = time.monotonic()
    for k, point in enumerate(points):
        if not (SOAK or ONLY) and k >= max(1, len(pinned(scenario))) and time.monotonic() - start > SAMPLE_SECONDS:
            break
        role, when, at, name = point
        base = tmp_path / f"p{k:04d}-{role}-{when}-{at}{'-' + name.split(':')[-1] if name else ''}"
        base.mkdir()
        try:
            problems = one_point(case, scenario, point, base, figures)
        except Exception as exc:  # an unreadable store, a hang: this point's problem, not the end of the loop
            problems = [f"{type(exc).__name__}: {exc}"]
        figures.points += 1
        if problems:
            figures.failures.append(f"{' '.join(map(str, point)).strip()} ({base}): " + "; ".join(problems))
            if SOAK:
                with capsys.disabled():
                    print(f"\nFAILED {figures.failures[-1]}", flush=True)
        else:
            shutil.rmtree(base)  # a soak of hundreds of points keeps only what failed
    if SOAK:
        with capsys.disabled():
            requests = ", ".join(f"{name} {n}" for name, n in figures.traced.most_common())
            print(f"\n{figures.line()} in {time.monotonic() - start:.0f}s; requests per run {counts}: {requests}")
    replay = f"replay with OUTLAST_FAULT_SEED={SEED}"
    assert not figures.failures, f"{figures.line()}\n{replay}\n" + "\n".join(figures.failures[:10])


def test_a_stop_asked_of_an_orphan_survives_a_kill_of_the_engine_recovering_it(
    redis_server: RedisServer, tmp_path: Path, state_dir: Path
) -> None:
    """A pause asked while the operation's worker was dead: the engine that found the orphan wrote it interrupted
    (which drops the request), then paused. Killed between the two writes, it left the operation interrupted, and
    the next worker resumed it and ran it to the end, the pause gone (helper's soak of this file). It is one
    write now: whoever recovers it finds it paused, or still running with its request. (A cancel takes the same
    write.)"""
    ask, settled = "pause", Status.PAUSED
    lease = 3.0  # the pause lands while the killed run's lease holds (a loaded machine starts it in seconds)
    case = Case(redis_server, tmp_path)
    case.url = f"{redis_server.url}?lease_ttl={lease:g}"
    ns, base = "stop-asked", tmp_path
    code = case.outlast(
        ns, base, ["run", *ledger_params(base)], kill_env(("run", "after", 3, "EVALSHA:SAVE_CHECKPOINT"))
    )
    assert code == -9, _tail(base / "outlast.out")
    op, _done = case.stored(ns)
    assert op is not None and op.status is Status.RUNNING, op
    # Its request, on the record; --no-wait: nobody is left to stop it, and the wait would be the default 10 s.
    assert case.outlast(ns, base, [ask, "--no-wait", op.id]) == 0, _tail(base / "outlast.out")
    assert case.stored(ns)[0] == op, "the run's lease ran out before the request was stored"
    end = time.monotonic() + lease * 3
    while case.lease_held(ns, op.id) and time.monotonic() < end:
        time.sleep(0.05)
    asyncio.run(redis_server.up_for(int(lease) + 2))  # here, not first: the run and its lease took that long
    code = case.outlast(ns, base, ["ls"], kill_env(("recover", "after", 1, "EVALSHA:WRITE")))
    assert code == -9, _tail(base / "outlast.out")  # killed right after the recovery's first write
    assert case.outlast(ns, base, WORKER) == 0, _tail(base / "outlast.out")
    final, _done = case.stored(ns)
    assert final is not None and final.status is settled, (final and final.status, _tail(base / "outlast.out"))
    assert _lines(base / "items.log") < LEDGER_ITEMS
