"""Enrichment: per-movie endpoints fetched by a worker pool from a resumable backlog.

Workers share the client's rate limiter; one writer (the calling thread) does every database
write, one transaction per movie, and only then lets that movie's worker take the next one.
So a kill loses at most one movie's requests per worker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from . import store, transform
from .client import FetchError, Stopped, TransientError, YTSClient, YTSError
from .config import Config
from .progress import Progress

log = logging.getLogger(__name__)

CHILD_TABLES = {
    "movie_suggestions": ("movie_suggestions", transform.suggestion_rows),
    "movie_reviews": ("movie_reviews", transform.review_rows),
    "movie_parental_guides": ("movie_parental_guides", transform.parental_guide_rows),
    "movie_comments": ("movie_comments", transform.comment_rows),
}


class EndpointPaused(YTSError):
    """The endpoint's circuit breaker is open: do not send this request."""


class Breaker:
    """Pauses an endpoint after `limit` consecutive failed fetches (each after its retries).

    Once an attempt on the endpoint has failed, fetches that need to send or retry a request
    on it take turns: one fetch at a time runs its retries and records its outcome before the
    next may try. So a dead endpoint costs about `limit` x retries requests, not that times
    the number of workers.
    """

    def __init__(self, endpoint: str, limit: int, probing: bool = False):
        self.endpoint = endpoint
        self.limit = max(1, limit)
        self.probing = probing  # paused by an earlier run: one probe decides
        self.failures = 0
        self.paused = False
        self.suspect = probing
        self.last_error: str | None = None
        self.unanswered = False  # whether no attempt of the current failures got an HTTP response
        self._lock = threading.Lock()
        self._turn = threading.Lock()

    @contextmanager
    def fetch(self) -> Iterator[dict[str, bool]]:
        """Wrap one fetch (all its attempts and the recording of its outcome)."""
        slot = {"turn": False}
        try:
            yield slot
        finally:
            if slot["turn"]:
                self._turn.release()

    @contextmanager
    def attempt(self, slot: dict[str, bool]) -> Iterator[None]:
        """Wrap one HTTP attempt of a fetch; raise EndpointPaused if the breaker is open."""
        if self.suspect and not slot["turn"]:
            self._turn.acquire()
            slot["turn"] = True
        if self.paused:
            raise EndpointPaused(f"{self.endpoint} is paused")
        try:
            yield
        except YTSError:
            self.suspect = True
            raise
        self.suspect = False

    def record(self, ok: bool, error: str | None = None, unanswered: bool = False) -> bool:
        """Count one fetch outcome (`unanswered`: none of its attempts got an HTTP response); True if it paused."""
        with self._lock:
            if ok:
                self.failures, self.probing = 0, False
                return False
            self.unanswered = unanswered and (self.unanswered or not self.failures)
            self.failures += 1
            self.last_error = error
            limit = 1 if self.probing else self.limit
            if not self.paused and self.failures >= limit:
                self.paused = True
                return True
            return False


@dataclass
class WorkItem:
    """One movie and the endpoints it still needs."""

    movie_id: int
    list_hash: str | None
    endpoints: list[str]
    retry: bool = True  # every endpoint it needs failed before: it waits behind fresh work


@dataclass
class EnrichReport:
    """What an enrichment pass did."""

    movies_done: int = 0
    fetched: dict[str, int] = field(default_factory=dict)
    not_found: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    paused: dict[str, str] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    backlog: int = 0

    def tally(self, outcomes: Mapping[str, Outcome], fetched: int, not_found: int, cut: bool = False) -> None:
        """Count one written movie's outcomes; a movie cut short by a stop is counted by the run that finishes it."""
        self.movies_done += bool(fetched) and not cut
        self.not_found += not_found
        for endpoint, (status, _) in outcomes.items():
            table = self.failed if status == "failed" else self.fetched
            table[endpoint] = table.get(endpoint, 0) + 1

    def messages(self) -> list[str]:
        """Lines worth showing the user."""
        lines = [f"endpoint {name} resumed after a successful probe" for name in self.resumed]
        lines += [f"endpoint {name} paused for this run after repeated failures: {why}"
                  for name, why in self.paused.items()]
        lines += [f"{count} {name} fetches failed; they stay in the backlog" for name, count in self.failed.items()]
        return lines


def params_for(endpoint: str, movie_id: int) -> dict[str, Any]:
    """Query parameters of one enrichment request."""
    if endpoint == "movie_details":
        return {"movie_id": movie_id, "with_images": "true", "with_cast": "true"}
    return {"movie_id": movie_id}


NOT_FOUND_RECHECK_DAYS = 1.0
SYNC_ATTEMPTS = 3  # failed fetches in a row of a movie's endpoint before only `enrich` retries it, once a day


# A movie whose movie_details said "not found" waits for that answer to change before the
# other endpoints are asked: they answer an unknown movie with empty lists, not an error.
_DETAILS_FOUND = ("(:details OR NOT EXISTS (SELECT 1 FROM enrich_state d WHERE d.movie_id = m.id "
                  "AND d.endpoint = 'movie_details' AND d.status = 'not_found'))")


def _backlog_where(only_new: bool) -> str:
    """SQL condition for a movie an endpoint should fetch (parameters :cutoff, :recheck, :details)."""
    # A fetch that failed keeps the row's data, list_hash and fetched_at (a "not found" whose recheck
    # failed stays one, with attempts > 0): the retry rules below govern it, not these two.
    answered = "(s.status = 'ok' OR (s.status = 'not_found' AND s.attempts = 0))"
    changed = f"(:details AND {answered} AND s.list_hash IS NOT m.list_hash)"
    if only_new:  # a sync: movies never fetched, changed ones, and failures it has not retried enough
        return (f"(s.movie_id IS NULL OR (s.status = 'failed' AND s.attempts < {SYNC_ATTEMPTS}) OR {changed})"
                f" AND {_DETAILS_FOUND}")
    # A listed movie whose details were not found is asked again after a day, not after the TTL:
    # the list and the details can disagree for a while (seen during a host's restart). So is a
    # fetch that failed as often as a sync retries it: it may fail for good.
    retry = f"(s.attempts < {SYNC_ATTEMPTS} OR s.attempted_at IS NULL OR s.attempted_at < :recheck)"
    return (f"(s.movie_id IS NULL OR (s.status = 'failed' AND {retry}) OR ({answered} AND s.fetched_at < :cutoff)"
            f" OR {changed}"
            f" OR (s.status = 'not_found' AND COALESCE(s.attempted_at, s.fetched_at) < :recheck)) AND {_DETAILS_FOUND}")


def _backlog_sql(select: str, only_new: bool) -> str:
    """`SELECT {select}` over the present movies an endpoint (parameter :endpoint) should fetch."""
    return (f"SELECT {select} FROM movies m LEFT JOIN enrich_state s ON s.movie_id = m.id AND s.endpoint = :endpoint "
            f"WHERE m.removed_at IS NULL AND {_backlog_where(only_new)}")


def _backlog_args(config: Config, endpoint: str) -> dict[str, Any]:
    """The parameters of `_backlog_where` for one endpoint."""
    days = config.enrich.ttl_days.get(endpoint, 3650.0)
    return {"endpoint": endpoint, "cutoff": store.now_iso(days_ago=days),
            "recheck": store.now_iso(days_ago=min(days, NOT_FOUND_RECHECK_DAYS)), "details": endpoint == "movie_details"}


def paused_endpoints(db: sqlite_utils.Database) -> set[str]:
    """Endpoints an earlier run paused."""
    return {row[0] for row in db.execute("SELECT endpoint FROM endpoint_state WHERE paused_at IS NOT NULL")}


def plan(db: sqlite_utils.Database, config: Config, endpoints: Sequence[str], only_new: bool = False,
         limit: int | None = None) -> list[WorkItem]:
    """The backlog: movies needing any of `endpoints`, newest first, those only failures need after the rest.

    A failure can be lasting (one movie an endpoint always fails on): retried first, a few of
    them would pause the endpoint before it reached the movies never fetched.
    """
    items: dict[int, WorkItem] = {}
    for endpoint in endpoints:
        sql = _backlog_sql("m.id, m.list_hash, s.status IS 'failed'", only_new) + " ORDER BY m.id DESC"
        for movie_id, list_hash, failed in db.execute(sql, _backlog_args(config, endpoint)):
            item = items.setdefault(movie_id, WorkItem(movie_id, list_hash, []))
            item.endpoints.append(endpoint)
            item.retry = item.retry and bool(failed)
    ordered = sorted(items.values(), key=lambda item: (item.retry, -item.movie_id))
    return ordered[:limit] if limit else ordered


def backlog_summary(db: sqlite_utils.Database, config: Config) -> dict[str, dict[str, Any]]:
    """Per endpoint: pending, done, not found, failed, and whether it is paused."""
    paused = paused_endpoints(db)
    summary = {}
    for endpoint in config.enrich.endpoints:
        pending = db.execute(_backlog_sql("COUNT(*)", False), _backlog_args(config, endpoint)).fetchone()[0]
        by_status = dict(db.execute(
            "SELECT s.status, COUNT(*) FROM enrich_state s JOIN movies m ON m.id = s.movie_id AND m.removed_at IS NULL "
            "WHERE s.endpoint = ? GROUP BY s.status", [endpoint]
        ).fetchall())
        summary[endpoint] = {
            "pending": pending, "done": by_status.get("ok", 0), "not_found": by_status.get("not_found", 0),
            "failed": by_status.get("failed", 0), "paused": endpoint in paused,
        }
    return summary


# ---- writing ---------------------------------------------------------------------------------

Outcome = tuple[str, Any]  # ("ok", data) | ("not_found", None) | ("failed", message)


@dataclass
class Finished:
    """A movie the pool is done with: its outcomes by endpoint, or the error that ended its worker."""

    item: WorkItem
    outcomes: dict[str, Outcome]
    cut: bool  # a stop came before its last endpoint: the next run finishes it (and counts it)
    crash: BaseException | None
    written: threading.Event  # the consumer sets it once the movie is written


def write_movie(db: sqlite_utils.Database, item: WorkItem, outcomes: Mapping[str, Outcome]) -> tuple[int, int]:
    """Store one movie's enrichment results in one transaction; return (fetched, not found)."""
    fetched = not_found = 0
    now = store.now_iso()
    with db.atomic():
        for endpoint, (status, payload) in outcomes.items():
            if status == "ok":
                status = _store_payload(db, item.movie_id, endpoint, payload)
            if status != "failed":
                fetched += 1
                not_found += status == "not_found"
            db.execute(
                "INSERT INTO enrich_state (movie_id, endpoint, status, fetched_at, attempts, last_error, list_hash, "
                "attempted_at) VALUES (:movie_id, :endpoint, :status, :fetched_at, :status = 'failed', :error, :fetched_hash, :now) "
                "ON CONFLICT(movie_id, endpoint) DO UPDATE SET attempted_at = excluded.attempted_at, "
                # a recheck of a "not found" that fails leaves it "not found": asked again in a day, the rest wait
                "status = CASE WHEN excluded.status = 'failed' AND enrich_state.status = 'not_found' THEN 'not_found' "
                "ELSE excluded.status END, "
                "fetched_at = CASE WHEN excluded.status = 'failed' THEN enrich_state.fetched_at ELSE excluded.fetched_at END, "
                "attempts = CASE WHEN excluded.status = 'failed' THEN enrich_state.attempts + 1 ELSE 0 END, "
                "last_error = excluded.last_error, "
                "list_hash = CASE WHEN excluded.status = 'failed' THEN enrich_state.list_hash ELSE excluded.list_hash END",
                {"movie_id": item.movie_id, "endpoint": endpoint, "status": status, "now": now,
                 "error": payload if status == "failed" else None,
                 "fetched_at": None if status == "failed" else now,  # of the data kept: none yet
                 "fetched_hash": None if status == "failed" else item.list_hash},
            )
    return fetched, not_found


def validator_for(endpoint: str, movie_id: int) -> Callable[[Mapping[str, Any]], None]:
    """What retries an answer that says nothing about the movie (`"data": null`, say), rather than store it."""

    def validate(data: Mapping[str, Any]) -> None:
        if endpoint == "movie_details":
            reason = transform.details_no_answer(data, movie_id)
        else:  # taken as an empty list, it would replace the movie's rows with none
            reason = transform.children_no_answer(endpoint, data)
        if reason:
            raise TransientError(f"{endpoint} {movie_id}", reason)

    return validate


def details_not_found(outcome: Outcome, movie_id: int) -> bool:
    """Whether a movie_details outcome says the movie is unknown upstream (its placeholder, or a 404 envelope)."""
    status, data = outcome
    return status == "not_found" or (status == "ok" and transform.found_details(data, movie_id) is None)


def _store_payload(db: sqlite_utils.Database, movie_id: int, endpoint: str, data: Mapping[str, Any]) -> str:
    """Write one endpoint's data for a movie; return the enrich_state status."""
    if endpoint == "movie_details":
        movie = transform.found_details(data, movie_id)
        if movie is None:
            return "not_found"
        store.write_details(db, movie_id, movie)
        return "ok"
    table, to_rows = CHILD_TABLES[endpoint]
    store.replace_children(db, table, movie_id, to_rows(movie_id, data))
    return "ok"


def _save_breakers(db: sqlite_utils.Database, breakers: Mapping[str, Breaker], report: EnrichReport) -> None:
    """Persist which endpoints are paused, for the next run's probe."""
    now = store.now_iso()
    with db.atomic():
        for name, breaker in breakers.items():
            if breaker.paused:
                report.paused[name] = breaker.last_error or "failing"
                db.execute(
                    "INSERT INTO endpoint_state (endpoint, paused_at, consecutive_failures, last_error) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(endpoint) DO UPDATE SET paused_at = excluded.paused_at, "
                    "consecutive_failures = excluded.consecutive_failures, last_error = excluded.last_error",
                    [name, now, breaker.failures, breaker.last_error],
                )
            elif breaker.failures == 0 and not breaker.probing:
                resumed = db.execute(
                    "UPDATE endpoint_state SET paused_at = NULL, consecutive_failures = 0 "
                    "WHERE endpoint = ? AND paused_at IS NOT NULL", [name]).rowcount
                if resumed:
                    report.resumed.append(name)


# ---- the pool --------------------------------------------------------------------------------

class Pool:
    """Worker threads fetching movies from the backlog; the caller's thread writes."""

    def __init__(self, client: YTSClient, breakers: Mapping[str, Breaker], concurrency: int,
                 stop: threading.Event):
        self.client = client
        self.breakers = breakers
        self.concurrency = max(1, concurrency)
        self.stop = stop
        self.halt = threading.Event()  # set when the consumer leaves early
        self.work: queue.Queue[WorkItem] = queue.Queue()
        self.results: queue.Queue[Finished] = queue.Queue()
        self.last_failure: FetchError | None = None

    def fetch_movie(self, item: WorkItem) -> tuple[dict[str, Outcome], bool]:
        """Fetch every endpoint one movie needs, skipping paused endpoints, movie_details first.

        Returns the outcomes, and whether a stop cut the movie short (its other endpoints wait for the next run).
        """
        outcomes: dict[str, Outcome] = {}
        for endpoint in sorted(item.endpoints, key=lambda name: name != "movie_details"):
            breaker = self.breakers[endpoint]
            if self.stop.is_set() or self.halt.is_set():
                return outcomes, True
            if breaker.paused:
                continue
            try:
                outcome = self.fetch_one(breaker, endpoint, item.movie_id)
            except Stopped:  # while it waited for its turn: what this movie has so far is written
                return outcomes, True
            if outcome:
                outcomes[endpoint] = outcome
            if endpoint == "movie_details" and outcome and details_not_found(outcome, item.movie_id):
                break  # the other endpoints answer a movie they do not know with empty lists
        return outcomes, False

    def fetch_one(self, breaker: Breaker, endpoint: str, movie_id: int) -> Outcome | None:
        """Fetch one endpoint for one movie under its breaker; None if the endpoint is paused."""
        with breaker.fetch() as slot:
            try:
                data = self.client.get(endpoint, params_for(endpoint, movie_id), validate=validator_for(endpoint, movie_id),
                                       guard=lambda: breaker.attempt(slot))
            except EndpointPaused:
                return None
            except FetchError as error:
                if error.not_found:  # a yts-mirror source answers a removed movie with a 404 envelope
                    breaker.record(True)
                    return ("not_found", None)
                self.last_failure = error
                if breaker.record(False, error.reason, error.unanswered):
                    log.info("pausing %s: %s", endpoint, error.reason)  # the run reports it at its end
                return ("failed", str(error))
            breaker.record(True)
            return ("ok", data)

    def worker(self) -> None:
        """Take movies until the backlog is empty or a stop is asked for."""
        while not (self.stop.is_set() or self.halt.is_set()):
            try:
                item = self.work.get_nowait()
            except queue.Empty:
                return
            written = threading.Event()
            try:
                finished = Finished(item, *self.fetch_movie(item), None, written)
            except BaseException as error:  # noqa: BLE001 - reported by the writer
                finished = Finished(item, {}, False, error, written)
            self.results.put(finished)
            while not written.wait(0.1):
                if self.halt.is_set():  # the consumer left without writing it
                    return

    def run(self, items: Sequence[WorkItem]) -> Iterator[Finished]:
        """Start the workers and yield each finished movie; the consumer sets its event once written."""
        for item in items:
            self.work.put(item)
        threads = [threading.Thread(target=self.worker, name=f"enrich-{n}", daemon=True)
                   for n in range(self.concurrency)]
        for thread in threads:
            thread.start()
        try:
            while any(thread.is_alive() for thread in threads) or not self.results.empty():
                try:
                    yield self.results.get(timeout=0.1)
                except queue.Empty:
                    continue
        finally:
            self.halt.set()
            while not self.results.empty():  # release workers waiting on unwritten movies
                self.results.get_nowait().written.set()


def enrich_backlog(db: sqlite_utils.Database, client: YTSClient, config: Config,
                   endpoints: Sequence[str] | None = None, limit: int | None = None, only_new: bool = False,
                   stop: threading.Event | None = None, progress: Progress | None = None,
                   on_written: Callable[[EnrichReport], None] | None = None) -> EnrichReport:
    """Fetch the backlog of enabled endpoints, newest movies first; resumable at any point.

    `on_written(report)` runs inside each movie's transaction (to keep a run log current).
    """
    endpoints = list(dict.fromkeys(endpoints or config.enrich.endpoints))  # a name given twice is fetched once
    stop = stop or threading.Event()
    progress = progress or Progress()
    report = EnrichReport()
    paused_before = paused_endpoints(db)
    breakers = {name: Breaker(name, config.enrich.pause_after, probing=name in paused_before) for name in endpoints}
    items = plan(db, config, endpoints, only_new, limit)
    report.backlog = sum(len(item.endpoints) for item in items)
    if not items:
        return report
    _announce(progress, report.backlog, len(items), client.limiter.rate)
    pool = Pool(client, breakers, config.enrich.concurrency, stop)
    sent, answered = client.stats.requests, client.stats.answered
    crashed = False  # a bug or the database, not the API: no host check delays its error
    try:
        for done in pool.run(items):
            try:
                if done.crash is not None:
                    pool.halt.set()  # the other workers end with their movie; the caller's stop is not ours to set
                    if isinstance(done.crash, Stopped):
                        continue  # asked to stop while it waited: this movie is fetched again next run
                    raise done.crash
                with db.atomic():
                    fetched, not_found = write_movie(db, done.item, done.outcomes)
                    report.tally(done.outcomes, fetched, not_found, done.cut)
                    if on_written:
                        on_written(report)
            finally:
                done.written.set()
            progress.advance(len(done.outcomes) if done.cut else len(done.item.endpoints))  # cut short: what it got
    except BaseException:
        crashed = True
        raise
    finally:
        silent = _silent_pauses(breakers)
        failure = None if stop.is_set() or crashed else _host_failure(client, pool, silent, sent, answered)
        stopped = stop.is_set()  # before or during the host check: nothing is judged
        unsure = silent if failure is not None or stopped or crashed else set()
        _save_breakers(db, {name: breaker for name, breaker in breakers.items() if name not in unsure}, report)
    if failure is not None and not stopped:
        raise failure
    return report


def _silent_pauses(breakers: Mapping[str, Breaker]) -> set[str]:
    """Endpoints paused on fetches none of whose attempts got an HTTP response: the host itself may be gone."""
    return {name for name, breaker in breakers.items() if breaker.paused and breaker.unanswered}


def _host_failure(client: YTSClient, pool: Pool, silent: set[str], sent: int, answered: int) -> FetchError | None:
    """The error to end a pass with when the host, not an endpoint, failed; None otherwise.

    The host is in doubt when no request of the pass got an HTTP response, or when an endpoint
    paused in `silent` (whatever the others did: timing cannot tell a dead host from one silent
    endpoint): then one list_movies fetch asks whether it still serves the API.
    """
    if client.stats.requests == sent or pool.last_failure is None:
        return None
    if client.stats.answered > answered and not silent:
        return None
    try:
        client.get("list_movies", {"limit": 1})
    except FetchError:
        return pool.last_failure
    except Stopped:
        pass  # the caller sees the stop and judges nothing
    return None  # the host answers: the endpoints that failed are to blame


def _announce(progress: Progress, requests: int, movies: int, rate: float) -> None:
    """Say how long the backlog will take at the rate limit, and start the progress bar."""
    if rate > 0:
        progress.message(f"enrichment backlog: {requests} requests for {movies} movies, "
                         f"about {duration(requests / rate)} at {rate:g} req/s")
    progress.total(requests)


def duration(seconds: float) -> str:
    """A rough duration for people: '40 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
