"""The REST endpoints against a real ``outlast serve``: submit, read, list, control, errors, metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from tests import zygote
from tests.fixtures_api import REPO, Server, poll

pytest.importorskip("fastapi")
pytestmark = pytest.mark.timeout(120)


def test_submit_get_list_and_outlast_ls(api: Server) -> None:
    r = api.http.post("/api/operations", json={"type": "demo", "params": {"items": 5, "seconds": 0.01}, "name": "web"})
    assert r.status_code == 202
    op_id = r.json()["operation_id"]
    assert r.headers["location"] == f"/api/operations/{op_id}"
    final = api.wait_status(op_id, {"completed"})
    assert final["result"]["items"] == 5 and final["progress"]["percent"] == 100.0
    assert api.op(op_id[:9])["id"] == op_id  # a unique prefix works too
    assert api.op(str(final["handle"]))["id"] == op_id  # and its handle
    # Submitted over HTTP, it is an operation like any other: the CLI lists it.
    ls = zygote.run(["ls", "--json"], capture_output=True, text=True, env=api.env, cwd=REPO, timeout=60)
    assert ls.returncode == 0, ls.stderr
    assert op_id in ls.stdout

    assert api.http.get("/api/health").json()["store_slots"] is None
    slots = zygote.run(["slots", "2"], capture_output=True, text=True, env=api.env, cwd=REPO, timeout=60)
    assert slots.returncode == 0, slots.stderr
    assert api.http.get("/api/health").json()["store_slots"] == 2

    listed = api.http.get("/api/operations/", params={"status": "completed", "type": "demo"}).json()
    assert op_id in [o["id"] for o in listed["items"]]
    assert all(o["status"] == "completed" for o in listed["items"])
    assert api.http.get("/api/operations", params={"type": "nope"}).json()["items"] == []


def test_pagination(api: Server) -> None:
    ids = [api.submit(params={"items": 1, "seconds": 0}, tags={"page": "yes"}) for _ in range(3)]
    first = api.http.get("/api/operations/", params={"limit": 2}).json()
    assert first["next_offset"] == 2 and len(first["items"]) == 2
    second = api.http.get("/api/operations/", params={"limit": 2, "offset": 2}).json()
    seen = [o["id"] for o in first["items"] + second["items"]]
    assert ids[2] == seen[0] and ids[1] == seen[1] and ids[0] == seen[2]  # newest first, no overlap


def test_errors_name_what_is_wrong(api: Server) -> None:
    h = api.http
    r = h.get("/api/operations/zzzzzzzzzzzzz")
    assert r.status_code == 404 and "zzzzzzzzzzzzz" in r.json()["detail"]
    r = h.get("/api/operations/NOT-AN-ID")
    assert r.status_code == 422 and "invalid operation id" in r.json()["detail"]
    for path in ("cancel", "pause", "resume"):
        assert h.post(f"/api/operations/zzzzzzzzzzzzz/{path}").status_code == 404
    assert h.get("/api/operations/zzzzzzzzzzzzz/checkpoints").status_code == 404
    assert h.get("/api/operations/zzzzzzzzzzzzz/logs").status_code == 404

    r = h.post("/api/operations", json={"type": "demo", "params": {"items": -1}})
    assert r.status_code == 422 and "items" in r.json()["detail"]
    r = h.post("/api/operations", json={"type": "demo", "priority": "urgent"})
    assert r.status_code == 422 and "priority" in r.json()["detail"]
    r = h.post("/api/operations", json={"type": "demo", "colour": "red"})
    assert r.status_code == 422 and "colour" in r.json()["detail"]
    r = h.post("/api/operations", json={"type": "demo", "profile": {"checkpoint_interval": -1}})
    assert r.status_code == 422 and "checkpoint_interval" in r.json()["detail"]
    r = h.post("/api/operations", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = h.get("/api/operations/", params={"status": "sleeping"})
    assert r.status_code == 422 and "status" in r.json()["detail"]
    r = h.get("/api/operations/", params={"limit": 0})
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    # Nothing of the above was stored.
    assert all(
        o["params"].get("items") != -1 for o in h.get("/api/operations/", params={"limit": 1000}).json()["items"]
    )


def test_an_integer_past_a_float_is_refused_naming_it(api: Server) -> None:
    """10**400 in params: the spec's message made a float of it (OverflowError), an internal error."""
    body = '{"type": "demo", "params": {"items": 1' + "0" * 400 + "}}"
    r = api.http.post("/api/operations", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"] == "body.params: items: 1e+400 is out of range (|n| < 2**63)"


def test_command_operations_need_allow_commands(api: Server) -> None:
    before = len(api.http.get("/api/operations/", params={"limit": 1000}).json()["items"])
    r = api.http.post("/api/operations", json={"type": "command", "params": {"argv": ["true"]}})
    assert r.status_code == 403 and "--allow-commands" in r.json()["detail"]
    # pytest runs whatever conftest.py lies under the path it is given: code too.
    r = api.http.post("/api/operations/testing/comprehensive", json={"params": {"path": str(REPO)}})
    assert r.status_code == 403 and "--allow-commands" in r.json()["detail"]
    assert len(api.http.get("/api/operations/", params={"limit": 1000}).json()["items"]) == before


@pytest.mark.parametrize(
    ("path", "type_"),
    [
        ("codebase/index", "codebase_indexing"),
        ("testing/comprehensive", "comprehensive_test_suite"),
        ("knowledge-base/populate", "kb_population"),
        ("security/scan", "security_scan"),
    ],
)
def test_typed_endpoints_queue_their_type(api: Server, path: str, type_: str) -> None:
    # Bad params never reach a handler: an unknown top-level field is refused by name.
    r = api.http.post(f"/api/operations/{path}", json={"colour": "red"})
    assert r.status_code == 422 and "colour" in r.json()["detail"]
    registered = {t["type"] for t in api.http.get("/api/types").json()}
    r = api.http.post(f"/api/operations/{path}", json={"priority": "low", "params": {}})
    if type_ == "comprehensive_test_suite":
        assert r.status_code in (403, 422), r.text  # runs code: only with --allow-commands
    elif type_ in registered:
        assert r.status_code in (202, 422), r.text  # 422 only for params the handler requires
        if r.status_code == 202:
            assert api.op(r.json()["operation_id"])["type"] == type_
            api.http.post(f"/api/operations/{r.json()['operation_id']}/cancel")
    else:
        assert r.status_code == 422 and type_ in r.json()["detail"]


def test_pause_checkpoints_resume_logs(api: Server) -> None:
    op_id = api.submit(params={"items": 200, "seconds": 0.02}, profile={"checkpoint_interval": 0.3})
    api.wait_status(op_id, {"running"})
    poll(lambda: api.op(op_id)["progress"]["done"] >= 20, what="progress")
    r = api.http.post(f"/api/operations/{op_id}/resume")
    assert r.status_code == 409 and "running" in r.json()["detail"]  # resume of a running operation

    r = api.http.post(f"/api/operations/{op_id}/pause")
    assert r.status_code in (200, 202) and r.json()["action"] == "pause"
    paused = api.wait_status(op_id, {"paused"})
    cps = api.http.get(f"/api/operations/{op_id}/checkpoints").json()["checkpoints"]
    assert cps and cps[0]["seq"] == paused["checkpoint_seq"] and "state" in cps[0]
    oldest = cps[-1]["seq"]

    r = api.http.post(f"/api/operations/{op_id}/resume", json={"checkpoint": 9999})
    # 404 as GET .../checkpoints/9999 answers it (and `outlast resume --checkpoint 9999` exits 3), not 422
    assert r.status_code == 404 and r.json()["detail"].startswith(f"operation {op_id} has no checkpoint 9999 (has: ")
    assert api.http.get(f"/api/operations/{op_id}/checkpoints/9999").status_code == 404
    r = api.http.post(f"/api/operations/{op_id}/resume", json={"checkpoint": oldest})
    assert r.status_code == 202 and r.json()["status"] == "queued"
    final = api.wait_status(op_id, {"completed"}, timeout=60)
    assert final["attempt"] == 2 and final["result"]["sum"] == sum(range(200))

    page = api.http.get(f"/api/operations/{op_id}/logs").json()
    assert any("resuming from checkpoint" in rec["message"] for rec in page["records"])
    rest = api.http.get(f"/api/operations/{op_id}/logs", params={"offset": page["next_offset"]}).json()
    assert rest["records"] == [] and rest["next_offset"] == page["next_offset"]

    r = api.http.post(f"/api/operations/{op_id}/cancel")
    assert r.status_code == 409 and "completed" in r.json()["detail"]


def test_cancel_queued_is_immediate(observer: Server) -> None:
    op_id = observer.submit(params={"items": 10})  # the observer's engine never starts it
    r = observer.http.post(f"/api/operations/{op_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["pending"] is False
    assert observer.op(op_id)["status"] == "cancelled"


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    m = re.search(r"^" + pattern + "$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics(api: Server) -> None:
    op_id = api.submit(params={"items": 10, "seconds": 0.01, "fail_every": 4}, profile={"checkpoint_interval": 0.05})
    stalls = api.submit(params={"items": 10, "seconds": 0.01, "hang_at": 2}, profile={"stall_timeout": 0.5})
    flaky = api.root / "flaky-once"
    retried = api.submit(
        type="ledger",
        params={"items": 6, "fail_at": 2, "flaky_file": str(flaky)},  # one transient ConnectionError
        profile={"retry": {"backoff_base": 0.05}},
    )
    api.wait_status(op_id, {"completed", "failed"})
    assert api.wait_status(retried, {"completed"})["retries"] == 1
    assert api.wait_status(stalls, {"timed_out"})["status_message"].startswith("stalled")
    r = api.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _metric(text, "outlast_operations", status="completed", type="demo") >= 1
    assert _metric(text, "outlast_item_failures_total", type="demo") >= 2
    assert _metric(text, "outlast_checkpoint_seconds_count", type="demo") >= 1
    assert _metric(text, "outlast_checkpoint_bytes_count", type="demo") >= 1
    assert _metric(text, "outlast_operations_settled_total", status="completed", type="demo") >= 1
    for prio in ("high", "normal", "low"):
        assert f'outlast_queue_depth{{priority="{prio}"}}' in text
    assert _metric(text, "outlast_slots") == 3
    assert "outlast_slots_in_use" in text
    assert _metric(text, "outlast_timeouts_total", type="demo") >= 1
    assert _metric(text, "outlast_retries_total", type="ledger") == 1
    assert _metric(text, "outlast_operations", status="timed_out", type="demo") >= 1


def test_the_engine_imports_no_web_stack() -> None:
    code = (
        "import sys, engine, engine.api, engine.api.schemas, engine.api.progress, engine.api.server; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_openapi_documents_every_endpoint(api: Server) -> None:
    doc = api.http.get("/openapi.json").json()
    paths = doc["paths"]
    for path, method in [
        ("/api/operations", "post"),
        ("/api/operations/", "get"),
        ("/api/operations/codebase/index", "post"),
        ("/api/operations/testing/comprehensive", "post"),
        ("/api/operations/knowledge-base/populate", "post"),
        ("/api/operations/security/scan", "post"),
        ("/api/operations/{op_id}", "get"),
        ("/api/operations/{op_id}/cancel", "post"),
        ("/api/operations/{op_id}/pause", "post"),
        ("/api/operations/{op_id}/resume", "post"),
        ("/api/operations/{op_id}/checkpoints", "get"),
        ("/api/operations/{op_id}/logs", "get"),
        ("/metrics", "get"),
    ]:
        responses = paths[path][method]["responses"]
        ok = next(c for c in responses if c.startswith("2"))
        assert responses[ok].get("content"), f"{method} {path} documents no response body"
    assert "404" in paths["/api/operations/{op_id}"]["get"]["responses"]
    assert "409" in paths["/api/operations/{op_id}/resume"]["post"]["responses"]
    assert json.dumps(doc)  # serialisable as served


def test_a_json_body_without_the_json_content_type_is_refused_saying_so(api: Server) -> None:
    body = json.dumps({"type": "demo", "params": {"items": 1}})
    for ctype in ("application/x-www-form-urlencoded", "text/plain", None):  # curl -d's type, a form's, none
        headers = {"Content-Type": ctype} if ctype else {}
        r = api.http.post("/api/operations", content=body, headers=headers)
        assert r.status_code == 415, r.text
        assert "Content-Type: application/json" in r.json()["detail"] and (ctype or "without") in r.json()["detail"]
    r = api.http.post(
        "/api/operations/zzzzzzzzzzzzz/resume", content='{"checkpoint": 1}', headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 415, r.text
    r = api.http.post("/api/operations", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 202, r.text


def test_resume_takes_the_checkpoint_id_the_listings_give(api: Server) -> None:
    """``{"checkpoint_id": "3"}``, as the seed's clients send it and the checkpoint listings name it."""
    op_id = api.submit(params={"items": 200, "seconds": 0.02}, profile={"checkpoint_interval": 0.3})
    api.wait_status(op_id, {"running"})
    poll(lambda: api.op(op_id)["progress"]["done"] >= 20, what="progress")
    assert api.http.post(f"/api/operations/{op_id}/pause").status_code in (200, 202)
    api.wait_status(op_id, {"paused"})
    oldest = api.http.get(f"/api/operations/{op_id}/checkpoints").json()["checkpoints"][-1]
    r = api.http.post(f"/api/operations/{op_id}/resume", json={"checkpoint_id": "1", "checkpoint": 1})
    assert r.status_code == 422, r.text  # one of the two, not both: said as such, not as an unknown field
    assert r.json()["detail"] == "body: give the checkpoint as checkpoint or as checkpoint_id, not both", r.text
    r = api.http.post(f"/api/operations/{op_id}/resume", json={"checkpoint_id": oldest["checkpoint_id"]})
    assert r.status_code == 202, r.text
    api.wait_status(op_id, {"completed"}, timeout=60)
    page = api.http.get(f"/api/operations/{op_id}/logs").json()
    assert any(f"resuming from checkpoint {oldest['seq']}" in rec["message"] for rec in page["records"]), page


def test_an_unknown_query_parameter_is_refused_naming_it(api: Server) -> None:
    r = api.http.get("/api/operations/", params={"stauts": "running"})  # a typo listed everything
    assert r.status_code == 422 and r.json()["detail"].startswith("query.stauts: unknown query parameter"), r.text
    assert "status" in r.json()["detail"]
    r = api.http.get("/api/health", params={"verbose": "1"})
    assert r.status_code == 422 and "query.verbose" in r.json()["detail"]
    assert api.http.get("/api/operations/", params={"status": "running", "type": "demo", "limit": 5}).status_code == 200
    assert api.http.get("/api/operations", params={"offset": 0}).status_code == 200


def test_a_client_paging_through_a_log_gets_every_record(start_server: Any) -> None:
    """``GET .../logs?offset=N`` answered the last 1,000 records after N and an offset past them all: a
    client following a 5,000-line command from 0 got lines 4,001 to 5,000, then nothing; the first 4,000
    were never sent. A page is now the records right after the offset."""
    server = start_server("--allow-commands")
    r = server.http.post("/api/operations", json={"type": "command", "params": {"argv": ["seq", "1", "5000"]}})
    assert r.status_code == 202, r.text
    op_id = r.json()["operation_id"]
    server.wait_status(op_id, {"completed"}, timeout=60)
    seen: list[str] = []
    offset = 0
    for _ in range(20):
        page = server.http.get(f"/api/operations/{op_id}/logs", params={"offset": offset}).json()
        assert len(page["records"]) <= 1000
        seen += [rec["message"] for rec in page["records"]]
        if page["next_offset"] == offset:
            break
        offset = page["next_offset"]
    assert [m for m in seen if m.isdigit()] == [str(i) for i in range(1, 5001)], (len(seen), seen[:2], seen[-2:])


def test_a_resume_of_queued_work_answers_as_the_command_line_does(start_server: Any) -> None:
    """Queued by another client a moment before (two resumes at once), or never stopped: the resume is answered
    202 "already queued", as `outlast resume --queue` answers, not 409 "is queued already: another command made
    it so meanwhile". With a checkpoint or a profile it is still refused: the other resume did not apply them."""
    api = start_server(OUTLAST_MAX_CONCURRENT="1")
    first = api.submit(params={"items": 400, "seconds": 0.05})  # holds the one slot
    api.wait_status(first, {"running"})
    waiting = api.submit(params={"items": 1})
    assert api.op(waiting)["status"] == "queued"
    r = api.http.post(f"/api/operations/{waiting}/resume")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued" and r.json()["pending"] is False, r.json()
    assert r.json()["message"].startswith("already queued"), r.json()
    r = api.http.post(f"/api/operations/{waiting}/resume", json={"profile": {"base_timeout": 60}})
    assert r.status_code == 409 and "queued" in r.json()["detail"], r.text
    api.http.post(f"/api/operations/{first}/cancel")


def test_types_lists_a_plugin_whose_params_have_no_json_schema(start_server: Any, tmp_path: Any) -> None:
    """A plugin's params model with a field of a class of its own (``arbitrary_types_allowed``) validates, and
    has no JSON schema: pydantic's error made ``GET /api/types`` a 500, for every type."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "unschemed_ops.py").write_text(
        "from pydantic import BaseModel, ConfigDict\nfrom engine import operation\n"
        "class Thing:\n    pass\n"
        "class P(BaseModel):\n    model_config = ConfigDict(arbitrary_types_allowed=True)\n"
        "    x: int = 1\n    t: Thing | None = None\n"
        "@operation('unschemed', params=P)\nasync def unschemed(ctx, p):\n    return {}\n"
    )
    server = start_server(OUTLAST_PLUGINS="unschemed_ops", PYTHONPATH=str(plugins))
    r = server.http.get("/api/types")
    assert r.status_code == 200, r.text
    types = {t["type"]: t for t in r.json()}
    assert types["unschemed"]["params_schema"]["description"].startswith("no JSON schema: "), types["unschemed"]
    assert "properties" in types["demo"]["params_schema"]  # the others as before
