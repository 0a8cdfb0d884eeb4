"""Shortest unique prefixes of operation ids: checked against a brute force on generated id sets."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import models
from engine.ids import unique_prefix_lengths
from engine.models import ID_RE, new_id
from tests.fixtures_cli import Cli

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def brute(ids: set[str], minimum: int) -> dict[str, int]:
    out = {}
    for i in ids:
        n = min(len(i), minimum)
        while n < len(i) and any(o != i and o.startswith(i[:n]) for o in ids):
            n += 1
        out[i] = n
    return out


@settings(max_examples=300 if os.environ.get("OUTLAST_SOAK") else 60, deadline=None)
@given(st.sets(st.text(alphabet="01ab", min_size=1, max_size=8), max_size=30), st.integers(1, 5))
def test_matches_brute_force(ids: set[str], minimum: int) -> None:
    assert unique_prefix_lengths(ids, minimum) == brute(ids, minimum)


def test_real_ids_created_moments_apart_get_short_distinct_prefixes() -> None:
    rng = random.Random(7)
    ids = {new_id() for _ in range(200)} | {"".join(rng.choice(ALPHABET) for _ in range(13)) for _ in range(50)}
    lengths = unique_prefix_lengths(ids)
    prefixes = [i[: lengths[i]] for i in ids]
    assert len(set(prefixes)) == len(ids)
    for p in prefixes:  # each one names exactly one id
        assert sum(i.startswith(p) for i in ids) == 1


def test_ls_on_a_terminal_shows_each_short_id_in_bold(cli: Cli) -> None:
    """`outlast ls` on a terminal: the shortest unique prefix bold, the rest dim; piped, plain ids."""
    import pty
    import subprocess
    import sys

    ids = [cli("-q", "submit", "demo").stdout.strip() for _ in range(3)]
    lengths = unique_prefix_lengths(ids)
    main, sub = pty.openpty()
    p = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--state-dir", str(cli.state_dir), "ls"],
        stdout=sub,
        stderr=subprocess.PIPE,
        env={**cli.env, "NO_COLOR": ""},
        timeout=60,
        check=False,
    )
    os.close(sub)
    out = os.read(main, 65536).decode()
    os.close(main)
    assert p.returncode == 0, p.stderr
    for i in ids:
        n = lengths[i]
        assert f"\x1b[1m{i[:n]}\x1b[0m\x1b[2m{i[n:]}\x1b[0m" in out
    piped = cli("ls").stdout
    assert "\x1b" not in piped and all(i in piped for i in ids)


def test_processes_draw_their_own_id_digits_whatever_they_seed_or_fork() -> None:
    """The random digits of an id must differ between processes that start alike: forked from one parent
    (they inherit its generator's state) or seeding ``random`` the same way (a handler's random.seed(0))."""
    random.seed(0)
    parent = [new_id()[9:] for _ in range(20)]
    children = []
    for _ in range(3):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            random.seed(0)
            os.write(write, ",".join(new_id()[9:] for _ in range(20)).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            children.append(f.read().split(","))
        os.waitpid(pid, 0)
    streams = [parent, *children]
    assert all(len(s) == 20 for s in streams)
    # 20 draws of 20 bits alike in two streams: a 2**-400 chance, unless the streams are the same one
    assert len({tuple(s) for s in streams}) == len(streams), streams


def test_ids_of_processes_whose_clock_reads_before_2020_do_not_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wall clock before 2020 (a board with no clock of its own reads 1970 until NTP answers) made every
    process's ids 0 milliseconds and 20 random bits: among a few thousand operations two had one id, and the
    second submit failed "UNIQUE constraint failed: handles.op_id" (exit 8). Each process here is a fresh one (no
    id made yet), at 1970."""
    monkeypatch.setattr(models.time, "time", lambda: 600.0)
    made = set()
    for _ in range(6000):  # 20 bits: two alike with a chance of 1 - 4e-8
        monkeypatch.setattr(models, "_last_id", [0, 0])
        made.add(new_id())
    assert len(made) == 6000
    assert all(ID_RE.match(i) for i in made)
