"""Enrichment against the simulator: correctness under faults, dead endpoints, resume after kill -9."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import requests

from mirror import store
from mirror.client import make_client
from mirror.config import ENRICH_ENDPOINTS as ENDPOINTS
from mirror.config import resolve
from mirror.progress import Progress
from mirror.sync import logged_enrichment
from mirror.fakeapi import Catalog, FakeYTS
from support import cli_subprocess, connect, free_port, integrity_ok, last_run, query, run_cli, wait_for

ENRICHED = ("movie_details", "movie_suggestions", "movie_parental_guides")


def sync_args(db: Path, sim: FakeYTS, config: Path, *extra: str) -> list[str]:
    return ["sync", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(config), *extra]


def run_process(args: list[str], timeout: float = 300) -> str:
    process = cli_subprocess(args)
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    return stderr


def expected_details(sim: FakeYTS, movie_id: int) -> dict:
    extra = sim.catalog.extra[movie_id]
    base = sim.catalog.movies[movie_id]["large_cover_image"].rsplit("/", 1)[0]
    return {
        "description_intro": extra["description_intro"], "like_count": extra["like_count"],
        "download_count": extra["download_count"],
        "large_screenshot_image2": f"{base}/large-screenshot2.jpg",
        "cast": [(c["name"], c["character_name"], c["imdb_code"], c.get("url_small_image")) for c in extra["cast"]],
        "suggestions": sim.catalog.suggestions(movie_id),
        "guides": [(g["type"], g["parental_guide_text"]) for g in extra["parental_guides"]],
        "reviews": [(r["username"], r["user_rating"], r["review_text"], r["date_written"], r["date_written_unix"])
                    for r in extra["reviews"]],
    }


def mirrored_details(db: Path, movie_id: int) -> dict:
    conn = connect(db)
    row = conn.execute("SELECT * FROM movies WHERE id = ?", [movie_id]).fetchone()
    details = {key: row[key] for key in ("description_intro", "like_count", "download_count", "large_screenshot_image2")}
    details["cast"] = [tuple(r) for r in conn.execute(
        "SELECT name, character_name, imdb_code, url_small_image FROM movie_cast WHERE movie_id = ? ORDER BY position",
        [movie_id])]
    details["suggestions"] = [r[0] for r in conn.execute(
        "SELECT suggested_id FROM movie_suggestions WHERE movie_id = ? ORDER BY position", [movie_id])]
    details["guides"] = [tuple(r) for r in conn.execute(
        "SELECT type, parental_guide_text FROM movie_parental_guides WHERE movie_id = ? ORDER BY position", [movie_id])]
    details["reviews"] = [tuple(r) for r in conn.execute(
        "SELECT username, user_rating, review_text, date_written, date_written_unix FROM movie_reviews "
        "WHERE movie_id = ? ORDER BY position", [movie_id])]
    conn.close()
    return details


def enrich_states(db: Path, movie_id: int) -> list[tuple]:
    """A movie's enrich_state rows, to explain a failure."""
    return [tuple(row) for row in query(db, "SELECT * FROM enrich_state WHERE movie_id = ?", [movie_id])]


def failed_movies(db: Path) -> set[int]:
    """Movies with a fetch that failed after all its attempts (kept in the backlog)."""
    return {row[0] for row in query(db, "SELECT movie_id FROM enrich_state WHERE status = 'failed'")}


def test_enrichment_under_faults_with_a_dead_endpoint(simulator: Callable[..., FakeYTS], db_path: Path,
                                                      config_file: Path) -> None:
    sim = simulator(movies=1500, faults="mix=0.1,retry_after=0,dead=movie_reviews")
    stderr = run_process(sync_args(db_path, sim, config_file, "--concurrency", "4"))
    # The dead endpoint is paused and reported, cheaply.
    assert "movie_reviews paused" in stderr
    assert sim.counts["movie_reviews"] <= 20
    # A fetch whose every attempt draws a fault (about one run in a few hundred at this rate)
    # fails: it must be reported and kept in the backlog, never lost silently.
    failed = failed_movies(db_path)
    for movie_id in sim.catalog.order:
        expected, actual = expected_details(sim, movie_id), mirrored_details(db_path, movie_id)
        expected.pop("reviews"), actual.pop("reviews")
        assert actual == expected or movie_id in failed, (movie_id, enrich_states(db_path, movie_id), stderr[-2000:])
    if failed:
        assert "fetches failed; they stay in the backlog" in stderr
        run_process(["enrich", "--db", str(db_path), "--base-url", sim.url, "--rate", "0",
                     "--config", str(config_file)])
    for movie_id in sim.catalog.order:
        expected, actual = expected_details(sim, movie_id), mirrored_details(db_path, movie_id)
        expected.pop("reviews"), actual.pop("reviews")
        assert actual == expected, (movie_id, enrich_states(db_path, movie_id), stderr[-2000:])
    # Every successful request was needed; everything else was a retry of an injected fault.
    for endpoint in ENRICHED:
        assert sim.ok_counts[endpoint] == 1500, endpoint
        assert sim.counts[endpoint] == 1500 + sim.fault_counts.get(endpoint, 0)
    assert sim.ok_counts["list_movies"] <= 32
    report = json.loads(run_cli(["stats", "--db", str(db_path), "--json"]).output)
    assert report["backlog"]["movie_reviews"]["paused"] is True
    assert report["backlog"]["movie_reviews"]["pending"] == 1500
    assert report["backlog"]["movie_details"] == {"pending": 0, "done": 1500, "not_found": 0, "failed": 0,
                                                   "paused": False}
    assert integrity_ok(db_path)


def test_an_unreachable_host_fails_the_run_and_pauses_no_endpoint(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                                  config_file: Path) -> None:
    sim = simulator(movies=30)
    db = tmp_path / "gone.db"
    run_process(sync_args(db, sim, config_file, "--no-enrich"))
    gone = f"http://127.0.0.1:{free_port()}"
    for _ in range(2):  # and again: nothing was paused, so the next run tries every endpoint again
        result = run_cli(["enrich", "--db", str(db), "--base-url", gone, "--rate", "0", "--config", str(config_file)])
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and result.output.startswith(f"error: API request failed: {gone}/")
        assert (last_run(db)["kind"], last_run(db)["status"]) == ("enrich", "failed")
        assert query(db, "SELECT COUNT(*) FROM endpoint_state WHERE paused_at IS NOT NULL")[0][0] == 0
    # The host is back: the whole backlog is fetched.
    result = run_cli(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert query(db, "SELECT COUNT(*) FROM enrich_backlog WHERE pending > 0")[0][0] == 0


def test_search_finds_an_actors_movies(simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=300)
    run_cli(sync_args(db_path, sim, config_file, "--concurrency", "2"))
    actor = next(c["name"] for i in sim.catalog.order for c in sim.catalog.extra[i]["cast"])
    expected = {i for i in sim.catalog.order if any(c["name"] == actor for c in sim.catalog.extra[i]["cast"])}
    result = run_cli(["search", f'cast_names:"{actor}"', "--db", str(db_path), "--json", "--limit", "1000"])
    assert result.exit_code == 0, result.output
    assert {row["id"] for row in json.loads(result.output)} == expected
    plain = run_cli(["search", actor, "--db", str(db_path), "--json", "--limit", "1000"])
    assert expected <= {row["id"] for row in json.loads(plain.output)}


def test_paused_endpoint_is_probed_once_then_resumed(simulator: Callable[..., FakeYTS], db_path: Path,
                                                     config_file: Path) -> None:
    sim = simulator(movies=100, faults="dead=movie_reviews")
    run_cli(sync_args(db_path, sim, config_file, "--concurrency", "3"))
    spent = sim.counts["movie_reviews"]
    assert spent <= 20
    failed = query(db_path, "SELECT fetched_at, list_hash, attempted_at FROM enrich_state WHERE status = 'failed'")
    assert failed and all(row[0] is None and row[1] is None and row[2] for row in failed)  # no data kept: no fetch time
    # Still dead: the next run spends one probe (one fetch with its retries) and stays paused.
    run_cli(["enrich", "--db", str(db_path), "--base-url", sim.url, "--rate", "0", "--config", str(config_file)])
    assert sim.counts["movie_reviews"] - spent <= 6  # one probe: max_attempts in the test config
    # Back to life: the probe succeeds and the backlog is fetched.
    sim.faults.dead.clear()
    before = sum(sim.counts.values())
    result = run_cli(["enrich", "--db", str(db_path), "--base-url", sim.url, "--rate", "0", "--config",
                      str(config_file), "--concurrency", "3"])
    assert "movie_reviews resumed" in result.output
    run = last_run(db_path)  # the run log counts what this enrich run spent
    assert (run["kind"], run["status"], run["error"]) == ("enrich", "ok", None)
    assert run["requests"] == sum(sim.counts.values()) - before > 0
    for movie_id in sim.catalog.order:
        assert mirrored_details(db_path, movie_id)["reviews"] == expected_details(sim, movie_id)["reviews"]
    assert connect(db_path).execute("SELECT COUNT(*) FROM endpoint_state WHERE paused_at IS NOT NULL").fetchone()[0] == 0


def child_dump(db: Path) -> dict:
    conn = connect(db)
    out = {}
    for table in ("movie_cast", "movie_suggestions", "movie_reviews", "movie_parental_guides"):
        out[table] = [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY movie_id, position")]
    out["details"] = [tuple(r) for r in conn.execute(
        "SELECT id, description_intro, like_count, download_count, cast_names, raw_details FROM movies ORDER BY id")]
    out["state"] = [tuple(r) for r in conn.execute(
        "SELECT movie_id, endpoint, status, list_hash FROM enrich_state ORDER BY movie_id, endpoint")]
    conn.close()
    return out


def test_kill_during_enrichment_resumes_to_the_same_database(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                             config_file: Path) -> None:
    sim = simulator(movies=400, latency_ms=15)
    clean, killed = tmp_path / "clean.db", tmp_path / "killed.db"
    for db in (clean, killed):
        run_cli(sync_args(db, sim, config_file, "--no-enrich"))
    run_cli(["enrich", "--db", str(clean), "--base-url", sim.url, "--rate", "0", "--config", str(config_file),
             "--concurrency", "4"])
    before = dict(sim.ok_counts)
    args = ["enrich", "--db", str(killed), "--base-url", sim.url, "--rate", "0", "--config", str(config_file),
            "--concurrency", "4"]
    process = cli_subprocess(args)

    def enriched() -> int:
        try:
            return connect(killed).execute("SELECT COUNT(DISTINCT movie_id) FROM enrich_state").fetchone()[0] >= 120
        except Exception:  # noqa: BLE001 - the writer may be mid-checkpoint
            return False

    wait_for(enriched)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert integrity_ok(killed)
    run_process(args)
    assert child_dump(killed) == child_dump(clean)
    endpoints = ("movie_details", "movie_suggestions", "movie_reviews", "movie_parental_guides")
    repeated = [sim.ok_counts[e] - before.get(e, 0) - 400 for e in endpoints]
    assert all(0 <= r <= 4 for r in repeated), repeated  # at most one movie per worker


@pytest.mark.parametrize("command", ["enrich", "sync"])
def test_a_run_killed_during_enrichment_has_counted_what_it_enriched(
        command: str, simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=300, latency_ms=15)
    if command == "enrich":
        run_cli(sync_args(db_path, sim, config_file, "--no-enrich"))
    process = cli_subprocess([*sync_args(db_path, sim, config_file), "--concurrency", "4"] if command == "sync" else
                             ["enrich", *sync_args(db_path, sim, config_file)[1:], "--concurrency", "4"])

    def movies_enriched() -> int:
        try:
            return query(db_path, "SELECT COUNT(DISTINCT movie_id) AS n FROM enrich_state")[0]["n"]
        except sqlite3.OperationalError:  # a sync has not created the schema yet
            return 0

    wait_for(lambda: movies_enriched() >= 40)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = last_run(db_path)
    assert run["kind"] == ("enrich" if command == "enrich" else "full") and run["finished_at"] is None
    assert run["enriched"] == movies_enriched() and run["requests"] >= 4 * run["enriched"]


def test_reenrichment_replaces_rows_and_follows_list_changes(simulator: Callable[..., FakeYTS], db_path: Path,
                                                             config_file: Path) -> None:
    sim = simulator(movies=120)
    run_cli(sync_args(db_path, sim, config_file))
    movie_id = next(i for i in sim.catalog.order if len(sim.catalog.extra[i]["cast"]) >= 2)
    sim.catalog.extra[movie_id]["cast"].pop()
    sim.catalog.add_torrent(movie_id)  # its list data changes, so its details are stale
    details_before = sim.ok_counts["movie_details"]
    run_cli(sync_args(db_path, sim, config_file, "--full"))
    assert sim.ok_counts["movie_details"] - details_before == 1
    assert mirrored_details(db_path, movie_id)["cast"] == expected_details(sim, movie_id)["cast"]
    # A zero time-to-live makes everything due again; rows are replaced, never duplicated.
    config = config_file.read_text().replace("[enrich]", "[enrich]\nttl_days = { movie_suggestions = 0 }")
    config_file.write_text(config)
    run_cli(["enrich", "--db", str(db_path), "--base-url", sim.url, "--rate", "0", "--config", str(config_file)])
    assert sim.ok_counts["movie_suggestions"] == 240
    count = connect(db_path).execute("SELECT COUNT(*) FROM movie_suggestions").fetchone()[0]
    assert count == sum(len(sim.catalog.suggestions(i)) for i in sim.catalog.order)


def test_placeholder_movie_is_recorded_as_not_found(simulator: Callable[..., FakeYTS], db_path: Path,
                                                    config_file: Path) -> None:
    sim = simulator(movies=50)
    run_cli(sync_args(db_path, sim, config_file, "--no-enrich"))
    gone = sim.catalog.order[3]
    sim.catalog.remove(ids=[gone])
    run_cli(["enrich", "--db", str(db_path), "--base-url", sim.url, "--rate", "0", "--config", str(config_file),
             "--endpoint", "movie_details"])
    conn = connect(db_path)
    status = conn.execute("SELECT status FROM enrich_state WHERE movie_id = ? AND endpoint = 'movie_details'",
                          [gone]).fetchone()[0]
    assert status == "not_found"
    assert conn.execute("SELECT raw_details FROM movies WHERE id = ?", [gone]).fetchone()[0] is None
    assert conn.execute("SELECT COUNT(*) FROM movies WHERE id = 0").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM movie_cast WHERE movie_id IN (0, ?)", [gone]).fetchone()[0] == 0


def test_enrichment_never_exceeds_the_rate(simulator: Callable[..., FakeYTS], db_path: Path,
                                           config_file: Path) -> None:
    sim = simulator(movies=60, latency_ms=50, rate_limit=20)
    run_cli(sync_args(db_path, sim, config_file, "--no-enrich", "--rate", "20"))
    result = run_cli(["enrich", "--db", str(db_path), "--base-url", sim.url, "--rate", "20", "--concurrency", "8",
                      "--config", str(config_file), "--limit", "20"])
    assert result.exit_code == 0, result.output
    assert sim.refused == 0
    assert sum(sim.ok_counts.get(e, 0) for e in ENRICHED + ("movie_reviews",)) == 80


def test_enrich_options_are_validated(tmp_path: Path) -> None:
    assert run_cli(["enrich", "--endpoint", "movie_trailers"]).exit_code == 2
    result = run_cli(["enrich", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "no database at" in result.output


def test_sigterm_while_an_endpoint_backs_off_stops_at_once(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                           config_file: Path) -> None:
    sim = simulator(movies=20, faults="dead=movie_reviews")
    db = tmp_path / "stop.db"
    run_process(sync_args(db, sim, config_file, "--no-enrich"))
    slow = tmp_path / "slow.toml"
    slow.write_text("[api]\nbackoff_initial = 60\nbackoff_max = 60\nmax_attempts = 5\n")
    process = cli_subprocess(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(slow)])
    wait_for(lambda: sim.counts.get("movie_reviews", 0) >= 1)
    time.sleep(0.3)  # into the first wait between attempts
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0 and "Traceback" not in stderr, stderr
    assert last_run(db)["status"] == "interrupted"
    assert connect(db).execute("SELECT COUNT(*) FROM enrich_state WHERE status = 'failed'").fetchone()[0] == 0


def test_no_endpoints_fetches_none(simulator: Callable[..., FakeYTS], tmp_path: Path, config_file: Path) -> None:
    sim = simulator(movies=20)
    config = tmp_path / "none.toml"
    config.write_text(config_file.read_text() + "\nendpoints = []\n")  # the test config ends in [enrich]
    db = tmp_path / "none.db"
    assert run_cli(sync_args(db, sim, config)).exit_code == 0
    assert run_cli(["enrich", "--db", str(db), "--base-url", sim.url, "--config", str(config)]).exit_code == 0
    assert set(sim.counts) == {"list_movies"} and query(db, "SELECT COUNT(*) FROM enrich_state")[0][0] == 0


class NullData(FakeYTS):
    """A simulator whose chosen endpoints answer status ok with `"data": null`."""

    null_endpoints: frozenset[str] = frozenset()

    def _ok_body(self, endpoint: str, params: Any, fault: str | None = None) -> bytes:
        if endpoint in self.null_endpoints:
            return b'{"status":"ok","status_message":"Query was successful","data":null}'
        return super()._ok_body(endpoint, params, fault)


def test_an_answer_without_its_list_keeps_the_rows_and_is_retried(tmp_path: Path, config_file: Path) -> None:
    children = ("movie_suggestions", "movie_reviews", "movie_parental_guides")
    db = tmp_path / "null.db"
    with NullData(Catalog(30, 3)) as sim:
        assert run_cli(sync_args(db, sim, config_file)).exit_code == 0
        before = {table: query(db, f"SELECT * FROM {table} ORDER BY movie_id, position") for table in children}
        assert all(before.values())
        with closing(connect(db)) as conn, conn:  # due again
            conn.execute("UPDATE enrich_state SET fetched_at = '2020-01-01T00:00:00.000000Z' "
                         "WHERE endpoint != 'movie_details'")
        sim.null_endpoints = frozenset(children)
        run_cli(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(config_file)])
        assert {table: query(db, f"SELECT * FROM {table} ORDER BY movie_id, position") for table in children} == before
        assert query(db, "SELECT COUNT(*) FROM enrich_state WHERE endpoint != 'movie_details' AND status = 'ok' "
                         "AND fetched_at > '2020-01-02'")[0][0] == 0


class SlowFailingReviews(FakeYTS):
    """A simulator whose movie_reviews answers a 503 after a second; it notes when each of those came."""

    def __init__(self, catalog: Catalog):
        super().__init__(catalog)
        self.review_arrivals: list[float] = []

    def respond(self, endpoint: str, params: Any) -> tuple[int, dict[str, str], bytes, str | None]:
        if endpoint != "movie_reviews":
            return super().respond(endpoint, params)
        with self.count_lock:
            self.review_arrivals.append(time.monotonic())
        time.sleep(1)
        return 503, {"Content-Type": "text/html"}, b"<html>503</html>", "http503"


def test_a_stop_sends_no_new_request(tmp_path: Path, config_file: Path) -> None:
    db = tmp_path / "stop.db"
    with SlowFailingReviews(Catalog(20, 4)) as sim:
        assert run_cli(sync_args(db, sim, config_file, "--no-enrich")).exit_code == 0
        config = resolve(str(config_file), db=str(db), base_url=sim.url, rate=0, concurrency=4)
        stop = threading.Event()
        with closing(store.open_db(db)) as database, closing(make_client(config)) as client:
            client.stop = stop
            worker = threading.Thread(target=logged_enrichment, args=(database, client, config, stop, Progress()))
            worker.start()
            wait_for(lambda: len(sim.review_arrivals) >= 5)  # 4 failed together: their retries take turns
            time.sleep(0.3)
            stop.set()
            stopped_at = time.monotonic()
            worker.join(timeout=30)
        assert not worker.is_alive()
        assert [t for t in sim.review_arrivals if t > stopped_at] == []  # the request in flight ends the run


def test_a_stop_advances_the_bar_by_the_fetches_made(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                    config_file: Path) -> None:
    sim = simulator(movies=40)
    db = tmp_path / "bar.db"
    run_process(sync_args(db, sim, config_file, "--no-enrich"))
    config = resolve(str(config_file), db=str(db), base_url=sim.url, rate=20, concurrency=3)
    stop, advanced = threading.Event(), []

    def advance(steps: int) -> None:
        advanced.append(steps)
        if len(advanced) == 5:
            stop.set()  # the other workers are mid-movie, waiting for a token

    with closing(store.open_db(db)) as database, closing(make_client(config)) as client:
        logged_enrichment(database, client, config, stop, Progress(advance=advance))
    fetched = query(db, "SELECT COUNT(*) FROM enrich_state")[0][0]
    assert len(advanced) > 5 and sum(advanced) == fetched < 4 * len(advanced)  # movies cut short count what they got


def test_a_stop_during_a_syncs_enrichment_says_what_it_finishes(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                                config_file: Path) -> None:
    sim = simulator(movies=40)
    db = tmp_path / "say.db"
    process = cli_subprocess(["sync", "--db", str(db), "--base-url", sim.url, "--rate", "20", "--config",
                              str(config_file)])
    wait_for(lambda: sim.counts.get("movie_suggestions", 0) >= 2)  # the crawl is over: enrichment runs
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0 and "SIGTERM: writing what the workers have fetched, then stopping" in stderr, stderr


def test_sigterm_during_rate_limited_enrichment_keeps_its_count_and_answers(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                                config_file: Path) -> None:
    sim = simulator(movies=40)
    db = tmp_path / "count.db"
    run_process(sync_args(db, sim, config_file, "--no-enrich"))
    process = cli_subprocess(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "20", "--concurrency", "3",
                              "--config", str(config_file)])
    wait_for(lambda: sim.counts.get("movie_parental_guides", 0) >= 5)
    process.send_signal(signal.SIGTERM)  # at 20 req/s the workers are nearly always waiting for a token
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0 and "enrich interrupted:" in stderr, stderr
    endpoints = query(db, "SELECT COUNT(DISTINCT endpoint) FROM enrich_state")[0][0]
    per_movie = dict(query(db, "SELECT movie_id, COUNT(*) FROM enrich_state WHERE status = 'ok' GROUP BY movie_id"))
    complete = sum(n == endpoints for n in per_movie.values())  # a movie the stop cut short counts when finished
    assert last_run(db)["status"] == "interrupted" and last_run(db)["enriched"] == complete >= 5
    stored = dict(query(db, "SELECT endpoint, COUNT(*) FROM enrich_state GROUP BY endpoint"))
    assert stored == {e: sim.ok_counts[e] for e in ENDPOINTS if sim.ok_counts.get(e)}  # no answer thrown away
    run_process(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(config_file)])
    assert sum(run["enriched"] for run in query(db, "SELECT enriched FROM sync_runs WHERE kind = 'enrich'")) == 40


def test_a_listed_movie_not_found_is_asked_again_after_a_day(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                              config_file: Path) -> None:
    sim = simulator(movies=30)
    db = tmp_path / "nf.db"
    run_process(sync_args(db, sim, config_file))
    older, recent = sim.catalog.order[3], sim.catalog.order[4]
    two_days_ago = store.now_iso(days_ago=2)
    conn = connect(db)
    with conn:  # as if details had answered with the id-0 placeholder while the list held the movie
        conn.execute("UPDATE enrich_state SET status = 'not_found', fetched_at = ?, attempted_at = ? WHERE movie_id = ? "
                     "AND endpoint = 'movie_details'", [two_days_ago, two_days_ago, older])  # well inside the 90-day TTL
        conn.execute("UPDATE enrich_state SET status = 'not_found' WHERE movie_id = ? AND endpoint = 'movie_details'",
                     [recent])
    before = sim.ok_counts.get("movie_details", 0)
    run_process(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(config_file)])
    assert sim.ok_counts["movie_details"] - before == 1
    statuses = dict(conn.execute("SELECT movie_id, status FROM enrich_state WHERE endpoint = 'movie_details' "
                                 "AND movie_id IN (?, ?)", [older, recent]).fetchall())
    assert statuses == {older: "ok", recent: "not_found"}


def test_stats_counts_enrichment_of_present_movies_only(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                         config_file: Path) -> None:
    sim = simulator(movies=60)
    db = tmp_path / "st.db"
    run_process(sync_args(db, sim, config_file))
    sim.catalog.remove(8)  # within the removal guard: max(10, 5%)
    run_process(sync_args(db, sim, config_file, "--full"))
    backlog = json.loads(run_cli(["stats", "--db", str(db), "--json"]).output)["backlog"]
    assert backlog["movie_details"]["done"] == 52 and backlog["movie_details"]["pending"] == 0
    view = dict(connect(db).execute("SELECT endpoint, ok FROM enrich_backlog").fetchall())
    assert view["movie_details"] == 52


def test_workers_end_when_the_writer_leaves_early(simulator: Callable[..., FakeYTS]) -> None:
    import threading

    from mirror.client import YTSClient
    from mirror.enrich import Breaker, Pool, WorkItem

    sim = simulator(movies=20, latency_ms=200)
    client = YTSClient([sim.url], rate=0)
    breakers = {"movie_details": Breaker("movie_details", 3)}
    pool = Pool(client, breakers, 4, threading.Event())
    results = pool.run([WorkItem(movie_id, None, ["movie_details"]) for movie_id in sim.catalog.ids()[:8]])
    next(results).written.set()
    results.close()  # the writer fails: three workers are still fetching, each towards an unwritten result
    try:
        wait_for(lambda: not any(t.name.startswith("enrich-") for t in threading.enumerate()), timeout=10)
    finally:
        client.close()


def test_sync_enrich_limit_takes_the_newest_new_movies(simulator: Callable[..., FakeYTS], db_path: Path,
                                                       config_file: Path) -> None:
    sim = simulator(movies=120)
    assert run_cli(sync_args(db_path, sim, config_file, "--no-enrich")).exit_code == 0
    result = run_cli(sync_args(db_path, sim, config_file, "--enrich-limit", "5"))
    assert result.exit_code == 0, result.output
    assert last_run(db_path)["enriched"] == 5
    fetched = {row["movie_id"] for row in query(db_path, "SELECT DISTINCT movie_id FROM enrich_state")}
    assert fetched == set(sorted(sim.catalog.ids())[-5:])
    result = run_cli(sync_args(db_path, sim, config_file, "--enrich-limit", "0"))
    assert result.exit_code == 2 and "--enrich-limit" in result.output


def test_sync_refuses_an_enrich_limit_with_no_enrich(simulator: Callable[..., FakeYTS], db_path: Path,
                                                     config_file: Path) -> None:
    sim = simulator(movies=10)
    result = run_cli(sync_args(db_path, sim, config_file, "--no-enrich", "--enrich-limit", "5"))
    assert result.exit_code == 2
    assert "--enrich-limit has no effect with --no-enrich" in result.output and "Traceback" not in result.output
    assert not sim.counts.get("list_movies") and not db_path.exists()


class DetailsWithoutMovie(FakeYTS):
    """A simulator whose movie_details answers `{"status":"ok","data":null}` for chosen movies."""

    blank: frozenset[int] | set[int] = frozenset()

    def _ok_body(self, endpoint: str, params: Any, fault: str | None = None) -> bytes:
        if endpoint == "movie_details" and int(params.get("movie_id", 0)) in self.blank:
            return b'{"status":"ok","status_message":"Query was successful","data":null}'
        return super()._ok_body(endpoint, params, fault)


def test_details_without_a_movie_are_retried_not_taken_for_not_found(db_path: Path, config_file: Path) -> None:
    from mirror.client import make_client
    from mirror.config import resolve
    from mirror.sync import Syncer

    sim = DetailsWithoutMovie(Catalog(40, 1))
    sim.start(0)
    try:
        run_cli(sync_args(db_path, sim, config_file, "--no-enrich"))
        blank = sim.blank = {sim.catalog.order[2]}
        result = run_cli(["enrich", "--db", str(db_path), "--base-url", sim.url, "--rate", "0",
                          "--config", str(config_file), "--endpoint", "movie_details"])
        assert result.exit_code == 0, result.output
        statuses = dict(query(db_path, "SELECT movie_id, status FROM enrich_state WHERE endpoint = 'movie_details'"))
        assert {statuses[i] for i in blank} == {"failed"}  # asked again next run, not a day later as not found
        assert set(statuses.values()) - {"failed"} == {"ok"}
        # Nor does a removal check take such an answer for "gone upstream".
        config = resolve(str(config_file), db=str(db_path), base_url=sim.url, rate=0)
        with closing(store.open_db(db_path)) as db, closing(make_client(config)) as client:
            assert Syncer(db, client, config)._gone_upstream(next(iter(blank))) is None
    finally:
        sim.stop()


def children(db: Path, movie_id: int) -> dict:
    """A movie's rows from every child table."""
    conn = connect(db)
    rows = {table: [tuple(r) for r in conn.execute(f"SELECT * FROM {table} WHERE movie_id = ? ORDER BY position",
                                                   [movie_id])]
            for table in ("movie_cast", "movie_suggestions", "movie_reviews", "movie_parental_guides")}
    conn.close()
    return rows


def test_a_movie_details_does_not_know_keeps_its_other_rows(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                            config_file: Path) -> None:
    sim = simulator(movies=60, seed=7)
    db = tmp_path / "unknown.db"
    run_process(sync_args(db, sim, config_file))
    unknown = [row[0] for row in query(db, "SELECT DISTINCT movie_id FROM movie_reviews ORDER BY movie_id LIMIT 3")]
    kept = {movie_id: children(db, movie_id) for movie_id in unknown}
    movies = {movie_id: sim.catalog.movies[movie_id] for movie_id in unknown}
    sim.catalog.remove(ids=unknown)  # still listed in the mirror: details answer with the id-0 placeholder
    due_now = tmp_path / "due.toml"
    due_now.write_text(config_file.read_text() + "ttl_days = { movie_details = 0.0, movie_suggestions = 0.0, "
                       "movie_reviews = 0.0, movie_parental_guides = 0.0 }\n")
    before = dict(sim.counts)
    run_process(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(due_now)])
    for movie_id in unknown:
        assert children(db, movie_id) == kept[movie_id]
        assert dict(query(db, "SELECT endpoint, status FROM enrich_state WHERE movie_id = ?", [movie_id])) == {
            "movie_details": "not_found", "movie_suggestions": "ok", "movie_reviews": "ok",
            "movie_parental_guides": "ok"}
    for endpoint in ("movie_suggestions", "movie_reviews", "movie_parental_guides"):
        assert sim.counts[endpoint] - before[endpoint] == 57, endpoint  # not asked about the unknown three
    with sim.catalog.lock:  # back upstream: details are asked again after a day, then the rest
        for movie_id, movie in movies.items():
            sim.catalog.movies[movie_id] = movie
            sim.catalog.order.append(movie_id)
    conn = connect(db)
    with conn:
        conn.execute("UPDATE enrich_state SET fetched_at = ?, attempted_at = ? WHERE status = 'not_found'",
                     [store.now_iso(days_ago=2)] * 2)
    run_process(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(due_now)])
    for movie_id in unknown:
        assert mirrored_details(db, movie_id) == expected_details(sim, movie_id)


def test_sync_fetches_again_what_failed(simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=100, faults="dead=movie_reviews")
    run_process(sync_args(db_path, sim, config_file, "--concurrency", "3"))
    assert failed_movies(db_path)  # the fetches that paused the endpoint
    sim.faults.dead.clear()
    run_process(sync_args(db_path, sim, config_file, "--concurrency", "3"))  # its probe resumes it
    assert not failed_movies(db_path)
    for movie_id in sim.catalog.order:
        assert mirrored_details(db_path, movie_id)["reviews"] == expected_details(sim, movie_id)["reviews"]


@pytest.mark.parametrize("command, rate", [("enrich", "0"), ("sync", "0"), ("enrich", "40")])
def test_a_host_that_goes_away_fails_the_run_and_pauses_nothing(command: str, rate: str, tmp_path: Path,
                                                                config_file: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    simulator_process = cli_subprocess(["fake-api", "--movies", "200", "--port", str(port), "--latency-ms", "20"])
    try:
        wait_for(lambda: requests_answer(url))
        db = tmp_path / "away.db"
        run_process(["sync", "--db", str(db), "--base-url", url, "--rate", "0", "--config", str(config_file),
                     "--no-enrich"])
        extra = ["--full"] if command == "sync" else []
        process = cli_subprocess([command, "--db", str(db), "--base-url", url, "--rate", rate, "--concurrency", "4",
                                  "--config", str(config_file), *extra])  # with a rate, workers queue for tokens
        wait_for(lambda: query(db, "SELECT COUNT(*) FROM enrich_state")[0][0] >= 20)
    finally:
        simulator_process.kill()
        simulator_process.wait()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and stderr.splitlines()[-1].startswith("error: API request failed:"), stderr
    enriched = query(db, "SELECT COUNT(DISTINCT movie_id) FROM enrich_state WHERE status = 'ok'")[0][0]
    run = last_run(db)
    assert (run["status"], run["enriched"]) == ("failed", enriched) and enriched >= 5
    assert query(db, "SELECT COUNT(*) FROM endpoint_state WHERE paused_at IS NOT NULL")[0][0] == 0


def requests_answer(url: str) -> bool:
    try:
        return requests.get(f"{url}/_admin/stats", timeout=1).ok
    except requests.ConnectionError:
        return False


@pytest.mark.parametrize("seconds, text", [(0.2, "1 s"), (40, "40 s"), (89, "89 s"), (90, "2 min"), (720, "12 min"),
                                           (5399, "90 min"), (5400, "1.5 h"), (12600, "3.5 h")])
def test_backlog_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    from mirror.enrich import duration

    assert duration(seconds) == text


def test_an_endpoint_named_twice_is_fetched_once(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                 config_file: Path) -> None:
    sim = simulator(movies=30)
    db = tmp_path / "twice.db"
    run_process(sync_args(db, sim, config_file, "--no-enrich"))
    twice = tmp_path / "twice.toml"
    twice.write_text(config_file.read_text() + 'endpoints = ["movie_details", "movie_details"]\n')
    run_process(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(twice), "--limit", "3"])
    assert sim.counts["movie_details"] == 3
    run_process(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(config_file),
                 "--endpoint", "movie_reviews", "--endpoint", "movie_reviews", "--limit", "3"])
    assert sim.counts["movie_reviews"] == 3


class FailsFor(FakeYTS):
    """A simulator whose `endpoint` fails for some movies (all: None): HTTP 500, or (`silent`) no answer at all."""

    def __init__(self, catalog: Catalog, failing: set[int] | None = None, silent: bool = False,
                 endpoint: str = "movie_reviews"):
        super().__init__(catalog)
        self.failing, self.silent, self.endpoint = failing, silent, endpoint

    def respond(self, endpoint: str, params: Any) -> tuple[int, dict[str, str], bytes, str | None]:
        if endpoint == self.endpoint and (self.failing is None or int(params.get("movie_id", 0)) in self.failing):
            self._count(self.counts, endpoint)
            if self.silent:
                return 200, {}, b"", "reset"
            return 500, {"Content-Type": "text/html"}, b"<html>500</html>", "http503"
        return super().respond(endpoint, params)


def test_lasting_failures_do_not_keep_an_endpoint_from_the_rest(tmp_path: Path, config_file: Path) -> None:
    catalog = Catalog(120, 4)
    failing = set(catalog.order[10:14])
    db = tmp_path / "lasting.db"
    with FailsFor(catalog, failing) as sim:
        spent = []
        for _ in range(12):
            before = sim.counts.get("movie_reviews", 0)
            run_process(sync_args(db, sim, config_file))
            spent.append(sim.counts.get("movie_reviews", 0) - before)
    reviewed = {row[0] for row in query(db, "SELECT movie_id FROM enrich_state WHERE endpoint = 'movie_reviews' "
                                            "AND status = 'ok'")}
    assert reviewed == set(catalog.order) - failing  # the second sync gets past them
    assert spent[-3:] == [0, 0, 0], spent  # and syncs stop asking after a few tries
    assert query(db, "SELECT MIN(attempts) FROM enrich_state WHERE status = 'failed'")[0][0] >= 3


@pytest.mark.parametrize("fetch", ["first", "refresh"])
def test_enrich_retries_a_lasting_failure_once_a_day(tmp_path: Path, config_file: Path, fetch: str) -> None:
    catalog = Catalog(40, 4)
    failing = set(catalog.order[5:7])
    db = tmp_path / "daily.db"
    enrich = ["enrich", "--db", str(db), "--rate", "0", "--config", str(config_file)]
    with FailsFor(catalog, failing if fetch == "first" else set()) as sim:
        run_process(sync_args(db, sim, config_file))
        if fetch == "refresh":  # reviews fetched long ago, due again, and failing now
            with closing(connect(db)) as conn, conn:
                conn.execute(f"UPDATE enrich_state SET fetched_at = ? WHERE endpoint = 'movie_reviews' AND movie_id IN "
                             f"({','.join(map(str, failing))})", [store.now_iso(days_ago=400)])
            sim.failing = failing
        spent = []
        for _ in range(5):
            before = sim.counts.get("movie_reviews", 0)
            run_process([*enrich, "--base-url", sim.url])
            spent.append(sim.counts.get("movie_reviews", 0) - before)
        assert spent[0] > 0 and spent[-2:] == [0, 0], spent  # after a sync's three tries, not on every run
        with closing(connect(db)) as conn, conn:
            conn.execute("UPDATE enrich_state SET attempted_at = ? WHERE status = 'failed'", [store.now_iso(days_ago=1.1)])
        before = sim.counts.get("movie_reviews", 0)
        sim.failing = set()  # it answers again
        run_process([*enrich, "--base-url", sim.url])
        assert sim.counts.get("movie_reviews", 0) - before == len(failing)  # a day later, once each
    assert query(db, "SELECT COUNT(*) FROM enrich_state WHERE status = 'failed'")[0][0] == 0


def test_a_changed_movie_whose_details_keep_failing_is_not_asked_on_every_run(tmp_path: Path,
                                                                               config_file: Path) -> None:
    catalog = Catalog(40, 4)
    failing = set(catalog.order[5:7])
    db = tmp_path / "changed.db"
    with FailsFor(catalog, set(), endpoint="movie_details") as sim:
        run_process(sync_args(db, sim, config_file))
        for movie_id in failing:
            catalog.edit(movie_id, title=f"Renamed {movie_id}")  # new list data: its details are due again
        sim.failing = failing
        spent = []
        for command in ("sync", "sync", "sync", "sync", "enrich", "enrich"):
            before = sim.counts.get("movie_details", 0)
            run_process(sync_args(db, sim, config_file) if command == "sync" else
                        ["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(config_file)])
            spent.append(sim.counts.get("movie_details", 0) - before)
    assert spent[0] > 0 and spent[3:] == [0, 0, 0], spent  # three failures in a row, then once a day


def test_a_failed_recheck_of_a_movie_not_found_keeps_it_not_found(tmp_path: Path, config_file: Path) -> None:
    catalog = Catalog(20, 4)
    movie_id = catalog.order[3]
    db = tmp_path / "recheck.db"
    enrich = ["enrich", "--db", str(db), "--rate", "0", "--config", str(config_file)]
    with FailsFor(catalog, set(), endpoint="movie_details") as sim:
        run_process(sync_args(db, sim, config_file, "--no-enrich"))
        run_process([*enrich, "--base-url", sim.url, "--endpoint", "movie_details"])
        with closing(connect(db)) as conn, conn:  # said "not found" two days ago: due for its recheck
            conn.execute("UPDATE enrich_state SET status = 'not_found', fetched_at = ?, attempted_at = ? "
                         "WHERE movie_id = ?", [store.now_iso(days_ago=2)] * 2 + [movie_id])
        sim.failing = {movie_id}  # and the recheck fails
        run_process([*enrich, "--base-url", sim.url])
        catalog.edit(movie_id, title="Renamed")  # its list data changes, its details would be due
        before = sim.counts.get("movie_details", 0)
        run_process(sync_args(db, sim, config_file))
        run_process([*enrich, "--base-url", sim.url])
        assert sim.counts.get("movie_details", 0) - before == 0  # the next recheck is a day away
    assert [tuple(r) for r in query(db, "SELECT endpoint, status, attempts FROM enrich_state WHERE movie_id = ?",
                                    [movie_id])] == [("movie_details", "not_found", 1)]  # nothing else asked


def test_an_endpoint_that_answers_404_pages_keeps_the_host(tmp_path: Path, config_file: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    class NoReviews(FakeYTS):  # as if upstream dropped the endpoint, behind an HTML 404 page
        def respond(self, endpoint: str, params: Any) -> tuple[int, dict[str, str], bytes, str | None]:
            if endpoint == "movie_reviews":
                self._count(self.counts, endpoint)
                return 404, {"Content-Type": "text/html"}, b"<html>Not Found</html>", "http503"
            return super().respond(endpoint, params)

    db = tmp_path / "404.db"
    with NoReviews(Catalog(20, 4)) as sim:
        run_process(sync_args(db, sim, config_file, "--no-enrich"))
        with caplog.at_level(logging.INFO, logger="mirror.client"):
            result = run_cli(["enrich", "--db", str(db), "--base-url", f"{sim.url},http://127.0.0.1:{free_port()}",
                              "--rate", "0", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert not [r for r in caplog.records if "switching API host" in r.getMessage()]
    assert query(db, "SELECT COUNT(*) FROM enrich_state WHERE endpoint = 'movie_details' AND status = 'ok'")[0][0] == 20
    assert [tuple(r) for r in query(db, "SELECT endpoint FROM endpoint_state WHERE paused_at IS NOT NULL")] == [
        ("movie_reviews",)]


@pytest.mark.parametrize("new_movies", [3, 4, 60])
def test_an_endpoint_that_alone_never_answers_is_paused(tmp_path: Path, config_file: Path, new_movies: int) -> None:
    db = tmp_path / "silent.db"
    catalog = Catalog(40, 4)
    with FailsFor(catalog, failing=set(), endpoint="movie_parental_guides") as sim:  # each movie's last fetch
        run_process(sync_args(db, sim, config_file))
        catalog.add(new_movies)  # the last few fetches of a pass: the others answer during their retries
        sim.failing, sim.silent = None, True
        process = cli_subprocess(sync_args(db, sim, config_file, "--concurrency", "4"))
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert last_run(db)["status"] == "ok"
    assert [tuple(row) for row in query(db, "SELECT endpoint FROM endpoint_state WHERE paused_at IS NOT NULL")] == [
        ("movie_parental_guides",)]


class SilentFor(FakeYTS):
    """A simulator whose `silent` endpoints reset every connection, while the others answer."""

    def __init__(self, catalog: Catalog):
        super().__init__(catalog)
        self.silent: set[str] = set()

    def respond(self, endpoint: str, params: Any) -> tuple[int, dict[str, str], bytes, str | None]:
        if endpoint in self.silent:
            self._count(self.counts, endpoint)
            return 200, {}, b"", "reset"
        return super().respond(endpoint, params)


def test_endpoints_that_never_answer_are_paused_while_the_host_answers(tmp_path: Path, config_file: Path) -> None:
    db = tmp_path / "silent.db"
    with SilentFor(Catalog(30, 4)) as sim:
        base = ["--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(config_file)]
        run_process(["sync", *base, "--no-enrich"])
        run_process(["enrich", *base, "--endpoint", "movie_details", "--endpoint", "movie_suggestions"])
        sim.silent = {"movie_reviews", "movie_parental_guides"}  # the only work left: nothing else answers
        listed = sim.ok_counts["list_movies"]
        for _ in range(3):  # the first run pauses both; the next ones are a probe each
            run_process(["sync", *base])
            assert last_run(db)["status"] == "ok"
            paused = query(db, "SELECT endpoint FROM endpoint_state WHERE paused_at IS NOT NULL ORDER BY 1")
            assert [row[0] for row in paused] == ["movie_parental_guides", "movie_reviews"]
        assert sim.ok_counts["list_movies"] - listed == 3 * 2  # each run: its walk, and one host check


def test_a_stop_during_the_host_check_judges_nothing(tmp_path: Path, config_file: Path) -> None:
    db = tmp_path / "check.db"
    slow = tmp_path / "slow.toml"
    slow.write_text(config_file.read_text().replace("backoff_initial = 0.005", "backoff_initial = 2")
                    .replace("backoff_max = 0.05", "backoff_max = 2").replace("max_attempts = 6", "max_attempts = 2"))
    with SilentFor(Catalog(30, 4)) as sim:
        base = ["--db", str(db), "--base-url", sim.url, "--rate", "0"]
        run_process(["sync", *base, "--config", str(config_file), "--no-enrich"])
        sim.silent = {"movie_details", "movie_suggestions", "movie_reviews", "movie_parental_guides", "list_movies"}
        listed = sim.counts.get("list_movies", 0)
        process = cli_subprocess(["enrich", *base, "--config", str(slow), "--concurrency", "4"])
        wait_for(lambda: sim.counts.get("list_movies", 0) > listed, timeout=120)  # the host check has begun
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert last_run(db)["status"] == "interrupted"
    assert query(db, "SELECT COUNT(*) FROM endpoint_state WHERE paused_at IS NOT NULL")[0][0] == 0


def test_a_writer_error_after_a_silent_pause_asks_the_host_nothing(tmp_path: Path, config_file: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mirror import enrich

    db = tmp_path / "crash.db"
    with SilentFor(Catalog(30, 4)) as sim:
        run_process(["sync", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--config", str(config_file),
                     "--no-enrich"])
        sim.silent = {"movie_reviews"}
        write_movie, written = enrich.write_movie, []

        def fail_on_the_tenth(*args: Any) -> Any:  # by then movie_reviews has paused, in silence
            written.append(1)
            if len(written) == 10:
                raise sqlite3.OperationalError("disk I/O error")
            return write_movie(*args)

        monkeypatch.setattr(enrich, "write_movie", fail_on_the_tenth)
        listed = sim.counts.get("list_movies", 0)
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):  # a bug's way out: unclassified
            run_cli(["enrich", "--db", str(db), "--base-url", sim.url, "--rate", "0", "--concurrency", "1",
                     "--config", str(config_file)])
    assert sim.counts.get("list_movies", 0) == listed  # the error comes out at once, with no host check
    assert query(db, "SELECT COUNT(*) FROM endpoint_state WHERE paused_at IS NOT NULL")[0][0] == 0


def test_a_worker_that_crashes_fails_the_run_and_leaves_the_callers_stop_alone(
        simulator: Callable[..., FakeYTS], tmp_path: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mirror import enrich

    sim = simulator(movies=40)
    db = tmp_path / "crash.db"
    run_process(sync_args(db, sim, config_file, "--no-enrich"))
    fetch_one = enrich.Pool.fetch_one

    def crash_on_one_movie(self: Any, breaker: Any, endpoint: str, movie_id: int) -> Any:
        if movie_id == 20:  # a bug in a worker thread, not an API failure
            raise KeyError("bug")
        return fetch_one(self, breaker, endpoint, movie_id)

    monkeypatch.setattr(enrich.Pool, "fetch_one", crash_on_one_movie)
    stop = threading.Event()  # a scheduler's: set, it would end the daemon
    config = resolve(str(config_file), db=str(db), base_url=sim.url, rate=0, concurrency=4)
    with closing(store.open_db(db)) as database, closing(make_client(config)) as client, \
            pytest.raises(KeyError, match="bug"):
        logged_enrichment(database, client, config, stop, Progress())
    assert not stop.is_set()
    assert last_run(db)["status"] == "failed" and "bug" in last_run(db)["error"]
