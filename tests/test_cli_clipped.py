"""A table's last column cut to fit says so: `outlast types` showed "run any command; progress and
checkpoints from its" as the command type's description, and `ls` an error's first 60 characters as its
note, with nothing saying there was more."""

from __future__ import annotations

from engine.cli import format as fmt
from engine.lifecycle import Status
from tests.fixtures_cli import Cli


def test_types_shows_the_built_in_descriptions_whole(cli: Cli) -> None:
    r = cli("types")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("command "))
    assert line.endswith("run any command; progress and checkpoints from its output"), line


def test_a_note_cut_to_fit_ends_with_an_ellipsis() -> None:
    error = "output 'projects/of/someone/with-a-rather-long-name/index.sqlite' is being written by another operation"
    row = fmt.LsRow(
        id="06bk9v8gewxq4", handle=9, status=Status.FAILED, type="code_analysis", name=None, done=0,
        total=None, percent=None, priority="normal", created_at=None, note=error,
    )  # fmt: skip
    line = fmt.ls_table([row]).splitlines()[1]
    assert line.endswith("output 'projects/of/someone/with-a-rather-long-name/index.s…"), line
    assert fmt.clipped("short", 60) == "short"


def test_a_long_name_is_cut_in_ls_not_every_row_widened() -> None:
    long = "nightly index of the monorepo " * 5
    rows = [
        fmt.LsRow(
            id=f"06bk9v8gewxq{n}", handle=n, status=Status.COMPLETED, type="demo", name=name, done=1,
            total=1, percent=100.0, priority="normal", created_at=None, note="",
        )
        for n, name in enumerate([long.strip(), None, "short"], 1)
    ]  # fmt: skip
    lines = fmt.ls_table(rows).splitlines()
    assert "nightly index of the monorepo n…" in lines[1], lines
    assert max(len(line) for line in lines) < 120, lines  # 220 with the name whole


def test_a_long_next_step_is_cut_in_checkpoints_not_every_row_widened() -> None:
    """The next step is a column in the middle: one of 1 MB padded every row to 1 MB."""
    from engine import Checkpoint

    steps = ["x" * 100_000, "short", None]
    cps = [Checkpoint(operation_id="06bk9v8gewxq4", seq=n, created_at=0.0, next_step=s) for n, s in enumerate(steps, 1)]
    lines = fmt.checkpoints_table(cps).splitlines()
    assert max(len(line) for line in lines) < 150, [len(line) for line in lines]
    assert "x" * 59 + "…" in lines[1] and all(line.endswith(("ok", "CHECKSUM")) for line in lines), lines
