#!/usr/bin/env python3
"""Where a list-only sync spends its time: a per-component breakdown of store.upsert_movies.

A diagnostic for bench_sync.py, not a test. It fetches every list page of a simulator (run in
its own process) into memory once, so no HTTP is timed, then replays the pages through
`store.upsert_movies` exactly as a first crawl's `Syncer._commit_page` does (one transaction per
page, the secondary indexes deferred to the end), then `store.record_swarm` as a completed crawl
does, into a scratch database, timing each transform call and each SQL statement. Then it
repeats the replay with every index kept up to date page by page, as a crawl into a mirror that
already holds movies does (an ablation). It only ever touches the scratch database.

    .venv/bin/python bench/sync_breakdown.py                    # 20,000 movies
    .venv/bin/python bench/sync_breakdown.py --movies 5000 --no-ablations
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sync import LIST_PARAMS, PAGE_LIMIT, Simulator, machine  # noqa: E402

from mirror import store, transform  # noqa: E402


class TimedConnection:
    """A sqlite3 connection proxy that adds each statement's time to `times`."""

    def __init__(self, conn: Any, times: collections.Counter[str]):
        self._conn = conn
        self._times = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def _timed(self, label: str, fn: Any, *args: Any) -> Any:
        started = time.process_time()
        try:
            return fn(*args)
        finally:
            self._times[label] += time.process_time() - started

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed("sql: " + label_of(sql), self._conn.execute, sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)  # build the rows outside the timed part
        return self._timed("sql: " + label_of(sql), self._conn.executemany, sql, rows)

    def commit(self) -> Any:
        return self._timed("sql: COMMIT (WAL write, FTS5 segment flush)", self._conn.commit)


def label_of(sql: str) -> str:
    words = [word for line in sql.splitlines() if not line.lstrip().startswith("--") for word in line.split()]
    if not words:
        return "?"
    if words[0].upper() == "INSERT":
        table = words[words.index("INTO") + 1] if "INTO" in words else "?"
        return f"INSERT {table}"
    if words[0].upper() == "UPDATE":
        return f"UPDATE {words[1]} SET {words[3]}"
    if words[0].upper() == "SELECT":
        table = words[words.index("FROM") + 1] if "FROM" in words else "?"
        return f"SELECT FROM {table}"
    return " ".join(words[:2])


def fetch_pages(sim: Simulator) -> list[list[dict[str, Any]]]:
    import requests

    pages = []
    with requests.Session() as session:
        for page in range(1, -(-sim.movies // PAGE_LIMIT) + 1):
            data = session.get(f"{sim.url}/api/v2/list_movies.json", params={**LIST_PARAMS, "page": page},
                               timeout=120).json()["data"]
            pages.append(transform.list_page_movies(data))
    return pages


def replay(pages: list[list[dict[str, Any]]], path: Path, defer: bool, breakdown: bool) -> tuple[float, Any]:
    """Upsert every page, one transaction each; return (cpu seconds, per-component times)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = store.open_db(path)
    times: collections.Counter[str] = collections.Counter()
    originals = {}
    if breakdown:
        db.conn = TimedConnection(db.conn, times)
        for name in ("movie_row", "torrent_rows", "genre_rows", "list_hash"):
            originals[name] = original = getattr(transform, name)

            def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
                started = time.process_time()
                try:
                    return _original(*args, **kwargs)
                finally:
                    times[f"py: transform.{_name}"] += time.process_time() - started

            setattr(transform, name, timed)
    try:
        started = time.process_time()
        started_at = store.now_iso()
        with store.indexes_deferred(db, enabled=defer):
            for movies in pages:
                with db.atomic():
                    store.upsert_movies(db, movies, store.now_iso())
        store.record_swarm(db, observed_at=started_at, seen_since=started_at)
        total = time.process_time() - started
    finally:
        for name, original in originals.items():
            setattr(transform, name, original)
        db.close()
    return total, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=20000)
    parser.add_argument("--tmpdir", default=None, help="scratch database directory (default: system temp dir)")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each ablation; the minimum is shown")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sync-breakdown-", dir=args.tmpdir))
    try:
        print(f"# sync_breakdown: {args.movies} movies; {machine()}; scratch in {workdir}")
        sim = Simulator(args.movies, workdir)
        try:
            sim.wait_ready()
            pages = fetch_pages(sim)
        finally:
            sim.stop()
        db_path = workdir / "scratch.db"
        total, times = replay(pages, db_path, defer=True, breakdown=True)
        movies = sum(len(p) for p in pages)
        print(f"\nupsert_movies over {len(pages)} pages, {movies} movies: {total:.2f}s cpu "
              f"({total / movies * 1e6:.0f} us per movie; the timers add a little)")
        nested = {"py: transform.list_hash"}  # called inside movie_row
        for label, seconds in times.most_common():
            share = "" if label in nested else f"{seconds / total * 100:5.1f}%"
            print(f"  {seconds:7.2f}s {share:>6}  {label}{'  (inside movie_row)' if label in nested else ''}")
        rest = total - sum(v for k, v in times.items() if k not in nested)
        print(f"  {rest:7.2f}s {rest / total * 100:5.1f}%  rest of upsert_movies (row dicts, lists, sqlite-utils)")

        if args.no_ablations:
            return
        ablations = {
            "as a first crawl: secondary indexes built once at the end": True,
            "as a crawl into a mirror with movies: every index kept up to date per page": False,
        }
        print(f"\nablations (scratch database only; min of {args.repeat} runs, cpu seconds):")
        base = None
        for name, defer in ablations.items():
            best = min(replay(pages, db_path, defer, breakdown=False)[0] for _ in range(args.repeat))
            base = base if base is not None else best
            print(f"  {best:7.2f}s  ({best - base:+6.2f}s)  {name}", flush=True)
        print(f"  deferred indexes: {', '.join(store.bulk_indexes())}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
