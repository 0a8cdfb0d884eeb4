"""A store URL whose password holds '#', '/' or '?' (which end a URL's user-and-password part unless
percent-encoded): one line saying how to write it, exit 2, and no piece of the password printed. The
piece before the character was read as the port ("Port could not be cast to integer value as 'secret'",
printed twice, the URL "redacted" with it in clear) or, after an '@', as the host ("redis ss:6379")."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import open_store
from engine.config import redact_url
from engine.models import InvalidInput
from tests.fixtures_cli import main_here
from tests.fixtures_redis import RedisServer

URLS = [
    "redis://:Zq7k#Xv9@127.0.0.1:1/0",
    "redis://:Zq7k/Xv9@127.0.0.1:1/0",
    "redis://:Zq7k?Xv9@127.0.0.1:1/0",
    "redis://:Zq7k@Wm4#Xv9/Yp2?Jr5@127.0.0.1:1/0",
    "redis://admin:Zq7k#Xv9@127.0.0.1:1/0",
    "unix://:Zq7k#Xv9@/run/redis.sock",
]
SECRET_PIECES = ("Zq7k", "Xv9", "Wm4", "Yp2", "Jr5")


@pytest.mark.parametrize("url", URLS)
def test_a_password_that_cuts_the_url_short_is_one_line_without_it(url: str, tmp_path: Path) -> None:
    env = {**os.environ, "OUTLAST_STATE_DIR": str(tmp_path / "state")}
    env.pop("OUTLAST_STORE", None)
    r = main_here(["--store", url, "ls"], env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r
    assert "percent-encoded (%23, %2F, %3F" in lines[0], lines[0]
    assert not any(piece in lines[0] for piece in SECRET_PIECES), lines[0]
    assert not any(piece in (redact_url(url) or "") for piece in SECRET_PIECES), redact_url(url)
    with pytest.raises(InvalidInput) as e:  # the library's way in, without the command line's check
        open_store(url, checkpoint_mirror=None)
    assert not any(piece in str(e.value) for piece in SECRET_PIECES), e.value


def test_a_query_value_with_an_at_sign_is_not_taken_for_a_password() -> None:
    url = "redis://127.0.0.1:1/0?client_name=ops@team"
    assert redact_url(url) == url
    open_store(url, checkpoint_mirror=None)  # not refused (not opened either)


@pytest.mark.redis
def test_an_acl_user_in_the_store_url_is_the_one_redis_is_logged_into(
    redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """``redis://USER:PASSWORD@...`` logs in as USER (Redis 6 ACLs), not as the default user with USER's
    password; the URL shown keeps the user and hides the password."""
    server = redis_factory(password="default-only")
    server.client().execute_command("ACL", "SETUSER", "alice", "on", ">Zq7kXv9", "~*", "&*", "+@all")
    env = {**os.environ, "OUTLAST_STATE_DIR": str(tmp_path / "state")}
    env.pop("OUTLAST_STORE", None)
    url = f"redis://alice:Zq7kXv9@127.0.0.1:{server.port}/0"
    r = main_here(["--store", url, "run", "demo", "-p", "items=2", "-p", "seconds=0"], env=env)
    assert r.returncode == 0, r.stderr
    assert f"redis://alice:***@127.0.0.1:{server.port}/0" in r.stderr + r.stdout and "Zq7k" not in r.stderr + r.stdout
    r = main_here(["--store", f"redis://:Zq7kXv9@127.0.0.1:{server.port}/0", "ls"], env=env)  # as the default user
    assert r.returncode != 0 and "authentication failed" in r.stderr, r.stderr
