"""Progress callbacks the long-running steps (crawl, enrichment) report to; the CLI draws them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def counted(number: int, noun: str) -> str:
    """`number` and `noun`, plural unless one: "1 page", "3 pages", "0 retries"."""
    if number == 1:
        return f"1 {noun}"
    return f"{number} {noun[:-1]}ies" if noun.endswith("y") else f"{number} {noun}s"


@dataclass
class Progress:
    """Callbacks a front end can hook to show progress; the defaults do nothing."""

    total: Callable[[int], None] = lambda total: None
    advance: Callable[[int], None] = lambda count: None
    message: Callable[[str], None] = lambda text: None
