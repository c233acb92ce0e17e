"""list_movies parity (issue 6): the mirror's API and the simulator return the same ids in the same order.

A mirror is synced with enrichment (like/download counts and cast come from movie_details) from
a simulator that stays up; each query goes to both over the same parameters and every page of
the answer is compared.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from click.testing import CliRunner
from datasette.app import Datasette

from mirror.cli import cli
from mirror.fakeapi import SORT_KEYS, Catalog, FakeYTS

MOVIES, SEED = 360, 5
API = "/api/v2/list_movies.json"


@dataclass
class Pair:
    """The simulator and a mirror synced from it, both answering list_movies."""

    sim: FakeYTS
    datasette: Datasette
    session: requests.Session

    @property
    def catalog(self) -> Catalog:
        return self.sim.catalog

    def upstream(self, params: dict[str, Any]) -> dict[str, Any]:
        response = self.session.get(f"{self.sim.url}{API}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()["data"]

    def mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        response = asyncio.run(self.datasette.client.get(f"{API}?{urlencode(params)}"))
        body = response.json()
        assert response.status_code == 200 and body["status"] == "ok", body
        return body["data"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    path: Path = tmp_path_factory.mktemp("parity") / "mirror.db"
    with FakeYTS(Catalog(MOVIES, SEED)) as sim:
        result = CliRunner().invoke(cli, ["-q", "sync", "--db", str(path), "--base-url", sim.url, "--rate", "0",
                                          "--concurrency", "4"])
        assert result.exit_code == 0, (result.output, result.exception)
        with requests.Session() as session:
            yield Pair(sim, Datasette([str(path)]), session)


def ids(data: dict[str, Any]) -> list[int]:
    return [movie["id"] for movie in data.get("movies", [])]


def assert_same(pair: Pair, params: dict[str, Any], pages: int | None = None) -> int:
    """Compare every page (or the first `pages`) of a query; return the movie count."""
    first_mirror, first_upstream = pair.mirror(params), pair.upstream(params)
    count = first_upstream["movie_count"]
    assert first_mirror["movie_count"] == count, params
    limit = first_upstream["limit"]
    last = max(1, -(-count // limit))
    start = int(params.get("page", 1))
    for page in range(start, min(last, start + (pages or last)) + 1):
        query = {**params, "page": page}
        mirror, upstream = pair.mirror(query), pair.upstream(query)
        assert ids(mirror) == ids(upstream), (query, ids(mirror)[:8], ids(upstream)[:8])
        assert ("movies" in mirror) == ("movies" in upstream), query
    return count


def test_mirror_was_enriched(pair: Pair) -> None:
    """like_count/download_count sorts and actor searches need movie_details data in the mirror."""
    movie_id = pair.catalog.ids()[0]
    details = asyncio.run(pair.datasette.client.get(f"/api/v2/movie_details.json?movie_id={movie_id}")).json()
    assert details["data"]["movie"]["like_count"] == pair.catalog.extra[movie_id]["like_count"]


@pytest.mark.parametrize(("sort_by", "order_by"), list(itertools.product(SORT_KEYS, ("desc", "asc"))))
def test_every_sort_and_order(pair: Pair, sort_by: str, order_by: str) -> None:
    assert assert_same(pair, {"sort_by": sort_by, "order_by": order_by, "limit": 50}) == MOVIES


def test_defaults_and_unknown_sort(pair: Pair) -> None:
    assert_same(pair, {})
    assert_same(pair, {"sort_by": "popularity", "limit": 50})
    assert_same(pair, {"sort_by": "RATING", "order_by": "ASC", "limit": 50})


@pytest.mark.parametrize("quality", ["720p", "1080p", "2160p", "3D", "3d", "all", "480p"])
def test_quality(pair: Pair, quality: str) -> None:
    assert_same(pair, {"quality": quality, "limit": 50, "sort_by": "seeds"})


@pytest.mark.parametrize("minimum_rating", ["0", "5", "7.5", "9", "10"])
def test_minimum_rating(pair: Pair, minimum_rating: str) -> None:
    assert_same(pair, {"minimum_rating": minimum_rating, "limit": 50, "sort_by": "rating", "order_by": "asc"})


@pytest.mark.parametrize("genre", ["Drama", "drama", "SCI-FI", "Film-Noir", "all"])
def test_genre(pair: Pair, genre: str) -> None:
    assert_same(pair, {"genre": genre, "limit": 50, "sort_by": "title"})


def query_terms(catalog: Catalog) -> list[str]:
    """Titles, a title fragment, IMDb codes, and actors by name and IMDb code (bare and nm-prefixed)."""
    first = catalog.movies[catalog.ids()[0]]
    actor = next(member for i in catalog.ids() for member in catalog.extra[i]["cast"])
    return [first["title"], first["title"].upper(), "Silent", "the ", first["imdb_code"], first["imdb_code"].upper(),
            actor["name"], actor["name"].lower(), actor["imdb_code"], "nm" + actor["imdb_code"], "no such thing"]


def test_query_term(pair: Pair) -> None:
    counts = {term: assert_same(pair, {"query_term": term, "limit": 50}) for term in query_terms(pair.catalog)}
    assert counts["no such thing"] == 0
    assert all(counts[term] > 0 for term in list(counts)[:-1]), counts


def test_combined_filters_sorts_and_pages(pair: Pair) -> None:
    actor = next(member["name"] for i in pair.catalog.ids() for member in pair.catalog.extra[i]["cast"])
    cases = [
        {"quality": "1080p", "genre": "Drama", "minimum_rating": "4", "sort_by": "year", "order_by": "asc"},
        {"quality": "720p", "query_term": "the", "sort_by": "peers"},
        {"genre": "Comedy", "sort_by": "like_count", "order_by": "asc", "limit": 7, "page": 3},
        {"query_term": actor, "sort_by": "download_count"},
        {"minimum_rating": "6", "sort_by": "date_added", "order_by": "asc", "limit": 13},
        {"limit": 1, "page": 17},
        {"limit": 50, "page": 8},
        {"limit": 33, "page": 99},
        {"limit": 0, "page": 2}, {"limit": -5}, {"limit": 500, "page": 2},
    ]
    for params in cases:
        assert_same(pair, params, pages=3)
