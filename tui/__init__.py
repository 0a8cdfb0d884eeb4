"""Outlast's Textual dashboard."""
