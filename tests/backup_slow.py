"""A plugin for the backup's progress test: each fsync of a copy in the staging directory (a large file's is
one per ``chunk_checkpoint`` bytes) takes OUTLAST_TEST_SLOW_SYNC seconds more, so that the copy of one large
file outlasts a plain view's line interval."""

from __future__ import annotations

import os
import time

from engine.operations.backup import STAGING

SLOW = float(os.environ.get("OUTLAST_TEST_SLOW_SYNC", "0"))
_fsync = os.fsync


def fsync(fd: int) -> None:
    _fsync(fd)
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return
    if f"/{STAGING}/" in name:
        time.sleep(SLOW)


if SLOW:
    os.fsync = fsync
