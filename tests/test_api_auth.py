"""Security of ``outlast serve``: loopback by default, a bearer token for anything wider, clean start-up errors."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
from pathlib import Path

import pytest

from tests import zygote
from tests.fixtures_api import REPO, TOKEN, Server, api_env, free_port, poll

if importlib.util.find_spec("fastapi") is None:  # not importorskip: importing it cost collection 0.3 s
    pytest.skip("fastapi is not installed", allow_module_level=True)
httpx = pytest.importorskip("httpx")
ws_client = pytest.importorskip("websockets.sync.client")
InvalidStatus = pytest.importorskip("websockets.exceptions").InvalidStatus
pytestmark = pytest.mark.timeout(120)


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return zygote.run(
        ["serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=api_env(tmp_path, **env),
        cwd=REPO,
    )


def test_wide_bind_without_token_refuses_to_start(tmp_path: Path) -> None:
    r = serve(tmp_path, "--host", "0.0.0.0")
    assert r.returncode == 2
    assert "0.0.0.0 is not a loopback address" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    short = tmp_path / "short"
    short.write_text("abc\n")
    r = serve(tmp_path, "--host", "0.0.0.0", "--token-file", str(short))
    assert r.returncode == 2 and "too short" in r.stderr
    r = serve(tmp_path, "--token-file", str(tmp_path / "missing"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    assert not (tmp_path / "state").exists()  # nothing was opened or stored


def test_busy_port_is_one_line(tmp_path: Path, api: Server) -> None:
    r = zygote.run(
        ["serve", "--port", str(api.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=api_env(tmp_path),
        cwd=REPO,
    )
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{api.port}" in r.stderr and "Traceback" not in r.stderr


def test_token_required_on_a_wide_bind(tmp_path: Path, start_server) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    srv = start_server("--host", "0.0.0.0", "--token-file", str(token_file), token=TOKEN)
    bare = httpx.Client(base_url=srv.url, timeout=30)
    for path in ("/api/operations/", "/api/health", "/metrics", "/openapi.json"):
        r = bare.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), path
    r = bare.get("/api/operations/", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
    assert r.status_code == 401
    r = bare.post("/api/operations", json={"type": "demo"})
    assert r.status_code == 401
    assert srv.http.get("/api/operations/").json()["items"] == []  # the refused submit stored nothing

    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(f"{srv.ws_url}/api/operations/progress", open_timeout=30)
    assert refused.value.response.status_code == 403
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with ws_client.connect(f"{srv.ws_url}/api/operations/progress", additional_headers=headers) as ws:
        assert '"snapshot"' in ws.recv(timeout=20)
    # A browser cannot set headers on a WebSocket: the token may come as subprotocols ["bearer", TOKEN].
    with ws_client.connect(f"{srv.ws_url}/api/operations/progress", subprotocols=["bearer", TOKEN]) as ws:
        assert ws.subprotocol == "bearer" and '"snapshot"' in ws.recv(timeout=20)
    with pytest.raises(InvalidStatus):
        ws_client.connect(f"{srv.ws_url}/api/operations/progress", subprotocols=["bearer", "x" * len(TOKEN)])
    assert "bearer" in srv.http.get("/openapi.json").json()["components"]["securitySchemes"]


def test_sigterm_pauses_running_work_with_a_checkpoint(start_server) -> None:
    srv = start_server(token=TOKEN, OUTLAST_API_TOKEN=TOKEN)  # the token from the environment, on loopback
    op_id = srv.submit(params={"items": 1000, "seconds": 0.02}, profile={"checkpoint_interval": 60})
    srv.wait_status(op_id, {"running"})
    poll(lambda: srv.op(op_id)["progress"]["done"] > 0, what="progress")
    assert srv.stop(signal.SIGTERM) == 0
    assert "API stopped" in srv.output()
    again = Server(srv.root, token=TOKEN, OUTLAST_API_TOKEN=TOKEN, OUTLAST_MAX_MEMORY_PERCENT="0.01")
    try:
        op = again.op(op_id)
        assert op["status"] == "paused" and op["checkpoint_seq"] and op["progress"]["done"] > 0
    finally:
        again.stop(signal.SIGKILL)


def test_allowed_origins() -> None:
    from engine.api.app import SameOrigin

    guard = SameOrigin(None, allowed=("https://ops.example.org/",))  # type: ignore[arg-type]

    def scope(method: str, origin: str, kind: str = "http") -> dict:
        headers = [(b"host", b"127.0.0.1:8001"), (b"origin", origin.encode())]
        return {"type": kind, "method": method, "headers": headers}

    assert not guard.refused(scope("POST", "https://ops.example.org"))
    assert not guard.refused(scope("POST", "http://127.0.0.1:8001"))
    assert not guard.refused(scope("GET", "https://evil.example"))  # reads: the browser keeps them from the page
    assert guard.refused(scope("POST", "https://evil.example"))
    assert guard.refused(scope("GET", "https://evil.example", kind="websocket"))


def test_listed_origins_can_use_the_api_from_a_browser_and_others_cannot(start_server) -> None:
    """CORS for the origins in OUTLAST_API_ORIGINS: a preflight (which carries no token) is answered and
    every answer names the origin; an origin not listed gets no CORS header and its writes are refused."""
    front = "http://localhost:5173"
    srv = start_server(token=TOKEN, OUTLAST_API_TOKEN=TOKEN, OUTLAST_API_ORIGINS=f"{front}/,https://ops.example.org")
    pre = srv.http.options(
        "/api/operations",
        headers={
            "Origin": front,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
            "Authorization": "",
        },
    )
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == front
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    r = srv.http.post("/api/operations", json={"type": "demo", "params": {"items": 1}}, headers={"Origin": front})
    assert r.status_code == 202 and r.headers["access-control-allow-origin"] == front
    r = srv.http.get("/api/operations/", headers={"Origin": front})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == front
    r = srv.http.get("/api/health", headers={"Origin": front, "Authorization": "Bearer wrong-token-0123456789"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == front  # the page can say why
    evil = "http://evil.example"
    pre = srv.http.options("/api/operations", headers={"Origin": evil, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    r = srv.http.post("/api/operations", json={"type": "demo"}, headers={"Origin": evil})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in srv.http.get("/api/health", headers={"Origin": evil}).headers


def test_start_and_stop_lines_are_notices_on_stdout_not_error_lines(tmp_path: Path) -> None:
    """They began "outlast:", as the error lines on stderr do; `outlast worker` says it is up on stdout, the
    time first: the server says so the same way, and stderr stays for what went wrong."""
    import re

    port = free_port()
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = zygote.popen(["serve", "--port", str(port)], stdout=o, stderr=e, env=api_env(tmp_path), cwd=REPO)
    try:
        poll(lambda: "API on" in out.read_text() or proc.poll() is not None, 40, what="the start line")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = out.read_text().splitlines()
    assert re.fullmatch(rf"\d\d:\d\d:\d\d API on http://127\.0\.0\.1:{port} \(no token; .*", lines[0]), lines
    assert re.fullmatch(r"\d\d:\d\d:\d\d API stopped", lines[-1]), lines
    assert not any(ln.startswith("outlast") for ln in lines), lines
    assert err.read_text() == ""
