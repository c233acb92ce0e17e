"""The scheduler's crontab translation: cron's weekday numbers and day matching, not APScheduler 3's."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mirror.config import Config
from mirror.schedule import Jobs, crontab_trigger, weekday_names

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


@pytest.mark.parametrize("expr", ["0 4 * * 8", "0 4 * * 5-1", "0 4 * * */0", "0 4 * * mo", "0 4 * *", "61 4 * * *"])
def test_bad_expressions_raise_value_error(expr: str) -> None:
    with pytest.raises(ValueError):
        crontab_trigger(expr)


def test_a_cron_that_never_fires_is_a_config_error(tmp_path) -> None:
    from support import run_cli, write_config

    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[schedule]\nfull_cron = "0 4 31 2 *"\n')
    result = run_cli(["schedule", "--db", str(tmp_path / "x.db"), "--config", str(config)])
    assert result.exit_code == 2 and result.output == "error: schedule.full_cron '0 4 31 2 *' never fires\n"


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
])
def test_a_failed_job_is_logged_and_the_scheduler_goes_on(kind: str, expected: str, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
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
