"""The knowledge-base family on real folders through the real CLI: kb_population (every format, incremental,
search), kb_optimization, vector_indexing, semantic_analysis; each SIGKILLed mid-run and resumed to what an
uninterrupted run gives; bad params; the seed's knowledge-base/populate endpoint."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import InvalidInput, Status
from engine.operations._docs import NotADocument, chunk, sections
from engine.operations.kb_population import BATCH
from engine.operations.knowledge import KbError, open_kb, search, similar
from engine.registry import get_handler
from tests.fixtures_api import Server
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, checkpoint_state, done_keys, kill_worker_when, resume, run_here, submit

WORDS = (  # noqa: SIM905
    "engine checkpoint resume worker queue timeout profile store redis sqlite index chunk search vector topic "
    "document folder terminal dashboard progress operation stall deadline lease backup manifest"
).split()


def make_pdf(pages: list[str]) -> bytes:
    """A small valid PDF with one line of Helvetica text per page (pypdf reads it back)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>")
    font = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R"
            f" /Resources << /Font << /F1 {font} 0 R >> >> >>"
        )
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objs.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = b"%PDF-1.4\n"
    offsets = []
    for n, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def make_docs(root: Path) -> None:
    """One document of each kind, and the awkward ones: Latin-1 text, a binary .txt, a broken PDF, a FIFO."""
    (root / "guide").mkdir(parents=True)
    (root / "guide" / "install.md").write_text(
        "# Installing\n\nRun pip to install the engine.\n\n## Checkpoints\n\nA checkpoint keeps the state.\n"
    )
    (root / "guide" / "resume.rst").write_text(
        "======\nResume\n======\n\nIntro text.\n\nAfter a crash\n-------------\n\nThe worker resumes from the lease.\n"
    )
    (root / "page.html").write_text(
        "<html><head><title>Dashboard</title><style>p {color: red}</style></head><body>"
        "<h1>Keys</h1><p>Press p to pause &amp; r to resume.</p><script>var hidden = 1;</script></body></html>"
    )
    (root / "notes.txt").write_text("Plain notes about the redis store.\n")
    (root / "manual.pdf").write_bytes(make_pdf(["Stall timeout explained", "Deadline extension rules"]))
    (root / "legacy.txt").write_bytes("Caf\u00e9 cr\u00e8me in Latin-1.\n".encode("latin-1"))
    (root / "image.txt").write_bytes(b"\x89PNG\0\0\0binary")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf at all")
    (root / "code.py").write_text("print('not a document kind')\n")
    os.mkfifo(root / "pipe.md")


def test_sections_and_chunks_of_each_format() -> None:
    """The text each format gives, cut at paragraph, sentence and word boundaries, never across a heading."""
    title, secs = sections("markdown", b"# Title\n\nIntro.\n\n## Part\n\nBody one.\n\nBody two.\n")
    assert title == "Title" and [(h, " ".join(t.split())) for h, t in secs] == [
        ("Title", "Intro."),
        ("Part", "Body one. Body two."),
    ]
    title, secs = sections("rst", b"=====\nTitle\n=====\n\nText.\n\nSub\n---\n\nMore.\n")
    assert title == "Title" and [h for h, _ in secs] == ["Title", "Sub"] and "===" not in secs[0][1]
    title, secs = sections("html", b"<title>T</title><nav>x</nav><h2>H</h2><p>a&lt;b</p><style>p{}</style>")
    assert title == "T" and secs == [("H", secs[-1][1])] and "a<b" in secs[0][1] and "p{}" not in secs[0][1]
    with pytest.raises(NotADocument, match="binary"):
        sections("text", b"abc\0def")
    long = "First sentence here. " * 30 + "x" * 250
    pieces = chunk([("H", long + "\n\nShort para.")], 200)
    assert all(h == "H" and len(t) <= 200 for h, t in pieces)
    words = " ".join(t for _, t in pieces).split()
    assert words == ["First", "sentence", "here."] * 30 + ["x" * 200, "x" * 50, "Short", "para."]
    assert pieces[0][1].endswith("here.") and pieces[-1][1].endswith("Short para.")


def test_a_comment_in_a_markdown_code_block_is_no_heading(tmp_path: Path) -> None:
    """A shell comment in a fenced code block (```sh ... # after a resume ...```) was taken for a heading: the
    README's own chunks came back from `outlast kb search` under "README.md > after a resume, OUTLAST_CHECKPOINT
    holds ...", and the next section's text under it. A fence closes only with its own mark, as long or longer."""
    src = tmp_path / "docs"
    src.mkdir()
    (src / "guide.md").write_text(
        "# Guide\n\nIntro.\n\n```sh\n# a comment\necho hi\n~~~\n# still code\n```\n\nAfter the code.\n\n"
        "~~~~\n## not a heading\n~~~\n~~~~\n\n## Next\n\nLast words.\n"
    )
    kb = str(tmp_path / "kb.sqlite")
    run_here(tmp_path, "kb_population", source=str(src), kb=kb)
    rows = kb_rows(kb)
    assert rows["documents"]["guide.md"][1] == "Guide"
    chunks = [(h, t) for _, _, h, t, *_ in rows["chunks"]]
    assert [h for h, _ in chunks] == ["Guide", "Next"], chunks
    assert "# a comment" in chunks[0][1] and "# still code" in chunks[0][1] and "After the code." in chunks[0][1]
    assert "## not a heading" in chunks[0][1] and chunks[1][1] == "Last words."


def test_setext_markdown_headings_are_headings(tmp_path: Path) -> None:
    """A heading written over a line of ``=`` or ``-`` (Setext, as common as ``#`` in older READMEs) was text:
    the document was titled by its file name, its chunks had no heading and held the underline. A ``---`` after
    a blank line is a rule, not a heading's underline."""
    src = tmp_path / "docs"
    src.mkdir()
    (src / "old.md").write_bytes(
        b"Big Title\r\n=========\r\n\r\nIntro.\r\n\r\nSub part\r\n--------\r\n\r\nBody.\r\n\r\n---\r\n\r\nAfter.\r\n"
    )
    kb = str(tmp_path / "kb.sqlite")
    run_here(tmp_path, "kb_population", source=str(src), kb=kb)
    rows = kb_rows(kb)
    assert rows["documents"]["old.md"][1] == "Big Title"
    chunks = [(h, t) for _, _, h, t, *_ in rows["chunks"]]
    assert chunks == [("Big Title", "Intro."), ("Sub part", "Body.\n\n---\n\nAfter.")], chunks


def kb_rows(db: str | Path) -> dict[str, Any]:
    """Everything kb_population stores, by path (ids left out), and the full-text index's integrity."""
    con = sqlite3.connect(db)
    try:
        con.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
        docs = {r[0]: r[1:] for r in con.execute("SELECT path, kind, title, size, sha256, chunks FROM documents")}
        chunks = con.execute(
            "SELECT d.path, c.seq, c.heading, c.text, c.sha256, (SELECT x.seq || '@' || e.path FROM chunks x"
            " JOIN documents e ON e.id=x.doc WHERE x.id=c.dup_of) FROM chunks c JOIN documents d ON d.id=c.doc"
            " ORDER BY d.path, c.seq"
        ).fetchall()
        indexed = con.execute("SELECT COUNT(*) FROM chunks_fts_docsize").fetchone()[0]  # rows in the index itself
        return {"documents": docs, "chunks": chunks, "indexed": indexed}
    finally:
        con.close()


def hits(kb: str, query: str, raw: bool = False) -> list[tuple[str, str | None]]:
    con = open_kb(kb, create=False)
    try:
        return [(h["path"], h["heading"]) for h in search(con, query, 10, raw)]
    finally:
        con.close()


def test_every_format_searchable_then_incremental(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs"
    make_docs(src)
    kb = str(tmp_path / "kb.sqlite")
    rec = run_here(tmp_path, "kb_population", source=str(src), kb=kb)
    res = rec.result
    assert res["added"] == 6 and res["reused"] == 0 and res["failures"] == 2, res
    assert res["kinds"] == {"text": 2, "markdown": 1, "rst": 1, "html": 1, "pdf": 1}
    assert rec.progress.skipped == 1  # the FIFO: never opened (it would block)
    rows = kb_rows(kb)
    assert rows["documents"]["guide/resume.rst"][1] == "Resume" and rows["documents"]["page.html"][1] == "Dashboard"
    headings = {(p, h) for p, _, h, *_ in rows["chunks"]}
    assert {
        ("guide/install.md", "Checkpoints"),
        ("guide/resume.rst", "After a crash"),
        ("page.html", "Keys"),
    } <= headings
    assert {("manual.pdf", "page 1"), ("manual.pdf", "page 2")} <= headings
    texts = " ".join(t for *_, t, _, _ in rows["chunks"])
    assert "Café crème" in texts and "hidden" not in texts and "color" not in texts and "pause & r" in texts
    assert hits(kb, "lease worker") == [("guide/resume.rst", "After a crash")]
    assert hits(kb, "deadline") == [("manual.pdf", "page 2")]
    assert set(hits(kb, "resum* NOT crash", raw=True)) == {("page.html", "Keys"), ("guide/resume.rst", "Resume")}

    # The command: plain words, snippets; FTS5 syntax errors and a missing kb in one line, exit 2.
    r = cli("kb", "search", "lease", "worker", "--kb", kb, "--json")
    assert r.returncode == 0 and "[lease]" in json.loads(r.stdout)[0]["snippet"], r.stderr
    r = cli("kb", "search", "pause", "--kb", kb)
    assert r.returncode == 0 and "page.html > Keys" in r.stdout and "[pause]" in r.stdout, r.stderr
    r = cli("kb", "search", '"unclosed', "--fts", "--kb", kb)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "unterminated" in r.stderr
    r = cli("kb", "search", "x", "--kb", str(tmp_path / "none.sqlite"))
    assert r.returncode == 2 and "no knowledge base" in r.stderr

    (src / "notes.txt").write_text("Plain notes about the sqlite store.\n")
    (src / "guide" / "install.md").unlink()
    (src / "new.md").write_text("# New\n\nA new document about topics.\n")
    res2 = run_here(tmp_path, "kb_population", source=str(src), kb=kb).result
    assert (res2["added"], res2["reused"], res2["removed"], res2["documents"]) == (2, 4, 1, 6), res2
    after = kb_rows(kb)
    assert "guide/install.md" not in after["documents"] and "new.md" in after["documents"]
    assert hits(kb, "redis") == [] and hits(kb, "sqlite") == [("notes.txt", None)]
    assert hits(kb, "checkpoint") == []  # the deleted document's chunks left the index


SYLLABLES = "ka lo mi ne ru sa te vi bo da fe gu ha jo ki la mu no pe ri".split()  # noqa: SIM905
VOCAB = WORDS + [x + y + z for x in SYLLABLES for y in SYLLABLES for z in SYLLABLES[:5]]


def many_docs(root: Path, n: int, dup_every: int = 0) -> None:
    """``n`` Markdown documents of four sections of words drawn at random (seeded by the document number)
    from a vocabulary of 2,000; every ``dup_every``-th one a copy of the one before."""
    root.mkdir(parents=True)
    for i in range(n):
        src = i - 1 if dup_every and i % dup_every == 0 and i else i
        rnd = random.Random(src)
        body = "".join(f"## Part {s}\n\n" + " ".join(rnd.choices(VOCAB, k=40)) + f" n{src}.\n\n" for s in range(4))
        (root / f"d{i // 100}").mkdir(exist_ok=True)
        (root / f"d{i // 100}" / f"doc{i:04d}.md").write_text(f"# Document {src}\n\n{body}")


def test_kb_population_sigkilled_resumes_to_the_uninterrupted_kb(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs"
    # Four batches: the killed worker stands at its checkpoints and never completes (kill_worker_when), and
    # checkpoint_every gives it one however quick the batches: the kill lands mid-run at any size.
    n = 3 * BATCH + 8
    many_docs(src, n)
    (src / "bad.txt").write_bytes(b"\0binary")
    whole = run_here(tmp_path, "kb_population", source=str(src), kb=f"{tmp_path}/a.sqlite").result
    params = {"source": str(src), "kb": f"{tmp_path}/b.sqlite"}
    op_id = submit(cli, "kb_population", params, "checkpoint_interval=0.05", "checkpoint_every=50")
    killed = kill_worker_when(cli, op_id, lambda op: checkpoint_state(cli, op_id).get("added", 0) > 0)
    assert killed.status is Status.RUNNING, "the population finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert kb_rows(f"{tmp_path}/b.sqlite") == kb_rows(f"{tmp_path}/a.sqlite")
    strip = lambda r: {k: v for k, v in r.items() if k != "kb"}  # noqa: E731
    assert strip(final["result"]) == strip(whole)
    assert final["result"]["added"] == n == 200 and final["result"]["failures"] == 1


def populated(tmp_path: Path, n: int, dup_every: int = 0, chunk_size: int = 1500) -> Path:
    """A knowledge base of ``n`` generated documents (made once, then copied by the tests)."""
    src = tmp_path / "docs"
    many_docs(src, n, dup_every)
    kb = tmp_path / "base.sqlite"
    run_here(tmp_path, "kb_population", source=str(src), kb=str(kb), chunk_size=chunk_size)
    return kb


def copy_kb(kb: Path, to: Path) -> str:
    src, dst = sqlite3.connect(kb), sqlite3.connect(to)
    src.backup(dst)
    src.close()
    dst.close()
    return str(to)


def restore_kb(kb: str, to: str) -> None:
    """Put ``kb`` back at ``to`` (a backup restored between two attempts), its WAL and shared memory gone."""
    for suffix in ("-wal", "-shm"):
        Path(f"{to}{suffix}").unlink(missing_ok=True)
    copy_kb(kb, Path(to))


def test_kb_optimization_dedupes_and_resumes_to_the_uninterrupted_result(cli: Cli, tmp_path: Path) -> None:
    kb = populated(tmp_path, 600, dup_every=2, chunk_size=200)
    a, b = copy_kb(kb, tmp_path / "a.sqlite"), copy_kb(kb, tmp_path / "b.sqlite")
    before = kb_rows(a)
    res = run_here(tmp_path, "kb_optimization", kb=a).result
    assert res["duplicates"] > 0 and res["indexed"] == res["chunks"] - res["duplicates"]
    assert res["indexed"] == kb_rows(a)["indexed"] < before["indexed"]
    con = sqlite3.connect(a)
    dup = con.execute("SELECT d.path FROM chunks c JOIN documents d ON d.id=c.doc WHERE c.dup_of IS NULL").fetchall()
    assert not any(p.endswith("doc0002.md") for (p,) in dup)  # a copy: none of its chunks stays in the index
    con.close()
    op_id = submit(
        cli, "kb_optimization", {"kb": b, "merge_pages": 16}, "checkpoint_interval=0.05", "checkpoint_every=20"
    )
    killed = kill_worker_when(cli, op_id, lambda op: bool(checkpoint_state(cli, op_id)))
    assert killed.status is Status.RUNNING, "the optimisation finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert kb_rows(b) == kb_rows(a)
    keep = ("chunks", "indexed", "duplicate_groups", "duplicates", "failures")
    assert {k: final["result"][k] for k in keep} == {k: res[k] for k in keep}


def test_a_knowledge_base_restored_between_two_optimisations_is_deduped_whole(cli: Cli, tmp_path: Path) -> None:
    """The knowledge base put back as it was before the run between the kill and the resume: the groups the
    first attempt deduped were done, skipped by the resume, and their copies stayed in the index of a
    "completed" optimisation (searches showed each text as often as before)."""
    kb = populated(tmp_path, 200, dup_every=2, chunk_size=200)
    a, b = copy_kb(kb, tmp_path / "a.sqlite"), copy_kb(kb, tmp_path / "b.sqlite")
    run_here(tmp_path, "kb_optimization", kb=a)
    op_id = submit(cli, "kb_optimization", {"kb": b}, "checkpoint_interval=0.05", "checkpoint_every=20")
    deduped = lambda op: any(k.startswith("dedupe:") for k in done_keys(cli.state_dir, op.id))  # noqa: E731
    killed = kill_worker_when(cli, op_id, lambda op: op.status.value not in ("queued", "running") or deduped(op))
    assert killed.status is Status.RUNNING, "the optimisation finished before the kill"
    restore_kb(kb, b)
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert kb_rows(b) == kb_rows(a)


def test_kb_optimization_killed_after_a_dedupe_before_its_checkpoint_keeps_its_result(cli: Cli, tmp_path: Path) -> None:
    """Killed after its dedupe was committed and before a checkpoint said so (exactly: as the FTS merge's first
    statement starts), the resume measured the file's size "before" anew, grown by that dedupe (71 MB where
    the first attempt began at 35 MB, on a real knowledge base), and the groups deduped were no groups any more:
    "completed at 3/3 items" where the uninterrupted run did 104. The size and the groups are kept durably
    before anything changes, and the groups the database shows deduped are counted done."""
    kb = populated(tmp_path, 60, dup_every=2, chunk_size=200)
    ref, traced, killed = (copy_kb(kb, tmp_path / f"{n}.sqlite") for n in ("ref", "traced", "killed"))
    whole = run_here(tmp_path, "kb_optimization", kb=ref)
    trace = tmp_path / "trace.txt"
    args = ("--plugin", "tests.sqlite_die", "-q", "run", "kb_optimization", "-p", f"kb={traced}")
    r = cli(*args, env={**cli.env, "OUTLAST_TEST_DIE_DB": traced, "OUTLAST_TEST_DIE_TRACE": str(trace)})
    assert r.returncode == 0, r.stderr
    at = 1 + next(i for i, sql in enumerate(trace.read_text().splitlines()) if "VALUES ('merge'" in sql)
    args = ("--plugin", "tests.sqlite_die", "-q", "run", "kb_optimization", "-p", f"kb={killed}")
    r = cli(*args, env={**cli.env, "OUTLAST_TEST_DIE_DB": killed, "OUTLAST_TEST_DIE_AT": str(at)})
    assert r.returncode == -9, (r.returncode, r.stderr)
    op_id = next(op["id"] for op in json.loads(cli("--json", "ls").stdout) if op["type"] == "kb_optimization")
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    strip = lambda r: {k: v for k, v in r.items() if k != "kb"}  # noqa: E731
    assert strip(final["result"]) == strip(whole.result)
    done = whole.result["duplicate_groups"] + 3  # each group, then merge, optimize and vacuum
    assert (final["progress"]["done"], final["progress"]["total"]) == (done, done) == (whole.progress.done, done)


def vectors(db: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return [
            *con.execute("SELECT chunk, term, round(w, 9) FROM vec_terms ORDER BY chunk, term"),
            *con.execute("SELECT chunk, sha256, round(norm, 9) FROM vec_chunks ORDER BY chunk"),
            *con.execute("SELECT term, df, round(idf, 9) FROM vec_df ORDER BY term"),
        ]
    finally:
        con.close()


def test_vector_indexing_resumes_to_the_uninterrupted_vectors_and_answers_similar(cli: Cli, tmp_path: Path) -> None:
    kb = populated(tmp_path, 250, chunk_size=200)
    a, b = copy_kb(kb, tmp_path / "a.sqlite"), copy_kb(kb, tmp_path / "b.sqlite")
    con = open_kb(a, create=False)
    with pytest.raises(KbError, match="no vectors yet"):
        similar(con, "lease")
    con.close()
    whole = run_here(tmp_path, "vector_indexing", kb=a).result
    assert whole["made"] == whole["chunks"] > 1000
    op_id = submit(cli, "vector_indexing", {"kb": b}, "checkpoint_interval=0.05", "checkpoint_every=20")
    killed = kill_worker_when(cli, op_id, lambda op: bool(checkpoint_state(cli, op_id)) or (op.checkpoint_seq or 0) > 0)
    assert killed.status is Status.RUNNING, "the vectors were finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert vectors(b) == vectors(a)
    strip = lambda r: {k: v for k, v in r.items() if k != "kb"}  # noqa: E731
    assert strip(final["result"]) == strip(whole)
    r = cli("kb", "similar", "document", "17", "n17", "--kb", b, "--json", "--limit", "3")
    hits = json.loads(r.stdout)
    assert hits and hits[0]["path"] == "d0/doc0017.md", hits  # "n17" is in that document only
    assert hits == sorted(hits, key=lambda h: -h["score"]) and 0 < hits[0]["score"] <= 1
    again = run_here(tmp_path, "vector_indexing", kb=b).result
    assert again["made"] == 0 and again["reused"] == whole["chunks"]


def test_a_knowledge_base_restored_between_two_vector_attempts_gets_every_vector(cli: Cli, tmp_path: Path) -> None:
    """The knowledge base put back as it was before the run (a copy restored) between the kill and the resume:
    the chunks the first attempt counted were done, skipped by the resume, and left without a vector in a
    "completed" run (``kb similar`` never found them)."""
    kb = populated(tmp_path, 120, chunk_size=200)
    a, b = copy_kb(kb, tmp_path / "a.sqlite"), copy_kb(kb, tmp_path / "b.sqlite")
    run_here(tmp_path, "vector_indexing", kb=a)
    op_id = submit(cli, "vector_indexing", {"kb": b}, "checkpoint_interval=0.05", "checkpoint_every=20")
    killed = kill_worker_when(cli, op_id, lambda op: bool(checkpoint_state(cli, op_id)) or (op.checkpoint_seq or 0) > 0)
    assert killed.status is Status.RUNNING, "the vectors were finished before the kill"
    restore_kb(kb, b)
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert vectors(b) == vectors(a)


def sem_tables(db: str) -> dict[str, list[tuple]]:
    con = sqlite3.connect(db)
    try:
        return {
            t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall()
            for t in ("sem_keywords", "sem_topics", "sem_duplicates")
        } | {"docs": con.execute("SELECT key, sha256, words, terms, sketch FROM sem_docs ORDER BY key").fetchall()}
    finally:
        con.close()


def test_a_knowledge_base_restored_between_two_semantic_attempts_is_analysed_whole(cli: Cli, tmp_path: Path) -> None:
    """The knowledge base put back as it was before the run between the kill and the resume: the documents the
    first attempt analysed were done, skipped by the resume, and a "completed" analysis had no keywords for
    them and left them out of its topics and duplicates."""
    kb = populated(tmp_path, 200, dup_every=50)
    a, b = copy_kb(kb, tmp_path / "a.sqlite"), copy_kb(kb, tmp_path / "b.sqlite")
    res = run_here(tmp_path, "semantic_analysis", kb=a).result
    op_id = submit(cli, "semantic_analysis", {"kb": b}, "checkpoint_interval=0.05", "checkpoint_every=20")
    killed = kill_worker_when(cli, op_id, lambda op: checkpoint_state(cli, op_id).get("analysed", 0) > 0)
    assert killed.status is Status.RUNNING, "the analysis finished before the kill"
    restore_kb(kb, b)
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert sem_tables(b) == sem_tables(a)
    assert final["result"]["topics"] == res["topics"]


def test_semantic_analysis_of_a_tree_resumes_to_the_uninterrupted_analysis(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs"
    many_docs(src, 500, dup_every=50)
    (src / "d0" / "doc0002.md").write_text((src / "d0" / "doc0001.md").read_text() + "\nOne more line at the end.\n")
    (src / "logo.png").write_bytes(b"\x89PNG\0\0")
    params = {"root": str(src)}
    res = run_here(tmp_path, "semantic_analysis", **params, output=f"{tmp_path}/a.db").result
    pairs = {
        (a.rsplit("/", 1)[-1], b.rsplit("/", 1)[-1]) for _, a, b, _ in sem_tables(f"{tmp_path}/a.db")["sem_duplicates"]
    }
    assert ("doc0001.md", "doc0002.md") in pairs and ("doc0049.md", "doc0050.md") in pairs
    assert ("doc0003.md", "doc0004.md") not in pairs and res["duplicates"] == len(pairs) == 10
    kws = [t for _, k, _, t, _ in sem_tables(f"{tmp_path}/a.db")["sem_keywords"] if k == "d0/doc0017.md"]
    assert kws[0] == "n17" and len(kws) == 10  # the term no other document has
    op_id = submit(
        cli,
        "semantic_analysis",
        {**params, "output": f"{tmp_path}/b.db"},
        "checkpoint_interval=0.05",
        "checkpoint_every=20",
    )
    killed = kill_worker_when(cli, op_id, lambda op: checkpoint_state(cli, op_id).get("analysed", 0) > 0)
    assert killed.status is Status.RUNNING, "the analysis finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert sem_tables(f"{tmp_path}/b.db") == sem_tables(f"{tmp_path}/a.db")
    strip = lambda r: {k: v for k, v in r.items() if k != "results"}  # noqa: E731
    assert strip(final["result"]) == strip(res)
    assert final["progress"]["skipped"] == 1  # the binary file


def test_semantic_analysis_of_a_tree_leaves_pictures_and_markup_out_of_its_topics(tmp_path: Path) -> None:
    """On this repository, whose snapshot SVGs hold thousands of tags, the topics were "fill", "rect",
    "height", "clip-path": an SVG is skipped as a picture, and a file of markup without a document suffix
    (XML) is read for its text, without its tags and attributes."""
    src = tmp_path / "repo"
    src.mkdir()
    for i in range(6):
        (src / f"mod{i}.py").write_text(
            f"def schedule_checkpoint{i}(queue, worker):\n    return queue.resume(worker)\n"
        )
        rects = "".join(f'<rect fill="#fff" x="{n}" y="{n}" height="24.65" clip-path="url(#c)"/>' for n in range(50))
        (src / f"shot{i}.svg").write_text(f'<svg xmlns="http://www.w3.org/2000/svg">{rects}</svg>\n')
        (src / f"layout{i}.xml").write_text(
            f"<layout><rect fill='#000' height='3'>window pane</rect>{rects}</layout>\n"
        )
    res = run_here(tmp_path, "semantic_analysis", root=str(src)).result
    topics = {t for t, _n in res["topics"]}
    assert not topics & {"rect", "fill", "height", "clip-path", "svg", "xmlns", "url"}, res["topics"]
    assert {"queue", "worker", "window", "pane"} <= topics, res["topics"]
    assert res["documents"] == 12 and res["analysed"] == 12, res


def test_semantic_analysis_of_the_kb(tmp_path: Path) -> None:
    kb = populated(tmp_path, 40, dup_every=10)
    res = run_here(tmp_path, "semantic_analysis", kb=str(kb)).result
    assert res["documents"] == 40 and res["duplicates"] == 3 and res["analysed"] == 40, res
    again = run_here(tmp_path, "semantic_analysis", kb=str(kb)).result
    assert again["reused"] == 40 and again["topics"] == res["topics"] and again["duplicates"] == 3


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    """One run through the command per type (one line, exit 2, nothing stored); the other cases in-process."""
    (tmp_path / "file.txt").write_text("not a database\n")
    bad_params(cli, "kb_population", {"source": str(tmp_path / "nope")}, "source")
    bad_params(cli, "kb_optimization", {"kb": str(tmp_path / "file.txt")}, "not a knowledge base")
    bad_params(cli, "vector_indexing", {"min_df": 0}, "min_df")
    bad_params(cli, "semantic_analysis", {"patterns": ["*.md"]}, "go with root")
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("kb_population", {}, "source"),
        ("kb_population", {"source": str(tmp_path), "kb": str(tmp_path / "file.txt")}, "kb"),
        ("kb_population", {"source": str(tmp_path), "chunk_size": 10}, "chunk_size"),
        ("kb_population", {"source": str(tmp_path), "colour": 1}, "colour"),
        ("kb_optimization", {"kb": str(tmp_path / "none.sqlite")}, "kb"),
        ("kb_optimization", {"merge_pages": 1}, "merge_pages"),
        ("vector_indexing", {"kb": str(tmp_path / "none.sqlite")}, "kb"),
        ("semantic_analysis", {"root": str(tmp_path / "nope")}, "root"),
        ("semantic_analysis", {"root": str(tmp_path), "kb": str(tmp_path / "file.txt")}, "kb"),
        ("semantic_analysis", {"root": str(tmp_path), "threshold": 2}, "threshold"),
    ]
    for type_, params, expect in cases:
        with pytest.raises(InvalidInput) as e:
            get_handler(type_).parse_params(params)
        assert expect in str(e.value) and "\n" not in str(e.value), (type_, params, e.value)


def test_the_seed_populate_endpoint_answers_202_and_the_kb_is_searchable(api: Server, tmp_path: Path) -> None:
    src = tmp_path / "docs"
    make_docs(src)
    (src / "pipe.md").unlink()
    r = api.http.post("/api/operations/knowledge-base/populate", json={"params": {"source": str(src)}})
    assert r.status_code == 202, r.text
    op = api.wait_status(r.json()["operation_id"], {"completed", "failed"}, timeout=60)
    assert op["status"] == "completed" and op["result"]["added"] == 6, op
    assert Path(op["result"]["kb"]).parent == api.root / "state" / "outputs"
    r = api.http.post(
        "/api/operations/knowledge-base/populate", json={"params": {"source": str(src), "kb": str(tmp_path / "x.db")}}
    )
    assert r.status_code == 403 and "params.kb" in r.json()["detail"]


def test_the_types_are_built_in(cli: Cli) -> None:
    types = {t["type"]: t for t in json.loads(cli("--json", "types").stdout)}
    for t in ("kb_population", "kb_optimization", "vector_indexing", "semantic_analysis"):
        assert types[t]["builtin"] and types[t]["runnable"], types[t]


@pytest.mark.parametrize("type_", ["vector_indexing", "kb_optimization", "semantic_analysis"])
def test_a_missing_default_kb_is_refused_in_one_line_and_nothing_is_stored(
    cli: Cli, state_dir: Path, type_: str
) -> None:
    """Without ``kb`` and with no default knowledge base, the operation was stored and then failed, with a
    "resume with" hint no resume could help: now the submit is refused (exit 2), nothing stored."""
    r = cli("run", type_)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)
    assert "kb: not given, and the default knowledge base" in r.stderr and "outlast run kb_population" in r.stderr
    assert json.loads(cli("--json", "ls").stdout) == []
    (state_dir / "outputs").mkdir(parents=True, exist_ok=True)
    (state_dir / "outputs" / "kb.sqlite").write_text("not a database")
    r = cli("run", type_)
    assert r.returncode == 2 and "kb" in r.stderr and json.loads(cli("--json", "ls").stdout) == [], r.stderr


_OPEN_SHORT = """
import resource, sqlite3, sys
from engine.operations.knowledge import open_kb
from engine.shortage import count_open_files, ran_short
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
for room in (1, 2, 3):
    resource.setrlimit(resource.RLIMIT_NOFILE, (count_open_files() + room, hard))
    try:
        open_kb(sys.argv[1]).close()
        said = "opened"
    except Exception as e:
        said = f"{'short' if ran_short(e) else 'not short'}: {type(e).__name__}: {e}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(said)
"""


def test_a_knowledge_base_opened_with_no_descriptor_left_says_so(tmp_path: Path) -> None:
    """Under ``ulimit -n 12`` kb_population failed "unable to open database file" (SQLite's word for an open
    that failed, with no errno): nothing said the process had run out of file descriptors, and the attempt
    was not queued again as one that ran short is. Opened with one, two, three descriptors left here."""
    run = subprocess.run(
        [sys.executable, "-c", _OPEN_SHORT, str(tmp_path / "kb.db")], capture_output=True, text=True, timeout=60
    )
    said = run.stdout.splitlines()
    assert run.returncode == 0 and len(said) == 3, (run.stdout, run.stderr)
    assert all(s == "opened" or s.startswith("short: OSError: [Errno 24] Too many open files") for s in said), said
    assert any("ran out of file descriptors" in s and "kb.db" in s for s in said), said
