"""List paging: the full crawl, the incremental walk, the removal search, and the guards against a moving catalog."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .client import FetchError, TransientError, YTSClient
from .transform import echoed_paging, list_page_movies, listed_count, listed_ids, movie_count, to_int

log = logging.getLogger(__name__)

PAGE_LIMIT = 50  # the API's maximum page size (yts-api-v2.txt)


@dataclass
class Page:
    """One list_movies page, any earlier pages re-read with it, and where a crawl resumes once it is committed."""

    number: int
    movies: list[Mapping[str, Any]]
    movie_count: int
    next_page: int
    reread: list[Mapping[str, Any]] = field(default_factory=list)  # after a shrink, committed with the page
    covered: set[int] = field(default_factory=set)  # ids of the windows that extend the crawl's gap-free stretch

    @property
    def all_movies(self) -> list[Mapping[str, Any]]:
        """The re-read movies, then the page's own."""
        return self.reread + self.movies

    @property
    def ids(self) -> list[int]:
        """The ids of all_movies."""
        return listed_ids(self.all_movies)

    @property
    def rewound(self) -> bool:
        """Whether the crawl goes back to re-read earlier pages next."""
        return self.next_page <= self.number


class ShortPageError(TransientError):
    """A page with fewer movies than movie_count promises; retried, then believed only at the list's end."""

    def __init__(self, page: int, data: Mapping[str, Any], found: int, expected: int):
        super().__init__(f"list_movies page {page}", f"page {page} has {found} movies where movie_count promises {expected}")
        self.data = data


class MalformedPageError(TransientError):
    """A list answer without a readable movie_count, or whose movies are no list; retried like a fault.

    Every recorded list answer has movie_count, empty pages included (list_movies__yts-api-rs-empty.json):
    without it, `{"status": "ok", "data": null}` would read as an empty catalog, and a full crawl
    would mark every movie removed.
    """

    def __init__(self, page: int, reason: str):
        super().__init__(f"list_movies page {page}", f"page {page}: {reason}", server_failure=True)


class WrongPageError(TransientError):
    """An answer to other paging than asked for, as from a cache that ignores the query string; retried."""

    def __init__(self, page: int, limit: int, answered: tuple[int | None, int | None]):
        super().__init__(f"list_movies page {page}",
                         f"page {page} of {limit} was answered as page {answered[0]} of {answered[1]}",
                         server_failure=True)  # another host may answer right


class Listing(NamedTuple):
    """One fetched list page: its movies, the catalog's movie_count, and whether it ends the list early."""

    movies: list[Mapping[str, Any]]
    total: int  # movie_count (a field named count would hide tuple.count)
    end: bool = False


def fetch_page(client: YTSClient, page: int, limit: int = PAGE_LIMIT, probe: bool = True) -> Listing:
    """Fetch one newest-first page; a page that stays short is believed only if the next one is empty."""

    def validate(data: Mapping[str, Any]) -> None:
        if to_int(data.get("movie_count")) is None:
            raise MalformedPageError(page, "no movie_count")
        movies = data.get("movies") or []
        if not isinstance(movies, list):
            raise MalformedPageError(page, "movies is not a list")
        if any(isinstance(m, Mapping) and not isinstance(m.get("torrents") or [], list) for m in movies):
            raise MalformedPageError(page, "a movie's torrents are not a list")
        number, size = echoed_paging(data)
        if number not in (None, page) or size not in (None, limit):
            raise WrongPageError(page, limit, (number, size))
        count = movie_count(data)
        expected = min(limit, max(0, count - (page - 1) * limit))
        found = listed_count(data)
        if found < expected:
            raise ShortPageError(page, data, found, expected)

    params = {"limit": limit, "page": page, "sort_by": "date_added", "order_by": "desc"}
    try:
        data = client.get("list_movies", params, validate=validate)
    except FetchError as error:
        short = error.__cause__
        if not isinstance(short, ShortPageError):
            raise
        # movie_count can promise movies the list lacks: list_movies__jackett-issue-9668-count-without-movies.json
        if probe and fetch_page(client, page + 1, limit, probe=False).movies:
            # Movies follow, so this page lost its movies to a fault: fail rather than skip them.
            raise FetchError(error.url, f"{short.reason}, yet page {page + 1} lists movies", error.attempts) from short
        log.warning("believing short page %d after %d attempts: the list ends there", page, error.attempts)
        return Listing(list_page_movies(short.data), movie_count(short.data), end=True)
    return Listing(list_page_movies(data), movie_count(data))


def crawl_full(client: YTSClient, walk: Walk) -> Iterator[Page]:
    """Yield every list page newest-first, re-reading earlier pages when the catalog shrinks.

    Offset paging over a moving catalog: movies added at the top push the rest down (we see
    some twice, harmlessly); movies removed above us pull the rest up, so the head of the next
    window slides into the page we already read. A shrinking movie_count is the only sign of
    that, so on a drop we read the boundary again (`read_page`) and yield what we read with
    the page, to be committed together: a kill between the two would resume past the drop and
    never re-read it.
    """
    while not walk.finished:
        yield walk.step(client)


MAX_REWINDS = 3  # per page: a catalog moving faster than that is left to the next full crawl
MAX_CRAWL_REWINDS = 30  # in all: a catalog shrinking faster than it is read would pull the list's end back for good


class Walk:
    """Where a crawl is: the page to read next, the last movie_count, and the gap-free stretch read so far.

    A Walk is plain data, so a crawl can move to another process between two pages (`readahead`).
    """

    def __init__(self, seen: set[int], page: int = 1, last_count: int | None = None, limit: int = PAGE_LIMIT,
                 first: Listing | None = None):
        self.covered = set(seen)  # a resumed crawl trusts what it committed before the kill
        self.page = page
        self.last_count = last_count
        self.limit = limit
        self.rewinds: dict[int, int] = {}
        self.finished = False  # the list ended at the last page stepped over
        self.first = first  # page 1 as read moments ago (read again if not given): the walk's own once stepped

    def step(self, client: YTSClient) -> Page:
        """Read the next page (and whatever proves it leaves no gap), and move past it."""
        may_rewind = self.rewinds.get(self.page, 0) < MAX_REWINDS and sum(self.rewinds.values()) < MAX_CRAWL_REWINDS
        previous_count = self.last_count
        listing = self.first if self.page == 1 else None
        page, end = read_page(client, self.page, self.covered, previous_count, self.limit, may_rewind, listing)
        if page.number == 1 and not page.reread:
            self.first = Listing(page.movies, page.movie_count, end)
        self.covered.update(page.covered)
        self.last_count = page.movie_count
        self.page = page.next_page
        if page.rewound:
            self.rewinds[page.number] = self.rewinds.get(page.number, 0) + 1
        else:
            self.finished = end or not page.movies or self._count_ends_at(page, previous_count)
        return page

    def _count_ends_at(self, page: Page, previous_count: int | None) -> bool:
        """Whether movie_count ends the list at `page`: after a full page, only a count the page before gave too."""
        if page.number * self.limit < page.movie_count:
            return False
        # One wrong count on a full page must not end the crawl early: the next page shows.
        return len(page.movies) < self.limit or page.movie_count == previous_count

    @property
    def pages_to_read(self) -> int:
        """How many pages the last movie_count says are left, the next one included."""
        return 0 if self.finished else max(0, -(-(self.last_count or 0) // self.limit) - self.page + 1)


def read_page(client: YTSClient, page: int, covered: set[int], last_count: int | None,
              limit: int = PAGE_LIMIT, may_rewind: bool = True, listing: Listing | None = None) -> tuple[Page, bool]:
    """Fetch one page of a crawl, with what to re-read if movie_count fell; and whether the list ends.

    `covered` holds the ids of a gap-free stretch from the top of the list. A window sharing a
    movie with it extends it: every movie between the two is in one or the other. Pages read
    in order leave no gap unless removals above pull movies up, which shrinks movie_count. So
    on a drop, unless the page itself overlaps `covered`, one window straddling the page's top
    must overlap both. Failing that (the catalog moved again meanwhile), earlier pages are read
    until one overlaps `covered`, and the walk goes on from there, reading those pages again
    in order: their first reads came in the wrong order to prove anything. A `listing` given is
    the page as read moments ago, taken instead of a request.
    """
    movies, count, end = listing or fetch_page(client, page, limit)
    ids = set(listed_ids(movies))
    if last_count is None or count >= last_count or page == 1 or ids & covered:
        return Page(page, movies, count, next_page=page + 1, covered=ids), end
    bridge = _straddle(client, (page - 1) * limit)
    bridge_ids = set(listed_ids(bridge))
    if bridge_ids & covered and bridge_ids & ids:
        return Page(page, movies, count, next_page=page + 1, reread=bridge, covered=ids | bridge_ids), end
    probes, top, top_count, top_ids = _rewind(client, page - 1, covered, limit)
    if not may_rewind:  # keep what the re-reads found, and go on
        log.warning("catalog keeps moving at page %d: going on without proof that no movie slid past", page)
        unproven = ids | bridge_ids | set(listed_ids(probes))
        return Page(page, movies, count, next_page=page + 1, reread=bridge + probes, covered=unproven), end
    return Page(page, movies, top_count, next_page=top + 1, reread=bridge + probes, covered=top_ids), False


def straddling_window(boundary: int, limit: int = PAGE_LIMIT) -> tuple[int, int]:
    """The page and page size of the list window with `boundary` (an offset) nearest its middle."""
    size = max(range(limit // 2, limit + 1), key=lambda n: (min(boundary % n, n - boundary % n), n))
    return boundary // size + 1, size


def _straddle(client: YTSClient, boundary: int) -> list[Mapping[str, Any]]:
    """Read the window around the offset where two pages meet."""
    page, size = straddling_window(boundary)
    log.info("catalog shrank: reading offsets %d-%d around page boundary %d", (page - 1) * size,
             page * size - 1, boundary)
    return fetch_page(client, page, size).movies


def catalog_grew(first: Listing, seen: set[int]) -> bool:
    """Does page 1, read again after a crawl, list a movie the crawl never saw (added meanwhile)?"""
    # An addition can hide a removal from movie_count, so the crawl must hear of it too.
    return any(movie_id not in seen for movie_id in listed_ids(first.movies))


def _rewind(client: YTSClient, page: int, covered: set[int],
            limit: int) -> tuple[list[Mapping[str, Any]], int, int, set[int]]:
    """Read pages from `page` up until one overlaps `covered` (or page 1): all their movies, and that page's number, count and ids."""
    movies: list[Mapping[str, Any]] = []
    while True:
        found, count, _ = fetch_page(client, page, limit)
        movies.extend(found)
        ids = set(listed_ids(found))
        overlaps = not ids.isdisjoint(covered)
        log.info("catalog shrank: re-read page %d (%s)", page, "overlaps" if overlaps else "all unseen")
        if overlaps or page == 1:
            return movies, page, count, ids
        page -= 1


def crawl_new(
    client: YTSClient,
    known: Callable[[list[int]], set[int]],
    overlap: int,
    walk: Walk,
) -> Iterator[Page]:
    """Yield newest-first pages until one reaches movies mirrored before this run.

    `known(ids)` says which ids were mirrored before the run. A page whose last `overlap`
    movies (or all its movies, if fewer) are known ends the walk: movies added close together
    can swap places (22838 above 22839 in list_movies__gitTobby-cloneCodding.json), so one
    known movie alone is not proof enough, and known movies above new ones (an old movie
    listed again) do not end it. A shrinking catalog is handled as in `crawl_full`.
    """
    while not walk.finished:
        current = walk.step(client)
        tail = listed_ids(current.movies)[-overlap:]
        reached_known = bool(tail) and len(known(tail)) == len(set(tail))
        yield current
        if not current.rewound and (len(current.movies) < walk.limit or reached_known):
            return


class CatalogMoved(Exception):
    """The catalog changed (or its order disagrees with ours) while we compared it."""


PIVOT_MARGIN = 3  # places a movie may stray from the mirror's order (one, in the samples) and still be compared


class RankedPages:
    """Upstream list pages read on demand, each as the sorted mirror ranks of its movies."""

    def __init__(self, client: YTSClient, present: list[int], limit: int, first: Listing | None = None):
        self.client, self.limit = client, limit
        self.rank = {movie_id: index for index, movie_id in enumerate(present)}
        self.pages: dict[int, list[int]] = {}
        self.count: int | None = None  # movie_count, which must not change while we compare
        self.first = first  # page 1 as read moments ago, if it was

    def ranks(self, number: int) -> list[int]:
        """Our ranks of page `number`'s movies, sorted; CatalogMoved if the page disagrees with the mirror."""
        if number not in self.pages:
            listing = self.first if number == 1 else None
            movies, count, ends_early = listing or fetch_page(self.client, number, self.limit)
            if ends_early:  # offsets mean nothing once movie_count and the pages disagree
                raise CatalogMoved(f"page {number} lists fewer movies than movie_count promises")
            if self.count is not None and count != self.count:
                raise CatalogMoved(f"movie_count changed from {self.count} to {count}")
            self.count = count
            ids = listed_ids(movies)
            if any(i not in self.rank for i in ids):
                raise CatalogMoved(f"page {number} holds a movie the mirror lacks")
            if len(set(ids)) != len(ids):
                raise CatalogMoved(f"page {number} lists a movie twice")
            # Movies added together can swap places (22838 above 22839 in
            # list_movies__gitTobby-cloneCodding.json), so a page is a set of ranks.
            ranks = sorted(self.rank[i] for i in ids)
            holes = ranks[-1] - ranks[0] + 1 - len(ranks) if ranks else 0  # removals, or movies strayed out
            if holes > len(self.rank) - count + 2 * PIVOT_MARGIN:
                raise CatalogMoved(f"page {number} holds movies far apart in the mirror's order")
            self.pages[number] = ranks
        return self.pages[number]

    def pivots(self, number: int) -> tuple[Pivot, Pivot]:
        """Page `number`'s ranks near its top and bottom, each with how many movies ranked above it upstream lacks.

        Upstream lists exactly `offset` movies ranked above the one `offset` places into the
        sorted page, provided no movie strays more than PIVOT_MARGIN places from our order.
        """
        ranks = self.ranks(number)
        margin = min(PIVOT_MARGIN, (len(ranks) - 1) // 2)
        first = (number - 1) * self.limit
        top, bottom = margin, len(ranks) - 1 - margin
        return (Pivot(ranks[top], ranks[top] - (first + top), number),
                Pivot(ranks[bottom], ranks[bottom] - (first + bottom), number))


class Pivot(NamedTuple):
    """A mirror rank, how many present movies ranked above it upstream lacks, and the page it comes from (0: none)."""

    rank: int
    missing: int
    page: int


def find_missing(client: YTSClient, present: list[int], limit: int = PAGE_LIMIT,
                 first: Listing | None = None) -> list[int]:
    """Return the ids of `present` (mirror order, newest first) that the upstream list lacks.

    Compares the upstream list with ours by binary search over pages. Each page read tells how
    many of our movies upstream lacks above a movie near its top and one near its bottom; where
    that number does not change between two pages, nothing between them is missing, so only
    pages around removals are read: about log2(pages) requests per removal, never more than
    every page once. Raises CatalogMoved if the catalog changes meanwhile, or if its order
    strays from ours by more than the swaps of movies added together. `first` is page 1 as an
    incremental walk read it moments ago, if it did.
    """
    pages = RankedPages(client, present, limit, first)
    if not pages.ranks(1) or (pages.count or 0) >= len(present):
        return []
    upstream_count = pages.count or 0
    last_page = (upstream_count - 1) // limit + 1
    _search(pages, 1, last_page)
    pivots = [Pivot(0, 0, 0), *(p for n in sorted(pages.pages) for p in pages.pivots(n)),
              Pivot(len(present), len(present) - upstream_count, 0)]
    missing: list[int] = []
    for above, below in zip(pivots, pivots[1:]):
        missing.extend(_missing_between(pages, above, below))
    return [present[r] for r in missing]


def _search(pages: RankedPages, a: int, b: int) -> None:
    """Read the pages between a and b that hold removals, halving the span while it hides any."""
    if b > a + 1 and pages.pivots(b)[0].missing != pages.pivots(a)[1].missing:
        middle = (a + b) // 2
        pages.ranks(middle)  # read even where the halves end up adjacent: it bounds both
        _search(pages, a, middle)
        _search(pages, middle, b)


def _missing_between(pages: RankedPages, above: Pivot, below: Pivot) -> list[int]:
    """Our ranks from `above` up to `below` that upstream lacks; CatalogMoved if they are not what the counts say."""
    expected = below.missing - above.missing
    if expected == 0:
        return []
    adjacent = not (above.page and below.page) or below.page - above.page <= 1  # else pages between went unread
    listed = {r for page in (above.page, below.page) if page for r in pages.ranks(page)}
    found = [r for r in range(above.rank, below.rank) if r not in listed]
    if expected < 0 or not adjacent or len(found) != expected:
        raise CatalogMoved("the upstream order strays from the mirror's too far to compare")
    return found
