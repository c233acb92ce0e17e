"""Benchmark browsing a 70,000-movie mirror with `yts-mirror serve` (issue 5). Prints figures; not a test.

    .venv/bin/python bench/bench_serve.py                       # build (or reuse) the mirror, serve it, measure
    .venv/bin/python bench/bench_serve.py --db /tmp/bench-serve.db --movies 70000 --rounds 40

The mirror is synthesized, not crawled: the simulator's catalog (mirror.fakeapi.Catalog) is
written with store.upsert_movies (the rows `yts-mirror sync --no-enrich` writes) and every movie's
simulated movie_details goes through enrich.write_movie (the cast and cast_names enrichment
writes). A real 70k sync over loopback gives the same rows but takes far longer.

The mirror is then served by `yts-mirror serve` in a subprocess and each page is fetched over
HTTP (keep-alive, one client) until --rounds answers are in; the HTML pages include every facet.
Targets: a search page under 100 ms at p50, a faceted catalog page under 300 ms at p50.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

import httpx

from mirror import store
from synthetic import build_mirror  # noqa: E402 - bench/ is on sys.path



def start_server(path: Path) -> tuple[subprocess.Popen[str], str]:
    """Run `yts-mirror serve` on a free port; return the process and its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "mirror", "serve", "--db", str(path), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline() if proc.stderr else ""
    if " at http://" not in line:
        proc.kill()
        raise SystemExit(f"serve did not start: {line}")
    url = line.split(" at ", 1)[1].split()[0]
    return proc, url.rsplit("/", 2)[0]


def measure(client: httpx.Client, paths: Callable[[int], str], rounds: int) -> list[float]:
    """Fetch rounds pages (after two warm-up loads); return the latencies in milliseconds."""
    for i in range(2):
        client.get(paths(i))
    times = []
    for i in range(rounds):
        path = paths(i)
        started = time.perf_counter()
        response = client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"{path}: HTTP {response.status_code}: {response.text[:300]}")
        times.append(elapsed)
    return times


def report(label: str, times: list[float], target: float | None = None) -> None:
    """Print p50 and p95 of one page kind."""
    p50 = statistics.median(times)
    p95 = statistics.quantiles(times, n=20)[18] if len(times) >= 20 else max(times)
    verdict = "" if target is None else (f"  (target p50 < {target:.0f} ms: {'met' if p50 < target else 'MISSED'})")
    print(f"{label:55} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  min {min(times):6.1f} ms{verdict}", flush=True)


def cycle(items: Iterable[str]) -> Callable[[int], str]:
    """Round-robin over a fixed list of paths."""
    values = list(items)
    return lambda i: values[i % len(values)]


def sample_terms(path: Path, seed: int) -> tuple[list[str], list[str], list[int], list[str], list[int]]:
    """Actor names, two-word title phrases, years, genres and movie ids taken from the mirror."""
    import sqlite3

    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    actors = [r[0] for r in conn.execute("SELECT DISTINCT name FROM movie_cast WHERE name IS NOT NULL LIMIT 2000")]
    titles = [r[0] for r in conn.execute("SELECT title FROM movies ORDER BY id LIMIT 2000")]
    years = [r[0] for r in conn.execute("SELECT DISTINCT year FROM movies WHERE year IS NOT NULL")]
    genres = [r[0] for r in conn.execute("SELECT DISTINCT genre FROM movie_genres")]
    ids = [r[0] for r in conn.execute("SELECT id FROM movies ORDER BY random() LIMIT 40")]
    conn.close()
    phrases = [" ".join(t.split()[-2:]) for t in titles if t and len(t.split()) >= 2]
    return rng.sample(actors, 40), rng.sample(phrases, 40), rng.sample(years, 40), genres, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="/tmp/bench-serve-70k.db", help="mirror file (built if missing)")
    parser.add_argument("--movies", type=int, default=70000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=40, help="answers measured per page kind")
    parser.add_argument("--rebuild", action="store_true", help="build the mirror even if the file exists")
    args = parser.parse_args()
    path = Path(args.db)
    if args.rebuild or not path.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        print(f"building a {args.movies}-movie mirror at {path} ...", flush=True)
        print(f"built in {build_mirror(path, args.movies, args.seed):.0f} s", flush=True)
    actors, phrases, years, genres, ids = sample_terms(path, args.seed)
    proc, base = start_server(path)
    db = path.stem
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            count = client.get(f"/{db}/movie_catalog.json?_size=1").json()["filtered_table_rows_count"]
            print(f"{count} movies in {path} ({store.database_size(path) / 2**20:.0f} MiB), served at {base}")
            print(f"{args.rounds} answers per line; HTML pages with all five facets (genre, year, quality, "
                  f"language, mpa_rating); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
            search = f"/{db}/movie_search?_search="
            report("search page: an actor's name", measure(client, cycle(search + quote(a) for a in actors),
                                                            args.rounds), 100)
            report("search page: a two-word title phrase", measure(client, cycle(search + quote(p) for p in phrases),
                                                                    args.rounds), 100)
            report("search page: one common word (~20% of movies match)",
                   measure(client, cycle(search + w for w in ("detective", "heist", "ghost", "dragon")), args.rounds))
            catalog = f"/{db}/movie_catalog"
            report("faceted catalog page: all movies, newest first", measure(client, cycle([catalog]), args.rounds),
                   300)
            report("faceted catalog page: one genre selected",
                   measure(client, cycle(f"{catalog}?_genre={quote(g)}" for g in genres), args.rounds), 300)
            report("faceted catalog page: one year selected",
                   measure(client, cycle(f"{catalog}?year={y}" for y in years), args.rounds), 300)
            report("faceted catalog page: one quality selected",
                   measure(client, cycle(f"{catalog}?_quality={q}" for q in ("720p", "1080p", "2160p", "3D")),
                           args.rounds), 300)
            report("faceted catalog page: genre + quality + language",
                   measure(client, cycle(f"{catalog}?_genre={quote(g)}&_quality=1080p&language=en" for g in genres),
                           args.rounds), 300)
            report("movie page", measure(client, cycle(f"/{db}/movies/{i}" for i in ids),
                                         args.rounds))
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
