"""The long-lived scheduler: incremental syncs, full refreshes and enrichment, one at a time."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import (EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED,
                                JobEvent)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from . import signals
from .config import Config, ConfigError
from .errors import error_line
from .locks import LockedError
from .sync import JobReport

log = logging.getLogger(__name__)

SyncFn = Callable[..., Any]

CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbers them 0-6, and 7 is Sunday too
CRON_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
CRON_FIELD = re.compile(r"[0-9*,/-]+", re.ASCII)  # what crontab(5) allows besides names: not APScheduler's "last"


def crontab_trigger(expr: str) -> BaseTrigger:
    """A UTC trigger for a standard five-field crontab expression, with cron's weekdays and day matching."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    for field, names in zip(fields, ((), (), (), CRON_MONTHS, CRON_WEEKDAYS)):
        if not CRON_FIELD.fullmatch(re.sub("|".join(names) or "$^", "0", field.lower())):
            raise ValueError(f"bad field {field!r}")
    minute, hour, day, month, weekday = fields
    # Not CronTrigger.from_crontab: APScheduler 3 numbers weekdays from Monday = 0 (its docstring says so).
    weekdays = weekday_names(weekday)

    def cron(day: str, day_of_week: str) -> CronTrigger:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week, timezone=UTC)

    if not day.startswith("*") and not weekday.startswith("*"):
        return OrTrigger([cron(day, "*"), cron("*", weekdays)])  # cron runs when either day field matches
    return cron(day, weekdays)


def weekday_names(field: str) -> str:
    """Translate a crontab weekday field (0-7 or sun-sat; lists, ranges, steps) to APScheduler's day names."""
    days: set[int] = set()
    for item in field.split(","):
        span, slash, step_text = item.partition("/")
        if slash and not (step_text.isdigit() and int(step_text) > 0):
            raise ValueError(f"bad step in weekday field {field!r}")
        step = int(step_text) if slash else 1
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            first, last = (weekday_number(part, field) for part in span.split("-", 1))
        else:
            first = weekday_number(span, field)
            last = 7 if slash else first  # "1/2": from Monday to the end of the week
        if first > last:
            raise ValueError(f"backwards range in weekday field {field!r}")
        days.update(number % 7 for number in range(first, last + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(CRON_WEEKDAYS[number] for number in sorted(days))


def weekday_number(text: str, field: str) -> int:
    """A crontab weekday, 0-7 (0 and 7 are Sunday) or a three-letter name."""
    if text.lower() in CRON_WEEKDAYS:
        return CRON_WEEKDAYS.index(text.lower())
    if text.isascii() and text.isdigit() and int(text) <= 7:
        return int(text)
    raise ValueError(f"bad weekday {text!r} in {field!r}")


class Jobs:
    """The scheduled work; one job runs at a time, and a stop request ends it after its page."""

    def __init__(self, config: Config, run_sync: SyncFn, run_enrich: SyncFn, lock_poll_seconds: float = 5.0,
                 last_full: Callable[[], datetime | None] = lambda: None):
        self.config = config
        self.run_sync = run_sync
        self.run_enrich = run_enrich
        self.lock_poll_seconds = lock_poll_seconds
        self.last_full = last_full  # when the mirror last completed a full crawl
        self.stop = threading.Event()
        self.busy = threading.Lock()
        self.running: str | None = None  # the job in progress (others due meanwhile wait in the executor's queue)

    def _guarded(self, name: str, work: Callable[[], Any]) -> None:
        if self.stop.is_set():
            return
        with self.busy:
            if self.stop.is_set():  # asked to stop while it waited for the last job
                return
            log.info("%s: starting", name)
            self.running = name
            try:
                report = self._when_unlocked(name, work)
            except Exception as error:  # noqa: BLE001 - one failed run must not end the scheduler
                if line := error_line(error):  # expected: one line, as the CLI says it
                    log.error("%s failed: %s", name, line)
                else:
                    log.exception("%s failed unexpectedly", name)
            else:
                self._log_report(name, report)
            finally:
                self.running = None

    def _when_unlocked(self, name: str, work: Callable[[], Any]) -> Any:
        """Run `work`; while another process writes to the database, wait for it (or for a stop request)."""
        waiting = False
        while True:
            try:
                return work()
            except LockedError:
                if not waiting:
                    log.info("%s: another process is writing to the database; waiting for it", name)
                    waiting = True
                if self.stop.wait(self.lock_poll_seconds):
                    return None

    def _log_report(self, name: str, report: Any) -> None:
        """Log what a finished job did."""
        if not isinstance(report, JobReport):
            log.info("%s: %s", name, "interrupted" if self.stop.is_set() else "done")
            return
        log.info("%s: %s", name, report.line)
        for warning in report.warnings:
            log.warning("%s: %s", name, warning)

    def incremental(self) -> None:
        """Run an incremental sync, unless stopping."""
        self._guarded("incremental sync", lambda: self.run_sync(self.config, full=False, stop=self.stop))

    def full(self) -> None:
        """Run a full refresh, unless stopping or another process completed one while this one waited."""
        before = self.last_full()  # compared, not ordered: a clock set back can leave it in the future

        def work() -> Any:
            after = self.last_full()
            if after is not None and after != before:  # None: unreadable just now (locked), not news
                return JobReport("not needed: another process completed a full crawl meanwhile")
            return self.run_sync(self.config, full=True, stop=self.stop)

        self._guarded("full refresh", work)

    def enrich(self) -> None:
        """Work through a slice of the enrichment backlog, unless stopping."""
        self._guarded("enrichment", lambda: self.run_enrich(self.config, stop=self.stop))


def full_refresh_trigger(expr: str, now: datetime) -> BaseTrigger:
    """The full refresh's trigger, or ConfigError if the expression is bad or never fires."""
    try:
        trigger = crontab_trigger(expr)
    except ValueError as error:
        raise ConfigError(f"schedule.full_cron {expr!r}: {error}") from None
    if trigger.get_next_fire_time(None, now) is None:
        raise ConfigError(f"schedule.full_cron {expr!r} never fires")
    return trigger


def build_scheduler(config: Config, jobs: Jobs) -> BackgroundScheduler:
    """An APScheduler with the jobs the config asks for; a full refresh missed since the last one runs first."""
    full_trigger = require_jobs(config)
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(1)},
        # A run held up by another job (or a suspended process) runs when it can, once, unless
        # misfire_grace_seconds says how late is too late.
        job_defaults={"coalesce": True, "max_instances": 1,
                      "misfire_grace_time": config.schedule.misfire_grace_seconds or None},
        timezone=UTC,
    )
    add_jobs(scheduler, config, jobs, full_trigger)
    scheduler.add_listener(RunFollower(scheduler, jobs, config.schedule.misfire_grace_seconds),
                           EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    return scheduler


def add_jobs(scheduler: BackgroundScheduler, config: Config, jobs: Jobs, full_trigger: BaseTrigger | None) -> None:
    """Add the full refresh (now, if one was missed), the incremental sync (now) and the enrichment jobs."""
    settings, now = config.schedule, datetime.now(UTC)
    if full_trigger:
        missed = missed_full_refresh(full_trigger, jobs.last_full(), now)
        if missed:
            log.info("a full refresh was due at %s and has not run since: running it now", utc_text(missed))
        scheduler.add_job(jobs.full, full_trigger, id="full", name="full refresh",
                          **({"next_run_time": now} if missed else {}))
    if settings.incremental_seconds > 0:
        scheduler.add_job(jobs.incremental, IntervalTrigger(seconds=settings.incremental_seconds, timezone=UTC),
                          id="incremental", name="incremental sync", next_run_time=now)
    if settings.enrich_seconds > 0:
        scheduler.add_job(jobs.enrich, IntervalTrigger(seconds=settings.enrich_seconds, timezone=UTC),
                          id="enrich", name="enrichment")


class RunFollower:
    """The scheduler's listener: a run that falls due while its job runs (or waits too long) runs once it can."""

    def __init__(self, scheduler: BackgroundScheduler, jobs: Jobs, grace_seconds: float):
        self.scheduler, self.jobs, self.grace_seconds = scheduler, jobs, grace_seconds
        self.overran: set[str] = set()  # jobs still running when they fell due again
        self.waiting: dict[str, datetime] = {}  # the latest due time of a job's runs dropped while it waited in the queue

    def __call__(self, event: JobEvent) -> None:
        job = self.scheduler.get_job(event.job_id)
        if event.code == EVENT_JOB_MAX_INSTANCES:  # running, or only queued behind another job
            self._fell_due_again(event, job)
            return
        due_meanwhile = self.waiting.pop(event.job_id, None)  # an execution stands for it, unless it is missed
        if event.code == EVENT_JOB_MISSED and job:
            log.warning("%s: skipped a run more than schedule.misfire_grace_seconds late", job.name)
            late = datetime.now(UTC) - due_meanwhile if due_meanwhile else None
            if late is not None and late.total_seconds() <= self.grace_seconds:
                self.overran.add(event.job_id)  # its later run is not too late: it runs now
        if event.job_id in self.overran and not self.jobs.stop.is_set():
            self.overran.discard(event.job_id)
            if job:  # the run it missed, once, as for a run another job held up
                job.modify(next_run_time=datetime.now(UTC))
        if not self.jobs.stop.is_set():
            log_next_run_times(self.scheduler)

    def _fell_due_again(self, event: JobEvent, job: Any) -> None:
        """Note a run APScheduler dropped: its job was running (it reruns once it ends), or queued behind another."""
        if job and job.name == self.jobs.running:
            if event.job_id not in self.overran:
                log.warning("%s: still running when it fell due again; it runs again once it ends", job.name)
            self.overran.add(event.job_id)
        else:
            self.waiting[event.job_id] = max(event.scheduled_run_times)


def require_jobs(config: Config) -> BaseTrigger | None:
    """The full refresh's trigger, if any; ConfigError unless [schedule] enables a job, with a full_cron that fires."""
    settings = config.schedule
    if not (settings.incremental_seconds > 0 or settings.full_cron or settings.enrich_seconds > 0):
        raise ConfigError("the [schedule] section enables no job")
    return full_refresh_trigger(settings.full_cron, datetime.now(UTC)) if settings.full_cron else None


def missed_full_refresh(trigger: BaseTrigger, last_full: datetime | None, now: datetime) -> datetime | None:
    """When a full refresh fell due after the last one (`last_full`) without running, or None."""
    if last_full is None:  # none yet: the first sync of an empty mirror is a full crawl anyway
        return None
    due = trigger.get_next_fire_time(None, last_full)
    return due if due is not None and due <= now else None


def log_next_run_times(scheduler: BackgroundScheduler) -> None:
    """Log when each job runs next."""
    for job in scheduler.get_jobs():
        next_run = getattr(job, "next_run_time", None) or job.trigger.get_next_fire_time(None, datetime.now(UTC))
        log.info("next %s at %s", job.name, utc_text(next_run))


def utc_text(moment: datetime) -> str:
    """A time as the log shows it: UTC, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_forever(config: Config, run_sync: SyncFn, run_enrich: SyncFn,
                last_full: Callable[[], datetime | None] = lambda: None) -> None:
    """Run the scheduler until SIGTERM, SIGINT or SIGHUP; the job in progress finishes its page first."""
    jobs = Jobs(config, run_sync, run_enrich, last_full=last_full)

    def request_stop(signum: int) -> None:
        # Only set a flag (on the signal relay thread): the loop below shuts the scheduler down,
        # since shutting it down from a handler that interrupted it mid-step broke it.
        log.warning("%s: stopping after the current page", signal.Signals(signum).name)
        jobs.stop.set()

    def abort(signum: int) -> None:  # a second signal: stop at once, as after kill -9 (the next run resumes)
        os.write(2, b"error: aborted\n")  # no Python-level lock: the main thread may hold stderr's
        os._exit(1)

    stop_signals = [sig for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                    if not (sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN)]  # nohup: outlive it
    with signals.relayed(stop_signals, request_stop, abort):
        scheduler = build_scheduler(config, jobs)
        log_next_run_times(scheduler)  # before the first runs are dispatched, which moves them on
        scheduler.start()
        while not jobs.stop.wait(1.0):
            pass
        scheduler.shutdown(wait=False)
        with jobs.busy:  # wait for the running job to commit its page and return
            pass
