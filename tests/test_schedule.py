"""The scheduler: cron's weekday numbers and day matching (not APScheduler 3's), and how jobs run, wait and log."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mirror.client import FetchError
from mirror.config import Config, ConfigError, ScheduleConfig
from mirror.locks import LockedError
from mirror.readahead import ReaderError
from mirror.schedule import Jobs, build_scheduler, crontab_trigger, missed_full_refresh, weekday_names
from mirror.sync import JobReport

SATURDAY = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def next_fires(expr: str, count: int = 3) -> list[str]:
    """The next `count` fire times after SATURDAY, as 'Sun 06 04:00' (or 'Wed 31 Mar 04:00' beyond December)."""
    trigger, now, fires = crontab_trigger(expr), SATURDAY, []
    for _ in range(count):
        now = trigger.get_next_fire_time(None, now)
        fires.append(now.strftime("%a %d %H:%M" if now.month == 12 else "%a %d %b %H:%M"))
        now = now.replace(second=1)
    return fires


@pytest.mark.parametrize("expr", ["0 4 * * 0", "0 4 * * 7", "0 4 * * sun", "0 4 * * SUN"])
def test_weekday_zero_and_seven_are_sunday(expr: str) -> None:
    assert next_fires(expr, 2) == ["Sun 06 04:00", "Sun 13 04:00"]


def test_weekday_ranges_lists_and_steps_follow_cron() -> None:
    assert next_fires("0 4 * * 1-5", 2) == ["Mon 07 04:00", "Tue 08 04:00"]
    assert weekday_names("1-5") == "mon,tue,wed,thu,fri"
    assert weekday_names("*/2") == "sun,tue,thu,sat"
    assert weekday_names("5-7") == "sun,fri,sat"
    assert weekday_names("1/3") == "sun,mon,thu"  # 1, 4, 7
    assert weekday_names("0,6") == "sun,sat"
    assert weekday_names("*") == weekday_names("0-7") == "*"


def test_day_of_month_and_weekday_both_set_fire_on_either() -> None:
    assert next_fires("0 4 7 * 3", 3) == ["Mon 07 04:00", "Wed 09 04:00", "Wed 16 04:00"]
    # A day field starting with * does not widen: a day 1, 11, 21 or 31 that is a Wednesday.
    assert next_fires("0 4 */10 * 3", 2) == ["Wed 31 Mar 04:00", "Wed 21 Apr 04:00"]


@pytest.mark.parametrize("expr", ["0 4 * * 8", "0 4 * * 5-1", "0 4 * * */0", "0 4 * * mo", "0 4 * *", "61 4 * * *",
                                  "0 4 last * *", "0 4 L * *", "0 4 * * \u0663", "0 \u0664 * * *", "0 4 * * 1#2",
                                  "0 4 * mon *", "0 4 * * jan"])
def test_bad_expressions_raise_value_error(expr: str) -> None:
    with pytest.raises(ValueError):
        crontab_trigger(expr)


def test_a_cron_that_never_fires_is_a_config_error(tmp_path) -> None:
    from support import run_cli, write_config

    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[schedule]\nfull_cron = "0 4 31 2 *"\n')
    result = run_cli(["schedule", "--db", str(tmp_path / "x.db"), "--config", str(config)])
    assert result.exit_code == 2 and result.output == "error: schedule.full_cron '0 4 31 2 *' never fires\n"


def test_a_bad_cron_is_reported_while_another_scheduler_runs(tmp_path: Path) -> None:
    from support import run_cli, write_config

    from mirror.locks import scheduler_lock

    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[schedule]\nfull_cron = "0 4 * * 8"\n')
    with scheduler_lock(str(tmp_path / "x.db")):  # a running scheduler: checking a new config must still work
        result = run_cli(["schedule", "--db", str(tmp_path / "x.db"), "--config", str(config)])
    assert result.exit_code == 2 and result.output == "error: schedule.full_cron '0 4 * * 8': bad weekday '8' in '8'\n"


def sqlite_error(kind: str, tmp_path: Path) -> sqlite3.Error:
    """A real SQLite error: a lock another connection holds, or a query naming no column (a bug)."""
    holder = sqlite3.connect(tmp_path / "x.db")
    holder.execute("CREATE TABLE IF NOT EXISTS t (x)")
    holder.commit()
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(tmp_path / "x.db", timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE" if kind == "locked" else "SELECT nosuch FROM t")
    except sqlite3.Error as error:
        return error
    finally:
        holder.close()
        other.close()
    raise AssertionError("no error")


@pytest.mark.parametrize("kind, expected", [
    ("locked", "incremental sync failed: database error: database is locked"),
    ("bug", "incremental sync failed unexpectedly"),
    ("programming", "incremental sync failed unexpectedly"),
    ("reader", "incremental sync failed: the page reader process ended unexpectedly (killed by SIGKILL)"),
    ("fetch", "incremental sync failed: API request failed: https://yts.mx/api/v2/list_movies.json: HTTP 503 "
              "(after 6 attempts)"),  # word for word as the CLI's error line
    ("config", "incremental sync failed: api.rate: must be 0 or at least 0.001"),
])
def test_a_failed_job_is_logged_and_the_scheduler_goes_on(kind: str, expected: str, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    error: Exception
    if kind == "reader":
        error = ReaderError("the page reader process ended unexpectedly (killed by SIGKILL)")
    elif kind == "fetch":
        error = FetchError("https://yts.mx/api/v2/list_movies.json", "HTTP 503", attempts=6)
    elif kind == "config":
        error = ConfigError("api.rate: must be 0 or at least 0.001")
    else:
        error = sqlite3.ProgrammingError("a bug") if kind == "programming" else sqlite_error(kind, tmp_path)

    def run_sync(config: Config, **kwargs: object) -> None:
        raise error

    jobs = Jobs(Config(), run_sync, run_sync)
    with caplog.at_level(logging.INFO, logger="mirror.schedule"):
        jobs.incremental()
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == expected
    assert (record.exc_info is not None) == expected.endswith("unexpectedly")  # a traceback for bugs only


def test_a_job_stopped_midway_is_logged_interrupted(caplog: pytest.LogCaptureFixture) -> None:
    def run_sync(config: Config, stop: Any = None, **kwargs: object) -> None:
        jobs.stop.set()  # SIGTERM arrives while the job runs; it commits its page and returns

    jobs = Jobs(Config(), run_sync, run_sync)
    with caplog.at_level(logging.INFO, logger="mirror.schedule"):
        jobs.enrich()
    assert [r.getMessage() for r in caplog.records] == ["enrichment: starting", "enrichment: interrupted"]


def test_a_job_says_what_its_run_did_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    def run_sync(config: Config, **kwargs: object) -> JobReport:
        return JobReport("full sync ok: 3 pages", ["not marking 90 of 100 movies removed"])

    jobs = Jobs(Config(), run_sync, run_sync)
    with caplog.at_level(logging.INFO, logger="mirror.schedule"):
        jobs.full()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "full refresh: starting"), ("INFO", "full refresh: full sync ok: 3 pages"),
        ("WARNING", "full refresh: not marking 90 of 100 movies removed")]


def test_a_job_waits_for_another_writer_then_runs(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    def run_sync(config: Config, **kwargs: object) -> JobReport:
        attempts.append(1)
        if len(attempts) < 3:
            raise LockedError("x.db is being written by pid 1; use --wait to queue behind it")
        return JobReport("incremental sync ok")

    jobs = Jobs(Config(), run_sync, run_sync, lock_poll_seconds=0.01)
    with caplog.at_level(logging.INFO, logger="mirror.schedule"):
        jobs.incremental()
    assert [r.getMessage() for r in caplog.records] == [
        "incremental sync: starting", "incremental sync: another process is writing to the database; waiting for it",
        "incremental sync: incremental sync ok"]
    assert len(attempts) == 3


def test_a_lock_file_it_cannot_open_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    def run_sync(config: Config, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/srv/yts.db.lock")

    jobs = Jobs(Config(), run_sync, run_sync)
    with caplog.at_level(logging.INFO, logger="mirror.schedule"):
        jobs.incremental()
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "incremental sync failed: Permission denied: /srv/yts.db.lock"
    assert record.exc_info is None


def test_a_full_refresh_missed_while_stopped_is_due_at_start() -> None:
    trigger = crontab_trigger("0 4 * * 0")  # Sundays 04:00; SATURDAY is Saturday 5 December, noon
    assert missed_full_refresh(trigger, SATURDAY - timedelta(days=2), SATURDAY) is None  # ran Thursday
    assert missed_full_refresh(trigger, SATURDAY - timedelta(days=8), SATURDAY) == datetime(2026, 11, 29, 4, tzinfo=UTC)
    assert missed_full_refresh(trigger, None, SATURDAY) is None  # never: the first sync is a full crawl anyway
    ran: list[str] = []
    jobs = Jobs(Config(), lambda config, full, **kwargs: ran.append("full" if full else "incremental"),
                lambda *args, **kwargs: None)
    for last_full, expected in ((datetime.now(UTC) - timedelta(days=8), ["full", "incremental"]),
                                (datetime.now(UTC), ["incremental"])):  # an hour ago fails on Sundays 04:00-05:00
        ran.clear()
        jobs.last_full = lambda: last_full  # read once, by build_scheduler
        scheduler = build_scheduler(Config(), jobs)
        scheduler.start()
        wait_until(lambda: len(ran) >= len(expected), timeout=10)
        time.sleep(0.2)  # room for a run too many
        scheduler.shutdown(wait=False)
        assert sorted(ran) == sorted(expected), last_full


def test_a_run_held_up_by_another_job_still_runs_later(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def slow_sync(config: Config, **kwargs: object) -> None:
        ran.append("sync")
        time.sleep(2.5)

    def run(grace: int) -> list[str]:
        ran.clear()
        config = replace(Config(), schedule=ScheduleConfig(incremental_seconds=60, full_cron="", enrich_seconds=1,
                                                           misfire_grace_seconds=grace))
        jobs = Jobs(config, slow_sync, lambda *args, **kwargs: ran.append("enrich"))
        scheduler = build_scheduler(config, jobs)
        scheduler.start()
        time.sleep(3.2)
        scheduler.shutdown(wait=False)
        return list(ran)

    def skipped() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "mirror.schedule" and "skipped" in r.getMessage()]

    scheduler = build_scheduler(Config(), Jobs(Config(), slow_sync, slow_sync))
    scheduler.start(paused=True)
    assert all(job.misfire_grace_time is None for job in scheduler.get_jobs())  # by default, no limit
    scheduler.shutdown()
    with caplog.at_level(logging.WARNING, logger="mirror.schedule"):
        assert run(grace=0)[:2] == ["sync", "enrich"]  # the enrichment due meanwhile runs next (once)
        assert skipped() == []
        assert run(grace=1)[0] == "sync"
        assert skipped() == ["enrichment: skipped a run more than schedule.misfire_grace_seconds late"]


def runs_behind_a_slow_sync(grace: int, caplog: pytest.LogCaptureFixture) -> tuple[list[tuple[str, float]], list[str]]:
    """Runs (name, seconds from start) while a 4.5 s sync holds enrichment, due every 2 s, up; and the warnings."""
    ran: list[tuple[str, float]] = []
    started = time.monotonic()

    def slow_sync(config: Config, **kwargs: object) -> None:
        ran.append(("sync", time.monotonic() - started))
        time.sleep(4.5)  # enrichment falls due at 2 s (2.5 s late at its end) and at 4 s (0.5 s late)

    config = replace(Config(), schedule=ScheduleConfig(incremental_seconds=60, full_cron="", enrich_seconds=2,
                                                       misfire_grace_seconds=grace))
    enrich = lambda *args, **kwargs: ran.append(("enrich", time.monotonic() - started))  # noqa: E731
    scheduler = build_scheduler(config, Jobs(config, slow_sync, enrich))
    with caplog.at_level(logging.WARNING, logger="mirror.schedule"):
        scheduler.start()
        wait_until(lambda: len(ran) >= 2, timeout=15)
        time.sleep(0.5)  # room for a run too many
        scheduler.shutdown(wait=False)  # wait=True can deadlock with a job's listener on a slow machine
    return ran, [r.getMessage() for r in caplog.records if r.name == "mirror.schedule"]


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_job_queued_behind_another_while_it_falls_due_twice_runs_once(caplog: pytest.LogCaptureFixture) -> None:
    ran, warnings = runs_behind_a_slow_sync(0, caplog)
    assert [name for name, _ in ran] == ["sync", "enrich"] and warnings == []


def test_with_a_grace_limit_a_queued_jobs_latest_run_still_runs_if_within_it(caplog: pytest.LogCaptureFixture) -> None:
    ran, warnings = runs_behind_a_slow_sync(1, caplog)
    assert [name for name, _ in ran] == ["sync", "enrich"]
    assert ran[1][1] < 5.7  # once the sync ended, not at the next due time (6 s)
    assert warnings == ["enrichment: skipped a run more than schedule.misfire_grace_seconds late"]  # the one due at 2 s


def test_a_run_that_outlasts_its_interval_runs_again_once_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    starts: list[float] = []
    ends: list[float] = []

    def slow_sync(config: Config, **kwargs: object) -> None:
        starts.append(time.monotonic())
        if len(starts) == 1:
            time.sleep(4)  # due again at 3 s
        ends.append(time.monotonic())

    config = replace(Config(), schedule=ScheduleConfig(incremental_seconds=3, full_cron="", enrich_seconds=0))
    scheduler = build_scheduler(config, Jobs(config, slow_sync, slow_sync))
    with caplog.at_level(logging.WARNING, logger="mirror.schedule"):
        scheduler.start()
        wait_until(lambda: len(ends) >= 2, timeout=10)
        scheduler.shutdown(wait=False)
    assert len(starts) >= 2 and starts[1] - ends[0] < 1.0  # not at the next interval, 2 s after it ended
    assert [r.getMessage() for r in caplog.records if r.name == "mirror.schedule"] == [
        "incremental sync: still running when it fell due again; it runs again once it ends"]


def test_a_full_refresh_runs_when_the_last_one_seems_to_lie_in_the_future() -> None:
    calls: list[bool] = []

    def run_sync(config: Config, full: bool, **kwargs: object) -> JobReport:
        calls.append(full)
        return JobReport("full sync ok")

    ahead = datetime.now(UTC) + timedelta(days=180)  # stored before the system clock was set back
    Jobs(Config(), run_sync, run_sync, last_full=lambda: ahead).full()
    assert calls == [True]


def test_a_full_refresh_runs_when_the_last_one_cannot_be_read_for_a_moment() -> None:
    calls: list[bool] = []
    reads = iter([datetime.now(UTC) - timedelta(days=8), None])  # then locked, say: None

    def run_sync(config: Config, full: bool, **kwargs: object) -> JobReport:
        calls.append(full)
        return JobReport("full sync ok")

    Jobs(Config(), run_sync, run_sync, last_full=lambda: next(reads)).full()
    assert calls == [True]


def test_a_full_refresh_another_process_completed_while_it_waited_is_not_repeated(
        caplog: pytest.LogCaptureFixture) -> None:
    completed: list[datetime] = []
    calls: list[bool] = []

    def run_sync(config: Config, full: bool, **kwargs: object) -> JobReport:
        calls.append(full)
        if len(calls) > 1:
            return JobReport("full sync ok: a second full crawl")
        completed.append(datetime.now(UTC))  # the other writer finishes its full crawl, then frees the lock
        raise LockedError("x.db is being written by pid 1")

    jobs = Jobs(Config(), run_sync, run_sync, lock_poll_seconds=0.01, last_full=lambda: max(completed, default=None))
    with caplog.at_level(logging.INFO, logger="mirror.schedule"):
        jobs.full()
    assert calls == [True]
    last = caplog.records[-1].getMessage()
    assert last == "full refresh: not needed: another process completed a full crawl meanwhile"
