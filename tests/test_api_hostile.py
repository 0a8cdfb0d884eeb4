"""A hostile API client against a real ``outlast serve``: where it may write, how much it may send."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests import zygote
from tests.fixtures_api import REPO, Server, poll

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
        # refused before the params are validated: the answer tells nothing about what exists out there
        ("/api/operations/security/scan", {"params": {"root": "/nonexistent", "output": "/nowhere/x.json"}}, "output"),
        ("/api/operations", {"type": "backup_operation", "params": {"destination": "/nowhere"}}, "destination"),
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


def test_outputs_that_are_no_path_at_all_are_refused_in_one_line(observer: Server, tree: Path) -> None:
    """The root directory (no name to add .json to), a NUL byte, an unknown ~user: refused, never a 500."""
    srv = observer
    before = listing(srv)
    for value in ("/", ".", "\x00", "a\x00b", "~no-such-user-here/x", "/\x00/.."):
        for path, body, field in (
            ("/api/operations/security/scan", {"params": {"root": str(tree), "output": value}}, "output"),
            ("/api/operations", {"type": "security_scan", "params": {"root": str(tree), "output": value}}, "output"),
            ("/api/operations/codebase/index", {"params": {"root": str(tree), "output": value}}, "output"),
            (
                "/api/operations",
                {"type": "backup_operation", "params": {"source": str(tree), "destination": value}},
                "destination",
            ),
        ):
            r = srv.http.post(path, json=body)
            assert r.status_code == 403, (value, path, r.status_code, r.text)
            assert f"params.{field}" in one_line_detail(r)
    assert listing(srv) == before


def test_a_fresh_state_dirs_outputs_take_the_first_output_a_client_names(start_server, tree: Path) -> None:
    """The refusal says to write under the outputs directory, which only an operation's first default
    output made: a new server's first client naming a file there was told "its directory does not exist"."""
    srv = start_server()
    outputs = (srv.root / "state" / "outputs").resolve()
    body = {"params": {"root": str(tree), "output": f"{outputs}/i.db"}}
    r = srv.http.post("/api/operations/codebase/index", json=body)
    assert r.status_code == 202, r.text
    op = srv.wait_status(r.json()["operation_id"], {"completed", "failed"}, timeout=90)
    assert op["status"] == "completed", op
    assert (outputs / "i.db").is_file() and outputs.stat().st_mode & 0o777 == 0o700


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

    r = zygote.run(
        ["serve", "--port", "1", "--allow-output-root", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=api_env(tmp_path),
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 2 and "--allow-output-root" in r.stderr and "does not exist" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---- 9. request size limits -------------------------------------------------------------------------


def raw_request(srv: Server, head: str, chunks: list[bytes] = (), timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """Send a request by hand (a lying Content-Length, a chunked body); the status and JSON body answered.

    The server may answer and close before the client has sent everything: that is the point.
    """
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as s:
        s.sendall(head.encode())
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
                got = s.recv(65536)
                if not got:
                    break
                data += got
        except ConnectionResetError:
            pass
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line, "no answer"
    body = rest.split(b"\r\n\r\n", 1)[1]
    return int(status_line.split()[1]), json.loads(body[: _length(data)])


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


def _head(srv: Server, framing: str) -> str:
    return (
        f"POST /api/operations HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    )


def test_a_body_over_the_limit_is_refused_before_it_is_read(observer: Server) -> None:
    srv = observer  # nothing runs: what is accepted stays queued
    before = listing(srv)
    # A Content-Length of 300 MB and one byte sent: answered at once, not after waiting for the rest.
    status, body = raw_request(srv, _head(srv, "Content-Length: 314572800"), [b"{"])
    assert status == 413 and "1 MiB" in body["detail"], body
    # A chunked body of valid JSON (a 4 MiB tag): refused once the bytes received pass the limit.
    payload = b'{"type": "demo", "tags": {"big": "' + b"x" * (4 << 20) + b'"}}'
    chunks = [b"%x\r\n%s\r\n" % (len(c), c) for c in (payload[i : i + 65536] for i in range(0, len(payload), 65536))]
    status, body = raw_request(srv, _head(srv, "Transfer-Encoding: chunked"), [*chunks, b"0\r\n\r\n"])
    assert status == 413 and "1 MiB" in body["detail"], body
    # An ordinary client sending 2 MiB of JSON
    r = srv.http.post("/api/operations", json={"type": "demo", "name": "n" * (2 << 20)})
    assert r.status_code == 413 and one_line_detail(r).startswith("the request body is larger than the limit")
    assert listing(srv) == before
    # Under the limit, a body is handled as before, and the server still answers.
    r = srv.http.post("/api/operations", json={"type": "demo", "params": {"items": -1}, "name": "n" * 100})
    assert r.status_code == 422 and "items" in r.json()["detail"]
    assert srv.http.post("/api/operations", json={"type": "demo", "params": {"items": 1}}).status_code == 202


def test_max_body_size_sets_the_limit(start_server) -> None:
    srv = start_server("--max-body-size", "2048", OUTLAST_MAX_MEMORY_PERCENT="0.01")
    r = srv.http.post("/api/operations", json={"type": "demo", "name": "n" * 3000})
    assert r.status_code == 413 and "2 KiB" in one_line_detail(r)
    r = srv.http.post("/api/operations", json={"type": "demo", "name": "n" * 150})
    assert r.status_code == 202, r.text


def test_websocket_snapshot_frames_fit_the_client_default(start_server) -> None:
    """200 queued operations with names and tags within the model limits (50 tags of 200 characters)
    make a snapshot of more than 1 MiB: it comes in frames that a client with the default 1 MiB limit reads."""
    ws_client = pytest.importorskip("websockets.sync.client")
    from concurrent.futures import ThreadPoolExecutor

    srv = start_server(OUTLAST_MAX_MEMORY_PERCENT="0.01")  # nothing runs: all stay queued (active)
    tags = {f"tag{i}": "v" * 190 for i in range(40)}

    def submit(i: int) -> str:
        return srv.submit(params={"items": 1}, name=f"{i:04d}-" + "n" * 150, tags=tags)

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(submit, range(200)))
    frames: list[str] = []
    seen: list[str] = []
    with ws_client.connect(f"{srv.ws_url}/api/operations/progress", open_timeout=30) as ws:  # max_size: 1 MiB
        while True:
            frames.append(ws.recv(timeout=60))
            msg = json.loads(frames[-1])
            assert msg["type"] == "snapshot"
            seen += [o["id"] for o in msg["operations"]]
            if not msg.get("more"):
                break
    assert set(seen) == ids and len(seen) == len(ids)
    assert sum(len(f.encode()) for f in frames) > 1 << 20 and len(frames) > 1
    assert all(len(f.encode()) <= 512 << 10 for f in frames)


def test_messages_too_large_for_a_frame_are_trimmed_and_say_so() -> None:
    from engine.api.ws import FRAME_MAX, snapshot_frames, trim

    big = {"rows": ["r" * 1000] * 3000}  # 3 MB of result
    record = {"id": "06b2w5rvzhmwb", "status": "completed", "params": {"p": 1}, "result": big, "progress": {}}
    msg = trim({"type": "snapshot", "operation": record})
    assert len(json.dumps(msg).encode()) <= FRAME_MAX
    assert msg["truncated"] == ["operation.result"] and msg["operation"]["params"] == {"p": 1}
    assert record["result"] is big  # the caller's record is left alone
    final = trim(
        {"type": "final", "operation_id": "06b2w5rvzhmwb", "status": "failed", "result": big, "error": "e" * 10}
    )
    assert final["result"] is None and final["error"] == "e" * 10 and final["truncated"] == ["result"]
    small = {"type": "final", "operation_id": "x", "result": {"a": 1}}
    assert trim(small) is small
    frames = snapshot_frames([record, {**record, "id": "06b2w5rvzhmwc", "result": None}])
    assert len(frames) == 1 and all(len(f.encode()) <= FRAME_MAX for f in frames)
    ops = json.loads(frames[0])["operations"]
    assert ops[0]["truncated"] == ["result"] and "truncated" not in ops[1]


def test_every_builtin_param_is_known_to_write_or_not() -> None:
    """A new param of a built-in type fails this until it is classified: a place it writes is confined."""
    from engine.api.confine import WRITTEN
    from engine.api.routes import CODE_TYPES
    from engine.registry import handlers

    read_only = {
        "backup_operation": {"source", "verify", "chunk_checkpoint"},
        "codebase_indexing": {"root", "patterns", "exclude"},
        "security_scan": {"root", "rules", "format", "exclude", "max_file_size", "fail_on", "baseline"},
        "demo": {"items", "seconds", "fail_every", "crash_at", "hang_at"},
        "migration_operation": {"directory", "table"},
        "cleanup_operation": {"patterns", "exclude", "older_than_days", "retention_days", "dry_run"},
        "monitoring_collection": {"interval", "duration", "pids"},
        "load_testing": {"allow_remote", "url", "method", "headers", "body", "rate", "concurrency", "duration"}
        | {"requests", "slice_seconds", "timeout"},
        "kb_population": {"source", "patterns", "exclude", "chunk_size", "max_bytes"},
        "kb_optimization": {"dedupe", "vacuum", "merge_pages"},
        "vector_indexing": {"min_df"},
        "semantic_analysis": {"root", "patterns", "exclude", "keywords", "topics", "threshold"},
        "code_analysis": {"root", "patterns", "exclude", "complexity", "long_function", "low_mi", "top"}
        | {"maintainability", "max_file_size"},
        "dependency_analysis": {"root", "source_root", "exclude"},
    }
    for type_, h in handlers().items():
        if h.source == "builtin" and type_ not in CODE_TYPES:
            assert set(h.params.model_fields) == read_only[type_] | set(WRITTEN.get(type_, ())), type_


def test_openapi_documents_the_refusal(observer: Server) -> None:
    doc = observer.http.get("/openapi.json").json()
    for path in ("/api/operations", "/api/operations/security/scan", "/api/operations/codebase/index"):
        assert "403" in doc["paths"][path]["post"]["responses"], path
    assert "--allow-output-root" in doc["info"]["description"]


def test_openapi_documents_the_body_limit(observer: Server) -> None:
    doc = observer.http.get("/openapi.json").json()
    for path in ("/api/operations", "/api/operations/security/scan", "/api/operations/{op_id}/resume"):
        assert "413" in doc["paths"][path]["post"]["responses"], path


# ---- 7. stored strings in the server's own log lines --------------------------------------------------

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\rfake line"


def test_stored_strings_reach_the_server_log_escaped(start_server, tmp_path: Path) -> None:
    """An operation left running by a worker whose stored host name is hostile: the server's recovery
    warning names it, escaped, so the terminal running the server is not retitled or cleared."""
    import asyncio
    import time

    from engine.models import Operation, Status, WorkerInfo, new_id
    from engine.store import open_store

    root = tmp_path / "srv0"

    async def plant() -> str:
        now = time.time()
        op = Operation(
            id=new_id(),
            type="demo",
            status=Status.RUNNING,
            created_at=now,
            queued_at=now,
            started_at=now,
            updated_at=now,
            worker=WorkerInfo(host=HOSTILE, pid=2**22 + 1),
        )
        async with open_store(root / "state") as store:
            await store.create(op)
        return op.id

    op_id = asyncio.run(plant())
    srv = start_server()
    assert srv.root == root
    poll(lambda: "left running by" in srv.output(), 30, what="the recovery warning")
    out = srv.output()
    assert op_id in out and "\x1b" not in out and "\x07" not in out and "\r" not in out, repr(out)
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\rfake line" in out


def test_error_details_escape_what_the_client_sent(observer: Server) -> None:
    """A field name or an id with a newline or an escape comes back escaped: the detail stays one line
    (found by tests/test_api_fuzz.py)."""
    srv = observer
    before = listing(srv)
    answers = [
        srv.http.post("/api/operations/security/scan", json={"\n": None}),
        srv.http.post("/api/operations", json={"type": "demo", "params": {"\x1b[2J\nfake": 1}}),
        srv.http.post("/api/operations/codebase/index", json={"params": {"root": "/", "\r\x07": 1}}),
        srv.http.get("/api/operations/%1B%5B2J%0Afake"),
    ]
    for r in answers:
        assert 400 <= r.status_code < 500, r.text
        detail = one_line_detail(r)
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in detail), repr(detail)
    assert "\\x1b[2J\\nfake" in answers[1].json()["detail"]
    assert listing(srv) == before


def test_metrics_text_escapes_stored_type_names(start_server, tmp_path: Path) -> None:
    """A record whose stored type has terminal escapes (written by anyone who can write a shared store):
    the Prometheus text a terminal may show carries them escaped."""
    import asyncio
    import time

    from engine.models import Operation, new_id
    from engine.store import open_store

    async def plant() -> None:
        now = time.time()
        op = Operation(id=new_id(), type="x\x1b]0;pwned\x07\x1b[2J", created_at=now, queued_at=now, updated_at=now)
        async with open_store(tmp_path / "srv0" / "state") as store:
            await store.create(op)

    asyncio.run(plant())
    text = start_server(OUTLAST_MAX_MEMORY_PERCENT="0.01").http.get("/metrics").text
    assert "pwned" in text and "\x1b" not in text and "\x07" not in text


def test_idle_and_half_sent_connections_neither_exhaust_descriptors_nor_flood_the_log(tmp_path: Path) -> None:
    """More silent connections than the server has descriptors for, each with half a request line: they
    are capped (503) and timed out, the log says so in a line or two, and the server answers after."""
    srv = Server(tmp_path / "srv", nofile=128, OUTLAST_API_REQUEST_TIMEOUT="3")
    socks: list[socket.socket] = []
    try:
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"GET /api/health HTTP/1.1\r\n")
            socks.append(s)
        time.sleep(2)
        out = srv.output()
        lines = [ln for ln in out.splitlines()[1:] if ln.strip()]  # the first: "API on ..."
        tracebacks = out.count("Traceback")
        assert tracebacks == 0 and len(lines) <= 4, (tracebacks, len(lines), lines[:5])
        for s in socks:  # each closed by the server: at once (503, over the cap) or after the timeout (3 s)
            data = s.recv(1000)
            assert data == b"" or data.startswith(b"HTTP/1.1 503"), data
        poll(lambda: srv.http.get("/api/health").status_code == 200, 20, what="health answered")
        assert srv.popen.poll() is None
    finally:
        for s in socks:
            s.close()
        assert srv.stop() == 0


def test_sigterm_while_a_client_is_mid_upload_exits_at_once_in_one_line(tmp_path: Path) -> None:
    srv = Server(tmp_path / "srv")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(
            b"POST /api/operations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"type":'
        )
        time.sleep(0.5)
        began = time.monotonic()
        assert srv.stop() == 0
        took = time.monotonic() - began
    out = srv.output()
    assert "Traceback" not in out and "graceful shutdown exceeded" not in out, out
    assert took < 3, f"{took:.1f}s to stop: {out}"


def test_a_log_message_ending_in_a_newline_is_one_line_without_a_literal_newline() -> None:
    import logging

    from engine.api.server import EscapeControls

    line = "Exception in ASGI application\n"
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, line, None, None)
    assert EscapeControls().filter(record)
    assert record.getMessage() == "Exception in ASGI application"


def test_each_warning_is_printed_once(tmp_path: Path) -> None:
    """A warning of the engine's loggers was printed twice: by the ``outlast`` logger's handler and by the
    root handler the server adds for everything else."""
    srv = Server(tmp_path / "srv", nofile=64)  # connections held at once: 16
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(20)]
    try:
        poll(lambda: "connections open" in srv.output(), 20, what="the cap said")
        time.sleep(0.5)
        said = [ln for ln in srv.output().splitlines() if "connections open" in ln]
        assert len(said) == 1, said
    finally:
        for s in socks:
            s.close()
        assert srv.stop() == 0


def test_a_resume_checks_the_outputs_again(observer: Server, tmp_path: Path, tree: Path) -> None:
    """Checked when it was submitted, an output's directory made a link out of the roots since (another
    operation can do that: a backup restoring a tree with such a link) is refused on resume, 403, and
    nothing changes; put back, it resumes."""
    srv = observer  # its engine starts nothing: the op stays queued
    outside = tmp_path / "outside"
    outside.mkdir()
    d = srv.root / "state" / "outputs" / "b" / "d"
    d.mkdir(parents=True)
    op_id = srv.submit(type="codebase_indexing", params={"root": str(tree), "output": str(d / "idx.sqlite")})
    assert srv.http.post(f"/api/operations/{op_id}/cancel").status_code == 200
    d.rmdir()
    d.symlink_to(outside, target_is_directory=True)
    r = srv.http.post(f"/api/operations/{op_id}/resume")
    assert r.status_code == 403, r.text
    detail = one_line_detail(r)
    assert detail.startswith("not resumed: params.output:") and str(d / "idx.sqlite") in detail, detail
    op = srv.op(op_id)
    assert op["status"] == "cancelled" and op["attempt"] == 1
    d.unlink()
    d.mkdir()
    assert srv.http.post(f"/api/operations/{op_id}/resume").status_code == 202
    assert list(outside.iterdir()) == []


def test_a_bool_where_a_number_goes_is_refused_and_changes_nothing(observer) -> None:
    """pydantic reads ``true`` as 1: ``"timeout": true`` stored a one-second timeout, ``"failure_threshold":
    true`` one failure allowed, and a resume from ``{"checkpoint": true}`` looked for checkpoint 1."""
    before = len(listing(observer))
    for body, named in [
        ({"type": "demo", "timeout": True}, "timeout: true is not a number"),
        ({"type": "demo", "total_items": False}, "total_items: false is not a number"),
        ({"type": "demo", "profile": {"failure_threshold": True}}, "failure_threshold: true is not a number"),
        ({"type": "demo", "profile": {"retry": {"max_attempts": True}}}, "max_attempts: true is not a number"),
    ]:
        r = observer.http.post("/api/operations", json=body)
        assert r.status_code == 422 and named in one_line_detail(r), (body, r.text)
    typed = observer.http.post("/api/operations/codebase/index", json={"params": {"root": "."}, "timeout": True})
    assert typed.status_code == 422 and "timeout: true is not a number" in one_line_detail(typed), typed.text
    assert len(listing(observer)) == before
    op_id = observer.submit(params={"items": 1})  # its engine starts nothing: cancelled while queued
    assert observer.http.post(f"/api/operations/{op_id}/cancel").status_code == 200
    for key in ("checkpoint", "checkpoint_id"):
        r = observer.http.post(f"/api/operations/{op_id}/resume", json={key: True})
        assert r.status_code == 422 and f"{key}: true is not a number" in one_line_detail(r), r.text
    op = observer.op(op_id)
    assert op["status"] == "cancelled" and op["attempt"] == 1


def test_a_body_that_cannot_be_parsed_says_why(observer) -> None:
    """Bytes that are not UTF-8 and JSON nested past what the parser reads were both "There was an error
    parsing the body", and a JSON syntax error named a field "body.14" (the offset, from FastAPI's loc)."""
    before = len(listing(observer))
    json_type = {"Content-Type": "application/json"}
    for body, said in [
        (b'{"type": "d\xffemo"}', "body: not UTF-8 text (byte 0xff at offset 11): JSON is UTF-8"),
        (b'{"type": "demo", "params": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}", "body: JSON nested too deep"),
        (b'{"type": "demo"', "body: invalid JSON at character 15 (Expecting ',' delimiter)"),
    ]:
        r = observer.http.post("/api/operations", content=body, headers=json_type)
        assert r.status_code == 422, r.text
        assert one_line_detail(r).startswith(said), r.text
    assert len(listing(observer)) == before
