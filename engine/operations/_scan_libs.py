"""The scanners security teams already trust, run as libraries inside security_scan, one file at a time.

- bandit (PyCQA) for Python code: its test ids (B602 ...), severities, confidence and help pages;
- detect-secrets (Yelp) for secrets in any text file: its plugins (entropy, keywords, 20+ providers),
  its filters, and its baseline file, whose known findings stay quiet.

Both are imported on first use (bandit loads its plugins in about half a second), once per process,
and each worker thread has its own bandit manager (a manager keeps per-run state).

Both open the file they scan by a name. They are given a name of the file security_scan has already opened
and checked (``opened_as``), never the tree's path again: between that check and their open, a file (or a
directory on its path) swapped for a symlink had them scan a file outside the tree under the tree's name,
and one swapped for a FIFO blocked the scan's thread for good.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..errors import InvalidInput
from ..files import read_limited


class LibRule(NamedTuple):
    """A rule that one of the libraries defines, as the report's rule table shows it."""

    id: str
    category: str  # "code" (bandit) or "secrets" (detect-secrets)
    severity: str
    title: str
    help: str
    help_uri: str


class LibFinding(NamedTuple):
    rule: str
    line: int
    column: int
    message: str
    severity: str
    value: str | None  # the secret detect-secrets matched (masked in the snippet), None for bandit


_NAME_MAX = 1024
"""Characters of a relative path kept in the name the libraries open (a deeper one: its file name only)."""


@cache
def _names_dir() -> str | None:
    """Where ``opened_as`` makes its names: ``/dev/shm`` (memory) when there is one, else the temporary directory
    (asked once: every scanned file needs it)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else None


def sweep_names() -> None:
    """Remove what ``opened_as`` left for processes of this user that are gone (a pool worker killed in the
    middle of a file); a scan does it when it starts."""
    base = _names_dir() or tempfile.gettempdir()
    with contextlib.suppress(OSError), os.scandir(base) as entries:
        for e in entries:
            parts = e.name.split("-")
            if len(parts) != 4 or parts[:2] != ["outlast", "scan"] or not parts[2].isdigit():
                continue
            with contextlib.suppress(OSError):
                if e.stat(follow_symlinks=False).st_uid != os.getuid() or not e.is_dir(follow_symlinks=False):
                    continue
                try:
                    os.kill(int(parts[2]), 0)
                    continue  # alive (or not ours to signal): left alone
                except ProcessLookupError:
                    shutil.rmtree(e.path, ignore_errors=True)


@contextlib.contextmanager
def opened_as(fh: IO[bytes], rel: str, path: Path, content: bytes | None = None) -> Iterator[Path]:
    """A name that opens the file ``fh`` (``rel`` of the tree, opened and checked): on Linux a symbolic link to
    ``/proc/self/fd/N`` named like ``rel`` (detect-secrets picks its transformers and filters by the name) in a
    private directory made for the call (in ``/dev/shm`` when there is one: a memory file system), removed
    after it. Elsewhere, ``path``, the tree's own name, as before. With ``content`` (the file's text as UTF-8,
    for a file the libraries cannot read as it is: UTF-16), a file of that content under the same name."""
    proc = f"/proc/self/fd/{fh.fileno()}"
    if content is None and (not sys.platform.startswith("linux") or not os.path.exists(proc)):
        yield path
        return
    d = tempfile.mkdtemp(prefix=f"outlast-scan-{os.getpid()}-", dir=_names_dir())
    try:
        name = Path(d, rel if len(rel) <= _NAME_MAX else Path(rel).name)
        name.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            name.symlink_to(proc)
        else:
            with open(name, "xb", opener=lambda p, f: os.open(p, f, 0o600)) as out:
                out.write(content)
        yield name
    finally:
        shutil.rmtree(d, ignore_errors=True)


BANDIT_SKIP = frozenset({"B101"})
"""assert_used: in a repository's tests it is most of bandit's output; select B101 to get it."""
_BANDIT_SEVERITY = {"HIGH": "high", "MEDIUM": "medium", "LOW": "low"}
_lock = threading.Lock()
_local = threading.local()


@cache
def bandit_rules() -> dict[str, LibRule]:
    """Every bandit test and blacklist entry, by test id."""
    from bandit.core import docs_utils, extension_loader

    manager = extension_loader.MANAGER
    rules: dict[str, LibRule] = {}
    for test_id, info in manager.plugins_by_id.items():
        doc = (info.plugin.__doc__ or "").strip().splitlines()
        title = next((ln.strip("=- ").strip() for ln in doc if ln.strip("=- ").strip()), info.name)
        rules[test_id] = LibRule(
            test_id, "code", "medium", title, info.name.replace("_", " "), docs_utils.get_url(test_id)
        )
    for entries in manager.blacklist.values():
        for entry in entries:
            test_id = entry["id"]
            rules[test_id] = LibRule(
                test_id,
                "code",
                _BANDIT_SEVERITY.get(entry.get("level", "MEDIUM"), "medium"),
                entry["name"].replace("_", " "),
                entry["message"].replace("{name}", "it"),
                docs_utils.get_url(test_id),
            )
    return rules


_SECRET_SEVERITY = {
    "PrivateKeyDetector": "critical",
    "Base64HighEntropyString": "medium",
    "HexHighEntropyString": "medium",
}
_DS_DOCS = "https://github.com/Yelp/detect-secrets#currently-supported-plugins"


@cache
def secret_rules() -> dict[str, LibRule]:
    """Every detect-secrets plugin, by its class name (the name its baseline files use)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    rules = {}
    mapping: dict[str, type] = get_mapping_from_secret_type_to_class()
    for secret_type, plugin in mapping.items():
        name = plugin.__name__
        severity = _SECRET_SEVERITY.get(name, "high")
        rules[name] = LibRule(name, "secrets", severity, secret_type, f"detect-secrets: {secret_type}", _DS_DOCS)
    return rules


def _secret_types() -> dict[str, str]:
    """detect-secrets' secret type ("AWS Access Key") to its plugin's class name."""
    return {r.title: r.id for r in secret_rules().values()}


_secrets_ready = False


def _configure_secrets() -> None:
    """Every plugin and the default filters, once per process (detect-secrets' settings are global)."""
    global _secrets_ready
    if _secrets_ready:
        return
    with _lock:
        if _secrets_ready:
            return
        from detect_secrets.settings import cache_bust, configure_settings_from_baseline

        cache_bust()
        configure_settings_from_baseline({"plugins_used": [{"name": name} for name in secret_rules()]})
        _secrets_ready = True


def _bandit_manager() -> Any:
    manager = getattr(_local, "bandit", None)
    if manager is None:
        from bandit.core import config
        from bandit.core import manager as bandit_manager

        logging.getLogger("bandit").setLevel(logging.ERROR)  # it logs each file it cannot parse
        with _lock:  # bandit's plugin loading is not thread-safe on first use
            manager = _local.bandit = bandit_manager.BanditManager(config.BanditConfig(), "file", quiet=True)
    return manager


_QUOTED = re.compile(r"'.*'", re.DOTALL)
"""bandit's ``Possible hardcoded password: '%s'``: its value from the first quote to the last, whatever quotes
the value holds (a lazy match to the next quote left the rest of ``a'b"c`` in the message)."""


def bandit_findings(path: Path, selected: frozenset[str]) -> list[LibFinding]:
    """bandit's findings in one Python file, for the selected test ids. Its hard-coded password
    messages quote the password: the quote is masked here, before the message goes anywhere."""
    manager = _bandit_manager()
    manager.results, manager.skipped, manager.scores, manager.files_list = [], [], [], [str(path)]
    manager.metrics.data = {}
    manager.run_tests()
    out = []
    for issue in manager.get_issue_list():
        if issue.test_id not in selected:
            continue
        message = issue.text
        if issue.test_id in ("B105", "B106", "B107"):
            message = _QUOTED.sub("'[REDACTED]'", message, count=1)
        severity = _BANDIT_SEVERITY.get(issue.severity, "medium")
        confidence = issue.confidence.lower()
        out.append(
            LibFinding(
                issue.test_id,
                issue.lineno,
                issue.col_offset + 1,
                f"{message} ({confidence} confidence)",
                severity,
                None,
            )
        )
    return out


def secret_findings(
    path: Path, rel: str, selected: frozenset[str], known: frozenset[tuple[str, str]]
) -> list[LibFinding]:
    """detect-secrets' findings in one file, less those its baseline marks known ((file, hashed secret))."""
    _configure_secrets()
    from detect_secrets.core import scan

    types = _secret_types()
    out = []
    for secret in scan.scan_file(str(path)):
        rule = types.get(secret.type, secret.type)
        if rule not in selected or (rel, secret.secret_hash) in known:
            continue
        # A private key's matched text is its header, not the key (whose lines are masked anyway).
        value = "" if rule == "PrivateKeyDetector" else secret.secret_value or ""
        message = f"{secret.type} (redacted)"
        out.append(
            LibFinding(
                rule,
                secret.line_number,
                1,
                message,
                secret_rules()[rule].severity if rule in secret_rules() else "high",
                value,
            )
        )
    return out


BASELINE_MAX = 256 << 20
"""The largest baseline read: a monorepo's runs to megabytes; ``/dev/zero`` would fill memory."""


def load_baseline(path: str | None) -> frozenset[tuple[str, str]]:
    """(file, hashed secret) pairs a detect-secrets baseline file marks as known. Its file names are
    relative to the directory it was made in, which should be the scan's root."""
    if path is None:
        return frozenset()
    try:
        # Not read_text: a FIFO named here waited for a writer for ever, deaf to SIGTERM, and it is read twice
        # (checked at submit, read when the scan starts), so a pipe could not be given anyway.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InvalidInput(f"baseline {path}: not a regular file")
        data = json.loads(read_limited(Path(path), BASELINE_MAX).decode("utf-8"))
        results = data["results"]
        return frozenset((file, item["hashed_secret"]) for file, items in results.items() for item in items)
    except InvalidInput:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"baseline {path}: cannot be read: {getattr(e, 'strerror', None) or e}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidInput(f"baseline {path}: not a detect-secrets baseline (no results by file)") from None
