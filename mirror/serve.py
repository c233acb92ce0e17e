"""Datasette integration: `yts-mirror serve`, metadata and a small plugin (issue 5, in progress)."""

import click


@click.command()
def serve_command() -> None:
    """Browse the mirror in Datasette (not written yet)."""
    raise click.ClickException("serve is not implemented yet")
