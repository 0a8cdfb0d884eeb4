"""The tests' forked ``outlast`` (tests/zygote.py) is the command a real start would be: its arguments,
environment, working directory, umask, streams and exit status are the test's, and a signal ends it as any
process. If it were not, every test that runs a command through it would test something else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import zygote
from tests.fixtures_cli import REPO, until

PROBE = """
import json, os, sys
from engine.cli import main as _  # noqa: F401
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "path": sys.path[:2], "mark": os.environ.get("MARK"),
                  "umask": os.umask(0), "ppid": os.getppid(), "pid": os.getpid(), "stdin": sys.stdin.read()}))
"""


def _forked_or_skip() -> zygote.Zygote:
    z = zygote.Zygote.get()
    if z is None:
        pytest.skip("OUTLAST_TEST_EXEC=1: every command starts the real way")
    return z


def test_a_forked_command_answers_as_the_console_script(cli, tmp_path: Path) -> None:
    _forked_or_skip()
    env = {**cli.env, "OUTLAST_STATE_DIR": str(tmp_path / "state")}
    for args in (["--json", "types"], ["show", "nope"], ["run", "demo", "-p", "items=x"], ["--version"]):
        forked = zygote.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        real = subprocess.run([*zygote.CLI, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr), args


def test_the_child_has_the_tests_environment_directory_umask_and_streams(tmp_path: Path) -> None:
    z = _forked_or_skip()
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "__init__.py").write_text("")
    (probe / "__main__.py").write_text(PROBE)
    old = os.umask(0o027)
    try:
        p = zygote.Forked(
            z, [sys.executable, "-m", "probe", "x", "--y"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "MARK": "here", "PYTHONPATH": "extra"}, cwd=tmp_path,
        )  # fmt: skip
    finally:
        os.umask(old)
    # The probe stands in for engine.cli: run as -m runs it, from the test's cwd (sys.path[0]).
    out, _ = p.communicate("given", timeout=60)
    assert p.returncode == 0
    got = json.loads(out)
    assert got["argv"] == ["x", "--y"] and got["cwd"] == str(tmp_path)
    assert got["path"] == [str(tmp_path), str(tmp_path / "extra")]  # as -m in cwd with that PYTHONPATH
    assert got["mark"] == "here" and got["umask"] == 0o027 and got["stdin"] == "given"
    assert got["pid"] == p.pid and got["ppid"] == z.proc.pid


def test_exit_codes_and_signals_come_back_as_popen_gives_them(cli, tmp_path: Path) -> None:
    _forked_or_skip()
    env = {**cli.env, "OUTLAST_STATE_DIR": str(tmp_path / "state")}
    p = zygote.popen(["run", "demo", "-p", "items=1000", "-p", "seconds=0.05"], env=env, cwd=REPO,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert isinstance(p, zygote.Forked)
    assert p.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(0.2)
    until(lambda: (tmp_path / "state" / "outlast.db").exists(), 30, what="the run's store")
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    assert p.wait(30) == -signal.SIGKILL
    p.communicate()
    bad = zygote.run(["ls", "--no-such-option"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no-such-option" in bad.stderr


def test_what_a_fork_cannot_carry_starts_the_real_way(tmp_path: Path) -> None:
    _forked_or_skip()
    (tmp_path / "pydantic").mkdir()  # a stand-in the server's own would shadow
    real = [
        zygote.popen(["--version"], stdout=subprocess.DEVNULL, start_new_session=True),
        zygote.popen(["--version"], stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(tmp_path)}),
        zygote.popen(["--version"], stdout=subprocess.DEVNULL, env={**os.environ, "TZ": "UTC+5"}),
        zygote.popen(["--version"], stdout=subprocess.DEVNULL, env={**os.environ, "LD_PRELOAD": ""}),
    ]
    for p in real:
        assert not isinstance(p, zygote.Forked)
        assert p.wait(60) == 0
    other = {**os.environ, "X": "1", "PYTHONPATH": str(tmp_path / "elsewhere")}
    forked = zygote.popen(["--version"], stdout=subprocess.DEVNULL, preexec_fn=None, env=other)
    assert isinstance(forked, zygote.Forked) and forked.wait(60) == 0


def test_the_preloaded_modules_load_no_type_and_read_no_setting() -> None:
    """The server imports its modules once, with the environment of the test process that started it; only
    modules that define things may be among them (the types, plugins and settings are each child's)."""
    code = (
        "import importlib, json, sys\n"
        "from tests.zygote import PRELOAD\n"
        "for m in PRELOAD: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(\n"
        "  ('engine.operations', 'tests.', 'example_plugin', 'textual', 'psutil')))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '["tests.zygote"]', r.stdout


EXITS = """
import atexit, sys, threading, time
out = open("left-open.txt", "w")  # never closed: the interpreter's exit flushes it
out.write("buffered")
atexit.register(lambda: open("atexit.txt", "w").write("ran"))
threading.Thread(target=lambda: (time.sleep(0.3), open("thread.txt", "w").write("waited for"))).start()
print("unflushed", end="")
sys.exit(sys.argv[1] if not sys.argv[1].isdigit() else int(sys.argv[1]))
"""


@pytest.mark.parametrize("code", ["0", "3", "a message"])
def test_a_child_ends_as_the_interpreter_would(tmp_path: Path, code: str) -> None:
    """A forked child ends with os._exit, skipping the teardown of the server's modules (35-40 ms of copied
    pages a command); what an exit does that a command can see is done first: its threads waited for,
    its atexit functions run, its open files and stdout flushed, SystemExit's status and message."""
    z = _forked_or_skip()
    ends = {}
    for how in ("forked", "real"):
        run_dir = tmp_path / how
        (run_dir / "probe").mkdir(parents=True)
        (run_dir / "probe" / "__init__.py").write_text("")
        (run_dir / "probe" / "__main__.py").write_text(EXITS)
        argv = [sys.executable, "-m", "probe", code]
        kw: dict = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=run_dir)
        p = zygote.Forked(z, argv, **kw) if how == "forked" else subprocess.Popen(argv, **kw)
        out, err = p.communicate(timeout=60)
        files = {f: (run_dir / f).read_text() for f in ("left-open.txt", "atexit.txt", "thread.txt")}
        ends[how] = (p.returncode, out, err, files)
    assert ends["forked"] == ends["real"]
    assert ends["real"][3] == {"left-open.txt": "buffered", "atexit.txt": "ran", "thread.txt": "waited for"}
