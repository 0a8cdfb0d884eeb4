"""The seed document's own code runs on Outlast unchanged apart from imports (issue 16).

tests/seed_samples.py holds its samples as written there. They run in processes of their own (the
decorator-based migration claims ``codebase_indexing``, as it does in the seed): a script that calls
them directly and as operations, and ``outlast serve`` with them as a plugin, read by a WebSocket
client doing what the seed's JavaScript does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.fixtures_api import Server

pytestmark = pytest.mark.timeout(120)

EXTS = ("py", "js", "vue", "ts")
FILES = 250
CRASH_AT = 150

DRIVER = """
import asyncio, json, sys
from engine import Engine, OperationSpec, OperationType, load_settings, open_store
from tests.seed_samples import index_codebase, long_operation

async def main(state, tree):
    out = {}
    # "Usage (no changes needed)": the migrated functions called as before.
    out["direct_index"] = await index_codebase(tree, ["*.py"])
    out["direct_long"] = await long_operation()
    calls = []
    async def progress_callback(step, done, total):
        calls.append([step, done, total])
    out["direct_long_cb"] = await long_operation(progress_callback=progress_callback)
    out["calls"] = [len(calls), calls[0], calls[-1]]
    async with Engine(store=open_store(state), settings=load_settings(state_dir=state)) as engine:
        async def run(spec):
            op = await engine.submit(spec)
            return (await engine.wait(op.id, timeout=60)).model_dump(mode="json")
        out["analysis"] = await run(OperationSpec(type=OperationType.CODE_ANALYSIS))
        out["index"] = await run(OperationSpec(type="codebase_indexing", params={"path": tree, "patterns": ["*.py"]}))
        first = await run(OperationSpec(type="seed_indexing_example"))
        out["example_first"] = first
        out["example_checkpoints"] = [c.model_dump(mode="json") for c in await engine.checkpoints(first["id"])]
        await engine.resume(first["id"])
        out["example_resumed"] = (await engine.wait(first["id"], timeout=60)).model_dump(mode="json")
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def make_tree(root: Path) -> Path:
    """FILES source files named in order (f000.py, f001.js, ...) and one the patterns leave out."""
    tree = root / "tree"
    (tree / "pkg").mkdir(parents=True)
    for i in range(FILES):
        (tree / "pkg" / f"f{i:03d}.{EXTS[i % 4]}").write_text(f"x = {i}\n")
    (tree / "README.txt").write_text("not indexed\n")
    return tree


def test_seed_samples_run_directly_and_as_operations(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    work_log = tmp_path / "work.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
    env.update(
        SEED_TREE=str(tree),
        SEED_WORK_LOG=str(work_log),
        SEED_CRASH_AT=f"f{CRASH_AT:03d}.{EXTS[CRASH_AT % 4]}",
        SEED_CRASH_FLAG=str(tmp_path / "crashed-once"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    r = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "state"), str(tree)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])

    # The decorator-based migration and Step 2, called directly: exactly as before.
    assert out["direct_index"] == {"files": FILES // 4 + (FILES % 4 > 0), "patterns": ["*.py"]}
    assert out["direct_long"] == out["direct_long_cb"] == {"analysed": 100}
    assert out["calls"] == [101, ["Starting", 0, 100], ["Step 99", 99, 100]]

    # Step 2 as an operation of OperationType.CODE_ANALYSIS: the seed's awaited callback is its progress.
    a = out["analysis"]
    assert a["type"] == "code_analysis" and a["status"] == "completed" and a["result"] == {"analysed": 100}
    assert (a["progress"]["done"], a["progress"]["total"], a["progress"]["step"]) == (100, 100, "Step 99")

    # The decorator-based migration as an operation: no progress_callback; timed by estimated_items.
    ix = out["index"]
    assert ix["status"] == "completed" and ix["result"] == out["direct_index"]
    assert (ix["progress"]["done"], ix["progress"]["total"]) == (1000, 1000)  # estimated_items, then done
    assert ix["total_items"] == 1000 and ix["effective_timeout"] == 13600  # 1 h + 10 s x 1000 files (< 4 h)

    # The indexing example: fails at file 150, resumes from its own checkpoint "every 100 files".
    first = out["example_first"]
    assert first["status"] == "failed" and "lost the connection" in first["error"]
    saved = [c for c in out["example_checkpoints"] if c["next_step"] == "file_100"]
    assert saved and saved[0]["processed_items"] == 100
    done = out["example_resumed"]
    assert done["status"] == "completed" and done["attempt"] == 2 and done["result"] == {"indexed": FILES}
    p = done["progress"]
    assert (p["done"], p["total"], p["message"]) == (FILES, FILES, f"Processed {FILES} of {FILES} files")
    assert p["step"] == f"Indexing f{FILES - 1:03d}.{EXTS[(FILES - 1) % 4]}" and "files_per_second" in p["metrics"]
    runs = work_log.read_text().split()
    twice = {n for n in runs if runs.count(n) == 2}
    assert len(runs) == FILES + (CRASH_AT - 100) and twice == {f"f{i:03d}.{EXTS[i % 4]}" for i in range(100, CRASH_AT)}


@pytest.fixture(scope="module")
def seed_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("seed-api")
    server = Server(root, OUTLAST_PLUGINS="tests.seed_samples", SEED_WORK_SECONDS="0.01", SEED_TREE=str(root))
    yield server
    server.stop()


def test_seed_websocket_client_reads_progress(seed_server: Server) -> None:
    """What the seed's frontend does: ``update.type``, ``update.data.progress_percentage``,
    ``update.data.status_message`` on ``ws://HOST/api/operations/${operationId}/progress``."""
    ws_client = pytest.importorskip("websockets.sync.client")
    r = seed_server.http.post("/api/operations", json={"type": "code_analysis"})
    assert r.status_code == 202, r.text
    operation_id = r.json()["operation_id"]
    bars: list[float] = []
    statuses: list[str] = []
    with ws_client.connect(f"{seed_server.ws_url}/api/operations/{operation_id}/progress", open_timeout=30) as ws:
        while True:
            update = json.loads(ws.recv(timeout=40))
            if update["type"] == "progress_update":
                bars.append(update["data"]["progress_percentage"])  # updateProgressBar(...)
                statuses.append(update["data"]["status_message"])  # updateStatusMessage(...)
                assert update["data"]["operation_id"] == operation_id
                assert update["data"]["current_step"].startswith(("Starting", "Step "))
            if update["type"] == "final":
                break
    assert bars and all(0 <= b <= 100 for b in bars) and bars == sorted(bars)
    assert all(isinstance(s, str) for s in statuses)
    record = seed_server.op(operation_id)
    assert record["status"] == "completed" and record["progress"]["progress_percentage"] == 100.0
    assert record["progress"]["current_step"] == "Step 99"


SEED_JS = """
// Frontend WebSocket integration
const ws = new WebSocket(`ws://localhost:8001/api/operations/${operationId}/progress`);

ws.onmessage = (event) => {
    const update = JSON.parse(event.data);
    if (update.type === 'progress_update') {
        updateProgressBar(update.data.progress_percentage);
        updateStatusMessage(update.data.status_message);
    }
};
"""
"""The seed's JavaScript, as written there."""


def node_with_websocket() -> list[str] | None:
    """``node`` with a WebSocket global (Node 22 has one; 20 and 21 behind a flag), or None."""
    node = shutil.which("node")
    if node is None:
        return None
    for argv in ([node], [node, "--experimental-websocket"]):
        r = subprocess.run([*argv, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], capture_output=True)
        if r.returncode == 0:
            return argv
    return None


def test_seed_javascript_runs_unchanged_in_node(seed_server: Server, tmp_path: Path) -> None:
    node = node_with_websocket()
    if node is None:
        pytest.skip("no node with a WebSocket global")
    r = seed_server.http.post("/api/operations", json={"type": "code_analysis"})
    assert r.status_code == 202, r.text
    operation_id = r.json()["operation_id"]
    script = tmp_path / "seed.js"
    script.write_text(
        # not in the seed: the page's functions it calls, the id, and leaving when the server closes
        f"const operationId = {json.dumps(operation_id)};\n"
        "const updateProgressBar = (p) => console.log(JSON.stringify({bar: p}));\n"
        "const updateStatusMessage = (m) => console.log(JSON.stringify({message: m}));\n"
        + SEED_JS.replace("localhost:8001", f"127.0.0.1:{seed_server.port}")
        + "ws.onclose = () => process.exit(0);\n"
    )
    out = subprocess.run([*node, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls = [json.loads(line) for line in out.stdout.splitlines()]
    bars = [c["bar"] for c in calls if "bar" in c]
    messages = [c["message"] for c in calls if "message" in c]
    assert bars and len(bars) == len(messages) and bars == sorted(bars) and all(0 <= b <= 100 for b in bars)
    assert seed_server.op(operation_id)["status"] == "completed"


def test_api_records_and_checkpoints_carry_the_seed_names(seed_server: Server) -> None:
    api = seed_server
    op_id = api.submit(params={"items": 25, "seconds": 0}, profile={"checkpoint_every": 10})
    rec = api.wait_status(op_id, {"completed"})
    p = rec["progress"]
    assert (p["progress_percentage"], p["processed_items"], p["total_items"], p["current_step"]) == (
        100.0,
        25,
        25,
        "item 24",
    )
    assert {"estimated_completion", "performance_metrics", "status_message", "detailed_status"} <= set(p)
    cps = api.http.get(f"/api/operations/{op_id}/checkpoints").json()["checkpoints"]
    assert [c["checkpoint_id"] for c in cps] == ["2", "1"] and [c["processed_items"] for c in cps] == [20, 10]
    newest = cps[0]
    assert newest["timestamp"].endswith("+00:00") and newest["full"] is False
    assert newest["intermediate_results"] is None and newest["context_data"] is None  # listed: left out
    full = api.http.get(f"/api/operations/{op_id}/checkpoints/2").json()
    assert full["full"] is True and full["intermediate_results"]["sum"] == sum(range(20))
    assert full["state"] == full["intermediate_results"] and full["context_data"] == {}
    assert api.http.get(f"/api/operations/{op_id}/checkpoints/9").status_code == 404


def test_api_resume_with_a_profile(seed_server: Server) -> None:
    api = seed_server
    op_id = api.submit(params={"items": 40, "seconds": 0.02}, profile={"base_timeout": 0.2, "max_timeout": 0.2})
    assert api.wait_status(op_id, {"timed_out", "completed"})["status"] == "timed_out"
    r = api.http.post(f"/api/operations/{op_id}/resume", json={"profile": {"per_file_timeout": -1}})
    assert r.status_code == 422 and "per_item_timeout" in r.json()["detail"], r.text
    r = api.http.post(f"/api/operations/{op_id}/resume", json={"profile": {f"k{i}": 1 for i in range(40)}})
    assert r.status_code == 422 and "over the limit of 32" in r.json()["detail"], r.text
    assert api.op(op_id)["status"] == "timed_out"
    r = api.http.post(f"/api/operations/{op_id}/resume", json={"profile": {"max_timeout": 120}})
    assert r.status_code == 202, r.text
    rec = api.wait_status(op_id, {"completed", "timed_out", "failed"})
    assert rec["status"] == "completed" and rec["attempt"] == 2 and rec["profile"]["max_timeout"] == 120
