"""A long full crawl without a rate limit: a page reader process reads ahead of the writer."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from mirror import readahead
from mirror.fakeapi import Catalog, FakeYTS
from support import (FAST_CONFIG, assert_mirror_equals_catalog, checkpoint, cli_subprocess, connect, integrity_ok, last_run,
                     misbehaving_server, mirror_movies, run_cli, send, sync_args, wait_for, wait_for_page, write_config)

READER_STARTS = "reading pages ahead in a second process"


@pytest.fixture
def always_read_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read ahead from the second page of any crawl, however short."""
    monkeypatch.setattr(readahead, "READ_AHEAD_MIN_PAGES", 1)


@pytest.fixture
def reader_takes_over_when_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand the crawl to the reader at the first page boundary after it starts, however fast pages come."""
    monkeypatch.setattr(readahead.PageReader, "up", lambda self: self.replies.poll(30))


def sync(db: Path, sim: FakeYTS, config: Path, *extra: str) -> dict:
    result = run_cli(sync_args(db, sim.url, config, *extra))
    assert result.exit_code == 0, result.output
    return last_run(db)


def reader_used(caplog: pytest.LogCaptureFixture) -> bool:
    return any(READER_STARTS in record.getMessage() for record in caplog.records)


def handover_page(caplog: pytest.LogCaptureFixture) -> int:
    """The page from which the reader read the crawl, as the writer logged it."""
    [page] = [int(r.getMessage().rsplit(" ", 1)[1]) for r in caplog.records if READER_STARTS in r.getMessage()]
    return page


@pytest.mark.usefixtures("reader_takes_over_when_up")
def test_a_long_unthrottled_crawl_is_read_ahead_and_equals_the_catalog(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    movies = 50 * (readahead.READ_AHEAD_MIN_PAGES + 1)  # the reader starts after the first page
    sim = simulator(movies=movies, faults="mix=0.1,empty=0.02,stray=0.02,retry_after=0")
    run = sync(db_path, sim, config_file)
    assert reader_used(caplog)
    assert_mirror_equals_catalog(db_path, sim.catalog)
    assert sim.ok_counts["list_movies"] <= math.ceil(movies / 50) + 2
    # The reader's requests, retries and log lines are the run's, as if one process had made them.
    assert run["requests"] == sum(sim.counts.values()) and run["retries"] == sum(sim.fault_counts.values()) > 0
    assert run["pages"] == movies // 50 and run["movies_new"] == movies
    retries = [r.getMessage() for r in caplog.records if r.name == "mirror.client" and r.getMessage().startswith("retry")]
    retried_pages = [int(found[1]) for text in retries if (found := re.search(r"[?&]page=(\d+)", text))]
    assert max(retried_pages) >= handover_page(caplog) == 2, "the reader's log lines should reach the writer's log"
    assert integrity_ok(db_path)


@pytest.mark.usefixtures("always_read_ahead", "reader_takes_over_when_up")
def test_a_moved_host_is_warned_about_once_though_the_reader_meets_it_too(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sim = simulator(movies=300)

    def moved(handler: BaseHTTPRequestHandler) -> None:
        send(handler, 301, b"", Location=sim.url + handler.path)

    with misbehaving_server(moved) as url:
        result = run_cli(sync_args(db_path, url, config_file, "--no-enrich"))
    assert result.exit_code == 0, result.output
    assert reader_used(caplog) and handover_page(caplog) == 2
    moved_lines = [r.getMessage() for r in caplog.records if "has moved to" in r.getMessage()]
    assert len(moved_lines) == 1 and moved_lines[0].startswith(f"{url} has moved to {sim.url} for good")
    assert_mirror_equals_catalog(db_path, sim.catalog)


@pytest.mark.usefixtures("always_read_ahead", "reader_takes_over_when_up")
def test_wrong_answers_read_ahead_are_retried_and_lose_no_movie(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sim = simulator(movies=1500, faults="mix=0.1,stale=0.1,badcount=0.15,empty=0.02,retry_after=0")
    sync(db_path, sim, config_file)
    assert reader_used(caplog) and {"stale", "badcount"} <= set(sim.faults_injected)
    assert_mirror_equals_catalog(db_path, sim.catalog)
    sim.catalog.mutate({"add": 120})
    sync(db_path, sim, config_file)  # incremental: three pages of new movies, under the same faults
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_a_short_or_throttled_crawl_stays_in_one_process(simulator: Callable[..., FakeYTS], db_path: Path,
                                                         config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    pages = readahead.READ_AHEAD_MIN_PAGES
    sync(db_path, simulator(movies=50 * pages), config_file)  # the first page leaves one page too few
    assert not reader_used(caplog)
    sim = simulator(movies=50 * (pages + 1), seed=2)
    sync(db_path.with_name("throttled.db"), sim, config_file, "--rate", "1000")
    assert not reader_used(caplog)
    assert_mirror_equals_catalog(db_path.with_name("throttled.db"), sim.catalog)


@pytest.mark.usefixtures("always_read_ahead", "reader_takes_over_when_up")
@pytest.mark.parametrize("churn", ["every=2,add=9,remove=6", "every=1,add=5,remove=10"])
def test_a_moving_catalog_read_ahead_loses_no_movie(simulator: Callable[..., FakeYTS], db_path: Path,
                                                    tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    churn: str) -> None:
    caplog.set_level(logging.INFO)
    config = write_config(tmp_path, "[sync]\nmax_removed_fraction = 1\n")  # churn removes a third of it
    sim = simulator(movies=1500, churn=churn)
    before = set(sim.catalog.ids())
    sync(db_path, sim, config, "--full")
    assert reader_used(caplog)
    missed = (before & set(sim.catalog.ids())) - set(mirror_movies(db_path))
    assert not missed, f"{len(missed)} movies listed all along were missed, e.g. {sorted(missed)[:5]}"
    sim.churn.every = 0
    sync(db_path, sim, config, "--full")
    assert_mirror_equals_catalog(db_path, sim.catalog)


class DiesAfter(FakeYTS):
    """A simulator whose list endpoint answers only its first `good` requests, then 503 for good."""

    def __init__(self, catalog: Catalog, good: int):
        super().__init__(catalog)
        self.good = good

    def _maybe_churn(self) -> None:
        with self.count_lock:
            self.list_requests += 1
            if self.list_requests > self.good:
                self.faults.dead.add("list_movies")


@pytest.mark.usefixtures("always_read_ahead")
def test_a_failure_in_the_reader_is_the_usual_one_line_and_the_crawl_resumes(db_path: Path,
                                                                             config_file: Path) -> None:
    with DiesAfter(Catalog(500, 4), good=4) as sim:
        result = run_cli(sync_args(db_path, sim.url, config_file))
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            f"error: API request failed: {sim.url}/api/v2/list_movies.json?limit=50&page=5&sort_by=date_added"
            "&order_by=desc: HTTP 503 (after 6 attempts)"]
        assert last_run(db_path)["status"] == "failed" and checkpoint(db_path)["next_page"] == 5
        sim.faults.dead.clear()
        sim.good = 10**6
        run = sync(db_path, sim, config_file)
        assert run["status"] == "ok" and run["pages"] == 6
        assert_mirror_equals_catalog(db_path, sim.catalog)


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (its page reader), from /proc."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids.extend(int(child) for child in task.read_text().split())
        except OSError:
            pass
    return pids


def end_processes(process: subprocess.Popen[str], readers: list[int]) -> None:
    """Kill what a test that failed halfway left running (a reader left behind would hold its stderr pipe)."""
    if process.poll() is None:
        process.kill()
    for pid in readers:
        try:
            if "mirror.readahead" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    process.communicate()


def fetching(pid: int) -> bool:
    """Whether a page reader has taken the crawl over: it holds a socket to the simulator."""
    try:
        return any(os.readlink(fd).startswith("socket:") for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def slow_long_catalog(simulator: Callable[..., FakeYTS]) -> FakeYTS:
    """A catalog long enough to read ahead, answering slowly enough to act in the middle of a crawl."""
    return simulator(movies=50 * (readahead.READ_AHEAD_MIN_PAGES + 20), latency_ms=40)


@contextmanager
def reading_ahead(db_path: Path, url: str, config: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A `yts-mirror sync` process (in its own session) whose page reader has taken the crawl over; and the reader's pid."""
    process = cli_subprocess(sync_args(db_path, url, config), start_new_session=True)
    readers: list[int] = []
    try:
        wait_for_page(db_path, 4)
        readers[:] = wait_for(lambda: child_pids(process.pid))
        wait_for(lambda: fetching(readers[0]))
        yield process, readers[0]
    finally:
        end_processes(process, readers)


@pytest.fixture
def crawling(slow_long_catalog: FakeYTS, db_path: Path, config_file: Path) -> Iterator[tuple[object, int]]:
    """A sync process whose page reader has taken the crawl over; and the reader's pid."""
    with reading_ahead(db_path, slow_long_catalog.url, config_file) as running:
        yield running


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C", "systemctl stop"])
def test_a_stopped_crawl_ends_its_reader_and_resumes(crawling: tuple, slow_long_catalog: FakeYTS, db_path: Path,
                                                     config_file: Path, how: str) -> None:
    process, reader = crawling
    if how == "SIGTERM":
        process.send_signal(signal.SIGTERM)
    elif how == "systemctl stop":  # signals every process of the service, the reader first here
        os.kill(reader, signal.SIGTERM)
        process.send_signal(signal.SIGTERM)
    else:
        os.killpg(process.pid, signal.SIGINT)  # a terminal sends it to the whole process group
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert not alive(reader)
    stopped = last_run(db_path)
    assert stopped["status"] == "interrupted" and stopped["error"] is None, stopped["error"]
    # The reader's last request counts too; sent just before the stop, it reaches the simulator's count after
    # the simulator's 40 ms latency.
    wait_for(lambda: stopped["requests"] == sum(slow_long_catalog.counts.values()), timeout=5)
    run = sync(db_path, slow_long_catalog, config_file)
    assert run["status"] == "ok" and run["kind"] == "full"
    assert_mirror_equals_catalog(db_path, slow_long_catalog.catalog)


def test_a_killed_writer_leaves_no_reader_behind(crawling: tuple, slow_long_catalog: FakeYTS, db_path: Path,
                                                 config_file: Path) -> None:
    process, reader = crawling
    process.send_signal(signal.SIGKILL)
    process.wait()
    wait_for(lambda: not alive(reader), timeout=10)  # it sees the pipe close once its request is answered
    committed = connect(db_path).execute("SELECT COUNT(*) FROM movies").fetchone()[0]
    assert committed == (checkpoint(db_path)["next_page"] - 1) * 50
    time.sleep(0.1)
    requests_before = slow_long_catalog.ok_counts["list_movies"]
    run = sync(db_path, slow_long_catalog, config_file)
    pages_left = readahead.READ_AHEAD_MIN_PAGES + 20 - committed // 50
    assert run["pages"] == pages_left
    assert slow_long_catalog.ok_counts["list_movies"] - requests_before == pages_left + 1  # + page 1 again
    assert_mirror_equals_catalog(db_path, slow_long_catalog.catalog)


def test_a_killed_reader_is_one_line_and_the_crawl_resumes(crawling: tuple, slow_long_catalog: FakeYTS,
                                                           db_path: Path, config_file: Path) -> None:
    process, reader = crawling
    os.kill(reader, signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert stderr.strip().splitlines()[-1] == "error: the page reader process ended unexpectedly (killed by SIGKILL)"
    assert "Traceback" not in stderr
    failed = last_run(db_path)
    assert failed["status"] == "failed"
    assert failed["requests"] == sum(slow_long_catalog.counts.values()), "the reader's last request counts too"
    sync(db_path, slow_long_catalog, config_file)
    assert_mirror_equals_catalog(db_path, slow_long_catalog.catalog)


@pytest.fixture
def reader_in_backoff(slow_long_catalog: FakeYTS, db_path: Path, tmp_path: Path) -> Iterator[tuple[Any, int]]:
    """A sync process whose page reader waits a minute between attempts at a list page that fails; and its pid."""
    config = tmp_path / "slow-retries.toml"
    config.write_text(FAST_CONFIG.replace("backoff_initial = 0.005\nbackoff_max = 0.05", "backoff_initial = 60\nbackoff_max = 60"))
    assert "backoff_initial = 60" in config.read_text()
    with reading_ahead(db_path, slow_long_catalog.url, config) as (process, reader):
        slow_long_catalog.faults.dead.add("list_movies")
        failed_before = slow_long_catalog.fault_counts.get("list_movies", 0)
        wait_for(lambda: slow_long_catalog.fault_counts.get("list_movies", 0) > failed_before)
        yield process, reader


def test_a_stop_while_the_reader_waits_to_retry_ends_at_once(reader_in_backoff: tuple, db_path: Path) -> None:
    process, reader = reader_in_backoff
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - started < 5, "the writer should not wait for the reader's backoff"
    assert process.returncode == 0, stderr
    assert not alive(reader)
    assert last_run(db_path)["status"] == "interrupted"


def test_a_reader_in_backoff_ends_with_its_killed_writer(reader_in_backoff: tuple,
                                                         slow_long_catalog: FakeYTS) -> None:
    process, reader = reader_in_backoff
    process.send_signal(signal.SIGKILL)
    process.wait()
    wait_for(lambda: not alive(reader), timeout=5)  # not a minute later, after its next attempt


@pytest.mark.usefixtures("always_read_ahead")
def test_a_reader_that_cannot_start_leaves_the_crawl_to_the_writer(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(readahead.sys, "executable", str(tmp_path / "no-such-python"))
    sim = simulator(movies=600)
    run = sync(db_path, sim, config_file)
    assert run["status"] == "ok"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"cannot start a page reader process, reading on in this one: [Errno 2] No such file or directory: "
        f"'{tmp_path / 'no-such-python'}'"]
    assert_mirror_equals_catalog(db_path, sim.catalog)


@pytest.mark.usefixtures("always_read_ahead")
def test_a_reader_that_ends_before_it_is_up_leaves_the_crawl_to_the_writer(
        simulator: Callable[..., FakeYTS], db_path: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(readahead.sys, "executable", "/bin/false")  # starts, and exits 1 at once
    sim = simulator(movies=600, latency_ms=5)
    run = sync(db_path, sim, config_file)
    assert run["status"] == "ok" and run["pages"] == 12
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "the page reader process ended before it took the crawl over (exit code 1); reading on in this one"]
    assert_mirror_equals_catalog(db_path, sim.catalog)


def test_a_mirror_module_in_the_working_directory_is_not_the_readers(simulator: Callable[..., FakeYTS],
                                                                     db_path: Path, config_file: Path,
                                                                     tmp_path: Path) -> None:
    workdir = tmp_path / "somewhere"
    workdir.mkdir()
    (workdir / "mirror.py").write_text("raise SystemExit('the wrong mirror')\n")
    sim = simulator(movies=50 * (readahead.READ_AHEAD_MIN_PAGES + 20), latency_ms=20)
    script = Path(sys.executable).with_name("yts-mirror")  # a console script: the writer never imports the working directory
    done = subprocess.run([str(script), "-v", *sync_args(db_path, sim.url, config_file)], cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert READER_STARTS in done.stderr and "wrong mirror" not in done.stderr
    assert_mirror_equals_catalog(db_path, sim.catalog)


def edited_copy(tmp_path: Path, edits: dict[str, str]) -> Path:
    """A copy of the package, with readahead.py edited (old text to new), in a directory of its own; that directory."""
    copy = tmp_path / "elsewhere"
    package = Path(readahead.__file__).parent
    shutil.copytree(package, copy / "mirror")
    if (package.parent / "schema.sql").exists():  # where a checkout keeps it
        shutil.copy(package.parent / "schema.sql", copy)
    code = copy / "mirror" / "readahead.py"
    text = code.read_text()
    for old, new in {"READ_AHEAD_MIN_PAGES = 40": "READ_AHEAD_MIN_PAGES = 1", **edits}.items():
        assert old in text
        text = text.replace(old, new, 1)
    code.write_text(text)
    return copy


def sync_with(copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI from the package in `copy`, found on a sys.path of the script's own (as a checkout or a script would)."""
    script = f"import sys; sys.path.insert(0, {str(copy)!r}); from mirror.cli import main; sys.argv[1:] = {list(args)!r}; main()"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_the_reader_runs_the_writers_copy_of_the_package(simulator: Callable[..., FakeYTS], db_path: Path,
                                                         config_file: Path, tmp_path: Path) -> None:
    """A writer that found the package on a sys.path of its own (a script, a checkout) starts a reader of the same code."""
    copy = edited_copy(tmp_path, {"    client = make_client(config)\n":
                                  "    client = make_client(config)\n    log.warning(\"reader from the copy\")\n"})
    sim = simulator(movies=1000, latency_ms=40)  # 20 pages: slow enough for the reader to be up before the end
    done = sync_with(copy, *sync_args(db_path, sim.url, config_file))
    assert done.returncode == 0, done.stderr
    assert "reader from the copy" in done.stderr
    assert_mirror_equals_catalog(db_path, sim.catalog)


@pytest.mark.parametrize("verbose", [False, True])
def test_a_bug_in_the_reader_is_one_line_with_its_traceback_at_vv(simulator: Callable[..., FakeYTS], db_path: Path,
                                                                  config_file: Path, tmp_path: Path,
                                                                  verbose: bool) -> None:
    copy = edited_copy(tmp_path, {"        for page in crawl_full(client, walk):\n":
                                  "        for page in crawl_full(client, walk):\n"
                                  "            if page.number == 12:\n                raise RuntimeError(\"boom\")\n"})
    sim = simulator(movies=1000, latency_ms=40)
    done = sync_with(copy, *(["-vv"] if verbose else []), *sync_args(db_path, sim.url, config_file))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "error: the page reader process failed: RuntimeError: boom"
    assert ("Traceback (most recent call last)" in done.stderr) == verbose
    assert 'raise RuntimeError("boom")' in done.stderr if verbose else "Traceback" not in done.stderr
    assert last_run(db_path)["status"] == "failed" and checkpoint(db_path)["next_page"] == 12
