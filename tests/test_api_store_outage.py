"""``outlast serve`` through a store outage: work it gave up writing is settled, or the server stops.

The state dir lives on a small real tmpfs (as in the fault suite; skipped where mounting is not
permitted), filled while an operation runs; or it is deleted under the server.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_api import Server, poll
from tests.fixtures_disk import fill as fill_disk

pytest.importorskip("fastapi")
ws_client = pytest.importorskip("websockets.sync.client")
pytestmark = pytest.mark.timeout(180)


def _running(srv: Server) -> str:
    op_id = srv.submit(params={"items": 4000, "seconds": 0.02}, profile={"checkpoint_interval": 0.5})
    srv.wait_status(op_id, {"running"})
    poll(lambda: srv.op(op_id)["checkpoint_seq"], what="a checkpoint")
    return op_id


def _said(srv: Server, needle: str) -> list[str]:
    return [ln for ln in srv.output().splitlines() if needle in ln]


def test_work_given_up_on_a_full_disk_is_settled_once_there_is_room(tmp_path: Path, small_fs: Path) -> None:
    srv = Server(tmp_path / "srv", OUTLAST_STATE_DIR=str(small_fs / "state"), OUTLAST_STORE_OUTAGE_LIMIT="2")
    try:
        op_id = _running(srv)
        with ws_client.connect(f"{srv.ws_url}/api/operations/{op_id}/progress", open_timeout=30) as ws:
            fill = fill_disk(small_fs)
            poll(lambda: _said(srv, "not written") or _said(srv, "cannot be written"), 30, what="the outage said")
            try:
                time.sleep(5)  # past the outage limit (2 s): the attempt ended, its status not written
                assert srv.op(op_id)["status"] == "running"
            finally:
                fill.unlink()
            op = srv.wait_status(op_id, {"interrupted"}, timeout=30)
            assert op["status"] == "interrupted"
            final: dict[str, Any] = {}
            while not final:
                msg = json.loads(ws.recv(timeout=30))
                if msg["type"] == "final":
                    final = msg
            assert final["status"] == "interrupted" and final["resumable"] is True
        assert srv.stop(signal.SIGTERM) == 0, srv.output()
        assert "Traceback" not in srv.output()
    finally:
        srv.stop(signal.SIGKILL)


def test_sigterm_while_the_disk_stays_full_exits_8_in_one_line(tmp_path: Path, small_fs: Path) -> None:
    srv = Server(tmp_path / "srv", OUTLAST_STATE_DIR=str(small_fs / "state"), OUTLAST_STORE_OUTAGE_LIMIT="2")
    try:
        op_id = _running(srv)
        fill = fill_disk(small_fs)
        try:
            poll(lambda: _said(srv, "cannot be written"), 30, what="the outage said")
            time.sleep(5)  # past the outage limit: the attempt was given up
            assert srv.stop(signal.SIGTERM) == 8, srv.output()
            last = _said(srv, "outlast serve: stopped:")
            assert len(last) == 1 and op_id in last[0] and "interrupted" in last[0], srv.output()
            assert "Traceback" not in srv.output()
        finally:
            fill.unlink()
    finally:
        srv.stop(signal.SIGKILL)


def test_a_state_dir_deleted_under_running_work_stops_the_server_with_8(tmp_path: Path) -> None:
    srv = Server(tmp_path / "srv", OUTLAST_STORE_OUTAGE_LIMIT="2")
    try:
        op_id = _running(srv)
        shutil.rmtree(tmp_path / "srv" / "state")
        assert srv.popen.wait(40) == 8, srv.output()
        last = _said(srv, "outlast serve: stopped:")
        assert len(last) == 1 and op_id in last[0] and "cannot be resumed" in last[0], srv.output()
        assert "Traceback" not in srv.output()
    finally:
        srv.stop(signal.SIGKILL)
