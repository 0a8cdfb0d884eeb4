"""security_scan: hard-coded secrets and risky code in a source tree, reported as JSON and SARIF 2.1.0.

Files come from git's view of the tree when ``root`` is a work tree, else a walk honouring .gitignore
(``_walk.list_files``). Python code is checked by bandit, secrets in every text file by detect-secrets
(``_scan_libs``: their rule ids, severities and help links; a detect-secrets ``baseline`` file silences
known secrets), and Outlast's own rules (``_scan_rules``) cover what they do not: JavaScript/TypeScript
and Go code, Google Cloud keys. ``rules`` picks ids or categories (``secrets``, ``code``, ``python``,
``bandit``, ``detect-secrets``). Snippets are redacted before they leave the rules module, so no secret
reaches the report, the result or the log.

Resumable per file: each file's findings are kept in ``ctx.state`` (by path) with the file marked done,
so a resumed scan reports exactly what an uninterrupted one would. Binary files, files larger than
``max_file_size``, symlinks and non-regular files are skipped (counted by reason); a file that cannot be
read is an item failure (one deleted since it was listed is skipped); text that is not UTF-8 is scanned
as Latin-1 (secrets are ASCII).

Reports go to ``output`` (``format=both``: ``output`` with the suffixes .json and .sarif) or, by default,
to ``outputs/scan-ID.json`` and ``.sarif`` in the state directory; the result says where. With
``fail_on``, findings of that severity or worse fail the operation once the reports are written (CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .. import __version__
from ..context import OperationContext, OperationFailed
from ..errors import InvalidInput
from ..files import create_new
from ..registry import operation
from ..text import clean_json
from ._common import (
    JSON_MAGIC,
    NotInTree,
    changed_since,
    check_output_file,
    existing_dir,
    not_regular,
    open_in_tree,
    output_dir,
    read_upto,
    reading_since,
    wide_text,
)
from ._lang import language_of
from ._pool import in_order, worker_count
from ._scan_libs import (
    bandit_findings,
    bandit_rules,
    load_baseline,
    opened_as,
    secret_findings,
    secret_rules,
    sweep_names,
)
from ._scan_rules import SEVERITIES, all_rules, scan_text, select_rules
from ._walk import list_files, own_files

BATCH = 64
"""Files a worker process scans per batch."""
THREAD_BATCH = 1
"""Files a batch holds when the scan runs in the engine's own thread (too few files for worker processes):
a thread cannot be stopped, so a stop waits for its batch, and the progress moves once a batch is done.
Bandit and detect-secrets take 0.1 s to seconds a file on a busy machine: 64 files held Ctrl-C for 7-12 s
(past the grace period: a forced stop), the bar at 0 for as long. One file a batch costs a thread hop (tens
of microseconds) a file."""
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note"}
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0"}
TOP = 20


class ScanParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(description="directory to scan")
    rules: list[str] = Field(
        default_factory=list, description="rule ids or categories (secrets, code, python); default all"
    )
    format: Literal["json", "sarif", "both"] = Field(default="both", description="report format(s)")
    output: str | None = Field(
        default=None, description="report path (with format=both: its .json and .sarif siblings); default state dir"
    )
    exclude: list[str] = Field(default_factory=list, description="glob patterns of files to leave out")
    max_file_size: int = Field(default=5 << 20, ge=1, le=1 << 40, description="bytes; larger files are skipped")
    baseline: str | None = Field(
        default=None, description="a detect-secrets baseline file: the secrets it lists stay quiet"
    )
    fail_on: Literal["critical", "high", "medium", "low"] | None = Field(
        default=None, description="fail (after writing the reports) when a finding has this severity or worse: for CI"
    )

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return existing_dir(v, "root")

    @field_validator("rules", "exclude", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        """``--param rules=secrets,py-shell`` from the command line is one string."""
        return [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else v

    @field_validator("rules")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        select_rules(v)
        return v

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, v: str | None) -> str | None:
        if v is not None:
            v = str(Path(v).expanduser().resolve())
            try:
                load_baseline(v)
            except InvalidInput as e:
                raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _outputs(self) -> ScanParams:
        """The output itself and each report file it stands for (``format=both``: .json and .sarif)."""
        if self.output is not None:
            self.output = output = check_output_file(self.output, "output") or self.output  # absolute
            for kind, path in _explicit_targets(output, self.format).items():
                check_output_file(str(path), "output", JSON_MAGIC, "a JSON report")
                if not _replaceable(path, kind):
                    what = "a SARIF log" if kind == "sarif" else "a report of this scan"
                    raise ValueError(f"output {str(path)!r} exists and is not {what}: remove it or choose another path")
        return self


def _replaceable(path: Path, kind: str) -> bool:
    """Whether an existing ``path`` may be overwritten by a ``kind`` report: missing or empty, a JSON report
    this scan wrote, or any SARIF log. Starting with ``{`` was enough: ``output=package.json`` (or a
    tsconfig.json, a settings file) was replaced by the report."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not head.strip():
        return True
    if kind == "sarif":
        return b'"$schema"' in head and b"sarif" in head.lower()
    return head.lstrip().startswith(b"{") and b'"outlast-security-scan"' in head


def scan_file(
    root: Path, rel: str, selected: frozenset[str], max_size: int, known: frozenset[tuple[str, str]] = frozenset()
) -> tuple[str, str, Any]:
    """(rel, kind, payload): ('ok', (bytes, findings, latin1)), ('skip', reason) or ('fail', message)."""
    path = root / rel
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return rel, "skip", "symlink"
        if not stat.S_ISREG(st.st_mode):
            return rel, "skip", not_regular(path, st.st_mode)
        if st.st_size > max_size:
            return rel, "skip", "too large"
        fh, opened = open_in_tree(root, rel)
    except FileNotFoundError:  # listed by git but deleted in the work tree, or removed during the scan
        return rel, "skip", "gone"
    except NotInTree as e:
        return rel, "skip", str(e)
    except OSError as e:
        return rel, "fail", f"unreadable: {e.strerror or e}"
    with fh:  # open while the libraries read it: they are given this file, not the tree's path again
        try:
            data = read_upto(fh, max_size + 1, opened.st_size)
        except OSError as e:
            return rel, "fail", f"unreadable: {e.strerror or e}"
        if len(data) > max_size:  # grown since its lstat, or a file whose stat says less than it holds
            return rel, "skip", "too large"
        latin1 = False
        transcoded: bytes | None = None
        if b"\0" in data[:8192]:
            # Text in UTF-16 or UTF-32 (with its byte order mark: PowerShell scripts, .reg files, Windows tools'
            # configs) has NULs too: skipped as binary, its passwords and keys went unreported.
            text16 = wide_text(data)
            if text16 is None:
                return rel, "skip", "binary"
            text, transcoded = text16, text16.encode("utf-8", "surrogatepass")
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text, latin1 = data.decode("latin-1"), True
        language = language_of(rel)
        secrets = not selected.isdisjoint(secret_rules())
        bandit = language == "python" and not selected.isdisjoint(bandit_rules())
        try:
            libraries = []
            if secrets:
                # detect-secrets' keyword patterns backtrack on a long run of blanks: "password", 2,000
                # spaces and "=" took 50 s on one line, 100,000 for ever, in a thread no timeout can stop.
                tamed = _blanks_cut(transcoded if transcoded is not None else data)
                with opened_as(fh, rel, path, tamed if tamed is not None else transcoded) as name:
                    libraries += secret_findings(name, rel, selected, known)
            if bandit:
                with opened_as(fh, rel, path, transcoded) as name:
                    libraries += bandit_findings(name, selected)
            findings = scan_text(rel, text, language, selected, libraries)
        except RecursionError:  # a pathologically nested file
            return rel, "fail", "too deeply nested to parse"
    return rel, "ok", (len(data), findings, latin1)


BLANKS_KEPT = 32
"""The longest run of spaces and tabs detect-secrets is given; longer runs are cut to it (in a copy): what it
looks for is never in one, and its keyword patterns take time cubic in their length."""
_LONG_BLANKS = re.compile(rb"[ \t]{%d,}" % (BLANKS_KEPT + 1))


def _blanks_cut(data: bytes) -> bytes | None:
    """``data`` (UTF-8) with each run of blanks longer than ``BLANKS_KEPT`` cut to it, lines unmoved; None
    when it has none."""
    if _LONG_BLANKS.search(data) is None:
        return None
    return _LONG_BLANKS.sub(lambda m: m.group()[:BLANKS_KEPT], data)


def _scan_batch(
    root: Path, rels: list[str], selected: frozenset[str], max_size: int, known: frozenset[tuple[str, str]]
) -> list[tuple[str, str, Any]]:
    return [scan_file(root, rel, selected, max_size, known) for rel in rels]


def _uri(rel: str) -> str:
    """A relative path as a SARIF uri (a URI reference): a '#' in a file name began its fragment, and
    a space or '%' made it no URI at all, so viewers opened no file or the wrong one."""
    return urllib.parse.quote(os.fsencode(rel), safe="/")  # a name's bytes that are not UTF-8 as %NN


def _sort_key(f: dict) -> tuple:
    return (f["file"], f["line"], f["column"], f["rule"])


def sarif_report(findings: list[dict], selected: frozenset[str], root: str, failures: dict[str, str]) -> dict:
    """A SARIF 2.1.0 log: one run, the selected rules in the driver, one result per finding."""
    rule_ids = sorted(selected)
    index = {r: i for i, r in enumerate(rule_ids)}
    table = all_rules()
    rules = [
        {
            "id": r,
            "name": "".join(w.capitalize() for w in r.split("-")),
            "shortDescription": {"text": table[r].title},
            "fullDescription": {"text": table[r].help},
            "help": {"text": table[r].help},
            **({"helpUri": uri} if (uri := getattr(table[r], "help_uri", None)) else {}),
            "defaultConfiguration": {"level": SARIF_LEVEL[table[r].severity]},
            "properties": {
                "tags": ["security", table[r].category],
                "security-severity": SECURITY_SEVERITY[table[r].severity],
                "severity": table[r].severity,
            },
        }
        for r in rule_ids
    ]
    results = [
        {
            "ruleId": f["rule"],
            "ruleIndex": index[f["rule"]],
            "level": SARIF_LEVEL[f["severity"]],
            "message": {"text": f["message"]},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": _uri(f["file"]), "uriBaseId": "SRCROOT"},
                        "region": {
                            "startLine": f["line"],
                            "startColumn": f["column"],
                            "snippet": {"text": f["snippet"]},
                        },
                    }
                }
            ],
            "partialFingerprints": {"outlastFinding/v1": f"{f['rule']}:{f['file']}:{f['snippet']}"},
            "properties": {"severity": f["severity"], "category": f["category"]},
        }
        for f in findings
    ]
    notes = [
        {
            "level": "warning",
            "message": {"text": f"{rel}: {msg}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(rel), "uriBaseId": "SRCROOT"}}}],
        }
        for rel, msg in sorted(failures.items())
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "outlast-security-scan", "version": __version__, "rules": rules}},
                "originalUriBaseIds": {"SRCROOT": {"uri": Path(root).as_uri() + "/"}},
                "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notes}],
                "results": results,
            }
        ],
    }


def _write(path: Path, data: dict) -> None:
    """Atomically: a reader never sees half a report. File names whose bytes are not UTF-8 are written
    ``clean`` (each such byte as ``\\xNN``): escaped as lone surrogates, strict JSON readers refuse them."""
    tmp = path.with_name(f".{path.name}.partial")
    try:  # made new, never through a link planted at that name (a report in /tmp: a file anywhere truncated)
        fd = create_new(tmp)
    except FileExistsError:
        tmp = tmp.with_name(f"{tmp.name}.{os.getpid()}.{time.time_ns()}")
        fd = create_new(tmp)
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(clean_json(data), fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _explicit_targets(output: str, format: str) -> dict[str, Path]:
    out = Path(output).expanduser().resolve()
    if format != "both":
        return {format: out}
    return {"json": out.with_suffix(".json"), "sarif": out.with_suffix(".sarif")}


def _targets(ctx: OperationContext, p: ScanParams) -> dict[str, Path]:
    if p.output:
        return _explicit_targets(p.output, p.format)
    base = output_dir(ctx) / f"scan-{ctx.id}"
    kinds = ("json", "sarif") if p.format == "both" else (p.format,)
    return {k: base.with_suffix("." + k) for k in kinds}


def _sizes(root: Path, rels: list[str]) -> int:
    """The bytes of these files (of ``root``) now; a file gone counts nothing."""
    total = 0
    for rel in rels:
        with contextlib.suppress(OSError):
            total += os.lstat(os.path.join(root, rel)).st_size
    return total


def _record(ctx: OperationContext, rel: str, kind: str, payload: Any) -> None:
    """One file's outcome into the scan's state (what the reports are made of) and its live metrics."""
    st = ctx.state
    if kind == "skip":
        st["skipped"][rel] = payload
    elif kind == "fail":
        st["failed"][rel] = payload
    else:
        size, findings, latin1 = payload
        st["failed"].pop(rel, None)
        st["bytes"] += size
        if latin1:
            st["latin1"] += 1
            st["latin1_files"].append(rel)
        if findings:
            st["findings"][rel] = findings
            ctx.metrics["findings"] += len(findings)
            for f in findings:
                ctx.metrics[f"findings_{f['severity']}"] += 1


@operation("security_scan", params=ScanParams, description="find hard-coded secrets and risky code; JSON and SARIF")
async def security_scan(ctx: OperationContext, p: ScanParams) -> dict:
    """Scan every file once; findings, skips and failures add up to the report written at the end."""
    root = Path(p.root)
    selected = await asyncio.to_thread(select_rules, p.rules)  # loads bandit's plugins: not on the loop
    await asyncio.to_thread(sweep_names)  # what a killed attempt's pool workers left
    known = await asyncio.to_thread(load_baseline, p.baseline)
    ctx.progress(step="listing files")
    # Reports inside the tree are not scanned: the last run's would be, and differ from run to run.
    files = await list_files(ctx, root, [], p.exclude, own_files(*_targets(ctx, p).values()))
    ctx.progress(total=len(files), step="scanning")
    st = ctx.state
    found: dict[str, list[dict]] = st.setdefault("findings", {})
    skipped: dict[str, str] = st.setdefault("skipped", {})
    failed: dict[str, str] = st.setdefault("failed", {})
    st.setdefault("bytes", 0)
    st.setdefault("latin1", 0)
    latin1_files: list[str] = st.setdefault("latin1_files", [])
    since = reading_since(ctx)
    done = [f for f in files if ctx.is_done(f)] if ctx.done_keys else []
    changed = await asyncio.to_thread(changed_since, root, done, since) if done and since is not None else set()
    if changed:  # scanned by an earlier attempt, changed since: what it found there is of the file before
        ctx.log.info(f"{len(changed)} files scanned by an earlier attempt changed since: scanned again")
        for kept in (found, skipped, failed):
            for rel in changed.intersection(kept):
                del kept[rel]
        latin1_files[:] = [r for r in latin1_files if r not in changed]
        st["latin1"] = len(latin1_files)
        # The bytes of the files scanned before and not changed since are their sizes now; the changed ones
        # add theirs as they are scanned again.
        st["bytes"] = await asyncio.to_thread(
            _sizes, root, [f for f in done if f not in changed and f not in skipped and f not in failed]
        )
    ctx.metrics["findings"] = sum(map(len, found.values()))
    live = Counter(f["severity"] for fs in found.values() for f in fs)
    ctx.metrics.update({f"findings_{s}": live[s] for s in SEVERITIES})  # by severity, live
    pending = [f for f in files if f in changed or not ctx.is_done(f)]
    workers = worker_count(len(pending))
    if workers:
        ctx.log.info(f"scanning {len(pending)} files in {workers} worker processes")
    n = BATCH if workers else THREAD_BATCH
    batches = [(root, pending[i : i + n], selected, p.max_file_size, known) for i in range(0, len(pending), n)]
    # Closed as the loop is left (a stop): the workers are killed then, not when the event loop gets to it.
    async with contextlib.aclosing(in_order(_scan_batch, batches, workers, ctx=ctx)) as scanned:
        async for results in scanned:
            for rel, kind, payload in results:
                if rel in changed:  # done before (``ctx.items`` passes it by): its outcome replaces the old one
                    _record(ctx, rel, kind, payload)
            async for rel, kind, payload in ctx.items(results, key=lambda r: r[0]):
                ctx.step = rel
                _record(ctx, rel, kind, payload)
                if kind == "skip":
                    ctx.skip(rel)
                    ctx.advance()  # looked at: progress reaches 100% however many files are skipped or fail
                elif kind == "fail":
                    ctx.fail(rel, payload)
                    ctx.advance()
    ctx.progress(step="writing reports")
    # A file an earlier attempt scanned and that is gone from the tree now (renamed or deleted since) keeps
    # no findings, skip or failure: under its old name beside its new one, it was reported twice.
    listed = set(files)
    for kept in (found, skipped, failed):
        for rel in [r for r in kept if r not in listed]:
            del kept[rel]
    findings = sorted((f for fs in found.values() for f in fs), key=_sort_key)
    by_sev = Counter(f["severity"] for f in findings)
    summary = {
        "files": len(files),
        "scanned": len(files) - len(skipped) - len(failed),
        "bytes": st["bytes"],
        "findings": len(findings),
        "by_severity": {s: by_sev[s] for s in SEVERITIES if by_sev[s]},
        "by_rule": dict(sorted(Counter(f["rule"] for f in findings).items())),
        "skipped": dict(sorted(Counter(skipped.values()).items())),
        "decoded_as_latin1": st["latin1"],
        "failures": dict(sorted(failed.items())[:TOP]),
    }
    targets = _targets(ctx, p)
    reports: dict[str, dict] = {}
    if "json" in targets:
        reports["json"] = {
            "tool": {"name": "outlast-security-scan", "version": __version__},
            "root": p.root,
            "rules": sorted(selected),
            "summary": summary,
            "findings": findings,
            "skipped": dict(sorted(skipped.items())),
            "failures": dict(sorted(failed.items())),
        }
    if "sarif" in targets:
        reports["sarif"] = sarif_report(findings, selected, p.root, failed)
    for kind, data in reports.items():
        await asyncio.to_thread(_write, targets[kind], data)
    ctx.log.info(
        f"{len(findings)} findings in {summary['scanned']} files"
        f" ({', '.join(f'{n} {s}' for s, n in summary['by_severity'].items()) or 'none'})",
        reports={k: str(v) for k, v in targets.items()},
    )
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    if p.fail_on is not None:
        worse = sum(rank[f["severity"]] <= rank[p.fail_on] for f in findings)
        if worse:
            where = ", ".join(str(v) for v in targets.values())
            raise OperationFailed(f"{worse} findings of severity {p.fail_on} or worse (fail_on); reports: {where}")
    top = sorted(findings, key=lambda f: (rank[f["severity"]], *_sort_key(f)))[:TOP]
    # File names as the reports write them: left to the engine, a name not UTF-8 would be a warning.
    return clean_json({**summary, "top": top, "reports": {k: str(v) for k, v in targets.items()}})
