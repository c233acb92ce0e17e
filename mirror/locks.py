"""The file locks around a mirror: one writer at a time, one scheduler, and who holds them."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


class LockedError(Exception):
    """Another process is writing to this database."""


def lock_path(db_path: str) -> str:
    """The writer lock file of a database: one however the path is spelled, symlinks included."""
    return f"{os.path.realpath(db_path)}.lock"


@contextmanager
def writer_lock(db_path: str, wait: bool = False) -> Iterator[None]:
    """Hold the one-writer lock of a database file (released by the OS if we are killed)."""
    with file_lock(lock_path(db_path), wait) as holder:
        if holder:
            raise LockedError(f"{db_path} is being written by {holder}; use --wait to queue behind it")
        yield


@contextmanager
def scheduler_lock(db_path: str) -> Iterator[None]:
    """Hold the lock that keeps a second `yts-mirror schedule` off the same database."""
    with file_lock(f"{os.path.realpath(db_path)}.schedule.lock", wait=False) as holder:
        if holder:
            raise LockedError(f"another yts-mirror schedule runs on {db_path} ({holder})")
        yield


@contextmanager
def file_lock(path: str, wait: bool) -> Iterator[str | None]:
    """flock `path` and write our pid in it; yields None, or who holds it if taken and not `wait`."""
    handle = open(path, "a+")
    try:
        if holder := _flock(handle, wait):
            yield holder
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield None
    finally:
        handle.close()


@contextmanager
def upgrade_lock(db_path: str) -> Iterator[None]:
    """The writer lock, for a reader that must update an older mirror first (a writer of its own age may run).

    It never creates the lock file: one made by a reader under its own umask could shut another
    user's writer out. No lock file means no writer has run here (each makes it as it starts).
    """
    path = lock_path(db_path)
    try:
        handle = _open_existing(path)
    except FileNotFoundError:
        yield
        return
    except PermissionError:
        raise LockedError(f"{db_path} needs its schema updated before this yts-mirror can read it, and its lock "
                          f"file {path} is not readable here, so a writer may be running; run this as its "
                          "owner") from None
    with handle:
        if holder := _flock(handle, wait=False):
            raise LockedError(f"{db_path} needs its schema updated before this yts-mirror can read it, and {holder} "
                              "is writing to it; run this again once it ends") from None
        yield


def _flock(handle: IO[str], wait: bool) -> str | None:
    """Take the exclusive lock on an open lock file; None, or who holds it if taken and not `wait`."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        handle.seek(0)
        return handle.read().strip() or "another process"
    return None


def _open_existing(path: str) -> IO[str]:
    """Open an existing file for reading and writing, or else for reading (flock needs neither, NFS the first)."""
    try:
        return open(path, "r+")
    except FileNotFoundError:
        raise
    except OSError:  # not ours to write, or a read-only file system
        return open(path)


def writer_alive(db_path: str) -> bool:
    """Whether the process named in a database's lock file still runs (without touching the lock)."""
    try:
        with open(lock_path(db_path)) as handle:
            holder = handle.read().split()
    except OSError:
        return False
    if len(holder) != 2 or holder[0] != "pid" or not holder[1].isdigit():
        return False
    try:
        os.kill(int(holder[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, under another user
    return True
