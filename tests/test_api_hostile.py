"""A hostile API client against a real ``outlast serve``: where it may write, how much it may send."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_api import CLI, REPO, Server

pytest.importorskip("fastapi")
pytestmark = pytest.mark.timeout(180)


def listing(srv: Server) -> list[dict[str, Any]]:
    """What ``outlast ls --json`` would show, through the API: every record, newest first."""
    r = srv.http.get("/api/operations", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def one_line_detail(r: Any) -> str:
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail, detail
    return detail


# ---- 8. outputs an API client names are confined ------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("API_KEY = 'AKIAABCDEFGHIJKLMNOP'\n")
    return src


def test_outputs_outside_the_roots_are_refused_and_nothing_is_written(start_server, tmp_path: Path, tree: Path) -> None:
    srv = start_server()  # its engine runs work: anything accepted would be written at once
    outputs = srv.root / "state" / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / "escape").symlink_to(tmp_path, target_is_directory=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (outputs / "out.sarif").symlink_to(victim)
    scan = {"root": str(tree)}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/api/operations", {"type": "security_scan", "params": {**scan, "output": str(victim)}}, "output"),
        ("/api/operations/security/scan", {"params": {**scan, "output": str(victim), "format": "json"}}, "output"),
        (
            "/api/operations",
            {"type": "codebase_indexing", "params": {**scan, "output": str(tmp_path / "i.db")}},
            "output",
        ),
        ("/api/operations/codebase/index", {"params": {**scan, "output": str(tmp_path / "i.db")}}, "output"),
        (
            "/api/operations",
            {"type": "backup_operation", "params": {"source": str(tree), "destination": str(tmp_path / "copy")}},
            "destination",
        ),
        # `..` out of the outputs directory
        ("/api/operations/security/scan", {"params": {**scan, "output": f"{outputs}/../../../victim.txt"}}, "output"),
        # a relative path: resolved against the server's working directory, which is no output root
        ("/api/operations/security/scan", {"params": {**scan, "output": "victim.json"}}, "output"),
        # a symbolic link inside the outputs directory that points out of it
        ("/api/operations/security/scan", {"params": {**scan, "output": f"{outputs}/escape/victim.txt"}}, "output"),
        (
            "/api/operations",
            {"type": "backup_operation", "params": {"source": str(tree), "destination": f"{outputs}/escape/copy"}},
            "destination",
        ),
        # format=both writes the .json and .sarif siblings of the output: here a link out of the outputs
        ("/api/operations/security/scan", {"params": {**scan, "output": f"{outputs}/out"}}, "output"),
    ]
    before = listing(srv)
    for path, body, field in cases:
        r = srv.http.post(path, json=body)
        assert r.status_code == 403, (path, body, r.status_code, r.text)
        detail = one_line_detail(r)
        assert f"params.{field}" in detail and str(outputs.resolve()) in detail, detail
        assert "--allow-output-root" in detail
    assert listing(srv) == before  # nothing stored
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src", "victim.txt", "srv0"])


def test_outputs_under_the_roots_are_written(start_server, tmp_path: Path, tree: Path) -> None:
    allowed = tmp_path / "reports"
    allowed.mkdir()
    srv = start_server("--allow-output-root", str(allowed))
    outputs = (srv.root / "state" / "outputs").resolve()

    def run(path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = srv.http.post(path, json=body)
        assert r.status_code == 202, r.text
        op = srv.wait_status(r.json()["operation_id"], {"completed", "failed"}, timeout=90)
        assert op["status"] == "completed", op
        return op

    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / "link").symlink_to(allowed, target_is_directory=True)
    op = run("/api/operations/security/scan", {"params": {"root": str(tree), "output": f"{outputs}/one.json"}})
    assert json.loads((outputs / "one.json").read_text()) and (outputs / "one.sarif").exists()
    # Stored as the real path that was checked: whichever process runs it writes there.
    op = run(
        "/api/operations/codebase/index", {"params": {"root": str(tree), "output": f"{outputs}/../outputs/link/i.db"}}
    )
    assert op["params"]["output"] == str(allowed.resolve() / "i.db") and (allowed / "i.db").exists()
    op = run("/api/operations/security/scan", {"params": {"root": str(tree), "output": str(allowed / "r")}})
    assert (allowed / "r.json").exists() and (allowed / "r.sarif").exists()
    backup = {"source": str(tree), "destination": f"{outputs}/copy"}
    run("/api/operations", {"type": "backup_operation", "params": backup})
    assert (outputs / "copy" / "a.py").read_text() == (tree / "a.py").read_text()
    op = run("/api/operations/codebase/index", {"params": {"root": str(tree), "output": str(allowed / "i.sqlite")}})
    assert (allowed / "i.sqlite").exists()
    # Without an output, the defaults are in the outputs directory as before.
    run("/api/operations/security/scan", {"params": {"root": str(tree)}})


def test_serve_refuses_an_output_root_that_is_not_a_directory(tmp_path: Path) -> None:
    from tests.fixtures_api import api_env

    r = subprocess.run(
        [*CLI, "serve", "--port", "1", "--allow-output-root", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=api_env(tmp_path),
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 2 and "--allow-output-root" in r.stderr and "does not exist" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_every_builtin_param_is_known_to_write_or_not() -> None:
    """A new param of a built-in type fails this until it is classified: a place it writes is confined."""
    from engine.api.confine import WRITTEN
    from engine.api.routes import CODE_TYPES
    from engine.registry import handlers

    read_only = {
        "backup_operation": {"source", "verify", "chunk_checkpoint"},
        "codebase_indexing": {"root", "patterns", "exclude"},
        "security_scan": {"root", "rules", "format", "exclude", "max_file_size", "fail_on"},
        "demo": {"items", "seconds", "fail_every", "crash_at", "hang_at"},
    }
    for type_, h in handlers().items():
        if h.source == "builtin" and type_ not in CODE_TYPES:
            assert set(h.params.model_fields) == read_only[type_] | set(WRITTEN.get(type_, ())), type_


def test_openapi_documents_the_refusal(start_server) -> None:
    doc = start_server().http.get("/openapi.json").json()
    for path in ("/api/operations", "/api/operations/security/scan", "/api/operations/codebase/index"):
        assert "403" in doc["paths"][path]["post"]["responses"], path
    assert "--allow-output-root" in doc["info"]["description"]
