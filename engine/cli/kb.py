"""``outlast kb search|similar``: query the knowledge base that kb_population made (``--json`` on each)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import InvalidInput
from ..exitcodes import ExitCode
from . import format as fmt
from .common import COUNT, App, json_option, pass_app

if TYPE_CHECKING:
    import sqlite3

KB_OPTION = click.option(
    "--kb",
    "kb_file",
    type=click.Path(dir_okay=False),
    help="Knowledge base file [default: kb.sqlite in the state dir's outputs, where kb_population puts it].",
)
LIMIT_OPTION = click.option("--limit", "-n", type=COUNT, default=10, show_default=True, help="Most results.")


@click.group("kb")
def kb() -> None:
    """Query the local knowledge base (made by `outlast run kb_population -p source=DIR`).

    \b
    Examples:
      outlast kb search checkpoint resume          every word must appear; best first
      outlast kb search 'resum* NOT redis' --fts   FTS5 query syntax
      outlast kb similar "how do I resume work"   nearest chunks by vector (after vector_indexing)
      outlast kb search timeout --kb docs.sqlite --limit 3 --json
    """


def _kb_file(app: App, kb_file: str | None) -> Path:
    from ..operations.knowledge import default_kb

    if kb_file:
        return Path(kb_file).expanduser()
    s = app.settings
    local = s.store and not s.store.startswith(("redis://", "rediss://", "unix://"))
    return default_kb(s.store if local and s.store else s.state_dir)


def _query(app: App, kb_file: str | None, run: Callable[[sqlite3.Connection], list[dict[str, Any]]]) -> int:
    from ..operations.knowledge import KbError, open_kb  # not at import: `outlast --help` stays quick

    path = _kb_file(app, kb_file)
    writable = os.access(path, os.W_OK) and os.access(path.resolve().parent, os.W_OK | os.X_OK)
    try:
        con = open_kb(path, create=False, read_only=not writable)
        try:
            hits = run(con)
        finally:
            con.close()
    except KbError as e:
        raise InvalidInput(str(e)) from None
    if app.json:
        fmt.echo(fmt.dumps(hits))
        return ExitCode.OK
    if not hits:
        if not app.quiet:
            fmt.echo("no matches", err=True)
        return ExitCode.OK
    for i, h in enumerate(hits, 1):
        where = h["path"] + (f" > {h['heading']}" if h.get("heading") else "")
        dups = f", {h['duplicates']} duplicate(s)" if h.get("duplicates") else ""
        fmt.echo(fmt.printable(f"{i:>2}. {where}  (score {h['score']:.3f}{dups})"))
        fmt.echo(fmt.printable(f"    {' '.join(h['snippet'].split())}"))
    return ExitCode.OK


@kb.command("search")
@click.argument("query", nargs=-1, required=True)
@KB_OPTION
@LIMIT_OPTION
@click.option("--fts", "raw", is_flag=True, help="QUERY is FTS5 syntax (phrases, OR, NOT, prefix*).")
@json_option
@pass_app
def search_cmd(app: App, query: tuple[str, ...], kb_file: str | None, limit: int, raw: bool) -> int:
    """Full-text search of the knowledge base: the best chunks, with where they are and a snippet."""
    from ..operations.knowledge import search

    text = " ".join(query)
    return _query(app, kb_file, lambda con: search(con, text, limit, raw))


@kb.command("similar")
@click.argument("query", nargs=-1, required=True)
@KB_OPTION
@LIMIT_OPTION
@json_option
@pass_app
def similar_cmd(app: App, query: tuple[str, ...], kb_file: str | None, limit: int) -> int:
    """The chunks nearest to QUERY by cosine similarity of TF-IDF vectors (made by vector_indexing)."""
    from ..operations.knowledge import similar

    text = " ".join(query)
    return _query(app, kb_file, lambda con: similar(con, text, limit))


COMMANDS = (kb,)
