"""Helpers for the analysis, profiling and timed-testing operations' tests."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from engine import open_store
from tests.fixtures_cli import Cli


def checkpointed_items(cli: Cli, op_id: str) -> int:
    """Items done in the newest valid checkpoint (0 when there is none)."""

    async def go() -> int:
        store = open_store(cli.state_dir)
        await store.open()
        try:
            got = await store.load_checkpoint(op_id)
            return got[0].processed_items if got else 0
        finally:
            await store.close()

    return asyncio.run(go())


def tables(
    db: Path | str, *names: str, drop: tuple[str, ...] = ("seen", "analysed_by")
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of each table, sorted, without the columns in ``drop`` (which operation wrote a row)."""
    con = sqlite3.connect(db)
    try:
        out = {}
        for t in names:
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({t})") if r[1] not in drop]
            out[t] = sorted(con.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall(), key=repr)
        return out
    finally:
        con.close()
