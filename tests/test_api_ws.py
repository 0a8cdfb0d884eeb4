"""WebSocket progress, and control of operations run by another process (``outlast worker``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

import pytest

from engine import Engine, OperationContext, OperationSpec, Status, operation
from engine.models import LogEmitted, LogRecord, StatusChanged
from tests import zygote
from tests.fixtures_api import REPO, Server, poll

pytest.importorskip("fastapi")
ws_client = pytest.importorskip("websockets.sync.client")
_wsx = pytest.importorskip("websockets.exceptions")
ConnectionClosed, ConnectionClosedOK = _wsx.ConnectionClosed, _wsx.ConnectionClosedOK
pytestmark = pytest.mark.timeout(120)

from engine.api.progress import ProgressHub, Subscriber  # noqa: E402  (fastapi: skipped above without it)


def read_until(ws: Any, pred: Any, timeout: float = 40.0) -> list[dict[str, Any]]:
    """Messages up to and including the first one ``pred`` accepts."""
    got: list[dict[str, Any]] = []
    while True:
        msg = json.loads(ws.recv(timeout=timeout))
        got.append(msg)
        if pred(msg):
            return got


def test_one_operation_progress_then_final_and_close(api: Server) -> None:
    op_id = api.submit(params={"items": 40, "seconds": 0.05}, profile={"checkpoint_interval": 0.5})
    with ws_client.connect(f"{api.ws_url}/api/operations/{op_id}/progress", open_timeout=30) as ws:
        msgs = read_until(ws, lambda m: m["type"] == "final")
        with pytest.raises(ConnectionClosedOK) as closed:
            ws.recv(timeout=10)  # the server closes the socket after the final message
        assert closed.value.rcvd.code == 1000
    assert msgs[0]["type"] == "snapshot" and msgs[0]["operation"]["id"] == op_id
    updates = [m for m in msgs if m["type"] == "progress_update"]
    assert updates and all(m["operation_id"] == op_id for m in updates)
    p = updates[-1]["progress"]
    assert {"percent", "done", "total", "rate", "eta", "step", "message"} <= set(p)
    assert p["total"] == 40 and 0 < p["done"] <= 40
    assert any(m["type"] == "checkpoint_saved" for m in msgs)
    final = msgs[-1]
    assert final["status"] == "completed" and final["result"]["items"] == 40 and final["resumable"] is False


def test_settled_operation_gets_snapshot_its_last_progress_and_final(api: Server) -> None:
    """A client that reads only `progress_update` (the seed's page) and connects just after a quick
    operation ended sees its bar at 100%, as one that saw it end does."""
    op_id = api.submit(params={"items": 2, "seconds": 0})
    api.wait_status(op_id, {"completed"})
    with ws_client.connect(f"{api.ws_url}/api/operations/{op_id[:10]}/progress", open_timeout=30) as ws:
        msgs = read_until(ws, lambda m: m["type"] == "final")
    assert [m["type"] for m in msgs] == ["snapshot", "progress_update", "final"]
    assert msgs[1]["data"]["progress_percentage"] == 100.0 and msgs[1]["data"]["operation_id"] == op_id


def test_unknown_and_malformed_ids_close_with_a_reason(api: Server) -> None:
    for raw, code in (("zzzzzzzzzzzzz", 4404), ("BAD!", 4422)):
        with ws_client.connect(f"{api.ws_url}/api/operations/{raw}/progress", open_timeout=30) as ws:
            msg = json.loads(ws.recv(timeout=20))
            assert msg["type"] == "error" and msg["detail"]
            with pytest.raises(ConnectionClosed) as exc:
                ws.recv(timeout=20)
            assert exc.value.rcvd.code == code


def test_all_operations_stream(api: Server) -> None:
    with ws_client.connect(f"{api.ws_url}/api/operations/progress", open_timeout=30) as ws:
        first = json.loads(ws.recv(timeout=20))
        assert first["type"] == "snapshot" and isinstance(first["operations"], list)
        a = api.submit(params={"items": 10, "seconds": 0.05})
        b = api.submit(params={"items": 3, "seconds": 0.01})
        finals: dict[str, dict[str, Any]] = {}

        def both_final(m: dict[str, Any]) -> bool:
            if m["type"] == "final":
                finals[m["operation_id"]] = m
            return {a, b} <= set(finals)

        msgs = read_until(ws, both_final)
    assert finals[a]["status"] == finals[b]["status"] == "completed"
    statuses = [m for m in msgs if m["type"] == "status_changed" and m["operation_id"] == a]
    assert statuses and statuses[-1]["status"] == "completed"


def test_cancel_over_http_stops_an_operation_run_by_a_worker(observer: Server) -> None:
    worker = zygote.popen(
        ["worker"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**observer.env, "OUTLAST_MAX_MEMORY_PERCENT": ""},
        cwd=REPO,
    )
    try:
        op_id = observer.submit(params={"items": 2000, "seconds": 0.02}, profile={"checkpoint_interval": 0.5})
        running = observer.wait_status(op_id, {"running"})
        assert running["worker"]["pid"] == worker.pid  # run by the other process, not the server
        all_ws = ws_client.connect(f"{observer.ws_url}/api/operations/progress", open_timeout=30)
        with all_ws, ws_client.connect(f"{observer.ws_url}/api/operations/{op_id}/progress", open_timeout=30) as ws:
            # Progress of another process's operation arrives through the store, on both streams.
            read_until(ws, lambda m: m["type"] == "progress_update" and m["progress"]["done"] > 0)
            read_until(all_ws, lambda m: m["type"] == "progress_update" and m["operation_id"] == op_id)
            r = observer.http.post(f"/api/operations/{op_id}/cancel")
            assert r.status_code == 202 and r.json()["pending"] is True
            msgs = read_until(ws, lambda m: m["type"] == "final")
            seen_all = read_until(all_ws, lambda m: m["type"] == "final" and m["operation_id"] == op_id)
        assert msgs[-1]["status"] == "cancelled" and msgs[-1]["resumable"] is True
        assert seen_all[-1]["status"] == "cancelled"
        op = observer.op(op_id)
        assert op["status"] == "cancelled" and 0 < op["progress"]["done"] < 2000
        assert worker.poll() is None  # the worker goes on; only the operation stopped
        # Resume over HTTP: the worker picks it up again from its checkpoint.
        r = observer.http.post(f"/api/operations/{op_id}/resume")
        assert r.status_code == 202
        poll(lambda: observer.op(op_id)["attempt"] == 2 and observer.op(op_id)["status"] == "running", 40)
        observer.http.post(f"/api/operations/{op_id}/cancel")
        observer.wait_status(op_id, {"cancelled"})
    finally:
        worker.terminate()
        worker.wait(30)


def test_a_one_operation_stream_goes_on_past_an_interruption_to_the_resumed_end(start_server: Any) -> None:
    """The worker running it SIGKILLed: the stream sends ``final`` interrupted and stays open, and the same
    socket follows the operation resumed (by a Redis worker whose lease ran out or ``auto_resume``, under the
    same id) to its end. It closed at the interruption, and the seed's page showed its bar stopped."""
    srv = start_server(OUTLAST_MAX_MEMORY_PERCENT="0.01")  # its engine starts no work: workers run it

    def worker() -> subprocess.Popen[bytes]:
        env = {**srv.env, "OUTLAST_MAX_MEMORY_PERCENT": ""}
        return zygote.popen(["worker"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, cwd=REPO)

    first = worker()
    second = None
    try:
        op_id = srv.submit(params={"items": 600, "seconds": 0.02}, profile={"checkpoint_interval": 0.2})
        assert srv.wait_status(op_id, {"running"})["worker"]["pid"] == first.pid
        with ws_client.connect(f"{srv.ws_url}/api/operations/{op_id}/progress", open_timeout=30) as ws:
            read_until(ws, lambda m: m["type"] == "progress_update" and m["progress"]["done"] >= 30)
            first.kill()
            first.wait(30)
            msgs = read_until(ws, lambda m: m["type"] == "final")
            assert msgs[-1]["status"] == "interrupted" and msgs[-1]["resumable"] is True
            assert srv.http.post(f"/api/operations/{op_id}/resume").status_code == 202
            second = worker()
            msgs = read_until(ws, lambda m: m["type"] == "final")
            with pytest.raises(ConnectionClosedOK):
                ws.recv(timeout=20)
        assert msgs[-1]["status"] == "completed" and msgs[-1]["result"]["items"] == 600
        updates = [m for m in msgs if m["type"] == "progress_update"]
        assert updates[-1]["data"]["progress_percentage"] == 100.0
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(30)


def test_pages_on_other_sites_cannot_use_the_api_from_a_browser(observer: Server) -> None:
    op_id = observer.submit(params={"items": 10})  # stays queued: the observer starts nothing
    evil = {"Origin": "http://evil.example"}
    r = observer.http.post(f"/api/operations/{op_id}/cancel", headers=evil)
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
    r = observer.http.post("/api/operations", json={"type": "demo"}, headers=evil)
    assert r.status_code == 403
    assert observer.op(op_id)["status"] == "queued"
    with pytest.raises(_wsx.InvalidStatus):
        ws_client.connect(f"{observer.ws_url}/api/operations/progress", origin="http://evil.example")
    # The server's own origin (a page it is proxied behind) is fine.
    same = {"Origin": observer.url}
    assert observer.http.post(f"/api/operations/{op_id}/cancel", headers=same).status_code == 200
    with ws_client.connect(f"{observer.ws_url}/api/operations/progress", origin=observer.url) as ws:
        assert '"snapshot"' in ws.recv(timeout=20)


def test_a_loopback_server_answers_only_to_loopback_names(observer: Server) -> None:
    # DNS rebinding: a page at http://evil.example:PORT whose name now points to 127.0.0.1.
    r = observer.http.get("/api/operations/", headers={"Host": f"evil.example:{observer.port}"})
    assert r.status_code == 400
    assert observer.http.get("/api/health", headers={"Host": f"localhost:{observer.port}"}).status_code == 200


LAST_GATE: dict[str, asyncio.Event] = {}


@operation("test_ws_last_progress")
async def ws_last_progress(ctx: OperationContext, params: dict) -> str:
    """36 of 40 reported, then (once the test lets it) 40 of 40 and done at once."""
    ctx.progress(36, total=40, step="item 36")
    LAST_GATE["reached"].set()
    await LAST_GATE["go"].wait()
    ctx.progress(40, step="item 40")
    return "ok"


async def test_the_last_progress_update_comes_before_the_final_message(engine: Engine) -> None:
    """The seed's frontend draws its bar from progress_update alone: the last one must say 100%, not the
    last sample's 90% (the hub polls progress; here once only, so that no poll can catch 40 of 40)."""
    LAST_GATE.update(reached=asyncio.Event(), go=asyncio.Event())
    op = await engine.submit(OperationSpec(type="test_ws_last_progress"))
    await asyncio.wait_for(LAST_GATE["reached"].wait(), 20)
    hub = ProgressHub(engine, poll=3600)
    sub = Subscriber(op.id)
    hub.add(sub)
    hub.start()
    try:
        msgs = [await asyncio.wait_for(sub.queue.get(), 20)]
        LAST_GATE["go"].set()
        while msgs[-1]["type"] != "final":
            msgs.append(await asyncio.wait_for(sub.queue.get(), 20))
    finally:
        await hub.stop()
    kinds = ["status_changed", "progress_update", "progress_update", "status_changed", "final"]
    assert [m["type"] for m in msgs] == kinds  # running, 36 of 40, 40 of 40, completed, final
    assert [m["data"]["progress_percentage"] for m in msgs[1:3]] == [90.0, 100.0]
    assert msgs[2]["data"]["processed_items"] == 40 and msgs[2]["status"] == "completed"


LOG_GATE: dict[str, asyncio.Event] = {}


@operation("test_ws_logs")
async def ws_logs(ctx: OperationContext, params: dict) -> str:
    if "at" in LOG_GATE:
        LOG_GATE["at"].set()
    await LOG_GATE["go"].wait()
    for i in range(5):
        ctx.log.info(f"line {i}")
    return "ok"


async def test_a_poll_that_reads_an_operation_settled_sends_the_log_lines_published_meanwhile_first(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt's last log lines are published, then its final status written. A poll of the store that
    read the operation settled (its read ran beside the settle: a Redis store, another connection) sent
    `final` first, and the one-operation socket, closed on `final`, never sent the lines behind it."""
    LOG_GATE["go"] = asyncio.Event()  # the handler itself waits: the log line and the settle are the test's
    LOG_GATE["at"] = asyncio.Event()
    op = await engine.submit(OperationSpec(type="test_ws_logs"))
    # Its handler at the gate before the hub listens: the hub's handling of "running" reads the operation too,
    # and under load it came after hub.start() and took the one settled read meant for the poll, which then
    # read it running for ever (CI runs hung here). The store says running before the engine announces it:
    # the handler at the gate comes after both.
    try:
        await asyncio.wait_for(LOG_GATE["at"].wait(), 20)
    finally:
        del LOG_GATE["at"]
    hub = ProgressHub(engine, poll=0.01)
    sub = Subscriber(op.id)
    real_get = engine.get
    sent: list[str] = []

    async def get(op_id: str) -> Any:
        if op_id != op.id or sent:
            return await real_get(op_id)
        sent.append(op_id)
        record = LogRecord(ts=time.time(), level="info", message="the last line", operation_id=op.id)
        engine.publish(LogEmitted(operation_id=op.id, record=record))  # the settle, beside the read
        settled = await real_get(op_id)
        return settled.model_copy(update={"status": Status.COMPLETED, "result": "ok", "finished_at": time.time()})

    monkeypatch.setattr(engine, "get", get)
    hub.add(sub)
    hub.start()
    try:
        msgs = [await asyncio.wait_for(sub.queue.get(), 20)]
        while msgs[-1]["type"] != "final":
            msgs.append(await asyncio.wait_for(sub.queue.get(), 20))
    finally:
        await hub.stop()
        LOG_GATE["go"].set()
    assert [m["message"] for m in msgs if m["type"] == "log"] == ["the last line"], msgs


async def test_a_poll_does_not_announce_what_it_read_before_a_status_change_handled_meanwhile(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll read an operation running; while it read, the operation completed (its event queued). The
    event is handled first, so `final` goes out; what the poll read is older and is not announced after it
    (a stream that said completed, then running)."""
    LOG_GATE["go"] = asyncio.Event()
    op = await engine.submit(OperationSpec(type="test_ws_logs"))
    hub = ProgressHub(engine, poll=0.01)
    everything = Subscriber(None)
    real_get, real_list = engine.get, engine.list_operations
    completed: list[float] = []

    def seen(found: Any) -> Any:
        if found.id != op.id or not completed:
            return found
        return found.model_copy(update={"status": Status.COMPLETED, "result": "ok", "finished_at": completed[0]})

    async def list_operations(*args: Any, **kw: Any) -> Any:
        found = [seen(o) for o in await real_list(*args, **kw)]
        if not completed and any(o.id == op.id for o in found):  # the poll read it running; it completes now
            completed.append(time.time())
            engine.publish(StatusChanged(operation_id=op.id, status=Status.COMPLETED, previous=Status.RUNNING))
        return found

    async def get(op_id: str) -> Any:
        return seen(await real_get(op_id))

    monkeypatch.setattr(engine, "get", get)
    monkeypatch.setattr(engine, "list_operations", list_operations)
    hub.add(everything)
    hub.start()
    try:
        msgs: list[dict[str, Any]] = []
        while not [m for m in msgs if m["type"] == "final"]:
            msgs.append(await asyncio.wait_for(everything.queue.get(), 20))
        await asyncio.sleep(0.2)  # polls after it
        while not everything.queue.empty():
            msgs.append(everything.queue.get_nowait())
    finally:
        await hub.stop()
        LOG_GATE["go"].set()
    mine = [m for m in msgs if m.get("operation_id") == op.id or m.get("operation", {}).get("id") == op.id]
    after = mine[[m["type"] for m in mine].index("final") + 1 :]
    assert not [m for m in after if m.get("status") == "running"], after


async def test_the_all_operations_stream_gets_no_logs(engine: Engine) -> None:
    """Logs go to the operation's own stream only, even while someone follows that one: the all-operations
    stream is documented without them (a chatty command flooded every dashboard following everything)."""
    LOG_GATE["go"] = asyncio.Event()
    hub = ProgressHub(engine, poll=3600)
    everything, one = Subscriber(None), Subscriber("")
    hub.add(everything)
    hub.start()
    try:
        op = await engine.submit(OperationSpec(type="test_ws_logs"))
        one.op_id = op.id
        hub.add(one)  # who follows the operation itself: its log lines flow through the hub
        LOG_GATE["go"].set()
        await engine.wait(op.id)
        lines: list[str] = []
        while len(lines) < 5:  # sent to both subscribers at once, if to the all-operations one at all
            msg = await asyncio.wait_for(one.queue.get(), 20)
            lines += [msg["message"]] if msg["type"] == "log" and msg["message"].startswith("line ") else []
        to_all: list[dict[str, Any]] = []
        while not everything.queue.empty():
            to_all.append(everything.queue.get_nowait())
    finally:
        await hub.stop()
    assert lines == [f"line {i}" for i in range(5)]
    assert to_all, "the all-operations subscriber got nothing"
    assert not [m for m in to_all if m["type"] == "log"], to_all


def test_the_all_operations_snapshot_holds_every_active_operation(tmp_path: Any) -> None:
    """More active operations than one read of the store returns (1,000): all of them are in the snapshot."""
    from engine import load_settings

    n = 1050
    srv = Server(tmp_path / "srv", OUTLAST_MAX_MEMORY_PERCENT="0.01")  # runs nothing: they stay queued
    try:

        async def submit_all() -> None:
            settings = load_settings(env=srv.env)
            async with Engine(settings=settings, run_queue=False) as e:
                for _ in range(n):
                    await e.submit(OperationSpec(type="demo", params={"items": 1}))

        asyncio.run(submit_all())
        ids: set[str] = set()
        with ws_client.connect(f"{srv.ws_url}/api/operations/progress", open_timeout=30) as ws:
            while True:
                msg = json.loads(ws.recv(timeout=30))
                assert msg["type"] == "snapshot"
                ids |= {o["id"] for o in msg["operations"]}
                if not msg["more"]:
                    break
        assert len(ids) == n
    finally:
        srv.stop()


async def test_a_reader_that_falls_behind_is_told_how_many_messages_it_lost_and_where() -> None:
    """A burst (20,000 log lines) reached a slow client as its first 2 and last 2,000 lines, nothing in the
    stream saying the rest were dropped. The next message after a loss is now a ``gap`` counting them."""
    sub = Subscriber("06bmop")
    for i in range(2005):
        sub.put({"type": "log", "message": f"line {i}"})
    gap = await sub.get()
    assert (gap["type"], gap["operation_id"], gap["dropped"]) == ("gap", "06bmop", 5), gap
    assert "GET /api/operations/06bmop/logs" in gap["detail"]
    assert (await sub.get())["message"] == "line 5"  # the oldest kept: the gap stands where the lost ones were
    sub.put({"type": "final"})
    rest = [await sub.get() for _ in range(2000)]
    assert [m["type"] for m in rest[-2:]] == ["log", "final"] and not sub.dropped
