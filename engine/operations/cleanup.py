"""cleanup_operation: delete files matching patterns and age under a root, or Outlast's own old outputs and logs.

Dry-run by default: nothing is deleted unless ``dry_run`` is false; the manifest then lists what would go.
Two modes:

- ``root``: files under it (symlinks are removed, never followed) whose path relative to the root matches
  ``patterns`` (.gitignore syntax, through pathspec, already a dependency) and not ``exclude``, and whose
  mtime is older than ``older_than_days``. Never listed: a repository's ``.git``, ``.hg`` or ``.svn``
  directory, Outlast's own directories (the state directory of the store the operation runs on, the
  settings' state directory and checkpoint mirror, and any directory holding a store, ``outlast.db`` or a
  mirror's ``store.json``), each said once in the log, nor the manifest;
  a root inside one of them is refused when the run starts, but for one in a state directory's ``outputs``
  (reports: the HTTP API's default root). With ``dry_run`` false, a root that is ``/``, the
  home directory or a directory above it, a ``.git`` directory or one inside it, is refused at validation.
- ``retention_days``: Outlast's own retention in a state directory (default: the one this engine uses): the
  log files (and detached runs' output) and outputs of operations that ended (completed, failed, cancelled,
  timed out) more than N days ago, logs of operations no longer in the store, and outputs older than N days
  that no kept operation refers to. Paused and interrupted operations keep theirs (a resume needs them); the
  default knowledge base and performance_testing's baselines stay whatever their age (``LASTING``).
  Operation records are not deleted here. The directory must hold a local store (``outlast.db``): checked
  at validation and when the run starts. The store this engine runs on is read through its public API
  (``open_store``, ``list``); another one as ``outlast ls`` reads it, creating nothing there.

The age cutoff is fixed when the run first starts (kept in ``ctx.state``) and checkpointed at once, before
anything is listed or removed, so a resume, even after a kill before the first interval's checkpoint,
selects what the uninterrupted run would have. Files go in batches: the batch's manifest lines (JSON: path,
size, mtime) are written and fsynced first, then the files are unlinked, so a kill at any point leaves no
removed file missing from the manifest; a resume does not repeat a line already there.

A removal never follows a symlink on the way to the file: anyone who can write in the tree could otherwise
replace a listed directory by a link (``root/z -> /etc``) between the listing and the removal, and have a
run as root delete a file anywhere. The root is opened once; each item is reached from it one directory at
a time (``O_DIRECTORY | O_NOFOLLOW``) and unlinked relative to its parent's descriptor, and only when it is
still the file the listing saw (same device and inode). An item whose path no longer goes through real
directories, or whose file was replaced, is skipped, with a warning; so is an empty directory to prune.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pathspec import GitIgnoreSpec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..context import OperationContext, OperationFailed
from ..files import cut_torn_line, private_opener
from ..models import TERMINAL, Operation
from ..paths import DETACHED, OTHER_STORES
from ..registry import operation
from ..store import open_store
from ..store.quick import DB_NAME, quick_list
from ..text import clean
from ._common import DIR_FLAGS, JSON_MAGIC, NotFollowed, check_output_file, existing_dir, output_dir, parent_of
from ._walk import MAX_WILDCARDS, tamed, walk, walked_rel
from .knowledge import KB_FILE

BATCH = 256
DAY = 86400.0

FileId = tuple[int, int]
"""(st_dev, st_ino) of a listed file: its removal deletes that very file or nothing."""

NOT_FOLLOWED = "not removed: a directory on its path is no longer a real directory (a symlink?); not followed"
REPLACED = "not removed: replaced since the listing (not the file listed)"
SKIPPED = (NOT_FOLLOWED, REPLACED)
"""Why an item is skipped rather than removed (both told in the log, counted in the result's ``skipped``)."""


class CleanupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str | None = Field(default=None, description="directory to clean (give root or retention_days)")
    patterns: list[str] = Field(default_factory=list, description=".gitignore-style patterns of files to delete")
    exclude: list[str] = Field(default_factory=list, description=".gitignore-style patterns of files to keep")
    older_than_days: float = Field(default=0.0, ge=0, le=100_000, description="only files older than this")
    retention_days: float | None = Field(
        default=None, ge=0, le=100_000, description="Outlast's retention: outputs and logs older than this"
    )
    state_dir: str | None = Field(default=None, description="state directory for retention (default: this one)")
    dry_run: bool = Field(default=True, description="list what would be deleted, delete nothing")
    manifest: str | None = Field(default=None, description="JSON-lines manifest (default: outputs/cleanup-ID.jsonl)")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str | None) -> str | None:
        return None if v is None else existing_dir(v, "root")

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, v: str | None) -> str | None:
        if v is None:
            return None
        d = existing_dir(v, "state_dir")
        if not _holds_store(Path(d)):
            raise ValueError(f"state_dir {v!r} is not an Outlast state directory (it holds no {DB_NAME})")
        return d

    @field_validator("manifest")
    @classmethod
    def _manifest(cls, v: str | None) -> str | None:
        v = check_output_file(v, "manifest", JSON_MAGIC, "a JSON-lines manifest")
        if v is not None:
            m = Path(v).expanduser().resolve()
            for d in m.parents:
                if _holds_store(d) and not m.is_relative_to(d / "outputs"):
                    raise ValueError(f"manifest {v!r} is among the files of the Outlast store in {str(d)!r}")
        return v

    @field_validator("patterns", "exclude")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        try:
            GitIgnoreSpec.from_lines(v)
        except Exception as e:
            raise ValueError(f"pattern not understood: {e}") from None
        for pattern in v:
            if tamed(pattern)[1] > MAX_WILDCARDS:
                raise ValueError(
                    f"pattern {pattern!r} holds more than {MAX_WILDCARDS} wildcards in one path segment: matching"
                    " it against a long file name can take hours"
                )
        return v

    @model_validator(mode="after")
    def _one_mode(self) -> CleanupParams:
        if (self.root is None) == (self.retention_days is None):
            raise ValueError("give either root (with patterns) or retention_days (Outlast's own outputs and logs)")
        if self.root is not None and not self.patterns:
            raise ValueError("patterns is empty: name the files to delete (e.g. *.tmp, build/)")
        if self.root is None and (self.patterns or self.exclude or self.older_than_days):
            raise ValueError("patterns, exclude and older_than_days go with root, not with retention_days")
        if self.state_dir is not None and self.root is not None:
            raise ValueError("state_dir goes with retention_days, not with root")
        if self.manifest is not None and self.root is not None:
            m = Path(self.manifest).expanduser().resolve()
            if m.is_relative_to(self.root):
                raise ValueError(f"manifest {self.manifest!r} is inside root {self.root!r}")
        if self.root is not None and not self.dry_run:
            why = _too_broad(Path(self.root)) or _in_git_dir(Path(self.root))
            if why is not None:
                raise ValueError(f"root {self.root!r} {why}")
        return self


def _homes() -> set[Path]:
    """This user's home directory, as $HOME and as the password database say."""
    homes: set[Path] = set()
    with contextlib.suppress(RuntimeError, KeyError):  # no $HOME and no password entry
        homes.add(Path.home())
    with contextlib.suppress(KeyError, ImportError, OSError):
        import pwd

        homes.add(Path(pwd.getpwuid(os.getuid()).pw_dir))
    return {h.resolve() for h in homes if h.is_absolute()}


def _too_broad(root: Path) -> str | None:
    """Why ``root`` (resolved) is too broad to delete in: ``/``, the home directory, or a directory above
    it (``/home``); None when it is not. A pattern there reaches every file of the user (or of the machine),
    and the common way to get there is a mistake (``root=~``, ``root=$DIR/..``). A dry run is not refused;
    no override: a narrower root (``~/Downloads``) or one run per directory does what a broad one would."""
    if root == Path(root.anchor):
        return "is the file system's root: deleting there is refused (give a narrower root; a dry run works)"
    for home in _homes():
        if home == root:
            return "is your home directory: deleting there is refused (give a narrower root; a dry run works)"
        if home.is_relative_to(root):
            return f"holds your home directory {str(home)!r}: deleting there is refused (give a narrower root)"
    return None


def _in_git_dir(root: Path) -> str | None:
    """Why ``root`` (resolved) is not cleaned: a git repository's ``.git`` directory, or inside one (its
    objects and refs are the repository; ``git gc`` and ``git clean`` clean it); None when it is not."""
    if ".git" in root.parts:
        return "is a .git directory or inside one: deleting there breaks the repository (use git gc / git clean)"
    return None


def _holds_store(d: Path) -> bool:
    """``d`` holds an Outlast local store: a regular ``outlast.db`` (not followed if a symlink)."""
    try:
        return stat.S_ISREG(os.lstat(d / DB_NAME).st_mode)
    except OSError:
        return False


def _entry(path: Path) -> os.stat_result | None:
    """The lstat of a regular file or symlink (not followed); None for anything else or a vanished one."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return None
    return st


def _same(st: os.stat_result, listed: FileId) -> bool:
    """``st`` is the regular file or symlink the listing saw."""
    is_file = stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)
    return is_file and (st.st_dev, st.st_ino) == listed


def open_root(path: Path) -> int:
    """A descriptor of the directory ``path`` (itself not a symlink), that every removal starts from."""
    return os.open(path, DIR_FLAGS)


def _file_id(path: Path) -> FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _is_store_dir(dnames: list[str], fnames: list[str]) -> bool:
    """A directory's names are those of an Outlast store: a local store's ``outlast.db``, or a checkpoint
    mirror's ``store.json`` beside its ``ops`` and ``checkpoints`` directories."""
    if DB_NAME in fnames:
        return True
    return "store.json" in fnames and "ops" in dnames and "checkpoints" in dnames


VCS_DIRS = frozenset({".git", ".hg", ".svn"})
"""A repository's own metadata, never entered by a root's listing: ``patterns=["*"]`` with an age deleted a
project's old git objects (a broken repository), ``logs/`` its reflogs; ``git clean`` never goes there either."""


def list_matching(
    root: Path,
    patterns: list[str],
    exclude: list[str],
    cutoff: float,
    keep_out: frozenset[FileId] = frozenset(),
    pruned: list[str] | None = None,
    vcs: list[str] | None = None,
) -> dict[str, FileId]:
    """Relative paths under ``root`` matching ``patterns``, not ``exclude``, last modified before ``cutoff``
    (sorted), each with the identity of the file the listing saw.

    Never listed: a file or directory whose identity is in ``keep_out`` (Outlast's state directory, its
    checkpoint mirror, the manifest being written), nor any directory holding an Outlast store (``outlast.db``,
    a mirror's ``store.json``: another state directory's records and checkpoints); each directory so pruned is
    added to ``pruned`` (relative; "." for the root itself). Nor a repository's metadata directory (``.git``,
    ``.hg``, ``.svn``) nor a ``.git`` file (a submodule's or a worktree's link to its repository): each added
    to ``vcs``."""
    want = GitIgnoreSpec.from_lines(tamed(p)[0] for p in patterns)
    keep = GitIgnoreSpec.from_lines(tamed(p)[0] for p in exclude)
    out: dict[str, FileId] = {}
    for d, dnames, fnames in walk(root):
        rel_d = Path(walked_rel(d, root))
        if _is_store_dir(dnames, fnames):
            dnames.clear()
            if pruned is not None:
                pruned.append(rel_d.as_posix())
            continue
        for x in list(dnames):
            try:
                st = os.lstat(Path(d) / x)
            except OSError:
                continue  # gone: the walk finds nothing in it either
            if stat.S_ISLNK(st.st_mode):  # a symlink to a directory: the link is a candidate, never followed
                dnames.remove(x)
                fnames.append(x)
            elif (st.st_dev, st.st_ino) in keep_out:
                dnames.remove(x)
                if pruned is not None:
                    pruned.append((rel_d / x).as_posix())
            elif x in VCS_DIRS:
                dnames.remove(x)
                if vcs is not None:
                    vcs.append((rel_d / x).as_posix())
        for f in fnames:
            rel = (rel_d / f).as_posix()
            if f in VCS_DIRS:  # a submodule's or worktree's ``.git`` file: its link to the repository
                if vcs is not None:
                    vcs.append(rel)
                continue
            if not want.match_file(rel) or keep.match_file(rel):
                continue
            e = _entry(root / rel)
            if e is not None and e.st_mtime < cutoff and (e.st_dev, e.st_ino) not in keep_out:
                out[rel] = (e.st_dev, e.st_ino)
    return dict(sorted(out.items()))


def _strings(value: Any) -> list[str]:
    """Every string inside a JSON value (paths in a result or params)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


LASTING = re.compile(rf"{re.escape(KB_FILE)}(-wal|-shm|-journal)?|perf-baseline-[0-9a-f]+\.json")
"""Files in ``outputs`` that later operations build on by default, never an operation's report: the knowledge
base (``outlast kb search``, kb_optimization, vector_indexing read it) and performance_testing's baselines.
Retention removed them once no operation of the last N days named them: a month without a population took
the knowledge base, its sources perhaps gone since; a month without a timed run took the baseline, and the
next run silently wrote a new one to compare with."""


def retention_candidates(state: Path, ops: list[Operation], cutoff: float, own_id: str) -> dict[str, FileId]:
    """Paths (relative to the state dir) of logs and outputs that retention removes (sorted), each with the
    identity of the file the listing saw.

    In a state dir another store writes too (``OTHER_STORES``: a Redis worker's outputs and detached runs),
    a file is removed only when it is an old operation's of this store: by its id, or named by its record;
    an operation unknown here may be the other store's, alive."""
    by_id = {o.id: o for o in ops}
    shared = (state / OTHER_STORES).exists()

    def old(o: Operation) -> bool:
        return o.status in TERMINAL and (o.finished_at or o.updated_at) < cutoff

    kept = [o for o in ops if not old(o) or o.id == own_id]
    keep_paths = {str(Path(s).expanduser().resolve()) for o in kept for s in _strings([o.result, o.params]) if "/" in s}
    kept_ids = {o.id for o in kept}
    kept_roots = _root_hashes(kept)
    gone = [o for o in ops if o.id not in kept_ids]
    old_paths = {str(Path(s).expanduser().resolve()) for o in gone for s in _strings([o.result, o.params]) if "/" in s}
    old_ids = {o.id for o in gone}
    out: dict[str, FileId] = {}
    for kind in ("logs", DETACHED):  # an operation's log; a detached run's output (``run --detach``)
        logs = state / kind
        if not logs.is_dir():
            continue
        for log in sorted(logs.iterdir()):
            o = by_id.get(log.name.split(".", 1)[0])
            e = _entry(log)
            if e is None:
                continue
            if (o is not None and old(o)) or (o is None and e.st_mtime < cutoff and not shared):
                out[f"{kind}/{log.name}"] = (e.st_dev, e.st_ino)
    outputs = state / "outputs"
    for d, _dn, fnames in walk(outputs):
        for name in fnames:
            p = Path(d) / name
            if Path(d) == outputs and (
                LASTING.fullmatch(name) or ((m := BY_ROOT.fullmatch(name)) is not None and m[1] in kept_roots)
            ):
                continue
            e = _entry(p)
            if e is None or e.st_mtime >= cutoff:
                continue
            rel = walked_rel(str(p), state)
            if any(i in rel for i in kept_ids):
                continue
            if str(p) in keep_paths or any(d in keep_paths for d in _dirs_above(str(p), len(str(outputs)))):
                continue
            if shared and not (
                any(i in rel for i in old_ids)
                or str(p) in old_paths
                or any(d in old_paths for d in _dirs_above(str(p), len(str(outputs))))
            ):
                continue
            out[rel] = (e.st_dev, e.st_ino)
    return dict(sorted(out.items()))


BY_ROOT = re.compile(r"[a-z][a-z-]*-([0-9a-f]{12})\.sqlite(-wal|-shm|-journal)?")
"""An analysis's default results database in ``outputs``: ``PREFIX-HASH.sqlite``, HASH the first 12 hex digits of
the sha1 of its ``root`` (indexing, code and dependency analysis, semantic analysis of a tree)."""


def _root_hashes(ops: list[Operation]) -> set[str]:
    """The HASH of ``BY_ROOT`` of each operation's ``root``: its default database is named by no record until it
    completes, and a paused analysis's, untouched for the N days, was removed (its resume began again)."""
    roots = (o.params.get("root") for o in ops if isinstance(o.params, dict))
    return {hashlib.sha1(r.encode()).hexdigest()[:12] for r in roots if isinstance(r, str)}


def _dirs_above(path: str, base: int) -> Iterator[str]:
    """Each directory above ``path`` (a POSIX path) that is longer than its first ``base`` characters. By
    string: ``Path.parents`` with ``is_relative_to`` compared every parent with every other, and Python
    3.13's pathlib made that minutes for a tree 1,200 directories deep."""
    end = len(path)
    while (end := path.rfind("/", 0, end)) > base:
        yield path[:end]


def read_manifest(path: Path) -> dict[str, int | None]:
    """path -> size of each file in the manifest (None: not removed by it: its removal failed, the file is
    still there, or the file was gone before its turn).

    A torn last line (a kill while writing it) is ignored: its file was not yet removed.
    """
    out: dict[str, int | None] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                    out[rec["path"]] = None if "error" in rec else int(rec["size"])
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    return out


def _remove_batch(
    root_fd: int, batch: list[tuple[str, FileId]], manifest: Path, seen: set[str], dry_run: bool
) -> list[tuple[str, int, str | None]]:
    """Record the batch in the manifest (fsynced), then unlink it; (path, bytes, error or None) per file.

    Each file is reached from ``root_fd`` without following a symlink (``_parent``) and must still be the file
    listed: otherwise its error is NOT_FOLLOWED or REPLACED (skipped, not a failure), or "gone"."""
    entries: list[tuple[str, FileId, int, float]] = []
    out: list[tuple[str, int, str | None]] = []
    for rel, listed in batch:
        try:
            with parent_of(root_fd, rel) as (d, name):
                st = os.stat(name, dir_fd=d, follow_symlinks=False)
        except NotFollowed:
            out.append((rel, 0, NOT_FOLLOWED))
            continue
        except OSError:
            out.append((rel, 0, "gone"))
            continue
        if not _same(st, listed):
            out.append((rel, 0, REPLACED))
        else:
            entries.append((rel, listed, st.st_size, st.st_mtime))
    lines = [
        json.dumps({"path": rel, "size": size, "mtime": mtime, **({"dry_run": True} if dry_run else {})}) + "\n"
        for rel, _listed, size, mtime in entries
        if rel not in seen
    ]
    if lines:
        with open(manifest, "a", encoding="utf-8", opener=private_opener) as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
    failed: list[str] = []
    for rel, listed, size, _mtime in entries:
        seen.add(rel)
        if dry_run:
            out.append((rel, size, None))
            continue
        why: str | None = None
        try:
            with parent_of(root_fd, rel) as (d, name):
                # Checked again just before the unlink: the manifest's fsync left time for a swap.
                if not _same(os.stat(name, dir_fd=d, follow_symlinks=False), listed):
                    why = REPLACED
                else:
                    os.unlink(name, dir_fd=d)
        except NotFollowed:
            why = NOT_FOLLOWED
        except FileNotFoundError:
            # Removed by someone else since it was looked at (the manifest's fsync is a window): not by this
            # run. Counted removed, a run beside an `rm -r` of half the tree said it had removed the whole of
            # it, and its manifest listed every file as removed by it.
            why = "gone"
        except OSError as e:
            why = f"{type(e).__name__}: {e.strerror or e}"
        out.append((rel, size, None) if why is None else (rel, 0, why))
        if why is not None:
            failed.append(json.dumps({"path": rel, "error": why}) + "\n")
            seen.discard(rel)  # still there: a later run that removes it writes its line again
    if failed:
        with open(manifest, "a", encoding="utf-8", opener=private_opener) as fh:
            fh.writelines(failed)
    return out


def _prune_dirs(base_fd: int, base: Path, top: str, cutoff: float, emptied: set[str]) -> tuple[int, list[str]]:
    """Remove empty directories under ``base/top`` (not ``top``) that this run emptied or that are unchanged
    since ``cutoff``; how many, and those not reached because a directory on their path is no longer a real
    one. (A new empty one may be a running operation's, about to be written into.)

    Each is reached from ``base_fd`` without following a symlink, like a file (``_parent``). Its identity is
    not compared with the walk's: rmdir removes only an empty directory, and its age is read from the one
    reached, so at worst an empty old directory inside the tree goes. Reaching each from the base costs a
    chain of N nested directories N*N/2 opens (1,200 levels: about 1.5 s), no descriptor held per level."""
    n = 0
    not_followed: list[str] = []
    for d, _dn, _fn in walk(base / top, topdown=False):
        rel = walked_rel(d, base)
        if rel == top:
            continue
        try:
            with parent_of(base_fd, rel) as (pfd, name):
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode) and (rel in emptied or st.st_mtime < cutoff):
                    os.rmdir(name, dir_fd=pfd)
                    n += 1
        except NotFollowed:
            not_followed.append(rel)
        except OSError:
            pass
    return n, not_followed


async def _list_operations(ctx: OperationContext, state: Path) -> list[Operation]:
    """The operations stored in the state directory ``state``, which holds a local store (checked).

    The store this engine runs on is read through its public API; another is read as ``outlast ls`` reads
    it, writing nothing there (opening it would make its lock and log directories and owner note), and an
    operation whose process is gone and not yet marked interrupted makes that read refuse."""
    if state == ctx.output_dir.parent.resolve():
        store = open_store(state)
        await store.open()
        try:
            return await store.list_operations()
        finally:
            await store.close()
    records = await asyncio.to_thread(quick_list, state, None, None, -1)
    if records is None:
        raise OperationFailed(
            f"state dir {state}: its store cannot be read without changing it (an operation left running by a"
            f" process that is gone?): run `outlast --state-dir {state} ls` once, then this again; nothing removed"
        )
    return [Operation.model_validate(r) for r in records]


def _outlast_dirs(ctx: OperationContext) -> list[Path]:
    """Outlast's own directories, never listed nor cleaned by a root: those of the engine running this
    operation (``ctx.outlast_dirs``: its store's state directory and checkpoint mirror, its settings'; the
    settings loaded here alone missed a ``--config`` file's mirror), and those of the settings as they read
    now (the default config file and the environment). As configured (not resolved: a symlink on the way
    to one is kept too, see ``_keep_out``)."""
    dirs = list(ctx.outlast_dirs)
    try:
        from ..config import load_settings

        settings = load_settings()
    except Exception:  # a config file broken since the engine started: the engine's own only
        settings = None
    if settings is not None:
        dirs.append(Path(settings.state_dir).expanduser())
        if settings.checkpoint_mirror is not None:
            dirs.append(Path(settings.checkpoint_mirror).expanduser())
    return list(dict.fromkeys(Path(os.path.abspath(d)) for d in dirs))


def _keep_out(own: list[Path], manifest: Path) -> frozenset[FileId]:
    """What a root's listing never lists nor enters: Outlast's directories ``own`` and the manifest (their
    identities: a bind mount or a hard link is the same), and every symlink on the way to one of ``own``
    (``root/.local -> /data/local`` holding the state dir: the link removed, the store is lost to its path)."""
    out: set[FileId] = set()
    for d in [*own, manifest]:
        if (i := _file_id(d)) is not None:
            out.add(i)
    for d in own:
        for a in [d, *d.parents]:
            with contextlib.suppress(OSError):
                st = os.lstat(a)
                if stat.S_ISLNK(st.st_mode):
                    out.add((st.st_dev, st.st_ino))
    return frozenset(out)


async def _cutoff(ctx: OperationContext, p: CleanupParams) -> float:
    """The age cutoff: fixed when the operation first runs, and on disk before anything is removed.

    An uninterrupted run selects by the time it started, so a resume must use that time too: a kill
    before the first interval's checkpoint lost a cutoff kept in ``ctx.state`` only, and the resume,
    taking a later one, deleted files the uninterrupted run keeps. So the first run checkpoints it at once
    (one write). The record's ``created_at`` would be durable already, but it is the submit time: an
    operation queued for hours would select by a time before it ran, unlike ``outlast run`` at once."""
    st = ctx.state
    if "cutoff" not in st:
        days = p.older_than_days if p.root is not None else (p.retention_days or 0.0)
        st["cutoff"] = time.time() - days * DAY
        seq = ctx.checkpoint_seq
        await ctx.checkpoint(next_step="listing")
        if ctx.checkpoint_seq == seq and not p.dry_run:
            raise OperationFailed(
                "the age cutoff could not be checkpointed (the store refused the write): nothing removed,"
                " since a resume could select other files; resume it once the store can be written"
            )
    return float(st["cutoff"])


@operation("cleanup_operation", params=CleanupParams, description="delete old files by pattern; Outlast's retention")
async def cleanup(ctx: OperationContext, p: CleanupParams) -> dict:
    """Select the files, then record and remove them batch by batch; the result counts them."""
    base = Path(p.root) if p.root is not None else Path(p.state_dir or output_dir(ctx).parent).resolve()
    own = await asyncio.to_thread(_outlast_dirs, ctx)  # reads the config file: not on the event loop
    if p.root is not None:
        for d in own:  # its outputs are the user's reports and the HTTP API's only default root: cleaned as asked
            if base.resolve().is_relative_to(d.resolve()) and not base.resolve().is_relative_to(
                d.resolve() / "outputs"
            ):
                raise OperationFailed(
                    f"root {p.root} is inside Outlast's own directory {d} (its store, logs, locks or"
                    " checkpoints): not cleaned by a root; retention_days cleans old outputs and logs"
                )
    elif not _holds_store(base):  # checked at validation for a state_dir given; again here (it may have gone)
        raise OperationFailed(
            f"state dir {base} holds no Outlast store ({DB_NAME}): retention reads there which operations"
            " ended, and has nothing to read (a Redis store's operations are not read here); nothing removed"
        )
    manifest = Path(p.manifest).expanduser().resolve() if p.manifest else output_dir(ctx) / f"cleanup-{ctx.id}.jsonl"
    for d in own:  # a new run starts by removing the manifest: never one of the store's (an empty WAL, a lock)
        if manifest.is_relative_to(d.resolve()) and not manifest.is_relative_to(d.resolve() / "outputs"):
            raise OperationFailed(f"manifest {p.manifest} is among Outlast's own files in {d}: give one outside it")
    cutoff = await _cutoff(ctx, p)
    if not ctx.resuming and ctx.attempt == 1:
        # A new operation starts a new manifest. A later attempt keeps it even without a checkpoint: a
        # run killed before its first checkpoint has already removed the files its lines name.
        await asyncio.to_thread(manifest.unlink, missing_ok=True)
    ctx.progress(step="listing")
    # Opened before the listing, once: every removal starts from this directory, never from a path.
    base_fd = await asyncio.to_thread(open_root, base)
    try:
        pruned = await _clean(ctx, p, base, base_fd, manifest, cutoff, own)
    finally:
        os.close(base_fd)
    # Counted from the manifest: files removed before a kill, after their checkpoint, are gone from the
    # listing of the resumed run but are in the manifest.
    removed = [v for v in (await asyncio.to_thread(read_manifest, manifest)).values() if v is not None]
    return {
        "dry_run": p.dry_run,
        "files": len(removed),
        "bytes": sum(removed),
        "failures": ctx.failures,
        "manifest": str(manifest),
        "directories_removed": pruned,
        "skipped": ctx.skipped_count,
    }


async def _clean(
    ctx: OperationContext,
    p: CleanupParams,
    base: Path,
    base_fd: int,
    manifest: Path,
    cutoff: float,
    own: list[Path],
) -> int:
    """List, then record and remove batch by batch (from ``base_fd``); how many empty directories went.
    A root's listing never enters ``own`` (Outlast's directories) nor lists the manifest."""
    if p.root is not None:
        keep_out = await asyncio.to_thread(_keep_out, own, manifest)
        own_dirs: list[str] = []
        vcs: list[str] = []
        listed = await asyncio.to_thread(list_matching, base, p.patterns, p.exclude, cutoff, keep_out, own_dirs, vcs)
        for rel in own_dirs:
            where = clean(str(base / rel)) if rel != "." else clean(str(base))
            ctx.log.info(f"skipped the Outlast state directory {where}: Outlast's own files are never cleaned here")
        for rel in vcs:
            ctx.log.info(f"skipped {clean(str(base / rel))}: a repository's metadata is never cleaned here")
    else:
        ops = await _list_operations(ctx, base)
        listed = await asyncio.to_thread(retention_candidates, base, ops, cutoff, ctx.id)
        listed = {r: i for r, i in listed.items() if base / r != manifest}
    # A line a kill tore is cut before this attempt appends: glued to its first line, that file was lost.
    await asyncio.to_thread(cut_torn_line, manifest)
    seen = {k for k, v in (await asyncio.to_thread(read_manifest, manifest)).items() if v is not None}
    # Removed by an earlier attempt after its newest checkpoint: in the manifest, gone from the listing. Counted
    # done here, as the attempt that removed them would have: left out, a resumed run said "513/513 items" where
    # 2,975 files had gone, and, meeting none of the done keys (gone too), that the item keys had changed.
    before = sorted(r for r in seen if r not in listed and not ctx.is_done(r))
    pending = [(r, i) for r, i in listed.items() if not ctx.is_done(r)]
    ctx.progress(total=len(pending) + len(before) + ctx.done, step="dry run" if p.dry_run else "removing")
    async for _rel in ctx.items(before):
        pass
    for n in range(0, len(pending), BATCH):
        batch = pending[n : n + BATCH]
        results = await asyncio.to_thread(_remove_batch, base_fd, batch, manifest, seen, p.dry_run)
        async for rel, size, err in ctx.items(results, key=lambda r: r[0]):
            if err == "gone":
                ctx.skip(rel, "gone since the listing")
            elif err in SKIPPED:
                ctx.log.warning(f"{clean(rel)}: {err}")
                ctx.skip(rel)
            elif err is not None:
                ctx.fail(rel, err)
            else:
                ctx.progress(bytes=ctx.metrics.get("bytes", 0) + size)
    if p.dry_run or p.root is not None:
        return 0
    emptied = {d for r in listed if r.startswith("outputs/") for d in _dirs_above(r, 0)}
    pruned, not_followed = await asyncio.to_thread(_prune_dirs, base_fd, base, "outputs", cutoff, emptied)
    for rel in not_followed:
        ctx.log.warning(f"{clean(rel)}: not removed: a directory on its path is no longer a real directory")
    return pruned
