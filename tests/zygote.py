"""``outlast`` for the tests without an interpreter's start each time: forked from a warm one.

Each command a test runs cost about 0.19 s of CPU, 0.11 s of it importing pydantic, click and asyncio
again: a thousand of them were a third of the suite's CPU. A test process starts one server
(``python -m tests.zygote``) that imports those once; ``popen`` asks it to fork a child that runs
``python -m engine.cli ARGS`` from there (``runpy``, as ``-m`` does; what it imports that
the server had not, the types and plugins it loads, the settings it reads: all in the child, with its own
environment). The child is a real process: its own pid, the test's pipes and files as its standard
streams, signals and SIGKILL as any other, its exit status passed back to a ``subprocess.Popen`` whose
``wait``/``poll``/``communicate`` work as usual.

What a fork cannot give, a real start does (``exec_needed``): a terminal, options a fork does not
carry (``preexec_fn``, sessions, passed fds), an environment that changes how an interpreter
starts (``PYTHON*``, ``LD_PRELOAD``, locale, ``TZ``), and a test process that is itself a fork.
``OUTLAST_TEST_EXEC=1`` starts every command the real way; the console script's own start is
tested in test_cli_startup, which never forks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "engine.cli"]

PRELOAD = (
    "asyncio",
    "concurrent.futures",
    "sqlite3",
    "json",
    "uuid",
    "ssl",
    "decimal",
    "csv",
    "tomllib",
    "zoneinfo",
    "click",
    "pydantic",
    "pydantic.fields",
    "pydantic.main",
    "pydantic._internal._generate_schema",
    "pydantic.plugin._loader",
    "redis.asyncio",
    "fastapi",
    "uvicorn",
    "engine.models",
    "engine.config",
    "engine.engine",
    "engine.store.sqlite.store",
    "engine.cli.root",
    "engine.cli.common",
    "engine.cli.read",
    "engine.cli.work",
    "engine.cli.run",
    "engine.api.app",
    "engine.api.server",
)
"""What most commands import. Outlast's modules among them only define (no module reads the environment,
the working directory or the time as it is imported, and none loads the registry's types or plugins): each
child loads its types and plugins, and reads its settings, itself (the API's typed endpoints are built
when its app is, from the types then registered)."""

_FORKABLE = frozenset({"stdin", "stdout", "stderr", "env", "cwd", "text", "universal_newlines", "encoding", "errors"})
_DEFAULTS: dict[str, Any] = {
    "preexec_fn": None,
    "start_new_session": False,
    "pass_fds": (),
    "close_fds": True,
    "bufsize": -1,
}
"""Options a fork carries when they have Popen's default value."""
_STARTUP_KEYS = ("PYTHON", "LD_", "LC_", "LANG", "TZ")
"""Environment keys (by prefix) an interpreter reads as it starts: a fork keeps the server's."""
EXEC_ALWAYS = os.environ.get("OUTLAST_TEST_EXEC") == "1"
"""Read at import: the tests' fixtures take OUTLAST_* variables out of the environment."""


def exec_needed(env: Mapping[str, str], base: Mapping[str, str], cwd: str) -> bool:
    """Whether ``env`` differs from the server's ``base`` in what an interpreter reads as it starts. A
    ``PYTHONPATH`` of other directories is set in the child's ``sys.path``, unless one holds a module the
    server imported (a stand-in ``pydantic`` would be shadowed by the real one)."""
    changed = {key for key in set(env) | set(base) if key.startswith(_STARTUP_KEYS) and env.get(key) != base.get(key)}
    if "PYTHONPATH" in changed and not _shadows(
        set(_entries(env.get("PYTHONPATH"), cwd)) - set(_entries(base.get("PYTHONPATH"), cwd))
    ):
        changed.discard("PYTHONPATH")
    return bool(changed)


def _entries(pythonpath: str | None, cwd: str) -> list[str]:
    """The directories a ``PYTHONPATH`` puts on ``sys.path``, in order, absolute as ``site`` makes them."""
    return [os.path.normpath(os.path.join(cwd, p)) for p in pythonpath.split(os.pathsep)] if pythonpath else []


def _shadows(dirs: set[str]) -> bool:
    tops = {name.split(".")[0] for name in PRELOAD} | {"engine", "tests"}
    return any(
        os.path.exists(os.path.join(d, top)) or os.path.exists(os.path.join(d, top + ".py"))
        for d in dirs
        if os.path.realpath(d) != str(REPO)
        for top in tops
    )


def _umask() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


class Zygote:
    """This test process's server, started on first use; it ends when this process does."""

    _lock = threading.Lock()
    _one: Zygote | None = None
    _failed = False
    """The server could not start here (no ``os.pidfd_open``, say): every command starts the real way."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.env = dict(os.environ)
        self.dir = tempfile.mkdtemp(prefix="outlast-zygote-")
        self.path = os.path.join(self.dir, "s")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.zygote", self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=self.env,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if ready != b"ready\n":
            raise RuntimeError(f"tests.zygote did not start: {ready!r}")

    @classmethod
    def get(cls) -> Zygote | None:
        """The server, or None where commands must start the real way."""
        if EXEC_ALWAYS or cls._failed:
            return None
        with cls._lock:
            if cls._one is None or cls._one.owner != os.getpid() or cls._one.proc.poll() is not None:
                if cls._one is not None and cls._one.owner != os.getpid():
                    return None  # a fork of the test process: its parent's server is not its own
                try:
                    cls._one = cls()
                except (OSError, RuntimeError) as e:
                    cls._failed = True
                    print(f"tests.zygote: {e}; commands start the real way", file=sys.stderr)
                    return None
            return cls._one

    def spawn(
        self, module: str, args: Sequence[str], env: Mapping[str, str], cwd: str, fds: Sequence[int]
    ) -> tuple[socket.socket, int]:
        """A child running ``python -m MODULE ARGS`` (``engine.cli``: ``outlast ARGS``) with ``fds`` as its
        standard streams: the link its exit status comes back on, and its pid."""
        link = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            link.connect(self.path)
            request = {"module": module, "args": list(args), "env": dict(env), "cwd": cwd, "umask": _umask()}
            socket.send_fds(link, [json.dumps(request).encode()], list(fds))
            answer = link.recv(64)
            if not answer.startswith(b"pid "):
                raise RuntimeError(f"tests.zygote could not fork: {answer!r}")
            return link, int(answer.split()[1])
        except BaseException:
            link.close()
            raise


class Forked(subprocess.Popen):  # type: ignore[type-arg]
    """A Popen whose child the zygote forked: its status comes over a socket, not from waitpid."""

    def __init__(self, zygote: Zygote, args: list[str], **kw: Any) -> None:
        self._zygote = zygote
        self._link: socket.socket | None = None
        super().__init__(args, **kw)

    def _execute_child(self, args: Any, executable: Any, preexec_fn: Any, close_fds: Any, pass_fds: Any,
                       cwd: Any, env: Any, startupinfo: Any, creationflags: Any, shell: Any,
                       p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int, errread: int, errwrite: int,
                       *rest: Any) -> None:  # fmt: skip
        fds = [p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1, errwrite if errwrite != -1 else 2]
        try:
            where = os.fspath(cwd) if cwd is not None else os.getcwd()
            if list(args[:2]) != [sys.executable, "-m"]:
                raise ValueError(f"tests.zygote runs python -m MODULE only, not {args[:3]}")
            env = env if env is not None else os.environ
            self._link, self.pid = self._zygote.spawn(args[2], args[3:], env, where, fds)
            self._child_created = True
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        link = self._link
        assert link is not None
        link.setblocking(not wait_flags & os.WNOHANG)
        try:
            got = link.recv(64)
        except BlockingIOError:
            return 0, 0
        if not got.startswith(b"status "):
            raise RuntimeError(f"tests.zygote lost pid {self.pid}: {got!r}")
        link.close()
        return self.pid, int(got.split()[1])

    def _internal_poll(self, _deadstate: int | None = None, **_: Any) -> int | None:
        if self.returncode is None and self._waitpid_lock.acquire(False):
            try:
                if self.returncode is None and self._link is not None and self._link.fileno() != -1:
                    pid, sts = self._try_wait(os.WNOHANG)
                    if pid:
                        self._handle_exitstatus(sts)
            except OSError:
                if _deadstate is not None:
                    self.returncode = _deadstate
            finally:
                self._waitpid_lock.release()
        return self.returncode


def popen(args: Sequence[str], **kw: Any) -> subprocess.Popen:  # type: ignore[type-arg]
    """``subprocess.Popen([*CLI, *args], **kw)``: forked from the zygote where a fork is the same."""
    cmd = [*CLI, *args]
    env = kw.get("env")
    odd = {k for k, v in kw.items() if k not in _FORKABLE and not (k in _DEFAULTS and v == _DEFAULTS[k])}
    zygote = None if odd else Zygote.get()
    cwd = os.fspath(kw["cwd"]) if kw.get("cwd") is not None else os.getcwd()
    if zygote is None or exec_needed(env if env is not None else os.environ, zygote.env, cwd):
        return subprocess.Popen(cmd, **kw)
    try:
        if any(os.isatty(f) for f in _stream_fds(kw)):
            return subprocess.Popen(cmd, **kw)
    except OSError:
        pass
    return Forked(zygote, cmd, **kw)


def _stream_fds(kw: Mapping[str, Any]) -> list[int]:
    fds = []
    for name, default in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        value = kw.get(name)
        if value is None:
            fds.append(default)
        elif isinstance(value, int) and value >= 0:
            fds.append(value)
        elif hasattr(value, "fileno"):
            fds.append(value.fileno())
    return fds


def run(
    args: Sequence[str], *, input: Any = None, timeout: float | None = None, check: bool = False,
    capture_output: bool = False, **kw: Any,
) -> subprocess.CompletedProcess:  # type: ignore[type-arg]  # fmt: skip
    """``subprocess.run([*CLI, *args], ...)`` through ``popen``."""
    if input is not None:
        kw["stdin"] = subprocess.PIPE
    if capture_output:
        kw["stdout"] = kw["stderr"] = subprocess.PIPE
    with popen(args, **kw) as p:
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            p.kill()
            e.output, e.stderr = p.communicate()
            raise
        except BaseException:
            p.kill()
            raise
    done = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if check:
        done.check_returncode()
    return done


# The server: python -m tests.zygote PATH


def _serve(path: str) -> tuple[str, list[str]] | None:
    """Fork a child per request until stdin ends; in a child, return its module and arguments."""
    import importlib
    import selectors
    import time

    if not hasattr(os, "pidfd_open") or not hasattr(socket, "send_fds"):  # Linux 5.3+: else the real way
        raise SystemExit("tests.zygote needs os.pidfd_open and socket.send_fds")
    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # an extra not installed: its command imports it as usual
            importlib.import_module(name)
    import gc

    gc.collect()
    gc.freeze()  # the children's collections leave the preloaded objects (and their pages) alone

    base_pythonpath = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(128)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(0, selectors.EVENT_READ, "parent")
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd: (pid, link)
    os.write(1, b"ready\n")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.close(null)

    while True:
        for key, _ in sel.select():
            if key.data == "parent":
                if not os.read(0, 4096):  # the test process ended: so does its server, leaving no socket
                    listener.close()
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                        os.rmdir(os.path.dirname(path))
                    return None
            elif key.data == "accept":
                link, _ = listener.accept()
                try:
                    msg, fds, _, _ = socket.recv_fds(link, 1 << 20, 3)
                    request = json.loads(msg)
                except (OSError, ValueError):
                    link.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    for pidfd, (_, other) in children.items():
                        os.close(pidfd)
                        other.close()
                    sel.close()
                    listener.close()
                    link.close()
                    for target, fd in enumerate(fds):
                        os.dup2(fd, target)
                    for fd in fds:
                        if fd > 2:
                            os.close(fd)
                    os.umask(request["umask"])
                    os.chdir(request["cwd"])
                    os.environ.clear()
                    os.environ.update(request["env"])
                    time.tzset()
                    # sys.path as `python -m` in cwd with this PYTHONPATH makes it: cwd, PYTHONPATH, the rest.
                    own = _entries(os.environ.get("PYTHONPATH"), request["cwd"])
                    rest = [p for p in sys.path[1:] if p not in base_pythonpath]
                    sys.path[:] = list(dict.fromkeys([os.getcwd(), *own, *rest]))
                    return request["module"], list(request["args"])
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, link)
                sel.register(pidfd, selectors.EVENT_READ, "child")
                with contextlib.suppress(OSError):  # the test gave up: the child runs, and is reaped
                    link.send(b"pid %d" % pid)
            else:
                pidfd = key.fd
                pid, link = children.pop(pidfd)
                sel.unregister(pidfd)
                os.close(pidfd)
                try:
                    _, status = os.waitpid(pid, 0)
                except ChildProcessError:
                    status = 255 << 8
                try:
                    link.send(b"status %d" % status)
                except OSError as e:
                    if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                        raise
                link.close()


def _exit_as_the_interpreter_does(code: object) -> None:
    """End a child as ``Py_FinalizeEx`` would, without tearing its modules down: wait for its threads, run
    its ``atexit`` functions (logging's, multiprocessing's, ``weakref.finalize``'s), flush what it still
    has open, then ``os._exit`` with the status Python gives ``SystemExit(code)``.

    The teardown is what costs: it drops a reference to every object the server made, and each page it
    touches is copied in the child: 35-40 ms of CPU a command (``ls`` 43 ms -> 8 ms, ``run demo`` 75 -> 35
    ms), about 40 s of the suite's CPU over its 1,200 forked commands. A started interpreter pays no copy."""
    import atexit
    import gc
    import io

    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first
    atexit._run_exitfuncs()
    for obj in gc.get_objects():  # the child's own: the server's objects are frozen (gc.freeze), not listed
        if isinstance(obj, io.IOBase) and obj not in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                if not obj.closed:
                    obj.flush()
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code & 0xFF
    else:
        print(code, file=sys.stderr)
        status = 1
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except Exception as e:  # as Python says it, and exits 120
        with contextlib.suppress(Exception):
            sys.stderr.write(f"Exception ignored in: {sys.stdout!r}\n{type(e).__name__}: {e}\n")
        status = 120
    with contextlib.suppress(Exception):
        if sys.stderr is not None:
            sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    job = _serve(sys.argv[1])
    if job is not None:
        import runpy

        sys.argv = [sys.argv[0], *job[1]]
        try:
            runpy.run_module(job[0], run_name="__main__", alter_sys=True)
        except SystemExit as e:
            _exit_as_the_interpreter_does(e.code)
        _exit_as_the_interpreter_does(None)
