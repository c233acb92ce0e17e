"""Orchestration: one sync run, its checkpoints and its run log."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from . import readahead, store, transform
from .client import FetchError, Stopped, YTSClient, make_client
from .config import Config
from .crawl import CatalogMoved, Listing, Walk, catalog_grew, crawl_new, fetch_page, find_missing
from .enrich import EnrichReport, enrich_backlog, validator_for
from .locks import writer_lock
from .progress import Progress, counted
from .readahead import ReadyPage

log = logging.getLogger(__name__)

CHECKPOINT = store.CRAWL_STATE
RECONCILE = store.RECONCILE_STATE
REFUSED = store.REFUSED_STATE
RECONCILE_TRIES = 3  # runs that may postpone a removal check (catalog moving, details unanswered)


@contextmanager
def writing(config: Config, wait: bool = False,
            must_exist: bool = False) -> Iterator[tuple[sqlite_utils.Database, YTSClient]]:
    """Hold the writer lock with the database and the API client (starting at the host that answered last) open."""
    store.require_mirror(config.db, must_exist)  # before the lock, which would leave a lock file behind
    with (writer_lock(config.db, wait=wait), closing(store.open_db(config.db)) as db,
          closing(make_client(config)) as client):
        client.start_at(store.remembered_host(db, client.base_urls))
        try:
            with store.background_checkpoints(config.db):
                yield db, client
        finally:
            remember_answering_host(db, client)


def remember_answering_host(db: sqlite_utils.Database, client: YTSClient) -> None:
    """Keep the host that answered last for the next run; never mask the run's own outcome."""
    if client.answering_url is not None:
        try:
            store.remember_host(db, client.base_urls, client.answering_url)
        except sqlite3.Error as error:
            log.debug("could not remember the API host: %s", error)


@dataclass
class RunOutcome:
    """How a logged run ended; `logged_run` fills it in."""

    run_id: int
    status: str = "running"
    error: str | None = None


@contextmanager
def logged_run(db: sqlite_utils.Database, kind: str, base_url: Callable[[], str], stopped: Callable[[], bool],
               counts: Callable[[], Mapping[str, Any]]) -> Iterator[RunOutcome]:
    """Log one run in `sync_runs`: open its row, then close it with its status, error, host and `counts()`."""
    store.close_stale_runs(db)
    outcome = RunOutcome(store.start_run(db, kind, base_url()))
    try:
        yield outcome
        outcome.status = "interrupted" if stopped() else "ok"
    except BaseException as error:
        outcome.status = "interrupted" if isinstance(error, KeyboardInterrupt) or stopped() else "failed"
        outcome.error = error_text(error)
        raise
    finally:
        store.finish_run(db, outcome.run_id, outcome.status, outcome.error, base_url=base_url(), **counts())


def error_text(error: BaseException) -> str:
    """How the run log names what ended a run."""
    if isinstance(error, KeyboardInterrupt):  # a second stop signal, which ends a run at once
        return "aborted"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def logged_enrichment(db: sqlite_utils.Database, client: YTSClient, config: Config, stop: threading.Event,
                      progress: Progress, endpoints: Sequence[str] = (),
                      limit: int | None = None) -> tuple[RunOutcome, EnrichReport]:
    """Work through the enrichment backlog as one `enrich` run in `sync_runs`."""
    report = EnrichReport()  # the pass's own, once a movie is written (it fills in as it goes)

    def counts() -> dict[str, int]:
        return {"requests": client.stats.requests, "retries": client.stats.retries, "enriched": report.movies_done}

    def written(current: EnrichReport) -> None:
        nonlocal report
        report = current
        store.update_run(db, outcome.run_id, **counts())

    with logged_run(db, "enrich", lambda: client.base_url, stop.is_set, counts) as outcome:
        report = enrich_backlog(db, client, config, endpoints=endpoints or None, limit=limit, stop=stop,
                                progress=progress, on_written=written)
    return outcome, report


@dataclass
class JobReport:
    """What a scheduled job did, for the log: one line, and its warnings and notes."""

    line: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    """What a sync run did."""

    run_id: int
    kind: str
    status: str = "running"
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(store.RUN_COUNTERS, 0))
    error: str | None = None
    messages: list[str] = field(default_factory=list)  # warnings and notes, which a quiet run does not show
    warnings: list[str] = field(default_factory=list)  # those kept in sync_runs.warning, every one

    def line(self) -> str:
        """One line on what the run did."""
        c = self.counts
        return (f"{self.kind} sync {self.status}: {counted(c['pages'], 'page')}, {counted(c['requests'], 'request')} "
                f"({counted(c['retries'], 'retry')}), {c['movies_new']} new, {c['movies_updated']} updated, "
                f"{c['movies_removed']} removed, {c['enriched']} enriched")


class Syncer:
    """Runs list crawls into one database, page by page, each page one transaction."""

    def __init__(self, db: sqlite_utils.Database, client: YTSClient, config: Config,
                 progress: Progress | None = None, stop: threading.Event | None = None):
        self.db = db
        self.client = client
        self.config = config
        self.progress = progress or Progress()
        self.stop = stop or threading.Event()
        self._base = (0, 0)
        self._refused = False  # this run refused to mark removals: the count gap it leaves is no baseline

    def choose_kind(self, full: bool) -> tuple[str, dict[str, Any] | None]:
        """Pick full or incremental, resuming a checkpointed crawl where there is one."""
        checkpoint = store.get_state(self.db, CHECKPOINT)
        if checkpoint and (checkpoint["kind"] == "full" or not full):
            return checkpoint["kind"], checkpoint
        return ("full" if full or self._mirror_empty() else "incremental"), None

    def _mirror_empty(self) -> bool:
        """Whether no movie is mirrored yet (a first crawl)."""
        return bool(self.db.execute("SELECT NOT EXISTS (SELECT 1 FROM movies)").fetchone()[0])

    def run(self, full: bool = False, after_crawl: Callable[[RunSummary], None] | None = None) -> RunSummary:
        """Crawl (full or incremental), then call `after_crawl` (enrichment); log the run."""
        kind, checkpoint = self.choose_kind(full)
        summary = RunSummary(0, kind)  # its id comes with the sync_runs row below
        self._base = (self.client.stats.requests, self.client.stats.retries)
        self._refused = False

        def final_counts() -> dict[str, int]:
            summary.counts["requests"], summary.counts["retries"] = self.request_counts()
            return summary.counts

        with logged_run(self.db, kind, lambda: self.client.base_url, self.stop.is_set, final_counts) as outcome:
            summary.run_id = outcome.run_id
            if checkpoint:
                self.progress.message(f"resuming {kind} crawl at page {checkpoint['next_page']}")
            try:
                if kind == "full":
                    self._full(summary, checkpoint)
                else:
                    self._incremental(summary, checkpoint)
            except Stopped:
                pass  # asked to stop while a request waited: the checkpoint holds, as after any page
            if after_crawl and not self.stop.is_set():
                after_crawl(summary)
        summary.status, summary.error = outcome.status, outcome.error
        return summary

    def enrich_new(self, summary: RunSummary, progress: Progress, limit: int | None = None) -> EnrichReport:
        """The enrichment a sync runs after its crawl (new, changed, failed), counted in the run's row as it goes."""
        before = summary.counts["enriched"]

        def log_counts(report: EnrichReport) -> None:  # the run's final counts keep this, whatever ends it
            summary.counts["enriched"] = before + report.movies_done
            requests, retries = self.request_counts()
            store.update_run(self.db, summary.run_id, enriched=summary.counts["enriched"], requests=requests,
                             retries=retries)

        report = enrich_backlog(self.db, self.client, self.config, only_new=True, limit=limit, stop=self.stop,
                                progress=progress, on_written=log_counts)
        summary.counts["enriched"] = before + report.movies_done
        summary.messages.extend(report.messages())
        return report

    def request_counts(self) -> tuple[int, int]:
        """Requests and retries this run has spent so far."""
        return self.client.stats.requests - self._base[0], self.client.stats.retries - self._base[1]

    def _commit_page(self, summary: RunSummary, page: ReadyPage, checkpoint: dict[str, Any]) -> store.PageResult:
        """Upsert one page and move the checkpoint, in one transaction."""
        with self.db.atomic():
            # Never before the crawl began, even if the clock was set back: "seen by this crawl" means since then.
            seen_at = max(store.now_iso(), checkpoint["started_at"])
            result = store.write_page(self.db, page.rows, seen_at)
            store.set_state(self.db, store.SEEN_STATE, {"latest": seen_at})
            if result.returned_ids:  # listed again below the top: an addition movie_count does not show
                checkpoint["moved"] = True  # so a removal may hide behind it
            checkpoint.update(next_page=page.next_page, movie_count=page.movie_count)
            store.set_state(self.db, CHECKPOINT, checkpoint)
            summary.counts["pages"] += 1
            summary.counts["movies_new"] += len(result.new_ids)
            summary.counts["movies_updated"] += result.updated
            summary.counts["torrents_new"] += result.torrents_new
            summary.counts["torrents_removed"] += result.torrents_removed
            store.update_run(self.db, summary.run_id, **{k: summary.counts[k] for k in (
                "pages", "movies_new", "movies_updated", "torrents_new", "torrents_removed")},
                **dict(zip(("requests", "retries"), self.request_counts())))
        if checkpoint["kind"] == "full":  # an incremental walk cannot know how far it goes
            self.progress.total(page.movie_count)
        self.progress.advance(page.listed)
        return result

    def _begin(self, kind: str, checkpoint: dict[str, Any] | None) -> tuple[dict[str, Any], set[int]]:
        """The crawl's checkpoint (a new one unless resuming), and the ids it has committed so far."""
        if checkpoint is None:  # after every time a crawl wrote, so "seen by this crawl" holds under a clock set back
            checkpoint = {"kind": kind, "started_at": store.crawl_start(self.db), "next_page": 1, "movie_count": None}
        resumed = checkpoint["next_page"] > 1
        return checkpoint, store.ids_seen_since(self.db, checkpoint["started_at"]) if resumed else set()

    def _commit_pages(self, summary: RunSummary, pages: Generator[ReadyPage, None, None], checkpoint: dict[str, Any],
                      seen: set[int]) -> bool:
        """Commit each page with its checkpoint, noting a moved movie_count and the ids seen; False if asked to stop."""
        with closing(pages):  # a page reader process ends with its pages
            for page in pages:
                if checkpoint.get("movie_count") not in (None, page.movie_count):
                    checkpoint["moved"] = True  # kept in the checkpoint, so a resumed crawl still knows
                self._commit_page(summary, page, checkpoint)
                seen.update(page.ids)
                if self.stop.is_set():
                    return False
        return True

    def _end_crawl(self, started_at: str, moved: bool, complete: bool) -> None:
        """Drop the checkpoint; if the catalog moved, leave the next incremental sync a removal check."""
        completed_at = store.now_iso()
        with self.db.atomic():
            store.clear_state(self.db, CHECKPOINT)
            store.set_state(self.db, store.CRAWLED_STATE, {"completed_at": completed_at})
            if moved:
                # Movies removed after the crawl read them (or above an incremental walk) still
                # look present: the next incremental sync looks for them (find_missing). After a
                # walk, the runs it was postponed (tries) still count: a catalog always moving must
                # not keep it for good. A complete crawl has settled what came before it: a new check.
                earlier = {} if complete else store.get_state(self.db, RECONCILE) or {}
                store.set_state(self.db, RECONCILE, {**earlier, "since": started_at})
            elif complete:  # a full crawl of a quiet catalog has marked every removal itself
                store.clear_state(self.db, RECONCILE)
            if complete:  # the scheduler's next full refresh counts from here
                store.set_state(self.db, store.FULL_CRAWL_STATE, {"completed_at": completed_at})
                store.clear_state(self.db, REFUSED)  # it has marked, or refused itself, what a search refused

    def _full(self, summary: RunSummary, checkpoint: dict[str, Any] | None) -> None:
        """Crawl every page; mark what the complete crawl did not see as removed."""
        checkpoint, seen = self._begin("full", checkpoint)
        self.progress.advance(len(seen))
        walk = Walk(seen, checkpoint["next_page"], checkpoint.get("movie_count"))
        pages = readahead.full_crawl(self.client, walk, self.config, self.stop)
        first = self._mirror_empty()  # then every movie the mirror will hold comes from this run
        with store.indexes_deferred(self.db, enabled=first):
            complete = self._commit_pages(summary, pages, checkpoint, seen)
        if not complete:
            return
        page_one = None if checkpoint.get("moved", False) else fetch_page(self.client, 1)
        moved = page_one is None or catalog_grew(page_one, seen)
        asked = self.client.stats.requests
        if self._finish_full(summary, checkpoint["started_at"], checkpoint["movie_count"], moved,
                             removals_possible=not first) and moved and not self.stop.is_set():
            # Page 1 as just read, unless confirming removals took requests (minutes, at the usual rate).
            self._top_up(summary, page_one if self.client.stats.requests == asked else None)

    def _finish_full(self, summary: RunSummary, started_at: str, count: int | None, moved: bool,
                     removals_possible: bool) -> bool:
        """After a complete crawl: note swarm counts, mark removals (unless implausibly many), end the crawl.

        False if stopped first: the next run resumes here, with the crawl's checkpoint.
        """
        if self.config.sync.torrent_history:
            store.record_swarm(self.db, observed_at=started_at, seen_since=started_at)
        if removals_possible and not self._mark_unseen_removed(summary, started_at):
            return False
        self._end_crawl(started_at, moved, complete=True)
        if not moved:
            self._note_gap(summary, count)
        return True

    def _mark_unseen_removed(self, summary: RunSummary, started_at: str) -> bool:
        """Mark what a complete crawl did not see removed, once movie_details agrees; False if stopped first."""
        unseen, present = store.unseen_since(self.db, started_at)
        if not unseen or not self._removals_allowed(summary, len(unseen), present):
            return True
        # A movie can slip past a crawl with no sign in movie_count: two movies added together
        # swap places across a page boundary, or a removal above is offset by a return below.
        self.progress.message(f"asking movie_details about {len(unseen)} movies the crawl did not see")
        unanswered, _ = self._confirm_removals(summary, unseen)  # those still answered stay, as documented
        if self.stop.is_set():
            return False
        if unanswered:
            log.info("movie_details did not answer for %d of them: marked removed, as the crawl saw them",
                     len(unanswered))
            self._mark_removed(summary, unanswered)
        return True

    def _mark_removed(self, summary: RunSummary, ids: Sequence[int]) -> None:
        """Mark movies and their torrents removed, with the run log's counts in the same transaction."""
        with self.db.atomic():
            movies, torrents = store.mark_ids_removed(self.db, ids, store.now_iso())
            summary.counts["movies_removed"] += movies
            summary.counts["torrents_removed"] += torrents
            store.update_run(self.db, summary.run_id, movies_removed=summary.counts["movies_removed"],
                             torrents_removed=summary.counts["torrents_removed"])

    def _incremental(self, summary: RunSummary, checkpoint: dict[str, Any] | None,
                     page_one: Listing | None = None) -> None:
        """Walk newest-first pages until reaching movies mirrored before the walk began; then check the count.

        `page_one` is page 1 as read moments ago, if it was: the walk and the removal check take it
        instead of reading it again.
        """
        if checkpoint is not None and checkpoint["next_page"] > 1:
            if not self._walk_new(summary, checkpoint):
                return
            checkpoint = None  # movies added while it was stopped are listed above the page it resumed at
        walked = self._walk_new(summary, checkpoint, page_one)
        if walked is None:
            return
        checkpoint, page_one = walked
        if checkpoint.get("moved", False):
            return  # the removal check waits for a walk over a list that holds still
        count = checkpoint["movie_count"]
        if count is None or self._refused:
            return  # a full crawl of this run refused its removals: the same gap is not searched again
        present, known_gap = store.present_count(self.db), self._known_gap()
        note = store.get_state(self.db, RECONCILE)  # a removal check owed
        if present - count != known_gap:  # news, unless this one count is wrong: a second read must agree
            page_one = fetch_page(self.client, 1)
            if page_one.total != count:
                reason = f"movie_count read {count}, then {page_one.total}"
                if note is None:
                    log.info("%s: the count check waits for the next run", reason)
                else:  # a count never read the same twice must not keep the check for good
                    self._postpone_reconcile(summary, note, reason)
                return
        refused = store.get_state(self.db, REFUSED)  # a search that found more removals than the setting allows
        if refused is not None and refused["gap"] != present - count:
            with self.db.atomic():  # the list has moved on since: what it found no longer stands
                store.clear_state(self.db, REFUSED)
        elif refused is not None and note is None:
            if not self._removals_allowed(summary, refused["found"], present):
                return  # the same gap would find the same: warned from the count alone, searched once allowed
        gone = present - count - max(known_gap, 0)  # fewer listed than mirrored: removals since the last crawl
        if gone > 0 and not self._removals_allowed(summary, gone, present):
            return  # unexplained, it is warned about each run, and searched once the setting allows
        owed = note is not None
        if gone > 0 and not owed:
            with self.db.atomic():
                store.set_state(self.db, RECONCILE, {"since": checkpoint["started_at"]})
            owed = True
        if owed:
            self._reconcile(summary, page_one, present - count)
        self._note_gap(summary, count)

    def _walk_new(self, summary: RunSummary, checkpoint: dict[str, Any] | None,
                  page_one: Listing | None = None) -> tuple[dict[str, Any], Listing | None] | None:
        """One incremental walk, page by page; its last checkpoint and its page 1 if read last, or None if stopped."""
        checkpoint, seen = self._begin("incremental", checkpoint)
        started_at = checkpoint["started_at"]

        def known_before(ids: list[int]) -> set[int]:
            return store.known_ids(self.db, ids, started_at)

        walk = Walk(seen, checkpoint["next_page"], checkpoint.get("movie_count"), first=page_one)
        pages = readahead.ready_pages(crawl_new(self.client, known_before, self.config.sync.overlap, walk),
                                      self.config.sync.trackers)
        asked = self.client.stats.requests
        if not self._commit_pages(summary, pages, checkpoint, seen):
            return None
        self._end_crawl(started_at, checkpoint.get("moved", False), complete=False)
        page_one_last = self.client.stats.requests - asked == (0 if page_one else 1)  # no request after it
        return checkpoint, walk.first if page_one_last else None

    def _top_up(self, summary: RunSummary, page_one: Listing | None) -> None:
        """After a full crawl that saw the list move: walk the newest pages for movies added meanwhile."""
        bar, self.progress = self.progress, Progress(message=self.progress.message)  # the crawl's bar is done
        try:
            self._incremental(summary, None, page_one)
        finally:
            self.progress = bar

    def _known_gap(self) -> int:
        """Present movies less movie_count, as the last quiet crawl left them."""
        return int((store.get_state(self.db, store.GAP_STATE) or {}).get("gap", 0))

    def _note_gap(self, summary: RunSummary, count: int | None) -> None:
        """Keep what a quiet crawl leaves between movie_count and the mirror; warn when the list counts more."""
        if count is None or self._refused:  # refused removals stay unexplained, to be warned about and searched
            return
        gap = store.present_count(self.db) - count
        if gap == self._known_gap():
            return
        with self.db.atomic():  # the baseline and its warning together: a kill between would lose the warning
            store.set_state(self.db, store.GAP_STATE, {"gap": gap, "movie_count": count})
            if gap < 0:  # an older date_added, or ties ordered one way for one page and another for the next
                self._warn(summary, f"movie_count says {count} movies and the mirror holds {count + gap}: the list "
                                    f"holds {-gap} no page read showed (listed below the newest pages, or hidden "
                                    "between two pages); the next full sync (--full) looks for them, and until then "
                                    "removals wait for it too")

    def _removals_allowed(self, summary: RunSummary, count: int, present: int) -> bool:
        """Whether marking `count` of `present` movies removed is plausible; if not, say why and keep it."""
        limit = self.config.sync.max_removed_fraction
        if not present or count <= max(10, limit * present):
            return True
        self._warn(summary, f"not marking {count} of {present} movies removed: more than sync.max_removed_fraction="
                            f"{limit}; check the source and raise the setting if this is real")
        self._refused = True
        return False

    def _warn(self, summary: RunSummary, text: str) -> None:
        """Show a warning, and keep it in the run log for runs nobody watches (cron, -q)."""
        self.progress.message(text)
        summary.messages.append(text)
        summary.warnings.append(text)
        with self.db.atomic():
            store.update_run(self.db, summary.run_id, warning="; also: ".join(summary.warnings))

    def _reconcile(self, summary: RunSummary, page_one: Listing | None, gap: int) -> None:
        """Find movies removed upstream after a crawl had read them, and mark them (or try again next run).

        `gap` is present movies less movie_count: a search refused for it is not repeated while it stays.
        """
        note = store.get_state(self.db, RECONCILE) or {}
        present = store.present_ids(self.db)
        try:
            candidates = find_missing(self.client, present, first=page_one)
        except CatalogMoved as error:
            self._postpone_reconcile(summary, note, str(error))
            return
        if not self._removals_allowed(summary, len(candidates), len(present)):
            with self.db.atomic():  # asking movie_details about each would not change the answer
                store.clear_state(self.db, RECONCILE)
                store.set_state(self.db, REFUSED, {"gap": gap, "found": len(candidates)})
            return
        with self.db.atomic():
            store.clear_state(self.db, REFUSED)
        unanswered, answered = self._confirm_removals(summary, candidates)
        if self.stop.is_set():
            return  # the check stays for the next run
        if unanswered:
            self._postpone_reconcile(summary, note, f"movie_details did not answer for {len(unanswered)} of them")
            return
        if len(answered) > max(self._known_gap(), 0):  # beyond those the count's baseline holds: said once
            self._warn(summary, f"the removal check took {counted(len(answered), 'movie')} for removed that "
                                f"movie_details still answers ({', '.join(map(str, answered[:5]))}): delisted while "
                                "still answered (kept, as a full sync keeps them), or listed out of date order, "
                                "which hides a removal from the search; the next full sync (--full) marks such a "
                                "removal")
        self._drop_reconcile()

    def _drop_reconcile(self) -> None:
        """The removal check is done, or left to the next full sync."""
        with self.db.atomic():
            store.clear_state(self.db, RECONCILE)

    def _confirm_removals(self, summary: RunSummary, candidates: Sequence[int]) -> tuple[list[int], list[int]]:
        """Mark each candidate movie_details says is gone; return those it left unanswered (all, once it seems
        dead), and those it says are there."""
        failures_in_a_row = 0
        unanswered: list[int] = []
        answered: list[int] = []
        for index, movie_id in enumerate(candidates):
            if self.stop.is_set() or failures_in_a_row >= self.config.enrich.pause_after:
                return unanswered + list(candidates[index:]), answered  # as enrichment pauses a dead endpoint
            gone = self._gone_upstream(movie_id)
            if gone is None:
                failures_in_a_row += 1
                unanswered.append(movie_id)
                continue
            failures_in_a_row = 0
            if gone:
                self._mark_removed(summary, [movie_id])
            else:
                answered.append(movie_id)
        return unanswered, answered

    def _postpone_reconcile(self, summary: RunSummary, note: dict[str, Any], reason: str) -> None:
        """Keep the removal check for the next run, up to RECONCILE_TRIES runs; then leave it to a full sync."""
        tries = int(note.get("tries", 0)) + 1
        if tries < RECONCILE_TRIES:
            with self.db.atomic():
                store.set_state(self.db, RECONCILE, {**note, "tries": tries})
            self.progress.message(f"removal check postponed to the next run: {reason}")
            return
        self._drop_reconcile()
        self._warn(summary, f"removal check given up after {tries} runs ({reason}); "
                            "removals it was looking for, if any, wait for the next full sync (--full)")

    def _gone_upstream(self, movie_id: int) -> bool | None:
        """Confirm a removal: movie_details answers an unknown id with its placeholder (None: no answer)."""
        try:
            data = self.client.get("movie_details", {"movie_id": movie_id},
                                   validate=validator_for("movie_details", movie_id))  # data:null is no "gone"
        except FetchError as error:
            if error.not_found:  # a yts-mirror source answers a removed movie with a 404 envelope
                return True
            log.warning("cannot confirm removal of movie %d: %s", movie_id, error)
            return None
        return transform.found_details(data, movie_id) is None
