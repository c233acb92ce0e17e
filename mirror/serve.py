"""Datasette integration (see issue 5)."""
