"""Outlast's own rules of security_scan, where bandit and detect-secrets (``_scan_libs``) have no
coverage: risky JavaScript/TypeScript and Go code, and Google Cloud keys. The secret patterns of the
providers detect-secrets covers stay here for one job: redacting snippets.

``scan_text`` is pure: text in (with the libraries' findings), findings out, each with a redacted
snippet. A secret never leaves this module: every snippet goes through ``redact``, which replaces
whatever any secret rule (or detect-secrets) matched on the line, whichever rules were selected.
A line with ``nosec`` or ``outlast: ignore`` reports nothing.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ._scan_libs import BANDIT_SKIP, LibFinding, LibRule, bandit_rules, secret_rules

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
    files: Callable[[str], bool] | None = field(default=None, compare=False)
    """The files (by path) a reported match counts in (None: any); redacting masks it in any file."""
    fold: bool = False
    """The pattern is written in lower case and runs on the lower-cased text: case-insensitive, and many
    times faster than ``re.IGNORECASE`` on Python's regex engine."""
    binds: re.Pattern[str] | None = None
    """Code rules: where a file binds the module the rule is about to a name of its own (group ``name``:
    ``const cp = require('child_process')``); ``NAME.`` then ``calls`` matches as the pattern does."""
    calls: str = ""


def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values()) if n else 0.0


_PLACEHOLDER = re.compile(
    r"^(?:\W*|x+|\*+|\.+|[x*]+(?:[-_][x*]+)+|changeit|change[-_]?me|replace[-_]?me|fill[-_]?me(?:[-_]?in)?|todo|tbd"
    r"|fixme|dummy|placeholder|none|null|nil|true|false|undefined|example|redacted"
    r"|your[-_].*|.*[-_]here|.*\.\.\.)$",  # your-api-key-here, put_token_here, sk_test_... (an .env.example's)
    re.I,
)
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
        # To its closing quote: a quote of another kind or an escaped one is in the value ('a\'b"c'), whose rest
        # was left in clear when the value ended at the first quote of any kind.
        pattern=_named(r"password|passwd|passphrase|pwd", r"(?:\\.|(?!(?P=q))[^\\\n]){1,200}"),
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


def env_file(rel: str) -> bool:
    """A file of ``NAME=value`` lines read into a process's environment or an image: ``.env``, ``.env.*``,
    ``*.env``, a Dockerfile (``ENV``, ``ARG``), a Compose file's ``environment:`` list."""
    name = rel.rsplit("/", 1)[-1]
    low = name.lower()
    return (
        low == ".env"
        or low.startswith(".env.")
        or low.endswith(".env")
        or low.startswith("dockerfile")
        or low.endswith(".dockerfile")
        or (low.startswith(("docker-compose", "compose.")) and low.endswith((".yml", ".yaml")))
    )


def _env_value(v: str) -> bool:
    """A value set in an env file that could be a secret: ``_password_value``, and not a path (``API_KEY_FILE=
    /run/secrets/key``) or an address without credentials in it (``TOKEN_URL=https://host/token``)."""
    if v.startswith(("/", "./", "../", "~/", "file:")):
        return False
    if "://" in v and "@" not in v.split("://", 1)[1]:
        return False
    return _password_value(v)


SECRET_RULES += (
    Rule(
        "env-file-secret",
        "secrets",
        "high",
        "Secret set in an environment file or a Dockerfile",
        "A secret is a value in a committed env file or an image's ENV/ARG (which every layer keeps): pass it at"
        " run time from a secret store (docker secrets, the CI's secret variables) and keep the file out of git.",
        pattern=re.compile(
            r"^[ \t]*(?:-[ \t]+)?(?:export[ \t]+|env[ \t]+|arg[ \t]+)?[\w.\-]*?"
            r"(?:password|passwd|passphrase|pwd|secret|token|api_?key|apikey|access_?key|private_?key|credentials?)"
            r"[\w.\-]*[ \t]*(?:=|[ \t])[ \t]*(?P<q>[\"']?)(?P<value>[^\s\"']{4,200})(?P=q)(?:[ \t]+#.*)?[ \t]*\r?$",
            re.M,  # \r?: an env file saved on Windows (CRLF) had none of its secrets found
        ),
        hints=("pass", "pwd", "secret", "token", "key", "credential"),
        check=_env_value,
        fold=True,
        files=env_file,
    ),
)

# Rules whose match only says "a secret-like name has a literal": a specific rule on the same value wins.
_GENERIC = frozenset({"hardcoded-password", "high-entropy-secret"})

_JS = frozenset({"javascript", "typescript", "tsx"})
_DEFINES = re.compile(r"\b(?:function|async)\s*\*?\s*$")
_NAME_CALLED = re.compile(r"[\w$]+\s*\(")


def _defined_here(text: str, start: int) -> bool:
    """Whether the name matched at ``start`` (``exec(``) is a function or method being defined, not called:
    ``async exec (args) {`` (npm's every command class), ``function exec(cmd) {``: its parameters' ``)`` is
    followed by ``{``, or ``async``/``function`` comes before it."""
    m = _NAME_CALLED.match(text, start)
    if m is None:
        return False
    if _DEFINES.search(text, max(0, start - 24), start):
        return True
    depth = 0
    for i in range(m.end() - 1, min(len(text), m.end() + 4000)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return text[i + 1 : i + 200].lstrip().startswith("{")
    return False


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
        # const cp = require('child_process'), import * as cp from 'node:child_process', import cp = require(...)
        binds=re.compile(
            r"(?:\b(?:const|let|var)\s+|\bimport\s+(?:\*\s*as\s+)?)(?P<name>[A-Za-z_$][\w$]*)\s*"
            r"(?:=\s*require\s*\(\s*|from\s*)['\"`](?:node:)?child_process['\"`]"
        ),
        calls=r"exec(?:Sync)?\s*\(",
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

OWN_SECRET_RULES = frozenset({"gcp-api-key", "gcp-service-account-key", "env-file-secret"})
"""The secret rules reported: detect-secrets has no plugin for these. The others are kept to redact."""

RULES: dict[str, Rule] = {
    r.id: r for r in (*SECRET_RULES, *CODE_REGEX_RULES) if r.category == "code" or r.id in OWN_SECRET_RULES
}
"""Outlast's own reported rules: only where bandit and detect-secrets have no coverage."""


def all_rules() -> dict[str, Rule | LibRule]:
    """Every rule a scan can report: Outlast's own, bandit's tests, detect-secrets' plugins."""
    return {**RULES, **bandit_rules(), **secret_rules()}


def categories() -> dict[str, frozenset[str]]:
    bandit = frozenset(bandit_rules())
    secrets = frozenset(secret_rules())
    own_code = frozenset(r.id for r in CODE_REGEX_RULES)
    return {
        "secrets": secrets | OWN_SECRET_RULES,
        "code": bandit | own_code,
        "python": bandit,
        "bandit": bandit,
        "detect-secrets": secrets,
    }


def select_rules(names: list[str]) -> frozenset[str]:
    """Rule ids from ids and category names (``all`` or nothing: every rule but bandit's B101, which
    is selected by its id); ValueError names an unknown one."""
    rules = all_rules()
    if not names or "all" in names:
        return frozenset(rules) - BANDIT_SKIP
    groups = categories()
    out: set[str] = set()
    for n in names:
        if n in groups:
            out.update(groups[n] - BANDIT_SKIP)
        elif n in rules:
            out.add(n)
        else:
            raise ValueError(f"unknown rule {n!r} (known: all, {', '.join(groups)}, or a rule id: outlast rules)")
    return frozenset(out)


# ---- redaction ----------------------------------------------------------------------------------


def _mask(value: str, keep: int) -> str:
    return (value[:keep] if len(value) > keep + 8 else "") + REDACTED


def redact(line: str, values: Sequence[str] = ()) -> str:
    """``line`` with every secret any rule recognises masked, and each token that contains one of ``values`` (what
    a detector matched), cut to SNIPPET_MAX characters.

    All are found in the line as it is, and spans that overlap are masked as one: a value masked first made the
    rules miss a secret around it ('a\\'b"c': its rest was left in clear), and of two overlapping spans one was
    dropped, leaving the part of the other outside it in clear."""
    low = line.lower()
    found: list[tuple[int, bool, int, int]] = []  # (start, generic, -end, kept prefix)
    for rule in SECRET_RULES:
        if any(h in low for h in rule.hints):
            found += [(s, rule.id in _GENERIC, -e, rule.keep) for _m, s, e in _spans(rule, line, low)]
    found += [(s, False, -e, 0) for s, e in _token_spans(line, values)]
    spans: list[tuple[int, int, int]] = []
    for s, _generic, neg_end, keep in sorted(found):  # at one start, a specific rule's kept prefix wins
        if spans and s < spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], -neg_end), spans[-1][2])
        else:
            spans.append((s, -neg_end, keep))
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
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-.~:")
GENERIC_SECRET_PLUGINS = frozenset({"Base64HighEntropyString", "HexHighEntropyString", "KeywordDetector"})


def _token_spans(line: str, values: Sequence[str]) -> Iterator[tuple[int, int]]:
    """(start, end) of each token of ``line`` that contains one of ``values``, whole: a detector may match
    only a token's prefix ("glpat"), and the rest of the token is the secret."""
    for value in values:
        start = line.find(value) if value else -1
        while start >= 0:
            s, e = start, start + len(value)
            while s > 0 and line[s - 1] in _TOKEN_CHARS:
                s -= 1
            while e < len(line) and line[e] in _TOKEN_CHARS:
                e += 1
            yield s, e
            start = line.find(value, e)


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

    # Lines end where bandit (Python's tokenizer) and detect-secrets (universal newlines) end them: at CR too. By
    # LF alone, a file with CR-only line ends was one line: each finding's snippet was the whole file or empty.
    _END = re.compile(r"\r\n?|\n")

    def line_of(self, pos: int) -> tuple[int, int]:
        if self.starts is None:
            self.starts = [0] + [m.end() for m in self._END.finditer(self.text)]
        i = bisect.bisect_right(self.starts, pos)
        return i, pos - self.starts[i - 1] + 1

    def text_of(self, lineno: int) -> str:
        if self.lines is None:
            self.lines = self._END.split(self.text)
        return self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""


def _same_secret(value: str, specific: Sequence[str]) -> bool:
    """Whether a generic detector's ``value`` is (part of) one a specific detector matched, or holds one."""
    return any(value in v or v in value for v in specific)


_SUPPRESS = re.compile(r"\bnosec\b|outlast: ?ignore", re.IGNORECASE)
"""A word: "nosec" inside another ("postgres://nosecure:...", "NOSECRETS") silenced every finding of its line,
a GitHub token beside it included."""


def _suppressed(line: str) -> bool:
    return _SUPPRESS.search(line) is not None


def scan_text(
    rel: str, text: str, language: str, selected: frozenset[str], libraries: Sequence[LibFinding] = ()
) -> list[dict]:
    """Findings in one file's text (Outlast's own rules, and the libraries' findings passed in): rule,
    severity, line, column, message, redacted snippet."""
    low = text.lower()
    lines = _Lines(text)
    found: list[tuple[str, int, int, str]] = []  # (rule id, line, column, message)
    severity = {f.rule: f.severity for f in libraries}
    values: dict[int, list[str]] = {}  # secrets detect-secrets matched, by line: masked in the snippet
    specific: dict[int, list[str]] = {}  # values of the providers' detectors, by line
    for f in libraries:
        if f.value and f.rule not in GENERIC_SECRET_PLUGINS:
            specific.setdefault(f.line, []).append(f.value)
    generic: list[LibFinding] = []  # judged once Outlast's own specific rules have said what they matched
    for f in libraries:
        if f.value:  # masked in the snippet whether or not this finding is reported
            values.setdefault(f.line, []).append(f.value)
        if f.rule == "KeywordDetector" and f.value is not None and not _password_value(f.value):
            continue  # prose or a name, not a password: password_hint = "enter your password", FIELD = "password"
        if f.value and f.rule in GENERIC_SECRET_PLUGINS:
            generic.append(f)
        else:
            found.append((f.rule, f.line, f.column, f.message))
    taken: list[tuple[int, int]] = []  # spans of specific secret values, so generic rules do not repeat them
    for rule in SECRET_RULES:
        if rule.id not in selected or rule.id not in RULES or not any(h in low for h in rule.hints):
            continue
        if rule.files is not None and not rule.files(rel):
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
            if rule.id in OWN_SECRET_RULES:
                specific.setdefault(line, []).append(value)
    for rule in CODE_REGEX_RULES:
        if rule.id not in selected or language not in rule.languages or not any(h in low for h in rule.hints):
            continue
        assert rule.pattern is not None
        starts = [m.start() for m in rule.pattern.finditer(text)]
        names = sorted({m["name"] for m in rule.binds.finditer(text)}) if rule.binds is not None else []
        if names:  # cp.exec(cmd): the module under a name of the file's choosing
            receiver = "|".join(map(re.escape, names))
            starts += [m.start() for m in re.finditer(rf"(?<![\w$.])(?:{receiver})\s*\.\s*{rule.calls}", text)]
        for start in starts:
            if rule.languages <= _JS and _defined_here(text, start):
                continue
            line, col = lines.line_of(start)
            found.append((rule.id, line, col, rule.title))
    # "High entropy" or "keyword" says less than a provider's detector on the same value; another secret on
    # that line is a finding of its own (dropped, it was also left unmasked in the snippet).
    found += [
        (f.rule, f.line, f.column, f.message)
        for f in generic
        if not _same_secret(f.value or "", specific.get(f.line, ()))
    ]
    out: list[dict] = []
    seen: set[tuple[str, int]] = set()
    for rule_id, line, col, msg in sorted(found, key=lambda f: (f[1], f[2], f[0])):
        src = lines.text_of(line)
        if (rule_id, line) in seen or _suppressed(src):
            continue
        seen.add((rule_id, line))
        own = RULES.get(rule_id)
        out.append(
            {
                "file": rel,
                "line": line,
                "column": col,
                "rule": rule_id,
                "category": own.category if own else ("code" if rule_id in bandit_rules() else "secrets"),
                "severity": own.severity if own else severity[rule_id],
                "message": msg,
                "snippet": redact(src, values.get(line, ())),
            }
        )
    return out
