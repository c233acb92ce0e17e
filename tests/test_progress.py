"""Progress output on a terminal: the bar counts right, and other lines never land on its end."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mirror.cli import ERASE_LINE, BarAwareHandler, BarLine, TerminalProgress, run_sync
from mirror.config import resolve
from mirror.fakeapi import FakeYTS


class Terminal(io.StringIO):
    """Captured stderr that says it is a terminal, as under a shell."""

    def isatty(self) -> bool:
        return True


def on_terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """Make stderr a terminal for the rest of the test (pytest's capture resets it after each fixture)."""
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    monkeypatch.setattr(BarLine, "open", False)
    monkeypatch.setattr(BarLine, "notice", False)
    monkeypatch.setattr(BarLine, "plain", None)
    monkeypatch.setenv("COLUMNS", "100")
    return screen


def test_a_walk_of_unknown_length_counts_each_page_once(monkeypatch: pytest.MonkeyPatch) -> None:
    on_terminal(monkeypatch)
    progress = TerminalProgress("sync")
    progress.advance(50)
    progress.advance(50)
    assert progress.bar.pos == 100
    progress.close()


def test_a_resumed_crawl_starts_its_bar_at_what_it_had(monkeypatch: pytest.MonkeyPatch) -> None:
    on_terminal(monkeypatch)
    progress = TerminalProgress("sync")
    progress.advance(1050)  # the pages committed before the stop
    progress.total(3000)
    progress.advance(50)
    assert (progress.bar.pos, progress.bar.length) == (1100, 3000)
    progress.close()


def test_messages_and_log_lines_start_below_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    handler = BarAwareHandler(terminal)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress = TerminalProgress("sync")
    progress.total(300)
    progress.advance(50)
    TerminalProgress("enrich").message("enrichment backlog: 40 requests")  # another step's progress
    progress.advance(50)
    handler.emit(logging.makeLogRecord({"msg": "retry 1 after HTTP 503"}))
    progress.close()
    lines = terminal.getvalue().split("\n")
    assert "enrichment backlog: 40 requests" in lines and "retry 1 after HTTP 503" in lines
    assert terminal.getvalue().endswith("\n") and not BarLine.open


def test_a_bar_closed_after_a_message_is_shown_again_not_left_as_a_blank_line(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    progress = TerminalProgress("sync")
    progress.total(10)
    progress.advance(5)
    progress.advance(0)  # an empty page draws nothing
    progress.message("a message")
    progress.close()
    screen = terminal.getvalue().replace("\x1b[?25l", "").replace("\x1b[?25h", "")
    assert "\n\n" not in screen and screen.endswith("5/10\n"), repr(screen)


def test_a_retry_notice_before_the_bar_is_erased_by_what_comes_next(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    progress = TerminalProgress("sync")
    progress.waiting("retrying in 4 s: HTTP 503 (yts.mx, attempt 2 of 6)")
    progress.waiting("retrying in 8 s: HTTP 503 (yts.mx, attempt 3 of 6)")
    assert terminal.getvalue() == ("sync: retrying in 4 s: HTTP 503 (yts.mx, attempt 2 of 6)" + ERASE_LINE
                                   + "sync: retrying in 8 s: HTTP 503 (yts.mx, attempt 3 of 6)")
    progress.total(100)  # the first page came: the bar takes the notice's place
    assert terminal.getvalue().count(ERASE_LINE) == 2 and "\n" not in terminal.getvalue()
    progress.close()


def test_a_retry_notice_is_erased_before_the_runs_last_line(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    progress = TerminalProgress("sync")
    progress.waiting("retrying in 4 s: connection failed (127.0.0.1:9, attempt 6 of 6)")
    progress.close()  # the run failed: its error line must start a clean line
    assert terminal.getvalue().endswith(ERASE_LINE) and not BarLine.open


def test_a_retry_notice_fits_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    monkeypatch.setenv("COLUMNS", "40")
    TerminalProgress("sync").waiting("retrying in 4 s: connection failed: [Errno 111] Connection refused")
    assert terminal.getvalue() == "sync: retrying in 4 s: connection fail…"


def test_a_retry_notice_rides_on_the_bar_until_its_request_is_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    progress = TerminalProgress("sync")
    progress.total(300)
    progress.waiting("retrying in 4 s: HTTP 503 (yts.mx, attempt 2 of 6)")
    assert progress.bar.label.startswith("sync (retrying in 4 s: HTTP 503")
    assert terminal.getvalue().rsplit("\r", 1)[-1].find("retrying in 4 s") >= 0  # drawn now, not at the next page
    progress.advance(50)  # another worker's movie: this request still waits
    assert progress.bar.label.startswith("sync (retrying in 4 s")
    progress.waiting(None)
    assert progress.bar.label == "sync"
    progress.close()


def test_each_worker_has_its_own_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    on_terminal(monkeypatch)
    progress = TerminalProgress("enrich")
    progress.total(100)
    waiting, answered = threading.Event(), threading.Event()

    def worker() -> None:
        progress.waiting("retrying in 5 s: HTTP 429 (yts.mx, attempt 2 of 6)")
        waiting.set()
        answered.wait(10)
        progress.waiting(None)

    other = threading.Thread(target=worker)
    other.start()
    waiting.wait(10)
    progress.waiting("retrying in 1 s: HTTP 503 (yts.mx, attempt 2 of 6)")
    progress.waiting(None)  # this thread's request is answered; the other's still waits
    assert progress.bar.label.startswith("enrich (retrying in 5 s: HTTP 429")
    answered.set()
    other.join(10)
    assert progress.bar.label == "enrich"
    progress.close()


def test_no_retry_notice_off_a_terminal_or_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    TerminalProgress("sync", quiet=True).waiting("retrying in 4 s: HTTP 503")
    monkeypatch.setattr(Terminal, "isatty", lambda self: False)
    TerminalProgress("sync").waiting("retrying in 4 s: HTTP 503")
    assert terminal.getvalue() == "" and not BarLine.open


def test_a_sync_on_a_terminal_shows_its_retries_and_leaves_clean_lines(
        monkeypatch: pytest.MonkeyPatch, simulator: Callable[..., FakeYTS], tmp_path: Path) -> None:
    terminal = on_terminal(monkeypatch)
    monkeypatch.setenv("COLUMNS", "200")
    sim = simulator(movies=60)
    config = tmp_path / "config.toml"  # a first host that refuses: retries, then the simulator
    config.write_text(f'[api]\nbase_urls = ["http://127.0.0.1:9", "{sim.url}"]\nbackoff_initial = 0.001\n'
                      'backoff_max = 0.01\n')
    run_sync(resolve(str(config), db=str(tmp_path / "m.db"), rate=0), enrich=False)
    shown = terminal.getvalue()
    assert "sync: retrying in 1 s: connection failed" in shown and "127.0.0.1:9, attempt 2 of 6)" in shown
    assert shown.endswith("\n") and not BarLine.open and ERASE_LINE + "\r" in shown  # the bar drew over it


def test_a_retry_notice_goes_once_the_request_is_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    progress = TerminalProgress("sync")
    progress.waiting("retrying in 4 s: HTTP 503 (yts.mx, attempt 2 of 6)")
    progress.waiting(None)  # answered: a removal check, say, goes on without counting movies
    assert terminal.getvalue().endswith(ERASE_LINE) and not BarLine.open
    progress.total(300)
    progress.waiting("retrying in 4 s: HTTP 503 (yts.mx, attempt 2 of 6)")
    progress.waiting(None)
    assert progress.bar.label == "sync" and terminal.getvalue().rsplit("\r", 1)[-1].find("retrying") < 0
    progress.waiting("retrying in 4 s: HTTP 503 (yts.mx, attempt 6 of 6)")
    progress.close()  # the run failed with the notice up: the bar's last line must not keep it
    assert "retrying" not in terminal.getvalue().rsplit("\r", 1)[-1]


def test_with_v_each_retry_is_a_log_line_and_no_notice(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    terminal = on_terminal(monkeypatch)
    caplog.set_level(logging.INFO, logger="mirror.client")  # as -v sets it
    progress = TerminalProgress("sync")
    progress.total(300)
    progress.waiting("retrying in 4 s: HTTP 503 (yts.mx, attempt 2 of 6)")
    assert progress.bar.label == "sync" and "retrying" not in terminal.getvalue()
    progress.close()


def test_a_message_below_the_bar_leaves_no_notice_above_it(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = on_terminal(monkeypatch)
    progress = TerminalProgress("sync")
    progress.total(300)
    progress.waiting("retrying in 4 s: HTTP 503 (yts.mx, attempt 2 of 6)")
    progress.message("SIGINT: finishing the current page, then stopping")
    kept = terminal.getvalue().split("\n")[0].rsplit("\r", 1)[-1]  # the bar's line as it stays above the message
    assert kept.startswith("\x1b[?25lsync  [") and "retrying" not in kept
    progress.advance(50)  # the request still waits: the bar below says so again
    assert progress.bar.label.startswith("sync (retrying in 4 s")
    progress.close()
