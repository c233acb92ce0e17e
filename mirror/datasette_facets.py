"""Datasette facets and filters for genres and torrent qualities, which live in their own tables.

A movie's genres are rows of movie_genres and its qualities rows of torrents, so the catalog
facets on them with indexed subqueries (a JSON array facet would scan every movie). Selecting a
value adds ?_genre=Drama or ?_quality=1080p, which filter_arguments turns into WHERE clauses. Those
test membership with a unary + on id, so SQLite walks the page's sort index and stops after a
page of rows, instead of fetching every matching movie first (a genre can hold half the catalog).
"""

from __future__ import annotations

import string
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, NamedTuple, TypeVar

from datasette.database import QueryInterrupted
from datasette.facets import Facet
from datasette.filters import FilterArguments
from datasette.utils import path_with_added_args, path_with_removed_args

from .api import DATA_VERSIONS
from .datasette_render import MOVIE_TABLES

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold_case(text: str) -> str:
    """`text` as SQLite's NOCASE collation compares it: ASCII letters in lower case."""
    return text.translate(_ASCII_LOWER)


class Related(NamedTuple):
    """How the catalog facets on, and filters by, one related table."""

    arg: str  # the query argument, e.g. ?_genre=Drama
    filtered_sql: str  # (value, count) of the movies among the distinct ids of {inner}
    all_sql: str  # (value, count) over every movie
    clause: str  # WHERE clause selecting the movies with :{param}
    description: str  # for humans, formatted with {value}
    ids_sql: str  # the ids of the movies with :{param}, each once


RELATED = {
    "genre": Related(
        arg="_genre",
        filtered_sql="select g.genre as value, count(*) as count from ({inner}) s "
                     "join movie_genres g on g.movie_id = s.id group by g.genre order by count desc, value limit {limit}",
        all_sql="select genre as value, count(*) as count from movie_genres "
                "group by genre order by count desc, value limit {limit}",
        clause="+id in (select movie_id from movie_genres where genre = :{param} collate nocase)",
        description="genre is {value!r}",
        ids_sql="select movie_id from movie_genres where genre = :{param} collate nocase",
    ),
    "quality": Related(
        arg="_quality",
        filtered_sql="select t.quality as value, count(distinct t.movie_id) as count from ({inner}) s "
                     "join torrents t on t.movie_id = s.id where t.removed_at is null "
                     "group by t.quality order by count desc, value limit {limit}",
        all_sql="select quality as value, count(distinct movie_id) as count from torrents where removed_at is null "
                "group by quality order by count desc, value limit {limit}",
        clause="+id in (select movie_id from torrents where quality = :{param} collate nocase and removed_at is null)",
        description="has a {value!r} torrent",
        ids_sql="select distinct movie_id from torrents where quality = :{param} collate nocase "
                "and removed_at is null",
    ),
}


# Facet answers worth keeping (whole-catalog counts, and counts under ?_genre= and ?_quality= alone),
# by (database file, what is counted): (database state, answer). Used only on the event loop's thread.
FACET_COUNTS: OrderedDict[tuple[Any, ...], tuple[Hashable, Any]] = OrderedDict()
FACET_CACHE_SIZE = 512  # answers kept, each a few dozen (value, count) pairs

T = TypeVar("T")


async def remembered(facet: Facet, key: tuple[Any, ...] | None, compute: Callable[[], Awaitable[T]]) -> T:
    """`compute()`'s answer, reused for the same key until the database changes (a None key: never)."""
    path = getattr(facet.ds.get_database(facet.database), "path", None)
    state = DATA_VERSIONS.state(path) if key is not None else None  # the API's answers use it too
    if key is None or state is None:
        return await compute()
    full_key = (path, *key)
    hit = FACET_COUNTS.get(full_key)
    if hit is not None and hit[0] == state:
        FACET_COUNTS.move_to_end(full_key)
        return hit[1]  # type: ignore[no-any-return]
    answer = await compute()
    FACET_COUNTS[full_key] = (state, answer)  # the state from before: a write meanwhile means recounting
    while len(FACET_COUNTS) > FACET_CACHE_SIZE:
        FACET_COUNTS.popitem(last=False)
    return answer


async def count_pairs(facet: Facet, sql: str, cache_key: tuple[Any, ...] | None) -> list[tuple[Any, int]]:
    """Run a facet's (value, count) query; with a cache key, reuse the answer until the database changes."""

    async def run() -> list[tuple[Any, int]]:
        result = await facet.ds.execute(facet.database, sql, facet.params, truncate=False,
                                        custom_time_limit=facet.ds.setting("facet_time_limit_ms"))
        return [(row["value"], row["count"]) for row in result.rows]

    return await remembered(facet, cache_key, run)


class RelatedFacet(Facet):
    """Counts movies per value of a related table; values toggle a ?_genre= style argument."""

    type = ""

    def get_configs(self) -> list[dict[str, Any]]:
        """The page's facets of this type; none but on the movie pages, whose rows are movies."""
        return super().get_configs() if self.table in MOVIE_TABLES else []

    async def suggest(self) -> list[dict[str, Any]]:
        return []

    def unfiltered(self) -> bool:
        """True when the page lists every row of its table or view (no WHERE clause)."""
        return not self.params and " where " not in self.sql.lower()

    def filter_key(self) -> tuple[tuple[str, str], ...] | None:
        """The ?_genre= and ?_quality= values when the page is filtered by them alone (() if unfiltered), else None."""
        if not self.unfiltered() and self.related_ids() is None:
            return None
        return tuple(sorted({(related.arg, fold_case(value)) for related in RELATED.values()  # drama is Drama
                             for value in self.request.args.getlist(related.arg)}))

    def related_ids(self) -> str | None:
        """When the page is filtered by ?_genre= and ?_quality= alone, SQL for its movie ids without the movies table."""
        if self.table == "movie_search":
            return None
        clauses, id_queries = related_clauses(self.request.args)
        if not clauses or not self.sql.rstrip().endswith(" where " + " and ".join(clauses)):
            return None
        return " intersect ".join(id_queries)

    def count_sql(self, size: int) -> str:
        """The query counting movies per value for this page."""
        related = RELATED[self.type]
        if self.unfiltered():
            return related.all_sql.format(limit=size + 1)
        ids = self.related_ids()
        inner = f"select movie_id as id from ({ids})" if ids else self.sql
        return related.filtered_sql.format(inner=inner, limit=size + 1)

    async def facet_results(self) -> tuple[list[dict[str, Any]], list[str]]:
        if not self.get_configs():
            return [], []
        arg = RELATED[self.type].arg
        size = self.get_facet_size()
        try:
            rows = await self.counts(size)
        except QueryInterrupted:
            return [], [self.type]
        selected: dict[str, list[str]] = {}  # each value as the URL spells it, by how NOCASE reads it
        for value in self.request.args.getlist(arg):
            selected.setdefault(fold_case(value), []).append(value)
        return [{
            "name": self.type,
            "type": "column",
            "hideable": False,
            "toggle_url": "",
            "truncated": len(rows) > size,
            "results": [self.result(arg, value, count, selected) for value, count in rows[:size]],
        }], []

    async def counts(self, size: int) -> list[tuple[Any, int]]:
        """(value, movies) pairs, best first; reused until the database changes, unless the page has other filters."""
        filters = self.filter_key()
        return await count_pairs(self, self.count_sql(size), None if filters is None else (self.type, size, filters))

    def result(self, arg: str, value: Any, count: int, selected: dict[str, list[str]]) -> dict[str, Any]:
        """One facet value with the link that toggles it (?_genre=drama selects Drama, as the filter does)."""
        text = "" if value is None else str(value)
        chosen = fold_case(text) in selected
        if chosen:
            path = None
            for spelling in selected[fold_case(text)]:  # drop every spelling of it
                path = path_with_removed_args(self.request, {arg: spelling}, path=path)
        else:
            path = path_with_added_args(self.request, {arg: text})
        return {"value": text, "label": text, "count": count, "selected": chosen,
                "toggle_url": self.ds.absolute_url(self.request, path)}


class ValueFacet(RelatedFacet):
    """Facets on plain movie columns (year, language, mpa_rating), all counted in one pass over the page's rows."""

    type = "value"

    async def facet_results(self) -> tuple[list[dict[str, Any]], list[str]]:
        columns = [config["config"].get("column") or config["config"]["simple"] for config in self.get_configs()]
        if not columns:
            return [], []
        size = self.get_facet_size()
        try:
            counts = await self.value_counts(columns, size)
        except QueryInterrupted:
            return [], columns
        pairs = self.get_querystring_pairs()
        return [{
            "name": column,
            "type": "column",
            "hideable": False,
            "toggle_url": "",
            "truncated": len(counts[column]) > size,
            "results": [self.value_result(column, value, count, pairs) for value, count in counts[column][:size]],
        } for column in columns], []

    async def value_counts(self, columns: list[str], size: int) -> dict[str, list[tuple[Any, int]]]:
        """(value, movies) pairs per column, best first."""
        if self.unfiltered():
            return {column: await self.cached_counts(column, size) for column in columns}
        filters = self.filter_key()
        key = None if filters is None else (f"values:{self.table}", tuple(columns), size, filters)
        return await remembered(self, key, lambda: self.filtered_counts(columns, size))

    async def filtered_counts(self, columns: list[str], size: int) -> dict[str, list[tuple[Any, int]]]:
        """(value, movies) pairs per column over the page's filtered rows, in one pass."""
        ids = self.related_ids()
        names = ", ".join(f"[{column}]" for column in columns)
        rows_sql = (f"select {', '.join(f'm.[{column}]' for column in columns)} from ({ids}) s "
                    "join movies m on m.id = s.movie_id" if ids else f"select {names} from ({self.sql})")
        groups = " union all ".join(
            f"select {i} as k, [{column}] as value, count(*) as count from page where [{column}] is not null "
            f"group by [{column}]" for i, column in enumerate(columns))
        sql = f"with page as materialized ({rows_sql}) {groups}"
        rows = (await self.ds.execute(self.database, sql, self.params, truncate=False,
                                      custom_time_limit=self.ds.setting("facet_time_limit_ms"))).rows
        counts: dict[str, list[tuple[Any, int]]] = {column: [] for column in columns}
        for row in rows:
            counts[columns[row["k"]]].append((row["value"], row["count"]))
        return {column: sorted(pairs, key=lambda item: (-item[1], str(item[0])))[:size + 1]
                for column, pairs in counts.items()}

    async def cached_counts(self, column: str, size: int) -> list[tuple[Any, int]]:
        """Whole-catalog counts of one column (from its index), reused until the database changes."""
        sql = (f"select [{column}] as value, count(*) as count from ({self.sql}) where [{column}] is not null "
               f"group by [{column}] order by count desc, value limit {size + 1}")
        return await count_pairs(self, sql, (f"value:{self.table}:{column}", size))

    def value_result(self, column: str, value: Any, count: int, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        """One column value with the ?column=value link that toggles it, as Datasette's column facet makes."""
        text = str(value)
        chosen = (column, text) in pairs or (f"{column}__exact", text) in pairs
        path = (path_with_removed_args(self.request, {column: text, f"{column}__exact": text}) if chosen
                else path_with_added_args(self.request, {column: text}))
        return {"value": value, "label": text, "count": count, "selected": chosen,
                "toggle_url": self.ds.absolute_url(self.request, path)}


class GenreFacet(RelatedFacet):
    """Movies per genre; values toggle ?_genre=."""
    type = "genre"


class QualityFacet(RelatedFacet):
    """Movies per torrent quality; values toggle ?_quality=."""
    type = "quality"


def related_clauses(args: Any) -> tuple[list[str], list[str]]:
    """The WHERE clauses of ?_genre= and ?_quality=, and the id queries they test."""
    clauses, id_queries = [], []
    for facet_type, related in RELATED.items():
        for index in range(len(args.getlist(related.arg))):
            param = f"yts_{facet_type}_{index}"
            clauses.append(related.clause.format(param=param))
            id_queries.append(related.ids_sql.format(param=param))
    return clauses, id_queries


def filter_arguments(args: Any, search_view: bool) -> FilterArguments | None:
    """WHERE clauses for ?_genre=, ?_quality= and, on the movie_search view, a ranked ?_search=."""
    clauses, _ = related_clauses(args)
    params: dict[str, Any] = {}
    human: list[str] = []
    extra: dict[str, Any] = {}
    for facet_type, related in RELATED.items():
        for index, value in enumerate(args.getlist(related.arg)):
            params[f"yts_{facet_type}_{index}"] = value
            human.append(related.description.format(value=value))
    if search_view:
        query = args.get("_search") or ""
        if query.strip():
            raw = args.get("_searchmode") == "raw"
            clauses.append("fts match " + (":yts_search" if raw else "escape_fts(:yts_search)"))  # serve's own
            params["yts_search"] = query
            human.append(f'search matches "{query}"')
            extra["search"] = query
    if not (clauses or extra):
        return None
    return FilterArguments(clauses, params, human, extra)
