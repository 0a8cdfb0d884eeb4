"""kb_population resumed after its documents changed: what was read before the interruption is read again."""

from __future__ import annotations

from pathlib import Path

from engine import Status
from tests.fixtures_cli import Cli
from tests.fixtures_ops import checkpoint_state, kill_worker_when, resume, submit
from tests.test_op_kb import kb_rows, many_docs, run_here


def test_documents_changed_between_attempts_are_read_again(cli: Cli, tmp_path: Path) -> None:
    """A document done before a kill (or a pause resumed a week later) and edited before the resume kept the
    version read first: the completed knowledge base mixed the folder before the interruption with the
    folder after it, and `kb search` did not find the edit."""
    src = tmp_path / "docs"
    many_docs(src, 700)
    op_id = submit(cli, "kb_population", {"source": str(src), "kb": f"{tmp_path}/b.sqlite"}, "checkpoint_interval=0.05")
    killed = kill_worker_when(cli, op_id, lambda op: checkpoint_state(cli, op_id).get("added", 0) > 0)
    assert killed.status is Status.RUNNING, "the population finished before the kill"
    for i, doc in enumerate(sorted(src.rglob("*.md"))):  # every document, done or not, the same size or not
        doc.write_text(doc.read_text().replace("Document", "Dokument" if i % 2 else "Paper"))
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    whole = run_here(tmp_path, "kb_population", source=str(src), kb=f"{tmp_path}/a.sqlite").result
    assert kb_rows(f"{tmp_path}/b.sqlite") == kb_rows(f"{tmp_path}/a.sqlite")
    assert final["result"]["documents"] == whole["documents"] == 700
