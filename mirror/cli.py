"""The yts-mirror command line: options, progress output, signals and one-line errors over sync and store."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlite_utils import Database

from . import __version__, signals, store
from .client import YTSClient
from .config import ENRICH_ENDPOINTS, Config, ConfigError, resolve
from .enrich import backlog_summary
from .errors import EXIT_ERROR, EXIT_USAGE, error_line, exit_code
from .interpreter import python_command
from .locks import scheduler_lock, writer_alive
from .progress import Progress, counted
from .sync import JobReport, RunSummary, Syncer, logged_enrichment, writing

log = logging.getLogger("mirror")

# Bidirectional embeddings, overrides and isolates: a title holding one would reorder the rest of the line.
_BIDI = {c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
_CONTROLS = {**{c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c != 0x09}, **_BIDI}
_CONTROLS_BUT_NEWLINE = {c: text for c, text in _CONTROLS.items() if c != 0x0A}


# What json.dumps(ensure_ascii=False) leaves raw: DEL, C1, the lone surrogates of undecodable file names, bidi controls.
_JSON_CONTROLS = {**{c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), *range(0xD800, 0xE000))}, **_BIDI}


def terminal_safe(text: str, lines: bool = False) -> str:
    """`text` with control characters shown as escapes, so data (a title, an API message) cannot drive the terminal."""
    return text.translate(_CONTROLS_BUT_NEWLINE if lines else _CONTROLS)


def json_text(value: Any) -> str:
    """Indented JSON for the terminal: non-ASCII text as it is, every control character escaped."""
    return json.dumps(value, indent=2, ensure_ascii=False).translate(_JSON_CONTROLS)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print one clear line to stderr and exit."""
    click.echo(f"error: {terminal_safe(message)}", err=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one line on stderr and a meaningful exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:  # `yts-mirror search ... | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(EXIT_ERROR)
        except Exception as error:
            if (line := error_line(error)) is None:
                raise  # a bug of ours: keep the traceback
            fail(line, exit_code(error))

    return wrapper


class SafeFormatter(logging.Formatter):
    """Log lines whose control characters (from API answers) are shown as escapes: one record, one line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Debug records (-vv) may carry a traceback (the page reader's) in their message: they keep their lines.
        return terminal_safe(super().formatMessage(record), lines=record.levelno <= logging.DEBUG)

    def formatException(self, ei: Any) -> str:
        return terminal_safe(super().formatException(ei), lines=True)

    def formatStack(self, stack_info: str) -> str:
        return terminal_safe(super().formatStack(stack_info), lines=True)


class BarLine:
    """Whether a progress bar was the last thing drawn on stderr, its line left open (no newline yet).

    Hold `lock` to draw or to write below a bar: enrichment workers log while the main thread draws.
    """

    open = False
    notice = False  # the open line is a retry notice, which what comes next erases rather than ends
    plain: Callable[[], None] | None = None  # redraws the open bar without the retry notice on its label
    lock = threading.RLock()  # stderr's bar line: worker threads log, the signal relay announces a stop

    @classmethod
    def end(cls) -> str:
        """What other output needs first, once, while a line is open: a newline, or a notice erased."""
        if cls.open:
            cls.open = False
            if cls.notice:
                cls.notice = False
                return ERASE_LINE
            if cls.plain is not None:  # the bar's line stays above what follows: without a passing notice
                cls.plain()
            return "\n"
        return ""


ERASE_LINE = "\r\x1b[K"


def fit_terminal(text: str, room: int | None = None) -> str:
    """`text` cut to `room` characters (default: the terminal's width less one), an ellipsis marking the cut."""
    room = shutil.get_terminal_size().columns - 1 if room is None else room
    return text if len(text) <= room else text[:max(0, room - 1)] + "…"


class BarAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr log handler that starts below a progress bar rather than at its end."""

    def emit(self, record: logging.LogRecord) -> None:
        with BarLine.lock:
            self.stream.write(BarLine.end())
            super().emit(record)


def setup_logging(verbose: int, quiet: bool) -> None:
    """Log to stderr at the level -v/-q ask for."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    formatter = SafeFormatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime  # UTC, as every time yts-mirror stores or schedules
    handler = BarAwareHandler(sys.stderr)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler])


class TerminalProgress:
    """A progress bar on a terminal; periodic log lines otherwise."""

    def __init__(self, label: str, unit: str = "movies", quiet: bool = False, interval: float = 10.0):
        self.label = label
        self.unit = unit
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.interval = interval
        self.bar: Any = None
        self.done = 0
        self.total_count = 0
        self.started = time.monotonic()
        self.last_log = self.started
        self.notices: dict[int, str] = {}  # by thread: why each request still waiting for a retry waits

    def total(self, total: int) -> None:
        """Set how much work there is; start the bar on a terminal."""
        self.total_count = max(total, self.done)
        self._start(self.total_count)
        if self.bar is not None:
            self.bar.length = self.total_count

    def _start(self, length: int | None) -> None:
        """Draw the bar on a terminal, if not drawn yet; of unknown length (a moving mark) for None."""
        if self.quiet or not self.tty or self.bar is not None:
            return
        self.bar = click.progressbar(itertools.count() if length is None else None, length=length, label=self.label,
                                     file=sys.stderr, show_pos=True, show_eta=True, width=30)
        with BarLine.lock:
            self.bar.file.write(BarLine.end())
            self.bar.__enter__()
            self.bar.update(self.done)
            BarLine.open = True
            if self.notices:  # a request still waits: its notice moves onto the bar
                self._label_bar(self._latest_notice())

    def advance(self, count: int) -> None:
        """Count finished work (an incremental walk gives no total); without a terminal, log a line every 10 s."""
        self.done += count
        if self.quiet or not count:
            return
        if self.tty and self.bar is None:
            self._start(None)  # drawn at self.done, this count included
        elif self.tty:
            with BarLine.lock:
                self.bar.update(count)
                BarLine.open = True
        elif time.monotonic() - self.last_log >= self.interval:
            self.last_log = time.monotonic()
            rate = self.done / max(1e-9, time.monotonic() - self.started)
            click.echo(f"{self.label}: {self.done}/{self.total_count or '?'} {self.unit} ({rate:.1f}/s)", err=True)

    def waiting(self, notice: str | None) -> None:
        """On a terminal, say why a request waits (a retry) until it is answered or fails (None); `-v` logs instead.

        Each thread (an enrichment worker) has its own notice; the latest one still waiting shows.
        """
        if self.quiet or not self.tty or logging.getLogger("mirror.client").isEnabledFor(logging.INFO):
            return
        with BarLine.lock:
            self.notices.pop(threading.get_ident(), None)
            if notice is not None:
                self.notices[threading.get_ident()] = notice
            current = self._latest_notice()
            if self.bar is not None:
                self._label_bar(current)
            elif current is not None:
                sys.stderr.write(BarLine.end() + fit_terminal(terminal_safe(f"{self.label}: {current}")))
                sys.stderr.flush()
                BarLine.open = BarLine.notice = True
            elif BarLine.notice:
                sys.stderr.write(BarLine.end())
                sys.stderr.flush()

    def _latest_notice(self) -> str | None:
        """The notice of the request that began waiting last, of those still waiting."""
        return next(reversed(self.notices.values()), None)

    def _label_bar(self, notice: str | None) -> None:
        """Redraw the bar with `notice` after its label (cut to fit the terminal), or without one."""
        self.bar.label = self.label
        room = shutil.get_terminal_size().columns - 1 - len(self.bar.format_progress_line()) - 3
        if notice is not None and room >= 20:  # a bar line longer than the terminal would wrap at each redraw
            self.bar.label = f"{self.label} ({fit_terminal(terminal_safe(notice), room)})"
        BarLine.plain = self._draw_plain if self.bar.label != self.label else None
        self.bar.render_progress()
        BarLine.open = True

    def _draw_plain(self) -> None:
        """Redraw the bar without its notice, which it keeps for its next redraw below."""
        if self.bar is not None:
            label, self.bar.label = self.bar.label, self.label
            self.bar.render_progress()
            self.bar.label = label

    def message(self, text: str) -> None:
        """Print a line on stderr below the bar, which goes on under it."""
        if not self.quiet:
            with BarLine.lock:
                click.echo(BarLine.end() + terminal_safe(text), err=True)

    def close(self) -> None:
        """Finish the bar, if one was drawn, and end its line."""
        if self.bar is not None:
            with BarLine.lock:
                self.notices.clear()
                BarLine.plain = None
                relabel = self.bar.label != self.label  # a retry notice ends with the work
                self.bar.label = self.label
                if not BarLine.open:  # a message came last: show where the bar ended, below it
                    self.bar.file.write(self.bar.format_progress_line())
                elif relabel:
                    self.bar.render_progress()
                self.bar.__exit__(None, None, None)  # click ends the line
                self.bar = None
                BarLine.open = False
        elif BarLine.notice:
            with BarLine.lock:
                sys.stderr.write(BarLine.end())

    def callbacks(self) -> Progress:
        """The callbacks the pipeline reports progress through."""
        return Progress(total=self.total, advance=self.advance, message=self.message)


STOPPING_CRAWL = "finishing the current page, then stopping"
STOPPING_ENRICHMENT = "writing what the workers have fetched, then stopping"


class StopRequest(threading.Event):
    """The event a stop signal sets, with what the run says it does then (it changes as the run goes on)."""

    def __init__(self, announce: str | None):
        super().__init__()
        self.announce = announce


@contextmanager
def stop_on_signals(announce: str | None = STOPPING_CRAWL) -> Iterator[StopRequest]:
    """SIGTERM and SIGINT ask the run to stop after the page in flight (a second one interrupts)."""
    stop = StopRequest(announce)

    def request_stop(signum: int) -> None:
        stop.set()
        if stop.announce:
            with BarLine.lock:
                click.echo(f"{BarLine.end()}{signal.Signals(signum).name}: {stop.announce}", err=True)

    def interrupt(signum: int) -> None:
        raise KeyboardInterrupt

    with signals.relayed((signal.SIGTERM, signal.SIGINT), request_stop, interrupt):
        yield stop


# ---- the group --------------------------------------------------------------------------------

NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click 8.2 and later


class OneLineErrorGroup(click.Group):
    """A command group whose usage errors are one line on stderr, like every other expected failure."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except NO_ARGS_IS_HELP as error:  # a bare `yts-mirror`: the help itself, as click shows it
            click.echo(error.format_message(), err=True)
            sys.exit(error.exit_code)
        except click.UsageError as error:
            hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
            fail(f"{error.format_message().rstrip('.')}{hint}", error.exit_code)
        except click.ClickException as error:
            fail(error.format_message(), error.exit_code)
        except click.Abort:
            fail("aborted", EXIT_ERROR)
        sys.exit(result if type(result) is int else 0)  # --help and --version return their exit code


@click.group(cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="yts-mirror")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """An offline mirror of the YTS movie catalog in one SQLite file."""
    setup_logging(verbose, quiet)
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet


db_option = click.option("--db", "db", type=click.Path(dir_okay=False, readable=False), default=None,
                         help="Database file [env YTS_MIRROR_DB; default yts-mirror.db].")
config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                             help="TOML config file [env YTS_MIRROR_CONFIG].")
base_url_option = click.option("--base-url", default=None,
                               help="API base URL(s), comma-separated [env YTS_MIRROR_BASE_URL].")


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Refuse nan and inf, which click's FloatRange lets through."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def an_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse a blank --host, which would listen on every interface."""
    if not value.strip():
        raise click.BadParameter("must name an address, such as 127.0.0.1")
    return value


rate_option = click.option("--rate", type=click.FloatRange(min=0, max=1000), default=None, callback=finite,
                           help="Requests per second (default 0.4; 0 = unlimited, for local sources only).")
concurrency_option = click.option("--concurrency", type=click.IntRange(min=1, max=64), default=None,
                                  help="Enrichment worker threads.")


@cli.command(short_help="Copy the catalog into the database.")
@db_option
@config_option
@base_url_option
@rate_option
@concurrency_option
@click.option("--no-enrich", is_flag=True, help="Only crawl the list; skip per-movie endpoints.")
@click.option("--full", is_flag=True, help="Re-crawl every list page (updates seeds, marks removals).")
@click.option("--enrich-limit", type=click.IntRange(min=1), default=None,
              help="Enrich at most N new or changed movies, newest first; the rest wait for later runs.")
@click.option("--wait", is_flag=True, help="Wait for another writer on the same database instead of exiting.")
@click.pass_context
@handle_errors
def sync(ctx: click.Context, db: str | None, config_path: str | None, base_url: str | None, rate: float | None,
         concurrency: int | None, no_enrich: bool, full: bool, enrich_limit: int | None, wait: bool) -> None:
    """Copy the catalog into the database: incremental, or --full."""
    if no_enrich and enrich_limit is not None:
        raise click.UsageError("--enrich-limit has no effect with --no-enrich; drop one of them", ctx)
    config = resolve(config_path, db=db, base_url=base_url, rate=rate, concurrency=concurrency)
    summary = run_sync(config, full=full, enrich=not no_enrich, wait=wait, quiet=ctx.obj["quiet"],
                       enrich_limit=enrich_limit)
    if not ctx.obj["quiet"]:
        click.echo(terminal_safe(summary.line()), err=True)


@contextmanager
def writer_session(config: Config, label: str, unit: str, wait: bool, quiet: bool, stop: threading.Event | None,
                   must_exist: bool = False) -> Iterator[tuple[Database, YTSClient, TerminalProgress, threading.Event]]:
    """A writer's database, client, progress output and stop event (set by SIGTERM or SIGINT)."""
    # Signals are caught once the lock is held, so a run queued by --wait still dies of SIGTERM.
    announce = STOPPING_CRAWL if label == "sync" else STOPPING_ENRICHMENT
    with writing(config, wait, must_exist) as (db, client), stop_on_signals(announce) as signal_stop:
        client.stop = stop or signal_stop
        progress = TerminalProgress(label, unit=unit, quiet=quiet)
        client.on_retry = progress.waiting
        try:
            yield db, client, progress, client.stop
        finally:
            progress.close()


def run_sync(config: Config, full: bool = False, enrich: bool = True, wait: bool = False, quiet: bool = False,
             stop: threading.Event | None = None, enrich_limit: int | None = None) -> RunSummary:
    """Run one sync under the writer lock, with progress output and signal handling."""
    with writer_session(config, "sync", "movies", wait, quiet, stop) as (db, client, progress, event):
        syncer = Syncer(db, client, config, progress.callbacks(), event)
        after = enrich_after_crawl(syncer, quiet, enrich_limit, progress) if enrich else None
        return syncer.run(full=full, after_crawl=after)


def enrich_after_crawl(syncer: Syncer, quiet: bool, limit: int | None = None,
                       crawl: TerminalProgress | None = None) -> Callable[[RunSummary], None]:
    """The enrichment step a sync runs after its crawl: movies never enriched and changed ones, newest first."""

    def step(summary: RunSummary) -> None:
        if crawl is not None:
            crawl.close()  # the crawl's bar stays as it ended, above the enrichment's
        progress = TerminalProgress("enrich", unit="requests", quiet=quiet)
        syncer.client.on_retry = progress.waiting
        if isinstance(syncer.stop, StopRequest):  # a signal now stops the enrichment, not a crawl
            syncer.stop.announce = STOPPING_ENRICHMENT
        try:
            report = syncer.enrich_new(summary, progress.callbacks(), limit)
        finally:
            progress.close()
        for message in report.messages():
            progress.message(message)

    return step


@cli.command(short_help="Fetch details, cast, suggestions, reviews and guides.")
@db_option
@config_option
@base_url_option
@click.option("--endpoint", "endpoints", multiple=True, type=click.Choice(ENRICH_ENDPOINTS),
              help="Only these endpoints (repeatable; default: those enabled in the config).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many movies.")
@concurrency_option
@rate_option
@click.option("--wait", is_flag=True, help="Wait for another writer on the same database instead of exiting.")
@click.pass_context
@handle_errors
def enrich(ctx: click.Context, db: str | None, config_path: str | None, base_url: str | None,
           endpoints: tuple[str, ...], limit: int | None, concurrency: int | None, rate: float | None,
           wait: bool) -> None:
    """Fetch details, cast, suggestions, reviews and parental guides for the backlog."""
    config = resolve(config_path, db=db, base_url=base_url, rate=rate, concurrency=concurrency)
    run_enrich(config, endpoints=endpoints, limit=limit, wait=wait, quiet=ctx.obj["quiet"])


def run_enrich(config: Config, endpoints: Sequence[str] = (), limit: int | None = None, wait: bool = False,
               quiet: bool = False, stop: threading.Event | None = None) -> JobReport:
    """Work through the enrichment backlog under the writer lock, logging a sync_runs row."""
    with writer_session(config, "enrich", "requests", wait, quiet, stop, must_exist=True) as session:
        database, client, progress, event = session
        outcome, report = logged_enrichment(database, client, config, event, progress.callbacks(), endpoints, limit)
    for message in report.messages():
        progress.message(message)
    if report.backlog:
        planned = f"of {counted(report.backlog, 'request')} planned" + (f" for at most {limit} movies" if limit else "")
        line = (f"enrich {outcome.status}: {counted(report.movies_done, 'movie')}, "
                f"{counted(client.stats.requests, 'request')} ({counted(client.stats.retries, 'retry')}) {planned}")
    else:
        line = f"enrich {outcome.status}: nothing due"
    if not quiet:
        click.echo(line, err=True)
    return JobReport(line, report.messages())


@cli.command(short_help="Run syncs and enrichment on the config's schedule.")
@db_option
@config_option
@base_url_option
@rate_option
@concurrency_option
@click.pass_context
@handle_errors
def schedule(ctx: click.Context, db: str | None, config_path: str | None, base_url: str | None,
             rate: float | None, concurrency: int | None) -> None:
    """Run incremental syncs, full refreshes and enrichment on the [schedule] from the config."""
    from .schedule import log as schedule_log
    from .schedule import require_jobs, run_forever

    config = resolve(config_path, db=db, base_url=base_url, rate=rate, concurrency=concurrency)
    require_jobs(config)
    syncs = config.schedule.incremental_seconds > 0 or bool(config.schedule.full_cron)
    # A file holding something else is exit 2 now, not an error every job; so is a missing
    # database that no job would create.
    store.require_mirror(config.db, must_exist=not syncs)
    if not ctx.obj["quiet"] and logging.getLogger().level > logging.INFO:
        logging.getLogger(schedule_log.name).setLevel(logging.INFO)  # a daemon says what each job did; -v: each retry
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("apscheduler").setLevel(logging.ERROR)  # our own lines say what each job did
    limit = config.schedule.enrich_limit or None
    mirrored = [os.path.exists(config.db)]

    def still_there(cfg: Config) -> None:
        if mirrored[0] and not os.path.exists(cfg.db):  # deleted, or its disk unmounted: no new mirror unasked
            raise store.StoreError(f"the database {cfg.db} is gone; restart `yts-mirror schedule` to start a new one")

    def scheduled_sync(cfg: Config, full: bool, stop: threading.Event) -> JobReport:
        still_there(cfg)
        summary = run_sync(cfg, full=full, quiet=True, stop=stop, enrich_limit=limit)
        mirrored[0] = True
        return JobReport(summary.line(), summary.messages)

    def scheduled_enrichment(cfg: Config, stop: threading.Event) -> JobReport:
        still_there(cfg)
        return run_enrich(cfg, limit=limit, quiet=True, stop=stop)

    with scheduler_lock(config.db):
        run_forever(config, run_sync=scheduled_sync, run_enrich=scheduled_enrichment,
                    last_full=lambda: store.last_full_refresh(config.db))


@cli.command(short_help="Full-text search of titles, descriptions and cast.")
@click.argument("query")
@db_option
@config_option
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=20, show_default=True,
              help="Show at most N results, best first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--include-removed", is_flag=True, help="Also show movies removed upstream.")
@click.pass_context
@handle_errors
def search(ctx: click.Context, query: str, db: str | None, config_path: str | None, limit: int, as_json: bool,
           include_removed: bool) -> None:
    """Full-text search over titles, descriptions and cast (FTS5 syntax)."""
    config = resolve(config_path, db=db)
    with closing(store.open_reader(config.db)) as database:
        rows = store.search(database, query, limit, include_removed)
    if as_json:
        click.echo(json_text(rows))
        return
    if not rows:
        if not ctx.obj["quiet"]:
            click.echo("no matches", err=True)
        return
    click.echo(SEARCH_HEADER)
    for row in rows:
        click.echo(search_line(row))


SEARCH_HEADER = f"{'id':>7}  rating  title (year)"


def search_line(row: dict[str, Any]) -> str:
    """One search result as `search` prints it: id, rating, title (year), and whether it was removed."""
    removed = "  [removed]" if row["removed_at"] else ""
    rating = f"{row['rating']:.1f}" if row["rating"] is not None else "-"
    return terminal_safe(f"{row['id']:>7}  {rating:>6}  {row['title']} ({row['year']}){removed}")


@cli.command(short_help="Counts, freshness, backlog, last runs, size.")
@db_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def stats(db: str | None, config_path: str | None, as_json: bool) -> None:
    """Counts, freshness, the enrichment backlog, the last runs and the database size."""
    config = resolve(config_path, db=db)
    with closing(store.open_reader(config.db)) as database:
        report = collect_stats(database, config)
    if as_json:
        click.echo(json_text(report))
        return
    click.echo(format_stats(report))


def collect_stats(database: Database, config: Config) -> dict[str, Any]:
    """Everything `stats` shows, as a dict."""
    report: dict[str, Any] = {
        "database": config.db,
        "size_bytes": store.database_size(config.db),
        "counts": store.table_counts(database),
        "freshness": store.freshness(database),
        "last_runs": store.last_runs(database),
    }
    if not writer_alive(config.db):  # a writer killed mid-run left its row 'running'; the next one closes it
        for run in report["last_runs"]:
            run["status"] = "interrupted" if run["status"] == "running" else run["status"]
    report["backlog"] = backlog_summary(database, config)
    return report


def format_stats(report: dict[str, Any]) -> str:
    """Render the stats report for a terminal."""
    counts = report["counts"]
    fresh = report["freshness"]
    lines = [
        f"database: {report['database']} ({report['size_bytes'] / 2**20:.1f} MiB)",
        f"movies: {counts['movies']} present, {counts['movies_removed']} removed",
        f"torrents: {counts['torrents']} present, {counts['torrents_removed']} removed; "
        f"{counts['torrent_stats']} swarm observations",
        f"genres: {counts['genres']}; cast rows: {counts['cast']}; suggestions: {counts['suggestions']}; "
        f"reviews: {counts['reviews']}; parental guides: {counts['parental_guides']}; comments: {counts['comments']}",
        f"last ok sync: {fresh['last_ok_sync'] or 'never'} (full: {fresh['last_ok_full'] or 'never'})",
    ]
    if fresh["crawl_in_progress"]:
        cp = fresh["crawl_in_progress"]
        lines.append(f"unfinished {cp['kind']} crawl: resumes at page {cp['next_page']}")
    for endpoint, row in (report.get("backlog") or {}).items():
        state = " (paused)" if row.get("paused") else ""
        lines.append(f"backlog {endpoint}: {row['pending']} pending, {row['done']} done, "
                     f"{row['not_found']} not found, {row['failed']} failed{state}")
    if report["last_runs"]:
        lines.append("last runs:")
        for run in report["last_runs"]:
            crawl = "" if run["kind"] == "enrich" else (
                f"{counted(run['pages'], 'page')}, {run['movies_new']} new, {run['movies_updated']} updated, "
                f"{run['movies_removed']} removed, ")
            lines.append(
                f"  #{run['id']} {run['kind']:<11} {run['status']:<11} started {run['started_at'][:19]}Z  {crawl}"
                f"{counted(run['requests'], 'request')} ({counted(run['retries'], 'retry')}), {run['enriched']} enriched"
                + (f"  error: {run['error']}" if run["error"] else "")
                + (f"  warning: {run['warning']}" if run.get("warning") else "")
            )
    return "\n".join(terminal_safe(line) for line in lines)  # a line each, whatever an error message holds


@cli.command("fake-api", short_help="Serve a simulated YTS API on loopback.")
@click.option("--movies", type=click.IntRange(min=0, max=2_000_000), default=1000, show_default=True,
              help="Movies in the simulated catalog.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8765, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, callback=an_address, help="Address to listen on.")
@click.option("--seed", type=int, default=1, show_default=True, help="The same seed gives the same catalog.")
@click.option("--latency-ms", type=click.FloatRange(min=0, max=60_000), default=0, show_default=True, callback=finite,
              help="Delay before each answer, in milliseconds.")
@click.option("--faults", default="", help='Fault spec, e.g. "mix=0.1,dead=movie_reviews,retry_after=0".')
@click.option("--rate-limit", type=click.FloatRange(min=0), default=0, show_default=True, callback=finite,
              help="Refuse with 429 above this many requests per second (0 = no limit).")
@click.option("--churn", default="", help='Mutate the catalog while crawled, e.g. "every=10,add=3,remove=1".')
@click.pass_context
@handle_errors
def fake_api(ctx: click.Context, movies: int, port: int, host: str, seed: int, latency_ms: float, faults: str,
             rate_limit: float, churn: str) -> None:
    """Serve a simulated YTS API on loopback, for tests, the demo and benchmarks."""
    from .fakeapi import Catalog, Churn, FakeYTS, FaultPlan

    try:
        plan, churn_plan = FaultPlan.parse(faults), Churn.parse(churn)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    sim = FakeYTS(Catalog(movies, seed), plan, latency_ms, rate_limit, churn_plan, seed)
    with stop_on_signals(announce=None) as stop:  # before it answers: a client may stop it at once
        try:
            sim.start(port, host)
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from None
        if not ctx.obj["quiet"]:
            click.echo(f"fake YTS API with {movies} movies: sync with --base-url {sim.url} (Ctrl-C stops)", err=True)
        while not stop.wait(0.5):
            pass
    sim.stop()


@cli.command(short_help="Try it offline: sync a simulated catalog, show it.")
@click.option("--db", "db", type=click.Path(dir_okay=False), default="demo.db", show_default=True,
              help="Database to create (or a demo's own to sync again).")
@click.option("--movies", type=click.IntRange(min=1, max=100000), default=3000, show_default=True,
              help="Movies in the simulated catalog.")
@click.option("--no-enrich", is_flag=True, help="Skip the per-movie endpoints.")
@click.pass_context
@handle_errors
def demo(ctx: click.Context, db: str, movies: int, no_enrich: bool) -> None:
    """Sync a simulated catalog into demo.db offline, then show what you got."""
    from dataclasses import replace

    config = resolve(None, db=db, base_url="http://127.0.0.1", rate=0, concurrency=4)
    claim_for_demo(config.db, movies)
    with simulator_process(movies, faults="mix=0.03,retry_after=0") as url:
        if not ctx.obj["quiet"]:
            click.echo(f"simulator with {movies} movies at {url} (3% of requests faulted)", err=True)
        api = replace(config.api, base_urls=(url,), backoff_initial=0.05, backoff_max=0.5)
        summary = run_sync(replace(config, api=api), full=True, enrich=not no_enrich, quiet=ctx.obj["quiet"])
    if summary.status != "ok":  # stopped (Ctrl-C): the next demo on this database goes on from here
        if not ctx.obj["quiet"]:
            click.echo(f"{terminal_safe(summary.line())}\nrun the demo again to finish it", err=True)
        return
    with closing(store.open_reader(config.db)) as database:
        click.echo(format_stats(collect_stats(database, config)))
        query = demo_query(database)
        click.echo(f"\n$ yts-mirror search '{query}' --db {db} --limit 5")
        click.echo(SEARCH_HEADER)
        for row in store.search(database, query, 5):
            click.echo(search_line(row))
    from datasette.utils import tilde_encode

    catalog = f"http://127.0.0.1:8001/{tilde_encode(Path(db).stem)}/movie_catalog"
    click.echo(f"\nBrowse it:  yts-mirror serve --db {db}   (the catalog at {catalog})")
    click.echo(f"Query it:   sqlite3 {db} \"SELECT title, year, rating FROM movies ORDER BY rating DESC LIMIT 10\"")


def claim_for_demo(path: str, movies: int) -> None:
    """Mark the demo's database as simulated; refuse one holding a real mirror, another size of demo, or anything else."""
    if store.require_mirror(path, must_exist=False):
        with closing(store.open_reader(path)) as database:
            demo = store.get_state(database, store.DEMO_STATE)
        if demo is None:
            fail(f"{path} holds a mirror the demo did not make; the demo writes simulated movies, "
                 "so choose another --db", EXIT_USAGE)
        elif demo.get("movies", movies) != movies:  # its sync would find most movies gone
            fail(f"{path} holds a demo of {demo['movies']:,} movies; choose another --db for {movies:,}, "
                 "or delete it", EXIT_USAGE)
    with closing(store.open_db(path)) as database, database.atomic():
        store.set_state(database, store.DEMO_STATE, {"made_at": store.now_iso(), "movies": movies})


def demo_query(database: Database) -> str:
    """An actor's name if the demo enriched, else a word from a title."""
    row = database.execute("SELECT name FROM movie_cast GROUP BY name ORDER BY COUNT(*) DESC LIMIT 1").fetchone()
    if row:
        return f'"{row[0]}"'
    title = database.execute("SELECT title FROM movies ORDER BY id LIMIT 1").fetchone()[0]
    return max(title.split(), key=len)


@contextmanager
def simulator_process(movies: int, faults: str = "") -> Iterator[str]:
    """Run `yts-mirror fake-api` in its own process (its own core) and yield its URL."""
    import socket
    import subprocess

    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(python_command("mirror.cli:main", "-q", "fake-api", "--movies", str(movies),
                                              "--port", str(port), "--seed", "42", "--faults", faults))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(f"{url}/_admin/stats", timeout=1)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise click.ClickException("the simulator did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@cli.command(short_help="Browse the mirror in Datasette, with a YTS-style API.")
@db_option
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, callback=an_address,
              help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8001, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the catalog in a web browser.")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, db: str | None, config_path: str | None, host: str, port: int, open_browser: bool) -> None:
    """Browse the mirror in Datasette: search, facets, canned queries, magnet links."""
    from .serve import run_serve  # late: Datasette and uvicorn load only for this command

    run_serve(db, config_path, host, port, open_browser, quiet=ctx.obj["quiet"])


def main() -> None:
    """Console-script entry point."""
    cli(obj={})


if __name__ == "__main__":
    main()
