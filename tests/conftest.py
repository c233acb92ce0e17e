"""Fixtures shared by the test suite: a loopback simulator factory and a fast config."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mirror.fakeapi import Catalog, Churn, FakeYTS, FaultPlan
from support import kill_leftovers, write_config

SAMPLES = Path(__file__).resolve().parent / "samples"  # a copy of the project's ../shared/yts-samples


@pytest.fixture(autouse=True)
def no_cli_process_outlives_its_test() -> Iterator[None]:
    """A CLI process a failed test left running (hung, say) is killed, not left behind by the suite."""
    yield
    kill_leftovers()


@pytest.fixture
def simulator() -> Iterator[Callable[..., FakeYTS]]:
    """Start loopback simulators on free ports; stop them after the test."""
    started: list[FakeYTS] = []

    def start(movies: int = 300, seed: int = 1, faults: str = "", latency_ms: float = 0,
              rate_limit: float = 0, churn: str = "") -> FakeYTS:
        sim = FakeYTS(Catalog(movies, seed), FaultPlan.parse(faults), latency_ms, rate_limit,
                      Churn.parse(churn), seed)
        started.append(sim.start())
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A config with quick retries for the loopback simulator."""
    return write_config(tmp_path)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "mirror.db"
