"""A misspelt param or profile key is refused naming the ones known and the nearest: it said only
"itmes: Extra inputs are not permitted", and the user had to go and find what the type takes."""

from __future__ import annotations

from engine.exitcodes import ExitCode

from .fixtures_cli import Cli


def test_a_misspelt_param_or_profile_key_is_refused_naming_the_nearest_and_the_known_ones(cli: Cli) -> None:
    for args, line in (
        (
            ["run", "demo", "-p", "itmes=5"],
            "outlast: demo params: itmes: Extra inputs are not permitted (did you mean items? known: items, seconds, "
            "fail_every, crash_at, hang_at)",
        ),
        (
            ["submit", "demo", "--profile", "bse_timeout=5"],
            "outlast: profile: bse_timeout: Extra inputs are not permitted (did you mean base_timeout? known: "
            "base_timeout, per_item_timeout, max_timeout, checkpoint_interval, checkpoint_every, "
            "progress_report_interval, failure_threshold, stall_timeout, retry)",
        ),
        (
            ["submit", "demo", "-p", "zzz=1"],
            "outlast: demo params: zzz: Extra inputs are not permitted (known: items, seconds, fail_every, crash_at, "
            "hang_at)",
        ),
    ):
        r = cli.here(*args)
        assert (r.returncode, r.stdout, r.stderr.strip()) == (ExitCode.USAGE, "", line), args
    assert cli.here("ls").stderr.strip() == "no operations"


def test_every_built_in_types_description_reads_as_one_phrase_of_the_types_table(cli: Cli) -> None:
    """``demo``'s was its docstring, a capitalised sentence with a full stop among lower-case phrases
    (``outlast types``, the launch form)."""
    import json

    for t in json.loads(cli.here("types", "--json").stdout):
        if t["builtin"]:
            text = t["description"]
            first = text.split()[0]
            capitalised = first[0].isupper() and first[1:].islower()  # "Process", not "TF-IDF"
            assert not capitalised and not text.endswith("."), t["type"]


def test_an_unknown_param_name_of_30_000_characters_is_named_cut_in_a_line_that_fits(cli: Cli) -> None:
    """Params may be 64 KB: a name of 30,000 characters was said whole, a line burying the terminal."""
    name = "k" * 30_000
    r = cli.here("submit", "demo", "-p", f"{name}=1")
    said = r.stderr.strip()
    assert r.returncode == ExitCode.USAGE and said.count("\n") == 0, said[:300]
    assert said.startswith(f"outlast: demo params: {'k' * 64}… (30,000 characters): Extra inputs"), said[:300]
    assert len(said) < 300, len(said)
