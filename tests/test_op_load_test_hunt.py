"""load_testing against what a user gives it: a Host of their own, a url with a space, a header HTTP cannot send."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine import Engine, OperationSpec, Status
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, submit


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, list[str]]] = []
    auth: list[list[str]] = []

    def do_GET(self) -> None:
        Recorder.seen.append((self.path, self.headers.get_all("Host") or []))
        Recorder.auth.append(self.headers.get_all("Authorization") or [])
        # as RFC 9112 (and nginx) asks: a request with two Host headers is a 400
        bad = len(self.headers.get_all("Host") or []) != 1
        body = b"ok"
        self.send_response(400 if bad else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def recorder() -> Iterator[str]:
    Recorder.seen = []
    Recorder.auth = []
    s = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    s.daemon_threads = True
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{s.server_address[1]}"
    s.shutdown()
    s.server_close()


async def _run(engine: Engine, **params: object) -> dict:
    op = await engine.submit(OperationSpec(type="load_testing", params={"duration": 0.3, "concurrency": 1, **params}))
    rec = await engine.wait(op.id, timeout=30)
    assert rec.status is Status.COMPLETED, rec.error
    return rec.result


async def test_a_host_header_of_the_users_replaces_the_default(engine: Engine, recorder: str) -> None:
    """A virtual host on this machine: the user's Host is the one sent (two were sent, and every request a 400)."""
    r = await _run(engine, url=f"{recorder}/", requests=3, headers={"host": "app.test"})
    assert r["status"] == {"200": 3}, r
    assert {tuple(h) for _, h in Recorder.seen} == {("app.test",)}


async def test_credentials_in_the_url_are_sent_as_basic_authentication(engine: Engine, recorder: str) -> None:
    """``http://user:pw@host/`` sends basic authentication, as curl does: the credentials were dropped, and every
    request against a protected endpoint was a 401. An Authorization of the user's is the one sent."""
    url = recorder.replace("http://", "http://al%20ice:p%40ss:w@")
    r = await _run(engine, url=f"{url}/", requests=2)
    assert r["status"] == {"200": 2}, r
    assert Recorder.auth == [["Basic " + base64.b64encode(b"al ice:p@ss:w").decode()]] * 2
    Recorder.auth = []
    await _run(engine, url=f"{url}/", requests=1, headers={"authorization": "Bearer t"})
    assert Recorder.auth == [["Bearer t"]]
    Recorder.auth = []
    await _run(engine, url=f"{recorder}/", requests=1)
    assert Recorder.auth == [[]]


async def test_a_space_or_a_letter_in_the_url_is_percent_encoded(engine: Engine, recorder: str) -> None:
    r = await _run(engine, url=f"{recorder}/a b/caf\u00e9?q=x y&k=%41", requests=2)
    assert r["status"] == {"200": 2}, r
    assert {p for p, _ in Recorder.seen} == {"/a%20b/caf%C3%A9?q=x%20y&k=%41"}


def test_a_header_http_cannot_send_is_refused(cli: Cli) -> None:
    bad_params(cli, "load_testing", {"url": "http://127.0.0.1:9/", "headers": {"X-Name": "\u4e2d"}}, "'X-Name'")


@pytest.mark.parametrize(
    ("rate", "slice_seconds", "duration", "per_slice"),
    [
        (1, 0.5, 2, [1, 0, 1, 0]),  # one request a second: one slice in two sends one
        (3, 0.5, 1, [2, 1]),  # requests at 0, 1/3 and 2/3 s
    ],
)
async def test_a_rate_is_the_runs_whatever_the_slices(
    engine: Engine, recorder: str, rate: float, slice_seconds: float, duration: float, per_slice: list[int]
) -> None:
    """Each slice had a schedule of its own, its share rounded up and its first request at its start, and
    ended with its last response: rate=1 in 1 s slices sent the whole run's requests at once, back to back,
    and rate=3 in half-second slices 2 every 0.33 s (6/s)."""
    r = await _run(engine, url=f"{recorder}/", rate=rate, slice_seconds=slice_seconds, duration=duration)
    assert [line[1] for line in r["timeline"]] == per_slice, r["timeline"]
    assert r["requests"] == rate * duration
    assert r["seconds"] >= duration - slice_seconds  # slices last their time: the run, its duration


@pytest.fixture
def endless_interim() -> Iterator[str]:
    """A server that answers each request with 100 Continue responses, without end."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=flood, args=(conn,), daemon=True).start()

    def flood(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.recv(4096)
            while not stop.is_set():
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 64)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/"
    stop.set()
    t.join(5)
    srv.close()


async def test_interim_responses_without_end_are_a_protocol_error(engine: Engine, endless_interim: str) -> None:
    """Each 1xx response was read a frame deeper: the error kind was "RecursionError"."""
    r = await _run(engine, url=endless_interim, requests=3, timeout=5)
    assert r["requests"] == 3 and r["errors"] == {"protocol": 3}, r


def test_a_duration_longer_than_the_operation_may_run_is_refused_at_submit(cli: Cli) -> None:
    """Accepted, a 7-hour run was stopped as timed out at load_testing's max_timeout (6 h), hours in."""
    base = {"url": "http://127.0.0.1:9/", "slice_seconds": 10}
    limit = "max_timeout of 21600s (6h00m)"
    bad_params(
        cli,
        "load_testing",
        {**base, "duration": 25200},
        f"duration 25200s (7h00m) does not fit in the operation's {limit}",
    )
    bad_params(cli, "load_testing", {**base, "duration": 21595}, limit)  # its last request's timeout after it: past
    r = cli("run", "load_testing", "--timeout", "50", "--params-json", json.dumps({**base, "duration": 100}))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "the operation's timeout of 50s" in r.stderr, r.stderr


def test_a_duration_the_operation_may_run_is_accepted(cli: Cli) -> None:
    base = {"url": "http://127.0.0.1:9/", "slice_seconds": 10}
    submit(cli, "load_testing", {**base, "duration": 21590})
    submit(cli, "load_testing", {**base, "duration": 25200}, "max_timeout=30000")
    submit(cli, "load_testing", {**base, "duration": 25200, "requests": 10})  # requests may end it long before
