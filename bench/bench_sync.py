#!/usr/bin/env python3
"""Benchmark: list-only sync of a simulated catalog against two baselines (issue 2).

This is a benchmark script, not a test: it prints figures. In one run, against one simulator
running in its own process (so it does not share a GIL with what is measured), it times:

  floor      fetch + JSON-decode every list page with requests.Session, nothing else
  naive      fetch, decode, insert movies/torrents/genres with plain sqlite3 executemany,
             one commit per page, sqlite3 defaults (rollback journal, synchronous=FULL)
  naive_wal  the same script with the pragmas our store uses (WAL, synchronous=NORMAL)
  ours       `yts-mirror sync --no-enrich --rate 0 --db <tmp>`

Every variant runs as a fresh child process; wall time is measured from spawn to exit (so
each pays its own interpreter start-up and imports); CPU time comes from os.wait4's rusage
of that child (its page reader process included), and peak RSS is the larger of that rusage's
and the peak sum of the RSS of the child and its own children, sampled every 20 ms (ours
reads pages ahead in a second process). The variants are interleaved over --rounds rounds, in a
rotating order, and the medians are reported, because the machine is shared and noisy.
Then our sync's peak RSS is measured again against a simulator of each --rss-sizes size.

    .venv/bin/python bench/bench_sync.py                       # 20,000 movies, 3 rounds
    .venv/bin/python bench/bench_sync.py --movies 5000 --rounds 1 --rss-sizes ''
    .venv/bin/python bench/bench_sync.py --profile /tmp/sync.prof   # + one cProfile'd sync
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
YTS_MIRROR = str(BIN / "yts-mirror") if (BIN / "yts-mirror").exists() else shutil.which("yts-mirror") or "yts-mirror"
PAGE_LIMIT = 50
LIST_PARAMS = {"limit": PAGE_LIMIT, "sort_by": "date_added", "order_by": "desc"}
VARIANTS = ("floor", "naive", "naive_wal", "ours")
TARGET_OURS_FLOOR = 2.0
TARGET_OURS_NAIVE = 1.0
TARGET_RSS_MB = 100.0
TARGET_RSS_SPREAD = 0.15


# ---- the simulator, in its own process ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Simulator:
    """`yts-mirror fake-api` as a child process."""

    def __init__(self, movies: int, workdir: Path, extra: tuple[str, ...] = ()):
        self.movies = movies
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"fake-api-{movies}-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [YTS_MIRROR, "fake-api", "--movies", str(movies), "--port", str(self.port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir, env=clean_env(),
        )

    def wait_ready(self, timeout: float = 300) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"simulator exited with {self.proc.returncode}; see {self.log.name}")
            try:
                requests.get(self.url + "/_admin/stats", timeout=2).raise_for_status()
                return
            except requests.RequestException:
                time.sleep(0.2)
        raise SystemExit(f"simulator not ready after {timeout}s")

    def stats(self) -> dict[str, Any]:
        import requests

        return requests.get(self.url + "/_admin/stats", timeout=10).json()

    def list_requests(self) -> int:
        return int(self.stats()["requests"].get("list_movies", 0))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def clean_env() -> dict[str, str]:
    """The environment without our own config variables, so flags alone decide."""
    return {k: v for k, v in os.environ.items() if not k.startswith("YTS_MIRROR_")}


# ---- measuring one child process ----------------------------------------------------------------

def run_measured(argv: list[str], workdir: Path, label: str) -> dict[str, Any]:
    """Run `argv` to completion; return wall seconds, peak RSS, CPU seconds and its output."""
    out_path, err_path = workdir / f"{label}.out", workdir / f"{label}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=workdir, env=clean_env())
        with TreeRss(proc.pid) as tree:
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed with exit code {proc.returncode}:\n{stderr[-3000:]}")
    return {
        "wall": wall,
        "rss_mb": max(usage.ru_maxrss, tree.peak_kib) / 1024,  # Linux: KiB
        "cpu": usage.ru_utime + usage.ru_stime,
        "stdout": stdout,
        "stderr": stderr,
    }


class TreeRss:
    """Samples the summed RSS of a process and its descendants in a thread; `peak_kib` is the largest sum."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval, self.peak_kib = pid, interval, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeRss:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _sample(self) -> None:
        while not self.done.wait(self.interval):
            self.peak_kib = max(self.peak_kib, sum(rss_kib(pid) for pid in descendants(self.pid)))


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, from /proc's children lists."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                pass
    return found


def rss_kib(pid: int) -> int:
    """A live process's resident set size in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---- the baselines (run as `bench_sync.py --worker NAME ...` child processes) ------------------

MOVIE_FIELDS = (
    "id", "imdb_code", "title", "title_english", "title_long", "slug", "url", "year", "rating", "runtime",
    "summary", "description_full", "synopsis", "yt_trailer_code", "language", "mpa_rating",
    "background_image", "background_image_original", "small_cover_image", "medium_cover_image",
    "large_cover_image", "state", "date_uploaded", "date_uploaded_unix",
)
TORRENT_FIELDS = (
    "hash", "url", "quality", "type", "is_repack", "video_codec", "bit_depth", "audio_channels", "seeds",
    "peers", "size", "size_bytes", "date_uploaded", "date_uploaded_unix",
)


def worker(name: str, url: str, pages: int, db_path: str | None) -> None:
    """The floor and the naive script. Prints one JSON line with its own timings."""
    import requests

    started = time.perf_counter()
    session = requests.Session()
    conn = None
    if name.startswith("naive"):
        conn = sqlite3.connect(db_path)
        if name == "naive_wal":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"CREATE TABLE IF NOT EXISTS movies ({', '.join(MOVIE_FIELDS)}, raw, PRIMARY KEY (id))")
        conn.execute(f"CREATE TABLE IF NOT EXISTS torrents ({', '.join(TORRENT_FIELDS)}, movie_id, PRIMARY KEY (hash))")
        conn.execute("CREATE TABLE IF NOT EXISTS genres (movie_id, genre, PRIMARY KEY (movie_id, genre))")
        conn.commit()
    movie_sql = (f"INSERT OR REPLACE INTO movies ({', '.join(MOVIE_FIELDS)}, raw) "
                 f"VALUES ({', '.join('?' * (len(MOVIE_FIELDS) + 1))})")
    torrent_sql = (f"INSERT OR REPLACE INTO torrents ({', '.join(TORRENT_FIELDS)}, movie_id) "
                   f"VALUES ({', '.join('?' * (len(TORRENT_FIELDS) + 1))})")
    genre_sql = "INSERT OR IGNORE INTO genres (movie_id, genre) VALUES (?, ?)"

    movies_seen = requests_sent = 0
    page = 1
    while page <= pages:
        response = session.get(f"{url}/api/v2/list_movies.json", params={**LIST_PARAMS, "page": page}, timeout=60)
        requests_sent += 1
        response.raise_for_status()
        movies = response.json()["data"].get("movies") or []
        movies_seen += len(movies)
        if conn is not None:
            conn.executemany(movie_sql, [
                (*(m.get(f) for f in MOVIE_FIELDS), json.dumps(m)) for m in movies])
            conn.executemany(torrent_sql, [
                (*(t.get(f) for f in TORRENT_FIELDS), m["id"]) for m in movies for t in m.get("torrents") or []])
            conn.executemany(genre_sql, [(m["id"], g) for m in movies for g in m.get("genres") or []])
            conn.commit()
        if not movies:
            break
        page += 1
    if conn is not None:
        conn.close()
    print(json.dumps({"movies": movies_seen, "requests": requests_sent, "inner": time.perf_counter() - started}))


# ---- one measured run of each variant ------------------------------------------------------------

def measure(variant: str, sim: Simulator, workdir: Path, label: str) -> dict[str, Any]:
    pages = -(-sim.movies // PAGE_LIMIT)
    db = workdir / f"{label}.db"
    before = sim.list_requests()
    if variant == "ours":
        argv = [YTS_MIRROR, "sync", "--no-enrich", "--rate", "0", "--db", str(db), "--base-url", sim.url]
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--url", sim.url,
                "--pages", str(pages), "--db", str(db)]
    result = run_measured(argv, workdir, label)
    result["requests"] = sim.list_requests() - before
    if variant == "ours":
        conn = sqlite3.connect(db)
        result["movies"] = conn.execute("SELECT COUNT(*) FROM movies").fetchone()[0]
        started, finished, status = conn.execute(
            "SELECT started_at, finished_at, status FROM sync_runs ORDER BY id DESC LIMIT 1").fetchone()
        conn.close()
        if status != "ok":
            raise SystemExit(f"our sync ended with status {status}")
        result["inner"] = iso_seconds(finished) - iso_seconds(started)
        result["summary"] = result["stderr"].strip().splitlines()[-1] if result["stderr"].strip() else ""
    else:
        result.update(json.loads(result["stdout"].strip().splitlines()[-1]))
    if result["movies"] != sim.movies:
        raise SystemExit(f"{label}: got {result['movies']} movies, expected {sim.movies}")
    size = sum(p.stat().st_size for p in workdir.glob(f"{label}.db*"))
    result["db_mb"] = size / 2**20
    for path in workdir.glob(f"{label}.db*"):
        path.unlink()
    result["movies_per_s"] = result["movies"] / result["wall"]
    return result


def iso_seconds(text: str) -> float:
    from datetime import datetime

    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def warm(sim: Simulator) -> float:
    """One throwaway pass over every page: the simulator encodes each movie lazily, once."""
    import requests

    started = time.perf_counter()
    with requests.Session() as session:
        for page in range(1, -(-sim.movies // PAGE_LIMIT) + 2):
            data = session.get(f"{sim.url}/api/v2/list_movies.json", params={**LIST_PARAMS, "page": page},
                               timeout=120).json()["data"]
            if not data.get("movies"):
                break
    return time.perf_counter() - started


def startup_seconds(workdir: Path) -> float:
    """How long `yts-mirror --version` takes: the fixed cost inside our wall time."""
    runs = [run_measured([YTS_MIRROR, "--version"], workdir, "startup")["wall"] for _ in range(3)]
    return statistics.median(runs)


def fmt_row(name: str, runs: list[dict[str, Any]]) -> str:
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    return (f"{name:<10} {med('wall'):8.2f} {med('inner'):8.2f} {med('cpu'):8.2f} {med('movies_per_s'):9.0f} "
            f"{int(med('requests')):>8} {med('rss_mb'):8.1f} {med('db_mb'):7.1f}   "
            + " ".join(f"{r['wall']:.2f}" for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=20000, help="catalog size for the timed rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--rss-sizes", default="5000,20000",
                        help="catalog sizes for the peak-RSS comparison of our sync ('' to skip)")
    parser.add_argument("--rss-rounds", type=int, default=None, help="syncs per RSS size (default: --rounds)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--tmpdir", default=None, help="where the databases go (default: a temp dir on the system disk)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs of every child)")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="after the rounds, run one more sync under cProfile and save the stats to FILE")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the figures as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--pages", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.url, args.pages, args.db)

    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-", dir=args.tmpdir))
    figures: dict[str, Any] = {"movies": args.movies, "rounds": args.rounds, "machine": machine()}
    print(f"# bench_sync: {args.movies} movies, {args.rounds} rounds, variants {','.join(variants)}")
    print(f"# {figures['machine']}; databases in {workdir}")
    try:
        sim = Simulator(args.movies, workdir)
        try:
            sim.wait_ready()
            print(f"simulator ready at {sim.url}; warm-up pass {warm(sim):.2f}s")
            figures["startup_s"] = startup_seconds(workdir)
            print(f"`yts-mirror --version` start-up: {figures['startup_s']:.2f}s (included in ours' wall time)")
            results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for round_no in range(args.rounds):
                order = variants[round_no % len(variants):] + variants[:round_no % len(variants)]
                for variant in order:
                    result = measure(variant, sim, workdir, f"{variant}-r{round_no}")
                    results[variant].append(result)
                    print(f"  round {round_no + 1} {variant:<10} {result['wall']:7.2f}s wall "
                          f"{result['cpu']:7.2f}s cpu {result['rss_mb']:6.1f} MB  {result['requests']} requests",
                          flush=True)
            if args.profile:
                profile_once(sim, workdir, args.profile)
        finally:
            sim.stop()

        print()
        print(f"{'variant':<10} {'wall s':>8} {'inner s':>8} {'cpu s':>8} {'movies/s':>9} {'requests':>8} "
              f"{'peakMB':>8} {'dbMB':>7}   wall per round")
        for variant in variants:
            print(fmt_row(variant, results[variant]))
        print("(wall: spawn to exit, median; inner: the process's own timing of its work, i.e. without "
              "interpreter start-up; for ours the sync_runs row; cpu: user+sys of the child)")
        medians = {v: {k: statistics.median(r[k] for r in results[v])
                       for k in ("wall", "inner", "cpu", "rss_mb", "movies_per_s", "requests", "db_mb")}
                   for v in variants}
        figures["medians"] = medians
        figures["runs"] = {v: [{k: r[k] for k in ("wall", "inner", "cpu", "rss_mb", "requests")} for r in rs]
                           for v, rs in results.items()}
        if "ours" in results and results["ours"]:
            print(f"ours: {results['ours'][-1].get('summary', '')}")
        print()
        ratios = {}
        for base, target in (("floor", TARGET_OURS_FLOOR), ("naive", TARGET_OURS_NAIVE), ("naive_wal", None)):
            if "ours" in medians and base in medians:
                ratio = medians["ours"]["wall"] / medians[base]["wall"]
                per_round = [o["wall"] / b["wall"] for o, b in zip(results["ours"], results[base])]
                cpu_ratio = medians["ours"]["cpu"] / medians[base]["cpu"]
                ratios[f"ours/{base}"] = ratio
                verdict = "" if target is None else f"  target <= {target:.1f}: {'PASS' if ratio <= target else 'FAIL'}"
                print(f"ours/{base:<9} wall {ratio:5.2f}x (per round {', '.join(f'{x:.2f}' for x in per_round)}; "
                      f"cpu {cpu_ratio:.2f}x){verdict}")
        figures["ratios"] = ratios

        sizes = [int(s) for s in args.rss_sizes.split(",") if s.strip()]
        if sizes and "ours" in variants:
            print()
            rss = rss_by_size(sizes, args, workdir, results.get("ours", []))
            figures["rss_by_size"] = rss
            for size, values in rss.items():
                print(f"ours peak RSS at {size:>6} movies: {statistics.median(values):6.1f} MB "
                      f"(runs: {', '.join(f'{v:.1f}' for v in values)})  target < {TARGET_RSS_MB:.0f} MB: "
                      f"{'PASS' if statistics.median(values) < TARGET_RSS_MB else 'FAIL'}")
            if len(rss) >= 2:
                values = [statistics.median(v) for v in rss.values()]
                spread = max(values) / min(values) - 1
                figures["rss_spread"] = spread
                print(f"ours peak RSS spread across sizes: {spread * 100:.1f}%  target <= "
                      f"{TARGET_RSS_SPREAD * 100:.0f}%: {'PASS' if spread <= TARGET_RSS_SPREAD else 'FAIL'}")
        save_figures(figures, args.json)
    finally:
        remove_workdir(workdir, args.keep)


def rss_by_size(sizes: list[int], args: argparse.Namespace, workdir: Path,
                main_runs: list[dict[str, Any]]) -> dict[int, list[float]]:
    """Peak RSS of our sync against a simulator of each size (reusing the timed rounds' size)."""
    rounds = args.rss_rounds or args.rounds
    out: dict[int, list[float]] = {}
    for size in sizes:
        if size == args.movies and main_runs:
            out[size] = [r["rss_mb"] for r in main_runs]
            continue
        sim = Simulator(size, workdir)
        try:
            sim.wait_ready()
            warm(sim)
            out[size] = [measure("ours", sim, workdir, f"ours-{size}-r{n}")["rss_mb"] for n in range(rounds)]
        finally:
            sim.stop()
    return out


def profile_once(sim: Simulator, workdir: Path, path: str) -> None:
    """One more sync of ours under cProfile (main thread only: the background checkpoint thread is not seen)."""
    import pstats

    db = workdir / "profile.db"
    argv = [sys.executable, "-m", "cProfile", "-o", str(Path(path).resolve()), "-m", "mirror", "sync",
            "--no-enrich", "--rate", "0", "--db", str(db), "--base-url", sim.url]
    result = run_measured(argv, workdir, "profile")
    print(f"\nprofiled sync: {result['wall']:.2f}s wall under cProfile; stats in {path}")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(15)
    print("our own functions by cumulative time:")
    stats.sort_stats("cumulative").print_stats(r"mirror[/\\](store|transform|crawl|sync|client)\.py", 15)


def save_figures(figures: dict[str, Any], json_path: str | None) -> None:
    """Note the machine's state after the run, and write the figures as JSON if asked."""
    figures["machine_after"] = machine()
    print(f"# after: {figures['machine_after']}")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2))


def remove_workdir(workdir: Path, keep: bool) -> None:
    """Delete the scratch folder, unless --keep asked to look at it."""
    if keep:
        print(f"# kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def machine() -> str:
    """The conditions of a run: CPUs, load (the machine may be shared), Python and the code's commit."""
    load = os.getloadavg()
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "mirror",
                                "schema.sql"], capture_output=True, text=True, timeout=10).stdout.strip()
        commit = (commit + (" + uncommitted changes in mirror/ or schema.sql" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return (f"{os.cpu_count()} cpus, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
            f"python {sys.version.split()[0]}, code at {commit}")


if __name__ == "__main__":
    main()
