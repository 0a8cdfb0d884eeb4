"""A state dir being made by another process: its ``outlast.db`` is built under another name and linked into
place, then that name is unlinked. A process that saw two links, then looked for the other name after it was
gone, refused the database as a ``cp -al`` copy (a soak's worker and submit, making a deleted state dir anew)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import statedir
from engine.statedir import DB_NAME


def test_a_database_whose_other_name_went_between_two_looks_is_not_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / DB_NAME).write_bytes(b"")
    other = tmp_path / "built-under-another-name"
    os.link(tmp_path / DB_NAME, other)
    real = statedir.being_made

    def maker_unlinks_first(state_dir: Path, st: os.stat_result) -> bool:
        other.unlink(missing_ok=True)  # the maker's next step, just before the scan for it
        return real(state_dir, st)

    monkeypatch.setattr(statedir, "being_made", maker_unlinks_first)
    assert statedir.refusal(tmp_path) is None


def test_a_database_with_a_second_name_is_still_refused(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"")
    os.link(tmp_path / DB_NAME, tmp_path / "a-copy")
    why = statedir.refusal(tmp_path)
    assert why is not None and "2 hard links" in why
