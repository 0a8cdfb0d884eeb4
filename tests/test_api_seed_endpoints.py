"""Every seed submit endpoint (``/api/operations/...``) queues its type out of the box: 202 for a valid request on
a server started with no flags, except the types that run a client's code (403 naming --allow-commands, 202
with it). A valid request is built from the params schema the server publishes (/api/types): each required
string is the path of a small project tree, so the test follows whatever fields a handler declares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.api.routes import CODE_TYPES, SEED_ENDPOINTS
from tests.fixtures_api import Server


def make_project(root: Path) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "pkg").mkdir()
    (root / "tests").mkdir()
    (root / "README.md").write_text("# Project\n\nA small project.\n")
    (root / "docs" / "guide.rst").write_text("Guide\n=====\n\nHow to use it.\n")
    (root / "pkg" / "__init__.py").write_text("import os\n\n\ndef f(x):\n    return x + 1\n")
    (root / "tests" / "test_pkg.py").write_text("def test_one():\n    assert 1\n")
    return root


def valid_params(schema: dict[str, Any], project: Path) -> dict[str, Any]:
    """The required fields of a params schema, each string one set to the project's path."""
    out: dict[str, Any] = {}
    for name in schema.get("required", []):
        prop = schema["properties"][name]
        kinds = {prop.get("type")} | {a.get("type") for a in prop.get("anyOf", [])}
        if "string" not in kinds:
            raise AssertionError(f"required field {name!r} is not a string: extend this test ({prop})")
        out[name] = str(project)
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A server started with no flags (and no plugins), and a project tree to point operations at."""
    root = tmp_path_factory.mktemp("seed")
    s = Server(root / "srv")
    yield s, make_project(root / "project")
    s.stop()


@pytest.mark.parametrize(("path", "type_"), sorted(SEED_ENDPOINTS.items()))
def test_seed_endpoint_queues_its_type_with_default_flags(plain: tuple[Server, Path], path: str, type_: str) -> None:
    srv, project = plain
    types = {t["type"]: t for t in srv.http.get("/api/types").json()}
    assert type_ in types, f"{type_}: no handler registered, so /api/operations/{path} cannot queue it"
    body = {"params": valid_params(types[type_]["params_schema"], project)}
    r = srv.http.post(f"/api/operations/{path}", json=body)
    if type_ in CODE_TYPES:
        assert r.status_code == 403 and "--allow-commands" in r.json()["detail"], r.text
        return
    assert r.status_code == 202, r.text
    op_id = r.json()["operation_id"]
    assert r.headers["Location"] == f"/api/operations/{op_id}" and srv.op(op_id)["type"] == type_
    srv.http.post(f"/api/operations/{op_id}/cancel")


def test_code_running_seed_endpoints_queue_with_allow_commands(start_server: Any, tmp_path: Path) -> None:
    srv = start_server("--allow-commands")
    project = make_project(tmp_path / "project")
    types = {t["type"]: t for t in srv.http.get("/api/types").json()}
    code = [(p, t) for p, t in SEED_ENDPOINTS.items() if t in CODE_TYPES]
    assert code
    for path, type_ in code:
        r = srv.http.post(
            f"/api/operations/{path}", json={"params": valid_params(types[type_]["params_schema"], project)}
        )
        assert r.status_code == 202, r.text
        srv.http.post(f"/api/operations/{r.json()['operation_id']}/cancel")


def test_a_remote_load_test_needs_allow_commands(plain: tuple[Server, Path]) -> None:
    """Without --allow-commands a client may load this machine only, not make the server load another host."""
    srv, _ = plain
    body = {"type": "load_testing", "params": {"url": "http://192.0.2.1/", "allow_remote": True}}
    r = srv.http.post("/api/operations", json=body)
    assert r.status_code == 403 and "--allow-commands" in r.json()["detail"], r.text
    r = srv.http.post("/api/operations", json={"type": "load_testing", "params": {"url": "http://192.0.2.1/"}})
    assert r.status_code == 422 and "loopback" in r.json()["detail"], r.text


def test_a_demo_of_a_crash_needs_allow_commands(plain: tuple[Server, Path]) -> None:
    """A demo with ``crash_at`` kills the process that runs it: any client could end the server (exit 137)
    and every operation it ran (left interrupted), or a worker on its store. Refused without --allow-commands,
    nothing stored; a demo without it is taken."""
    srv, _ = plain
    before = srv.http.get("/api/operations").json()
    r = srv.http.post("/api/operations", json={"type": "demo", "params": {"items": 3, "crash_at": 0}})
    assert r.status_code == 403 and "--allow-commands" in r.json()["detail"], r.text
    assert srv.http.get("/api/operations").json() == before
    r = srv.http.post("/api/operations", json={"type": "demo", "params": {"items": 1, "seconds": 0}})
    assert r.status_code == 202, r.text
