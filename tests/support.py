"""Shared test helpers: run the CLI, read a mirror, and describe the simulator's catalog the same way."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from mirror.cli import cli
from mirror.fakeapi import Catalog, FakeYTS

FAST_CONFIG = """
[api]
backoff_initial = 0.005
backoff_max = 0.05
max_attempts = 6
connect_timeout = 2
read_timeout = 5

[enrich]
pause_after = 3
"""


class ScriptedChurn(FakeYTS):
    """A simulator whose catalog changes at chosen list requests, to place a change between two reads."""

    def __init__(self, catalog: Catalog, script: dict[int, Callable[[Catalog], Any]] | None = None):
        super().__init__(catalog)
        self.script = script or {}
        self.pages_read: list[int] = []  # the page of each list request, in order

    def respond(self, endpoint: str, params: Mapping[str, str]) -> tuple[int, dict[str, str], bytes, str | None]:
        """Answer as the simulator does, noting which list page was asked for."""
        if endpoint == "list_movies":
            with self.count_lock:
                self.pages_read.append(int(params.get("page", 1)))
        return super().respond(endpoint, params)

    def rescript(self, script: dict[int, Callable[[Catalog], Any]]) -> None:
        """Count list requests from 0 again, under a new script."""
        with self.count_lock:
            self.list_requests, self.script = 0, script

    def _maybe_churn(self) -> None:
        with self.count_lock:
            self.list_requests += 1
            change = self.script.get(self.list_requests)
        if change:
            change(self.catalog)


def write_config(tmp_path: Path, extra: str = "") -> Path:
    """A config file with quick retries, for tests against the loopback simulator."""
    path = tmp_path / "config.toml"
    path.write_text(FAST_CONFIG + extra)
    return path


def free_port() -> int:
    """A loopback port nothing listens on (a host that is gone)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ENVELOPE = b'{"status":"ok","status_message":"Query was successful","data":{"movie_count":1}}'


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = ENVELOPE, **headers: str) -> None:
    """Answer with `status`, `headers` (underscores for dashes) and `body`, its length included unless given."""
    handler.send_response(status)
    headers.setdefault("Content_Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


@contextmanager
def misbehaving_server(answer: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A loopback HTTP server whose every GET `answer` writes to the socket as it likes; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            try:
                answer(self)
            except OSError:  # the client hung up
                self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_cli(args: Sequence[str], env: Mapping[str, str] | None = None) -> Result:
    """Invoke the CLI in-process, as a user would from a shell."""
    return CliRunner().invoke(cli, list(args), env=dict(env or {}), catch_exceptions=False)


STARTED: list[subprocess.Popen[str]] = []  # CLI processes of the running test, killed after it if still alive


def cli_subprocess(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
    """Start the CLI as a separate process (for kill -9 and signal tests)."""
    process = subprocess.Popen([sys.executable, "-m", "mirror", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, **kwargs)
    STARTED.append(process)
    return process


def kill_leftovers() -> None:
    """Kill the CLI processes a test started and left running (a failed test's hung child, say)."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def connect(path: Path | str) -> sqlite3.Connection:
    """A plain sqlite3 reader, as users' ad-hoc SQL would use."""
    conn = sqlite3.connect(str(path), timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def query(path: Path | str, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
    """Run one query on a fresh plain connection and return its rows."""
    conn = connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def as_int(value: Any) -> int | None:
    """Independent loose-integer reading, to check the mirror against the catalog."""
    if value in (None, ""):
        return None
    return int(float(value))


def catalog_movies(catalog: Catalog) -> dict[int, dict[str, Any]]:
    """The catalog's present movies as comparable dicts."""
    with catalog.lock:
        return {movie_id: describe_movie(catalog.movies[movie_id]) for movie_id in catalog.order}


def describe_movie(movie: Mapping[str, Any]) -> dict[str, Any]:
    """The facts of one list movie that the mirror must reproduce."""
    return {
        "title": movie.get("title"),
        "year": as_int(movie.get("year")),
        "rating": float(movie["rating"]),
        "runtime": as_int(movie.get("runtime")),
        "imdb_code": movie.get("imdb_code"),
        "genres": sorted(movie.get("genres") or []),
        "torrents": {
            t["hash"].upper(): (t["quality"], as_int(t["seeds"]), as_int(t["peers"]), as_int(t["size_bytes"]),
                                as_int(t.get("is_repack")), as_int(t.get("bit_depth")))
            for t in movie["torrents"]
        },
    }


def mirror_movies(db_path: Path | str, include_removed: bool = False) -> dict[int, dict[str, Any]]:
    """The mirror's movies in the same shape as catalog_movies."""
    conn = connect(db_path)
    where = "" if include_removed else "WHERE removed_at IS NULL"
    movies = {row["id"]: dict(row) for row in conn.execute(f"SELECT * FROM movies {where}")}
    genres: dict[int, list[str]] = {}
    for movie_id, genre in conn.execute("SELECT movie_id, genre FROM movie_genres ORDER BY genre"):
        genres.setdefault(movie_id, []).append(genre)
    torrents: dict[int, dict[str, tuple]] = {}
    for t in conn.execute("SELECT * FROM torrents WHERE removed_at IS NULL"):
        torrents.setdefault(t["movie_id"], {})[t["hash"]] = (
            t["quality"], t["seeds"], t["peers"], t["size_bytes"], t["is_repack"], t["bit_depth"])
    conn.close()
    return {
        movie_id: {
            "title": row["title"], "year": row["year"], "rating": row["rating"], "runtime": row["runtime"],
            "imdb_code": row["imdb_code"], "genres": genres.get(movie_id, []), "torrents": torrents.get(movie_id, {}),
        }
        for movie_id, row in movies.items()
    }


def assert_mirror_equals_catalog(db_path: Path | str, catalog: Catalog) -> None:
    """Every present movie, genre and torrent equals the catalog; nothing extra is present."""
    expected = catalog_movies(catalog)
    actual = mirror_movies(db_path)
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing, f"{len(missing)} catalog movies missing from the mirror, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} movies present in the mirror but not upstream, e.g. {extra[:5]}"
    wrong = [movie_id for movie_id in expected if expected[movie_id] != actual[movie_id]]
    assert not wrong, f"{len(wrong)} movies differ, e.g. {wrong[0]}: {expected[wrong[0]]} != {actual[wrong[0]]}"


def integrity_ok(db_path: Path | str) -> bool:
    """PRAGMA integrity_check says ok, and the full-text index matches the movies table."""
    conn = sqlite3.connect(str(db_path))
    try:
        if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            return False
        try:  # rank 1: compare the index with the external content, row by row
            conn.execute("INSERT INTO movies_fts (movies_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError:
            return False
        return True
    finally:
        conn.close()


def last_run(db_path: Path | str) -> dict[str, Any]:
    """The newest sync_runs row."""
    return dict(query(db_path, "SELECT * FROM sync_runs ORDER BY id DESC LIMIT 1")[0])


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def sync_args(db_path: Path | str, url: str, config: Path | str, *extra: str) -> list[str]:
    """`yts-mirror sync` arguments for a loopback simulator: no rate limit, no enrichment."""
    return ["sync", "--db", str(db_path), "--base-url", url, "--rate", "0", "--config", str(config), "--no-enrich",
            *extra]


def wait_for_page(db_path: Path | str, page: int) -> None:
    """Wait until a running crawl has committed every page before `page`."""
    wait_for(lambda: (checkpoint(db_path) or {}).get("next_page", 0) >= page)


def checkpoint(db_path: Path | str) -> dict[str, Any] | None:
    """The crawl checkpoint, read without disturbing a running writer."""
    if not os.path.exists(db_path):
        return None
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT value FROM sync_state WHERE key = 'crawl'").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return None
    return json.loads(row[0]) if row else None
