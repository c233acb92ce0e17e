"""The long-lived scheduler: incremental syncs, full refreshes and enrichment, one at a time."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .config import Config, ConfigError

log = logging.getLogger(__name__)

SyncFn = Callable[..., Any]


class Jobs:
    """The scheduled work; one job runs at a time, and a stop request ends it after its page."""

    def __init__(self, config: Config, run_sync: SyncFn, run_enrich: SyncFn):
        self.config = config
        self.run_sync = run_sync
        self.run_enrich = run_enrich
        self.stop = threading.Event()
        self.busy = threading.Lock()

    def _guarded(self, name: str, work: Callable[[], Any]) -> None:
        if self.stop.is_set():
            return
        with self.busy:
            log.info("%s: starting", name)
            try:
                work()
            except Exception as error:  # noqa: BLE001 - one failed run must not end the scheduler
                log.error("%s failed: %s", name, error)
            else:
                log.info("%s: done", name)

    def incremental(self) -> None:
        self._guarded("incremental sync", lambda: self.run_sync(self.config, full=False, stop=self.stop))

    def full(self) -> None:
        self._guarded("full refresh", lambda: self.run_sync(self.config, full=True, stop=self.stop))

    def enrich(self) -> None:
        self._guarded("enrichment", lambda: self.run_enrich(self.config, stop=self.stop))


def build_scheduler(config: Config, jobs: Jobs) -> BlockingScheduler:
    """An APScheduler with the jobs the config asks for."""
    settings = config.schedule
    scheduler = BlockingScheduler(
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": settings.misfire_grace_seconds},
        timezone=UTC,
    )
    now = datetime.now(UTC)
    if settings.incremental_seconds > 0:
        scheduler.add_job(jobs.incremental, IntervalTrigger(seconds=settings.incremental_seconds, timezone=UTC),
                          id="incremental", name="incremental sync", next_run_time=now)
    if settings.full_cron:
        try:
            trigger = CronTrigger.from_crontab(settings.full_cron, timezone=UTC)
        except ValueError as error:
            raise ConfigError(f"schedule.full_cron {settings.full_cron!r}: {error}") from None
        scheduler.add_job(jobs.full, trigger, id="full", name="full refresh")
    if settings.enrich_seconds > 0:
        scheduler.add_job(jobs.enrich, IntervalTrigger(seconds=settings.enrich_seconds, timezone=UTC),
                          id="enrich", name="enrichment")
    if not scheduler.get_jobs():
        raise ConfigError("the [schedule] section enables no job")

    def log_next_runs(event: JobExecutionEvent | None = None) -> None:
        if event is not None and event.code == EVENT_JOB_MISSED:
            log.warning("missed a run of %s (coalesced)", event.job_id)
        for job in scheduler.get_jobs():
            log.info("next %s at %s", job.name, job.next_run_time)

    scheduler.add_listener(log_next_runs, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    return scheduler


def run_forever(config: Config, run_sync: SyncFn, run_enrich: SyncFn) -> None:
    """Run the scheduler until SIGTERM or SIGINT; the job in progress finishes its page first."""
    jobs = Jobs(config, run_sync, run_enrich)
    scheduler = build_scheduler(config, jobs)

    def shutdown(signum: int, frame: Any) -> None:
        log.warning("%s: stopping after the current page", signal.Signals(signum).name)
        jobs.stop.set()
        scheduler.shutdown(wait=False)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, shutdown)
    scheduler.start()  # returns once shut down
    with jobs.busy:  # wait for the running job to commit its page and return
        pass
