"""Progress callbacks the long-running steps (crawl, enrichment) report to; the CLI draws them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Progress:
    """Callbacks a front end can hook to show progress; the defaults do nothing."""

    total: Callable[[int], None] = lambda total: None
    advance: Callable[[int], None] = lambda count: None
    message: Callable[[str], None] = lambda text: None
