"""security_scan on real trees: this repository (SARIF checked against its structure), a generated tree with
planted secrets and risky calls beside binary, unreadable, non-UTF-8 and special files, a SIGKILLed worker
resumed to the uninterrupted report, and bad params through the CLI.

Planted secrets are assembled at run time, so this file itself holds none for a scanner to find."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import string
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
import psutil
import pytest

from engine import Engine, OperationSpec, Status
from engine.operations.security_scan import BATCH
from tests.conftest import REPO
from tests.fixtures_cli import Cli, until
from tests.fixtures_ops import (
    as_json,
    bad_params,
    checkpoint_state,
    kill_worker_when,
    nothing_stored,
    resume,
    run_here,
    run_json,
    submit,
    unreadable,
)

RNG = random.Random(4)


def rand(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


UPPER = string.ascii_uppercase + string.digits
S = {
    "aws_id": "AK" + "IA" + rand(16, UPPER),
    "aws_secret": rand(20) + "/" + rand(19),
    "password": "Hu" + "nter2" + rand(6),
    "api_token": rand(30),
    "github": "gh" + "p_" + rand(36),
    "gitlab": "gl" + "pat-" + rand(20),
    "slack": "xo" + "xb-" + "1234567890-" + rand(24),
    "gcp": "AI" + "za" + rand(35),
    "azure": rand(86) + "==",
    "stripe": "sk" + "_live_" + rand(24),
    "gcp_key_id": rand(40, "0123456789abcdef"),
    "pem_body": rand(64, string.ascii_letters + string.digits + "+/"),
    "latin_pw": "Tr0ub4d" + "or3x",
    "locked": "gh" + "p_" + rand(36),
}
PEM = "-----BEGIN RSA " + "PRIVATE KEY-----"

FILES: dict[str, str] = {
    "config/settings.py": f"""AWS_ACCESS_KEY_ID = "{S["aws_id"]}"
aws_secret_access_key = "{S["aws_secret"]}"
DB_PASSWORD = "{S["password"]}"
api_token = "{S["api_token"]}"
password = ""
password = os.environ["DB_PASSWORD"]
GITHUB = "{S["github"]}"
debug_password = "{S["password"]}"  # nosec: a local fixture
help_text = "Enter your password here"
""",
    "keys/id_rsa": f"{PEM}\n{S['pem_body']}\n{S['pem_body']}\n-----END RSA PRIVATE KEY-----\n",
    "web/app.js": f"""const token = "{S["gitlab"]}";
const out = eval(userInput);
require('child_process').exec(cmd);
https.request({{host, rejectUnauthorized: false}});
const hook = "{S["slack"]}";
const n = JSON.parse(text); // eval() in a comment is still flagged above, not here
""",
    "svc/main.go": f"""package main
var cfg = &tls.Config{{InsecureSkipVerify: true}}
var c = exec.Command("sh", "-c", userCmd)
const key = "{S["gcp"]}"
""",
    "risky.py": """import ast, hashlib, os, pickle, ssl, subprocess
import yaml
eval(expr)
exec(code)
subprocess.run(cmd, shell=True)
os.system(cmd)
pickle.loads(data)
yaml.load(f)
yaml.load(f, Loader=yaml.SafeLoader)
requests.get(url, verify=False)
ctx = ssl._create_unverified_context()
digest = hashlib.md5(password.encode()).hexdigest()
etag = hashlib.md5(data).hexdigest()
ast.literal_eval(x)
eval("1 + 1")
subprocess.run(["ls", "-l"])
""",
    "deploy/azure.env": f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={S['azure']};\n",
    "svc/sa.json": f'{{"type": "service_account", "private_key_id": "{S["gcp_key_id"]}"}}\n',
    "billing #2 100%.rb": f'Stripe.api_key = "{S["stripe"]}"\n',
    "broken.py": "def f(:\n    eval(x)\n",
}
EXPECTED = {
    # detect-secrets (its plugin names), secrets in any text file
    ("config/settings.py", "AWSKeyDetector", 1),
    ("config/settings.py", "AWSKeyDetector", 2),
    ("config/settings.py", "KeywordDetector", 3),
    ("config/settings.py", "Base64HighEntropyString", 4),
    ("config/settings.py", "GitHubTokenDetector", 7),
    ("keys/id_rsa", "PrivateKeyDetector", 1),
    ("web/app.js", "GitLabTokenDetector", 1),
    ("web/app.js", "SlackDetector", 5),
    ("deploy/azure.env", "AzureStorageKeyDetector", 1),
    ("billing #2 100%.rb", "StripeDetector", 1),
    # bandit (its test ids), Python code
    ("config/settings.py", "B105", 2),
    ("config/settings.py", "B105", 3),
    ("config/settings.py", "B105", 4),
    ("config/settings.py", "B105", 5),  # bandit flags an empty password too
    ("risky.py", "B403", 1),
    ("risky.py", "B307", 3),
    ("risky.py", "B102", 4),
    ("risky.py", "B602", 5),
    ("risky.py", "B605", 6),
    ("risky.py", "B301", 7),
    ("risky.py", "B506", 8),
    ("risky.py", "B113", 10),
    ("risky.py", "B501", 10),
    ("risky.py", "B323", 11),
    ("risky.py", "B324", 12),
    ("risky.py", "B324", 13),
    ("risky.py", "B307", 15),
    ("risky.py", "B603", 16),
    ("risky.py", "B607", 16),
    # Outlast's own rules, where neither has coverage
    ("web/app.js", "js-eval", 2),
    ("web/app.js", "js-child-process-exec", 3),
    ("web/app.js", "js-tls-disabled", 4),
    ("svc/main.go", "go-tls-insecure", 2),
    ("svc/main.go", "go-shell-exec", 3),
    ("svc/main.go", "gcp-api-key", 4),
    ("svc/sa.json", "gcp-service-account-key", 1),
}

# The parts of SARIF 2.1.0 code-scanning tools read, as a JSON schema.
_MESSAGE = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}}}
_LEVEL = {"enum": ["none", "note", "warning", "error"]}
_LOCATION = {
    "type": "object",
    "required": ["physicalLocation"],
    "properties": {
        "physicalLocation": {
            "type": "object",
            "required": ["artifactLocation", "region"],
            "properties": {
                "artifactLocation": {
                    "type": "object",
                    "required": ["uri"],
                    "properties": {"uri": {"type": "string", "pattern": "^[^/]"}},
                },
                "region": {
                    "type": "object",
                    "required": ["startLine"],
                    "properties": {
                        "startLine": {"type": "integer", "minimum": 1},
                        "startColumn": {"type": "integer", "minimum": 1},
                    },
                },
            },
        }
    },
}
SARIF_SHAPE = {
    "type": "object",
    "required": ["version", "$schema", "runs"],
    "properties": {
        "version": {"const": "2.1.0"},
        "$schema": {"type": "string", "pattern": "sarif-2\\.1\\.0"},
        "runs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["tool", "results"],
                "properties": {
                    "tool": {
                        "type": "object",
                        "required": ["driver"],
                        "properties": {
                            "driver": {
                                "type": "object",
                                "required": ["name", "rules"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "rules": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["id", "shortDescription", "defaultConfiguration"],
                                            "properties": {
                                                "id": {"type": "string"},
                                                "shortDescription": _MESSAGE,
                                                "defaultConfiguration": {
                                                    "type": "object",
                                                    "properties": {"level": _LEVEL},
                                                },
                                            },
                                        },
                                    },
                                },
                            }
                        },
                    },
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["ruleId", "level", "message", "locations"],
                            "properties": {
                                "ruleId": {"type": "string"},
                                "ruleIndex": {"type": "integer", "minimum": 0},
                                "level": _LEVEL,
                                "message": _MESSAGE,
                                "locations": {"type": "array", "minItems": 1, "items": _LOCATION},
                            },
                        },
                    },
                },
            },
        },
    },
}


def check_sarif(sarif: dict, root: Path) -> list[dict]:
    """Valid against SARIF_SHAPE, every result's rule declared at its index and its file under root."""
    jsonschema.validate(sarif, SARIF_SHAPE)
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    for r in run["results"]:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"]
        uri = r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert not set(uri) & set(" #?"), uri  # a URI reference: a '#' began its fragment, a space none is
        assert (root / urllib.parse.unquote(uri)).is_file(), uri
    return run["results"]


async def scan(engine: Engine, **params: Any) -> Any:
    op = await engine.submit(OperationSpec(type="security_scan", params=params))
    return await engine.wait(op.id, timeout=120)


async def json_findings(engine: Engine, root: Path) -> list[dict[str, Any]]:
    """The findings of a completed scan of ``root``, from its JSON report."""
    op = await scan(engine, root=str(root), format="json")
    assert op.status is Status.COMPLETED, op.error
    return json.loads(Path(op.result["reports"]["json"]).read_text())["findings"]


async def test_scan_this_repository(engine: Engine) -> None:
    """A real part of this repository (bandit and detect-secrets take about a second per 50 KB file on a
    loaded machine: the whole repository is the benchmark's job, not a test's)."""
    op = await scan(engine, root=str(REPO / "engine" / "api"))
    assert op.status is Status.COMPLETED, op.error
    res = op.result
    assert res["files"] > 5 and res["scanned"] > 5
    report = json.loads(Path(res["reports"]["json"]).read_text())
    results = check_sarif(json.loads(Path(res["reports"]["sarif"]).read_text()), REPO / "engine" / "api")
    assert len(results) == len(report["findings"]) == res["findings"]
    assert sum(res["by_rule"].values()) == sum(res["by_severity"].values()) == res["findings"]
    assert res["scanned"] + sum(res["skipped"].values()) + len(res["failures"]) == res["files"]


def make_tree(root: Path) -> dict[str, Path]:
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "latin.cfg").write_bytes(f"# r\xe9glages\npassword = '{S['latin_pw']}'\n".encode("latin-1"))
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0" + S["github"].encode() + bytes(range(256)))
    locked = root / "locked.py"
    locked.write_text(f'TOKEN = "{S["locked"]}"\n')
    os.mkfifo(root / "pipe")  # reading it would block forever: skipped, never opened
    (root / "link.py").symlink_to("risky.py")
    return {"locked": locked}


async def test_planted_secrets_and_risky_code(engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    roles = make_tree(root)
    locked = unreadable(roles["locked"])
    out = tmp_path / "report.sarif"
    op = await scan(engine, root=str(root), output=str(out))
    assert op.status is Status.COMPLETED, op.error
    res = op.result
    report = json.loads(out.with_suffix(".json").read_text())
    found = {(f["file"], f["rule"], f["line"]) for f in report["findings"]}
    expected = EXPECTED | (set() if locked else {("locked.py", "GitHubTokenDetector", 1), ("locked.py", "B105", 1)})
    assert found == expected, (found - expected, expected - found)
    # Never the secret itself: not in either report, the result, the snippets or the log.
    logs, _ = await engine.logs(op.id)
    sarif_text = out.read_text()
    texts = [sarif_text, json.dumps(report), json.dumps(res), json.dumps([r.model_dump() for r in logs])]
    for name, secret in S.items():
        for t in texts:
            assert secret not in t, name
    snippets = {(f["file"], f["line"]): f["snippet"] for f in report["findings"]}
    assert snippets[("config/settings.py", 1)] == 'AWS_ACCESS_KEY_ID = "[REDACTED]"'
    assert snippets[("risky.py", 5)] == "subprocess.run(cmd, shell=True)"
    check_sarif(json.loads(sarif_text), root)
    assert res["skipped"] == {"binary": 1, "not a regular file": 1, "symlink": 1}
    assert res["decoded_as_latin1"] == 1
    if locked:
        assert res["failures"] == {"locked.py": "unreadable: Permission denied"}
        assert op.progress.failed == 1
    assert res["findings"] == len(expected)
    assert res["by_severity"]["critical"] == 2  # the private key, the GCP service account key
    live = {k.removeprefix("findings_"): v for k, v in op.progress.metrics.items() if k.startswith("findings_") and v}
    assert live == res["by_severity"]  # counted as the scan went (metrics), the same as the report's

    # fail_on: the reports are written, then the operation fails, for a CI step.
    op = await scan(engine, root=str(root), output=str(tmp_path / "ci.json"), format="json", fail_on="critical")
    assert op.status is Status.FAILED and op.error is not None, op.error
    assert op.error.startswith("2 findings of severity critical"), op.error
    assert "RuntimeError" not in op.error and "security_scan.py:" not in op.error, op.error  # the verdict alone
    assert json.loads((tmp_path / "ci.json").read_text())["summary"]["findings"] == len(expected)

    # rules picks categories and ids; format picks the report.
    op = await scan(engine, root=str(root), rules=["code", "PrivateKeyDetector"], format="json")
    assert op.status is Status.COMPLETED, op.error
    assert set(op.result["reports"]) == {"json"}
    only = {
        (f["file"], f["rule"], f["line"])
        for f in json.loads(Path(op.result["reports"]["json"]).read_text())["findings"]
    }
    assert only == {
        f for f in expected if f[1] == "PrivateKeyDetector" or re.fullmatch(r"B\d{3}", f[1]) or "-" in f[1]
    } - {
        ("svc/main.go", "gcp-api-key", 4),
        ("svc/sa.json", "gcp-service-account-key", 1),
    }


async def test_git_tree_file_deleted_after_commit_is_skipped(engine: Engine, tmp_path: Path) -> None:
    """git lists a tracked file deleted from the work tree: skipped as gone, not an item failure."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "kept.py").write_text(FILES["risky.py"])
    (root / "deleted.py").write_text("x = 1\n")
    (root / "ignored.py").write_text(FILES["risky.py"])
    (root / ".gitignore").write_text("ignored.py\n")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "kept.py", "deleted.py", ".gitignore"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    (root / "deleted.py").unlink()
    op = await scan(engine, root=str(root), rules=["python"])
    assert op.status is Status.COMPLETED, op.error
    assert op.result["skipped"] == {"gone": 1} and op.result["failures"] == {}
    assert {f["file"] for f in op.result["top"]} == {"kept.py"} and op.result["findings"] == 15


def test_sigkilled_worker_resumes_to_the_uninterrupted_report(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker scanning in two worker processes is SIGKILLed once a checkpoint holds scanned files;
    `outlast resume` finishes the scan, and its findings and result equal those of an uninterrupted scan
    of the same tree in one thread (run in this process)."""
    root = tmp_path / "tree"
    # Three batches of the worker processes (BATCH files each, the last short): the killed worker stands at
    # its checkpoints and never completes (kill_worker_when), so the kill lands mid-run at any size.
    n = 2 * BATCH + 32
    body = "".join(f"def f{i}(x):\n    return yaml.safe_load(x) or {i}\n\n" for i in range(3))
    for i in range(n):
        d = root / f"pkg{i // 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        extra = f'eval(src)\nDB_PASSWORD = "{S["password"]}{i}"\n' if i % 20 == 7 else ""
        (d / f"m{i:04d}.py").write_text(f"import yaml\n{extra}{body}")
    (root / "pkg07" / "blob.bin").write_bytes(b"\0" * 64)
    monkeypatch.setenv("OUTLAST_WORKERS", "0")
    whole = {"result": as_json(run_here(tmp_path, "security_scan", root=str(root), output=f"{tmp_path}/a.json").result)}
    # B307, B105 and KeywordDetector in each file whose number is 7 modulo 20 (8 of the 160).
    assert whole["result"]["findings"] == 3 * len(range(7, n, 20)) == 24 and whole["result"]["skipped"] == {"binary": 1}
    monkeypatch.setenv("OUTLAST_WORKERS", "2")
    op_id = submit(cli, "security_scan", {"root": str(root), "output": f"{tmp_path}/b.json"}, "checkpoint_interval=0.2")
    killed = kill_worker_when(cli, op_id, lambda op: checkpoint_state(cli, op.id).get("bytes", 0) > 0)
    assert killed.status is Status.RUNNING
    partial = checkpoint_state(cli, op_id)
    # Every byte may be scanned by then on a loaded machine (the kill lands as the reports are written).
    assert 0 < partial["bytes"] <= whole["result"]["bytes"]
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["findings"] == a["findings"] and b["summary"] == a["summary"]
    drop = ("reports",)
    assert {k: v for k, v in final["result"].items() if k not in drop} == {
        k: v for k, v in whole["result"].items() if k not in drop
    }


def test_a_stop_kills_the_batches_in_flight_and_a_resume_scans_them(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the worker processes scanned a batch with a file bandit takes seconds over: the stop
    waited for the whole batch (a minute for the tester's), past the grace period, said "forced" when it
    was not, and left a thread and a semaphore behind. Now it is taken at once, the workers are killed,
    and the files of the batch cut off are not done: the resume scans them."""
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(64):  # the first batch: quick
        (root / f"a{i:02d}.py").write_text("x = 1\n")
    rnd = random.Random(1)
    slow = root / "z_slow.py"  # the second batch: bandit needs several seconds for it
    slow.write_text(
        "".join(
            f"p{i} = subprocess.call('{''.join(rnd.choices(string.ascii_letters, k=30))}', shell=True)\n"
            for i in range(20000)
        )
    )
    monkeypatch.setenv("OUTLAST_WORKERS", "2")
    monkeypatch.setenv("OUTLAST_GRACE_PERIOD", "1")
    runner = cli.start("run", "security_scan", "-p", f"root={root}", "-p", f"output={tmp_path}/r.json")
    op_id = runner.wait_line(lambda ln: " running " in ln).split()[1]
    until(lambda: checkpoint_state(cli, op_id).get("bytes", 0) > 0, 60, what="the first batch scanned")
    workers = [c for c in psutil.Process(runner.popen.pid).children() if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2, workers
    time.sleep(0.5)  # the first batch's files done, the second batch awaited
    start = time.monotonic()
    runner.signal(signal.SIGINT)
    assert runner.wait(timeout=10) == 6, runner.err  # paused
    assert time.monotonic() - start < 4
    until(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 5, what="no worker")
    assert not [ln for ln in runner.err if re.search(r"leaked|exiting without|Traceback|forced", ln)], runner.err
    op = cli.op(op_id)
    assert op.status is Status.PAUSED and op.progress.done == 64, op
    slow.write_text("eval(src)\n")  # scanned by the resume, or not at all
    final = resume(cli, op_id)
    assert final["status"] == "completed" and final["result"]["scanned"] == 65, final
    assert {f["file"] for f in final["result"]["top"]} == {"z_slow.py"}, final["result"]


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    bad_params(cli, "security_scan", {"root": str(tmp_path / "nope")}, "root")
    bad_params(cli, "security_scan", {}, "root")
    bad_params(cli, "security_scan", {"root": str(tmp_path), "rules": ["secrets", "no-such-rule"]}, "no-such-rule")


def _baseline_of(root: Path, rel: str) -> dict[str, Any]:
    """A detect-secrets baseline made by detect-secrets itself (as `detect-secrets scan` writes it,
    file names relative to the scanned root) for one file of the tree."""
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    here = os.getcwd()
    os.chdir(root)
    try:
        with default_settings():
            secrets = SecretsCollection()
            secrets.scan_file(rel)
            return {"version": "1.5.0", "plugins_used": [], "filters_used": [], "results": secrets.json()}
    finally:
        os.chdir(here)


async def test_a_detect_secrets_baseline_silences_known_findings(engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    make_tree(root)
    baseline = tmp_path / ".secrets.baseline"
    baseline.write_text(json.dumps(_baseline_of(root, "web/app.js")))
    op = await scan(engine, root=str(root), baseline=str(baseline), format="json")
    assert op.status is Status.COMPLETED, op.error
    found = {
        (f["file"], f["rule"], f["line"])
        for f in json.loads(Path(op.result["reports"]["json"]).read_text())["findings"]
    }
    known = {("web/app.js", "GitLabTokenDetector", 1), ("web/app.js", "SlackDetector", 5)}
    assert not found & known  # the baseline's secrets are quiet
    assert ("web/app.js", "js-eval", 2) in found  # the rest is not
    assert ("billing #2 100%.rb", "StripeDetector", 1) in found


def test_a_bad_baseline_is_one_line(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text('{"results": 3}')
    bad_params(cli, "security_scan", {"root": str(tmp_path), "baseline": str(tmp_path / "b.json")}, "baseline")
    bad_params(cli, "security_scan", {"root": str(tmp_path), "baseline": str(tmp_path / "nope.json")}, "nope.json")


def test_a_baseline_that_is_a_fifo_or_a_device_is_refused_at_once(cli: Cli, tmp_path: Path) -> None:
    """A FIFO nobody writes was waited on for ever at submit, deaf to SIGTERM; /dev/zero read until memory ran
    out. Each is one line, exit 2, nothing stored (in a process of its own: the old code never returned)."""
    fifo = tmp_path / "baseline.fifo"
    os.mkfifo(fifo)
    for baseline in (fifo, Path("/dev/zero")):
        params = json.dumps({"root": str(tmp_path), "baseline": str(baseline)})
        r = cli("run", "security_scan", "--params-json", params, timeout=30)
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert r.stderr.strip() == f"outlast: security_scan params: baseline: baseline {baseline}: not a regular file"
        nothing_stored(cli)


async def test_files_whose_stat_says_empty_are_read_to_their_end(engine: Engine, tmp_path: Path) -> None:
    """/proc/sys's files say 0 bytes and hold text, and refuse a read of max_file_size (5 MB) at once: every one
    failed "unreadable: Cannot allocate memory", the scan with them. Read in steps, they are scanned."""
    if not Path("/proc/sys/kernel/ostype").is_file():
        pytest.skip("no /proc/sys")
    op = await engine.submit(
        OperationSpec(
            type="security_scan",
            params={"root": "/proc/sys/kernel", "output": str(tmp_path / "r.json")},
            profile={"failure_threshold": 100_000},  # some are not for this user to read
        )
    )
    op = await engine.wait(op.id, timeout=120)
    assert op.status is Status.COMPLETED, op.error
    report = json.loads((tmp_path / "r.json").read_text())
    assert not [f for f, why in report["failures"].items() if "allocate" in why], report["failures"]
    assert report["summary"]["bytes"] >= len("Linux\n") and "ostype" not in report["skipped"]


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
async def test_secrets_in_utf16_or_utf32_text_are_found(engine: Engine, tmp_path: Path, codec: str) -> None:
    """A PowerShell script or a .reg file in UTF-16 (its NULs) was skipped as binary: its password and key went
    unreported. Text with a byte order mark is read in its encoding; a binary file is still skipped."""
    root = tmp_path / "tree"
    root.mkdir()
    text = f'$password = "{S["password"]}"\r\n$key = "{S["aws_id"]}"\r\n'
    data = text.encode(codec) if codec != "utf-16-be" else b"\xfe\xff" + text.encode(codec)
    (root / "deploy.ps1").write_bytes(data)
    (root / "blob.bin").write_bytes(b"\xff\xfe\0\0\x01\x02" * 50)  # a mark, then no text: binary
    op = await scan(engine, root=str(root), output=str(tmp_path / "r.json"))
    assert op.status is Status.COMPLETED, op.error
    report = json.loads((tmp_path / "r.json").read_text())
    got = {(f["file"], f["line"], f["rule"]) for f in report["findings"]}
    assert {("deploy.ps1", 1, "KeywordDetector"), ("deploy.ps1", 2, "AWSKeyDetector")} <= got, got
    assert report["skipped"] == {"blob.bin": "binary"}
    assert S["password"] not in json.dumps(report) and S["aws_id"] not in json.dumps(report)


ENV_SECRETS = {
    ".env": "DB_HOST=localhost\nDB_PASSWORD=Tr0ub4dor3xq\nexport API_TOKEN='9f8e7d6c5b4a3928'  # prod\n"
    "SECRET_KEY=${SECRET_KEY}\nREDIS_PASSWORD=\nPASSWORD_HINT=xxxx\nDEBUG=true\nWEBHOOK_SECRET=ab#cd1234ef\n",
    "deploy/Dockerfile": "FROM python:3.11\nARG NPM_TOKEN=npm_a8Kd92jLq0\n"
    "ENV AWS_SECRET_ACCESS_KEY wJalrXUtnFEMI9K7MDENGbPxRfiCYz\nARG GITHUB_TOKEN\nRUN pip install tokenizers\n",
    "docker-compose.yml": "services:\n  db:\n    environment:\n      - POSTGRES_PASSWORD=s3cr3tPg99\n"
    "      - API_KEY_FILE=/run/secrets/api_key\n      - TOKEN_URL=https://auth.example.org/token\n"
    "      - BROKER_CREDENTIALS=amqp://app:Qz81kLm2@mq:5672\n",
    "app/settings.py": "TOKEN = fetch_token()\nPASSWORD = os.environ['PASSWORD']\n",
}
"""Secrets set as plain ``NAME=value`` (or ``ENV NAME value``) lines, which detect-secrets' keyword plugin, made for
quoted literals in code, does not report; beside names set to templates, nothing, or placeholders."""


async def test_secrets_in_env_files_and_dockerfiles_are_found_and_redacted(engine: Engine, tmp_path: Path) -> None:
    """A committed ``.env`` with ``DB_PASSWORD=...`` and a Dockerfile's ``ENV AWS_SECRET_ACCESS_KEY ...`` were
    not reported (an outside tester's find): the leaks of that kind are the commonest there are."""
    root = tmp_path / "tree"
    for rel, text in ENV_SECRETS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    op = await scan(engine, root=str(root), format="json")
    assert op.status is Status.COMPLETED, op.error
    report = Path(op.result["reports"]["json"]).read_text()
    found = {(f["file"], f["line"]) for f in json.loads(report)["findings"] if f["rule"] == "env-file-secret"}
    assert found == {
        (".env", 2),
        (".env", 3),
        (".env", 8),
        ("deploy/Dockerfile", 2),
        ("deploy/Dockerfile", 3),
        ("docker-compose.yml", 4),
        ("docker-compose.yml", 7),
    }, found
    secrets = ("Tr0ub4dor3xq", "9f8e7d6c5b4a3928", "cd1234ef", "npm_a8Kd92jLq0", "wJalrXUtnFEMI9K7", "s3cr3tPg99")
    for secret in (*secrets, "Qz81kLm2"):
        assert secret not in report, secret  # redacted in every snippet


async def test_a_keyword_set_to_prose_or_a_name_is_not_a_password(engine: Engine, tmp_path: Path) -> None:
    """detect-secrets' keyword plugin reported ``password_hint = "enter your password"`` and ``PASSWORD_FIELD =
    "password"`` as hard-coded passwords, severity high (an outside tester's find); a real one is still found."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "forms.py").write_text(
        'password_hint = "enter your password"\nPASSWORD_FIELD = "password"\ndb_password = "Tr0ub4dor3xq"\n'
    )
    findings = await json_findings(engine, root)
    assert {f["line"] for f in findings if f["category"] == "secrets"} == {3}, findings


async def test_child_process_under_a_name_of_the_file_s_own_is_found(engine: Engine, tmp_path: Path) -> None:
    """``const cp = require('child_process'); cp.exec(cmd)`` (and ``import * as cp from ...``) was not reported
    (an outside tester's find on the commonest way Node code is written): only ``child_process.exec``,
    ``require(...).exec`` and a bare ``exec`` were. A RegExp's ``.exec``, a name bound elsewhere and a method
    or function named exec being defined (``async exec (args) {``, reported on npm's own code) stay quiet."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.js").write_text(
        "const cp = require('child_process');\nconst re = /x/g;\ncp.exec(cmd);\nre.exec(text);\ncp.spawn('ls');\n"
    )
    (root / "b.ts").write_text(
        "import * as childProcess from 'node:child_process';\nimport fs from 'fs';\n"
        "childProcess.execSync(`rm ${dir}`);\nfs.exec(x);\n"
    )
    (root / "c.js").write_text("const cp = require('./my-process');\ncp.exec(cmd);\n")  # not child_process
    # npm's every command class: a method named exec is defined, not called (reported high, on real code)
    (root / "d.js").write_text(
        "const { spawn } = require('child_process');\nclass Edit {\n  async exec (args) {\n    return 1\n  }\n"
        "  execSync(a, b = f(1)) {\n  }\n}\nfunction exec(cmd) {\n}\nexec(cmd, (err) => { done(err) });\n"
    )
    findings = await json_findings(engine, root)
    found = {(f["file"], f["line"]) for f in findings if f["rule"] == "js-child-process-exec"}
    assert found == {("a.js", 3), ("b.ts", 3), ("d.js", 11)}, found


async def test_an_env_template_s_placeholders_are_no_secrets(engine: Engine, tmp_path: Path) -> None:
    """A committed ``.env.example`` (a template, with ``changeme``, ``your-api-key-here``, ``sk_test_...``,
    ``replace_me``, ``TODO``) had five of its lines reported as secrets, severity high (an outside tester's
    find): placeholders are left alone, as the rule promises; a real value beside them is still found."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / ".env.example").write_text(
        "DB_PASSWORD=changeme\nAPI_KEY=your-api-key-here\nSTRIPE_SECRET_KEY=sk_test_...\nJWT_SECRET=replace_me\n"
        "TOKEN=TODO\nSESSION_SECRET=put_a_secret_here\nAUTH_TOKEN=xxxx-xxxx-xxxx\nADMIN_PASSWORD=Xk29pqLmz83\n"
    )
    findings = await json_findings(engine, root)
    assert {(f["line"], f["rule"]) for f in findings if f["category"] == "secrets"} == {(8, "env-file-secret")}, (
        findings
    )


def test_a_long_run_of_blanks_after_a_keyword_does_not_hang_the_scan(cli: Cli, tmp_path: Path) -> None:
    """detect-secrets' keyword patterns backtrack on a run of blanks: "password", 2,000 spaces and "=" took
    50 s on one line (cubic in the run), 5,000 a quarter of an hour, in a thread no timeout or SIGTERM
    stopped (the worker went on for ever). The run is cut short (lines stay where they are) for the library."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "settings.py").write_text("password" + " " * 5000 + "=\n" + "x = 1\n")
    code, op, err = run_json(cli, "run", "security_scan", "-p", f"root={root}", "-p", "rules=secrets", timeout=60)
    assert code == 0 and op["status"] == "completed", (code, op, err)
    assert op["result"]["scanned"] == 1 and op["result"]["failures"] == {}, op["result"]


async def test_a_second_secret_on_a_line_with_a_provider_s_key_is_found_and_redacted(
    engine: Engine, tmp_path: Path
) -> None:
    """A high-entropy string or a password on the line of an AWS key was dropped as "saying less than the
    provider's detector" though it is another secret, and, dropped, was left in clear in the snippet of the
    AWS finding (report and SARIF). detect-secrets reports both; so does the scan, every value masked."""
    blob = "qWeRtYuIoPaSdFgHjKlZxCvBnMmNbVcXzLkJhGfDsAQp"
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.py").write_text(f'cfg = {{"aws": "{S["aws_id"]}", "blob": "{blob}"}}\n')
    (root / "b.py").write_text(f'x = 1; password = "{S["password"]}"; k = "{S["aws_id"]}"\n')
    op = await scan(engine, root=str(root), format="both")
    assert op.status is Status.COMPLETED, op.error
    report = Path(op.result["reports"]["json"]).read_text()
    found = {(f["file"], f["rule"]) for f in json.loads(report)["findings"] if f["category"] == "secrets"}
    assert found == {
        ("a.py", "AWSKeyDetector"),
        ("a.py", "Base64HighEntropyString"),
        ("b.py", "AWSKeyDetector"),
        ("b.py", "KeywordDetector"),
    }, found
    sarif = Path(op.result["reports"]["sarif"]).read_text()
    for secret in (blob, S["password"], S["aws_id"]):
        assert secret not in report and secret not in sarif, secret


async def test_a_password_holding_quotes_is_redacted_whole(engine: Engine, tmp_path: Path) -> None:
    """A hard-coded password with a quote of the other kind or an escaped one in it (``'a\\'b"c'``) was masked
    to its first quote: the rest of it stayed in clear in bandit's message and in the snippet (report, SARIF,
    the stored result)."""
    tails = [rand(12) for _ in range(3)]
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.py").write_text(
        f"password = 'Pa\\'ss\"{tails[0]}'\n"
        f"def f(password='Pb\\'ss\"{tails[1]}'):\n    pass\n"
        f'f(password="Pc\\"ss\'{tails[2]}")\n'
    )
    op = await scan(engine, root=str(root), format="both")
    assert op.status is Status.COMPLETED, op.error
    report = Path(op.result["reports"]["json"]).read_text()
    assert {f["rule"] for f in json.loads(report)["findings"]} >= {"B105", "B106", "B107"}, report
    sarif = Path(op.result["reports"]["sarif"]).read_text()
    for tail in tails:
        assert tail not in report and tail not in sarif and tail not in json.dumps(op.result), tail


async def test_findings_in_a_file_with_cr_line_ends_quote_their_own_lines(engine: Engine, tmp_path: Path) -> None:
    """bandit and detect-secrets end a line at a lone CR, the snippets at LF only: in a file saved with CR line
    ends (classic Mac) the first finding quoted the whole file and the others nothing; in one with a stray CR,
    a finding quoted the line after its own."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "cr.py").write_bytes(
        f'import subprocess\rsubprocess.call("ls", shell=True)\rgh = "{S["github"]}"\r'.encode()
    )
    (root / "mixed.py").write_bytes(f'a = 1\rgh = "{S["github"]}"\nb = 2\n'.encode())
    findings = await json_findings(engine, root)
    got = {(f["file"], f["line"], f["rule"], f["snippet"]) for f in findings}
    assert got == {
        ("cr.py", 1, "B404", "import subprocess"),
        ("cr.py", 2, "B602", 'subprocess.call("ls", shell=True)'),
        ("cr.py", 2, "B607", 'subprocess.call("ls", shell=True)'),
        ("cr.py", 3, "GitHubTokenDetector", 'gh = "[REDACTED]"'),
        ("mixed.py", 2, "GitHubTokenDetector", 'gh = "[REDACTED]"'),
    }, got


async def test_nosec_inside_another_word_silences_nothing(engine: Engine, tmp_path: Path) -> None:
    """ "nosec" anywhere in a line silenced it: a token beside a ``postgres://nosecure:...`` DSN was not reported
    (detect-secrets reports it). ``# nosec`` as a word still silences its line."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.py").write_text(
        f'DSN = "postgres://nosecure:x@db"; GH = "{S["github"]}"\nother = "{S["github"]}"  # nosec: a fixture\n'
    )
    findings = await json_findings(engine, root)
    assert {(f["line"], f["rule"]) for f in findings} == {(1, "GitHubTokenDetector")}, findings


async def test_secrets_in_env_files_with_crlf_line_ends_are_found(engine: Engine, tmp_path: Path) -> None:
    """The env-file rule ended its match at LF: an env file, Dockerfile or Compose file saved on Windows (CRLF)
    had none of its secrets reported. The same files with CRLF give the same findings as with LF."""
    found: list[set[tuple[str, int]]] = []
    for ends in ("\n", "\r\n"):
        root = tmp_path / f"tree{len(ends)}"
        for rel, text in ENV_SECRETS.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(text.replace("\n", ends).encode())
        op = await scan(engine, root=str(root), format="json")
        assert op.status is Status.COMPLETED, op.error
        report = json.loads(Path(op.result["reports"]["json"]).read_text())
        found.append({(f["file"], f["line"]) for f in report["findings"] if f["rule"] == "env-file-secret"})
    assert len(found[0]) == 7 and found[1] == found[0], found
