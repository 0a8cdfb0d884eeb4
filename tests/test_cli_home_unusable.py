"""A HOME where nothing can be made, as cron and service accounts have it (``HOME=/nonexistent``), and no
``--state-dir``: a command that writes says in one line that the default state dir cannot be made and how
to give another (exit 8); one that needs no state dir (``types``) works. A HOME whose directories answer
"No such file or directory" with their parent there (``/proc``) ended every command in a RecursionError
(exit 70, an internal error) as the directory was tried again for ever."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from engine.exitcodes import ExitCode
from tests.fixtures_cli import Cli


def _env_without_state_dir(cli: Cli, home: str) -> dict[str, str]:
    """``cli``'s environment with ``home`` as HOME and no state dir nor XDG directory named: the defaults."""
    env = {k: v for k, v in cli.env.items() if not k.startswith("XDG_") and k != "OUTLAST_STATE_DIR"}
    env["HOME"] = home
    return env


def test_a_home_where_nothing_can_be_made_is_said_in_one_line(cli: Cli, state_dir: Path) -> None:
    home = f"/proc/{os.getpid()}-no-such-home"  # mkdir there: "No such file or directory", /proc there
    env = _env_without_state_dir(cli, home)
    r = cli("types", env=env)
    assert r.returncode == 0, r.stderr  # no state dir needed (its cache of plugins is only a cache)
    r = cli("-q", "submit", "demo", env=env)
    assert r.returncode == ExitCode.STORE, (r.returncode, r.stderr)
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"state dir {home}/.local/state/outlast" in r.stderr, r.stderr
    assert "--state-dir or OUTLAST_STATE_DIR" in r.stderr, r.stderr


def test_no_home_at_all_is_no_internal_error(
    cli: Cli, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No HOME and a uid the password database does not know (``docker run -u 12345``, ``env -i`` under such a
    uid): every command, ``--state-dir`` given or not, was an internal error ("Could not determine home
    directory"), as the default config file is looked for under the home. Taken as ``/`` (as Docker sets HOME
    then), the commands work on the state dir given."""

    def unknown(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", unknown)
    env = {k: v for k, v in cli.env.items() if k not in ("HOME", "XDG_CONFIG_HOME")}  # the cache stays in tmp
    r = cli.here("-q", "submit", "demo", "-p", "items=1", env=env)
    assert r.returncode == 0, r.stderr
    r = cli.here("ls", env=env)
    assert r.returncode == 0 and r.stdout.count("queued") == 1, (r.stdout, r.stderr)


def test_a_home_that_does_not_exist_is_not_made(cli: Cli, state_dir: Path, tmp_path: Path) -> None:
    """``HOME=/nonexistent`` for a user who may make it (root, under cron): the default state dir and the cache
    were made under a home made for them, where no one looks. It is said, as where nothing can be made, and
    nothing is made; a state dir given is used, and the missing home is still not made for the cache."""
    home = tmp_path / "nonexistent"
    env = _env_without_state_dir(cli, str(home))
    r = cli("-q", "submit", "demo", env=env)
    assert r.returncode == ExitCode.STORE, (r.returncode, r.stderr)
    assert r.stderr.strip() == (
        f"outlast: state dir {home}/.local/state/outlast: HOME ({home}) does not exist, and Outlast does not make"
        " it (the default state dir, under HOME): give one with --state-dir or OUTLAST_STATE_DIR"
    ), r.stderr
    assert not home.exists()
    given = tmp_path / "given"
    r = cli("--state-dir", str(given), "run", "demo", "-p", "items=2", env=env)
    assert r.returncode == 0, r.stderr
    assert (given / "outlast.db").exists() and not home.exists()
