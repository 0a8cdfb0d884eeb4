"""Rules of security_scan: hard-coded secrets (regex) and risky code (Python through ``ast``, others by regex).

``scan_text`` is pure: text in, findings out, each with a redacted snippet. A secret never leaves this
module: every snippet goes through ``redact``, which replaces whatever any secret rule matches on the
line, whichever rules were selected. A line with ``nosec`` or ``outlast: ignore`` reports nothing.
"""

from __future__ import annotations

import ast
import bisect
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

SEVERITIES = ("critical", "high", "medium", "low")
SNIPPET_MAX = 160
REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    """'secrets' or 'code'."""
    severity: str
    title: str
    help: str
    languages: frozenset[str] = frozenset()
    """Languages a code rule applies to (empty: any file)."""
    pattern: re.Pattern[str] | None = None
    """Regex rules: group ``value`` is the secret (redacted); none for ast rules."""
    hints: tuple[str, ...] = ()
    """Lower-case substrings of which one must occur in the file before the pattern runs (a fast pre-filter)."""
    keep: int = 0
    """Leading characters of a secret kept in the snippet: a public prefix like ``ghp_`` names the token kind."""
    check: Callable[[str], bool] | None = field(default=None, compare=False)
    """A further test of the matched value (entropy, placeholders)."""
    fold: bool = False
    """The pattern is written in lower case and runs on the lower-cased text: case-insensitive, and many
    times faster than ``re.IGNORECASE`` on Python's regex engine."""


def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values()) if n else 0.0


_PLACEHOLDER = re.compile(r"^(?:\W*|x+|\*+|\.+|changeit|none|null|nil|true|false|undefined|example|redacted)$", re.I)
_TEMPLATE = re.compile(r"\$\{|\{\{|%\(|%s|\{\}|^<.*>$|^\$\w+$|^env[:.(]|os\.environ|getenv", re.I)
_SECRETISH = re.compile(r"pass|pwd|secret|token|key|credential", re.I)


def _password_value(v: str) -> bool:
    """A literal that could be a real password, not a placeholder, template, prose or another name."""
    return (
        len(v) >= 4
        and not any(c.isspace() for c in v)
        and not _PLACEHOLDER.match(v)
        and not _TEMPLATE.search(v)
        and not _SECRETISH.fullmatch(v)
        and "password" not in v.lower()
    )


def _random_value(v: str) -> bool:
    """Looks generated: a digit, no template, and entropy high for its alphabet."""
    if not any(c.isdigit() for c in v) or _TEMPLATE.search(v) or "example" in v.lower():
        return False
    if re.fullmatch(r"[0-9a-fA-F]+", v):
        return len(v) >= 32 and entropy(v) >= 3.0
    return entropy(v) >= 3.5


def _not_example(v: str) -> bool:
    return "EXAMPLE" not in v.upper()


# The assignment forms a secret-like name takes in most languages and config formats.
_ASSIGN = r"""["']?\s*(?::=|=>|=(?!=)|:)\s*(?P<q>["'`])"""


def _named(names: str, value: str) -> re.Pattern[str]:
    return re.compile(rf"(?:{names})[\w\-]*{_ASSIGN}(?P<value>{value})(?P=q)")


SECRET_RULES: tuple[Rule, ...] = (
    Rule(
        "private-key",
        "secrets",
        "critical",
        "Private key in source",
        "A PEM private key is committed: revoke it and load keys from a secret store or a file outside the repo.",
        pattern=re.compile(
            r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
            r"(?P<value>(?:\\n|\s)+(?:[\w-]+: [^\n]*(?:\\n|\s)+)*[A-Za-z0-9+/=]{20,})"
        ),
        hints=("private key",),
    ),
    Rule(
        "aws-access-key-id",
        "secrets",
        "high",
        "AWS access key id",
        "An AWS access key id is committed: deactivate it in IAM and use a role or the environment.",
        pattern=re.compile(r"\b(?P<value>(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16})\b"),
        hints=("akia", "asia", "abia", "acca"),
        keep=4,
        check=_not_example,
    ),
    Rule(
        "aws-secret-access-key",
        "secrets",
        "critical",
        "AWS secret access key",
        "An AWS secret access key is committed: rotate it and use a role or the environment.",
        pattern=re.compile(r"aws[\w\-]{0,20}?(?:secret|sk)[\w\-]{0,20}" + _ASSIGN + r"(?P<value>[a-z0-9/+]{40})(?P=q)"),
        hints=("aws",),
        fold=True,
        check=_random_value,
    ),
    Rule(
        "gcp-api-key",
        "secrets",
        "high",
        "Google Cloud API key",
        "A Google API key is committed: restrict or delete it in the console and load it from the environment.",
        pattern=re.compile(r"\b(?P<value>AIza[0-9A-Za-z_\-]{35})(?![\w\-])"),
        hints=("aiza",),
        keep=4,
    ),
    Rule(
        "gcp-service-account-key",
        "secrets",
        "critical",
        "Google Cloud service account key",
        "A service account key file is committed: delete the key and use workload identity or a secret store.",
        pattern=re.compile(r'"private_key_id"\s*:\s*"(?P<value>[0-9a-f]{40})"'),
        hints=("private_key_id",),
    ),
    Rule(
        "azure-storage-key",
        "secrets",
        "critical",
        "Azure storage account key",
        "An Azure storage key (AccountKey=) is committed: rotate it and use a managed identity or Key Vault.",
        pattern=re.compile(r"accountkey=(?P<value>[a-z0-9+/]{86}==)"),
        hints=("accountkey=",),
        fold=True,
    ),
    Rule(
        "github-token",
        "secrets",
        "high",
        "GitHub token",
        "A GitHub token is committed: revoke it in the developer settings and use the CI's secret store.",
        pattern=re.compile(r"\b(?P<value>gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{82})\b"),
        hints=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        keep=4,
    ),
    Rule(
        "gitlab-token",
        "secrets",
        "high",
        "GitLab token",
        "A GitLab personal, project or runner token is committed: revoke it and use CI/CD variables.",
        pattern=re.compile(r"\b(?P<value>(?:glpat|glptt|glrt|gldt)-[A-Za-z0-9_\-]{20,})(?![\w\-])"),
        hints=("glpat-", "glptt-", "glrt-", "gldt-"),
        keep=6,
    ),
    Rule(
        "slack-token",
        "secrets",
        "high",
        "Slack token or webhook",
        "A Slack token or incoming-webhook URL is committed: revoke it and load it from the environment.",
        pattern=re.compile(
            r"\b(?P<value>xox[abposr]-(?:\d+-)*[A-Za-z0-9]{10,}(?:-[A-Za-z0-9]+)*"
            r"|hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{16,})"
        ),
        hints=("xox", "hooks.slack.com"),
        keep=5,
    ),
    Rule(
        "stripe-secret-key",
        "secrets",
        "critical",
        "Stripe live secret key",
        "A live Stripe key is committed: roll it in the dashboard and load it from the environment.",
        pattern=re.compile(r"\b(?P<value>[sr]k_live_[0-9A-Za-z]{20,})\b"),
        hints=("k_live_",),
        keep=8,
    ),
    Rule(
        "hardcoded-password",
        "secrets",
        "high",
        "Password assigned in code",
        "A password is a literal in the source: read it from the environment or a secret store.",
        pattern=_named(r"password|passwd|passphrase|pwd", r"[^\"'`\n]{1,200}"),
        hints=("pass", "pwd"),
        check=_password_value,
        fold=True,
    ),
    Rule(
        "high-entropy-secret",
        "secrets",
        "medium",
        "High-entropy string in a secret-like name",
        "A random-looking literal is assigned to a secret-like name (key, token, secret): move it out of the code.",
        pattern=_named(
            r"secret|token|api[_\-]?key|apikey|access[_\-]?key|auth[_\-]?key|private[_\-]?key|credential"
            r"|signing[_\-]?key|encryption[_\-]?key",
            r"[a-z0-9+/=_\-.~]{16,}",
        ),
        hints=("secret", "token", "key", "credential"),
        check=_random_value,
        fold=True,
    ),
)
# Rules whose match only says "a secret-like name has a literal": a specific rule on the same value wins.
_GENERIC = frozenset({"hardcoded-password", "high-entropy-secret"})

_JS = frozenset({"javascript", "typescript"})
_PY = frozenset({"python"})
CODE_REGEX_RULES: tuple[Rule, ...] = (
    Rule(
        "js-eval",
        "code",
        "medium",
        "eval or new Function in JavaScript",
        "Code built from strings at run time can run attacker input: parse data instead (JSON.parse).",
        languages=_JS,
        pattern=re.compile(r"(?<![\w$.])(?:eval|new\s+Function)\s*\((?!\s*\))"),
        hints=("eval", "function"),
    ),
    Rule(
        "js-child-process-exec",
        "code",
        "high",
        "Shell command through child_process",
        "exec/execSync (or shell: true) runs a shell: use execFile/spawn with an argument array.",
        languages=_JS,
        pattern=re.compile(
            r"(?:\bchild_process\s*\.\s*|\)\s*\.\s*|(?<![\w$.]))exec(?:Sync)?\s*\(|\bshell\s*:\s*true\b"
        ),
        hints=("child_process",),
    ),
    Rule(
        "js-tls-disabled",
        "code",
        "high",
        "TLS certificate checks disabled (JavaScript)",
        "rejectUnauthorized: false or NODE_TLS_REJECT_UNAUTHORIZED=0 accepts any certificate.",
        languages=_JS,
        pattern=re.compile(r"\brejectUnauthorized\s*:\s*false\b|NODE_TLS_REJECT_UNAUTHORIZED\W{0,6}=\s*['\"`]?0"),
        hints=("rejectunauthorized", "node_tls_reject_unauthorized"),
    ),
    Rule(
        "go-tls-insecure",
        "code",
        "high",
        "TLS certificate checks disabled (Go)",
        "InsecureSkipVerify: true accepts any certificate: configure RootCAs instead.",
        languages=frozenset({"go"}),
        pattern=re.compile(r"\bInsecureSkipVerify\s*:\s*true\b"),
        hints=("insecureskipverify",),
    ),
    Rule(
        "go-shell-exec",
        "code",
        "medium",
        "Shell command through exec.Command (Go)",
        'exec.Command("sh", "-c", ...) runs a shell: pass the program and its arguments directly.',
        languages=frozenset({"go"}),
        pattern=re.compile(
            r'\bexec\.Command(?:Context)?\s*\((?:[^,()]*,\s*)?"(?:/bin/|/usr/bin/)?(?:ba|z|da)?sh"\s*,\s*"-c"'
        ),
        hints=("exec.command",),
    ),
)

PY_RULES: tuple[Rule, ...] = (
    Rule(
        "py-eval-exec",
        "code",
        "medium",
        "eval or exec of a non-literal",
        "eval/exec run whatever string reaches them: use ast.literal_eval, json, or explicit dispatch.",
        languages=_PY,
    ),
    Rule(
        "py-shell",
        "code",
        "high",
        "Command run through a shell",
        "shell=True, os.system and friends let shell metacharacters in data run commands: pass an argv list.",
        languages=_PY,
    ),
    Rule(
        "py-pickle-load",
        "code",
        "high",
        "Deserialisation that can run code (pickle and kin)",
        "Unpickling untrusted bytes runs arbitrary code: use JSON or another data-only format.",
        languages=_PY,
    ),
    Rule(
        "py-yaml-load",
        "code",
        "high",
        "yaml.load with an unsafe loader",
        "yaml.load without a safe Loader can build arbitrary objects: use yaml.safe_load.",
        languages=_PY,
    ),
    Rule(
        "py-tls-disabled",
        "code",
        "high",
        "TLS certificate verification disabled",
        "verify=False, ssl._create_unverified_context, CERT_NONE or check_hostname=False accept any certificate.",
        languages=_PY,
    ),
    Rule(
        "py-weak-password-hash",
        "code",
        "medium",
        "MD5 or SHA-1 used for a password",
        "Fast hashes are broken for passwords: use hashlib.scrypt, argon2 or bcrypt with a salt.",
        languages=_PY,
    ),
)

RULES: dict[str, Rule] = {r.id: r for r in (*SECRET_RULES, *CODE_REGEX_RULES, *PY_RULES)}
CATEGORIES: dict[str, tuple[str, ...]] = {
    "secrets": tuple(r.id for r in SECRET_RULES),
    "code": tuple(r.id for r in (*CODE_REGEX_RULES, *PY_RULES)),
    "python": tuple(r.id for r in PY_RULES),
}
# A Python file is parsed only when one of these occurs in it (lower-cased), and the regex, if any, agrees:
# parsing is most of a scan's cost.
_PY_TRIGGERS: tuple[tuple[str, re.Pattern[str] | None], ...] = (
    ("eval", re.compile(r"(?<![\w.])eval\s*\(")),
    ("exec", re.compile(r"(?<![\w.])exec\s*\(")),
    ("shell", re.compile(r"shell\s*=\s*[^f\s]")),
    ("system", re.compile(r"(?<![\w])system\b")),
    ("popen", None),
    ("create_subprocess_shell", None),
    ("getoutput", None),
    ("pickle", None),
    ("dill", None),
    ("shelve", None),
    ("marshal", None),
    ("joblib", None),
    ("torch", None),
    ("yaml", None),
    ("verify", re.compile(r"verify\s*=\s*false")),
    ("unverified", None),
    ("cert_none", None),
    ("check_hostname", None),
    ("md5", None),
    ("sha1", None),
)


def _py_triggered(low: str) -> bool:
    return any(h in low and (rx is None or rx.search(low) is not None) for h, rx in _PY_TRIGGERS)


def select_rules(names: list[str]) -> frozenset[str]:
    """Rule ids from ids and category names (``all`` or nothing: every rule); ValueError names an unknown one."""
    if not names or "all" in names:
        return frozenset(RULES)
    out: set[str] = set()
    for n in names:
        if n in CATEGORIES:
            out.update(CATEGORIES[n])
        elif n in RULES:
            out.add(n)
        else:
            known = ", ".join(["all", *CATEGORIES, *RULES])
            raise ValueError(f"unknown rule {n!r} (known: {known})")
    return frozenset(out)


# ---- redaction ----------------------------------------------------------------------------------


def _mask(value: str, keep: int) -> str:
    return (value[:keep] if len(value) > keep + 8 else "") + REDACTED


def redact(line: str) -> str:
    """``line`` with every secret any rule recognises masked, cut to SNIPPET_MAX characters."""
    low = line.lower()
    found: list[tuple[bool, int, int, int]] = []  # (generic, start, end, kept prefix)
    for rule in SECRET_RULES:
        if any(h in low for h in rule.hints):
            found += [(rule.id in _GENERIC, s, e, rule.keep) for _m, s, e in _spans(rule, line, low)]
    spans: list[tuple[int, int, int]] = []
    for _generic, s, e, keep in sorted(found):  # a specific rule's span wins over a generic one on the same value
        if all(e <= s2 or e2 <= s for s2, e2, _k in spans):
            spans.append((s, e, keep))
    for s, e, keep in sorted(spans, reverse=True):
        line = line[:s] + _mask(line[s:e], keep) + line[e:]
    # A secret value spread over lines (a PEM body) still shows on its own line: mask long base64 runs.
    line = _LONG_RUN.sub(_mask_random, line)
    line = line.strip()
    return line if len(line) <= SNIPPET_MAX else line[: SNIPPET_MAX - 3] + "..."


_IGNORECASE: dict[str, re.Pattern[str]] = {}


def _spans(rule: Rule, text: str, low: str) -> Iterator[tuple[int, int, int]]:
    """(match start, value start, value end) of each match of ``rule`` in ``text``."""
    assert rule.pattern is not None
    if not rule.fold:
        source, rx = text, rule.pattern
    elif len(low) == len(text):  # lower-casing kept every offset
        source, rx = low, rule.pattern
    else:  # a character that lower-cases to two: offsets moved, search the original without folding
        rx = _IGNORECASE.get(rule.id) or _IGNORECASE.setdefault(rule.id, re.compile(rule.pattern.pattern, re.I))
        source = text
    for m in rx.finditer(source):
        yield (m.start(), *m.span("value"))


_LONG_RUN = re.compile(r"[A-Za-z0-9+/=_\-]{32,}")


def _mask_random(m: re.Match[str]) -> str:
    s = m.group(0)
    return _mask(s, 0) if any(c.isdigit() for c in s) and entropy(s) >= 3.5 else s


# ---- scanning -----------------------------------------------------------------------------------


class _Lines:
    """Line numbers and line text by offset, computed once per file and only when something matched."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts: list[int] | None = None
        self.lines: list[str] | None = None

    def line_of(self, pos: int) -> tuple[int, int]:
        if self.starts is None:
            self.starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        i = bisect.bisect_right(self.starts, pos)
        return i, pos - self.starts[i - 1] + 1

    def text_of(self, lineno: int) -> str:
        if self.lines is None:
            self.lines = self.text.split("\n")
        return self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""


def _suppressed(line: str) -> bool:
    low = line.lower()
    return "nosec" in low or "outlast: ignore" in low or "outlast:ignore" in low


def scan_text(rel: str, text: str, language: str, selected: frozenset[str]) -> list[dict]:
    """Findings in one file's text: rule, severity, line, column, message, redacted snippet."""
    low = text.lower()
    lines = _Lines(text)
    found: list[tuple[str, int, int, str]] = []  # (rule id, line, column, message)
    taken: list[tuple[int, int]] = []  # spans of specific secret values, so generic rules do not repeat them
    for rule in SECRET_RULES:
        if rule.id not in selected or not any(h in low for h in rule.hints):
            continue
        for start, vs, ve in _spans(rule, text, low):
            value = text[vs:ve]
            if rule.check is not None and not rule.check(value):
                continue
            if rule.id in _GENERIC:
                if any(s < ve and vs < e for s, e in taken):
                    continue
            else:
                taken.append((vs, ve))
            line, col = lines.line_of(start)
            found.append((rule.id, line, col, f"{rule.title} ({len(value)} characters, redacted)"))
    for rule in CODE_REGEX_RULES:
        if rule.id not in selected or language not in rule.languages or not any(h in low for h in rule.hints):
            continue
        assert rule.pattern is not None
        for m in rule.pattern.finditer(text):
            line, col = lines.line_of(m.start())
            found.append((rule.id, line, col, rule.title))
    if language == "python" and not selected.isdisjoint(CATEGORIES["python"]) and _py_triggered(low):
        found += [f for f in python_findings(text) if f[0] in selected]
    out: list[dict] = []
    seen: set[tuple[str, int]] = set()
    for rule_id, line, col, msg in sorted(found, key=lambda f: (f[1], f[2], f[0])):
        src = lines.text_of(line)
        if (rule_id, line) in seen or _suppressed(src):
            continue
        seen.add((rule_id, line))
        r = RULES[rule_id]
        out.append(
            {
                "file": rel,
                "line": line,
                "column": col,
                "rule": rule_id,
                "category": r.category,
                "severity": r.severity,
                "message": msg,
                "snippet": redact(src),
            }
        )
    return out


# ---- Python through ast ---------------------------------------------------------------------------

_PICKLE = {
    f"{m}.{f}" for m in ("pickle", "cPickle", "_pickle", "dill", "cloudpickle") for f in ("load", "loads", "Unpickler")
} | {"shelve.open", "marshal.load", "marshal.loads", "jsonpickle.decode", "joblib.load", "pandas.read_pickle"}
_SHELL_FUNCS = {
    "os.system",
    "os.popen",
    "subprocess.getoutput",
    "subprocess.getstatusoutput",
    "asyncio.create_subprocess_shell",
    "commands.getoutput",
}
_SAFE_YAML = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader", "FullLoader"}
_PASSWORDISH = re.compile(r"pass(?:word|wd|phrase)?|pwd", re.I)


class _Py:
    """Risky calls in one module: one flat pass over its nodes, imports resolved to qualified names."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.nodes = list(ast.walk(tree))
        self.aliases: dict[str, str] = {}
        self.found: list[tuple[str, int, int, str]] = []
        self._parents: dict[ast.AST, ast.AST] | None = None

    def add(self, rule: str, node: ast.AST, msg: str) -> None:
        self.found.append((rule, node.lineno, node.col_offset + 1, msg))  # type: ignore[attr-defined]

    def qualname(self, node: ast.AST) -> str | None:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(self.aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    def run(self) -> list[tuple[str, int, int, str]]:
        for node in self.nodes:
            if isinstance(node, ast.Import):
                self.aliases.update({a.asname: a.name for a in node.names if a.asname})
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                self.aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        for node in self.nodes:
            if isinstance(node, ast.Call):
                self.call(node)
            elif isinstance(node, ast.Attribute):
                q = self.qualname(node)
                if q in ("ssl.CERT_NONE", "ssl._create_unverified_context"):
                    self.add("py-tls-disabled", node, f"{q} accepts any certificate")
            elif (
                isinstance(node, ast.Assign)
                and _is_const(node.value, False)
                and any(isinstance(t, ast.Attribute) and t.attr == "check_hostname" for t in node.targets)
            ):
                self.add("py-tls-disabled", node, "check_hostname set to False")
        return self.found

    def call(self, node: ast.Call) -> None:
        q = self.qualname(node.func) or ""
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        first = node.args[0] if node.args else None
        if q in ("eval", "exec", "builtins.eval", "builtins.exec") and first is not None and not _literal(first):
            self.add("py-eval-exec", node, f"{q}() of a non-literal")
        if "shell" in kw and not _is_const(kw["shell"], False) and not _is_const(kw["shell"], None):
            self.add("py-shell", node, f"{q or 'call'}(..., shell=True)")
        elif q in _SHELL_FUNCS:
            self.add("py-shell", node, f"{q}() runs a shell")
        if q in _PICKLE or (q == "torch.load" and not _is_const(kw.get("weights_only"), True)):
            self.add("py-pickle-load", node, f"{q}() can run code from its input")
        if q in ("yaml.unsafe_load", "yaml.unsafe_load_all"):
            self.add("py-yaml-load", node, f"{q}()")
        elif q in ("yaml.load", "yaml.load_all"):
            loader = kw.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
            name = (self.qualname(loader) or "").rsplit(".", 1)[-1] if loader is not None else ""
            if name not in _SAFE_YAML:
                self.add("py-yaml-load", node, f"{q}() with {'Loader=' + name if name else 'no Loader'}")
        if _is_const(kw.get("verify"), False):
            self.add("py-tls-disabled", node, f"{q or 'call'}(..., verify=False)")
        if self.weak_hash(q, node, kw, first):
            self.add("py-weak-password-hash", node, f"{q}() of a password")

    def weak_hash(self, q: str, node: ast.Call, kw: dict[str | None, ast.expr], first: ast.expr | None) -> bool:
        """MD5 or SHA-1 of something named like a password, or inside a function or assignment so named."""
        if q in ("hashlib.md5", "hashlib.sha1"):
            args = node.args
        elif q == "hashlib.new" and isinstance(first, ast.Constant) and str(first.value).lower() in ("md5", "sha1"):
            args = node.args[1:]
        else:
            return False
        if _is_const(kw.get("usedforsecurity"), False):
            return False
        names = [_name(n) for a in args for n in ast.walk(a)]
        if self._parents is None:
            self._parents = {c: p for p in self.nodes for c in ast.iter_child_nodes(p)}
        up: ast.AST | None = node
        while up is not None:
            if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.append(up.name)
            elif isinstance(up, (ast.Assign, ast.AnnAssign)):
                targets = up.targets if isinstance(up, ast.Assign) else [up.target]
                names += [_name(n) for t in targets for n in ast.walk(t)]
            up = self._parents.get(up)
        return any(x and _PASSWORDISH.search(x) for x in names)


def _name(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _literal(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) or (
        isinstance(node, ast.JoinedStr) and all(isinstance(v, ast.Constant) for v in node.values)
    )


def python_findings(text: str) -> list[tuple[str, int, int, str]]:
    """(rule, line, column, message) of risky calls in Python source; nothing for source that does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    return _Py(tree).run()
