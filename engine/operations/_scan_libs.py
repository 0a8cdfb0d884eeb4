"""The scanners security teams already trust, run as libraries inside security_scan, one file at a time.

- bandit (PyCQA) for Python code: its test ids (B602 ...), severities, confidence and help pages;
- detect-secrets (Yelp) for secrets in any text file: its plugins (entropy, keywords, 20+ providers),
  its filters, and its baseline file, whose known findings stay quiet.

Both are imported on first use (bandit loads its plugins in about half a second), once per process,
and each worker thread has its own bandit manager (a manager keeps per-run state).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InvalidInput


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


_QUOTED = re.compile(r"""(['"])(.+?)\1""")


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
            message = _QUOTED.sub(r"\1[REDACTED]\1", message)
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


def load_baseline(path: str | None) -> frozenset[tuple[str, str]]:
    """(file, hashed secret) pairs a detect-secrets baseline file marks as known. Its file names are
    relative to the directory it was made in, which should be the scan's root."""
    if path is None:
        return frozenset()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        results = data["results"]
        return frozenset((file, item["hashed_secret"]) for file, items in results.items() for item in items)
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"baseline {path}: cannot be read: {getattr(e, 'strerror', None) or e}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidInput(f"baseline {path}: not a detect-secrets baseline (no results by file)") from None
