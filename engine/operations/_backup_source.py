"""backup_operation's checks that ``os.access`` cannot make: a kernel pseudo file system (``/proc``, ``/sys``)
says "writable" and takes no directory."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ._common import libc_function

# ---- the destination ---------------------------------------------------------------------------------------

_PSEUDO = {
    0x9FA0: "proc",
    0x62656572: "sysfs",
    0x27E0EB: "cgroup",
    0x63677270: "cgroup2",
    0x64626720: "debugfs",
    0x74726163: "tracefs",
    0x73636673: "securityfs",
    0xCAFE4A11: "bpf",
    0x6165676C: "pstore",
    0x62656570: "configfs",
    0x42494E4D: "binfmt_misc",
    0x65735543: "fusectl",
    0x1CD1: "devpts",
    0xDE5E81E4: "efivarfs",
}
"""Kernel file systems (statfs's f_type) where ``os.access`` says writable and no directory can be made."""

_STATFS = libc_function("statfs")
if _STATFS is not None:
    _STATFS.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


def pseudo_fs(path: Path) -> str | None:
    """The name of the kernel pseudo file system ``path`` (an existing directory) is on; None for a real one,
    or when it cannot be told (not Linux)."""
    if _STATFS is None:
        return None
    buf = ctypes.create_string_buffer(512)  # struct statfs: f_type first, a long
    if _STATFS(os.fsencode(path), buf) != 0:
        return None
    return _PSEUDO.get(ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF)
