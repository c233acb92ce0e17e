"""The real pipeline against the loopback simulator over HTTP, into real SQLite files."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from mirror import store, transform
from mirror.fakeapi import FAULT_KINDS, Catalog, FakeYTS, FaultPlan
from support import (ScriptedChurn, assert_mirror_equals_catalog, checkpoint, cli_subprocess, connect, free_port,
                     integrity_ok, last_run, mirror_movies, query, run_cli, sync_args, wait_for, wait_for_page,
                     write_config)


def sync(db: Path, sim: FakeYTS, config: Path, *extra: str) -> dict:
    result = run_cli(sync_args(db, sim.url, config, *extra))
    assert result.exit_code == 0, result.output
    return last_run(db)


def test_full_sync_with_mixed_faults_equals_catalog(simulator: Callable[..., FakeYTS], db_path: Path,
                                                     config_file: Path) -> None:
    sim = simulator(movies=3000, faults="mix=0.1,empty=0.02,stray=0.02,retry_after=0")
    run = sync(db_path, sim, config_file)
    assert_mirror_equals_catalog(db_path, sim.catalog)
    assert sum(sim.faults_injected.values()) >= 6
    assert sim.ok_counts["list_movies"] <= math.ceil(3000 / 50) + 2
    assert run["status"] == "ok" and run["kind"] == "full" and run["movies_new"] == 3000
    assert run["retries"] == sum(sim.fault_counts.values()) > 0
    assert run["requests"] == sum(sim.counts.values())
    assert integrity_ok(db_path)


def test_every_fault_kind_mixed_in_one_sync(simulator: Callable[..., FakeYTS], db_path: Path,
                                            config_file: Path) -> None:
    sim = simulator(movies=2000, faults="mix=0.4,empty=0.04,stray=0.04,retry_after=0")
    sync(db_path, sim, config_file)
    assert set(sim.faults_injected) >= set(FAULT_KINDS) | {"empty", "stray"}
    assert_mirror_equals_catalog(db_path, sim.catalog)
    assert sim.ok_counts["list_movies"] <= math.ceil(2000 / 50) + 2


@pytest.mark.parametrize("kind", [*FAULT_KINDS, "empty", "stray", "stale", "badcount"])
def test_each_fault_kind_alone(simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path,
                               kind: str) -> None:
    sim = simulator(movies=400, faults=f"{kind}=0.3,retry_after=0")
    sync(db_path, sim, config_file)
    assert_mirror_equals_catalog(db_path, sim.catalog)
    assert sim.faults_injected.get(kind, 0) > 0


def snapshot(db: Path) -> dict[str, list]:
    """Every data row, without the bookkeeping timestamps that record when we looked."""
    conn = connect(db)
    tables = {
        "movies": "SELECT * FROM movies ORDER BY id",
        "torrents": "SELECT * FROM torrents ORDER BY hash",
        "movie_genres": "SELECT * FROM movie_genres ORDER BY movie_id, genre",
        "fts": "SELECT rowid, * FROM movies_fts ORDER BY rowid",
    }
    out = {}
    for name, sql in tables.items():
        rows = [dict(row) for row in conn.execute(sql)]
        for row in rows:
            row.pop("last_seen_at", None)
        out[name] = rows
    conn.close()
    return out


def test_second_identical_sync_changes_nothing(simulator: Callable[..., FakeYTS], db_path: Path,
                                               config_file: Path) -> None:
    sim = simulator(movies=500)
    sync(db_path, sim, config_file, "--full")
    before = snapshot(db_path)
    run = sync(db_path, sim, config_file, "--full")
    assert snapshot(db_path) == before
    assert (run["movies_new"], run["movies_updated"], run["movies_removed"], run["torrents_new"]) == (0, 0, 0, 0)
    run = sync(db_path, sim, config_file)
    assert run["kind"] == "incremental" and run["pages"] == 1 and snapshot(db_path) == before


def test_upgrade_from_schema_1_keeps_enrichment_fresh(simulator: Callable[..., FakeYTS], db_path: Path,
                                                      config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "MIGRATION_BATCH", 7)  # several batches, the last one short
    sim = simulator(movies=120)
    sync(db_path, sim, config_file)
    compact = {row[0]: row[1] for row in connect(db_path).execute("SELECT id, raw FROM movies")}
    conn = connect(db_path)
    with conn:  # what version 1 wrote: json.dumps's spaced raw JSON, hashed as such, and enriched
        for movie_id, raw in compact.items():
            spaced = json.dumps(json.loads(raw), ensure_ascii=False)
            old_hash = transform.list_hash(spaced)
            conn.execute("UPDATE movies SET raw = ?, list_hash = ? WHERE id = ?", [spaced, old_hash, movie_id])
            conn.execute("INSERT INTO enrich_state (movie_id, endpoint, status, fetched_at, attempts, list_hash) "
                         "VALUES (?, 'movie_details', 'ok', '2026-12-01T00:00:00.000000Z', 1, ?)", [movie_id, old_hash])
        conn.execute("DROP TRIGGER movies_fts_ai")  # version 1's trigger indexed every insert itself
        conn.execute("CREATE TRIGGER movies_fts_ai AFTER INSERT ON movies BEGIN "
                     "INSERT INTO movies_fts (rowid, title, title_english, description_full, cast_names) "
                     "VALUES (new.id, new.title, new.title_english, new.description_full, new.cast_names); END")
        conn.execute("DROP TABLE fts_batch")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    run = sync(db_path, sim, config_file, "--full")
    assert run["movies_updated"] == 0
    conn = connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert {row[0]: row[1] for row in conn.execute("SELECT id, raw FROM movies")} == compact
    stale = conn.execute("SELECT COUNT(*) FROM enrich_state s JOIN movies m ON m.id = s.movie_id "
                         "WHERE s.list_hash IS NOT m.list_hash").fetchone()[0]
    assert stale == 0, "an upgrade must not send every movie back to movie_details"
    sim.catalog.add(30)  # new movies go through the upgraded insert trigger and the page indexing
    sync(db_path, sim, config_file)
    assert_mirror_equals_catalog(db_path, sim.catalog)
    assert integrity_ok(db_path)


def older_mirror(path: Path, version: int, *statements: str) -> None:
    """A mirror as an older version left it: today's schema less what `statements` undo, at `version`."""
    store.open_db(path).close()
    conn = connect(path)
    with conn:
        for statement in statements:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def test_upgrade_from_schema_2_adds_the_run_warning_column(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    older_mirror(path, 2, "ALTER TABLE sync_runs DROP COLUMN warning", "ALTER TABLE enrich_state DROP COLUMN attempted_at",
                 "INSERT INTO sync_runs (kind, started_at, status) VALUES ('full', '2026-12-01T00:00:00Z', 'ok')")
    db = store.open_db(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 5
    assert [(r["kind"], r["warning"]) for r in store.last_runs(db)] == [("full", None)]


@pytest.mark.parametrize("version", [3, 4])
def test_upgrade_from_schema_3_or_4_counts_failures_in_a_row(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.db"
    older_mirror(path, version, *["ALTER TABLE enrich_state DROP COLUMN attempted_at"] * (version == 3),
                 "INSERT INTO enrich_state (movie_id, endpoint, status, attempts) VALUES (1, 'movie_reviews', 'failed', 9)",
                 "INSERT INTO enrich_state (movie_id, endpoint, status, attempts) VALUES (1, 'movie_details', 'ok', 4)")
    db = store.open_db(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 5
    assert [tuple(r) for r in db.execute("SELECT status, attempts, attempted_at FROM enrich_state ORDER BY endpoint")] == [
        ("ok", 0, None), ("failed", 9, None)]  # the failure is retried by the next `enrich`, then once a day


def test_a_mirror_another_process_updates_first_is_not_updated_twice(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v2.db"
    older_mirror(path, 2, "ALTER TABLE sync_runs DROP COLUMN warning", "ALTER TABLE enrich_state DROP COLUMN attempted_at")
    db = store.connect(path)  # it reads version 2 here ...
    atomic = store.ImmediateDatabase.atomic
    raced: list[bool] = []

    @contextmanager
    def another_process_first(self: store.ImmediateDatabase) -> Iterator[store.ImmediateDatabase]:
        if not raced:  # ... and another process updates the mirror before our transaction begins
            raced.append(True)
            store.open_db(path).close()
        with atomic(self):
            yield self

    steps_run: list[int] = []  # a step need not be safe to run twice: each runs once, in one process
    monkeypatch.setattr(store, "MIGRATIONS", {target: (*steps, lambda _, target=target: steps_run.append(target))
                                              for target, steps in store.MIGRATIONS.items()})
    monkeypatch.setattr(store.ImmediateDatabase, "atomic", another_process_first)
    store.ensure_db_shape(db)
    assert raced and db.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert steps_run == list(range(3, store.SCHEMA_VERSION + 1))
    db.close()


def test_readers_leave_an_older_mirror_alone_while_an_older_writer_has_it(tmp_path: Path) -> None:
    from mirror.locks import writer_lock

    path = tmp_path / "v4.db"
    older_mirror(path, 4)
    with writer_lock(str(path)):  # an older yts-mirror's sync, which would go on writing version-4 rows
        for command in (["stats"], ["search", "storm"]):
            result = run_cli([*command, "--db", str(path)])
            assert result.exit_code == 3 and "needs its schema updated" in result.output, result.output
    assert query(path, "PRAGMA user_version")[0][0] == 4
    assert run_cli(["stats", "--db", str(path)]).exit_code == 0  # once it ends, a reader updates it
    assert query(path, "PRAGMA user_version")[0][0] == store.SCHEMA_VERSION


def test_a_reader_that_updates_an_older_mirror_makes_no_lock_file(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"  # in a shared directory, a lock file made under the reader's umask could shut
    older_mirror(path, 4)      # another user's writer out
    assert run_cli(["stats", "--db", str(path)]).exit_code == 0
    assert query(path, "PRAGMA user_version")[0][0] == store.SCHEMA_VERSION
    assert not Path(f"{path}.lock").exists()


def test_a_reader_that_cannot_open_the_lock_file_leaves_an_older_mirror_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mirror import locks

    path = tmp_path / "v4.db"
    older_mirror(path, 4)
    Path(f"{path}.lock").write_text("pid 1")

    def refused(lock: str) -> Any:  # another user's writer made it, mode 0600
        raise PermissionError(13, "Permission denied", lock)

    monkeypatch.setattr(locks, "_open_existing", refused)
    result = run_cli(["stats", "--db", str(path)])
    assert result.exit_code == 3 and "is not readable here, so a writer may be running" in result.output
    assert query(path, "PRAGMA user_version")[0][0] == 4


def test_a_lock_file_on_a_read_only_file_system_is_opened_read_only(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from mirror import locks

    lock = tmp_path / "m.db.lock"
    lock.write_text("pid 1")
    real_open = open

    def read_only_fs(path: str, mode: str = "r") -> Any:
        if mode != "r":
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, mode)

    monkeypatch.setattr(locks, "open", read_only_fs, raising=False)
    with locks._open_existing(str(lock)) as handle:
        assert handle.read() == "pid 1"


def test_a_read_only_older_mirror_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v4.db"
    older_mirror(path, 4)
    monkeypatch.setattr(store, "on_read_only_media", lambda _path: True)  # as on a read-only mount
    result = run_cli(["stats", "--db", str(path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {path} needs its schema updated (an older yts-mirror wrote it, or a table was dropped), and it lies "
        f"on read-only storage; run `yts-mirror stats --db {path}` once where it is writable"]


def test_an_older_mirror_missing_a_table_gets_it_back(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    older_mirror(path, 3, "DROP TABLE enrich_state")  # the steps to version 4 and 5 change enrich_state
    store.open_db(path).close()
    assert query(path, "PRAGMA user_version")[0][0] == store.SCHEMA_VERSION
    assert "attempted_at" in {row[1] for row in query(path, "PRAGMA table_info(enrich_state)")}


def test_triggers_and_views_follow_schema_sql(tmp_path: Path) -> None:
    path = tmp_path / "stale.db"
    older_mirror(path, 5, "DROP TRIGGER movies_fts_ai",  # as some version-2 mirrors have it: without fts_batch
                 "CREATE TRIGGER movies_fts_ai AFTER INSERT ON movies BEGIN "
                 "INSERT INTO movies_fts(rowid, title) VALUES (new.id, new.title); END",
                 "DROP VIEW movie_torrents", "CREATE VIEW movie_torrents AS SELECT 1 AS stale")
    fresh = tmp_path / "fresh.db"
    store.open_db(fresh).close()
    store.open_db(path).close()
    shape = "SELECT type, name, sql FROM sqlite_master WHERE type IN ('trigger', 'view') ORDER BY name"
    assert [tuple(r) for r in query(path, shape)] == [tuple(r) for r in query(fresh, shape)]


def torrent_state(db: Any) -> dict[str, tuple[Any, ...]]:
    """hash -> (movie_id, quality, seeds, first_seen_at, removed_at) of every stored torrent."""
    rows = db.execute("SELECT hash, movie_id, quality, seeds, first_seen_at, removed_at FROM torrents").fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_a_hash_listed_twice_on_one_page_is_stored_once_as_last_listed(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "twice.db")
    movies = [{"id": 1, "title": "A", "torrents": [{"hash": "ab" * 20, "quality": "720p", "seeds": 1}]},
              {"id": 2, "title": "B", "torrents": [{"hash": "AB" * 20, "quality": "1080p", "seeds": 2}]}]
    with db.atomic():
        result = store.upsert_movies(db, movies, "2026-12-05T00:00:00.000000Z")
    assert result.torrents_new == 1
    assert torrent_state(db) == {"AB" * 20: (2, "1080p", 2, "2026-12-05T00:00:00.000000Z", None)}


def test_listed_again_torrents_update_in_place_and_reappearing_ones_count_as_new(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "again.db")
    kept, dropped = "11" * 20, "22" * 20

    def page(seen_at: str, *torrents: dict[str, Any]) -> store.PageResult:
        with db.atomic():
            return store.upsert_movies(db, [{"id": 1, "title": "A", "torrents": list(torrents)}], seen_at)

    first, second, third = "2026-12-01T00:00:00.000000Z", "2026-12-02T00:00:00.000000Z", "2026-12-03T00:00:00.000000Z"
    assert page(first, {"hash": kept, "seeds": 1}, {"hash": dropped, "seeds": 1}).torrents_new == 2
    result = page(second, {"hash": kept, "seeds": 5})
    assert (result.torrents_new, result.torrents_removed) == (0, 1)
    assert torrent_state(db)[kept] == (1, None, 5, first, None)
    assert torrent_state(db)[dropped][4] == second
    assert page(third, {"hash": kept, "seeds": 6}, {"hash": dropped, "seeds": 7}).torrents_new == 1
    assert torrent_state(db) == {kept: (1, None, 6, first, None), dropped: (1, None, 7, first, None)}


def test_upgrade_leaves_unreadable_raw_json_alone(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = store.open_db(path)
    with db.atomic():
        store.upsert_movies(db, [{"id": 1, "title": "Kept"}, {"id": 2, "title": "Broken"}], store.now_iso())
    db.execute("UPDATE movies SET raw = '{\"id\": 2, trunc' WHERE id = 2")
    db.execute("PRAGMA user_version = 1")
    db.close()
    db = store.open_db(path)  # migrates: must not fail on the one row it cannot parse
    assert dict(db.execute("SELECT id, raw FROM movies").fetchall()) == {
        1: '{"id":1,"title":"Kept"}', 2: '{"id": 2, trunc'}


def test_catalog_growing_and_shrinking_during_the_crawl(simulator: Callable[..., FakeYTS], db_path: Path,
                                                         config_file: Path) -> None:
    sim = simulator(movies=1500, churn="every=2,add=9,remove=6")
    swap_neighbours(sim.catalog, 0, 49, 700)  # as real pages have them: the removal check must cope
    sync(db_path, sim, config_file, "--full")
    sim.churn.every = 0  # the catalog holds still from here on
    assert len(sim.catalog.removed) > 50 and sim.catalog._next_id > 1700
    requests_before = sim.counts["list_movies"]
    run = sync(db_path, sim, config_file)
    assert run["kind"] == "incremental"
    assert_mirror_equals_catalog(db_path, sim.catalog)
    conn = connect(db_path)
    removed = {row[0] for row in conn.execute("SELECT id FROM movies WHERE removed_at IS NOT NULL")}
    assert removed == set(sim.catalog.removed) & set(mirror_movies(db_path, include_removed=True))
    assert sim.counts["list_movies"] - requests_before < 30, "the removal check should beat a re-crawl"
    sync(db_path, sim, config_file, "--full")
    assert_mirror_equals_catalog(db_path, sim.catalog)


@pytest.mark.parametrize("churn, seed", [("every=1,add=5,remove=10", 2), ("every=1,remove=20", 1)])
def test_a_catalog_changing_at_every_request_loses_no_movie(simulator: Callable[..., FakeYTS], db_path: Path,
                                                            config_file: Path, churn: str, seed: int) -> None:
    sim = simulator(movies=3000, churn=churn, seed=seed)
    before = set(sim.catalog.ids())
    sync(db_path, sim, config_file, "--full")
    throughout = before & set(sim.catalog.ids())
    missed = throughout - set(mirror_movies(db_path))
    assert not missed, f"{len(missed)} movies listed all along were missed, e.g. {sorted(missed)[:5]}"


def test_a_catalog_shrinking_faster_than_it_is_read_does_not_hold_the_crawl(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    sim = simulator(movies=2050, churn="every=1,add=5,remove=10")
    sync(db_path, sim, config_file, "--full")
    run = sync(db_path, sim, config_file, "--full")  # its end moves back a page every 10 requests
    assert run["status"] == "ok" and run["requests"] < 200, run
    assert len(sim.catalog.ids()) > 500, "the crawl should end long before the catalog runs out"


@pytest.mark.parametrize("script", [
    # 10 movies of page 1 go, so 10 slide up out of page 3's sight; then 40 arrive before the straddling read
    {3: lambda c: c.remove(ids=c.ids()[0:10]), 4: lambda c: c.add(40)},
    # 90 go, so pages are re-read upwards; 5 arrive between two of those re-reads
    {3: lambda c: c.remove(ids=c.ids()[10:100]), 6: lambda c: c.add(5)},
], ids=["additions-before-the-straddle", "additions-between-re-reads"])
def test_a_change_between_the_reads_of_a_drop_loses_no_movie(db_path: Path, config_file: Path,
                                                             script: dict[int, Callable[[Catalog], Any]]) -> None:
    with ScriptedChurn(Catalog(1000, 3), script) as sim:
        before = set(sim.catalog.ids())
        sync(db_path, sim, config_file, "--full")
        missed = (before & set(sim.catalog.ids())) - set(mirror_movies(db_path))
    assert not missed, f"movies listed all along were missed: {sorted(missed)}"


@pytest.mark.parametrize("boundary", [50, 100, 450, 2450, 38_700, 77_500, 1_000_000])
def test_a_straddling_window_reaches_well_into_both_pages(boundary: int) -> None:
    from mirror.crawl import straddling_window

    page, size = straddling_window(boundary)
    start = (page - 1) * size
    assert 25 <= size <= 50 and start + 10 <= boundary <= start + size - 10


def test_kill_mid_crawl_keeps_committed_pages(simulator: Callable[..., FakeYTS], db_path: Path,
                                              config_file: Path) -> None:
    sim = simulator(movies=1000, latency_ms=40)
    args = sync_args(db_path, sim.url, config_file)
    process = cli_subprocess(args)
    wait_for_page(db_path, 6)
    assert json.loads(run_cli(["stats", "--db", str(db_path), "--json"]).output)["last_runs"][0]["status"] == "running"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert integrity_ok(db_path)
    next_page = checkpoint(db_path)["next_page"]
    count = connect(db_path).execute("SELECT COUNT(*) FROM movies").fetchone()[0]
    assert count == (next_page - 1) * 50, "committed pages and checkpoint disagree"
    assert count < 1000
    assert last_run(db_path)["status"] == "running"  # until the next writer closes the row
    assert not index_names(db_path) & set(store.bulk_indexes())  # a first crawl builds them at its end
    stats = json.loads(run_cli(["stats", "--db", str(db_path), "--json"]).output)
    assert stats["last_runs"][0]["status"] == "interrupted"  # its process is gone
    time.sleep(0.3)  # let the simulator finish answering the killed process's last request
    requests_before = sim.ok_counts["list_movies"]
    run = sync(db_path, sim, config_file)
    assert run["kind"] == "full" and run["pages"] == 20 - (next_page - 1)
    # The rest of the pages, then page 1 once more: did the catalog grow while we crawled?
    assert sim.ok_counts["list_movies"] - requests_before == 20 - (next_page - 1) + 1
    assert_mirror_equals_catalog(db_path, sim.catalog)
    conn = connect(db_path)
    assert [r[0] for r in conn.execute("SELECT status FROM sync_runs ORDER BY id")] == ["interrupted", "ok"]
    assert index_names(db_path) == schema_index_names(db_path.parent)


def index_names(db_path: Path) -> set[str]:
    return {row[0] for row in query(db_path, "SELECT name FROM sqlite_master WHERE type = 'index' AND sql NOT NULL")}


def schema_index_names(tmp_path: Path) -> set[str]:
    """The indexes schema.sql creates, as a fresh database has them."""
    store.open_db(tmp_path / "fresh.db").close()
    return index_names(tmp_path / "fresh.db")


def test_a_first_crawl_builds_its_indexes_at_the_end(simulator: Callable[..., FakeYTS], db_path: Path,
                                                    config_file: Path) -> None:
    sim = simulator(movies=1500, latency_ms=40)  # 30 pages: time to look while it crawls
    all_indexes = schema_index_names(db_path.parent)
    deferred = set(store.bulk_indexes())
    assert deferred and deferred < all_indexes
    args = sync_args(db_path, sim.url, config_file)
    first = cli_subprocess(args)
    wait_for_page(db_path, 3)
    assert index_names(db_path) == all_indexes - deferred
    assert first.wait(60) == 0
    assert index_names(db_path) == all_indexes
    assert integrity_ok(db_path)
    assert_mirror_equals_catalog(db_path, sim.catalog)
    again = cli_subprocess([*args, "--full"])  # a mirror with movies keeps its indexes while it syncs
    wait_for_page(db_path, 3)
    assert index_names(db_path) == all_indexes
    assert again.wait(60) == 0


def test_deferred_indexes_come_back_after_a_bug_but_wait_for_a_usable_file(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "m.db"
    db = store.open_db(path)
    with pytest.raises(sqlite3.IntegrityError), store.indexes_deferred(db):  # a bug of ours: rebuilt on the way out
        raise sqlite3.IntegrityError("a bug")
    assert index_names(path) == schema_index_names(tmp_path)
    db.execute("PRAGMA busy_timeout = 50")
    holder = sqlite3.connect(path)
    with caplog.at_level(logging.INFO, logger="mirror.store"):
        with pytest.raises(sqlite3.OperationalError), store.indexes_deferred(db):  # locked: left to the next open
            holder.execute("BEGIN IMMEDIATE")
            sqlite3.connect(path, timeout=0).execute("BEGIN IMMEDIATE")
    holder.rollback()
    assert not index_names(path) & set(store.bulk_indexes())
    assert not caplog.records  # it did not try (and wait out the lock) to rebuild them
    db.close()
    store.open_db(path).close()
    assert index_names(path) == schema_index_names(tmp_path)


def test_a_concurrent_writer_makes_the_sync_wait_not_fail(simulator: Callable[..., FakeYTS], db_path: Path,
                                                          config_file: Path) -> None:
    sim = simulator(movies=1500, latency_ms=10)
    process = cli_subprocess(sync_args(db_path, sim.url, config_file))
    wait_for_page(db_path, 2)
    opened = 0
    while process.poll() is None:  # as `yts-mirror serve` does at its start: apply schema.sql
        store.open_db(db_path).close()
        opened += 1
    _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    assert opened > 5
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_a_damaged_database_is_one_line_not_a_traceback(simulator: Callable[..., FakeYTS], db_path: Path,
                                                         config_file: Path) -> None:
    sim = simulator(movies=300)
    sync(db_path, sim, config_file)
    size = db_path.stat().st_size
    with open(db_path, "r+b") as file:  # the schema pages stay readable; table pages do not
        file.seek(size - 4096 * 60)
        file.write(b"\x0d" * 4096 * 50)
    for args in (["stats"], ["sync", "--base-url", sim.url, "--rate", "0", "--no-enrich", "--full"]):
        result = run_cli([*args, "--db", str(db_path), "--config", str(config_file)])
        assert result.exit_code == 1, result.output
        assert result.output == "error: database error: database disk image is malformed\n", result.output


def test_a_first_crawl_that_fails_still_builds_its_indexes(simulator: Callable[..., FakeYTS], db_path: Path,
                                                           config_file: Path) -> None:
    sim = simulator(movies=600, latency_ms=30)
    process = cli_subprocess(sync_args(db_path, sim.url, config_file))
    wait_for_page(db_path, 3)
    sim.faults = FaultPlan.parse("http503=1")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr
    assert last_run(db_path)["status"] == "failed"
    assert index_names(db_path) == schema_index_names(db_path.parent)


def test_sigterm_finishes_the_page_and_exits_zero(simulator: Callable[..., FakeYTS], db_path: Path,
                                                  config_file: Path) -> None:
    sim = simulator(movies=1000, latency_ms=40)
    process = cli_subprocess(sync_args(db_path, sim.url, config_file))
    wait_for_page(db_path, 3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert last_run(db_path)["status"] == "interrupted"
    assert integrity_ok(db_path)
    assert index_names(db_path) == schema_index_names(db_path.parent)  # built on the way out
    sync(db_path, sim, config_file)
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_sigterm_during_a_long_backoff_stops_at_once(simulator: Callable[..., FakeYTS], db_path: Path,
                                                     tmp_path: Path) -> None:
    sim = simulator(movies=100, faults="http503=1")
    config = tmp_path / "slow.toml"
    config.write_text("[api]\nbackoff_initial = 60\nbackoff_max = 60\nmax_attempts = 5\n")
    process = cli_subprocess(sync_args(db_path, sim.url, config))
    wait_for(lambda: sim.counts.get("list_movies", 0) >= 1)
    time.sleep(0.3)  # into the first wait between attempts
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)  # not after four waits of 30 to 60 s
    assert process.returncode == 0 and "Traceback" not in stderr, stderr
    assert last_run(db_path)["status"] == "interrupted"


def test_sigterm_while_waiting_for_a_rate_token_stops_at_once(simulator: Callable[..., FakeYTS], db_path: Path,
                                                               config_file: Path) -> None:
    sim = simulator(movies=200)
    process = cli_subprocess(["sync", "--db", str(db_path), "--base-url", sim.url, "--rate", "0.05",
                              "--config", str(config_file), "--no-enrich"])
    wait_for(lambda: sim.counts.get("list_movies", 0) >= 1)
    time.sleep(0.5)  # page 1 is in; page 2 waits 20 s for its token
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0 and "Traceback" not in stderr, stderr
    assert last_run(db_path)["status"] == "interrupted" and sim.counts["list_movies"] == 1
    assert "full sync interrupted: 1 page," in stderr  # the run's summary, as after any stop


def test_search_ranks_and_reports_bad_syntax(simulator: Callable[..., FakeYTS], db_path: Path,
                                             config_file: Path) -> None:
    sim = simulator(movies=200)
    sim.catalog.edit(sim.catalog.order[5], title="Zanzibar Nights", title_english="Zanzibar Nights")
    sim.catalog.edit(sim.catalog.order[9], description_full="a film that mentions zanzibar once")
    sync(db_path, sim, config_file)
    result = run_cli(["search", "zanzibar", "--db", str(db_path), "--json"])
    assert result.exit_code == 0
    ids = [row["id"] for row in json.loads(result.output)]
    assert ids == [sim.catalog.order[5], sim.catalog.order[9]]  # a title match outranks a description match
    for bad_query in ('title:"unclosed', "*", "* a", "NEAR(", "AND", "nosuchcolumn:x", "NEAR(a b, x)"):
        bad = run_cli(["search", bad_query, "--db", str(db_path)])
        assert bad.exit_code == 2, (bad_query, bad.output)
        assert bad.output.count("\n") == 1 and bad.output.startswith("error: invalid search syntax")
    huge = run_cli(["search", '"' + "a" * 100_000, "--db", str(db_path)])
    assert huge.exit_code == 2 and len(huge.output) < 300, len(huge.output)  # the query is named, not echoed whole
    assert run_cli(["search", " ".join(["zanzibar"] * 64), "--db", str(db_path)]).exit_code == 0
    long = run_cli(["search", " ".join(["zanzibar"] * 65), "--db", str(db_path)])  # each word is a pass over the index
    assert long.exit_code == 2 and long.output == "error: the search has 65 words; at most 64, please\n"
    joined = run_cli(["search", "_".join(["zanzibar"] * 65), "--db", str(db_path)])  # FTS5 splits at "_" as well
    assert joined.exit_code == 2 and "the search has 65 words" in joined.output
    operators = " OR ".join(["title:zanzibar"] * 64)  # operators and column names are no words to look up
    assert run_cli(["search", operators, "--db", str(db_path)]).exit_code == 0
    latin1 = run_cli(["search", os.fsdecode(b"caf\xe9"), "--db", str(db_path)])  # typed in a Latin-1 terminal
    assert latin1.exit_code == 2 and latin1.output == ("error: the search holds bytes that are not UTF-8 text "
                                                       "(is the terminal's encoding UTF-8?)\n")


@pytest.mark.parametrize("query, words", [
    ("the matrix", 2), ("the_the_the", 3), ('"a b" OR c', 3), ("title:dune OR title:arrival", 2),
    ('cast_names:"Keanu Reeves"', 2), ("-title:storm", 1), ('"the:" OR "the:"', 2), ('"AND" OR "NEAR"', 2),
    ("e\u0301te\u0301", 1), ("x\ue000y", 1), ('"a ""b"" c"', 3),
])
def test_search_words_are_counted_as_fts5_looks_them_up(query: str, words: int) -> None:
    from mirror.store import search_words

    assert search_words(query) == words


def test_error_and_log_lines_show_control_characters_as_escapes() -> None:
    from mirror.cli import SafeFormatter, terminal_safe

    assert terminal_safe("bad\x1b[2J\nline\tend") == "bad\\x1b[2J\\x0aline\tend"  # an error stays one line
    assert terminal_safe("a\nb\x07", lines=True) == "a\nb\\x07"
    assert terminal_safe("evil\u202egnp.exe \u2066x\u2069") == "evil\\u202egnp.exe \\u2066x\\u2069"  # bidi overrides
    record = logging.LogRecord("mirror", logging.WARNING, __file__, 1, "API said %s", ("\x1b]0;x\x07\nfake line",), None)
    assert SafeFormatter("%(message)s").format(record) == "API said \\x1b]0;x\\x07\\x0afake line"  # one record, one line
    debug = logging.LogRecord("mirror", logging.DEBUG, __file__, 1, "failed:\n%s", ("Traceback\n  line\x1b",), None)
    assert SafeFormatter("%(message)s").format(debug) == "failed:\nTraceback\n  line\\x1b"  # -vv keeps a traceback's lines


def test_stats_json_is_valid_utf8_for_a_file_name_that_is_not(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                               config_file: Path) -> None:
    path = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.db"))  # a Latin-1 name on a UTF-8 system
    sync(Path(path), simulator(movies=30), config_file)
    process = cli_subprocess(["stats", "--db", path, "--json"], env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert json.loads(out)["database"] == path  # the undecodable byte as a JSON escape, not raw


def test_data_and_api_text_cannot_drive_the_terminal(simulator: Callable[..., FakeYTS], db_path: Path,
                                                     config_file: Path) -> None:
    sim = simulator(movies=30)
    sim.catalog.edit(sim.catalog.order[0], title="Evil\x1b]0;owned\x07 Title\x9b2J")
    sync(db_path, sim, config_file)
    found = run_cli(["search", "evil", "--db", str(db_path)])
    assert found.exit_code == 0 and "Evil\\x1b]0;owned\\x07 Title\\x9b2J" in found.output, found.output
    assert "\x1b" not in found.output and "\x07" not in found.output and "\x9b" not in found.output
    as_json = run_cli(["search", "evil", "--db", str(db_path), "--json"])  # JSON keeps the data, escaped by JSON
    assert json.loads(as_json.output)[0]["title"] == "Evil\x1b]0;owned\x07 Title\x9b2J"
    assert "\x9b" not in as_json.output and "\\u009b" in as_json.output
    with connect(db_path) as conn:  # an error message from an API, with a line break of its own
        conn.execute("UPDATE sync_runs SET error = 'bad\nfake: line\x1b[2J'")
    stats = run_cli(["stats", "--db", str(db_path)])
    assert "error: bad\\x0afake: line\\x1b[2J" in stats.output and "\nfake: line" not in stats.output, stats.output


def test_full_text_index_follows_every_writer(simulator: Callable[..., FakeYTS], db_path: Path,
                                            config_file: Path) -> None:
    sim = simulator(movies=120)
    sim.catalog.edit(sim.catalog.order[3], title="Zanzibar Nights")
    sync(db_path, sim, config_file)
    conn = connect(db_path)
    with conn:  # an ad-hoc writer, not yts-mirror: the triggers alone keep the index in step
        conn.execute("INSERT INTO movies (id, title, raw, first_seen_at, last_seen_at) "
                     "VALUES (999999, 'Quixotic Harbour', '{}', 'x', 'x')")
        conn.execute("UPDATE movies SET title = 'Plain Title' WHERE id = ?", [sim.catalog.order[3]])
    db = store.connect(db_path)
    assert [row["id"] for row in store.search(db, "quixotic")] == [999999]
    assert store.search(db, "zanzibar") == []
    assert conn.execute("SELECT COUNT(*) FROM fts_batch").fetchone()[0] == 0
    assert integrity_ok(db_path)
    with conn:  # the check above can fail: a row indexed by nobody
        conn.execute("DROP TRIGGER movies_fts_ai")
        conn.execute("INSERT INTO movies (id, title, raw, first_seen_at, last_seen_at) "
                     "VALUES (999998, 'Unindexed', '{}', 'x', 'x')")
    assert not integrity_ok(db_path)


def test_background_checkpoints_copy_the_wal_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.db"
    db = store.open_db(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the schema is in the file; what follows, in the WAL
    db.execute("PRAGMA wal_autocheckpoint = 0")  # only the background thread copies the WAL back
    movies = [{"id": i, "title": f"Movie {i}", "torrents": [{"hash": f"{i:040X}"}]} for i in range(1, 301)]

    def in_database_file() -> int:  # immutable=1 reads the main file alone, ignoring the WAL
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM movies").fetchone()[0]
        finally:
            conn.close()

    with db.atomic():
        store.upsert_movies(db, movies[:100], store.now_iso())
    assert in_database_file() == 0
    with store.background_checkpoints(path, interval=0.05):
        with db.atomic():
            store.upsert_movies(db, movies[100:], store.now_iso())
        wait_for(lambda: in_database_file() == 300, timeout=10)
    db.close()


def test_background_checkpoints_on_an_unopenable_path_stay_quiet(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    crashes: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", crashes.append)
    with store.background_checkpoints(tmp_path / "no-such-dir" / "x.db", interval=0.01):
        time.sleep(0.1)
    assert crashes == []  # no traceback from the thread: the writer's own autocheckpoint remains


def test_stats_reports_counts_runs_and_size(simulator: Callable[..., FakeYTS], db_path: Path,
                                            config_file: Path) -> None:
    sim = simulator(movies=120)
    sync(db_path, sim, config_file)
    report = json.loads(run_cli(["stats", "--db", str(db_path), "--json"]).output)
    assert report["counts"]["movies"] == 120
    assert report["counts"]["torrents"] == sum(len(m["torrents"]) for m in sim.catalog.movies.values())
    assert report["size_bytes"] > 0 and report["last_runs"][0]["status"] == "ok"
    text = run_cli(["stats", "--db", str(db_path)]).output
    assert "movies: 120 present" in text and "last runs:" in text


def test_environment_names_the_database(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                        config_file: Path) -> None:
    sim = simulator(movies=60)
    env_db = tmp_path / "from-env.db"
    result = run_cli(["sync", "--config", str(config_file), "--rate", "0", "--no-enrich"],
                     env={"YTS_MIRROR_DB": str(env_db), "YTS_MIRROR_BASE_URL": sim.url})
    assert result.exit_code == 0, result.output
    assert len(mirror_movies(env_db)) == 60
    flag_db = tmp_path / "from-flag.db"
    result = run_cli(["sync", "--db", str(flag_db), "--config", str(config_file), "--rate", "0", "--no-enrich"],
                     env={"YTS_MIRROR_DB": str(env_db), "YTS_MIRROR_BASE_URL": sim.url})
    assert result.exit_code == 0 and flag_db.exists()


def test_config_file_sets_the_base_url(simulator: Callable[..., FakeYTS], tmp_path: Path) -> None:
    sim = simulator(movies=30)
    config = write_config(tmp_path, f'\ndb = "{tmp_path / "cfg.db"}"\n')
    text = config.read_text().replace("[api]", f'[api]\nbase_urls = ["{sim.url}"]\nrate = 0', 1)
    config.write_text(f'db = "{tmp_path / "cfg.db"}"\n' + text.replace(f'\ndb = "{tmp_path / "cfg.db"}"\n', ""))
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())  # a byte-order mark, as Windows editors save one
    result = run_cli(["sync", "--config", str(config), "--no-enrich"])
    assert result.exit_code == 0, result.output
    assert len(mirror_movies(tmp_path / "cfg.db")) == 30


@pytest.mark.parametrize("suffix", ["/", "/api/v2", "/api/v2/", "/API/V2//"])
def test_a_base_url_may_end_in_the_api_path(simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path,
                                              suffix: str) -> None:
    sim = simulator(movies=30)
    result = run_cli(["sync", "--db", str(db_path), "--base-url", sim.url + suffix, "--rate", "0",
                      "--config", str(config_file), "--no-enrich"])
    assert result.exit_code == 0, result.output
    assert len(mirror_movies(db_path)) == 30


@pytest.mark.parametrize("body, message", [
    ("[api]\nrate = 'fast'\n", "api.rate must be a number"),
    ("[api]\nrat = 1\n", "unknown config key api.rat"),
    ("[api\n", "invalid TOML"),
    ("[enrich]\nendpoints = ['movie_trailers']\n", "unknown endpoint 'movie_trailers'"),
    ("[api]\nbase_urls = ['ftp://x']\n", "is not an http(s) URL"),
    ("[api]\nbase_urls = ['http://']\n", "is not an http(s) URL with a host name"),
    ("[api]\nbase_urls = ['http://127.0.0.1:99999']\n", "is not a valid URL"),
    ("[api]\nbase_urls = ['http://[::1']\n", "is not a valid URL"),
    ("[api]\nconnect_timeout = 0.0\n", "api.connect_timeout must be between"),
    ("[api]\nread_timeout = nan\n", "api.read_timeout must be a number"),
    ("[api]\nbackoff_initial = 1e300\n", "api.backoff_initial must be between"),
    ("[api]\nrate = 1e-300\n", "api.rate must be 0 (no limit) or at least"),
    ("[api]\nbackoff_initial = 100\nbackoff_max = 1\n", "api.backoff_initial (100) must not exceed api.backoff_max"),
    ('[api]\nbase_urls = ["http://127.0.0.1:9/\\u001b[31m"]\n', "holds control characters"),
    ("[enrich]\nconcurrency = 100000\n", "enrich.concurrency must be between 1 and 64"),
    ("[schedule]\nincremental_seconds = inf\n", "schedule.incremental_seconds must be a number"),
    ("[schedule]\nmisfire_grace_seconds = 1e9\n", "schedule.misfire_grace_seconds must be between"),
    ("[schedule]\nincremental_seconds = 0.0001\n", "schedule.incremental_seconds must be 0 (off) or at least 1"),
    ("[schedule]\nenrich_seconds = 1e-7\n", "schedule.enrich_seconds must be 0 (off) or at least 1"),
    (b"\x00\xff\xfe", "not UTF-8"),
    ("[api]\nrate = 1" + "0" * 400 + "\n", "api.rate is out of range"),  # too big for a float
    ("db = \"  \"\n", "db must be a non-empty string"),
    ("[api]\nburst = 9223372036854775807\n", "api.burst is out of range"),  # whole, just huge
    ("[api]\nburst = 2.5\n", "api.burst must be a whole number"),
    ("[enrich.ttl_days]\nmovie_details = 1" + "0" * 400 + "\n", "enrich.ttl_days.movie_details is out of range"),
    ("[api]\nburst = 1" + "0" * 5000 + "\n", "invalid TOML"),  # more digits than Python turns into an int
    ("[sync]\ntrackers = ['udp://ok.example:1/announce', '']\n", "sync.trackers: '' is not a tracker URL"),
    ('[sync]\ntrackers = ["udp://x:1/a\\nb"]\n', "is not a tracker URL"),  # a newline, in every magnet
    ("[sync]\ntrackers = ['tracker.example:80']\n", "is not a tracker URL"),
    ("#" * (1024 * 1024 + 1), "is over 1024 KB"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, body: str | bytes, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_bytes(body if isinstance(body, bytes) else body.encode())
    result = run_cli(["sync", "--db", str(tmp_path / "x.db"), "--config", str(config)])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1
    assert str(config) in result.output  # it names the file
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("flags, message", [
    (["--rate", "nan"], "Invalid value for '--rate': nan is not a finite number (see '"),
    (["--rate", "-1"], "Invalid value for '--rate'"),
    (["--no-such-flag"], "No such option '--no-such-flag'"),
    (["--db", ""], "--db must not be empty"),
    (["--db", "x" * 250 + ".db"], "is too long: at most 241 bytes here"),  # no room for its .lock beside it
    (["--db", "/tmp/" + "/".join(["y" * 200] * 25) + "/x.db"], "is too long"),
    (["--db", "/tmp/" + "/".join(["y" * 100] * 5) + "/x.db"], "is too long: SQLite opens paths of up to 504 bytes"),
    (["--db", "/tmp/" + "y" * 200 + "/" + "y" * 200 + "/" + "y" * 93 + "/x.db"], "up to 504 bytes"),  # 505 bytes
    (["--base-url", " "], "--base-url must not be empty"),
    (["--base-url", "http://exa mple.com"], "is not an http(s) URL"),
    (["--base-url", f"http://{'a' * 300}.com"], "is not an http(s) URL"),
    (["--base-url", "http://127.0.0.1:9/?q=1"], "has a query or fragment"),
    (["--base-url", "http://127.0.0.1:9/#top"], "has a query or fragment"),
    (["--base-url", "http://user:secret@127.0.0.1:9"], "holds credentials; put them in ~/.netrc"),
    (["--base-url", "http://127.0.0.1:9/\x1b[31m"], "--base-url (api.base_urls): 'http://127.0.0.1:9/\\x1b[31m' holds "
                                                     "control characters"),
    (["--base-url", "http://127.0.0.1:9/\udcff"], "holds control characters or bytes that are not text"),  # argv's \xff
    (["--base-url", " , "], "--base-url (api.base_urls) must name at least one URL"),
    (["--rate", "5000"], "Invalid value for '--rate': 5000.0 is not in the range 0<=x<=1000"),
    (["--rate", "1e-9"], "--rate (api.rate) must be 0 (no limit) or at least one request a day"),
    (["--db", ":memory:"], "names SQLite's database in memory, which keeps nothing"),
    (["--db", "./:memory:"], "names SQLite's database in memory, which keeps nothing"),
])
def test_bad_flag_values_are_one_line_and_exit_2(tmp_path: Path, flags: list[str], message: str) -> None:
    result = run_cli(["sync", "--db", str(tmp_path / "x.db"), *flags])
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("variable, command, message", [
    ("YTS_MIRROR_DB", ["stats"], "YTS_MIRROR_DB must not be empty"),
    ("YTS_MIRROR_CONFIG", ["stats", "--db", "x.db"], "YTS_MIRROR_CONFIG must not be empty"),
    ("YTS_MIRROR_BASE_URL", ["sync", "--db", "x.db"], "YTS_MIRROR_BASE_URL must not be empty"),
])
def test_a_blank_environment_variable_is_refused_like_a_blank_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   variable: str, command: list[str],
                                                                   message: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, " ")
    result = run_cli(command)
    assert result.exit_code == 2 and result.output == f"error: {message}\n"
    assert not list(tmp_path.iterdir())


def test_a_bad_environment_variable_is_named_in_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YTS_MIRROR_BASE_URL", "ftp://x")
    result = run_cli(["sync", "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 2
    assert result.output == "error: YTS_MIRROR_BASE_URL (api.base_urls): 'ftp://x' is not an http(s) URL with a host name\n"


def test_a_flag_makes_its_blank_environment_variable_irrelevant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YTS_MIRROR_DB", " ")
    result = run_cli(["stats", "--db", "missing.db"])
    assert result.exit_code == 1 and "no database at missing.db" in result.output


@pytest.mark.parametrize("command", [["sync"], ["stats"], ["enrich"], ["search", "x"]])
def test_a_database_in_a_missing_directory_is_a_config_error(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "dangling.db").symlink_to(tmp_path / "nodir" / "x.db")  # the link's directory exists, not its target's
    (tmp_path / "loop.db").symlink_to(tmp_path / "loop.db")
    host = [] if command[0] in ("stats", "search") else ["--base-url", "http://127.0.0.1:9"]  # no request is made
    for db, reason in ((tmp_path / "nodir" / "x.db", "is not in an existing directory"),
                       (tmp_path / "dangling.db", "is not in an existing directory"),
                       (f"{tmp_path}/newdir/", "names a directory"),
                       (tmp_path / "loop.db", "is a symbolic link loop")):
        result = run_cli([*command, "--db", str(db), *host])
        assert result.exit_code == 2 and reason in result.output, (db, result.output)
        assert result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.db", "loop.db"]  # nothing made


def test_a_database_named_like_a_uri_is_a_file_of_that_name(simulator: Callable[..., FakeYTS], tmp_path: Path,
                                                             config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = simulator(movies=60)
    monkeypatch.chdir(tmp_path)
    for name in ("file:mirror.db", "odd?mode=memory#x.db"):
        result = run_cli(sync_args(name, sim.url, config_file))
        assert result.exit_code == 0, result.output
        assert last_run(tmp_path / name)["movies_new"] == 60  # read by its absolute path: no URI
        stats = json.loads(run_cli(["stats", "--db", name, "--json"]).output)
        assert stats["counts"]["movies"] == 60
    assert sorted(path.name for path in tmp_path.glob("*.db")) == ["file:mirror.db", "odd?mode=memory#x.db"]


def newer_mirror(db_path: Path, sim: FakeYTS, config_file: Path) -> None:
    """A mirror whose schema version is ahead of this yts-mirror's."""
    sync(db_path, sim, config_file, "--no-enrich")
    conn = connect(db_path)
    conn.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    conn.close()


@pytest.mark.parametrize("command", [["sync"], ["enrich"], ["stats"], ["search", "x"], ["serve", "--port", "0"],
                                     ["schedule"]])
def test_a_newer_schema_is_refused_in_one_line(simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path,
                                               command: list[str]) -> None:
    sim = simulator(movies=60)
    newer_mirror(db_path, sim, config_file)
    process = cli_subprocess([*command, "--db", str(db_path), "--config", str(config_file)])
    try:
        _, stderr = process.communicate(timeout=60)  # a scheduler must not start and fail every job
    finally:
        process.kill()
    expected = f"is newer than this yts-mirror ({store.SCHEMA_VERSION}); upgrade yts-mirror\n"
    assert process.returncode == 1 and stderr.startswith("error: ") and stderr.endswith(expected), stderr
    assert stderr.count("\n") == 1


@pytest.mark.parametrize("command", [["sync", "--no-enrich", "--rate", "0"], ["stats"], ["search", "x"], ["enrich"],
                                     ["serve", "--port", "0"], ["schedule"]])
@pytest.mark.parametrize("column, drop", [
    ("synopsis", "DROP TRIGGER movies_fts_au; ALTER TABLE movies DROP COLUMN synopsis;"),
    ("imdb_code", "DROP INDEX movies_imdb_code; DROP INDEX movies_api_present; ALTER TABLE movies DROP COLUMN imdb_code;"),
])
def test_a_column_dropped_by_hand_is_one_line(simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path,
                                              command: list[str], column: str, drop: str) -> None:
    sim = simulator(movies=60)
    sync(db_path, sim, config_file, "--no-enrich")
    conn = connect(db_path)
    conn.executescript(drop)
    conn.close()
    process = cli_subprocess([*command, "--db", str(db_path), "--config", str(config_file)],
                             env={**os.environ, "YTS_MIRROR_BASE_URL": sim.url})
    try:
        _, stderr = process.communicate(timeout=60)  # a scheduler must not start and fail every job
    finally:
        process.kill()
    assert process.returncode == 1, stderr
    assert stderr == (f"error: the mirror's table movies lacks column {column} (changed by hand?); put it back, "
                      "or sync into a new --db\n")


def test_an_unreadable_database_is_exit_1_however_it_is_named(db_path: Path) -> None:
    db_path.write_bytes(b"SQLite format 3\x00" + bytes(4080))
    db_path.chmod(0)
    # root reads any file: drop the capabilities that let it
    as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    command = [*as_user, sys.executable, "-m", "mirror", "stats"]
    by_flag = subprocess.run([*command, "--db", str(db_path)], capture_output=True, text=True)
    by_environment = subprocess.run(command, capture_output=True, text=True,
                                    env={**os.environ, "YTS_MIRROR_DB": str(db_path)})
    assert by_flag.returncode == by_environment.returncode == 1, (by_flag.stderr, by_environment.stderr)
    assert by_flag.stderr == by_environment.stderr.replace("YTS_MIRROR_DB", "--db")
    assert by_flag.stderr.count("\n") == 1 and "cannot open database" in by_flag.stderr


def test_schedule_refuses_a_database_of_something_else_at_once(tmp_path: Path) -> None:
    other = tmp_path / "notes.db"
    other.write_text("not a database\n" * 100)
    process = cli_subprocess(["schedule", "--db", str(other)])
    try:
        _, stderr = process.communicate(timeout=30)  # not a scheduler that fails every job
    finally:
        process.kill()
    assert process.returncode == 2 and "is not a yts-mirror database" in stderr


@pytest.mark.parametrize("flags, message", [
    (["--churn", "add=3"], "add and remove need every=N"),
    (["--churn", "every=0,remove=1"], "add and remove need every=N"),
    (["--churn", "every=5,add=1000000"], "at most 10,000 movies"),
    (["--churn", "every=²"], "use every=N,add=N,remove=N"),
    (["--faults", "mix"], "is not KEY=VALUE"),
    (["--faults", "timeout=0.1,timeout_s=nan"], "timeout_s needs seconds from 0 to 600"),
    (["--faults", "mix=0.6,empty=0.5"], "the probabilities add up to 1.1, more than 1"),
    (["--host", " "], "must name an address"),
])
def test_bad_simulator_specs_are_one_line_and_exit_2(flags: list[str], message: str) -> None:
    result = run_cli(["fake-api", "--port", "0", *flags])
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output


@pytest.mark.parametrize("quiet", [False, True])
def test_the_simulator_names_its_url_unless_quiet(quiet: bool) -> None:
    port = free_port()
    process = cli_subprocess(["-q"] * quiet + ["fake-api", "--movies", "5", "--port", str(port)])
    try:
        wait_for(lambda: simulator_answers(f"http://127.0.0.1:{port}"))
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0
    url = f"http://127.0.0.1:{port}"
    assert stderr == ("" if quiet else f"fake YTS API with 5 movies: sync with --base-url {url} (Ctrl-C stops)\n")


def simulator_answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/_admin/stats", timeout=1).ok
    except requests.ConnectionError:
        return False


def test_no_lock_file_is_left_for_a_database_that_cannot_be_used(tmp_path: Path, config_file: Path) -> None:
    assert run_cli(["sync", "--config", str(config_file)], env={"YTS_MIRROR_DB": str(tmp_path)}).exit_code == 2
    assert run_cli(["enrich", "--db", str(tmp_path / "missing.db"), "--config", str(config_file)]).exit_code == 1
    assert sorted(p.name for p in tmp_path.parent.iterdir() if p.name.startswith(tmp_path.name)) == [tmp_path.name]
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_bare_command_shows_the_help() -> None:
    result = run_cli([])
    assert "Usage:" in result.output and "Commands:" in result.output and not result.output.startswith("error")


def test_missing_config_file_and_bad_flags_exit_2(tmp_path: Path) -> None:
    result = run_cli(["sync", "--db", str(tmp_path / "x.db"), "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "config file not found" in result.output
    assert run_cli(["sync", "--rate", "-1"]).exit_code == 2
    assert run_cli(["sync", "--concurrency", "0"]).exit_code == 2


def test_unreachable_host_is_one_clear_line(tmp_path: Path, config_file: Path) -> None:
    process = cli_subprocess(["sync", "--db", str(tmp_path / "x.db"), "--base-url", "http://127.0.0.1:9",
                              "--config", str(config_file), "--rate", "0"])
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert stderr.startswith("error: API request failed: http://127.0.0.1:9/api/v2/list_movies.json?limit=50&page=1&")
    assert "Traceback" not in stderr and stderr.count("\n") == 1
    assert last_run(tmp_path / "x.db")["status"] == "failed"


def test_failover_across_dead_hosts_is_still_one_line(tmp_path: Path, config_file: Path) -> None:
    dead = ",".join(f"http://127.0.0.1:{port}" for port in (9, 10, 11))  # nothing listens on these
    process = cli_subprocess(["sync", "--db", str(tmp_path / "x.db"), "--base-url", dead,
                              "--config", str(config_file), "--rate", "0"])
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and stderr.startswith("error: API request failed: http://127.0.0.1:")
    assert stderr.count("\n") == 1, stderr
    named = [port for port in (9, 10, 11) if f"http://127.0.0.1:{port}" in stderr]
    assert named == [9, 10, 11] and "also tried http://127.0.0.1:" in stderr, stderr  # every host it tried


def test_the_run_log_names_the_host_that_answered(simulator: Callable[..., FakeYTS], db_path: Path,
                                                  config_file: Path) -> None:
    sim = simulator(movies=60)
    result = run_cli(["sync", "--db", str(db_path), "--base-url", f"http://127.0.0.1:9,{sim.url}", "--rate", "0",
                      "--config", str(config_file), "--no-enrich"])
    assert result.exit_code == 0, result.output
    assert last_run(db_path)["base_url"] == sim.url


def test_the_next_run_starts_with_the_host_that_answered_last(simulator: Callable[..., FakeYTS], db_path: Path,
                                                              config_file: Path) -> None:
    broken, live = simulator(movies=3, faults="http503=1"), simulator(movies=7)

    def sync(*urls: str) -> None:
        args = ["sync", "--no-enrich", "--rate", "0", "--db", str(db_path), "--config", str(config_file)]
        assert run_cli([*args, "--base-url", ",".join(urls)]).exit_code == 0

    sync(broken.url, live.url)
    assert broken.counts["list_movies"] == 3  # three 503 pages, then the next host
    sync(broken.url, live.url)
    assert broken.counts["list_movies"] == 3  # straight to the host that answered last time
    sync(broken.url, live.url, f"http://127.0.0.1:{free_port()}")
    assert broken.counts["list_movies"] == 6  # a changed list is tried in its own order again
    assert mirror_movies(db_path).keys() == {int(i) for i in live.catalog.ids()}


def test_a_host_that_keeps_answering_the_wrong_page_is_left_for_the_next(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path) -> None:
    broken, live = simulator(movies=120, faults="stale=1"), simulator(movies=120)  # one catalog, two hosts
    result = run_cli(sync_args(db_path, f"{broken.url},{live.url}", config_file))
    assert result.exit_code == 0, result.output
    assert broken.counts["list_movies"] == 3  # three wrong answers, then the next host
    assert_mirror_equals_catalog(db_path, live.catalog)


def test_a_nul_in_the_configured_database_path_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "nul.toml"
    config.write_text('db = "x\\u0000y.db"\n')
    result = run_cli(["stats", "--config", str(config)])
    assert result.exit_code == 2 and result.output == "error: the database path holds a NUL character\n", result.output


def test_a_host_named_twice_is_one_host(tmp_path: Path) -> None:
    from mirror.config import resolve

    config = resolve(db=str(tmp_path / "x.db"), base_url="http://127.0.0.1:9,http://127.0.0.1:8,http://127.0.0.1:9")
    assert config.api.base_urls == ("http://127.0.0.1:9", "http://127.0.0.1:8")  # no switching to itself


def test_a_host_named_with_and_without_the_api_path_is_one_host(tmp_path: Path) -> None:
    from mirror.config import resolve

    config = resolve(db=str(tmp_path / "x.db"), base_url="https://a.example/api/v2/,https://a.example,http://b.example/x/")
    assert config.api.base_urls == ("https://a.example", "http://b.example/x")


def test_second_writer_exits_3_or_waits(simulator: Callable[..., FakeYTS], db_path: Path,
                                        config_file: Path) -> None:
    from mirror.locks import writer_lock

    sim = simulator(movies=60)
    with writer_lock(str(db_path)):
        result = run_cli(["sync", "--db", str(db_path), "--base-url", sim.url, "--config", str(config_file)])
        assert result.exit_code == 3
        assert "is being written by pid" in result.output and "--wait" in result.output
    process = cli_subprocess(sync_args(db_path, sim.url, config_file, "--wait"))
    assert process.wait(timeout=60) == 0


def test_stats_and_search_never_wait_for_a_writer(simulator: Callable[..., FakeYTS], db_path: Path,
                                                  config_file: Path) -> None:
    sync(db_path, simulator(movies=60), config_file)
    writer = sqlite3.connect(db_path)
    writer.execute("BEGIN IMMEDIATE")  # a sync in the middle of a page
    writer.execute("UPDATE sync_runs SET error = 'x'")
    try:
        started = time.monotonic()
        assert run_cli(["stats", "--db", str(db_path)]).exit_code == 0
        assert run_cli(["search", "the", "--db", str(db_path)]).exit_code == 0
        assert time.monotonic() - started < 10  # they read; they never queue for the write lock
    finally:
        writer.rollback()
        writer.close()


@pytest.mark.parametrize("table", ["notes (a)", "movies (a TEXT, b INTEGER)", None])
def test_a_database_of_something_else_is_left_untouched(tmp_path: Path, config_file: Path, table: str | None) -> None:
    other = tmp_path / "other.db"
    if table is None:
        other.write_text("a text file, not SQLite at all\n" * 200)
    else:
        conn = sqlite3.connect(other)
        conn.execute(f"CREATE TABLE {table}")
        conn.commit()
        conn.close()
    before = other.read_bytes()
    for command in (["stats"], ["search", "x"], ["enrich"], ["sync", "--base-url", "http://127.0.0.1:9"]):
        result = run_cli([*command, "--db", str(other), "--config", str(config_file)])
        assert result.exit_code == 2 and "is not a yts-mirror database" in result.output, (command, result.output)
    assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "other.db"]  # no lock file either


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_database_path_that_is_no_regular_file_is_refused(tmp_path: Path, config_file: Path, kind: str) -> None:
    path = tmp_path / "pipe.db"
    if kind == "fifo":
        os.mkfifo(path)  # opening it to read would block for good
    else:
        path = Path(os.devnull)
    config = ["--config", str(config_file)]
    for command in (["stats", *config], ["search", "x", *config], ["enrich", *config], ["demo"],
                    ["sync", "--base-url", "http://127.0.0.1:9", *config]):
        process = cli_subprocess([*command, "--db", str(path)])
        try:
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()  # a hang on the FIFO must not outlive the test
        assert process.returncode == 2 and err == f"error: the database path {path} is not a regular file\n", (command, err)


def test_a_config_can_come_through_a_pipe(tmp_path: Path) -> None:
    path = tmp_path / "pipe.toml"
    os.mkfifo(path)  # as `--config <(...)` gives
    writer = threading.Thread(target=lambda: path.write_text("[api]\nrat = 1\n"))
    writer.start()
    result = run_cli(["stats", "--db", str(tmp_path / "x.db"), "--config", str(path)])
    writer.join(timeout=30)
    assert result.exit_code == 2 and "unknown config key api.rat" in result.output, result.output


def test_a_config_path_that_is_a_device_is_refused(tmp_path: Path) -> None:
    path = Path("/dev/zero")  # reading it would never end
    for env, flags in (({}, ["--config", str(path)]), ({"YTS_MIRROR_CONFIG": str(path)}, [])):
        process = cli_subprocess(["stats", "--db", str(tmp_path / "x.db"), *flags], env={**os.environ, **env})
        try:
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
        assert process.returncode == 2 and err == f"error: config file {path} is not a regular file\n", (env, err)


def test_a_database_with_two_hard_links_is_refused(simulator: Callable[..., FakeYTS], db_path: Path,
                                                   config_file: Path) -> None:
    sim = simulator(movies=60)
    sync(db_path, sim, config_file)
    (db_path.parent / "twin.db").hardlink_to(db_path)  # two names, two WAL files: writes through both corrupt it
    for name in ("mirror.db", "twin.db"):
        for command in (sync_args(db_path.with_name(name), sim.url, config_file), ["stats", "--db", str(db_path)]):
            result = run_cli(command)
            assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
            assert "has 2 hard links; SQLite corrupts a database written through two names" in result.output
    assert integrity_ok(db_path) and last_run(db_path)["status"] == "ok"


def test_a_symlink_to_the_database_shares_its_lock(tmp_path: Path, db_path: Path, config_file: Path) -> None:
    from mirror.locks import writer_lock

    link = tmp_path / "link.db"
    link.symlink_to(db_path)
    with writer_lock(str(db_path)):
        result = run_cli(["sync", "--db", str(link), "--base-url", "http://127.0.0.1:9", "--config", str(config_file)])
    assert result.exit_code == 3, result.output


def test_readers_restore_a_dropped_table(simulator: Callable[..., FakeYTS], db_path: Path,
                                         config_file: Path) -> None:
    sync(db_path, simulator(movies=60), config_file)
    conn = sqlite3.connect(db_path)
    for table in ("movie_cast", "enrich_state", "torrent_stats", "sync_state"):
        conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()
    result = run_cli(["stats", "--db", str(db_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"]["movies"] == 60
    assert run_cli(["search", "the", "--db", str(db_path)]).exit_code == 0


def test_search_without_a_database_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli(["search", "x", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "no database at" in result.output
    assert not (tmp_path / "none.db").exists()
    empty, versioned = tmp_path / "empty.db", tmp_path / "versioned.db"
    empty.touch()
    with sqlite3.connect(versioned) as conn:  # no tables, but a version: still no mirror
        conn.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION}")
    before = versioned.read_bytes()
    for path in (empty, versioned):
        for command in (["search", "x"], ["stats"]):  # readers leave such a file as they found it
            result = run_cli([*command, "--db", str(path)])
            assert result.exit_code == 1 and "holds no mirror yet" in result.output, result.output
    assert empty.stat().st_size == 0 and versioned.read_bytes() == before


def test_demo_syncs_and_shows_the_result_quietly(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    process = cli_subprocess(["demo", "--db", str(db), "--movies", "200", "--no-enrich"], cwd=tmp_path)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    text = out + err
    assert "movies: 200 present, 0 removed" in text and "Browse it:" in text
    assert "(the catalog at http://127.0.0.1:8001/demo/movie_catalog)" in text
    assert "Traceback" not in text and "SIGTERM" not in text  # the simulator stops without a word
    assert connect(db).execute("SELECT COUNT(*) FROM movies WHERE removed_at IS NULL").fetchone()[0] == 200
    assert integrity_ok(db)


def test_a_demo_stopped_midway_says_so_and_shows_nothing_more(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    process = cli_subprocess(["demo", "--db", str(db), "--movies", "3000"], cwd=tmp_path)
    wait_for_page(db, 2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert err.rstrip().endswith("run the demo again to finish it") and "sync interrupted:" in err, err
    assert "Browse it:" not in out + err


def test_a_mirror_module_in_the_working_directory_does_not_stop_the_demo(tmp_path: Path) -> None:
    (tmp_path / "mirror.py").write_text("raise SystemExit('the wrong mirror')\n")
    script = Path(sys.executable).with_name("yts-mirror")  # a console script, which never imports the working directory
    done = subprocess.run([str(script), "demo", "--db", "demo.db", "--movies", "200", "--no-enrich"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "movies: 200 present, 0 removed" in done.stdout + done.stderr


def test_demo_never_writes_into_a_real_mirror(simulator: Callable[..., FakeYTS], db_path: Path,
                                             config_file: Path, tmp_path: Path) -> None:
    sync(db_path, simulator(movies=60), config_file)
    before = db_path.read_bytes()
    process = cli_subprocess(["demo", "--db", str(db_path), "--movies", "50", "--no-enrich"], cwd=tmp_path)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "holds a mirror the demo did not make" in err and "simulator" not in err, err
    assert db_path.read_bytes() == before
    again = tmp_path / "again.db"
    for _ in range(2):  # the demo's own database may be demoed into again
        process = cli_subprocess(["-q", "demo", "--db", str(again), "--movies", "50", "--no-enrich"], cwd=tmp_path)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0 and err == "", err  # -q: errors only
    quiet, loud = (run_cli([*flag, "search", "zzzqqq", "--db", str(again)]) for flag in (["-q"], []))
    assert (quiet.exit_code, quiet.output, loud.output) == (0, "", "no matches\n")
    process = cli_subprocess(["demo", "--db", str(again), "--movies", "40", "--no-enrich"], cwd=tmp_path)
    _, err = process.communicate(timeout=60)  # a smaller demo would find most of these movies gone
    assert process.returncode == 2 and err == f"error: {again} holds a demo of 50 movies; choose another --db for 40, " \
        "or delete it\n", err


def test_a_reader_that_stops_early_gets_no_error(simulator: Callable[..., FakeYTS], db_path: Path,
                                                 config_file: Path) -> None:
    import shlex
    import subprocess
    import sys

    sync(db_path, simulator(movies=800), config_file)
    command = shlex.join([sys.executable, "-m", "mirror", "search", "a* OR e* OR i* OR o* OR t*", "--db",
                          str(db_path), "--limit", "1000"])
    shell = subprocess.run(["bash", "-c", f'{command} | head -c 10 >/dev/null; echo "exit ${{PIPESTATUS[0]}}"'],
                           capture_output=True, text=True, timeout=60)
    assert (shell.stdout, shell.stderr) == ("exit 1\n", "")  # like `| head`: no error line for it


def test_python_dash_m_works() -> None:
    process = cli_subprocess(["--version"])
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and stdout.startswith("yts-mirror, version")


def test_a_database_another_program_keeps_locked_is_waited_for_as_long_as_the_busy_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.db"
    store.open_db(path).close()
    holder = sqlite3.connect(path)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 400, raising=False)  # 30 s in use; the same for every connection
    try:
        for command in (["stats"], ["search", "x"], ["sync", "--base-url", "http://127.0.0.1:9"]):
            started = time.monotonic()
            result = run_cli([*command, "--db", str(path)])
            assert result.exit_code == 1 and "database is locked" in result.output, result.output
            assert 0.35 < time.monotonic() - started < 4, command  # not sqlite3's own 5 s default
    finally:
        holder.close()


def test_readers_never_see_locked_database(simulator: Callable[..., FakeYTS], db_path: Path,
                                           config_file: Path) -> None:
    import threading

    sim = simulator(movies=1500, latency_ms=5)
    sync(db_path, sim, config_file)  # the file exists; now a full refresh writes while we read
    errors: list[str] = []
    reads = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal reads
        conn = connect(db_path)
        while not done.is_set():
            try:
                conn.execute("SELECT COUNT(*), SUM(seeds) FROM torrents JOIN movies ON movies.id = movie_id").fetchone()
                conn.execute("SELECT rowid FROM movies_fts WHERE movies_fts MATCH 'the' LIMIT 5").fetchall()
                reads += 1
            except Exception as error:  # noqa: BLE001 - any error fails the test
                errors.append(str(error))
        conn.close()

    thread = threading.Thread(target=reader)
    thread.start()
    process = cli_subprocess(sync_args(db_path, sim.url, config_file, "--full"))
    try:
        assert process.wait(timeout=120) == 0
    finally:
        done.set()
        thread.join()
    assert not errors and reads > 10


def test_find_missing_reads_few_pages(simulator: Callable[..., FakeYTS]) -> None:
    from mirror.client import YTSClient
    from mirror.crawl import CatalogMoved, find_missing

    sim = simulator(movies=5000)
    present = sorted(sim.catalog.movies, reverse=True)
    gone = sorted(sim.catalog.remove(ids=[present[7], present[2222], present[2223], present[4999]]))
    client = YTSClient([sim.url], rate=0)
    assert sorted(find_missing(client, present)) == gone
    assert client.stats.requests <= 4 * 7 + 2  # about log2(100 pages) per removal, far below 100
    assert find_missing(client, [i for i in present if i not in gone]) == []
    sim.catalog.add(1)
    with pytest.raises(CatalogMoved):
        find_missing(client, present)


def swap_neighbours(catalog: Catalog, *positions: int) -> None:
    """Swap the movies at each position and the next in the upstream order, as movies added together do."""
    for i in positions:
        catalog.order[i], catalog.order[i + 1] = catalog.order[i + 1], catalog.order[i]


def test_find_missing_takes_movies_added_together_swapping_places(simulator: Callable[..., FakeYTS]) -> None:
    from mirror.client import YTSClient
    from mirror.crawl import find_missing

    sim = simulator(movies=3000)
    present = sorted(sim.catalog.movies, reverse=True)
    # 22838 above 22839 in list_movies__gitTobby-cloneCodding.json: at the top, across a page
    # boundary (49/50), next to removals, and at the very end.
    swap_neighbours(sim.catalog, 0, 3, 49, 610, 1202, 2998)
    gone = sorted(sim.catalog.remove(ids=[present[2], present[51], present[609], present[612], present[1200],
                                          present[1203], present[2999]]))
    client = YTSClient([sim.url], rate=0)
    assert sorted(find_missing(client, present)) == gone
    assert client.stats.requests < 60
    assert find_missing(client, [i for i in present if i not in gone]) == []


def test_find_missing_is_exact_while_movies_stray_a_few_places(simulator: Callable[..., FakeYTS]) -> None:
    from mirror.client import YTSClient
    from mirror.crawl import PIVOT_MARGIN, find_missing

    rng = random.Random(7)
    sim = simulator(movies=1500)
    present = list(sim.catalog.order)
    client = YTSClient([sim.url], rate=0)
    for _ in range(40):
        gone = set(rng.sample(present, rng.choice([1, 2, 5])))
        order = [i for i in present if i not in gone]
        for _ in range(rng.choice([1, 4, 10])):
            i = rng.randrange(len(order) - 1)
            order.insert(min(len(order) - 1, i + rng.randint(1, PIVOT_MARGIN)), order.pop(i))
        sim.catalog.order[:] = order
        assert set(find_missing(client, present)) == gone


def test_find_missing_refuses_an_order_it_cannot_compare(simulator: Callable[..., FakeYTS]) -> None:
    from mirror.client import YTSClient
    from mirror.crawl import CatalogMoved, find_missing

    sim = simulator(movies=1000)
    present = list(sim.catalog.order)
    client = YTSClient([sim.url], rate=0)
    order = [i for i in present if i != present[500]]
    order.insert(0, order.pop(700))  # an old movie back at the top
    sim.catalog.order[:] = order
    with pytest.raises(CatalogMoved):
        find_missing(client, present)
    order = [i for i in present if i != 462]
    order.insert(752, order.pop(746))  # six places: beyond PIVOT_MARGIN, where the counts stop adding up
    sim.catalog.order[:] = order
    with pytest.raises(CatalogMoved):
        find_missing(client, present)


def test_odd_ids_and_genres_upstream_cost_nothing_else(simulator: Callable[..., FakeYTS], db_path: Path,
                                                       config_file: Path) -> None:
    sim = simulator(movies=120)
    ids = sim.catalog.ids()
    sim.catalog.edit(ids[0], genres=5)  # not a list
    sim.catalog.edit(ids[1], genres="Drama")  # one genre, not its letters
    sim.catalog.edit(ids[2], id=True)  # json true is no id: it must not overwrite movie 1
    sim.catalog.edit(ids[3], id=ids[4] + 0.5)  # nor may 1.5 overwrite movie 1
    run = sync(db_path, sim, config_file)
    assert run["status"] == "ok" and run["movies_new"] == 118
    stored = {row["id"]: row["title"] for row in query(db_path, "SELECT id, title FROM movies")}
    assert ids[2] not in stored and ids[3] not in stored
    assert stored[ids[4]] == sim.catalog.movies[ids[4]]["title"]
    genres = query(db_path, "SELECT movie_id, genre FROM movie_genres WHERE movie_id IN (?, ?)", [ids[0], ids[1]])
    assert [(row["movie_id"], row["genre"]) for row in genres] == [(ids[1], "Drama")]


def test_titles_beyond_ascii_are_kept_found_and_quoted(simulator: Callable[..., FakeYTS], db_path: Path,
                                                       config_file: Path) -> None:
    import unicodedata
    from urllib.parse import quote_plus

    sim = simulator(movies=300)
    accented = {i: m for i, m in sim.catalog.movies.items() if not m["title"].isascii()}
    assert accented  # "Crash Test Aglaé": list_movies__yts-api-rs-query_test.json
    assert run_cli(sync_args(db_path, sim.url, config_file)).exit_code == 0
    for movie_id, movie in accented.items():
        assert query(db_path, "SELECT title FROM movies WHERE id = ?", [movie_id])[0][0] == movie["title"]
        dn = f"&dn={quote_plus(movie['title_long'])}&"
        assert all(dn in row[0] for row in query(db_path, "SELECT magnet FROM torrents WHERE movie_id = ?", [movie_id]))
    def folded(word: str) -> str:
        return unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode()

    movie_id, word = next((i, w) for i, m in accented.items() for w in m["title"].split()
                          if w.isalpha() and not w.isascii() and len(folded(w)) == len(w))  # é, ñ, à, ë
    for term in (word, word.upper(), folded(word)):  # FTS5 folds case and diacritics
        result = run_cli(["search", f"title:{term}", "--db", str(db_path), "--json", "--limit", "1000"])
        assert result.exit_code == 0, result.output
        assert movie_id in {row["id"] for row in json.loads(result.output)}, term


class MalformedLists(FakeYTS):
    """A simulator whose list pages, once `data` is set, answer with that `data` in a status-ok envelope."""

    data: Any = None
    broken = False

    def respond(self, endpoint: str, params: Any) -> tuple[int, dict[str, str], bytes, str | None]:
        if endpoint == "list_movies" and self.broken:
            self._count(self.counts, endpoint)
            body = json.dumps({"status": "ok", "status_message": "Query was successful", "data": self.data})
            return 200, {"Content-Type": "application/json"}, body.encode(), None
        return super().respond(endpoint, params)


@pytest.mark.parametrize("data", [
    None, [], {"movies": []},  # data null, or no movie_count: an empty catalog to a careless reader
    {"movie_count": 30, "limit": 50, "page_number": 1, "movies": 5},
    {"movie_count": 30, "limit": 50, "page_number": 1, "movies": [{"id": 1, "title": "x", "torrents": 7}]},
])
def test_a_list_answer_of_the_wrong_shape_is_retried_and_marks_nothing_removed(tmp_path: Path, db_path: Path,
                                                                             config_file: Path, data: Any) -> None:
    with MalformedLists(Catalog(30, 3)) as sim:
        assert run_cli(sync_args(db_path, sim.url, config_file)).exit_code == 0
        sim.data, sim.broken = data, True
        before = sim.counts["list_movies"]
        result = run_cli(sync_args(db_path, sim.url, config_file, "--full"))
    assert result.exit_code == 1 and result.output.startswith("error: API request failed: "), result.output
    assert "(after 6 attempts)" in result.output and sim.counts["list_movies"] - before == 6
    assert query(db_path, "SELECT COUNT(*) FROM movies WHERE removed_at IS NULL")[0][0] == 30
