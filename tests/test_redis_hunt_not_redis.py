"""A store URL whose port is another server's (an HTTP server, SSH): one line saying that what answers is
not a Redis server, exit 8. It said "protocol error, got "<" as reply type byte", which named neither
the URL nor what to check."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from engine.exitcodes import ExitCode
from tests import zygote
from tests.fixtures_cli import REPO


@pytest.fixture(
    params=[b"HTTP/1.0 400 Bad Request\r\n\r\n<html></html>", b"SSH-2.0-OpenSSH_9.6\r\n"], ids=["http", "ssh"]
)
def other_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A server on a free port that answers every connection with ``request.param``, then closes it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(request.param)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
    listener.close()
    thread.join(5)


def test_a_url_to_another_kind_of_server_is_one_line_naming_it(other_server: int, tmp_path: os.PathLike[str]) -> None:
    r = zygote.run(
        ["--store", f"redis://127.0.0.1:{other_server}/0", "ls"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), "OUTLAST_STATE_DIR": str(tmp_path)},
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == ExitCode.STORE, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and "is not a Redis server" in r.stderr, r.stderr
    assert f"127.0.0.1:{other_server}" in r.stderr and "host and port" in r.stderr, r.stderr
