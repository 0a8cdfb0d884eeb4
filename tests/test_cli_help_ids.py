"""What ``--help`` says an ID is, checked against what the commands take.

The README's way of naming an operation is its handle (``outlast show 12``: the # of ``ls``), but no
``--help`` said so: the top-level examples and ``show``, ``pause`` and ``cancel`` named only "any unique
prefix", so a user reading the help alone took 12 for an id prefix.
"""

from __future__ import annotations

import re

from .fixtures_cli import Cli


def test_the_help_says_an_id_may_be_the_handle_ls_shows_and_its_examples_by_handle_work(cli: Cli) -> None:
    top = cli.here("--help").stdout
    assert re.search(r"handle, the number `outlast ls` shows under #", " ".join(top.split())), top
    for command in ("show", "pause", "cancel"):
        text = " ".join(cli.here(command, "--help").stdout.split())
        assert "ID: its handle, the # of `ls`, or a unique id prefix" in text, (command, text)

    op_id = cli.here("submit", "demo", "-p", "items=3").stdout.strip()
    listed = cli.here("ls").stdout.splitlines()[1].split()
    handle = listed[0]
    assert listed[1] == op_id and handle.isdigit()
    # The top-level examples name an operation by handle: those that read or stop it take it so.
    assert re.search(r"^\s+outlast watch 12 ", top, re.M) and re.search(r"^\s+outlast resume 12 ", top, re.M)
    assert f"(handle {handle})" in cli.here("show", handle).stdout
    assert cli.here("pause", handle).returncode == 0
    assert cli.op(op_id).status.value == "paused"


def test_the_rerun_help_says_which_operations_it_takes_as_it_refuses_the_others(cli: Cli) -> None:
    """It read "A settled operation (...)" run into its examples, where paused and interrupted ones are
    taken too, and only queued and running ones refused."""
    text = " ".join(cli.here("rerun", "--help").stdout.split())
    assert "Any but queued or running work" in text and "settled" not in text, text
    queued = cli.here("submit", "demo", "-p", "items=3").stdout.strip()
    assert "is queued" in cli.here("rerun", queued).stderr
    cli.here("pause", queued)
    again = cli.here("rerun", queued, "--queue")
    assert again.returncode == 0, again.stderr


def test_zero_is_no_handle_nor_a_prefix_of_every_id(cli: Cli) -> None:
    """``outlast rm 0`` (a handle, to someone counting from 0) read "0" as an id prefix, which every id has
    until 2054: it removed the only operation stored. Refused in one line, nothing changed; "06" is still a
    prefix."""
    op_id = cli.here("submit", "demo", "-p", "items=3").stdout.strip()
    for command in (["show", "0"], ["rm", "0"], ["cancel", "0"]):
        r = cli.here(*command)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "handles start at 1" in lines[0], (command, r.stderr)
    assert cli.op(op_id).status.value == "queued"
    assert "(handle 1)" in cli.here("show", op_id[:2]).stdout
