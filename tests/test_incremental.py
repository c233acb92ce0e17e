"""Incremental syncs, full refreshes, crash-safe resume and the scheduler, against the simulator."""

from __future__ import annotations

import json
import math
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from mirror import store
from mirror.client import make_client
from mirror.config import resolve
from mirror.fakeapi import Catalog, Churn, FakeYTS, FaultPlan
from mirror.progress import Progress
from mirror.sync import Syncer
from support import (ScriptedChurn, assert_mirror_equals_catalog, checkpoint, cli_subprocess, connect, integrity_ok,
                     last_run, mirror_movies, query, run_cli, sync_args, wait_for, wait_for_page, write_config)


def sync(db: Path, sim: FakeYTS, config: Path, *extra: str) -> dict:
    result = run_cli(["sync", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(config), *extra])
    assert result.exit_code == 0, result.output
    return last_run(db)


def store_state(db: Path, key: str) -> dict | None:
    row = connect(db).execute("SELECT value FROM sync_state WHERE key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else None


def current_seeds(db: Path) -> dict[str, tuple[int, int]]:
    conn = connect(db)
    return {row[0]: (row[1], row[2]) for row in conn.execute("SELECT hash, seeds, peers FROM torrents WHERE removed_at IS NULL")}


def test_incremental_then_full_refresh(simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=3000)
    sync(db_path, sim, config_file, "--no-enrich")
    new_ids = sim.catalog.add(137)
    assert sim.catalog.reseed(0.5) > 1000
    before = sim.ok_counts["list_movies"]
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert run["kind"] == "incremental"
    assert sim.ok_counts["list_movies"] - before <= math.ceil(137 / 50) + 1
    assert run["movies_new"] == 137
    present = {row[0] for row in connect(db_path).execute("SELECT id FROM movies")}
    assert set(new_ids) <= present
    # Removals since: page 1's movie_count shows them, and a binary search over pages finds them.
    gone = sim.catalog.remove(5)
    before, details = sim.ok_counts["list_movies"], sim.ok_counts.get("movie_details", 0)
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert run["kind"] == "incremental" and run["movies_removed"] == 5 and not run["warning"]
    pages = math.ceil(3132 / 50)
    assert sim.ok_counts["list_movies"] - before <= 1 + 5 * (math.ceil(math.log2(pages)) + 1)
    assert sim.ok_counts["movie_details"] - details == 5
    run = sync(db_path, sim, config_file, "--no-enrich", "--full")
    assert run["kind"] == "full" and run["movies_removed"] == 0
    assert_mirror_equals_catalog(db_path, sim.catalog)  # seeds and peers included
    conn = connect(db_path)
    removed = {row[0] for row in conn.execute("SELECT id FROM movies WHERE removed_at IS NOT NULL")}
    assert removed == set(gone)
    assert conn.execute("SELECT COUNT(*) FROM torrents t JOIN movies m ON m.id = t.movie_id "
                        "WHERE m.removed_at IS NOT NULL AND t.removed_at IS NULL").fetchone()[0] == 0
    # Each full crawl observed every torrent once: history for charts.
    observations = conn.execute("SELECT COUNT(DISTINCT observed_at) FROM torrent_stats").fetchone()[0]
    assert observations == 2
    some_hash = next(iter(current_seeds(db_path)))
    history = conn.execute("SELECT seeds FROM torrent_stats WHERE hash = ? ORDER BY observed_at DESC",
                           [some_hash]).fetchall()
    assert history[0][0] == current_seeds(db_path)[some_hash][0]


def test_a_removed_movie_that_returns_is_restored(simulator: Callable[..., FakeYTS], db_path: Path,
                                                  config_file: Path) -> None:
    sim = simulator(movies=200)
    sync(db_path, sim, config_file, "--no-enrich")
    movie_id = sim.catalog.order[50]
    movie = sim.catalog.movies[movie_id]
    sim.catalog.remove(ids=[movie_id])
    sync(db_path, sim, config_file, "--no-enrich", "--full")
    conn = connect(db_path)
    assert conn.execute("SELECT removed_at FROM movies WHERE id = ?", [movie_id]).fetchone()[0] is not None
    with sim.catalog.lock:  # it comes back in its old place
        sim.catalog.movies[movie_id] = movie
        sim.catalog.order.insert(50, movie_id)
    sync(db_path, sim, config_file, "--no-enrich", "--full")
    assert_mirror_equals_catalog(db_path, sim.catalog)
    assert conn.execute("SELECT COUNT(*) FROM torrents WHERE movie_id = ? AND removed_at IS NOT NULL",
                        [movie_id]).fetchone()[0] == 0


def test_a_movie_found_gone_by_enrichment_is_enriched_again_when_it_returns(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=100)
    sync(db_path, sim, config_file)
    movie_id = sim.catalog.order[30]
    movie = sim.catalog.movies[movie_id]
    sim.catalog.remove(ids=[movie_id])
    sync(db_path, sim, config_file, "--full")
    with closing(connect(db_path)) as conn, conn:  # as when details answered "not found" while it was gone
        conn.execute("UPDATE enrich_state SET status = 'not_found' WHERE movie_id = ? AND endpoint = 'movie_details'",
                     [movie_id])
    with sim.catalog.lock:  # back in its old place, its list data unchanged
        sim.catalog.movies[movie_id] = movie
        sim.catalog.order.insert(30, movie_id)
    before = sim.ok_counts["movie_details"]
    sync(db_path, sim, config_file, "--full")
    assert sim.ok_counts["movie_details"] - before == 1
    assert query(db_path, "SELECT status FROM enrich_state WHERE movie_id = ? AND endpoint = 'movie_details'",
                 [movie_id])[0][0] == "ok"


def marked_removed(db: Path) -> set[int]:
    return {row[0] for row in connect(db).execute("SELECT id FROM movies WHERE removed_at IS NOT NULL")}


def test_a_movie_that_slips_past_a_full_crawl_is_not_marked_removed(db_path: Path, config_file: Path) -> None:
    with ScriptedChurn(Catalog(1000, 4)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        order = sim.catalog.order
        last_of_5, first_of_6 = order[249], order[250]

        def swap(catalog: Catalog) -> None:  # movies added together may swap places between requests
            with catalog.lock:
                order[249:251] = [first_of_6, last_of_5]

        sim.rescript({6: swap})  # after page 5 is read: page 6 starts with a movie the crawl has seen
        asked = sim.ok_counts.get("movie_details", 0)
        run = sync(db_path, sim, config_file, "--no-enrich", "--full")
        assert (run["status"], run["movies_removed"]) == ("ok", 0)
        assert sim.ok_counts.get("movie_details", 0) - asked == 1  # about the one movie the crawl did not see
        assert not marked_removed(db_path)
        assert_mirror_equals_catalog(db_path, sim.catalog)


def unlist(catalog: Catalog, position: int) -> tuple[int, dict[str, Any]]:
    """Take the movie at `position` off the list; return its id and JSON, to list it again later."""
    movie_id = catalog.order[position]
    movie = catalog.movies[movie_id]
    catalog.remove(ids=[movie_id])
    return movie_id, movie


def removal_and_listing_again(going: int, listed: int, movie: dict[str, Any], at: int) -> Callable[[Catalog], None]:
    """A change that keeps movie_count: `going` leaves the list, `listed` (`movie`) is listed again at `at`."""

    def change(catalog: Catalog) -> None:
        catalog.remove(ids=[going])
        with catalog.lock:
            catalog.movies[listed] = movie
            catalog.order.insert(at, listed)

    return change


def test_a_removal_hidden_by_a_return_is_found_before_the_run_ends(db_path: Path, config_file: Path) -> None:
    with ScriptedChurn(Catalog(1000, 3)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        order = sim.catalog.order
        returning, movie = unlist(sim.catalog, 950)
        sync(db_path, sim, config_file, "--no-enrich", "--full")
        assert marked_removed(db_path) == {returning}
        going = order[60]
        # after page 4 is read: the first movie of page 5 slides up
        sim.rescript({5: removal_and_listing_again(going, returning, movie, 949)})
        run = sync(db_path, sim, config_file, "--no-enrich", "--full")
        # The crawl missed the removal above it, but the return left a check, which the walk over the
        # newest pages that ends the run (the list moved) makes: no removal waits for the next sync.
        assert (run["kind"], run["status"], run["movies_removed"]) == ("full", "ok", 1)
        assert marked_removed(db_path) == {going} and not store_state(db_path, store.RECONCILE_STATE)
        assert_mirror_equals_catalog(db_path, sim.catalog)


def test_a_removal_offset_by_a_movie_listed_again_loses_no_movie(db_path: Path, config_file: Path) -> None:
    with ScriptedChurn(Catalog(1000, 5)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        order = sim.catalog.order
        unlisted, movie = unlist(sim.catalog, 700)  # unlisted for a while: the mirror still holds it present
        going, sliding = order[60], order[200]
        sim.rescript({5: removal_and_listing_again(going, unlisted, movie, 699)})  # page 5's first slides up
        sync(db_path, sim, config_file, "--no-enrich", "--full")
        assert sliding in order and sliding not in marked_removed(db_path)


class LaggingCount(ScriptedChurn):
    """A simulator whose movie_count comes from a cache that has not counted the newest additions."""

    frozen: int | None = None

    def _list_movies(self, params: Any, fault: str | None = None) -> bytes:
        body = super()._list_movies(params, fault)
        if self.frozen is None:
            return body
        return b'{"movie_count":%d,' % self.frozen + body.partition(b",")[2]


def test_a_lagging_movie_count_marks_no_listed_movie_removed(db_path: Path, config_file: Path) -> None:
    with LaggingCount(Catalog(1000, 7)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        sim.frozen = 1000
        sim.catalog.add(7)  # the list holds 1,007, the count says 1,000: the crawl ends 7 short
        sync(db_path, sim, config_file, "--no-enrich", "--full")
        assert not marked_removed(db_path) & set(sim.catalog.order)


def test_a_kill_after_marking_removals_keeps_their_count_in_the_run_log(simulator: Callable[..., FakeYTS],
                                                                        db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=500)
    sync(db_path, sim, config_file, "--no-enrich")
    sim.catalog.remove(ids=sim.catalog.order[100:103])
    killed_after_marking = (
        "import os, signal, sys\n"
        "from mirror import cli, sync\n"
        "mark = sync.Syncer._mark_removed\n"
        "def mark_then_die(*args):\n"
        "    mark(*args)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "sync.Syncer._mark_removed = mark_then_die\n"
        "sys.argv[0] = 'yts-mirror'\n"
        "cli.main()\n"
    )
    killed = subprocess.run([sys.executable, "-c", killed_after_marking,
                             *sync_args(db_path, sim.url, config_file, "--no-enrich", "--full")], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert last_run(db_path)["movies_removed"] == 1
    sync(db_path, sim, config_file, "--no-enrich")  # resumes: asks about the other two
    counted = connect(db_path).execute("SELECT SUM(movies_removed), SUM(torrents_removed) FROM sync_runs").fetchone()
    assert tuple(counted) == (3, connect(db_path).execute(
        "SELECT COUNT(*) FROM torrents WHERE removed_at IS NOT NULL").fetchone()[0])
    assert len(marked_removed(db_path)) == 3


def test_incremental_enriches_only_new_movies(simulator: Callable[..., FakeYTS], db_path: Path,
                                              config_file: Path) -> None:
    sim = simulator(movies=200)
    sync(db_path, sim, config_file, "--concurrency", "2")
    before = dict(sim.ok_counts)
    sim.catalog.add(20)
    run = sync(db_path, sim, config_file, "--concurrency", "2")
    assert run["enriched"] == 20
    for endpoint in ("movie_details", "movie_suggestions", "movie_reviews", "movie_parental_guides"):
        assert sim.ok_counts[endpoint] - before[endpoint] == 20, endpoint


def test_old_movies_listed_above_new_ones_do_not_end_the_walk(simulator: Callable[..., FakeYTS], db_path: Path,
                                                                config_file: Path) -> None:
    sim = simulator(movies=500)
    sync(db_path, sim, config_file, "--no-enrich")
    added = sim.catalog.add(60)
    old = [i for i in sim.catalog.order if i not in added][100:112]
    sim.catalog.order[:] = old + [i for i in sim.catalog.order if i not in old]  # listed again, at the top
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert (run["kind"], run["movies_new"]) == ("incremental", 60)
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_nothing_is_marked_removed_after_an_incomplete_crawl(simulator: Callable[..., FakeYTS], db_path: Path,
                                                             config_file: Path) -> None:
    sim = simulator(movies=500, latency_ms=30)
    sync(db_path, sim, config_file, "--no-enrich")
    sim.catalog.remove(20)
    process = cli_subprocess(sync_args(db_path, sim.url, config_file, "--full"))
    wait_for_page(db_path, 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    conn = connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM movies WHERE removed_at IS NOT NULL").fetchone()[0] == 0
    sync(db_path, sim, config_file, "--no-enrich")  # resumes the full crawl and finishes it
    assert conn.execute("SELECT COUNT(*) FROM movies WHERE removed_at IS NOT NULL").fetchone()[0] == 20


def test_a_clock_set_back_before_a_crawl_resumes_marks_nothing_removed(
        simulator: Callable[..., FakeYTS], db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file = write_config(tmp_path, "[sync]\nmax_removed_fraction = 0.9\n")
    sim = simulator(movies=500, latency_ms=30)
    sync(db_path, sim, config_file, "--no-enrich")
    process = cli_subprocess(sync_args(db_path, sim.url, config_file, "--full"))
    wait_for_page(db_path, 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    real_now = store.now_iso
    monkeypatch.setattr(store, "now_iso", lambda days_ago=0: real_now(days_ago + 1 / 24))  # an hour behind
    run = sync(db_path, sim, config_file, "--no-enrich")  # resumes the full crawl and finishes it
    assert (run["kind"], run["status"], run["movies_removed"]) == ("full", "ok", 0)
    assert connect(db_path).execute("SELECT COUNT(*) FROM movies WHERE removed_at IS NOT NULL").fetchone()[0] == 0


@pytest.mark.parametrize("kind", ["first crawl", "full refresh", "full refresh by an older version"])
def test_after_a_clock_that_ran_ahead_syncs_still_read_only_whats_new_and_mark_removals(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    sim = simulator(movies=500)
    real_now = store.now_iso
    if kind != "first crawl":
        sync(db_path, sim, config_file, "--no-enrich")
    monkeypatch.setattr(store, "now_iso", lambda days_ago=0: real_now(days_ago - 1))  # a day ahead
    sync(db_path, sim, config_file, "--no-enrich", *(["--full"] if kind != "first crawl" else []))
    monkeypatch.setattr(store, "now_iso", real_now)  # set right again
    if kind == "full refresh by an older version":  # which kept no SEEN_STATE
        with closing(connect(db_path)) as conn, conn:
            conn.execute("DELETE FROM sync_state WHERE key = ?", [store.SEEN_STATE])
    added = sim.catalog.add(60)
    before = sim.ok_counts["list_movies"]
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert (run["kind"], run["movies_new"]) == ("incremental", 60)
    assert sim.ok_counts["list_movies"] - before <= math.ceil(60 / 50) + 1  # not the whole list
    removed = sim.catalog.remove(ids=[i for i in sim.catalog.order if i not in added][200:205])  # beyond the walk
    run = sync(db_path, sim, config_file, "--no-enrich", "--full")
    assert run["movies_removed"] == 5
    assert {row[0] for row in query(db_path, "SELECT id FROM movies WHERE removed_at IS NOT NULL")} == set(removed)
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_implausible_mass_removal_is_refused(simulator: Callable[..., FakeYTS], db_path: Path,
                                             config_file: Path) -> None:
    sim = simulator(movies=600)
    sync(db_path, sim, config_file, "--no-enrich")
    sim.catalog.remove(300)  # half the catalog vanishing looks like a broken source, not real removals
    result = run_cli(["sync", "--db", str(db_path), "--base-url", sim.url, "--rate", "0", "--config",
                      str(config_file), "--no-enrich", "--full"])
    assert result.exit_code == 0 and "not marking 300 of 600 movies removed" in result.output
    assert connect(db_path).execute("SELECT COUNT(*) FROM movies WHERE removed_at IS NOT NULL").fetchone()[0] == 0
    run = last_run(db_path)  # a quiet cron run keeps the warning where stats shows it
    assert run["status"] == "ok" and run["warning"].startswith("not marking 300 of 600 movies removed")
    stats = run_cli(["stats", "--db", str(db_path)])
    assert "warning: not marking 300 of 600 movies removed" in stats.output


def test_twenty_kills_then_one_run(simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=10000, latency_ms=10)
    clean_pages = math.ceil(10000 / 50)
    args = sync_args(db_path, sim.url, config_file)
    rng = random.Random(7)
    for _ in range(20):
        # Kill at a random moment: after a random number of committed pages, plus a random
        # fraction of the next one (so sometimes mid-request, sometimes mid-write).
        target = (checkpoint(db_path) or {}).get("next_page", 1) + rng.randint(0, 14)
        process = cli_subprocess(args)
        wait_for(lambda: process.poll() is not None or (checkpoint(db_path) or {}).get("next_page", 1) >= target)
        time.sleep(rng.uniform(0, 0.03))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert integrity_ok(db_path)
    assert (checkpoint(db_path) or {}).get("kind") == "full", "the kills should interrupt the first crawl"
    sync(db_path, sim, config_file, "--no-enrich")
    assert_mirror_equals_catalog(db_path, sim.catalog)
    assert integrity_ok(db_path)
    print(f"list requests after 20 kills: {sim.counts['list_movies']} for {clean_pages} pages")
    assert sim.counts["list_movies"] <= 1.2 * clean_pages, sim.counts["list_movies"]
    conn = connect(db_path)  # the crawl that finished across 21 processes observed every torrent once
    assert tuple(conn.execute("SELECT COUNT(*), COUNT(DISTINCT observed_at) FROM torrent_stats").fetchone()) == (
        conn.execute("SELECT COUNT(*) FROM torrents WHERE removed_at IS NULL").fetchone()[0], 1)
    statuses = [row[0] for row in connect(db_path).execute("SELECT status FROM sync_runs ORDER BY id")]
    assert statuses[-1] == "ok" and set(statuses[:-1]) <= {"interrupted"}


def test_scheduler_runs_syncs_that_never_overlap(simulator: Callable[..., FakeYTS], tmp_path: Path) -> None:
    sim = simulator(movies=400, latency_ms=20)
    db = tmp_path / "sched.db"
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "\n[schedule]\nincremental_seconds = 2\nfull_cron = \"\"\n"
                      "enrich_seconds = 0\nenrich_limit = 20\n")
    process = cli_subprocess(["schedule", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config",
                              str(config)])

    def finished_runs() -> int:
        try:
            return connect(db).execute("SELECT COUNT(*) FROM sync_runs WHERE status = 'ok'").fetchone()[0] >= 3
        except Exception:  # noqa: BLE001 - the database may not exist yet
            return False

    wait_for(finished_runs, timeout=60)
    sim.catalog.add(60)
    wait_for(lambda: connect(db).execute("SELECT COUNT(*) FROM movies").fetchone()[0] == 460, timeout=30)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "next incremental sync at" in stderr
    runs = [dict(r) for r in connect(db).execute("SELECT * FROM sync_runs ORDER BY id")]
    assert runs[0]["kind"] == "full" and all(r["kind"] == "incremental" for r in runs[1:])
    assert runs[0]["enriched"] == 20 and all(r["enriched"] <= 20 for r in runs)  # a backlog never holds syncs up
    for earlier, later in zip(runs, runs[1:]):
        assert earlier["finished_at"] <= later["started_at"], "runs overlapped"
    assert all(r["status"] in ("ok", "interrupted") for r in runs)
    assert integrity_ok(db)
    assert_mirror_equals_catalog(db, sim.catalog)


def test_a_second_signal_stops_the_scheduler_at_once(simulator: Callable[..., FakeYTS], tmp_path: Path) -> None:
    sim = simulator(movies=2000, latency_ms=300)
    db = tmp_path / "sched.db"
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "\n[schedule]\nfull_cron = \"\"\nenrich_seconds = 0\n")
    process = cli_subprocess(["schedule", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config",
                              str(config)])
    wait_for_page(db, 2)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1 and stderr.endswith("error: aborted\n") and "Traceback" not in stderr, stderr
    assert integrity_ok(db)


def schedule_config(tmp_path: Path, body: str) -> Path:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "\n[schedule]\n" + body)
    return config


def test_the_scheduler_stops_cleanly_whenever_the_signal_comes(simulator: Callable[..., FakeYTS],
                                                               tmp_path: Path) -> None:
    sim = simulator(movies=120)
    config = schedule_config(tmp_path, "incremental_seconds = 1\nenrich_seconds = 1\nenrich_limit = 5\n")
    rng = random.Random(3)
    for attempt, sig in enumerate([signal.SIGTERM, signal.SIGINT, signal.SIGHUP] * 3):
        process = cli_subprocess(["schedule", "--db", str(tmp_path / "s.db"), "--base-url", sim.url, "--rate", "0",
                                  "--config", str(config)])
        lock = tmp_path / "s.db.schedule.lock"  # it names the scheduler once it runs (start-up is the interpreter's)
        wait_for(lambda: lock.exists() and lock.read_text() == f"pid {process.pid}")
        time.sleep(rng.uniform(0.0, 2.5))  # mid-job or between jobs, as it comes
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0 and "Traceback" not in stderr, (attempt, sig, stderr[-2000:])
    assert integrity_ok(tmp_path / "s.db")


def test_one_scheduler_per_database(simulator: Callable[..., FakeYTS], tmp_path: Path) -> None:
    sim = simulator(movies=50)
    config = schedule_config(tmp_path, "enrich_seconds = 0\n")
    args = ["schedule", "--db", str(tmp_path / "s.db"), "--base-url", sim.url, "--rate", "0", "--config", str(config)]
    first = cli_subprocess(args)
    try:
        wait_for(lambda: (tmp_path / "s.db.schedule.lock").exists() and (tmp_path / "s.db").exists())
        second = cli_subprocess(args)
        _, stderr = second.communicate(timeout=30)
        assert second.returncode == 3 and stderr.startswith("error: another yts-mirror schedule runs on"), stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0


def test_a_scheduler_under_nohup_outlives_sighup_and_logs_its_jobs_not_each_retry(
        simulator: Callable[..., FakeYTS], tmp_path: Path) -> None:
    sim = simulator(movies=200, faults="mix=0.2,retry_after=0")
    db = tmp_path / "s.db"
    config = schedule_config(tmp_path, "incremental_seconds = 1\nenrich_seconds = 0\n")
    process = cli_subprocess(["schedule", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config",
                              str(config)], preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # nohup
    try:
        wait_for(lambda: synced_ok(db))
        process.send_signal(signal.SIGHUP)  # the terminal closes
        wait_for(lambda: process.poll() is not None or incremental_ok(db), timeout=60)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert connect(db).execute("SELECT SUM(retries) FROM sync_runs").fetchone()[0] > 0
    assert "INFO mirror.schedule: incremental sync: incremental sync ok" in stderr, stderr
    assert "INFO mirror.client" not in stderr, stderr  # -v shows each retry


def test_the_scheduler_starts_no_new_mirror_when_its_database_vanishes(simulator: Callable[..., FakeYTS],
                                                                        tmp_path: Path) -> None:
    sim = simulator(movies=50)
    db = tmp_path / "s.db"
    config = schedule_config(tmp_path, "incremental_seconds = 1\nenrich_seconds = 0\n")
    process = cli_subprocess(["schedule", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config",
                              str(config)])
    try:
        wait_for(lambda: synced_ok(db))
        for path in tmp_path.glob("s.db*"):
            if not path.name.endswith(".lock"):
                path.unlink()
        time.sleep(2.5)
        assert not db.exists()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert f"incremental sync failed: the database {db} is gone" in stderr


def test_a_full_crawl_stopped_while_it_enriches_still_counts_as_the_last_full_refresh(
        simulator: Callable[..., FakeYTS], tmp_path: Path) -> None:
    sim = simulator(movies=100, latency_ms=40)
    db = tmp_path / "f.db"
    process = cli_subprocess(["sync", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config",
                              str(write_config(tmp_path)), "--full"])  # with its enrichment

    def enriching() -> bool:
        try:
            return connect(db).execute("SELECT COUNT(*) FROM enrich_state").fetchone()[0] > 0
        except sqlite3.Error:
            return False

    wait_for(enriching)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert last_run(db)["status"] == "interrupted"
    completed = store.last_full_refresh(db)
    assert completed is not None and completed.isoformat() >= last_run(db)["started_at"][:19]


def test_a_schedule_with_no_job_is_a_config_error_before_anything_else(tmp_path: Path) -> None:
    config = schedule_config(tmp_path, 'incremental_seconds = 0\nfull_cron = ""\nenrich_seconds = 0\n')
    result = run_cli(["schedule", "--db", str(tmp_path / "none.db"), "--config", str(config)])
    assert result.exit_code == 2 and result.output == "error: the [schedule] section enables no job\n"


def test_the_scheduler_says_at_start_that_its_first_sync_runs_now(simulator: Callable[..., FakeYTS],
                                                                   tmp_path: Path) -> None:
    sim = simulator(movies=30)
    config = schedule_config(tmp_path, 'full_cron = ""\nenrich_seconds = 0\n')
    process = cli_subprocess(["schedule", "--db", str(tmp_path / "s.db"), "--base-url", sim.url, "--rate", "0",
                              "--config", str(config)])
    wait_for(lambda: (tmp_path / "s.db").exists() and synced_ok(tmp_path / "s.db"))
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    first = next(line for line in stderr.splitlines() if "next incremental sync at" in line)
    logged_at, next_at = first.split()[0], first.rsplit(" ", 1)[1]
    assert next_at[:16] == logged_at[:16], first  # this minute, not an hour on


def incremental_ok(db: Path) -> bool:
    """Whether an incremental sync has ended ok (the first sync of a new mirror is a full one)."""
    return bool(query(db, "SELECT 1 FROM sync_runs WHERE kind = 'incremental' AND status = 'ok'"))


def synced_ok(db: Path) -> bool:
    try:
        return last_run(db)["status"] == "ok"
    except (sqlite3.Error, IndexError):
        return False


def test_an_enrichment_only_schedule_needs_the_database(tmp_path: Path) -> None:
    config = schedule_config(tmp_path, 'incremental_seconds = 0\nfull_cron = ""\n')
    result = run_cli(["schedule", "--db", str(tmp_path / "none.db"), "--config", str(config)])
    assert result.exit_code == 1 and result.output.startswith("error: no database at"), result.output
    assert not (tmp_path / "none.db").exists()


def test_scheduler_rejects_a_bad_cron(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[schedule]\nfull_cron = "61 * * * *"\n')
    result = run_cli(["schedule", "--db", str(tmp_path / "x.db"), "--config", str(config)])
    assert result.exit_code == 2 and "schedule.full_cron" in result.output


def test_a_crawl_over_a_net_shrinking_catalog_misses_nothing(simulator: Callable[..., FakeYTS], db_path: Path,
                                                              config_file: Path) -> None:
    sim = simulator(movies=1500, churn="every=2,add=1,remove=4")  # movie_count falls: earlier pages are re-read
    sync(db_path, sim, config_file, "--no-enrich")
    sim.churn.every = 0
    sync(db_path, sim, config_file, "--no-enrich")
    assert_mirror_equals_catalog(db_path, sim.catalog)
    marked = {row[0] for row in connect(db_path).execute("SELECT id FROM movies WHERE removed_at IS NOT NULL")}
    assert marked == set(sim.catalog.removed) & set(mirror_movies(db_path, include_removed=True))
    assert len(marked) > 50


def test_removals_balanced_by_additions_during_a_crawl_are_found(simulator: Callable[..., FakeYTS], db_path: Path,
                                                                  config_file: Path) -> None:
    sim = simulator(movies=1500, churn="every=2,add=1,remove=1")  # movie_count never moves
    sync(db_path, sim, config_file, "--no-enrich")
    sim.churn.every = 0
    seen_then_removed = set(sim.catalog.removed) & {
        row[0] for row in connect(db_path).execute("SELECT id FROM movies WHERE removed_at IS NULL")}
    assert seen_then_removed, "the crawl should have read some movies that were removed afterwards"
    sync(db_path, sim, config_file, "--no-enrich")
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_an_incremental_over_a_shrinking_catalog_misses_nothing(simulator: Callable[..., FakeYTS], db_path: Path,
                                                                 config_file: Path) -> None:
    sim = simulator(movies=1000, seed=4)
    sync(db_path, sim, config_file, "--no-enrich")
    new_ids = sim.catalog.add(400)  # an eight-page incremental walk
    sim.churn = Churn.parse("every=1,remove=3")  # removals above the walk pull new movies onto read pages
    assert sync(db_path, sim, config_file, "--no-enrich")["kind"] == "incremental"
    sim.churn.every = 0
    assert set(new_ids) & set(sim.catalog.ids()) <= set(mirror_movies(db_path, include_removed=True))
    assert (store_state(db_path, "reconcile") or {}).get("since"), "a moving walk leaves a removal check"
    sync(db_path, sim, config_file, "--no-enrich")
    assert_mirror_equals_catalog(db_path, sim.catalog)
    assert store_state(db_path, "reconcile") is None


def owing_a_removal_check(simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> FakeYTS:
    """A mirror whose last walk saw the list move after movies went, so the next incremental sync owes a check."""
    sim = simulator(movies=1500, seed=12)
    sync(db_path, sim, config_file, "--no-enrich")
    sim.catalog.remove(6)
    sim.catalog.add(80)
    sim.churn.every, sim.churn.add = 1, 5  # more come while it walks: the check waits for a list that holds still
    sync(db_path, sim, config_file, "--no-enrich")
    sim.churn.every = 0
    assert store_state(db_path, "reconcile")
    assert set(mirror_movies(db_path)) - set(sim.catalog.ids()), "some movies went since the last crawl"
    return sim


def test_a_removal_check_waits_for_movie_details_to_answer(simulator: Callable[..., FakeYTS], db_path: Path,
                                                          config_file: Path) -> None:
    sim = owing_a_removal_check(simulator, db_path, config_file)
    sim.faults = FaultPlan.parse("dead=movie_details")  # the check cannot confirm a removal this time
    before = sim.counts.get("movie_details", 0)
    sync(db_path, sim, config_file, "--no-enrich")
    assert store_state(db_path, "reconcile")["tries"] == 1
    assert sim.counts["movie_details"] - before == 3 * 6  # pause_after movies of max_attempts each, then it waits
    sim.faults = FaultPlan.parse("")
    sync(db_path, sim, config_file, "--no-enrich")
    assert_mirror_equals_catalog(db_path, sim.catalog)
    assert store_state(db_path, "reconcile") is None


def test_an_implausible_removal_check_asks_nothing(simulator: Callable[..., FakeYTS], db_path: Path,
                                                  config_file: Path) -> None:
    sim = owing_a_removal_check(simulator, db_path, config_file)
    sim.catalog.remove(300)  # a fifth of the catalog at once looks like a broken source
    before, listed = sim.counts.get("movie_details", 0), sim.counts["list_movies"]
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert sim.counts.get("movie_details", 0) == before  # confirming each would not change the verdict
    assert sim.counts["list_movies"] - listed == 2  # the count, read twice, says it all: no search
    assert run["warning"].startswith("not marking") and store_state(db_path, "reconcile")  # kept for later
    assert connect(db_path).execute("SELECT COUNT(*) FROM movies WHERE removed_at IS NOT NULL").fetchone()[0] == 0


def test_a_refused_removal_search_is_not_repeated_while_the_count_stays(simulator: Callable[..., FakeYTS],
                                                                        db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=1000, seed=7)
    sync(db_path, sim, config_file, "--no-enrich")
    sim.faults = FaultPlan.parse("dead=movie_details")
    sim.catalog.remove(40)  # allowed (up to 50 of 1,000), but never confirmed: the count's baseline after 3 runs
    runs = [sync(db_path, sim, config_file, "--no-enrich") for _ in range(3)]
    assert "given up after 3 runs" in runs[-1]["warning"] and store_state(db_path, "list_gap")["gap"] == 40
    later = sim.catalog.order[100:120]
    kept = {movie_id: sim.catalog.movies[movie_id] for movie_id in later}
    sim.catalog.remove(ids=later)  # 20 more is allowed by the count; the search finds all 60, which is not
    refusals = []
    for _ in range(3):
        before = sim.counts["list_movies"]
        refusals.append((sync(db_path, sim, config_file, "--no-enrich")["warning"], sim.counts["list_movies"] - before))
    assert refusals[0][0].startswith("not marking 60 of 1000 movies removed") and refusals[0][1] > 6  # it searched
    assert refusals[1:] == [(refusals[0][0], 2)] * 2  # then the count alone (read twice) says so, each run
    with sim.catalog.lock:  # the 20 come back where they were: the count is the baseline's again
        sim.catalog.movies.update(kept)
        sim.catalog.order[100:100] = later
    assert sync(db_path, sim, config_file, "--no-enrich")["warning"] is None
    assert store_state(db_path, "removals_refused") is None  # what the search found no longer stands
    sim.catalog.remove(ids=later)  # gone again: searched again, not taken for the old refusal
    before = sim.counts["list_movies"]
    assert sync(db_path, sim, config_file, "--no-enrich")["warning"].startswith("not marking 60 of 1000")
    assert sim.counts["list_movies"] - before > 6
    sim.faults = FaultPlan.parse("")
    raised = write_config(db_path.parent, "\n[sync]\nmax_removed_fraction = 0.1\n")
    assert sync(db_path, sim, raised, "--no-enrich")["movies_removed"] == 60  # allowed now: searched and marked
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_a_full_crawl_of_a_quiet_catalog_settles_a_pending_removal_check(simulator: Callable[..., FakeYTS],
                                                                          db_path: Path, config_file: Path) -> None:
    sim = owing_a_removal_check(simulator, db_path, config_file)
    sync(db_path, sim, config_file, "--no-enrich", "--full")  # marks the removals itself
    assert store_state(db_path, "reconcile") is None
    assert_mirror_equals_catalog(db_path, sim.catalog)
    before = sim.counts["list_movies"]
    sync(db_path, sim, config_file, "--no-enrich")
    assert sim.counts["list_movies"] - before == 1  # no removal check left to pay for


def test_a_removal_check_that_never_completes_is_left_to_a_full_sync(simulator: Callable[..., FakeYTS],
                                                                     db_path: Path, config_file: Path) -> None:
    sim = owing_a_removal_check(simulator, db_path, config_file)
    sim.faults = FaultPlan.parse("dead=movie_details")
    runs = [sync(db_path, sim, config_file, "--no-enrich") for _ in range(3)]
    assert [run["warning"] is None for run in runs] == [True, True, False]
    assert "removal check given up after 3 runs" in runs[-1]["warning"] and store_state(db_path, "reconcile") is None
    sim.faults = FaultPlan.parse("")
    sync(db_path, sim, config_file, "--no-enrich", "--full")
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_a_removal_check_that_reads_a_short_page_waits(simulator: Callable[..., FakeYTS], db_path: Path,
                                                       config_file: Path) -> None:
    sim = owing_a_removal_check(simulator, db_path, config_file)
    sim.faults = FaultPlan.parse("empty=1")  # movie_count promises movies no page lists, as in the 9668 sample
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert run["status"] == "ok" and store_state(db_path, "reconcile")["tries"] == 1  # nothing learnt: ask again
    assert connect(db_path).execute("SELECT COUNT(*) FROM movies WHERE removed_at IS NOT NULL").fetchone()[0] == 0
    sim.faults = FaultPlan.parse("")
    sync(db_path, sim, config_file, "--no-enrich")
    assert_mirror_equals_catalog(db_path, sim.catalog)
    assert store_state(db_path, "reconcile") is None


def test_a_count_change_survives_a_kill(simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=600, latency_ms=30)
    process = cli_subprocess(sync_args(db_path, sim.url, config_file))
    wait_for_page(db_path, 3)
    gone = sim.catalog.remove(ids=sim.catalog.ids()[:3])  # already read; movie_count drops by 3
    wait_for(lambda: (checkpoint(db_path) or {}).get("movie_count") == 597)
    process.send_signal(signal.SIGKILL)
    process.wait()
    sync(db_path, sim, config_file, "--no-enrich")  # the resumed crawl sees no change itself
    sync(db_path, sim, config_file, "--no-enrich")
    assert_mirror_equals_catalog(db_path, sim.catalog)
    marked = {row[0] for row in connect(db_path).execute("SELECT id FROM movies WHERE removed_at IS NOT NULL")}
    assert marked == set(gone)


def test_a_page_that_stays_empty_mid_catalog_fails_the_run_instead_of_ending_it(
        simulator: Callable[..., FakeYTS], db_path: Path, tmp_path: Path) -> None:
    sim = simulator(movies=1000, faults="empty=0.5", seed=3)
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("max_attempts = 6", "max_attempts = 3"))
    args = sync_args(db_path, sim.url, config)
    failures = []
    for _ in range(40):
        result = run_cli(args)
        if result.exit_code == 0:
            break
        failures.append(result.output)
    assert failures and all("yet page" in output and "lists movies" in output for output in failures), failures
    assert_mirror_equals_catalog(db_path, sim.catalog)


WARNING_UNREAD = ("movie_count says {count} movies and the mirror holds {held}: the list holds {unread} no page read "
                  "showed (listed below the newest pages, or hidden between two pages); the next full sync (--full) "
                  "looks for them, and until then removals wait for it too")


class TiesPerPage(FakeYTS):
    """Two movies tied in date_added, listed in one order for page 1 and the other for page 2 (as an
    unstable sort under LIMIT may), so the one at the page boundary shows on neither page."""

    hidden: int | None = None

    def _list_movies(self, params: Any, fault: str | None = None) -> bytes:
        order = self.catalog.order
        with self.catalog.lock:
            at = order.index(self.hidden) if self.hidden in order else -1
            swap = at >= 0 and str(params.get("page", "1")) == "1"
            if swap:
                order[at], order[at + 1] = order[at + 1], order[at]
            try:
                return super()._list_movies(params, fault)
            finally:
                if swap:
                    order[at], order[at + 1] = order[at + 1], order[at]


def test_a_movie_no_page_shows_is_reported_by_the_full_crawl(db_path: Path, config_file: Path) -> None:
    sim = TiesPerPage(Catalog(120, seed=5)).start()
    try:
        sim.hidden = sim.catalog.order[49]  # the last of page 1, tied with the first of page 2
        run = sync(db_path, sim, config_file, "--no-enrich")
        assert sim.hidden not in mirror_movies(db_path)
        assert run["warning"] == WARNING_UNREAD.format(count=120, held=119, unread=1)
        run = sync(db_path, sim, config_file, "--no-enrich")  # the same gap: said once
        assert run["kind"] == "incremental" and run["warning"] is None
    finally:
        sim.stop()


def test_new_movies_listed_below_the_pages_an_incremental_reads_are_reported(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=300)
    sync(db_path, sim, config_file, "--no-enrich")
    [backdated] = sim.catalog.add(1)
    with sim.catalog.lock:  # uploaded with an older date_added: listed on page 3
        sim.catalog.order.remove(backdated)
        sim.catalog.order.insert(120, backdated)
    before = sim.counts["list_movies"]
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert sim.counts["list_movies"] - before == 2 and run["movies_new"] == 0  # page 1, and its count confirmed
    assert run["warning"] == WARNING_UNREAD.format(count=301, held=300, unread=1)
    assert sync(db_path, sim, config_file, "--no-enrich")["warning"] is None  # said once
    run = sync(db_path, sim, config_file, "--no-enrich", "--full")
    assert run["movies_new"] == 1 and run["warning"] is None
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_a_crawl_whose_enrichment_was_stopped_counts_as_fresh(simulator: Callable[..., FakeYTS], db_path: Path,
                                                               config_file: Path) -> None:
    sim = simulator(movies=60)
    config = resolve(str(config_file), db=str(db_path), base_url=sim.url, rate=0)
    for kind in ("full", "incremental"):  # the first crawl of an empty mirror is a full one
        stop = threading.Event()
        with closing(store.open_db(db_path)) as db, closing(make_client(config)) as client:
            summary = Syncer(db, client, config, stop=stop).run(after_crawl=lambda _: stop.set())
            fresh = store.freshness(db)
        run = last_run(db_path)
        assert (run["kind"], run["status"]) == (kind, "interrupted")  # as after Ctrl-C during its enrichment
        assert fresh["last_ok_sync"] > run["started_at"] and fresh["last_ok_full"] and summary.counts["pages"]
        health = json.loads((Path(store.__file__).parent / "datasette_queries.json").read_text())["sync_health"]
        shown = {row[1]: row[2] for row in connect(db_path).execute(health["sql"]) if row[0] == "freshness"}
        assert (shown["last ok sync"], shown["last ok full sync"]) == (fresh["last_ok_sync"], fresh["last_ok_full"])


def test_freshness_is_when_the_crawl_completed_not_when_its_enrichment_did(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=60)
    config = resolve(str(config_file), db=str(db_path), base_url=sim.url, rate=0)
    for kind in ("full", "incremental"):
        with closing(store.open_db(db_path)) as db, closing(make_client(config)) as client:
            Syncer(db, client, config).run(after_crawl=lambda _: time.sleep(0.2))  # enrichment taking its time
            fresh = store.freshness(db)
            crawled = store.get_state(db, store.CRAWLED_STATE)["completed_at"]
            full_crawl = store.get_state(db, store.FULL_CRAWL_STATE)["completed_at"]
        run = last_run(db_path)
        assert (run["kind"], run["status"]) == (kind, "ok")
        assert fresh["last_ok_sync"] == crawled < run["finished_at"]
        assert fresh["last_ok_full"] == full_crawl <= crawled
        health = json.loads((Path(store.__file__).parent / "datasette_queries.json").read_text())["sync_health"]
        shown = {row[1]: row[2] for row in connect(db_path).execute(health["sql"]) if row[0] == "freshness"}
        assert (shown["last ok sync"], shown["last ok full sync"]) == (fresh["last_ok_sync"], fresh["last_ok_full"])
        older = db_path.with_name(f"older-{kind}.db")  # a mirror from before the states: the run log stands in
        with closing(sqlite3.connect(db_path)) as source, closing(sqlite3.connect(older)) as target:
            source.backup(target)
        for state in (store.CRAWLED_STATE, store.FULL_CRAWL_STATE):
            with closing(store.open_db(older)) as db:
                store.clear_state(db, state)
                fresh = store.freshness(db)
            shown = {row[1]: row[2] for row in connect(older).execute(health["sql"]) if row[0] == "freshness"}
            assert (shown["last ok sync"], shown["last ok full sync"]) == (fresh["last_ok_sync"], fresh["last_ok_full"])


def test_the_run_log_names_what_ended_a_run(tmp_path: Path) -> None:
    from mirror.sync import logged_run

    with closing(store.open_db(tmp_path / "log.db")) as db:
        for error, expected in ((KeyboardInterrupt(), ("interrupted", "aborted")),  # a second Ctrl-C
                                (OSError("disk full"), ("failed", "OSError: disk full")),
                                (RuntimeError(), ("failed", "RuntimeError"))):
            with pytest.raises(type(error)), logged_run(db, "full", lambda: "http://x", lambda: False, dict):
                raise error
            run = store.last_runs(db, 1)[0]
            assert (run["status"], run["error"]) == expected


class OneBadCount(FakeYTS):
    """A simulator whose next list answer (once armed) has a movie_count that ends the list at its page."""

    armed = False

    def _list_movies(self, params: Any, fault: str | None = None) -> bytes:
        bad, self.armed = self.armed, False
        return super()._list_movies(params, "badcount" if bad else fault)


def test_one_wrong_movie_count_is_no_removal(db_path: Path, config_file: Path) -> None:
    with OneBadCount(Catalog(300, 5)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        sim.catalog.add(3)
        sim.armed = True  # page 1 says 50 movies: 253 removed, if believed
        run = sync(db_path, sim, config_file, "--no-enrich")
        assert (run["movies_new"], run["movies_removed"], run["warning"]) == (3, 0, None)
        [gone] = sim.catalog.remove(ids=[sim.catalog.order[100]])  # then a real removal is found as ever
        run = sync(db_path, sim, config_file, "--no-enrich")
        assert (run["movies_removed"], run["warning"]) == (1, None) and marked_removed(db_path) == {gone}


class TwoCounts(FakeYTS):
    """A simulator whose every other list answer has a movie_count that ends the list at its page."""

    answers = 0

    def _list_movies(self, params: Any, fault: str | None = None) -> bytes:
        self.answers += 1
        return super()._list_movies(params, "badcount" if self.answers % 2 else fault)


def test_an_owed_check_gives_up_on_a_count_never_read_the_same_twice(db_path: Path, config_file: Path) -> None:
    with TwoCounts(Catalog(300, 5)) as sim:
        sync(db_path, sim, config_file, "--no-enrich", "--full")
        with closing(store.open_db(db_path)) as db, db.atomic():
            store.set_state(db, store.RECONCILE_STATE, {"since": store.now_iso()})
        warnings = [sync(db_path, sim, config_file, "--no-enrich")["warning"] for _ in range(3)]
        assert warnings[:2] == [None, None] and warnings[2].startswith("removal check given up after 3 runs")
        assert store_state(db_path, "reconcile") is None and not marked_removed(db_path)


class Killed(BaseException):
    """A kill at that very statement, as far as the database can tell."""


def test_the_unread_warning_outlives_a_kill_as_it_is_given(simulator: Callable[..., FakeYTS], db_path: Path,
                                                           config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = simulator(movies=300)
    sync(db_path, sim, config_file, "--no-enrich")
    [backdated] = sim.catalog.add(1)
    with sim.catalog.lock:  # listed on page 3: not read by an incremental walk
        sim.catalog.order.remove(backdated)
        sim.catalog.order.insert(120, backdated)
    update_run = store.update_run

    def killed_at_the_warning(db: Any, run_id: int, **values: Any) -> None:
        if "warning" in values:
            raise Killed
        update_run(db, run_id, **values)

    monkeypatch.setattr(store, "update_run", killed_at_the_warning)
    with pytest.raises(Killed):
        run_cli(["sync", "--db", str(db_path), "--base-url", sim.url, "--rate", "0", "--config", str(config_file),
                 "--no-enrich"])
    monkeypatch.undo()
    assert sync(db_path, sim, config_file, "--no-enrich")["warning"] == WARNING_UNREAD.format(count=301, held=300,
                                                                                              unread=1)


def test_a_removal_found_by_the_count_is_checked_once_while_the_endpoints_disagree(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=300)
    sync(db_path, sim, config_file, "--no-enrich")
    with sim.catalog.lock:  # off the list, while movie_details still answers for it
        delisted = sim.catalog.order.pop(150)
    [gone] = sim.catalog.remove(ids=[sim.catalog.order[200]])
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert run["movies_removed"] == 1 and delisted in mirror_movies(db_path)
    assert gone in mirror_movies(db_path, include_removed=True) and gone not in mirror_movies(db_path)
    sim.catalog.add(3)
    before, details = sim.counts["list_movies"], sim.counts["movie_details"]
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert run["movies_new"] == 3 and sim.counts["list_movies"] - before == 1  # no second check of the same gap
    assert sim.counts["movie_details"] == details and run["warning"] is None


def test_a_walk_over_a_moving_list_keeps_the_postponements_of_the_removal_check(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = owing_a_removal_check(simulator, db_path, config_file)
    with closing(connect(db_path)) as conn, conn:
        conn.execute("UPDATE sync_state SET value = json_set(value, '$.tries', 2) WHERE key = 'reconcile'")
    sim.catalog.add(80)
    sim.churn.every, sim.churn.add, sim.churn.remove = 1, 5, 0  # the list moves under the walk: the check waits
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert run["pages"] > 1 and store_state(db_path, "reconcile")["tries"] == 2


def run_syncer(db_path: Path, sim: FakeYTS, config_file: Path, full: bool = False,
               stop_after_pages: int | None = None) -> dict:
    """One sync in this process (list only); with `stop_after_pages`, a stop comes as that many pages commit."""
    config = resolve(str(config_file), db=str(db_path), base_url=sim.url, rate=0)
    stop, pages = threading.Event(), []

    def advance(count: int) -> None:
        pages.append(count)
        if stop_after_pages is not None and len(pages) >= stop_after_pages:
            stop.set()

    with closing(store.open_db(db_path)) as db, closing(make_client(config)) as client:
        Syncer(db, client, config, Progress(advance=advance), stop).run(full=full)
    return last_run(db_path)


def test_a_resumed_walk_ends_with_what_was_listed_when_it_resumed(simulator: Callable[..., FakeYTS], db_path: Path,
                                                                  config_file: Path) -> None:
    sim = simulator(movies=300)
    sync(db_path, sim, config_file, "--no-enrich")
    sim.catalog.add(150)
    assert run_syncer(db_path, sim, config_file, stop_after_pages=1)["status"] == "interrupted"
    assert checkpoint(db_path)["next_page"] == 2
    sim.catalog.add(30)  # while it was stopped: above the page it resumes at
    run = run_syncer(db_path, sim, config_file)
    assert (run["kind"], run["status"], run["movies_new"]) == ("incremental", "ok", 130)
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_a_full_crawl_that_saw_the_list_grow_ends_with_the_new_movies(db_path: Path, config_file: Path) -> None:
    with ScriptedChurn(Catalog(400, 6)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        sim.rescript({3: lambda catalog: catalog.add(20)})  # while page 3 of 8 is read
        before = sim.counts["list_movies"]
        run = sync(db_path, sim, config_file, "--no-enrich", "--full")
        assert (run["kind"], run["status"], run["movies_new"], run["movies_removed"]) == ("full", "ok", 20, 0)
        assert_mirror_equals_catalog(db_path, sim.catalog)
        assert sim.counts["list_movies"] - before <= 9 + 1  # the pages, the empty one, the walk over the newest


def test_a_full_crawl_that_grew_reads_page_one_once_at_its_end(db_path: Path, config_file: Path) -> None:
    with ScriptedChurn(Catalog(400, 6)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        sim.rescript({9: lambda catalog: catalog.add(3)})  # after the 8 pages: the re-read of page 1 shows them
        sim.pages_read.clear()
        run = sync(db_path, sim, config_file, "--no-enrich", "--full")
        assert (run["status"], run["movies_new"], run["movies_removed"]) == ("ok", 3, 0)
        assert_mirror_equals_catalog(db_path, sim.catalog)
        # The re-read is the top-up walk's page 1 and the removal check's: not three reads.
        assert sim.pages_read == [*range(1, 9), 1]


def test_a_removal_check_reads_page_one_once_more(db_path: Path, config_file: Path) -> None:
    with ScriptedChurn(Catalog(400, 6)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        [gone] = sim.catalog.remove(ids=[sim.catalog.order[-1]])  # the oldest: the search ends on page 8
        sim.pages_read.clear()
        run = sync(db_path, sim, config_file, "--no-enrich")
        assert run["movies_removed"] == 1 and marked_removed(db_path) == {gone}
        assert sim.pages_read.count(1) == 2, sim.pages_read  # the walk's, and the count confirmed: the search's too


def test_a_removal_hidden_by_a_movie_listed_out_of_order_is_never_silent(simulator: Callable[..., FakeYTS],
                                                                        db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=1000)
    sync(db_path, sim, config_file, "--no-enrich")
    with sim.catalog.lock:  # an old movie's date_added moves to now: it leaves its place in the mirror's order
        bumped = sim.catalog.order.pop(700)
        sim.catalog.order.insert(0, bumped)
    sim.catalog.add(60)
    sync(db_path, sim, config_file, "--no-enrich")
    [gone] = sim.catalog.remove(ids=[sim.catalog.order[300]])
    run = sync(db_path, sim, config_file, "--no-enrich")
    found = run["movies_removed"] == 1 and marked_removed(db_path) == {gone}
    assert found or f"({bumped})" in (run["warning"] or ""), run  # the search may take the wrong movie: then say so
    run = sync(db_path, sim, config_file, "--no-enrich", "--full")
    assert marked_removed(db_path) == {gone}
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_a_delisted_movie_movie_details_answers_is_warned_about_once(db_path: Path, config_file: Path) -> None:
    with ScriptedChurn(Catalog(400, 6)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        with sim.catalog.lock:  # off the list, while movie_details still answers for it: it stays present
            delisted = sim.catalog.order.pop(150)
        [gone] = sim.catalog.remove(ids=[sim.catalog.order[200]])
        run = sync(db_path, sim, config_file, "--no-enrich")
        assert run["movies_removed"] == 1 and f"({delisted})" in run["warning"]
        for _ in range(2):  # each full crawl sees the list grow, and owes a removal check that finds it again
            sim.rescript({9: lambda catalog: catalog.add(3)})
            run = sync(db_path, sim, config_file, "--no-enrich", "--full")
            assert (run["movies_new"], run["warning"]) == (3, None)
        assert marked_removed(db_path) == {gone} and delisted in mirror_movies(db_path)


class AddedWhileConfirming(ScriptedChurn):
    """A simulator whose catalog grows by two movies at the first movie_details request once armed."""

    armed = False
    late: list[int] = []

    def respond(self, endpoint: str, params: Any) -> tuple[int, dict[str, str], bytes, str | None]:
        if endpoint == "movie_details" and self.armed:
            self.armed = False
            self.late = self.catalog.add(2)
        return super().respond(endpoint, params)


def test_movies_added_while_a_full_crawl_confirms_removals_are_walked_for(db_path: Path, config_file: Path) -> None:
    with AddedWhileConfirming(Catalog(400, 6)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        sim.catalog.remove(ids=[sim.catalog.order[200]])  # unseen by the crawl: asked about with movie_details
        sim.rescript({9: lambda catalog: catalog.add(3)})  # the re-read of page 1 shows the list grew
        sim.armed = True
        run = sync(db_path, sim, config_file, "--no-enrich", "--full")
        assert (run["movies_new"], run["movies_removed"]) == (5, 1)  # the walk after the questions reads page 1 anew
        assert_mirror_equals_catalog(db_path, sim.catalog)


def test_a_removal_check_reads_page_one_anew_after_a_longer_walk(db_path: Path, config_file: Path) -> None:
    with ScriptedChurn(Catalog(400, 6)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        with closing(store.open_db(db_path)) as db, db.atomic():  # a check owed, as after a crawl the list moved under
            store.set_state(db, store.RECONCILE_STATE, {"since": store.now_iso()})
        sim.catalog.add(60)  # the walk reads pages 1 and 2: its page 1 is no longer the latest read
        sim.pages_read.clear()
        run = sync(db_path, sim, config_file, "--no-enrich")
        assert run["movies_new"] == 60 and sim.pages_read[:3] == [1, 2, 1], sim.pages_read
        assert store_state(db_path, "reconcile") is None


def test_a_complete_full_crawl_starts_its_removal_check_afresh(simulator: Callable[..., FakeYTS], db_path: Path,
                                                                config_file: Path) -> None:
    sim = simulator(movies=1000)
    sync(db_path, sim, config_file, "--no-enrich")
    first, second = sim.catalog.remove(ids=[sim.catalog.order[700], sim.catalog.order[800]])
    sync(db_path, sim, config_file, "--no-enrich", "--full")
    for returning in (first, second):  # listed again at the top (a new date_added, its old id): out of id order
        with sim.catalog.lock:
            sim.catalog.movies[returning] = sim.catalog.removed.pop(returning)
            sim.catalog.order.insert(0, returning)
        run = sync(db_path, sim, config_file, "--no-enrich", "--full")  # owes a check it cannot make yet
        assert run["warning"] is None, run["warning"]
        assert_mirror_equals_catalog(db_path, sim.catalog)
        sync(db_path, sim, config_file, "--no-enrich")


def test_a_run_keeps_every_warning_it_gives(simulator: Callable[..., FakeYTS], db_path: Path,
                                            config_file: Path) -> None:
    from mirror.sync import RunSummary

    sim = simulator(movies=10)
    sync(db_path, sim, config_file, "--no-enrich")
    config = resolve(str(config_file), db=str(db_path), base_url=sim.url, rate=0)
    with closing(store.open_db(db_path)) as db, closing(make_client(config)) as client:
        summary = RunSummary(store.start_run(db, "incremental", sim.url), "incremental")
        syncer = Syncer(db, client, config)
        syncer._warn(summary, "removals refused")
        syncer._warn(summary, "more listed than mirrored")
    assert last_run(db_path)["warning"] == "removals refused; also: more listed than mirrored"


def test_removals_refused_by_the_setting_are_searched_once_it_allows_them(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=500)
    sync(db_path, sim, config_file, "--no-enrich")
    gone = set(sim.catalog.remove(80))
    for _ in range(2):  # refused each time, from the count alone (read twice): no search
        before = sim.counts["list_movies"]
        run = sync(db_path, sim, config_file, "--no-enrich")
        assert run["warning"].startswith("not marking 80 of 500 movies removed") and run["movies_removed"] == 0
        assert sim.counts["list_movies"] - before == 2
    raised = config_file.parent / "raised.toml"
    raised.write_text(config_file.read_text() + "\n[sync]\nmax_removed_fraction = 0.5\n")
    run = sync(db_path, sim, raised, "--no-enrich")
    assert run["movies_removed"] == 80 and marked_removed(db_path) == gone


def test_an_empty_answer_from_a_listed_catalog_is_no_new_baseline(simulator: Callable[..., FakeYTS], db_path: Path,
                                                                  config_file: Path) -> None:
    sim = simulator(movies=300)
    sync(db_path, sim, config_file, "--no-enrich")
    listed = list(sim.catalog.order)
    with sim.catalog.lock:  # a bad moment upstream: the list is empty
        sim.catalog.order.clear()
    assert sync(db_path, sim, config_file, "--no-enrich")["warning"].startswith("not marking 300 of 300")
    with sim.catalog.lock:
        sim.catalog.order.extend(listed)
    [gone] = sim.catalog.remove(1)  # then a real removal: found, not hidden behind the empty answer
    run = sync(db_path, sim, config_file, "--no-enrich")
    assert run["movies_removed"] == 1 and marked_removed(db_path) == {gone}


def test_removals_a_full_crawl_refused_are_searched_once_the_setting_allows(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=500)
    sync(db_path, sim, config_file, "--no-enrich")
    gone = set(sim.catalog.remove(80))
    assert sync(db_path, sim, config_file, "--no-enrich", "--full")["warning"].startswith("not marking 80 of 500")
    assert sync(db_path, sim, config_file, "--no-enrich")["warning"].startswith("not marking 80 of 500")  # still
    raised = config_file.parent / "raised.toml"
    raised.write_text(config_file.read_text() + "\n[sync]\nmax_removed_fraction = 0.5\n")
    run = sync(db_path, sim, raised, "--no-enrich")
    assert run["movies_removed"] == 80 and marked_removed(db_path) == gone


def test_a_full_crawl_that_refuses_while_the_list_moves_searches_nothing(db_path: Path, config_file: Path) -> None:
    with ScriptedChurn(Catalog(600, 8)) as sim:
        sync(db_path, sim, config_file, "--no-enrich")
        sim.catalog.remove(100)
        sim.rescript({3: lambda catalog: catalog.add(1)})  # the list moves: the crawl ends with a walk
        before, details = sim.counts["list_movies"], sim.counts.get("movie_details", 0)
        run = sync(db_path, sim, config_file, "--no-enrich", "--full")
        assert run["warning"].startswith("not marking 100 of 600") and not marked_removed(db_path)
        assert sim.counts["list_movies"] - before <= 10 + 3  # the pages, then page 1 twice: no search to refuse
        assert sim.counts.get("movie_details", 0) == details
