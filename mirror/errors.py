"""How an expected failure reads: one line, and its exit code; for the CLI and the scheduler's log alike."""

from __future__ import annotations

import sqlite3

from .client import YTSError
from .config import ConfigError
from .locks import LockedError
from .readahead import ReaderError
from .store import NotAMirrorError, SearchSyntaxError, StoreError, database_error_line

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3


def error_line(error: BaseException) -> str | None:
    """The one line an expected failure is reported as; None for a bug, whose traceback is worth keeping."""
    if isinstance(error, YTSError):  # FetchError and the rest
        return f"API request failed: {error}"
    if isinstance(error, (ConfigError, StoreError, LockedError, ReaderError)):
        return str(error)
    if isinstance(error, sqlite3.Error):
        return database_error_line(error)  # the file's state, or None: a bug of ours
    if isinstance(error, OSError):  # the lock file or the disk: the operator's to fix
        return f"{error.strerror or error}: {error.filename}" if error.filename else str(error)
    return None


def exit_code(error: BaseException) -> int:
    """2 for usage and config errors, 3 while another process writes, 1 otherwise."""
    if isinstance(error, (ConfigError, SearchSyntaxError, NotAMirrorError)):
        return EXIT_USAGE
    return EXIT_LOCKED if isinstance(error, LockedError) else EXIT_ERROR
