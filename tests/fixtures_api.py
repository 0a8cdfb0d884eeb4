"""Fixtures for API tests: the real ``outlast serve`` in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import zygote

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_env(root: Path, **extra: str) -> dict[str, str]:
    """An environment isolated in ``root``: state, config and XDG dirs; no OUTLAST_* from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
    env.update(
        OUTLAST_STATE_DIR=str(root / "state"),
        XDG_CONFIG_HOME=str(root / "config"),
        XDG_STATE_HOME=str(root / "xdg-state"),
        OUTLAST_GRACE_PERIOD="3",
    )
    env.update(extra)
    return env


def poll(pred: Any, timeout: float = 30.0, every: float = 0.1, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(every)


def _limit_fds(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


class Server:
    """``outlast serve`` on 127.0.0.1 (or a wider bind), with its output in files."""

    def __init__(self, root: Path, *args: str, token: str | None = None, nofile: int | None = None, **env: str) -> None:
        """``nofile``: the server's file descriptor limit (RLIMIT_NOFILE), when not the inherited one."""
        self.root = root
        self.env = api_env(root, **env)
        self.token = token
        root.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):  # the free port may be taken by another test's process before serve binds it
            self.port = free_port()
            self.log = root / f"serve-{self.port}.log"
            with open(self.log, "w") as out:
                self.popen = zygote.popen(
                    ["serve", "--port", str(self.port), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=REPO,
                    preexec_fn=None if nofile is None else lambda: _limit_fds(nofile),
                )
            self.url = f"http://127.0.0.1:{self.port}"
            self.ws_url = f"ws://127.0.0.1:{self.port}"
            import httpx  # the test extra; imported here so other areas' tests never need it

            headers = {"Authorization": f"Bearer {token}"} if token else {}
            self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)
            try:
                poll(self._up, 40, 0.2, what=f"server on port {self.port} up ({self.output()})")
                return
            except AssertionError:
                self.http.close()
                if attempt == 4 or "Address already in use" not in self.output():
                    raise

    def _up(self) -> bool:
        import httpx

        if self.popen.poll() is not None:
            raise AssertionError(f"outlast serve exited {self.popen.returncode}: {self.output()}")
        try:
            return self.http.get("/api/health").status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def submit(self, **spec: Any) -> str:
        r = self.http.post("/api/operations", json={"type": "demo", **spec})
        assert r.status_code == 202, r.text
        return r.json()["operation_id"]

    def op(self, op_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/operations/{op_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, op_id: str, statuses: set[str], timeout: float = 40.0) -> dict[str, Any]:
        return poll(
            lambda: (op := self.op(op_id))["status"] in statuses and op, timeout, 0.1, what=f"{op_id} in {statuses}"
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.http.close()
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                return self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose embedded engine runs queued work (3 slots), with the tests' operation types."""
    s = Server(tmp_path_factory.mktemp("api"), OUTLAST_PLUGINS="tests.ops_for_tests")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def observer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose engine starts no work (its admission limit is never met): what it shows is run
    by other processes (``outlast worker``), or stays queued."""
    s = Server(tmp_path_factory.mktemp("observer"), OUTLAST_MAX_MEMORY_PERCENT="0.01")
    yield s
    s.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Start servers with extra arguments; all are stopped at the end of the test."""
    started: list[Server] = []

    def start(*args: str, token: str | None = None, **env: str) -> Server:
        s = Server(tmp_path / f"srv{len(started)}", *args, token=token, **env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop(signal.SIGKILL)
