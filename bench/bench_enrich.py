#!/usr/bin/env python3
"""Benchmark: enrichment throughput and politeness against a rate-limited simulator (issue 3).

This is a benchmark script, not a test: it prints figures. It starts `yts-mirror fake-api`
in its own process with a server-side limit (--rate-limit 20) and latency (--latency-ms 150),
builds a list-only mirror with `yts-mirror sync --no-enrich --rate 0`, then times
`yts-mirror enrich --rate 20 --concurrency 8 --limit N` as a child process, for a fixed amount
of work (--duration seconds at the configured rate, or --limit movies), and prints:

  achieved req/s    requests the simulator saw during the enrich, over the enrich's own run
                    time (its sync_runs row) and over the child's wall time (spawn to exit)
  refused           requests the simulator's limiter answered with 429 (from GET /_admin/stats)
  peak RSS          ru_maxrss of the enrich process (os.wait4)

Targets (issue 3): >= 18 req/s, 0 refused, peak RSS < 120 MB.

    .venv/bin/python bench/bench_enrich.py                  # 1,500 movies, ~30 s of work
    .venv/bin/python bench/bench_enrich.py --duration 60 --rounds 2
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sync import (YTS_MIRROR, Simulator, iso_seconds, machine, remove_workdir,  # noqa: E402
                        run_measured, save_figures)

DEFAULT_ENDPOINTS = 4  # movie_details, movie_suggestions, movie_reviews, movie_parental_guides
TARGET_RATE_FRACTION = 0.9
TARGET_RSS_MB = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=1500, help="simulated catalog size")
    parser.add_argument("--rate", type=float, default=20.0, help="our --rate (req/s)")
    parser.add_argument("--concurrency", type=int, default=8, help="our --concurrency")
    parser.add_argument("--rate-limit", type=float, default=20.0, help="the simulator's --rate-limit")
    parser.add_argument("--latency-ms", type=float, default=150.0, help="the simulator's --latency-ms")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of work per round at --rate (sets --limit to duration*rate/4 movies)")
    parser.add_argument("--limit", type=int, default=None, help="movies per round (overrides --duration)")
    parser.add_argument("--rounds", type=int, default=1, help="enrich runs, each on the next movies of the backlog")
    parser.add_argument("--tmpdir", default=None, help="where the database goes (default: system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (database and logs)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the figures as JSON")
    args = parser.parse_args()

    limit = args.limit or max(1, round(args.duration * args.rate / DEFAULT_ENDPOINTS))
    if limit * args.rounds > args.movies:
        parser.error(f"{args.rounds} rounds of {limit} movies need more than {args.movies} movies")
    workdir = Path(tempfile.mkdtemp(prefix="bench-enrich-", dir=args.tmpdir))
    db = workdir / "mirror.db"
    print(f"# bench_enrich: {args.movies} movies; simulator --rate-limit {args.rate_limit:g} "
          f"--latency-ms {args.latency_ms:g}; enrich --rate {args.rate:g} --concurrency {args.concurrency} "
          f"--limit {limit} (~{limit * DEFAULT_ENDPOINTS} requests) x {args.rounds}")
    print(f"# {machine()}; database in {workdir}")
    figures: dict[str, Any] = {"args": vars(args), "limit": limit, "machine": machine(), "rounds": []}
    try:
        sim = Simulator(args.movies, workdir, ("--rate-limit", f"{args.rate_limit:g}",
                                               "--latency-ms", f"{args.latency_ms:g}"))
        try:
            sim.wait_ready()
            before = sim.stats()
            sync = run_measured([YTS_MIRROR, "sync", "--no-enrich", "--rate", "0", "--db", str(db),
                                 "--base-url", sim.url], workdir, "sync")
            after = sim.stats()
            print(f"list-only mirror built in {sync['wall']:.1f}s "
                  f"({total(after) - total(before)} requests, {after['refused'] - before['refused']} refused)")
            for round_no in range(args.rounds):
                time.sleep(1.5)  # let the simulator's token bucket refill after the previous run
                result = run_round(sim, db, workdir, args, limit, round_no)
                figures["rounds"].append(result)
                print(f"  round {round_no + 1}: {result['requests']} requests in {result['inner']:.2f}s "
                      f"-> {result['req_s']:.2f} req/s ({result['req_s_wall']:.2f} over {result['wall']:.2f}s wall), "
                      f"{result['refused']} refused, {result['retries']} retries, {result['movies']} movies, "
                      f"peak RSS {result['rss_mb']:.1f} MB, cpu {result['cpu']:.2f}s", flush=True)
        finally:
            sim.stop()
        report(figures, args)
        save_figures(figures, args.json)
    finally:
        remove_workdir(workdir, args.keep)


def total(stats: dict[str, Any]) -> int:
    return sum(stats["requests"].values())


def run_round(sim: Simulator, db: Path, workdir: Path, args: argparse.Namespace, limit: int,
              round_no: int) -> dict[str, Any]:
    before = sim.stats()
    result = run_measured([YTS_MIRROR, "enrich", "--db", str(db), "--base-url", sim.url, "--rate", f"{args.rate:g}",
                           "--concurrency", str(args.concurrency), "--limit", str(limit)],
                          workdir, f"enrich-r{round_no}")
    after = sim.stats()
    conn = sqlite3.connect(db)
    started, finished, status, requests, retries, enriched = conn.execute(
        "SELECT started_at, finished_at, status, requests, retries, enriched FROM sync_runs "
        "WHERE kind = 'enrich' ORDER BY id DESC LIMIT 1").fetchone()
    conn.close()
    if status != "ok":
        raise SystemExit(f"enrich ended with status {status}:\n{result['stderr'][-2000:]}")
    seen = total(after) - total(before)
    inner = iso_seconds(finished) - iso_seconds(started)
    return {
        "requests": seen,
        "requests_logged": requests,
        "retries": retries,
        "refused": after["refused"] - before["refused"],
        "movies": enriched,
        "inner": inner,
        "wall": result["wall"],
        "req_s": seen / inner,
        "req_s_wall": seen / result["wall"],
        "rss_mb": result["rss_mb"],
        "cpu": result["cpu"],
        "summary": result["stderr"].strip().splitlines()[-1] if result["stderr"].strip() else "",
    }


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    rounds = figures["rounds"]
    if not rounds:
        return
    med = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    target_rate = TARGET_RATE_FRACTION * args.rate
    rate, refused, rss = med("req_s"), sum(r["refused"] for r in rounds), max(r["rss_mb"] for r in rounds)
    figures["summary"] = {"req_s": rate, "req_s_wall": med("req_s_wall"), "refused": refused, "rss_mb": rss}
    print()
    print(f"last run: {rounds[-1]['summary']}")
    print(f"achieved rate (median over rounds): {rate:.2f} req/s over the run "
          f"({med('req_s_wall'):.2f} req/s over wall time incl. start-up)  target >= {target_rate:g}: "
          f"{'PASS' if rate >= target_rate else 'FAIL'}")
    print(f"refused by the simulator's limiter: {refused}  target 0: {'PASS' if refused == 0 else 'FAIL'}")
    print(f"peak RSS (max over rounds): {rss:.1f} MB  target < {TARGET_RSS_MB:g} MB: "
          f"{'PASS' if rss < TARGET_RSS_MB else 'FAIL'}")


if __name__ == "__main__":
    main()
