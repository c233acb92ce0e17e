"""Progress output on a terminal: the bar counts right, and other lines never land on its end."""

from __future__ import annotations

import io
import logging

import pytest

from mirror.cli import BarAwareHandler, BarLine, TerminalProgress


class Terminal(io.StringIO):
    """Captured stderr that says it is a terminal, as under a shell."""

    def isatty(self) -> bool:
        return True


def on_terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """Make stderr a terminal for the rest of the test (pytest's capture resets it after each fixture)."""
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    monkeypatch.setattr(BarLine, "open", False)
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
