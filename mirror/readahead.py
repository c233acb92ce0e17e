"""Crawled pages ready to write, and a process that reads them ahead of the writer on long unthrottled crawls.

Without a rate limit, fetching, decoding and building the rows of the next page could overlap
the writer's SQLite work, but not in a thread: the writer holds the GIL most of its time. So a
long full crawl at `--rate 0` hands its walk to a child process, which reads and transforms one
page ahead of the writer and sends the rows over a pipe. At any real rate each request waits
seconds for its token while a page is written in milliseconds, so the crawl stays in one
process and a kill wastes no page read ahead.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import marshal
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Generator, Iterable, Iterator
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from .client import ClientStats, FetchError, Stopped, YTSClient, make_client
from .config import Config
from .crawl import Page, Walk, crawl_full
from .interpreter import python_command
from .transform import PageValues, page_rows, page_values

READ_AHEAD_MIN_PAGES = 40  # the child takes about 0.1 s to start; reading ahead saves about 3 ms a page
POLL_SECONDS = 0.2  # how often a writer waiting for a page looks at its stop event
NEXT = b"next"
PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size
PR_SET_PDEATHSIG = 1  # prctl(2)

log = logging.getLogger(__name__)


class ReadyPage(NamedTuple):
    """A crawled page ready to write: where the crawl goes after it, and its rows."""

    number: int
    movie_count: int
    next_page: int
    listed: int  # movies on the page itself, re-read ones aside (for progress)
    ids: list[int]  # every movie read with the page
    rows: PageValues


class ReaderError(Exception):
    """The page reader process ended without an answer, or failed in a way that is not an API error."""


def ready(page: Page, trackers: Iterable[str]) -> ReadyPage:
    """Build a crawled page's rows."""
    return ReadyPage(page.number, page.movie_count, page.next_page, len(page.movies), page.ids,
                     page_values(page_rows(page.all_movies, trackers)))


def ready_pages(pages: Iterable[Page], trackers: Iterable[str]) -> Generator[ReadyPage, None, None]:
    """Build each crawled page's rows as it comes."""
    for page in pages:
        yield ready(page, trackers)


def full_crawl(client: YTSClient, walk: Walk, config: Config,
               stop: threading.Event) -> Generator[ReadyPage, None, None]:
    """A full crawl's pages, ready to write; a long one without a rate limit is read ahead by a child process.

    The child starts once the crawl looks long enough, and takes the walk over at the first page
    boundary after it is up; meanwhile this process reads on itself.
    """
    may_read_ahead = client.limiter.rate <= 0
    reader: PageReader | None = None
    try:
        while not walk.finished:
            if reader is not None and reader.up():
                if reader.take_over(walk):
                    yield from reader.pages(stop)
                    return
                reader.close()
                reader = None
            page = ready(walk.step(client), config.sync.trackers)
            if may_read_ahead and walk.pages_to_read >= READ_AHEAD_MIN_PAGES:
                may_read_ahead = False
                reader = start_reader(config, client)
            yield page
    finally:
        if reader is not None:
            reader.close()


def start_reader(config: Config, client: YTSClient) -> PageReader | None:
    """Start a page reader process, or say why not (then this process reads on)."""
    try:
        return PageReader(config, client)
    except OSError as error:  # out of processes or file descriptors
        log.warning("cannot start a page reader process, reading on in this one: %s", error)
        return None


class PageReader:
    """A child process that takes a walk over and reads one page ahead of the writer, which asks for each page."""

    def __init__(self, config: Config, client: YTSClient):
        self.config, self.client = config, client
        self.counted = (0, 0, 0)  # the child's requests, retries and answers already added to `client`
        self.finished = False  # whether it has sent its last page and is exiting by itself
        self.working = False  # whether it has the walk
        pipes: list[int] = []
        try:
            pipes.extend(os.pipe())  # child reads, parent writes
            pipes.extend(os.pipe())  # parent reads, child writes
            _widen(pipes[3])
            self.process = _start_child(pipes[0], pipes[3])
        except OSError:
            for fd in pipes:
                os.close(fd)
            raise
        os.close(pipes[0])
        os.close(pipes[3])
        self.requests = Connection(pipes[1], readable=False)
        self.replies = Connection(pipes[2], writable=False)

    def up(self) -> bool:
        """Whether the child has said it is up (or has ended: `take_over` then says so)."""
        return self.replies.poll()

    def take_over(self, walk: Walk) -> bool:
        """Hand the child the walk; False, with a warning, if it ended before it was up (this process reads on)."""
        try:
            if self._next_message()[0] == "up":
                level = logging.getLogger("mirror").getEffectiveLevel()
                self.requests.send_bytes(pickle.dumps((self.config, self.client.base_url, walk, level,
                                                       self.client.moved)))
                self.working = True
        except (EOFError, OSError):
            pass
        if not self.working:
            log.warning("the page reader process ended before it took the crawl over (%s); reading on in this one",
                        self._how_it_ended())
            return False
        log.info("reading pages ahead in a second process (pid %s) from page %d", self.process.pid, walk.page)
        return True

    def close(self) -> None:
        """End the child, unless it is ending by itself; count what it spent, and wait for it."""
        self.requests.close()
        if not self.finished:  # what it would still read is not wanted (a stop, an error, the writer's own end)
            self.process.kill()  # it ignores SIGTERM
        self.process.wait()
        if self.working:
            self._drain()
        self.replies.close()

    def _drain(self) -> None:
        """Take in the counts and log lines the child sent before it ended, which nobody asked for."""
        try:
            while self.replies.poll():
                self._next_message()
        except (EOFError, OSError):
            pass

    def pages(self, stop: threading.Event) -> Iterator[ReadyPage]:
        """Ask the child for each page in turn, until the walk ends."""
        while True:
            try:
                self.requests.send_bytes(NEXT)
            except OSError:
                raise self._died() from None
            kind, payload = self._receive(stop)
            if kind == "end":
                self.finished = True
                return
            number, movie_count, next_page, listed, ids, movies, genres, torrents = payload
            yield ReadyPage(number, movie_count, next_page, listed, ids, PageValues(movies, genres, torrents))

    def _receive(self, stop: threading.Event) -> tuple[str, Any]:
        """The child's next page or end, after its counts and log lines; raise its errors here."""
        while True:
            while not self.replies.poll(POLL_SECONDS):
                if stop.is_set():
                    raise Stopped("stopped while waiting for the next page")
            try:
                kind, payload = self._next_message()
            except (EOFError, OSError):
                raise self._died() from None
            if kind == "fetch error":
                raise FetchError(*payload)
            elif kind == "crash":  # a bug of ours: the traceback at -vv, one line otherwise
                log.debug("the page reader process failed:\n%s", payload)
                raise ReaderError(f"the page reader process failed: {payload.splitlines()[-1]}")
            elif kind not in ("counts", "log"):
                return kind, payload

    def _next_message(self) -> tuple[str, Any]:
        """Read the child's next message, taking in its counts and replaying it if a log line (EOFError if gone)."""
        kind, stats, payload = marshal.loads(self.replies.recv_bytes())
        self._count(stats)
        if kind == "log":
            replay_log(*payload)
        return kind, payload

    def _died(self) -> ReaderError:
        """The error for a child that ended without a word."""
        return ReaderError(f"the page reader process ended unexpectedly ({self._how_it_ended()})")

    def _how_it_ended(self) -> str:
        """The child's exit status, in words."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"

    def _count(self, stats: tuple[int, int, int, str | None]) -> None:
        """Add what the child spent since its last message to our client's counts; follow its host."""
        *totals, answering_url = stats
        self.client.stats.add(*(now - before for now, before in zip(totals, self.counted)))
        self.counted = tuple(totals)  # type: ignore[assignment]
        if answering_url and answering_url != self.client.answering_url:
            self.client.adopt(answering_url)


def _widen(pipe: int) -> None:
    """Let a pipe hold a whole page (about 250 KB), so the reader goes on while the writer reads it (Linux)."""
    try:
        fcntl.fcntl(pipe, getattr(fcntl, "F_SETPIPE_SZ"), PIPE_BYTES)
    except (AttributeError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size: the default 64 KB
        pass


def _start_child(reads: int, writes: int) -> subprocess.Popen[bytes]:
    """Start `main` in a fresh interpreter, on the pipes `reads` and `writes`."""
    # close_fds (the default) keeps the SQLite handle and the writer lock from the child, and a
    # process group of its own keeps a terminal's Ctrl-C from it: the writer decides when to stop.
    return subprocess.Popen(python_command("mirror.readahead:main", str(reads), str(writes), str(os.getpid())),
                            pass_fds=(reads, writes), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            process_group=0)


def replay_log(name: str, level: int, message: str, created: float) -> None:
    """Log a record the child made, under its logger and time."""
    record = logging.makeLogRecord({"name": name, "levelno": level, "levelname": logging.getLevelName(level),
                                    "msg": message, "created": created, "msecs": created % 1 * 1000})
    logging.getLogger(name).handle(record)


# ---- in the child process -------------------------------------------------------------------

def main() -> None:
    """The child's entry point: say it is up on the pipes named on the command line, take the walk, read ahead."""
    requests, replies = Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
    for stop_signal in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # `systemctl stop` signals every process
        signal.signal(stop_signal, signal.SIG_IGN)  # of a service: the writer stops, then ends us
    _end_with_writer(int(sys.argv[3]))
    try:
        replies.send_bytes(marshal.dumps(("up", (0, 0, 0, None), ())))
        config, host, walk, log_level, moved = pickle.loads(requests.recv_bytes())
    except (EOFError, OSError):
        return  # the writer is gone already
    read_ahead(requests, replies, config, host, walk, log_level, moved)


def _end_with_writer(writer: int) -> None:
    """Have the kernel end this process when the writer dies, even mid-request or mid-backoff (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl: the closed pipe still ends us, once the request in hand is done
        return
    if os.getppid() != writer:  # it died before we asked
        os._exit(0)


def read_ahead(requests: Connection, replies: Connection, config: Config, host: str, walk: Walk,
               log_level: int, moved: set[tuple[str, str]]) -> None:
    """Step the walk, sending each page's rows when asked; send errors and log lines as they come."""
    client = make_client(config)
    client.adopt(host)
    client.moved.update(moved)  # the writer has warned of these already
    client.stats = ForwardedStats(replies, client)
    _send_logs(replies, client, log_level)
    try:
        for page in crawl_full(client, walk):
            message = ("page", _page_payload(ready(page, config.sync.trackers)))
            requests.recv_bytes()  # NEXT: the writer wants it
            _send(replies, client, *message)
        requests.recv_bytes()
        _send(replies, client, "end", ())
    except (EOFError, BrokenPipeError):
        pass  # the writer is gone, or done with us
    except FetchError as error:
        _send_quietly(replies, client, "fetch error",
                      (error.url, error.reason, error.attempts, error.status, error.unanswered))
    except Exception:
        _send_quietly(replies, client, "crash", traceback.format_exc().strip())
    finally:
        client.close()


class ForwardedStats(ClientStats):
    """The child's request counts, sent to the writer at every change: a request in flight when it ends still counts."""

    def __init__(self, conn: Connection, client: YTSClient):
        super().__init__()
        self.conn, self.client = conn, client

    def count_request(self) -> None:
        """Count one request sent, and tell the writer."""
        super().count_request()
        _send(self.conn, self.client, "counts", ())

    def count_retry(self) -> None:
        """Count one retry, and tell the writer."""
        super().count_retry()
        _send(self.conn, self.client, "counts", ())


def _page_payload(page: ReadyPage) -> tuple[Any, ...]:
    """A ready page as plain tuples, dicts and lists, which marshal sends (and loads much faster than pickle)."""
    return (*page[:-1], *page.rows)


def _send(conn: Connection, client: YTSClient, kind: str, payload: Any) -> None:
    """Send one message with the client's counts so far."""
    stats = client.stats
    conn.send_bytes(marshal.dumps((kind, (stats.requests, stats.retries, stats.answered, client.answering_url),
                                   payload)))


def _send_quietly(conn: Connection, client: YTSClient, kind: str, payload: Any) -> None:
    """Send a last message, unless the writer is already gone."""
    try:
        _send(conn, client, kind, payload)
    except OSError:
        pass


def _send_logs(conn: Connection, client: YTSClient, level: int) -> None:
    """Send this process's log records to the writer, which logs them as its own."""
    root = logging.getLogger()
    root.handlers[:] = [PipeHandler(conn, client)]
    root.setLevel(level)


class PipeHandler(logging.Handler):
    """Sends each log record to the writer process."""

    def __init__(self, conn: Connection, client: YTSClient):
        super().__init__()
        self.conn, self.client = conn, client

    def emit(self, record: logging.LogRecord) -> None:
        """Send the record's logger, level, message and time."""
        _send_quietly(self.conn, self.client, "log", (record.name, record.levelno, record.getMessage(), record.created))
