"""List paging: the full crawl, the incremental plan, and the guards against a moving catalog."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .client import FetchError, TransientError, YTSClient
from .transform import list_page_movies, to_int

log = logging.getLogger(__name__)

PAGE_LIMIT = 50  # the API's maximum page size (yts-api-v2.txt)


@dataclass
class Page:
    """One list_movies page and where a crawl resumes once it is committed."""

    number: int
    movies: list[Mapping[str, Any]]
    movie_count: int
    next_page: int
    backtrack: bool = False

    @property
    def ids(self) -> list[int]:
        return [to_int(movie["id"]) for movie in self.movies]  # type: ignore[misc]


class ShortPageError(TransientError):
    """A page with fewer movies than movie_count promises; retried, then believed."""

    def __init__(self, page: int, data: Mapping[str, Any], found: int, expected: int):
        super().__init__(f"list_movies page {page}", f"page {page} has {found} movies where movie_count promises {expected}")
        self.data = data


def fetch_page(client: YTSClient, page: int, limit: int = PAGE_LIMIT) -> tuple[list[Mapping[str, Any]], int]:
    """Fetch one newest-first page; return its movies and the catalog's movie_count."""

    def validate(data: Mapping[str, Any]) -> None:
        count = to_int(data.get("movie_count")) or 0
        expected = min(limit, max(0, count - (page - 1) * limit))
        found = len(list_page_movies(data))
        if found < expected:
            raise ShortPageError(page, data, found, expected)

    params = {"limit": limit, "page": page, "sort_by": "date_added", "order_by": "desc"}
    try:
        data = client.get("list_movies", params, validate=validate)
    except FetchError as error:
        if not isinstance(error.__cause__, ShortPageError):
            raise
        # movie_count can promise movies a page lacks: list_movies__jackett-issue-9668-count-without-movies.json
        log.warning("believing short page %d after %d attempts", page, error.attempts)
        data = error.__cause__.data
    return list_page_movies(data), to_int(data.get("movie_count")) or 0


def crawl_full(
    client: YTSClient,
    seen: set[int],
    start_page: int = 1,
    last_count: int | None = None,
    limit: int = PAGE_LIMIT,
) -> Iterator[Page]:
    """Yield every list page newest-first, re-reading earlier pages when the catalog shrinks.

    Offset paging over a moving catalog: movies added at the top push the rest down (we see
    some twice, harmlessly); movies removed above us pull the rest up, so the head of the next
    window slides into the page we already read. A shrinking movie_count is the only sign of
    that, so on a drop we re-read earlier pages until one overlaps what this crawl has seen.
    `seen` holds the ids this crawl has yielded and is updated in place.
    """
    page = start_page
    while True:
        movies, count = fetch_page(client, page, limit)
        current = Page(page, movies, count, next_page=page + 1)
        yield current
        seen.update(current.ids)
        if last_count is not None and count < last_count and page > 1:
            yield from _backtrack(client, page - 1, seen, limit)
        last_count = count
        if not movies or page * limit >= count:
            return
        page += 1


def _backtrack(client: YTSClient, page: int, seen: set[int], limit: int) -> Iterator[Page]:
    """Re-read pages before `page` until one holds a movie this crawl has seen."""
    resume = page + 2
    while page >= 1:
        movies, count = fetch_page(client, page, limit)
        ids = {to_int(movie["id"]) for movie in movies}
        overlaps = bool(ids & seen)
        log.info("catalog shrank: re-read page %d (%s)", page, "overlaps" if overlaps else "all unseen")
        yield Page(page, movies, count, next_page=resume, backtrack=True)
        seen.update(i for i in ids if i is not None)
        if overlaps or not movies:
            return
        page -= 1


def crawl_new(
    client: YTSClient,
    known: Callable[[list[int]], set[int]],
    overlap: int,
    start_page: int = 1,
    limit: int = PAGE_LIMIT,
) -> Iterator[Page]:
    """Yield newest-first pages until one reaches movies mirrored before this run.

    `known(ids)` says which ids were mirrored before the run. A page holding at least
    `overlap` of them (or all its movies, if fewer) ends the walk: movies sharing a
    date_added can swap places, so one known movie alone is not proof enough.
    """
    page = start_page
    while True:
        movies, count = fetch_page(client, page, limit)
        current = Page(page, movies, count, next_page=page + 1)
        old = known(current.ids)
        yield current
        if len(movies) < limit or page * limit >= count:
            return
        if len(old) >= min(overlap, len(movies)):
            return
        page += 1


class CatalogMoved(Exception):
    """The catalog changed (or its order disagrees with ours) while we compared it."""


def find_missing(client: YTSClient, present: list[int], limit: int = PAGE_LIMIT) -> list[int]:
    """Return the ids of `present` (mirror order, newest first) that the upstream list lacks.

    Compares the upstream list with ours by binary search over pages: for an upstream movie at
    offset o and our rank r, r - o counts our movies missing upstream before it. Where that
    count does not change between two pages, nothing between them is missing, so only pages
    around removals are read: about log2(pages) requests per removal, never more than every
    page once. Raises CatalogMoved if the catalog changes meanwhile or its order is not ours.
    """
    rank = {movie_id: index for index, movie_id in enumerate(present)}
    pages: dict[int, list[int]] = {}
    total: list[int] = []

    def ranks_of(number: int) -> list[int]:
        if number not in pages:
            movies, count = fetch_page(client, number, limit)
            ids = [to_int(movie["id"]) for movie in movies]
            if total and count != total[0]:
                raise CatalogMoved(f"movie_count changed from {total[0]} to {count}")
            total[:] = [count]
            if any(i not in rank for i in ids):
                raise CatalogMoved(f"page {number} holds a movie the mirror lacks")
            pages[number] = [rank[i] for i in ids]  # type: ignore[index]
            if pages[number] != sorted(pages[number]):
                raise CatalogMoved(f"page {number} is not in the mirror's order")
        return pages[number]

    first = ranks_of(1)
    if not first or total[0] >= len(present):
        return []
    last_page = (total[0] - 1) // limit + 1

    def search(a: int, b: int) -> None:
        gap = (ranks_of(b)[0] - ranks_of(a)[-1]) - ((b - 1) * limit - ((a - 1) * limit + len(pages[a]) - 1))
        if gap and b > a + 1:
            middle = (a + b) // 2
            search(a, middle)
            search(middle, b)

    if last_page > 1:
        search(1, last_page)
    offset = {r: (number - 1) * limit + index for number, ranks in pages.items() for index, r in enumerate(ranks)}
    upstream = sorted(offset)
    missing = list(range(upstream[0])) + list(range(upstream[-1] + 1, len(present)))
    for before, after in zip(upstream, upstream[1:]):
        if after - before > 1 and offset[after] - offset[before] == 1:  # neighbours upstream, not here
            missing.extend(range(before + 1, after))
    return [present[r] for r in missing]
