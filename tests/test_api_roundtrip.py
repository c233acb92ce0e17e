"""Round trip (issue 6): a mirror synced from another mirror's API holds the same data.

Mirror A is synced (with enrichment) from the simulator and served by `yts-mirror serve` over
real HTTP; mirror B is synced, with enrichment, from A's API with `yts-mirror sync --base-url`.
A and B must hold identical movies, torrents, genres, cast, suggestions, reviews and parental
guides (bookkeeping timestamps aside).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from mirror.cli import cli
from mirror.fakeapi import Catalog, FakeYTS
from support import free_port

MOVIES, SEED = 300, 21
BOOKKEEPING = {"first_seen_at", "last_seen_at"}
TABLES = {  # table: ORDER BY that makes the comparison deterministic
    "movies": "id",
    "torrents": "hash",
    "movie_genres": "movie_id, genre",
    "movie_cast": "movie_id, position",
    "movie_suggestions": "movie_id, position",
    "movie_reviews": "movie_id, position",
    "movie_parental_guides": "movie_id, position",
}


def sync(path: Path, url: str) -> None:
    """`yts-mirror sync` with enrichment, failing the test on a non-zero exit."""
    result = CliRunner().invoke(cli, ["-q", "sync", "--db", str(path), "--base-url", url, "--rate", "0",
                                      "--concurrency", "4"])
    assert result.exit_code == 0, (result.output, result.exception)


@pytest.fixture
def served_a(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Mirror A, synced from the simulator and served by `yts-mirror serve`."""
    path = tmp_path / "a.db"
    with FakeYTS(Catalog(MOVIES, SEED)) as sim:
        sync(path, sim.url)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mirror", "serve", "--db", str(path), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(server, url)
        yield path, url
    finally:
        server.terminate()
        server.wait(timeout=15)


def wait_until_serving(server: subprocess.Popen[str], url: str, timeout: float = 30) -> None:
    """Poll the API until it answers, or fail with the server's stderr."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"yts-mirror serve exited {server.returncode}: {server.stderr.read() if server.stderr else ''}")
        try:
            if requests.get(f"{url}/api/v2/list_movies.json?limit=1", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"yts-mirror serve did not answer at {url} within {timeout:.0f} s")


def rows(path: Path, table: str) -> list[tuple]:
    """A table's rows without bookkeeping columns, in a fixed order."""
    conn = sqlite3.connect(path)
    try:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})") if row[1] not in BOOKKEEPING]
        return conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {TABLES[table]}").fetchall()
    finally:
        conn.close()


def test_mirror_of_a_mirror_is_identical(served_a: tuple[Path, str], tmp_path: Path) -> None:
    a, url = served_a
    b = tmp_path / "b.db"
    sync(b, url)
    for table in TABLES:
        expected, actual = rows(a, table), rows(b, table)
        assert expected, f"{table} is empty in mirror A: the round trip would prove nothing"
        assert len(actual) == len(expected), (table, len(actual), len(expected))
        differing = [pair for pair in zip(expected, actual) if pair[0] != pair[1]]
        assert not differing, f"{table}: {len(differing)} rows differ, e.g. A {differing[0][0]} B {differing[0][1]}"
    states = "SELECT endpoint, status, COUNT(*) FROM enrich_state GROUP BY 1, 2 ORDER BY 1, 2"
    with sqlite3.connect(a) as conn_a, sqlite3.connect(b) as conn_b:
        assert conn_b.execute(states).fetchall() == conn_a.execute(states).fetchall()


def test_a_mirror_of_a_mirror_learns_its_removals(served_a: tuple[Path, str], tmp_path: Path) -> None:
    a, url = served_a
    b = tmp_path / "b.db"
    sync(b, url)
    with sqlite3.connect(a) as conn:  # A learns of two removals; its API now answers them with a 404 envelope
        gone = [row[0] for row in conn.execute("SELECT id FROM movies ORDER BY id DESC LIMIT 2 OFFSET 100")]
        conn.execute(f"UPDATE movies SET removed_at = '2026-12-05T00:00:00Z' WHERE id IN ({gone[0]}, {gone[1]})")
    with sqlite3.connect(b) as conn:  # B owes a removal check, as after a full crawl that saw the catalog move
        conn.execute("INSERT INTO sync_state (key, value) VALUES ('reconcile', '{\"since\": \"2026-12-05T00:00:00Z\"}')")
        conn.execute(f"DELETE FROM enrich_state WHERE movie_id = {gone[0]} AND endpoint = 'movie_details'")
    result = CliRunner().invoke(cli, ["-q", "enrich", "--db", str(b), "--base-url", url, "--rate", "0"])
    assert result.exit_code == 0, result.output
    sync(b, url)  # the check takes A's 404 as the answer it is: removed
    with sqlite3.connect(b) as conn:
        assert conn.execute(f"SELECT status FROM enrich_state WHERE movie_id = {gone[0]} AND endpoint = 'movie_details'"
                            ).fetchone() == ("not_found",)
        marked = {row[0] for row in conn.execute("SELECT id FROM movies WHERE removed_at IS NOT NULL")}
        assert marked == set(gone)
        assert conn.execute("SELECT COUNT(*) FROM sync_state WHERE key = 'reconcile'").fetchone() == (0,)
        assert conn.execute("SELECT warning FROM sync_runs ORDER BY id DESC LIMIT 1").fetchone() == (None,)
