"""Datasette integration: the `yts-mirror serve` command, and the Datasette plugin the mirror ships.

The plugin (entry point `yts_mirror = "mirror.serve"`) recognises mirror databases by their
tables, so plain `datasette mirror.db` gets the same metadata, canned queries, facets, cell
rendering, movie pages and ranked search as `yts-mirror serve`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
import webbrowser
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import click
import pluggy

from . import datasette_render as render
from . import store
from .config import ConfigError, resolve
from .transform import SQLITE_INT_RANGE

log = logging.getLogger(__name__)
hookimpl = pluggy.HookimplMarker("datasette")

PACKAGE_DIR = Path(__file__).resolve().parent
METADATA = json.loads((PACKAGE_DIR / "datasette_metadata.json").read_text(encoding="utf-8"))
QUERIES = json.loads((PACKAGE_DIR / "datasette_queries.json").read_text(encoding="utf-8"))
CATALOG, SEARCH = "movie_catalog", "movie_search"
SETTINGS: dict[str, Any] = {
    "suggest_facets": False,        # suggestions cost a query per column on every page
    "facet_time_limit_ms": 1000,
    "sql_time_limit_ms": 10000,     # a slow answer beats an error page on a local mirror
}
# Query args a search on the catalog or the movies table carries over to the movie_search view.
SEARCH_ARGS = frozenset({"_search", "_searchmode", "_genre", "_quality", "_facet", "_facet_size", "_size"})
SORT_ARGS = frozenset({"_sort", "_sort_desc", "_sort_by_desc"})
CATALOG_COLUMNS = frozenset({"id", "cover", "title", "year", "rating", "runtime", "genres", "language",
                             "mpa_rating", "date_uploaded_unix", "removed_at"})


# ---- the command (its click options are in cli.py) --------------------------------------------

def run_serve(db: str | None, config_path: str | None, host: str, port: int, open_browser: bool,
              quiet: bool = False) -> None:
    """Check the database, bind the port, then serve Datasette until interrupted."""
    import uvicorn  # late: only a served mirror needs it

    path = prepare_database(resolve(config_path, db=db).db)
    datasette = make_datasette(path)
    sock = bind(host, port)
    name = next(iter(mirror_databases(datasette)))
    url = f"http://{url_host(host)}:{sock.getsockname()[1]}{datasette.urls.table(name, CATALOG)}"
    if not quiet:
        click.echo(f"serving {path} at {url} (Ctrl-C stops)", err=True)
    asyncio.run(datasette.invoke_startup())
    if open_browser:
        webbrowser.open(url)
    # Startup ran above, so no lifespan task: a second Ctrl-C would print its CancelledError.
    server = uvicorn.Server(uvicorn.Config(datasette.app(), log_level="warning", lifespan="off"))
    previous = signal.signal(signal.SIGTERM, _stop)  # uvicorn restores it and re-raises SIGTERM once shut down
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully on Ctrl-C or SIGTERM, then raises it again
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def prepare_database(path: str) -> str:
    """Make sure `path` is a mirror and carries the current views and indexes."""
    store.require_mirror(path)  # refuses a missing or empty file, and one that holds something else
    if odd := sorted(set("?#%") & set(path)):
        # Datasette 0.65 opens f"file:{path}?mode=ro" as a URI, unquoted: these would change its meaning
        raise ConfigError(f"Datasette cannot open a database whose path holds {' or '.join(map(repr, odd))}; "
                          "serve it through a symbolic link with a plain name")
    if store.on_read_only_media(path):
        raise store.StoreError(f"{path} lies on a read-only file system without its -shm file, which SQLite needs "
                               "to read it while a writer may change it; serve a copy on writable storage")
    info = inspect_file(path)
    try:
        store.open_db(path, reader=True).close()  # applies schema.sql: the browsing views and indexes
    except store.StoreError as error:
        if info is None or not info.views:
            raise
        log.warning("serving without updating the schema: %s", error)
    MIRROR_FILES.clear()  # look again now that the views exist
    return path


def make_datasette(path: str, **settings: Any) -> Any:
    """A Datasette instance on one mirror file, with this plugin and the serve settings."""
    from datasette.app import Datasette

    register_plugin()
    return Datasette([path], settings={**SETTINGS, **settings})


def register_plugin() -> None:
    """Register this module with Datasette when its entry point was not loaded (e.g. a source checkout)."""
    from datasette.plugins import pm

    module = sys.modules[__name__]
    if not pm.is_registered(module):
        pm.register(module, name="yts_mirror")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a clean error if the address is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def url_host(host: str) -> str:
    """How a browser should name the listening host."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


# ---- which databases are mirrors -------------------------------------------------------------

@dataclass(frozen=True)
class MirrorFile:
    """What the plugin knows about a mirror database file."""

    views: bool  # movie_catalog and movie_search exist


@dataclass(frozen=True)
class Look:
    """What a look at a database file found, and the file's state then (None once nothing more can appear)."""

    mirror: MirrorFile | None
    state: tuple[tuple[int, int] | None, ...] | None
    checked: float  # time.monotonic() of the state


MIRROR_FILES: dict[str, Look] = {}
RECHECK_SECONDS = 1.0  # a file that is not a mirror (yet) is looked at again at most this often


def file_state(path: str) -> tuple[tuple[int, int] | None, ...]:
    """The size and modification time of a database file and of its WAL, which a writer's commit changes."""
    state: list[tuple[int, int] | None] = []
    for name in (path, path + "-wal"):
        try:
            stat = os.stat(name)
            state.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            state.append(None)
    return tuple(state)


def inspect_file(path: str) -> MirrorFile | None:
    """Look (read-only) at a database file's tables; None if it is not a mirror (yet: a sync may make it one)."""
    look = MIRROR_FILES.get(path)
    now = time.monotonic()
    if look is not None and (look.state is None or now - look.checked < RECHECK_SECONDS):
        return look.mirror  # hooks ask hundreds of times a request
    state = file_state(path)
    mirror = _look_at(path) if look is None or look.state != state else look.mirror
    MIRROR_FILES[path] = Look(mirror, None if mirror is not None and mirror.views else state, now)
    return mirror


def _look_at(path: str) -> MirrorFile | None:
    """The mirror a database file holds, from its table names; None if it holds none."""
    try:
        conn = store.connect_read_only(path)
        try:
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        names = set()
    is_mirror = all(name in names for name in store.MIRROR_TABLES)
    return MirrorFile(views={CATALOG, SEARCH} <= names) if is_mirror else None


def mirror_databases(datasette: Any) -> dict[str, MirrorFile]:
    """The attached databases that are mirrors, by name (the same dict while they stay: metadata is kept by it)."""
    found = {}
    for name, db in list(datasette.databases.items()):
        path = getattr(db, "path", None)
        if path and not getattr(db, "is_memory", False):
            info = inspect_file(path)
            if info is not None:
                found[name] = info
    cached = getattr(datasette, "_yts_mirrors", None)
    if cached == found:
        return cached  # type: ignore[no-any-return]
    datasette._yts_mirrors = found
    return found


def is_mirror(datasette: Any, database: str | None) -> bool:
    """True if `database` names an attached mirror."""
    return database is not None and database in mirror_databases(datasette)


# ---- plugin hooks: metadata, queries, facets, filters -----------------------------------------

@hookimpl
def get_metadata(datasette: Any, key: str | None, database: str | None, table: str | None) -> dict[str, Any] | None:
    """Table settings (search, sort, facets, labels) for every attached mirror."""
    mirrors = mirror_databases(datasette)
    if not mirrors:
        return None
    cached = getattr(datasette, "_yts_metadata", None)
    if cached is None or cached[0] is not mirrors:
        cached = (mirrors, build_metadata(datasette, mirrors))
        datasette._yts_metadata = cached
    return fresh_copy(cached[1])  # Datasette merges into and annotates what it is given


def build_metadata(datasette: Any, mirrors: dict[str, MirrorFile]) -> dict[str, Any]:
    """The instance metadata for the attached mirrors."""
    databases = {}
    for name, info in mirrors.items():
        meta = fresh_copy(METADATA["database"])
        if info.views:
            meta["description_html"] = meta["description_html"].format(catalog=datasette.urls.table(name, CATALOG))
        else:
            del meta["description_html"], meta["tables"][CATALOG], meta["tables"][SEARCH]
        databases[name] = meta
    return {"title": METADATA["title"], "databases": databases}


def fresh_copy(value: Any) -> Any:
    """A copy of nested dicts and lists of JSON values (faster than copy.deepcopy)."""
    if isinstance(value, dict):
        return {key: fresh_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [fresh_copy(item) for item in value]
    return value


@hookimpl
def canned_queries(datasette: Any, database: str, actor: Any) -> dict[str, Any] | None:
    """The canned queries of a mirror (fresh dicts: Datasette adds keys to them)."""
    return fresh_copy(QUERIES) if is_mirror(datasette, database) else None


@hookimpl
def register_facet_classes() -> list[type]:
    """Genre and quality facets counted from movie_genres and torrents; one-pass year, language and MPA facets."""
    from .datasette_facets import GenreFacet, QualityFacet, ValueFacet

    return [GenreFacet, QualityFacet, ValueFacet]


@hookimpl(tryfirst=True)  # before Datasette's own ?_through= filter, which fails on bad JSON
def filters_from_request(request: Any, database: str, table: str, datasette: Any) -> Any:
    """?_genre=, ?_quality= and the ranked ?_search= of the movie_search view; bad parameters refused."""
    if not is_mirror(datasette, database):
        return None

    async def inner() -> Any:
        await refuse_bad_parameters(datasette, request, database, table)
        if table not in render.MOVIE_TABLES:
            return None
        from .datasette_facets import filter_arguments

        return filter_arguments(request.args, search_view=table == SEARCH)

    return inner


@hookimpl(specname="filters_from_request", trylast=True)
def search_box(request: Any, database: str, table: str, datasette: Any) -> Any:
    """Show the search box on movie_search, after Datasette's own filter hid it (the view has no fts_table)."""
    from datasette.filters import FilterArguments

    if table != SEARCH or not is_mirror(datasette, database):
        return None
    return FilterArguments([], extra_context={"supports_search": True})


async def refuse_bad_parameters(datasette: Any, request: Any, database: str, table: str) -> None:
    """Raise a 400 for the URL parameters Datasette 0.65's table pages answer with a 500 (and a traceback)."""
    from datasette.utils.asgi import BadRequest

    args = request.args
    if any("\x00" in key or any("\x00" in value for value in args.getlist(key)) for key in args):
        raise BadRequest("a URL parameter holds a NUL character")
    db = datasette.get_database(database)
    if args.get("_next") and not is_integer(args["_next"]) and table in await db.view_names():
        raise BadRequest(f"_next must be a row offset here, not {args['_next']!r}")  # a view pages by offset
    for through in args.getlist("_through"):
        if problem := await through_problem(db, table, through):
            raise BadRequest(f"_through {problem}")
    sorts = [args[key] for key in ("_sort", "_sort_desc") if args.get(key)]
    if len(sorts) == 2:
        raise BadRequest("use _sort or _sort_desc, not both")
    if sorts and sorts[0] not in await sortable_columns(datasette, db, table):
        raise BadRequest(f"cannot sort {table} by {sorts[0]!r}")


async def sortable_columns(datasette: Any, db: Any, table: str) -> set[str]:
    """What Datasette lets a page sort by: the metadata's sortable_columns or every column, and a bare table's rowid."""
    configured = datasette.table_metadata(db.name, table).get("sortable_columns")
    columns = set(configured if configured is not None else await db.table_columns(table))
    if table not in await db.view_names() and not await db.primary_keys(table):
        columns.add("rowid")
    return columns


async def through_problem(db: Any, table: str, text: str) -> str | None:
    """What is wrong with one ?_through= value on `table`'s page, or None."""
    try:
        through = json.loads(text)
    except ValueError:
        through = None
    if not (isinstance(through, dict) and isinstance(through.get("table"), str) and isinstance(through.get("column"), str)
            and "value" in through and bindable(through["value"])):
        return 'must be a JSON object {"table": "...", "column": "...", "value": ...} with a scalar value'
    other, column = through["table"], through["column"]
    if other not in await db.table_names() or column not in await db.table_columns(other):
        return f"names no column {column!r} of a table {other!r}"
    if not any(key["other_table"] == table for key in await db.foreign_keys_for_table(other)):
        return f"table {other!r} has no foreign key to {table}"
    return None


NUMERIC_LOOKUPS = ("gt", "gte", "lt", "lte")  # Datasette binds their all-digit values as integers


def filter_problem(key: str, value: str) -> str | None:
    """What is wrong with one ?column__lookup=value filter that Datasette would answer with a 500, or None."""
    lookup = key.rsplit("__", 1)[1] if "__" in key else "exact"
    if lookup in ("in", "notin") and value.startswith("["):
        try:
            values = json.loads(value)
        except ValueError:
            values = None
        if not (isinstance(values, list) and all(bindable(item) for item in values)):
            return f"{key} takes a comma-separated list or a JSON list of scalars, not {value!r}"
    if lookup in NUMERIC_LOOKUPS and value.isdigit() and not is_integer(value):
        return f"{key} takes a 64-bit integer, not {value!r}"
    return None


def filters_problem(args: list[tuple[str, str]]) -> str | None:
    """The first column filter (what Datasette reads before any hook) it would fail on, or None."""
    for key, value in args:
        if (not key.startswith("_") or "__" in key) and (problem := filter_problem(key, value)):
            return problem
    return None


def timelimit_problem(value: str) -> str | None:
    """What is wrong with a ?_timelimit= value (Datasette's int() of it fails with a 500), or None."""
    if value and not (value.isdigit() and is_integer(value)):
        return f"_timelimit must be a number of milliseconds, not {value!r}"
    return None


async def page_of(datasette: Any, path: str) -> tuple[Any, str, list[str]] | None:
    """The database, table (or view) and row key of a table, view or row page's path, if it is one."""
    from datasette.utils import tilde_decode

    base = datasette.setting("base_url")
    parts = path[len(base):].split("/") if path.startswith(base) else []
    if len(parts) not in (2, 3) or not all(parts):
        return None
    route, table = tilde_decode(parts[0]), tilde_decode(parts[1].split(".")[0] if len(parts) == 2 else parts[1])
    db = next((db for db in datasette.databases.values() if db.route == route), None)
    if db is None or not (await db.table_exists(table) or table in await db.view_names()):
        return None
    return db, table, parts[2].split(".")[0].split(",") if len(parts) == 3 else []


async def early_error(datasette: Any, scope: dict[str, Any]) -> Exception | None:
    """A 4xx for what Datasette answers with a 500 before any table hook runs."""
    from datasette.utils.asgi import BadRequest, NotFound

    args = parse_qsl(scope.get("query_string", b"").decode("utf-8", "replace"), keep_blank_values=True)
    for key, value in args:
        if key == "_timelimit" and (problem := timelimit_problem(value)):
            return BadRequest(problem)
    problem = filters_problem(args)
    path = scope.get("path", "")
    if problem is None and path.count("/") != datasette.setting("base_url").count("/") + 2:
        return None  # not a row page: nothing more to check
    page = await page_of(datasette, path)
    if page is None:
        return None
    db, table, key = page
    if key and len(key) != len(await db.primary_keys(table) or ["rowid"]):
        return NotFound("Record not found")  # Datasette fails on a key with too few values
    return BadRequest(problem) if problem and not key else None


async def send_error(datasette: Any, scope: dict[str, Any], receive: Any, send: Any, error: Exception) -> None:
    """Answer with Datasette's own error page (or JSON) for a 4xx `error`."""
    from datasette.handle_exception import handle_exception as datasette_default
    from datasette.utils.asgi import Request

    response = await datasette_default(datasette, Request(scope, receive), error)()
    await response.asgi_send(send)


def bindable(value: object) -> bool:
    """Whether SQLite takes a JSON value as a parameter: null, text, a float, a boolean or a 64-bit integer."""
    return value is None or isinstance(value, (str, float)) or isinstance(value, int) and value in SQLITE_INT_RANGE


def is_integer(text: str) -> bool:
    """Whether `text` is a whole number SQLite can take (64 bits)."""
    try:
        return int(text) in SQLITE_INT_RANGE
    except ValueError:
        return False


@hookimpl(trylast=True)  # after Datasette's own, whose escape_fts this replaces
def prepare_connection(conn: sqlite3.Connection, database: str, datasette: Any) -> None:
    """Read mirror pages through mmap with a larger cache (facets revisit thousands of rows); a safe escape_fts."""
    if is_mirror(datasette, database):
        conn.execute("PRAGMA cache_size = -32000")
        conn.execute("PRAGMA mmap_size = 1073741824")
        conn.create_function("escape_fts", 1, escape_fts, deterministic=True)


def escape_fts(query: str) -> str:
    """Datasette's escape_fts, but never '' (of a lone quote, say), which MATCH refuses: '""' matches nothing."""
    from datasette.utils import escape_fts as datasette_escape_fts

    return datasette_escape_fts(query) or '""'


# ---- plugin hooks: rendering ---------------------------------------------------------------

@hookimpl
def render_cell(row: Any, value: Any, column: str, table: str | None, database: str, datasette: Any) -> Any:
    """Covers, linked titles, removed markers, magnet links and readable numbers."""
    if value is None or not is_mirror(datasette, database):
        return None
    return render.render_value(column, value, row, table, movie_url(datasette, database))


def movie_url(datasette: Any, database: str) -> render.RowUrl:
    """A function giving the page of a movie id."""
    return lambda movie_id: datasette.urls.row(database, "movies", str(movie_id))


@hookimpl
def extra_template_vars(template: str, database: str | None, table: str | None, columns: Any, view_name: str,
                        request: Any, datasette: Any) -> Callable[[], Awaitable[dict[str, Any]]] | None:
    """The torrents, cast, suggestions, reviews and guides of a movie page."""
    if (view_name != "row" or table != "movies" or request is None or database is None
            or not is_mirror(datasette, database)):
        return None

    async def movie_vars() -> dict[str, Any]:
        from datasette.utils import urlsafe_components

        from .datasette_pages import movie_page

        try:
            movie_id = int(urlsafe_components(request.url_vars["pks"])[0])
        except (KeyError, IndexError, ValueError):
            return {}
        page = await movie_page(datasette.get_database(database), movie_id, movie_url(datasette, database),
                                datasette.urls.table(database, CATALOG))
        return {"yts_movie": page}

    return movie_vars


@hookimpl
def prepare_jinja2_environment(env: Any, datasette: Any) -> None:
    """Serve the movie page and catalog templates for mirror databases only."""
    from jinja2 import ChoiceLoader

    from .datasette_pages import MirrorTemplates, catalog_rows

    env.loader = ChoiceLoader([env.loader, MirrorTemplates(lambda: mirror_databases(datasette))])
    env.filters["yts_catalog_rows"] = catalog_rows


# ---- plugin hooks: search redirects ------------------------------------------------------------

@hookimpl(tryfirst=True)
def handle_exception(datasette: Any, request: Any, exception: Exception) -> Any:
    """A query over its time limit is the request's fault (400), on CSV exports too, where Datasette says 500."""
    from datasette.database import QueryInterrupted
    from datasette.handle_exception import handle_exception as datasette_default
    from datasette.views.base import DatasetteError

    if not isinstance(exception, QueryInterrupted):
        return None
    message = "SQL query took too long; narrow it down, or raise ?_timelimit= up to the server's sql_time_limit_ms"
    return datasette_default(datasette, request, DatasetteError(message, title="SQL Interrupted", status=400))


@hookimpl
def asgi_wrapper(datasette: Any) -> Callable[[Any], Any]:
    """Refuse what Datasette would answer with a 500; send HTML searches to movie_search, bare visits to the catalog."""
    from .api import is_api_path

    def wrap(app: Any) -> Any:
        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope.get("type") != "http" or is_api_path(datasette, scope):
                await app(scope, receive, send)
                return
            if scope.get("method") not in ("GET", "HEAD"):  # Datasette 0.65 answers POST to a table with a 500
                await send_status(send, 405, [(b"allow", b"GET, HEAD")])
                return
            token = TIEBREAK.set(await sort_tiebreak(datasette, scope))
            try:
                await serve_page(datasette, app, scope, receive, send)
            finally:
                TIEBREAK.reset(token)

        return wrapped

    return wrap


@dataclass(frozen=True)
class Tiebreak:
    """The key a sorted table page's ORDER BY lacks: Datasette 0.65 adds it only from the second page on.

    So rows tied on the sort column came in the index's order on the first page (descending keys
    for a descending sort) and in key order after it, and keyset paging skipped or repeated them.
    """

    database: str
    table_sql: str  # the table name as Datasette writes it in SQL
    keys_sql: str

    def apply(self, sql: str) -> str:
        """`sql` with the key after its lone sort column, if it is the page's own query of this table."""
        head, found, tail = sql.rpartition(" order by ")
        order, limited, limit = tail.rpartition(" limit ")
        if not (found and limited and limit.isdigit()) or "," in order or " group by " in head:
            return sql
        if not (head.startswith("select ") and f" from {self.table_sql} " in f"{head} "):
            return sql
        return f"{head} order by {order}, {self.keys_sql} limit {limit}"


SORT_KEYS = ("sort", "sort_desc")  # in table metadata
TIEBREAK: contextvars.ContextVar[Tiebreak | None] = contextvars.ContextVar("yts_mirror_tiebreak", default=None)


async def sort_tiebreak(datasette: Any, scope: dict[str, Any]) -> Tiebreak | None:
    """The Tiebreak of the first page of a mirror table sorted by a column, else None."""
    from datasette.utils import escape_sqlite

    args = dict(parse_qsl(scope.get("query_string", b"").decode("utf-8", "replace"), keep_blank_values=True))
    if "_next" in args:
        return None
    page = await page_of(datasette, scope.get("path", ""))
    if page is None or page[2] or not is_mirror(datasette, page[0].name):
        return None
    db, table, _ = page
    metadata = datasette.table_metadata(db.name, table)  # its default sort, where the URL names none
    by_column = any(args.get(key) for key in ("_sort", "_sort_desc")) or any(metadata.get(key) for key in SORT_KEYS)
    if not by_column or table in await db.view_names():
        return None  # sorted by its key alone, or a view, which pages by offset
    keys = ", ".join(escape_sqlite(key) for key in await db.primary_keys(table)) or "rowid"
    return Tiebreak(db.name, escape_sqlite(table), keys)


@hookimpl
def startup(datasette: Any) -> None:
    """Give each sorted table page's first query its key (see Tiebreak)."""
    from datasette.database import Database

    if getattr(Database.execute, "yts_mirror_tiebreak", False):
        return
    execute = Database.execute

    async def execute_with_tiebreak(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        tiebreak = TIEBREAK.get()
        if tiebreak is not None and tiebreak.database == self.name:
            sql = tiebreak.apply(sql)
        return await execute(self, sql, *args, **kwargs)

    execute_with_tiebreak.yts_mirror_tiebreak = True  # type: ignore[attr-defined]
    Database.execute = execute_with_tiebreak


async def serve_page(datasette: Any, app: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer a page request: a 4xx where Datasette would fail, a redirect, or Datasette's page."""
    error = await early_error(datasette, scope)
    if error is not None:
        await send_error(datasette, scope, receive, send, error)
        return
    target = redirect_target(datasette, scope)
    if target is None:
        await app(scope, receive, send)
        return
    await send_status(send, 302, [(b"location", target.encode("utf-8"))])


async def send_status(send: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    """Answer with an empty body."""
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def redirect_target(datasette: Any, scope: dict[str, Any]) -> str | None:
    """Where a GET of a mirror's movies, catalog or search page should go instead, if anywhere."""
    base = datasette.setting("base_url")
    path = scope.get("path", "")
    if not path.startswith(base):
        return None
    parts = path[len(base):].split("/")
    if len(parts) != 2 or parts[1] not in render.MOVIE_TABLES:
        return None
    name = database_for_route(datasette, parts[0])
    if name is None:
        return None
    args = parse_qsl(scope.get("query_string", b"").decode("utf-8", "replace"), keep_blank_values=True)
    table = next_table(parts[1], args)
    if table is None:
        return None
    query = urlencode(redirect_args(table, args))
    return datasette.urls.table(name, table) + (f"?{query}" if query else "")


def redirect_args(target: str, args: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The query args to carry to `target`: the page restarts, and the view's default sort applies."""
    descending = any(key == "_sort_by_desc" and value for key, value in args)  # the sort form's checkbox

    def source_default(key: str, value: str) -> bool:  # search ranks; the catalog lists newest uploads first
        if target == CATALOG:
            return value in ("", "rank")
        return value == "" or (value == "date_uploaded_unix" and (key == "_sort_desc" or descending))

    drop = {"_next"} | ({"_search", "_searchmode"} if target == CATALOG else set())
    if all(source_default(key, value) for key, value in args if key in ("_sort", "_sort_desc")):
        drop |= SORT_ARGS
    return [(key, value) for key, value in args if key not in drop]


def database_for_route(datasette: Any, route: str) -> str | None:
    """The mirror (with its browsing views) served at a URL route (tilde-encoded, as Datasette writes it)."""
    from datasette.utils import tilde_decode

    route = tilde_decode(route)
    for name, info in mirror_databases(datasette).items():
        if info.views and datasette.databases[name].route == route:
            return name
    return None


def next_table(table: str, args: list[tuple[str, str]]) -> str | None:
    """The table a request for `table` with `args` should be redirected to, if any."""
    searching = any(key == "_search" and value.strip() for key, value in args)
    if table == SEARCH:
        return None if searching else CATALOG
    if not searching:
        return CATALOG if table == "movies" and not args else None
    if table == "movies" and not all(catalog_arg(key, value) for key, value in args):
        return None
    return SEARCH


def catalog_arg(key: str, value: str) -> bool:
    """True if a movies-table query arg means the same on the catalog and search views."""
    if key in SORT_ARGS and key != "_sort_by_desc":
        return value in CATALOG_COLUMNS or not value
    if key.startswith("_filter_column"):
        return value in CATALOG_COLUMNS or not value
    return key in SEARCH_ARGS or key in SORT_ARGS or key.startswith("_filter_") or key.split("__")[0] in CATALOG_COLUMNS
