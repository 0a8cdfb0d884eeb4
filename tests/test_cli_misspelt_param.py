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
