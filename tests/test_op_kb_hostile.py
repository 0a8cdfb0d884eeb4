"""kb_population and kb_optimization against a hostile tester: a rerun drops only documents gone from the folder
(not those a narrower run did not read); a folder or file swapped after the listing is never read through a
symlink, nor a FIFO opened so that it blocks; kb_optimization without a knowledge base is refused at once."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from engine import Engine, Operation, OperationSpec, Status, load_settings, open_store
from engine.operations import kb_population
from engine.operations.kb_optimization import KbOptimizeParams
from engine.operations.knowledge import open_kb
from engine.profiles import one_line
from engine.text import stored_name
from tests.fixtures_cli import Cli
from tests.fixtures_disk import mount
from tests.fixtures_ops import bad_params, in_process


def run_here(base: Path, type_: str, **params: Any) -> Operation:
    """Run an operation to its end in this process, with an engine on its own state dir under ``base``."""

    async def go() -> Operation:
        settings = load_settings(state_dir=base / "state", grace_period=2.0)
        async with Engine(store=open_store(settings.state_dir), settings=settings) as engine:
            op = await engine.submit(OperationSpec(type=type_, params=params))
            return await engine.wait(op.id, timeout=60)

    return asyncio.run(go())


def docs(kb: Path) -> dict[str, str]:
    """path -> the text of its chunks, of every stored document."""
    con = sqlite3.connect(kb)
    try:
        rows = con.execute(
            "SELECT d.path, group_concat(c.text, ' ') FROM documents d LEFT JOIN chunks c ON c.doc = d.id"
            " GROUP BY d.id ORDER BY d.path"
        )
        return {p: t or "" for p, t in rows}
    finally:
        con.close()


def test_a_narrower_rerun_keeps_what_it_did_not_read_and_drops_what_is_gone(tmp_path: Path) -> None:
    """A rerun with patterns=["doc0.md"] dropped the other five documents, one with max_bytes=10 emptied the
    knowledge base, and a document that failed to parse lost its stored version: only documents whose
    file is gone from the folder are dropped now (names with a backslash or a byte that is not UTF-8 too)."""
    src, kb = tmp_path / "src", tmp_path / "kb.sqlite"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        (src / f"doc{i}.md").write_text(f"# Doc {i}\n\nalpha beta {i}\n")
    (src / "notes.txt").write_text("important notes zeta\n")
    (src / "sub" / "deep.md").write_text("# Deep\n\nnested words\n")
    odd = os.fsdecode(b"odd\\name\xff.md")
    (src / odd).write_text("# Odd\n\nodd words\n")
    everything = sorted(["doc0.md", "doc1.md", "doc2.md", "notes.txt", "sub/deep.md", "odd\\\\name\\xff.md"])

    def run(**params: Any) -> dict:
        rec = run_here(tmp_path, "kb_population", source=str(src), kb=str(kb), **params)
        assert rec.status is Status.COMPLETED, rec.error
        return rec.result

    run()
    full = docs(kb)
    assert sorted(full) == everything
    res = run(patterns=["doc0.md"])
    assert res["removed"] == 0 and docs(kb) == full, res
    res = run(exclude=["*.md"])
    assert res["removed"] == 0 and docs(kb) == full, res
    res = run(max_bytes=10)  # every file skipped as too large
    assert res["removed"] == 0 and docs(kb) == full, res
    (src / "notes.txt").write_bytes(b"\x00\x01binary\x00" * 10)  # fails as a binary .txt: the stored one stays
    res = run()
    assert res["removed"] == 0 and docs(kb) == full and res["failures"] == 1, res
    (src / "doc1.md").unlink()
    (src / odd).unlink()
    (src / "sub" / "deep.md").unlink()
    (src / "sub").rmdir()
    (src / "sub").write_text("a file where the folder was\n")
    res = run(patterns=["doc0.md"])  # gone from the folder: dropped, whatever this run reads
    assert res["removed"] == 3, res
    assert sorted(docs(kb)) == ["doc0.md", "doc2.md", "notes.txt"]


def listing(monkeypatch: pytest.MonkeyPatch, rels: list[str]) -> None:
    """The listing kb_population gets: ``rels``, as if the folder held them when it was listed (what is
    there when they are read is what the test swapped in since)."""

    async def listed(*_args: Any, **_kw: Any) -> list[str]:
        return list(rels)

    monkeypatch.setattr(kb_population, "list_files", listed)


def test_a_folder_swapped_for_a_symlink_after_the_listing_is_not_read_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sub`` was a folder when listed and is a symlink to a folder outside ``source`` when read: its file
    was read (the lstat of ``src/sub/doc.md`` follows ``sub``) and stored. Skipped now."""
    src, outside, kb = tmp_path / "src", tmp_path / "outside", tmp_path / "kb.sqlite"
    src.mkdir()
    outside.mkdir()
    (outside / "doc.md").write_text("# Secret\n\nsecret words outside the source\n")
    (src / "sub").symlink_to(outside)
    (src / "ok.md").write_text("# Ok\n\nplain words\n")
    listing(monkeypatch, ["ok.md", "sub/doc.md"])
    rec = run_here(tmp_path, "kb_population", source=str(src), kb=str(kb))
    assert rec.status is Status.COMPLETED, rec.error
    assert "secret" not in " ".join(docs(kb).values()) and list(docs(kb)) == ["ok.md"]
    assert rec.progress.skipped == 1


def test_a_fifo_swapped_in_after_the_check_is_never_read_or_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``doc.md`` was a regular file when checked (lstat) and is a FIFO when opened: the open waited for a
    writer (for ever, with none), then read whatever the writer sent as a document. Now the open does not
    wait and the descriptor is checked: skipped, nothing read. (A writer thread stands ready, so the
    unfixed code read "# Fifo ..." instead of hanging the test.)"""
    src, kb = tmp_path / "src", tmp_path / "kb.sqlite"
    src.mkdir()
    fifo = src / "doc.md"
    os.mkfifo(fifo)
    (tmp_path / "regular.md").write_text("# Regular\n")
    real_lstat = os.lstat

    def lstat(path: Any, *a: Any, **kw: Any) -> os.stat_result:  # the check saw a regular file
        return real_lstat(tmp_path / "regular.md") if os.fspath(path) == str(fifo) else real_lstat(path, *a, **kw)

    def writer() -> None:
        try:
            with open(fifo, "wb") as fh:  # waits for a reader
                fh.write(b"# Fifo\n\nwords from a pipe\n")
        except OSError:  # the reader closed it unread
            pass

    monkeypatch.setattr(os, "lstat", lstat)
    listing(monkeypatch, ["doc.md"])
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        rec = run_here(tmp_path, "kb_population", source=str(src), kb=str(kb))
    finally:
        monkeypatch.undo()
        if t.is_alive():  # no reader ever came: let the writer go
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            t.join(10)
            os.close(fd)
    assert rec.status is Status.COMPLETED, rec.error
    assert docs(kb) == {} and rec.progress.skipped == 1, docs(kb)


def test_kb_optimization_without_a_kb_is_refused_when_the_default_one_is_missing(tmp_path: Path) -> None:
    """No ``kb`` and no default knowledge base: the operation was stored, then failed (KbError) with a "resume
    with" hint no resume could help. The params refuse it in one line when the caller names its state dir
    (validation context ``state_dir``); a default that exists, or a ``kb`` given, passes."""
    state = tmp_path / "state"
    with pytest.raises(ValidationError) as e:
        KbOptimizeParams.model_validate({}, context={"state_dir": str(state)})
    assert len(one_line(e.value).splitlines()) == 1 and "default knowledge base" in one_line(e.value)
    (state / "outputs").mkdir(parents=True)
    (state / "outputs" / "kb.sqlite").write_text("not a database\n")
    with pytest.raises(ValidationError, match="not a knowledge base"):
        KbOptimizeParams.model_validate({}, context={"state_dir": str(state)})
    (state / "outputs" / "kb.sqlite").unlink()
    open_kb(state / "outputs" / "kb.sqlite").close()
    assert KbOptimizeParams.model_validate({}, context={"state_dir": str(state)}).kb is None
    assert KbOptimizeParams.model_validate({}).kb is None  # no state dir named: the run finds out, as before


def test_unstored_name_inverts_stored_name_and_leaves_other_names_as_they_are() -> None:
    """The finish checks each unread document's file by the name stored_name gave it; a stored name it did
    not write (an older knowledge base's, one edited by hand) is taken as it is, never a crash of the run."""
    for raw in [b"plain.md", b"a\\b.md", b"x\xff\xfe.md", b"\\x41.md", b"d/\\\\/e\xc3.md", "café".encode()]:
        name = os.fsdecode(raw)
        assert kb_population.unstored_name(stored_name(name)) == name, raw
    for odd in ["a\\b", "a\\", "x\\xzz", "x\\x4", "x\\uZZZZ"]:
        assert kb_population.unstored_name(odd) == odd
    assert not kb_population._gone(Path("/") / kb_population.unstored_name("x\\x41"))  # unencodable: kept


def test_a_knowledge_base_being_made_is_not_yet_one_and_appears_whole(tmp_path: Path) -> None:
    """A search during a first kb_population was told the file "is not a knowledge base": it is an empty
    file, then an SQLite database with no table, then tables appeared one statement at a time."""
    from engine.operations.knowledge import KbError

    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(KbError, match=r"no knowledge base at .* yet: it is being made"):
        open_kb(empty, create=False)
    sqlite3.connect(tmp_path / "bare.sqlite").execute("PRAGMA journal_mode=WAL").close()
    with pytest.raises(KbError, match=r"no knowledge base at .* yet: it is being made"):
        open_kb(tmp_path / "bare.sqlite", create=False)
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE t (x)")
    other.close()
    with pytest.raises(KbError, match="not a knowledge base"):
        open_kb(tmp_path / "other.sqlite", create=False)
    statements: list[str] = []
    con = sqlite3.connect(tmp_path / "traced.sqlite")
    con.set_trace_callback(statements.append)
    original = sqlite3.connect
    try:
        sqlite3.connect = lambda *a, **k: con  # type: ignore[assignment]
        open_kb(tmp_path / "traced.sqlite")
    finally:
        sqlite3.connect = original  # type: ignore[assignment]
    creates = [i for i, s in enumerate(statements) if s.lstrip().upper().startswith("CREATE")]
    begin = next(i for i, s in enumerate(statements) if s.strip().rstrip(";").upper() == "BEGIN")
    commit = next(i for i, s in enumerate(statements) if s.strip().rstrip(";").upper() == "COMMIT")
    assert creates and begin < min(creates) and max(creates) < commit, statements  # one transaction


def _other_programs_db(path: Path) -> dict[str, bytes]:
    """Another program's SQLite database (rollback journal, as most are): its directory, byte for byte."""
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('precious');")
    con.close()
    return {p.name: p.read_bytes() for p in path.parent.iterdir()}


@pytest.mark.parametrize("type_", ["kb_population", "vector_indexing", "kb_optimization", "semantic_analysis"])
def test_another_programs_database_as_the_kb_is_refused_at_submit_and_left_as_it_was(
    cli: Cli, tmp_path: Path, type_: str
) -> None:
    """kb_population wrote its tables beside another program's (its SQLite header was all it checked); the
    others were stored, to fail when run. Each is refused in one line now, and the file is left as it was."""
    other = tmp_path / "app" / "app.db"
    other.parent.mkdir()
    before = _other_programs_db(other)
    params = {"kb": str(other), **({"source": str(tmp_path)} if type_ == "kb_population" else {})}
    expect = "another program's database" if type_ == "kb_population" else "not a knowledge base"
    bad_params(cli, type_, params, expect)
    assert {p.name: p.read_bytes() for p in other.parent.iterdir()} == before


def test_searching_another_programs_database_leaves_it_as_it_was(cli: Cli, tmp_path: Path) -> None:
    """``outlast kb search --kb app.db`` set ``journal_mode=WAL`` on it before finding it was no knowledge
    base: another program's database was turned into a WAL one (its header rewritten)."""
    other = tmp_path / "app" / "app.db"
    other.parent.mkdir()
    before = _other_programs_db(other)
    code, _, err = in_process(cli, "kb", "search", "precious", "--kb", str(other))
    assert code == 2 and "not a knowledge base" in err and len(err.strip().splitlines()) == 1, (code, err)
    assert {p.name: p.read_bytes() for p in other.parent.iterdir()} == before


def test_a_document_whose_stat_says_empty_is_read_to_its_end(tmp_path: Path) -> None:
    """/proc/sys's files say 0 bytes, hold text, and refuse a read of max_bytes (64 MB) at once: each was an
    item failure, "unreadable: Cannot allocate memory". Read in steps, they are documents."""
    if not Path("/proc/sys/kernel/ostype").is_file():
        pytest.skip("no /proc/sys")
    op = run_here(tmp_path, "kb_population", source="/proc/sys/kernel", patterns=["ostype"])
    assert op.status is Status.COMPLETED and op.result["added"] == 1 and op.result["failures"] == 0, op.result


@pytest.mark.parametrize("type_", ["vector_indexing", "kb_optimization", "semantic_analysis"])
def test_a_read_only_kb_is_refused_at_once(cli: Cli, small_fs: Path, tmp_path: Path, type_: str) -> None:
    """A knowledge base on a read-only file system: refused before anything is stored, as every other output
    is. It was stored and failed at once ("KbError: ...: unable to open database file (at knowledge.py:NNN)"),
    with a resume hint no resume could help."""
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text("# a\n\nsome words\n")
    kb = small_fs / "kb.sqlite"
    assert run_here(tmp_path / "made", "kb_population", source=str(src), kb=str(kb)).status is Status.COMPLETED
    r = mount("-o", "remount,ro", str(small_fs))
    assert r.returncode == 0, r.stderr
    bad_params(cli, type_, {"kb": str(kb)}, "its directory is not writable")


def test_a_read_only_kb_is_searched(cli: Cli, small_fs: Path, tmp_path: Path) -> None:
    """``outlast kb search`` and ``kb similar`` read a knowledge base on a read-only file system: opened to
    write, SQLite said "unable to open database file" (exit 2), though a search writes nothing."""
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text("# alpha\n\nthe quick brown fox\n")
    (src / "b.md").write_text("# beta\n\na lazy dog sleeps\n")
    kb = small_fs / "kb.sqlite"
    assert run_here(tmp_path / "made", "kb_population", source=str(src), kb=str(kb)).status is Status.COMPLETED
    assert run_here(tmp_path / "made", "vector_indexing", kb=str(kb)).status is Status.COMPLETED
    r = mount("-o", "remount,ro", str(small_fs))
    assert r.returncode == 0, r.stderr
    for command in ("search", "similar"):
        r = cli("--json", "kb", command, "--kb", str(kb), "fox")
        assert r.returncode == 0, r.stderr
        assert [h["path"] for h in json.loads(r.stdout)][:1] == ["a.md"], r.stdout
