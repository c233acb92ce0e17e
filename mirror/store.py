"""The SQLite store: schema, migrations, upserts, removal marking, search and the run log."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, cast

import sqlite_utils

from . import transform
from .locks import upgrade_lock

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
MIGRATION_BATCH = 1000  # rows a migration step holds in memory at once
# sync_state keys
CRAWL_STATE = "crawl"  # the checkpoint of an unfinished crawl
FULL_CRAWL_STATE = "full_crawl"  # when the last full crawl completed (its enrichment may have been cut short)
CRAWLED_STATE = "crawled"  # when the last crawl or incremental walk of any kind completed
RECONCILE_STATE = "reconcile"  # a removal check the next incremental sync owes
HOST_STATE = "api_host"  # the API host that answered last, and the base_urls list it came from
SEEN_STATE = "seen"  # the latest seen-at time a crawl wrote (a clock set back since must not undercut it)
GAP_STATE = "list_gap"  # present movies less movie_count, as the last quiet crawl left them
REFUSED_STATE = "removals_refused"  # the count gap whose removal search found more than the setting allows
DEMO_STATE = "demo"  # set by `yts-mirror demo`: this mirror holds simulated movies


def _compact_raw_json(db: sqlite_utils.Database) -> None:
    """Version 2 stores raw list JSON compact (orjson): rewrite it and rehash, keeping enrichment fresh."""
    last_id = 0
    while True:  # in batches, so a large mirror's JSON is never all in memory
        rows = db.execute("SELECT id, raw, list_hash FROM movies WHERE id > ? ORDER BY id LIMIT ?",
                          [last_id, MIGRATION_BATCH]).fetchall()
        if not rows:
            return
        for movie_id, raw, old_hash in rows:
            try:
                compact = transform.dumps(json.loads(raw))
            except ValueError:
                continue
            new_hash = transform.list_hash(compact)
            db.execute("UPDATE movies SET raw = ?, list_hash = ? WHERE id = ?", [compact, new_hash, movie_id])
            db.execute("UPDATE enrich_state SET list_hash = ? WHERE movie_id = ? AND list_hash = ?",
                       [new_hash, movie_id, old_hash])
        last_id = rows[-1][0]


def _add_run_warning(db: sqlite_utils.Database) -> None:
    """Version 3 gives `sync_runs` a `warning` column, for what a run held back on purpose."""
    if "warning" not in db["sync_runs"].columns_dict:
        db.execute("ALTER TABLE sync_runs ADD COLUMN warning TEXT")


def _add_attempted_at(db: sqlite_utils.Database) -> None:
    """Version 4 gives `enrich_state` an `attempted_at` column, so a failing fetch is retried once a day."""
    if "attempted_at" not in db["enrich_state"].columns_dict:
        db.execute("ALTER TABLE enrich_state ADD COLUMN attempted_at TEXT")


# Versioned migrations: MIGRATIONS[n] holds the SQL statements or functions that take a database
# from version n-1 to n. schema.sql always describes the newest shape and is applied after them.
MIGRATIONS: dict[int, Sequence[str | Callable[[sqlite_utils.Database], None]]] = {
    2: (_compact_raw_json, "DROP TRIGGER IF EXISTS movies_fts_ai"),  # schema.sql adds its fts_batch guard
    3: (_add_run_warning,),
    4: (_add_attempted_at,),
    5: ("UPDATE enrich_state SET attempts = 0 WHERE status != 'failed'",),  # now failures in a row, not every fetch
}


class StoreError(Exception):
    """A database problem the user can act on (not a bug)."""


class ReadOnlyError(StoreError):
    """The database needs a write (a migration) that its file or file system does not allow."""


class NotAMirrorError(StoreError):
    """The database file holds something other than a mirror; it is left untouched."""


class SearchSyntaxError(StoreError):
    """The full-text query is not valid FTS5 syntax."""


ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # every time stored: UTC, and sorts as text


def now_iso(days_ago: float = 0) -> str:
    """The current UTC time (or `days_ago` days before it) as an ISO-8601 string that sorts correctly."""
    return (datetime.now(UTC) - timedelta(days=days_ago)).strftime(ISO_FORMAT)


def crawl_start(db: sqlite_utils.Database) -> str:
    """A new crawl's start: now, or just after the latest time a crawl wrote if the clock is behind that."""
    state = get_state(db, SEEN_STATE)
    latest = state["latest"] if state else db.execute("SELECT MAX(last_seen_at) FROM movies").fetchone()[0]
    now = now_iso()
    if latest is None or now > latest:
        return now
    return (datetime.strptime(latest, ISO_FORMAT) + timedelta(microseconds=1)).strftime(ISO_FORMAT)


def schema_sql() -> str:
    """Return schema.sql, from the installed package or the source checkout."""
    packaged = resources.files("mirror").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / "schema.sql").read_text(encoding="utf-8")


# SQLite's primary result codes for a file that cannot be used now, rather than for a wrong query.
DATABASE_STATE_CODES = frozenset({
    "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CORRUPT",
    "SQLITE_NOTADB", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_NOMEM", "SQLITE_PROTOCOL", "SQLITE_NOLFS",
})


def is_database_state(error: BaseException) -> bool:
    """Whether an error is SQLite's about the file's state (locked, full, corrupt, read-only), not a bug."""
    name = getattr(error, "sqlite_errorname", None) or ""  # extended names too: SQLITE_BUSY_SNAPSHOT
    return isinstance(error, sqlite3.Error) and "_".join(name.split("_")[:2]) in DATABASE_STATE_CODES


def database_error_line(error: BaseException) -> str | None:
    """The one line to show for an error about the file's state; None for anything else (a bug)."""
    return f"database error: {error}" if is_database_state(error) else None


class ImmediateDatabase(sqlite_utils.Database):
    """sqlite_utils.Database whose outermost atomic() takes the write lock as it begins."""

    @contextmanager
    def atomic(self) -> Iterator[ImmediateDatabase]:
        """A transaction (a savepoint when nested) that starts with BEGIN IMMEDIATE."""
        # A plain BEGIN that reads first cannot write once another connection has committed
        # (a stale snapshot): SQLite answers "database is locked" at once, without waiting for
        # busy_timeout. Taking the lock first makes a second writer wait its turn instead.
        if self.conn.in_transaction:
            with super().atomic():
                yield self
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise


def file_uri(path: str | os.PathLike[str]) -> str:
    """The file: URI of a database path, so that SQLite takes every name as a file (never "file:..." or ":memory:")."""
    return Path(path).absolute().as_uri()


BUSY_TIMEOUT_MS = 30_000  # how long a command waits for a lock another connection holds on the file


def connect(path: str | os.PathLike[str], busy_timeout_ms: int | None = None) -> ImmediateDatabase:
    """Open a database file with the settings every connection here uses."""
    busy_timeout_ms = BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms
    try:
        conn = sqlite3.connect(file_uri(path), uri=True, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    except sqlite3.OperationalError as error:
        raise StoreError(f"cannot open database {path}: {error}") from None
    db = ImmediateDatabase(conn)
    with closed_on_error(db):
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        db.execute("PRAGMA foreign_keys = OFF")  # suggestions may name movies not mirrored yet
    return db


@contextmanager
def closed_on_error(db: sqlite_utils.Database) -> Iterator[None]:
    """Close `db` if the block raises, so a failed open leaks no connection."""
    try:
        yield
    except BaseException:
        db.close()
        raise


def ensure_db_shape(db: sqlite_utils.Database) -> None:
    """Apply migrations and schema.sql idempotently, and switch to WAL mode."""
    try:
        db.enable_wal()
        db.execute("PRAGMA synchronous = NORMAL")
        # Copy the WAL back every 64 MB rather than 4 MB: each copy waits on the disk. Writers
        # also run background_checkpoints, which copies it sooner without making commits wait.
        db.execute("PRAGMA wal_autocheckpoint = 16384")
        db.execute("PRAGMA journal_size_limit = 67108864")
        refuse_newer(db.execute("PRAGMA user_version").fetchone()[0])  # before taking the write lock
        with db.atomic():
            # Again under the write lock: another process may have updated it meanwhile, and a
            # migration step need not be safe to run twice.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            refuse_newer(version)
            if version and version < SCHEMA_VERSION:
                for statement in schema_statements("TABLE"):  # a table dropped by hand, for the steps to update
                    db.execute(statement)
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for step in MIGRATIONS.get(target, ()):
                        if isinstance(step, str):
                            db.execute(step)
                        else:
                            step(db)
            _drop_stale_triggers_and_views(db)
            for statement in split_sql(schema_sql()):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        check_columns(db)
    except sqlite3.DatabaseError as error:
        if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_READONLY:
            raise ReadOnlyError(f"cannot prepare database: {error}") from None
        raise StoreError(f"cannot prepare database: {error}") from None


@functools.cache
def schema_statements(kind: str) -> tuple[str, ...]:
    """schema.sql's CREATE statements of one kind: TABLE (virtual ones too), INDEX, TRIGGER or VIEW."""
    pattern = re.compile(rf"^CREATE (?:VIRTUAL )?{kind} IF NOT EXISTS ", re.MULTILINE)
    return tuple(statement[found.start():] for statement in split_sql(schema_sql())
                 if (found := pattern.search(statement)))  # from CREATE on, without the comments above it


def _drop_stale_triggers_and_views(db: sqlite_utils.Database) -> None:
    """Drop each trigger and view whose definition differs from schema.sql's, which then creates it anew."""
    stored = {(kind, name): sql for kind, name, sql in db.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('trigger', 'view')")}
    for kind in ("trigger", "view"):
        for statement in schema_statements(kind.upper()):
            # SQLite keeps the statement without "IF NOT EXISTS" and its final semicolon
            current = statement.replace(" IF NOT EXISTS", "", 1).rstrip(";")
            name = current.split()[2]
            if stored.get((kind, name), current) != current:
                db.execute(f"DROP {kind.upper()} {name}")


@functools.cache
def schema_columns() -> dict[str, frozenset[str]]:
    """The columns of each table schema.sql creates."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(schema_sql())
        return {table: frozenset(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
                for table in schema_tables()}
    finally:
        conn.close()


def check_columns(db: sqlite_utils.Database | sqlite3.Connection) -> None:
    """Raise StoreError if a table lacks a column schema.sql gives it (dropped by hand: the writes would fail)."""
    for table, expected in sorted(schema_columns().items()):
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        missing = sorted(expected - present)
        if present and missing:  # a missing table is recreated by ensure_db_shape
            raise StoreError(f"the mirror's table {table} lacks column {', '.join(missing)} (changed by hand?); "
                             "put it back, or sync into a new --db")


@contextmanager
def background_checkpoints(path: str | os.PathLike[str], interval: float = 0.5) -> Iterator[None]:
    """Copy the WAL back into the database from a thread, so the writer's commits seldom wait on the disk."""
    stop = threading.Event()

    def run() -> None:
        try:
            conn = sqlite3.connect(file_uri(path), uri=True, check_same_thread=False)
        except sqlite3.Error as error:  # the writer's own autocheckpoint still works
            log.debug("no background checkpoints: %s", error)
            return
        try:
            while not stop.wait(interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never blocks readers or the writer
                except sqlite3.Error as error:
                    log.debug("background checkpoint skipped: %s", error)
        finally:
            conn.close()

    thread = threading.Thread(target=run, name="wal-checkpoint", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# A first crawl into an empty mirror builds these once, at its end, instead of row by row on
# every page (a sort instead of scattered leaf writes; the whole sync takes a sixth less time). The
# page write itself reads torrents_api_movie (removed torrents), so that one stays.
BULK_KEPT_INDEXES = frozenset({"torrents_api_movie"})
BULK_TABLES = ("movies", "torrents", "movie_genres")
_CREATE_INDEX = re.compile(r"^CREATE INDEX IF NOT EXISTS (?P<name>\w+) ON (?P<table>\w+)\(", re.MULTILINE)


@functools.cache
def bulk_indexes() -> dict[str, str]:
    """The schema.sql indexes a bulk load defers, by name, with their CREATE statements (unique ones never)."""
    found = {}
    for statement in split_sql(schema_sql()):
        index = _CREATE_INDEX.search(statement)
        if index and index["table"] in BULK_TABLES and index["name"] not in BULK_KEPT_INDEXES:
            found[index["name"]] = statement
    return found


@contextmanager
def indexes_deferred(db: sqlite_utils.Database, enabled: bool = True) -> Iterator[None]:
    """Drop the secondary indexes of movies, torrents and genres for a bulk load, then build them once.

    A process killed meanwhile leaves them to the next writer: schema.sql creates them on open.
    """
    if not enabled:
        yield
        return
    indexes = bulk_indexes()
    with db.atomic():
        for name in indexes:
            db.execute(f"DROP INDEX IF EXISTS {name}")
    try:
        yield
    except BaseException as error:
        if is_database_state(error):  # the file refuses work now (locked, full): the next writer's open builds them
            raise
        try:
            _create_all(db, indexes.values())
        except sqlite3.Error as rebuild_error:  # the error in flight says more; the next open builds them
            log.info("indexes not rebuilt yet (the next writer builds them): %s", rebuild_error)
        raise
    _create_all(db, indexes.values())


def _create_all(db: sqlite_utils.Database, statements: Iterable[str]) -> None:
    """Run CREATE statements in one transaction."""
    with db.atomic():
        for statement in statements:
            db.execute(statement)


def split_sql(script: str) -> list[str]:
    """Split a SQL script into complete statements (triggers included)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    return statements


MIRROR_TABLES = ("movies", "torrents", "movies_fts", "sync_runs")


def open_db(path: str | os.PathLike[str], reader: bool = False) -> sqlite_utils.Database:
    """Open (creating if needed) a mirror database ready for use; a file holding other tables is refused.

    A `reader` (`serve`) holds the writer lock while it updates the schema of an older mirror, which
    an older yts-mirror may be writing to; a writer holds that lock already.
    """
    if os.path.exists(path):
        mirror_version(path)
    db = connect(path)
    with closed_on_error(db):
        with upgrade_lock(os.fspath(path)) if reader and needs_shaping(db) else nullcontext():
            ensure_db_shape(db)
        db.execute("PRAGMA temp_store = MEMORY")  # statement journals and index sorts: no temp-file writes
    return db


def open_reader(path: str) -> sqlite_utils.Database:
    """Open an existing mirror to read it, writing nothing unless its schema needs an update (or a dropped table)."""
    require_mirror(path)
    read_only = on_read_only_media(path)
    if read_only:
        db = ImmediateDatabase(connect_read_only(path, immutable=True, check_same_thread=False))
    else:
        db = connect(path)
    with closed_on_error(db):
        if needs_shaping(db):
            if read_only:
                raise ReadOnlyError(_update_needed(path, "it lies on read-only storage"))
            try:
                with upgrade_lock(path):
                    ensure_db_shape(db)
            except ReadOnlyError:
                raise ReadOnlyError(_update_needed(path, "it is read-only here")) from None
    return db


def needs_shaping(db: sqlite_utils.Database) -> bool:
    """Whether a mirror's schema is older than ours, or lacks a table (dropped by hand)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    return bool(version != SCHEMA_VERSION or not schema_tables() <= set(db.table_names()))


def _update_needed(path: str, why: str) -> str:
    """Why a reader cannot read a mirror that needs its schema updated, and what to do."""
    return (f"{path} needs its schema updated (an older yts-mirror wrote it, or a table was dropped), and {why}; "
            f"run `yts-mirror stats --db {path}` once where it is writable")


@functools.cache
def schema_tables() -> frozenset[str]:
    """The tables schema.sql creates."""
    return frozenset(re.findall(r"CREATE (?:VIRTUAL )?TABLE IF NOT EXISTS (\w+)", schema_sql()))


def require_mirror(path: str, must_exist: bool = True) -> int:
    """The mirror's schema version (0: nothing there yet, where allowed); StoreError otherwise. Writes nothing."""
    version = mirror_version(path) if os.path.exists(path) else None
    if version is None and must_exist:
        raise StoreError(f"no database at {path}; run `yts-mirror sync --db {path}` first")
    if version == 0 and must_exist:
        raise StoreError(f"{path} holds no mirror yet; run `yts-mirror sync --db {path}` first")
    refuse_newer(version or 0)
    return version or 0


def refuse_newer(version: int) -> None:
    """Raise StoreError for a schema version this yts-mirror does not know."""
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this yts-mirror ({SCHEMA_VERSION}); upgrade yts-mirror"
        )


def connect_read_only(path: str | os.PathLike[str], immutable: bool = False, **kwargs: Any) -> sqlite3.Connection:
    """A plain connection that can never write to the file (nor create it); `immutable` skips the -shm file."""
    return sqlite3.connect(Path(path).resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro"), uri=True,
                           **kwargs)


def on_read_only_media(path: str | os.PathLike[str]) -> bool:
    """Whether a mirror lies on a read-only file system with no -shm file and nothing in a WAL beside it."""
    # SQLite needs a -shm file to read a WAL database and cannot make one there, so the one-shot
    # readers (stats, search) open such a mirror immutable. A writer idle elsewhere (a read-only
    # bind mount) could start meanwhile, so `serve`, which reads for hours, refuses it instead.
    real = os.path.realpath(path)
    wal, shm = Path(f"{real}-wal"), Path(f"{real}-shm")
    try:
        read_only = bool(os.statvfs(os.path.dirname(real)).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False
    return read_only and not shm.exists() and not (wal.exists() and wal.stat().st_size)


def mirror_version(path: str | os.PathLike[str]) -> int:
    """Look (read-only) at a database file: its schema version (0 while it has no tables), or StoreError.

    A mirror of the current version must have every column schema.sql gives it: checked here, so
    that every command, `schedule` included, refuses a damaged one before it starts.
    """
    try:
        conn = connect_read_only(path, immutable=on_read_only_media(path), timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version == SCHEMA_VERSION and set(MIRROR_TABLES) <= tables:
                check_columns(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as error:
        if error.sqlite_errorname == "SQLITE_NOTADB":
            raise NotAMirrorError(f"{path} is not a yts-mirror database (not SQLite at all); choose another --db") from None
        raise StoreError(f"cannot open database {path}: {error}") from None
    if tables and not set(MIRROR_TABLES) <= tables:
        missing = ", ".join(name for name in MIRROR_TABLES if name not in tables)
        raise NotAMirrorError(f"{path} is not a yts-mirror database (it lacks {missing}); choose another --db")
    return version if tables else 0


# ---- upserts -------------------------------------------------------------------------------

_MOVIE_UPSERT = (
    f"INSERT INTO movies ({', '.join(transform.MOVIE_COLUMNS)}, first_seen_at, last_seen_at, removed_at) "
    "VALUES {} ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in transform.MOVIE_COLUMNS if c != "id")
    + ", last_seen_at = excluded.last_seen_at, removed_at = NULL"
)
_TORRENT_COLUMNS_SQL = f"torrents ({', '.join(transform.TORRENT_COLUMNS)}, first_seen_at, last_seen_at, removed_at)"
# OR FAIL: a multi-row statement that may ABORT keeps a copy of every existing page it changes
# (a statement journal), here one per random leaf of the hash key; the page's transaction rolls
# back on any error anyway. An upsert's DO UPDATE always may abort, so new torrents skip it.
_TORRENT_INSERT = f"INSERT OR FAIL INTO {_TORRENT_COLUMNS_SQL} VALUES {{}}"
_TORRENT_UPSERT = (
    f"INSERT INTO {_TORRENT_COLUMNS_SQL} "
    "VALUES {} ON CONFLICT(hash) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in transform.TORRENT_COLUMNS if c != "hash")
    + ", last_seen_at = excluded.last_seen_at, removed_at = NULL"
)
_GENRE_INSERT = "INSERT OR IGNORE INTO movie_genres (movie_id, genre) VALUES {}"
_FTS_INSERT = (
    "INSERT INTO movies_fts (rowid, title, title_english, description_full, cast_names) "
    "SELECT id, title, title_english, description_full, cast_names FROM movies WHERE id IN ({})"
)


@functools.lru_cache(maxsize=256)
def _values_sql(template: str, width: int, count: int) -> str:
    """`template` with its `VALUES {}` filled with `count` rows of `width` parameters."""
    row = "(" + ", ".join("?" * width) + ")"
    return template.format(", ".join([row] * count))


ROWS_PER_STATEMENT = 25  # few statement shapes to prepare and cache, each still amortised over rows


def insert_rows(db: sqlite_utils.Database, template: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run an INSERT `template` over `rows` as multi-row statements of up to ROWS_PER_STATEMENT rows."""
    if not rows:
        return
    width = len(rows[0])
    limit = db.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    per_statement = max(1, min(ROWS_PER_STATEMENT, limit))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        db.conn.execute(_values_sql(template, width, len(chunk)), list(itertools.chain.from_iterable(chunk)))


@contextmanager
def fts_batch(db: sqlite_utils.Database, movie_ids: Sequence[int]) -> Iterator[None]:
    """Pause per-row full-text indexing of inserted movies, then index `movie_ids` in one statement."""
    db.execute("INSERT INTO fts_batch (active) VALUES (1)")
    try:
        yield
    finally:
        db.execute("DELETE FROM fts_batch")
    if movie_ids:
        db.execute(_FTS_INSERT.format(placeholders(len(movie_ids))), list(movie_ids))


@dataclass
class PageResult:
    """What one page's upsert changed."""

    new_ids: list[int]
    changed_ids: list[int]
    torrents_new: int = 0
    torrents_removed: int = 0
    returned_ids: list[int] = field(default_factory=list)  # marked removed, now listed again

    @property
    def updated(self) -> int:
        """How many known movies the page changed."""
        return len(self.changed_ids)


def placeholders(count: int) -> str:
    """`?, ?, ?` for an IN list of `count` values."""
    return ", ".join("?" * count)


def upsert_movies(
    db: sqlite_utils.Database,
    movies: Sequence[Mapping[str, Any]],
    seen_at: str,
    trackers: Iterable[str] = transform.DEFAULT_TRACKERS,
) -> PageResult:
    """Upsert list_movies movies with their torrents and genres. Call inside a transaction."""
    return write_page(db, transform.page_values(transform.page_rows(movies, trackers)), seen_at)


def write_page(db: sqlite_utils.Database, rows: transform.PageValues, seen_at: str) -> PageResult:
    """Upsert one list page's rows. Call inside a transaction."""
    if not rows.movies:
        return PageResult([], [])
    new_ids, changed_ids, returned_ids = _write_movies(db, rows, seen_at)
    torrents_new, torrents_removed = _write_torrents(db, rows.torrents, list(rows.movies), seen_at)
    return PageResult(new_ids, changed_ids, torrents_new, torrents_removed, returned_ids)


def _write_movies(db: sqlite_utils.Database, rows: transform.PageValues,
                  seen_at: str) -> tuple[list[int], list[int], list[int]]:
    """Insert new movies, rewrite changed ones (by list_hash), touch the rest; return new, changed and returned ids."""
    ids = list(rows.movies)
    at = transform.LIST_HASH_AT
    stored = db.execute(
        f"SELECT id, CASE WHEN removed_at IS NULL THEN list_hash END, removed_at IS NOT NULL FROM movies "
        f"WHERE id IN ({placeholders(len(ids))})",
        ids,
    ).fetchall()
    existing = {movie_id: list_hash for movie_id, list_hash, _ in stored}
    returned_ids = [movie_id for movie_id, _, removed in stored if removed]
    if returned_ids:  # a "not found" from while it was gone: enrich it again as if new
        db.execute(f"DELETE FROM enrich_state WHERE status = 'not_found' AND movie_id IN "
                   f"({placeholders(len(returned_ids))})", returned_ids)
    new_ids = [i for i in ids if i not in existing]
    changed_ids = [i for i in ids if i in existing and existing[i] != rows.movies[i][at]]
    unchanged_ids = [i for i in ids if i in existing and existing[i] == rows.movies[i][at]]
    write_ids, bookkeeping = new_ids + changed_ids, _bookkeeping(seen_at)
    with fts_batch(db, new_ids):  # changed movies are reindexed by the update trigger
        insert_rows(db, _MOVIE_UPSERT, [rows.movies[i] + bookkeeping for i in write_ids])
    db.conn.executemany("UPDATE movies SET last_seen_at = ? WHERE id = ?", [(seen_at, i) for i in unchanged_ids])
    if changed_ids:
        db.execute(f"DELETE FROM movie_genres WHERE movie_id IN ({placeholders(len(changed_ids))})", changed_ids)
    insert_rows(db, _GENRE_INSERT, [genre for i in write_ids for genre in rows.genres[i]])
    return new_ids, changed_ids, returned_ids


def _write_torrents(db: sqlite_utils.Database, torrents: Sequence[tuple[Any, ...]], movie_ids: Sequence[int],
                    seen_at: str) -> tuple[int, int]:
    """Upsert a page's torrents and mark its movies' unlisted ones removed; return (new, removed)."""
    hashes = [t[transform.HASH_AT] for t in torrents]
    stored = dict(db.execute(
        f"SELECT hash, removed_at IS NULL FROM torrents WHERE hash IN ({placeholders(len(hashes))})", hashes
    ).fetchall()) if hashes else {}
    fresh = {h: t for h, t in zip(hashes, torrents) if h not in stored}  # a repeated hash: the last wins, as upserted
    bookkeeping = _bookkeeping(seen_at)
    insert_rows(db, _TORRENT_INSERT, [t + bookkeeping for t in fresh.values()])
    insert_rows(db, _TORRENT_UPSERT, [t + bookkeeping for h, t in zip(hashes, torrents) if h in stored])
    removed = db.execute(
        f"UPDATE torrents SET removed_at = ? WHERE movie_id IN ({placeholders(len(movie_ids))}) "
        "AND removed_at IS NULL AND last_seen_at < ?",
        [seen_at, *movie_ids, seen_at],
    ).rowcount
    return len(set(hashes) - {h for h, present in stored.items() if present}), removed


def _bookkeeping(seen_at: str) -> tuple[str, str, None]:
    """first_seen_at, last_seen_at and removed_at of a row written now (the upserts keep first_seen_at)."""
    return (seen_at, seen_at, None)


def write_details(db: sqlite_utils.Database, movie_id: int, movie: Mapping[str, Any]) -> None:
    """Store a movie's movie_details: its details-only columns, raw_details and cast. Call inside a transaction."""
    row = transform.details_row(movie)
    row["raw_details"] = transform.dumps(movie)
    assignments = ", ".join(f"{column} = :{column}" for column in row)
    db.execute(f"UPDATE movies SET {assignments} WHERE id = :id", {**row, "id": movie_id})
    replace_children(db, "movie_cast", movie_id, transform.cast_rows(movie))


def replace_children(db: sqlite_utils.Database, table: str, movie_id: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace a movie's rows in a child table (cast, suggestions, reviews...) exactly."""
    db.execute(f"DELETE FROM {table} WHERE movie_id = ?", [movie_id])
    if rows:
        columns = list(rows[0])
        db.conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})", rows
        )


def record_swarm(db: sqlite_utils.Database, observed_at: str, seen_since: str) -> int:
    """Add a `torrent_stats` row for each present torrent seen since `seen_since`; return how many."""
    # One statement when the crawl completes, not one per page: the table is keyed by hash, so
    # each page's rows landed on scattered leaves and every commit rewrote most of the table.
    with db.atomic():
        return db.execute(
            "INSERT OR REPLACE INTO torrent_stats (hash, observed_at, seeds, peers) "
            "SELECT hash, ?, seeds, peers FROM torrents WHERE removed_at IS NULL AND last_seen_at >= ? "
            "ORDER BY hash",  # in key order: each leaf of torrent_stats is written once
            [observed_at, seen_since],
        ).rowcount


def known_ids(db: sqlite_utils.Database, ids: Sequence[int], before: str) -> set[int]:
    """Return which of `ids` were first mirrored before the time `before`."""
    if not ids:
        return set()
    rows = db.execute(
        f"SELECT id FROM movies WHERE id IN ({placeholders(len(ids))}) AND first_seen_at < ?", [*ids, before]
    ).fetchall()
    return {row[0] for row in rows}


def ids_seen_since(db: sqlite_utils.Database, since: str) -> set[int]:
    """Return the ids of movies seen at or after `since` (the movies a resumed crawl has)."""
    return {row[0] for row in db.execute("SELECT id FROM movies WHERE last_seen_at >= ?", [since])}


def unseen_since(db: sqlite_utils.Database, since: str) -> tuple[list[int], int]:
    """Return the ids of present movies not seen since `since` (newest first), and how many movies are present."""
    unseen = [row[0] for row in db.execute(
        "SELECT id FROM movies WHERE removed_at IS NULL AND last_seen_at < ? ORDER BY id DESC", [since])]
    return unseen, present_count(db)


def mark_ids_removed(db: sqlite_utils.Database, ids: Sequence[int], removed_at: str) -> tuple[int, int]:
    """Mark the given present movies and their torrents removed; return both counts. Call inside a transaction."""
    movies = torrents = 0
    for start in range(0, len(ids), 500):  # well within SQLite's limit on parameters
        chunk = ids[start:start + 500]
        marks = placeholders(len(chunk))
        movies += db.execute(
            f"UPDATE movies SET removed_at = ? WHERE removed_at IS NULL AND id IN ({marks})", [removed_at, *chunk]
        ).rowcount
        torrents += db.execute(
            f"UPDATE torrents SET removed_at = ? WHERE removed_at IS NULL AND movie_id IN ({marks})",
            [removed_at, *chunk],
        ).rowcount
    return movies, torrents


def present_count(db: sqlite_utils.Database) -> int:
    """How many mirrored movies are present upstream, as far as the mirror knows."""
    return int(db.execute("SELECT COUNT(*) FROM movies WHERE removed_at IS NULL").fetchone()[0])


def present_ids(db: sqlite_utils.Database) -> list[int]:
    """Ids of present movies, newest first (YTS ids grow with date_added, but for swaps of movies added together)."""
    return [row[0] for row in db.execute("SELECT id FROM movies WHERE removed_at IS NULL ORDER BY id DESC")]


# ---- checkpoints and the run log ------------------------------------------------------------

def get_state(db: sqlite_utils.Database, key: str) -> dict[str, Any] | None:
    """Read a JSON checkpoint."""
    row = db.execute("SELECT value FROM sync_state WHERE key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else None


def set_state(db: sqlite_utils.Database, key: str, value: Mapping[str, Any]) -> None:
    """Write a JSON checkpoint (inside the caller's transaction)."""
    db.execute(
        "INSERT INTO sync_state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, json.dumps(value)],
    )


def remembered_host(db: sqlite_utils.Database, base_urls: Sequence[str]) -> str | None:
    """The API host that answered last, if it was picked from these same base URLs."""
    state = get_state(db, HOST_STATE)
    return state["host"] if state and state.get("base_urls") == list(base_urls) else None


def remember_host(db: sqlite_utils.Database, base_urls: Sequence[str], host: str) -> None:
    """Keep the API host that answered last, so that the next run starts with it."""
    if remembered_host(db, base_urls) != host:
        with db.atomic():
            set_state(db, HOST_STATE, {"base_urls": list(base_urls), "host": host})


def clear_state(db: sqlite_utils.Database, key: str) -> None:
    """Delete a checkpoint."""
    db.execute("DELETE FROM sync_state WHERE key = ?", [key])


RUN_COUNTERS = (
    "pages", "requests", "retries", "movies_new", "movies_updated", "movies_removed",
    "torrents_new", "torrents_removed", "enriched",
)


def start_run(db: sqlite_utils.Database, kind: str, base_url: str | None) -> int:
    """Insert a `sync_runs` row with status running and return its id."""
    with db.atomic():
        cursor = db.execute(
            "INSERT INTO sync_runs (kind, started_at, status, base_url) VALUES (?, ?, 'running', ?)",
            [kind, now_iso(), base_url],
        )
    return cast(int, cursor.lastrowid)  # an INSERT sets it


def update_run(db: sqlite_utils.Database, run_id: int, **values: Any) -> None:
    """Set columns of a `sync_runs` row (inside the caller's transaction or alone)."""
    if not values:
        return
    unknown = set(values) - set(RUN_COUNTERS) - {"kind", "status", "finished_at", "error", "warning", "base_url"}
    if unknown:
        raise ValueError(f"unknown sync_runs columns: {sorted(unknown)}")
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    db.execute(f"UPDATE sync_runs SET {assignments} WHERE id = :id", {**values, "id": run_id})


def finish_run(db: sqlite_utils.Database, run_id: int, status: str, error: str | None = None, **counts: Any) -> None:
    """Close a `sync_runs` row."""
    with db.atomic():
        update_run(db, run_id, status=status, finished_at=now_iso(), error=error, **counts)


def close_stale_runs(db: sqlite_utils.Database) -> None:
    """Mark runs left 'running' by a killed process as interrupted."""
    with db.atomic():
        db.execute(
            "UPDATE sync_runs SET status = 'interrupted', finished_at = COALESCE(finished_at, ?) WHERE status = 'running'",
            [now_iso()],
        )


# ---- reading --------------------------------------------------------------------------------

MAX_SEARCH_WORDS = 64  # FTS5 walks the index once per word: 250 common words took 10 s on 20,000 movies
_COLUMN_FILTER = re.compile(r"\b\w++\s*+:")  # title: or cast_names: (\b: linear in a 100,000-letter word)
# A word as FTS5's unicode61 tokenizer reads one: letters, digits, private-use characters and the
# common combining marks; "_" and other punctuation split words (the_the is two).
_SEARCH_WORD = re.compile("(?:[^\\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f\ue000-\uf8ff])+")
_FTS_OPERATORS = frozenset({"AND", "OR", "NOT", "NEAR"})


def search_words(query: str) -> int:
    """How many words FTS5 looks up for `query`: every word of a "quoted string", others but operators and columns."""
    words = 0
    for index, part in enumerate(query.split('"')):  # odd parts are inside quotes ("" inside one splits twice)
        if index % 2:
            words += len(_SEARCH_WORD.findall(part))
        else:
            words += sum(1 for word in _SEARCH_WORD.findall(_COLUMN_FILTER.sub(" ", part)) if word not in _FTS_OPERATORS)
    return words


def search(db: sqlite_utils.Database, query: str, limit: int = 20, include_removed: bool = False) -> list[dict[str, Any]]:
    """Rank movies matching an FTS5 query, best first."""
    try:
        query.encode()
    except UnicodeEncodeError:  # argv bytes the locale could not decode
        raise SearchSyntaxError("the search holds bytes that are not UTF-8 text (is the terminal's encoding UTF-8?)") from None
    words = search_words(query)
    if words > MAX_SEARCH_WORDS:
        raise SearchSyntaxError(f"the search has {words} words; at most {MAX_SEARCH_WORDS}, please")
    sql = (
        "SELECT movies.id, movies.title, movies.year, movies.rating, movies.imdb_code, movies.removed_at, "
        "snippet(movies_fts, 2, '[', ']', '…', 12) AS snippet "
        "FROM movies_fts JOIN movies ON movies.id = movies_fts.rowid "
        "WHERE movies_fts MATCH ? " + ("" if include_removed else "AND movies.removed_at IS NULL ")
        + "ORDER BY bm25(movies_fts, 10.0, 5.0, 1.0, 3.0) LIMIT ?"
    )
    try:
        return [dict(row) for row in db.execute_returning_dicts(sql, [query, limit])]
    except sqlite3.OperationalError as error:
        message = str(error)
        if any(sign in message for sign in ("fts5", "syntax", "no such column", "unterminated", "special query",
                                            "expected integer")):  # NEAR(a b, x)
            shown = query if len(query) <= 60 else f"{query[:60]}..."
            raise SearchSyntaxError(
                f"invalid search syntax in {shown!r}: {message} (put phrases or odd characters in double quotes)"
            ) from None
        raise


def table_counts(db: sqlite_utils.Database) -> dict[str, int]:
    """Count the rows users care about."""
    one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
    return {
        "movies": one("SELECT COUNT(*) FROM movies WHERE removed_at IS NULL"),
        "movies_removed": one("SELECT COUNT(*) FROM movies WHERE removed_at IS NOT NULL"),
        "torrents": one("SELECT COUNT(*) FROM torrents WHERE removed_at IS NULL"),
        "torrents_removed": one("SELECT COUNT(*) FROM torrents WHERE removed_at IS NOT NULL"),
        "genres": one("SELECT COUNT(DISTINCT genre) FROM movie_genres"),
        "cast": one("SELECT COUNT(*) FROM movie_cast"),
        "suggestions": one("SELECT COUNT(*) FROM movie_suggestions"),
        "reviews": one("SELECT COUNT(*) FROM movie_reviews"),
        "parental_guides": one("SELECT COUNT(*) FROM movie_parental_guides"),
        "comments": one("SELECT COUNT(*) FROM movie_comments"),
        "torrent_stats": one("SELECT COUNT(*) FROM torrent_stats"),
    }


def last_runs(db: sqlite_utils.Database, limit: int = 5) -> list[dict[str, Any]]:
    """Return the newest `sync_runs` rows."""
    return list(db.execute_returning_dicts("SELECT * FROM sync_runs ORDER BY id DESC LIMIT ?", [limit]))


def freshness(db: sqlite_utils.Database) -> dict[str, Any]:
    """When the mirror last completed a crawl, of any kind and full (not when its run's enrichment ended)."""
    rows = db.execute(
        "SELECT kind, MAX(finished_at) FROM sync_runs WHERE status = 'ok' GROUP BY kind"
    ).fetchall()
    last = {kind: finished for kind, finished in rows}
    # The states say when the crawl itself completed; run times only stand in for mirrors older than them.
    full_crawl = (get_state(db, FULL_CRAWL_STATE) or {}).get("completed_at")
    crawled = (get_state(db, CRAWLED_STATE) or {}).get("completed_at")
    full = full_crawl or last.get("full")
    return {
        "last_ok_sync": _latest(crawled, full_crawl) if crawled else _latest(full, last.get("incremental")),
        "last_ok_full": full,
        "last_ok_incremental": last.get("incremental"),
        "crawl_in_progress": get_state(db, CRAWL_STATE),
    }


def _latest(*times: str | None) -> str | None:
    """The latest of some stored times, or None if none is set."""
    return max((t for t in times if t), default=None)


def last_full_refresh(path: str | os.PathLike[str]) -> datetime | None:
    """When the mirror at `path` last completed a full crawl (None: never, or no database)."""
    if not os.path.exists(path):
        return None
    try:
        with closing(connect_read_only(path)) as conn:
            (finished,) = conn.execute(
                "SELECT COALESCE((SELECT json_extract(value, '$.completed_at') FROM sync_state WHERE key = ?), "
                "(SELECT MAX(finished_at) FROM sync_runs WHERE kind = 'full' AND status = 'ok'))",  # before the key
                [FULL_CRAWL_STATE]).fetchone()
    except sqlite3.OperationalError:  # no tables yet: nothing synced
        return None
    return datetime.strptime(finished, ISO_FORMAT).replace(tzinfo=UTC) if finished else None


def database_size(path: str | os.PathLike[str]) -> int:
    """Bytes used by the database file, its WAL and its shared-memory index."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.path.getsize(f"{path}{suffix}")
        except OSError:
            pass
    return total
