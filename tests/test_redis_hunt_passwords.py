"""A store URL whose password holds '#', '/' or '?' (which end a URL's user-and-password part unless
percent-encoded): one line saying how to write it, exit 2, and no piece of the password printed. The
piece before the character was read as the port ("Port could not be cast to integer value as 'secret'",
printed twice, the URL "redacted" with it in clear) or, after an '@', as the host ("redis ss:6379")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import open_store
from engine.config import redact_url
from engine.models import InvalidInput
from tests.fixtures_cli import main_here

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
