"""outlast rm and outlast clean: settled operations leave the store with all they own; queued and
running work, unknown ids and bad ages are one line each and remove nothing."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from typing import Any

import pytest

from engine import Engine
from engine.cli import control
from tests.fixtures_cli import Cli
from tests.fixtures_ops import in_process, run_json


def _ids(cli: Cli) -> set[str]:
    code, out, _ = in_process(cli, "--json", "ls")
    assert code == 0
    return {o["id"] for o in json.loads(out)}


def test_rm_removes_settled_work_and_refuses_the_rest(cli: Cli) -> None:
    code, done, err = run_json(cli, "run", "demo", "-p", "items=3", "-p", "seconds=0")
    assert code == 0, err
    queued = cli("-q", "submit", "demo").stdout.strip()
    # A bad or ambiguous id is bad usage, which stores nothing: `rm 1 06` removed 1 first, then exited 2.
    shared = "".join(a for a, _ in itertools.takewhile(lambda p: p[0] == p[1], zip(done["id"], queued, strict=False)))
    assert shared, (done["id"], queued)
    for bad, said in ((shared, "is ambiguous"), ("BAD!", "invalid operation id")):
        code, out, err = in_process(cli, "rm", done["id"], bad)
        assert code == 2 and out == "" and err.count("\n") == 1 and said in err, (bad, code, out, err)
        assert _ids(cli) == {done["id"], queued}
    code, out, err = in_process(cli, "rm", done["id"][:9], queued)
    assert code == 7 and err.count("\n") == 1 and f"operation {queued} is queued" in err, err
    assert f"{done['id']} removed" in out
    assert _ids(cli) == {queued}
    code, _, err = in_process(cli, "rm", "zzzz")
    assert code == 3 and "no operation matches id 'zzzz'" in err
    assert _ids(cli) == {queued}
    # One that matches nothing is refused on its own, as a queued one is: the others are removed (exit 3).
    assert in_process(cli, "cancel", queued)[0] == 0
    code, out, err = in_process(cli, "rm", "zzzz", queued, queued[:8])
    assert code == 3 and err.count("\n") == 1 and "'zzzz'" in err and out == f"{queued} removed\n", (out, err)
    assert _ids(cli) == set()


def test_clean_by_status_and_age_with_a_dry_run(cli: Cli) -> None:
    a = cli("-q", "submit", "demo").stdout.strip()
    b = cli("-q", "submit", "demo").stdout.strip()
    c = cli("-q", "submit", "demo").stdout.strip()
    for op in (a, b):
        assert in_process(cli, "cancel", op)[0] == 0
    code, out, _ = in_process(cli, "--json", "clean", "--dry-run")
    assert code == 0 and set(json.loads(out)["would_remove"]) == {a, b}
    code, out, err = in_process(cli, "clean", "--dry-run", "--older-than", "1h")
    assert code == 0 and out == "" and err == "0 would be removed\n", err  # nothing: said, as "0 removed" is
    code, out, err = in_process(cli, "clean", "--dry-run")
    assert code == 0 and out.count(" would be removed\n") == 2 and err == "2 would be removed\n", (out, err)
    assert _ids(cli) == {a, b, c}  # a dry run removes nothing
    code, out, _ = in_process(cli, "clean", "--older-than", "1h")
    assert code == 0 and _ids(cli) == {a, b, c}  # cancelled just now: not older than an hour
    time.sleep(1.1)
    code, out, err = in_process(cli, "clean", "--older-than", "1s", "--status", "cancelled")
    assert code == 0 and "2 removed" in err, err
    assert _ids(cli) == {c}
    code, _, err = in_process(cli, "clean", "--older-than", "7x")
    assert code == 2 and "'7x'" in err and err.count("\n") == 1


@pytest.mark.parametrize("age", ["30", "\u0660d"])
def test_clean_older_than_a_bare_number_or_not_ascii_digits_removes_nothing(cli: Cli, age: str) -> None:
    """A bare number was seconds: ``--older-than 30``, meant as a month, removed every finished operation
    but those of the last half minute. Its unit is asked for; digits of other scripts (an Arabic-Indic zero)
    are no number of it."""
    op = cli("-q", "submit", "demo").stdout.strip()
    assert in_process(cli, "cancel", op)[0] == 0
    time.sleep(0.05)
    code, _, err = in_process(cli, "clean", "--older-than", age)
    assert code == 2 and err.count("\n") == 1, err
    assert ("give its unit: 30s, 30m, 30h, 30d or 30w" in err) == (age == "30"), err
    assert _ids(cli) == {op}


@pytest.mark.parametrize(
    ("age", "said"),
    [
        ("0d", "'0d': an age of zero takes every finished operation"),
        ("0", "'0': an age of zero takes every finished operation"),
        ("0.000w", "'0.000w': an age of zero takes every finished operation"),
        ("-1d", "'-1d': an age is not negative"),
        ("99999999999999d", "'99999999999999d': reaches back before 1970"),
        pytest.param("9" * 400 + "d", "reaches back before 1970", id="400-digit-days"),
        ("nan", "'nan': expected a number with s, m, h, d or w"),
        ("inf", "'inf': expected a number with s, m, h, d or w"),
        ("", "'': expected a number with s, m, h, d or w"),
        ("\uff17d", "expected a number with s, m, h, d or w"),  # a fullwidth 7
        ("1d2h", "'1d2h': expected a number with s, m, h, d or w"),
    ],
)
def test_clean_older_than_a_hostile_age_is_one_line_and_removes_nothing(cli: Cli, age: str, said: str) -> None:
    """``--older-than 0d`` (a script's empty count) removed every finished operation, and
    ``99999999999999d`` (a typo: older than the epoch) removed none, both "done", exit 0. Each hostile age is
    one line naming it, exit 2, and nothing is removed; a fractional one (``1.5h``) is an age."""
    op = cli("-q", "submit", "demo").stdout.strip()
    assert in_process(cli, "cancel", op)[0] == 0
    r = cli("clean", "--older-than", age)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and said in r.stderr, r.stderr
    assert r.stdout == ""
    assert _ids(cli) == {op}
    assert in_process(cli, "clean", "--dry-run", "--older-than", "1.5h")[2] == "0 would be removed\n"


def test_clean_goes_a_page_at_a_time_and_an_interrupted_one_says_what_it_removed(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records are read a page at a time (every one at once held 200 MB for 20,000), and each removal is
    said as it happens: a clean stopped by Ctrl-C after thousands said only "stopped"."""
    ops = [cli("-q", "submit", "demo").stdout.strip() for _ in range(7)]
    for op in ops:
        assert in_process(cli, "cancel", op)[0] == 0
    monkeypatch.setattr(control, "CLEAN_PAGE", 2)
    real_remove, calls = Engine.remove, []

    async def remove(self: Engine, op_id: str, **kw: Any) -> None:
        calls.append(op_id)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C during the fifth removal
        await real_remove(self, op_id, **kw)

    monkeypatch.setattr(Engine, "remove", remove)
    code, out, err = in_process(cli, "clean")
    assert code != 0 and "4 removed" in err, err
    removed = [ln.split()[0] for ln in out.splitlines() if ln.endswith(" removed")]
    assert removed == calls[:4]
    assert _ids(cli) == set(ops) - set(removed)
    monkeypatch.setattr(Engine, "remove", real_remove)
    code, out, err = in_process(cli, "clean")
    assert code == 0 and "3 removed" in err and not _ids(cli), err


def test_clean_beside_another_remover_skips_nothing_and_blames_nobody(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cleans at once (a cron job and a person), or a clean beside an `outlast rm`: an operation the other
    removed between this clean's listing and its removal was "outlast: no operation ID", exit 3, and, gone from
    the listing, counted as kept there, so the next page began one too far on and an operation was never looked
    at (two cleans of 1,200 here both exited 3, with 92 and 322 such lines, and left 6 behind). Here the other
    remover is a real `outlast rm` run as this clean removes its first operation."""
    ops = [cli("-q", "submit", "demo").stdout.strip() for _ in range(7)]
    for op in ops:
        assert in_process(cli, "cancel", op)[0] == 0
    monkeypatch.setattr(control, "CLEAN_PAGE", 2)
    real_remove, calls, other = Engine.remove, [], []

    async def remove(self: Engine, op_id: str, **kw: Any) -> None:
        calls.append(op_id)
        if len(calls) == 1:  # the other removes the next one of this page
            page = [o["id"] for o in json.loads(in_process(cli, "--json", "ls", "--limit", "2")[1])]
            other.append(page[1])
            assert cli("rm", page[1]).returncode == 0
        await real_remove(self, op_id, **kw)

    monkeypatch.setattr(Engine, "remove", remove)
    code, out, err = in_process(cli, "clean")
    assert code == 0 and "no operation" not in err and "6 removed" in err, (code, err)
    removed = [ln.split()[0] for ln in out.splitlines() if ln.endswith(" removed")]
    assert sorted(removed + other) == sorted(ops)
    assert not _ids(cli)


def _clean_beside(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, *between: tuple[str, ...], clean: tuple[str, ...] = ()
) -> tuple[int, str, str]:
    """Three cancelled operations, ended two hours ago, cleaned (with the options ``clean``); the first the clean
    is about to remove is first given the real commands ``between`` (each with its id last), as another
    person's are. (exit code, stderr, that id)."""
    ops = [cli("-q", "submit", "demo", "-p", "items=1", "-p", "seconds=0").stdout.strip() for _ in range(3)]
    for op in ops:
        assert in_process(cli, "cancel", op)[0] == 0
    db = sqlite3.connect(cli.state_dir / "outlast.db")
    with db:
        for op_id, record in db.execute("SELECT id, record FROM operations").fetchall():
            rec = json.loads(record)
            rec["created_at"] = rec["queued_at"] = rec["finished_at"] = time.time() - 7200
            db.execute("UPDATE operations SET record=? WHERE id=?", (json.dumps(rec), op_id))
    db.close()
    real_remove, touched = Engine.remove, []

    async def remove(self: Engine, op_id: str, **kw: Any) -> None:
        if not touched:
            touched.append(op_id)
            for command in between:
                assert cli(*command, op_id).returncode == 0, command
        await real_remove(self, op_id, **kw)

    monkeypatch.setattr(Engine, "remove", remove)
    code, _, err = in_process(cli, "clean", *clean)
    return code, err, touched[0]


def test_clean_beside_a_resume_passes_over_what_was_resumed(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancelled operation a person resumes while a cron job's clean removes the cancelled ones: no longer
    finished, it is not the clean's to remove, as it would not have been listed a moment later. It was said as an
    error ("operation ID is queued: ..."), exit 7, from a clean that did all it was asked. The resume is a real
    `outlast resume --queue` run as this clean removes that operation."""
    code, err, resumed = _clean_beside(cli, monkeypatch, ("resume", "--queue"))
    assert code == 0 and "2 removed" in err and "outlast:" not in err, (code, err)
    assert _ids(cli) == {resumed}


def test_clean_older_than_passes_over_what_was_resumed_and_ended_anew_since_its_listing(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``clean --older-than 1h`` listed a cancelled operation two hours old; a person resumed it and it completed
    before the clean got to it: finished a moment ago, not old, and a clean a moment later would not have
    listed it, but it was removed (the age was not looked at again; a noticed leftover of an outside hour)."""
    code, err, resumed = _clean_beside(
        cli, monkeypatch, ("resume",), clean=("--older-than", "1h", "-s", "cancelled", "-s", "completed")
    )
    assert code == 0 and "2 removed" in err and "outlast:" not in err, (code, err)
    assert _ids(cli) == {resumed}
    assert cli.op(resumed).status.value == "completed"


def test_clean_passes_over_what_was_resumed_and_stopped_again_since_its_listing(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listed cancelled, then resumed and paused (or failed) before the clean got to it: settled again, but not
    as listed, and removed, a resumable operation lost with its checkpoints (an outside hour: a paused run at
    132/200). The clean removes only what is still as it listed it."""
    code, err, resumed = _clean_beside(cli, monkeypatch, ("resume", "--queue"), ("pause",))
    assert code == 0 and "2 removed" in err and "outlast:" not in err, (code, err)
    assert _ids(cli) == {resumed}
    assert cli.op(resumed).status.value == "paused"
