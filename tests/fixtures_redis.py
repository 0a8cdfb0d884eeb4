"""A real redis-server per test: free port, temporary directory, persistence as the test needs.

Without redis-server on PATH the Redis tests are skipped, unless OUTLAST_REQUIRE_REDIS=1
(CI), in which case they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from engine import open_store
from engine.store.base import Store

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process; ``stop``/``kill`` then ``start`` again on the same port and directory."""

    def __init__(self, directory: Path, persistence: bool = False, password: str | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.password = password
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        assert REDIS_SERVER is not None
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        argv += ["--save", "", "--logfile", "redis.log", "--protected-mode", "no"]
        if self.persistence:  # every write in the append-only file before Redis answers
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)
        end = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    if self.proc.poll() is not None:
                        log = (self.dir / "redis.log").read_text(errors="replace")[-500:]
                        raise RuntimeError(f"redis-server exited: {log}") from None
                if time.monotonic() > end:
                    raise RuntimeError("redis-server did not answer PING")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (with persistence on, everything is on disk)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Redis stopped with SIGSTOP (a suspended VM, a debugger): it answers nothing, its socket takes what is
        sent; thawed (SIGCONT) on the way out."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    async def up_for(self, seconds: int) -> None:
        """Until Redis has been up ``seconds``: a store's look for orphans trusts no missing lease before its
        lease time has passed since Redis started (live workers have not renewed theirs yet)."""
        while int(self.client().info("server")["uptime_in_seconds"]) < seconds:
            await asyncio.sleep(0.2)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``redis_factory(persistence=False, password=None)`` starts a redis-server (stopped after the test)."""
    if REDIS_SERVER is None:
        if os.environ.get("OUTLAST_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not installed, and OUTLAST_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not installed")
    servers: list[RedisServer] = []

    def make(persistence: bool = False, password: str | None = None) -> RedisServer:
        for attempt in range(3):  # the free port may be taken before redis-server binds it
            server = RedisServer(tmp_path / f"redis{len(servers)}-{attempt}", persistence, password)
            servers.append(server)
            try:
                server.start()
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            return server
        raise AssertionError("unreachable")

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    """A redis-server without persistence."""
    return redis_factory()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """New store objects on one store, each with its own connection (as two processes have): a state dir,
    or a namespace on a fresh redis-server; the test runs once with each."""
    if request.param == "sqlite":
        return lambda: open_store(tmp_path / "state")
    url = request.getfixturevalue("redis_server").url
    return lambda: open_store(url, namespace="t", checkpoint_mirror=None)
