"""Timeout profiles: how long each operation type may take, how often it checkpoints, when it stalls.

effective timeout = min(max_timeout, base_timeout + per_item_timeout * total_items)
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import DamagedRecord
from .humanize import abridged
from .limits import MAX_KEY_CHARS
from .models import MAX_SECONDS, InvalidInput, NumbersNotBools, Operation, OperationSpec


class RetryPolicy(NumbersNotBools):
    """Automatic retries of an attempt that raised a transient error; each retry resumes from a checkpoint."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_base: float = Field(default=2.0, ge=0, le=MAX_SECONDS)
    backoff_max: float = Field(default=300.0, ge=0, le=MAX_SECONDS)
    jitter: float = Field(default=0.25, ge=0, le=1)
    transient: list[str] = Field(
        default_factory=lambda: ["ConnectionError", "TimeoutError", "BrokenPipeError", "TransientError"]
    )
    """Exception class names (or base class names) that are worth another attempt."""

    def delay(self, retry_number: int, rnd: float) -> float:
        """Backoff before retry ``retry_number`` (1-based); ``rnd`` in [0, 1) supplies the jitter."""
        raw = min(self.backoff_max, self.backoff_base * (2 ** (retry_number - 1)))
        return raw * (1 - self.jitter + 2 * self.jitter * rnd)

    def is_transient(self, exc: BaseException) -> bool:
        names = {c.__name__ for c in type(exc).__mro__}
        return bool(names & set(self.transient))


class TimeoutProfile(NumbersNotBools):
    """Per-type limits. Seconds everywhere."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base_timeout: float = Field(gt=0, le=MAX_SECONDS)
    per_item_timeout: float = Field(ge=0, le=MAX_SECONDS)
    max_timeout: float = Field(gt=0, le=MAX_SECONDS)
    checkpoint_interval: float = Field(gt=0, le=MAX_SECONDS)
    checkpoint_every: int | None = Field(default=None, ge=1, le=10**12)
    """Also checkpoint every this many items done (the seed's "every 100 files"): whichever comes first."""
    progress_report_interval: float = Field(gt=0, le=MAX_SECONDS)
    failure_threshold: int = Field(ge=0, le=10**12)
    """Item failures tolerated; one more fails the operation."""
    stall_timeout: float = Field(gt=0, le=MAX_SECONDS)
    """No progress for this long: timed out as stalled."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        return with_aliases(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _consistent(self) -> TimeoutProfile:
        if self.max_timeout < self.base_timeout:
            raise ValueError(f"max_timeout ({self.max_timeout}) is below base_timeout ({self.base_timeout})")
        return self

    def effective_timeout(self, total_items: int | None) -> float:
        return min(self.max_timeout, self.base_timeout + self.per_item_timeout * (total_items or 0))

    def basis(self, total_items: int | None) -> str:
        """The timeout formula with this profile's numbers, for humans."""
        n = total_items or 0
        raw = self.base_timeout + self.per_item_timeout * n
        s = f"min(max {self.max_timeout:g}s, base {self.base_timeout:g}s + {self.per_item_timeout:g}s x {n} items)"
        return s + (" = max" if raw > self.max_timeout else f" = {raw:g}s")

    def merged(self, overrides: dict[str, Any] | None) -> TimeoutProfile:
        """This profile with ``overrides`` applied, validated (InvalidInput names the key)."""
        if not overrides:
            return self
        data = self.model_dump()
        for key, value in with_aliases(overrides).items():
            if key == "retry" and isinstance(value, dict):
                data["retry"] = {**data["retry"], **value}
            elif key.startswith("retry.") or key.startswith("retry_"):
                if isinstance(data["retry"], dict):  # else a bad `retry` given too: validation names it
                    data["retry"][key[6:]] = value
            else:
                data[key] = value
        return parse_profile(data, where="profile")


ALIASES = {"per_file_timeout": "per_item_timeout", "per_test_timeout": "per_item_timeout"}
"""The seed's names of profile keys, accepted as Outlast's."""


def with_aliases(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the seed's key names (``per_file_timeout``, ``per_test_timeout``) as Outlast's;
    InvalidInput when two of them name the same key."""
    if not any(k in ALIASES for k in data):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = ALIASES.get(key, key)
        if name in out:
            given = [k for k in data if ALIASES.get(k, k) == name]
            raise InvalidInput(f"{' and '.join(given)} are the same key ({name}): give one")
        out[name] = value
    return out


def resume_fields(op: Operation, overrides: dict[str, Any]) -> dict[str, Any]:
    """The record fields a resume with ``--profile KEY=VALUE`` changes: the profile in force (the old one
    with ``overrides`` applied, validated: InvalidInput names the key), the overrides recorded, and the
    timeout they give. Empty for no overrides."""
    if not overrides:
        return {}
    try:
        OperationSpec(type=op.type, profile=overrides)  # the same limits as at submit (keys, depth)
    except ValidationError as e:
        raise InvalidInput(one_line(e)) from None
    profile = stored_profile(op).merged(overrides)
    total = op.progress.total if op.progress.total is not None else op.total_items
    in_force, fixed = overridden(op.profile_overrides, overrides, op.timeout)
    return {
        "profile": profile.model_dump(mode="json"),
        "profile_overrides": in_force,
        "timeout": fixed,
        "effective_timeout": fixed or profile.effective_timeout(total),
        "timeout_basis": "fixed by --timeout" if fixed else profile.basis(total),
    }


TIMEOUT_KEYS = frozenset({"base_timeout", "per_item_timeout", "max_timeout"})
"""The profile keys the deadline is computed from (a fixed ``--timeout`` stands for all three)."""


def overridden(
    before: dict[str, Any], overrides: dict[str, Any], timeout: float | None
) -> tuple[dict[str, Any], float | None]:
    """The profile overrides in force once ``overrides`` are given over ``before`` (each key by its own name, an
    alias its key's), and the fixed timeout that still holds: a timeout fixed at submit (``--timeout``) gives way
    when one of the timeout keys is given (a resume's or a rerun's ``--profile max_timeout=...``). Kept, it went
    on deciding every deadline, and work that hit it timed out again where it did, saying nothing."""
    given = with_aliases(overrides)
    return {**with_aliases(before), **given}, None if TIMEOUT_KEYS & given.keys() else timeout


def stored_profile(op: Operation) -> TimeoutProfile:
    """The timeout profile stored with ``op`` (validated when it was submitted); StoreError in one line
    when it no longer validates: the store is damaged (a changed byte in a key was seen), not the
    operation, so it must not be marked failed for it."""
    try:
        return TimeoutProfile.model_validate(op.profile)
    except ValidationError as e:
        raise DamagedRecord(f"operation {op.id}: its stored timeout profile is damaged ({one_line(e)})") from None


def parse_profile(data: dict[str, Any], where: str) -> TimeoutProfile:
    try:
        return TimeoutProfile.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(f"{where}: {one_line(e, TimeoutProfile)}") from None


def one_line(e: ValidationError, model: type[BaseModel] | None = None) -> str:
    """A pydantic error as one line naming the field: ``priority: Input should be 'high', ...``. ``model``:
    the model validated, whose fields' bounds a number out of them is told (``error_message``)."""
    parts = []
    for err in e.errors()[:3]:
        # A name is what was sent: a 30 KB key (params may be 64 KB) made the whole line 30 KB.
        loc = ".".join(abridged(str(p), MAX_KEY_CHARS) for p in err["loc"])
        msg = error_message(err, model)
        parts.append(f"{loc}: {msg}" if loc else msg)  # a check of the whole model names its fields itself
    more = len(e.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


_BOUNDS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}
_NUMBER_ERRORS = {*_BOUNDS, "finite_number", "int_parsing_size"}  # the last: a count past 64 bits
_NOT_READ = {"int_parsing", "int_from_float", "float_parsing"}
"""Errors of a value not read as the field's type: ``-p items=1e309`` is a number, not finite."""


def error_message(err: Any, model: type[BaseModel] | None = None, finite_too: bool = True) -> str:
    """The message of one pydantic error, without its location.

    A number that is not finite (``nan``, ``inf``, ``1e309``, as JSON or as text) is said to be so, with the
    value as typed and the field's bounds: pydantic said "Input should be less than or equal to 3600" of
    ``-p seconds=nan`` (nan compares false to every bound, and the first one checked failed). With
    ``finite_too``, a finite number out of bounds is named the same way ("-1 is out of range"); the bounds
    are the field's in ``model`` (the one bound the error names when it is not known)."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    kind = err.get("type")
    if kind == "extra_forbidden" and model is not None and len(err.get("loc") or ()) == 1:
        # A misspelt name (-p itmes=5) said only "Extra inputs are not permitted": which are known, and
        # the nearest when one is near.
        import difflib  # here: not on every submit's start-up

        names = list(model.model_fields)
        near = difflib.get_close_matches(str(err["loc"][0]), names, n=1)
        return f"{msg} ({f'did you mean {near[0]}? ' if near else ''}known: {', '.join(names)})"
    number = _number(err.get("input")) if kind in _NUMBER_ERRORS or kind in _NOT_READ else None
    if number is None or (math.isfinite(number) and (not finite_too or kind in _NOT_READ)):
        return msg
    loc = err.get("loc") or ()
    name = str(loc[-1]) if loc else "value"
    bounds: dict[str, Any] = field_bounds(model, loc)
    bounds = bounds or {k: v for k, v in (err.get("ctx") or {}).items() if k in _BOUNDS.values()}
    if math.isfinite(number) and model is None:
        return f"{msg} (got {_typed(err['input'])})"
    if kind == "int_parsing_size" and not {"le", "lt"} & bounds.keys():
        bounds = {**bounds, "lt": "2**63"}  # past what a float becomes as a whole number
    # nan and infinities are no number; 1e309 or 400 digits are one, past what a float holds
    value = err["input"]
    literal = isinstance(value, float) or (isinstance(value, str) and any(w in value.lower() for w in ("nan", "inf")))
    what = "is not a finite number" if not math.isfinite(number) and literal else "is out of range"
    if not bounds:  # none known (a nested field's): "allowed: a finite number" of 1e999 read as a riddle
        return f"{_typed(value)} {what if literal else 'is too large'}"
    return f"{_typed(value)} {what} (allowed: {bounds_text(name, bounds)})"


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a number or text that reads as one (pydantic reads ``"nan"`` so)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value) if value.bit_length() <= 1000 else float("inf")
    if isinstance(value, float):
        return value
    if isinstance(value, str) and len(value) <= 10_000:  # float() of a longer one is slow, and no one types it
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _typed(value: Any) -> str:
    """A number as typed, at most 40 characters."""
    if isinstance(value, int) and value.bit_length() > 128:  # str() refuses past 4,300 digits
        return f"an integer of {value.bit_length()} bits"
    text = value.strip() if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def field_bounds(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> dict[str, float]:
    """The bounds of the field at ``loc`` in ``model`` (through nested models: ``retry.backoff_max``)."""
    field = None
    for part in loc:
        if field is not None:  # the field before: a nested model's, or the path ends here
            nested = field.annotation
            model = nested if isinstance(nested, type) and issubclass(nested, BaseModel) else None
        if model is None:
            return {}
        field = model.model_fields.get(str(part))
        if field is None:
            field = next((f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:  # a list's index, a dict's key
            return {}
    out: dict[str, float] = {}
    for m in field.metadata if field is not None else ():
        for key in _BOUNDS.values():
            if isinstance(getattr(m, key, None), int | float):
                out[key] = getattr(m, key)
    return out


def bounds_text(name: str, bounds: dict[str, Any]) -> str:
    def num(x: Any) -> str:
        if isinstance(x, str):
            return x
        return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else repr(float(x))

    low = next((f"{num(bounds[k])} {op} " for k, op in (("ge", "<="), ("gt", "<")) if k in bounds), "")
    high = next((f" {op} {num(bounds[k])}" for k, op in (("le", "<="), ("lt", "<")) if k in bounds), "")
    return f"{low}{name}{high}"


H = 3600.0
M = 60.0


def _p(
    base: float,
    per: float,
    mx: float,
    ckpt: float,
    rep: float,
    fail: int,
    stall: float | None = None,
    attempts: int = 3,
    every: int | None = None,
) -> TimeoutProfile:
    return TimeoutProfile(
        checkpoint_every=every,
        base_timeout=base,
        per_item_timeout=per,
        max_timeout=mx,
        checkpoint_interval=ckpt,
        progress_report_interval=rep,
        failure_threshold=fail,
        stall_timeout=stall if stall is not None else max(600.0, 2 * ckpt),
        retry=RetryPolicy(max_attempts=attempts),
    )


SEED_PROFILES: dict[str, TimeoutProfile] = {
    # The seed's own figures.
    "codebase_indexing": _p(1 * H, 10, 4 * H, 300, 30, 5, every=100),
    "comprehensive_test_suite": _p(40 * M, 120, 3 * H, 600, 60, 10, stall=30 * M, every=10),
    "security_scan": _p(45 * M, 5, 3 * H, 300, 30, 10, every=50),
    # Chosen in the same spirit: analysis is per-file, testing per-test, KB work per-document.
    "code_analysis": _p(30 * M, 5, 2 * H, 300, 30, 10),
    "dependency_analysis": _p(15 * M, 10, 1 * H, 120, 15, 5),
    "performance_profiling": _p(30 * M, 60, 2 * H, 300, 30, 3),
    "integration_testing": _p(30 * M, 120, 3 * H, 300, 30, 5, stall=30 * M),
    "performance_testing": _p(1 * H, 300, 4 * H, 600, 60, 3, stall=30 * M),
    "load_testing": _p(1 * H, 60, 6 * H, 300, 30, 3, stall=20 * M),
    "kb_population": _p(1 * H, 2, 8 * H, 300, 30, 50),
    "kb_optimization": _p(30 * M, 5, 4 * H, 300, 30, 10),
    "vector_indexing": _p(1 * H, 1, 8 * H, 300, 30, 100),
    "semantic_analysis": _p(30 * M, 10, 4 * H, 300, 30, 20),
    "backup_operation": _p(1 * H, 2, 12 * H, 120, 15, 10),
    "migration_operation": _p(1 * H, 30, 6 * H, 60, 15, 0, stall=30 * M, attempts=1),
    "cleanup_operation": _p(15 * M, 1, 2 * H, 120, 15, 50),
    "monitoring_collection": _p(5 * M, 1, 30 * M, 60, 10, 20),
    # Outlast's own types.
    "command": _p(1 * H, 0, 24 * H, 60, 5, 0, stall=1 * H, attempts=1),
    "demo": _p(10 * M, 1, 1 * H, 5, 1, 3, stall=120),
}

DEFAULT_PROFILE = _p(1 * H, 10, 6 * H, 300, 30, 10)
"""For types registered by plugins that the config does not describe."""


def profile_for(type_: str, config_profiles: dict[str, dict[str, Any]] | None = None) -> TimeoutProfile:
    """The profile of ``type_``: seed or default, then the config file's ``[profiles.TYPE]``."""
    base = SEED_PROFILES.get(type_, DEFAULT_PROFILE)
    overrides = (config_profiles or {}).get(type_)
    if not overrides:
        return base
    try:
        return base.merged(overrides)
    except InvalidInput as e:
        raise InvalidInput(f"[profiles.{type_}] {str(e).removeprefix('profile: ')}") from None
