"""Outlast's dashboard: a Textual app that embeds the engine and talks to it only through its public API."""
