"""A plugin for the backup's kill tests: the process SIGKILLs itself at one exact point of a backup's end,
named by OUTLAST_TEST_DIE_AT (a kill at a random moment rarely lands in a window of milliseconds):

- ``dirstat``: as the first directory is given its source's times (``os.utime`` of a directory);
- ``manifest``: just after the manifest is renamed into place;
- ``journal``: just after the manifest's journal is removed (with the manifest there);
- ``placed``: just after the OUTLAST_TEST_DIE_AFTER-th file is renamed into place from its partial (its
  batch renamed in part, not yet synced, so not yet counted done).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from engine.operations.backup import JOURNAL, MANIFEST

DIE_AT = os.environ.get("OUTLAST_TEST_DIE_AT", "")
DIE_AFTER = int(os.environ.get("OUTLAST_TEST_DIE_AFTER", "1"))
_placed = [0]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_utime, _replace, _unlink = os.utime, os.replace, os.unlink


def utime(path: Any, *args: Any, **kw: Any) -> None:
    if DIE_AT == "dirstat" and isinstance(path, str | os.PathLike) and os.path.isdir(path) and not os.path.islink(path):
        _die()
    _utime(path, *args, **kw)


def replace(src: Any, dst: Any, **kw: Any) -> None:
    _replace(src, dst, **kw)
    if DIE_AT == "manifest" and str(dst).endswith(MANIFEST):
        _die()
    if DIE_AT == "placed" and str(src).endswith(".outlast-partial"):
        _placed[0] += 1
        if _placed[0] == DIE_AFTER:
            _die()


def unlink(path: Any, **kw: Any) -> None:
    _unlink(path, **kw)
    if (
        DIE_AT == "journal"
        and str(path).endswith(JOURNAL)
        and os.path.exists(os.path.join(os.path.dirname(path), MANIFEST))
    ):
        _die()


if DIE_AT:
    os.utime, os.replace, os.unlink = utime, replace, unlink  # type: ignore[assignment]
