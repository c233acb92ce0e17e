"""Browsing the mirror in Datasette: search, facets, canned queries, movie pages, safety, errors.

The mirror is built by the real pipeline (`yts-mirror sync` against the loopback simulator), with
one movie whose API text is hostile, and one movie removed upstream by a later full sync.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import requests
from click.testing import CliRunner
from datasette.app import Datasette
from markupsafe import escape as markup_escape

from mirror import datasette_render as render
from mirror import store
from mirror.cli import cli
from mirror.fakeapi import Catalog, FakeYTS, FaultPlan
from mirror.serve import make_datasette, prepare_database
from support import cli_subprocess, free_port, wait_for


def magnet_hash(magnet: str) -> str | None:
    """The info hash a magnet link names, upper case."""
    match = re.match(r"magnet:\?xt=urn:btih:([0-9A-Za-z]+)", magnet)
    return match.group(1).upper() if match else None


MOVIES = 300
EVIL_WORD = "zanzibarquest"
EVIL_TITLE = 'Crimson <script>window.__pwned=1</script> Harbor "><b>bold</b>'
EVIL_DESCRIPTION = (f'{EVIL_WORD} <img src=x onerror="window.__pwned=2"> <a href="javascript:window.__pwned=3">click</a> '
                    "javascript:alert(1) <script>window.__pwned=4</script>")
EVIL_FIELDS = {
    "title": EVIL_TITLE, "title_english": EVIL_TITLE, "title_long": EVIL_TITLE, "description_full": EVIL_DESCRIPTION,
    "summary": EVIL_DESCRIPTION, "genres": ["Horror", "Mystery"], "url": "javascript:window.__pwned=5",
    "medium_cover_image": "javascript:alert(1)", "large_cover_image": "javascript:alert(2)",
    "small_cover_image": "data:text/html,<script>alert(3)</script>",
}
FACETS = ("genre", "year", "quality", "language", "mpa_rating")


@dataclass
class Mirror:
    """A synced mirror and what the tests know about it."""

    path: Path
    name: str
    evil_id: int
    removed_id: int
    catalog: Catalog


def sync(path: Path, url: str, *extra: str) -> None:
    """Run `yts-mirror sync` in-process and insist it succeeded."""
    result = CliRunner().invoke(cli, ["-q", "sync", "--db", str(path), "--base-url", url, "--rate", "0",
                                      "--concurrency", "4", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def evil_catalog(movies: int, seed: int) -> tuple[Catalog, int]:
    """A simulator catalog whose newest movie carries hostile text."""
    catalog = Catalog(movies, seed)
    evil_id = catalog.ids()[0]
    catalog.edit(evil_id, **EVIL_FIELDS)
    return catalog, evil_id


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    """Sync 300 movies with enrichment, then remove one upstream and sync --full."""
    path = tmp_path_factory.mktemp("serve") / "mirror.db"
    catalog, evil_id = evil_catalog(MOVIES, 5)
    removed_id = catalog.ids()[7]
    with FakeYTS(catalog, FaultPlan.parse("")) as sim:
        sync(path, sim.url)
        catalog.remove(ids=[removed_id])
        sync(path, sim.url, "--full", "--no-enrich")
    return Mirror(path, "mirror", evil_id, removed_id, catalog)


def get(mirror: Mirror, *paths: str, **settings: Any) -> list[Any]:
    """GET paths from a fresh Datasette on the mirror with its own test client."""

    async def fetch() -> list[Any]:
        datasette = make_datasette(str(mirror.path), **settings)
        await datasette.invoke_startup()
        return [await datasette.client.get(path) for path in paths]

    return asyncio.run(fetch())


def get_json(mirror: Mirror, path: str) -> Any:
    """GET a .json path and decode it, insisting on 200."""
    (response,) = get(mirror, path)
    assert response.status_code == 200, response.text[:500]
    return response.json()


def query(mirror: Mirror, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Read the mirror directly, as a check on what the pages show."""
    conn = sqlite3.connect(mirror.path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def escape(text: str) -> str:
    """HTML-escape text the way the pages must."""
    return str(markup_escape(text))


def search_ids(mirror: Mirror, text: str) -> list[int]:
    """The ids the ranked search view returns for `text`, in order."""
    rows = get_json(mirror, f"/{mirror.name}/movie_search.json?_shape=array&_size=1000&_search={quote(text)}")
    return [row["id"] for row in rows]


# ---- search ----------------------------------------------------------------------------------

def test_search_redirects_to_ranked_view_and_keeps_filters(mirror: Mirror) -> None:
    responses = get(mirror, f"/{mirror.name}/movie_catalog?_search=detective&_genre=Drama",
                    f"/{mirror.name}/movies?_search=detective", f"/{mirror.name}/movies",
                    f"/{mirror.name}/movie_search?_genre=Drama&_sort=rank",
                    f"/{mirror.name}/movie_catalog?_search=x&_filter_column=&_filter_op=exact&_filter_value="
                    "&_sort=date_uploaded_unix&_sort_by_desc=on&_genre=War",
                    f"/{mirror.name}/movie_catalog?_search=x&_sort_desc=rating",
                    f"/{mirror.name}/movie_catalog?_search=x&_sort=date_uploaded_unix")
    assert [r.status_code for r in responses] == [302] * 7
    assert responses[0].headers["location"] == f"/{mirror.name}/movie_search?_search=detective&_genre=Drama"
    assert responses[1].headers["location"] == f"/{mirror.name}/movie_search?_search=detective"
    assert responses[2].headers["location"] == f"/{mirror.name}/movie_catalog"
    assert responses[3].headers["location"] == f"/{mirror.name}/movie_catalog?_genre=Drama"
    assert responses[4].headers["location"] == (f"/{mirror.name}/movie_search?_search=x&_filter_column=&_filter_op=exact"
                                                "&_filter_value=&_genre=War")
    assert responses[5].headers["location"] == f"/{mirror.name}/movie_search?_search=x&_sort_desc=rating"
    # oldest uploads first is no default: it overrides the ranking
    assert responses[6].headers["location"] == f"/{mirror.name}/movie_search?_search=x&_sort=date_uploaded_unix"
    (plain, json_page) = get(mirror, f"/{mirror.name}/movies?imdb_code=tt1&_search=x",
                             f"/{mirror.name}/movie_catalog.json?_search=x")
    assert plain.status_code == 200 and json_page.status_code == 200  # no view for these: no redirect


def test_a_query_over_its_time_limit_is_a_400_in_every_format(mirror: Mirror) -> None:
    paths = [f"/{mirror.name}/movie_catalog{ext}?_timelimit=1&_size=max" for ext in ("", ".json", ".csv")]
    responses = get(mirror, *paths, sql_time_limit_ms=1)
    assert [r.status_code for r in responses] == [400, 400, 400], [r.text[:200] for r in responses]


def test_the_search_pages_form_keeps_the_search(mirror: Mirror) -> None:
    page = get(mirror, f"/{mirror.name}/movie_search?_search=detective&_genre=Drama")[0].text
    form = page[page.index('<form class="filters"'):]
    form = form[:form.index("</form>")]
    assert 'name="_search" value="detective"' in form and 'name="_genre" value="Drama"' in form


def test_redirects_work_for_database_names_that_need_encoding(mirror: Mirror, tmp_path: Path) -> None:
    copy = tmp_path / "my.mirror.db"
    source = sqlite3.connect(mirror.path)
    source.backup(target := sqlite3.connect(copy))
    source.close()
    target.close()
    dotted = Mirror(copy, "my~2Emirror", mirror.evil_id, mirror.removed_id, mirror.catalog)
    bare, search = get(dotted, "/my~2Emirror/movies", f"/my~2Emirror/movie_catalog?_search={EVIL_WORD}")
    assert bare.status_code == 302 and bare.headers["location"] == "/my~2Emirror/movie_catalog"
    assert search.headers["location"] == f"/my~2Emirror/movie_search?_search={EVIL_WORD}"
    assert search_ids(dotted, EVIL_WORD) == [mirror.evil_id]


def test_search_finds_a_movie_by_a_word_of_its_description(mirror: Mirror) -> None:
    row = query(mirror, "SELECT id, description_full FROM movies WHERE id != ? AND removed_at IS NULL "
                        "ORDER BY id LIMIT 1 OFFSET 40", (mirror.evil_id,))[0]
    words = re.findall(r"[a-z]{5,}", row["description_full"])
    assert words
    for word in words[:3]:
        assert row["id"] in search_ids(mirror, word), word
    assert search_ids(mirror, EVIL_WORD) == [mirror.evil_id]
    (page,) = get(mirror, f"/{mirror.name}/movie_search?_search={EVIL_WORD}")
    assert page.status_code == 200
    assert f'href="/{mirror.name}/movies/{mirror.evil_id}"' in page.text
    assert "1 row where search matches" in page.text


def test_search_finds_a_movie_by_an_actor(mirror: Mirror) -> None:
    cast = query(mirror, "SELECT movie_id, name FROM movie_cast WHERE name IS NOT NULL ORDER BY movie_id LIMIT 1")
    assert cast, "enrichment filled no cast: is mirror/enrich.py wired into `yts-mirror sync`?"
    movie_id, name = cast[0]["movie_id"], cast[0]["name"]
    expected = {r["movie_id"] for r in query(mirror, "SELECT movie_id FROM movie_cast WHERE name = ?", (name,))}
    found = search_ids(mirror, name)
    assert movie_id in found
    assert expected <= set(found)


def test_search_results_are_ranked(mirror: Mirror) -> None:
    rows = get_json(mirror, f"/{mirror.name}/movie_search.json?_shape=array&_size=1000&_search=Crimson")
    assert len(rows) > 3
    ranks = [row["rank"] for row in rows]
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
    # a title hit outranks a description-only hit (which only mentions the title once)
    assert "Crimson" in rows[0]["title"]


def test_search_with_odd_characters_does_not_error(mirror: Mirror) -> None:
    texts = ['"unbalanced', "AND OR NOT", "a*b:c", "((", "NEAR(x"]
    responses = get(mirror, *(f"/{mirror.name}/movie_search?_search={quote(text)}" for text in texts))
    for text, response in zip(texts, responses):
        assert response.status_code == 200, (text, response.text[:300])


# ---- facets ----------------------------------------------------------------------------------

GENRE_THROUGH = {"table": "movie_genres", "column": "genre", "value": "Drama"}
BAD_THROUGH = ["", "x", [1], {"x": 1}, {**GENRE_THROUGH, "table": 1}, {**GENRE_THROUGH, "table": ["movie_genres"]},
               {**GENRE_THROUGH, "column": ["genre"]}, {**GENRE_THROUGH, "value": [1]}, {**GENRE_THROUGH, "value": 2**70},
               {key: value for key, value in GENRE_THROUGH.items() if key != "value"},
               {**GENRE_THROUGH, "table": "nosuch"}, {**GENRE_THROUGH, "column": "nosuch"},
               {**GENRE_THROUGH, "table": "movies", "column": "title"}]
BAD_PARAMETERS = ["_sort=nosuch", "_sort_desc=nosuch", "_sort=title&_sort_desc=year", "_timelimit=abc", "_timelimit=-1",
                  "_sort=rowid",
                  "_genre=a%00b", "_where=id%3D1%00",
                  *("_through=" + quote(json.dumps(through) if not isinstance(through, str) else through)
                    for through in BAD_THROUGH),
                  "_through=" + quote(json.dumps(GENRE_THROUGH)) + "&_through=x"]


@pytest.mark.parametrize("table, column", [("movies", "title"), ("movie_catalog", "year"), ("torrents", "quality")])
def test_bad_page_parameters_are_a_400_not_a_500(mirror: Mirror, table: str, column: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    filters = [f"{column}__in=%5B", f"{column}__notin=" + quote("[1, [2]]"), f"{column}__in=" + quote(f"[{2**64}]"),
               f"{column}__lt={2**64}", f"{column}__gte=%C2%B2"]  # Datasette reads these before any hook
    bad = [f"/mirror/{table}{suffix}?{query}" for query in [*BAD_PARAMETERS, *filters] for suffix in ("", ".json")]
    if table == "movie_catalog":  # a view's ?_next= is a row offset; a table's, a key
        bad += [f"/mirror/movie_catalog?_next={offset}" for offset in ("a", 2**63)]
        bad.append("/mirror/movie_catalog?_through=" + quote(json.dumps(GENRE_THROUGH)))  # a view has no foreign keys
    for path, response in zip(bad, get(mirror, *bad)):
        assert response.status_code == 400, (path, response.status_code, response.text[:300])
    assert "Traceback" not in capsys.readouterr().err
    good = [f"/mirror/{table}.json?{query}" for query in (f"_sort={column}", f"_sort_desc={column}", "_timelimit=500",
                                                         f"{column}__in=" + quote('["a", 1, null]'),
                                                         f"{column}__in=a,b", f"{column}__lt=%D9%A3")]
    good.append(f"/mirror/{table}.json?_next=" + get_json(mirror, f"/mirror/{table}.json?_size=2")["next"])
    for through in (GENRE_THROUGH, {**GENRE_THROUGH, "value": None}, {**GENRE_THROUGH, "value": True}):
        good.append("/mirror/movies.json?_through=" + quote(json.dumps(through)))
    good.append("/mirror/movies_fts.json?_sort=rowid")  # a table without a primary key sorts by rowid
    for path, response in zip(good, get(mirror, *good)):
        assert response.status_code == 200, (path, response.text[:300])


def test_row_urls_with_a_wrong_key_and_bad_time_limits_on_query_pages_are_not_a_500(
        mirror: Mirror, capsys: pytest.CaptureFixture[str]) -> None:
    genre = query(mirror, "SELECT movie_id, genre FROM movie_genres LIMIT 1")[0]
    row = f"/mirror/movie_genres/{genre['movie_id']},{quote(genre['genre'])}"
    missing = [f"/mirror/movie_genres/{genre['movie_id']}{suffix}" for suffix in ("", ".json")]
    missing.append(f"{row},extra")
    for path, response in zip(missing, get(mirror, *missing)):
        assert response.status_code == 404, (path, response.status_code, response.text[:300])
    bad = [f"/mirror/movies_with_actor{suffix}?actor=a&_timelimit=abc" for suffix in ("", ".json")]
    bad.append("/mirror?sql=select+1&_timelimit=-5")
    for path, response in zip(bad, get(mirror, *bad)):
        assert response.status_code == 400 and "_timelimit" in response.text, (path, response.status_code)
    assert "Traceback" not in capsys.readouterr().err
    good = [row, f"/mirror/movies/{genre['movie_id']}.json", "/mirror/movies_with_actor.json?actor=a&_timelimit=100"]
    for path, response in zip(good, get(mirror, *good)):
        assert response.status_code == 200, (path, response.text[:300])


def test_sorting_follows_the_metadata_sortable_columns(mirror: Mirror) -> None:
    from datasette.app import Datasette

    from mirror.serve import SETTINGS, register_plugin

    async def fetch(*paths: str) -> list[int]:
        register_plugin()
        metadata = {"databases": {"mirror": {"tables": {"movies": {"sortable_columns": ["year"]}}}}}
        datasette = Datasette([str(mirror.path)], metadata=metadata, settings=SETTINGS)
        await datasette.invoke_startup()
        return [(await datasette.client.get(path)).status_code for path in paths]

    assert asyncio.run(fetch("/mirror/movies.json?_sort=year", "/mirror/movies.json?_sort=title")) == [200, 400]


def facet_counts(data: dict[str, Any], name: str) -> dict[str, int]:
    """A facet's value -> count from a Datasette JSON response."""
    return {item["value"]: item["count"] for item in data["facet_results"][name]["results"]}


@pytest.mark.parametrize("table", ["movie_catalog", "movies"])
def test_every_facet_appears_with_counts(mirror: Mirror, table: str) -> None:
    data = get_json(mirror, f"/{mirror.name}/{table}.json?_size=1&_facet_size=max")
    assert set(FACETS) <= set(data["facet_results"])
    for name in FACETS:
        assert facet_counts(data, name) and all(count > 0 for count in facet_counts(data, name).values()), name
    genres = dict(tuple(r) for r in query(mirror, "SELECT genre, COUNT(*) FROM movie_genres GROUP BY genre"))
    assert facet_counts(data, "genre") == genres
    qualities = dict(tuple(r) for r in query(
        mirror, "SELECT quality, COUNT(DISTINCT movie_id) FROM torrents WHERE removed_at IS NULL GROUP BY quality"))
    assert facet_counts(data, "quality") == qualities
    languages = dict(tuple(r) for r in query(mirror, "SELECT language, COUNT(*) FROM movies GROUP BY language"))
    assert facet_counts(data, "language") == languages
    (page,) = get(mirror, f"/{mirror.name}/{table}" + ("?_nocol=raw" if table == "movies" else ""))
    for name in FACETS:
        assert f'data-column="{name}"' in page.text


def test_facet_selection_filters_and_recounts(mirror: Mirror) -> None:
    data = get_json(mirror, f"/{mirror.name}/movie_catalog.json?_genre=Drama&_quality=1080p&_size=max&_facet_size=max")
    expected = {r[0] for r in query(
        mirror, "SELECT id FROM movies WHERE id IN (SELECT movie_id FROM movie_genres WHERE genre = 'Drama') "
                "AND id IN (SELECT movie_id FROM torrents WHERE quality = '1080p' AND removed_at IS NULL)")}
    ids = {row[0] for row in data["rows"]}
    assert ids == expected and data["filtered_table_rows_count"] == len(expected)
    assert facet_counts(data, "genre")["Drama"] == len(expected)
    assert facet_counts(data, "quality")["1080p"] == len(expected)
    marks = ",".join("?" * len(expected))
    genres = dict(tuple(r) for r in query(
        mirror, f"SELECT genre, COUNT(*) FROM movie_genres WHERE movie_id IN ({marks}) GROUP BY genre", tuple(expected)))
    full = get_json(mirror, f"/{mirror.name}/movie_catalog.json?_genre=Drama&_quality=1080p&_facet_size=max&year__gt=0")
    assert facet_counts(data, "genre") == genres == facet_counts(full, "genre")  # fast path == general path
    selected = [item for item in data["facet_results"]["genre"]["results"] if item["selected"]]
    assert [item["value"] for item in selected] == ["Drama"]
    assert "_genre=Drama" not in selected[0]["toggle_url"]


def test_facet_filters_ignore_case_as_the_api_does(mirror: Mirror) -> None:
    exact = get_json(mirror, f"/{mirror.name}/movie_catalog.json?_genre=Drama&_quality=1080p&_size=max")
    typed = get_json(mirror, f"/{mirror.name}/movie_catalog.json?_genre=dRAMA&_quality=1080P&_size=max")
    assert exact["rows"] and typed["rows"] == exact["rows"]
    assert facet_counts(typed, "genre") == facet_counts(exact, "genre")
    selected = [item for item in typed["facet_results"]["genre"]["results"] if item["selected"]]
    assert [item["value"] for item in selected] == ["Drama"]  # shown as selected, and its link drops what was typed
    assert "_genre=" not in selected[0]["toggle_url"] and "_quality=1080P" in selected[0]["toggle_url"]
    twice = get_json(mirror, f"/{mirror.name}/movie_catalog.json?_genre=Drama&_genre=drama&_size=max")
    [drama] = [item for item in twice["facet_results"]["genre"]["results"] if item["selected"]]
    assert "_genre=" not in drama["toggle_url"]  # both spellings go


@pytest.mark.parametrize("filters", ["", "&_quality=1080p"])
def test_kept_facet_counts_follow_writes(mirror: Mirror, tmp_path: Path, filters: str) -> None:
    from mirror.datasette_facets import FACET_COUNTS

    copy = tmp_path / "copy.db"
    source = sqlite3.connect(mirror.path)
    source.backup(target := sqlite3.connect(copy))
    source.close()
    target.execute("PRAGMA journal_mode = wal")

    async def counts(datasette: Any) -> tuple[dict[str, int], dict[str, int]]:
        response = await datasette.client.get(f"/copy/movie_catalog.json?_size=1&_facet_size=max{filters}")
        kept = [key for key in FACET_COUNTS if key[0] == str(copy)]
        assert len(kept) >= 3, kept  # genre, quality and the value facets are all answers worth keeping
        return facet_counts(response.json(), "genre"), facet_counts(response.json(), "language")

    async def scenario() -> tuple[Any, Any, Any]:
        datasette = make_datasette(str(copy))
        await datasette.invoke_startup()
        before, again = await counts(datasette), await counts(datasette)
        with target:
            target.execute("DELETE FROM movie_genres WHERE genre = 'Drama'")
            target.execute("UPDATE movies SET language = 'xx'")
        return before, again, await counts(datasette)

    before, again, after = asyncio.run(scenario())
    target.close()
    assert before == again and before[0]["Drama"] > 0 and "Drama" not in after[0]
    assert len(before[1]) > 1 and after[1] == {"xx": sum(before[1].values())}  # the value facets follow too


def test_search_page_facets_count_the_matches(mirror: Mirror) -> None:
    data = get_json(mirror, f"/{mirror.name}/movie_search.json?_search={EVIL_WORD}")
    assert facet_counts(data, "genre") == {"Horror": 1, "Mystery": 1}
    assert sum(facet_counts(data, "year").values()) == 1


# ---- canned queries and views -----------------------------------------------------------------

def canned_params(mirror: Mirror) -> dict[str, dict[str, str]]:
    """Parameters that give each canned query some rows."""
    actor = query(mirror, "SELECT name FROM movie_cast WHERE name IS NOT NULL LIMIT 1")
    return {"top_rated_in_genre": {"genre": "drama"}, "best_seeded_at_quality": {"quality": "1080p"},
            "movies_with_actor": {"actor": actor[0]["name"] if actor else "Ada"}, "search": {"q": "detective"}}


def test_every_canned_query_runs(mirror: Mirror) -> None:
    names = json.loads((Path(render.__file__).parent / "datasette_queries.json").read_text())
    assert {"newest_movies", "top_rated_in_genre", "best_seeded_at_quality", "movies_with_actor", "search",
            "sync_health"} <= set(names)
    params = canned_params(mirror)
    paths = []
    for name in names:
        qs = urlencode(params.get(name, {}))
        paths += [f"/{mirror.name}/{name}.json?_shape=array&{qs}", f"/{mirror.name}/{name}?{qs}"]
    responses = get(mirror, *paths)
    for path, response in zip(paths, responses):
        assert response.status_code == 200, (path, response.text[:500])
        if ".json" in path:
            assert response.json(), f"{path} returned no rows"
    sections = {row["section"] for row in responses[paths.index(
        f"/{mirror.name}/sync_health.json?_shape=array&")].json()}
    assert {"freshness", "catalog", "backlog"} <= sections and any(s.startswith("run #") for s in sections)


def test_movie_facets_stay_on_movie_pages(mirror: Mirror) -> None:
    torrents = get_json(mirror, f"/{mirror.name}/torrents.json?_facet_genre=x&_facet_value=year")
    assert not {"genre", "year"} & set(torrents["facet_results"])  # they would count movies, not torrents
    movies = get_json(mirror, f"/{mirror.name}/movies.json?_facet_genre=x")
    assert "genre" in movies["facet_results"]


def test_movies_with_actor_takes_wildcards_literally(mirror: Mirror) -> None:
    actor = canned_params(mirror)["movies_with_actor"]["actor"]
    found = {text: get_json(mirror, f"/{mirror.name}/movies_with_actor.json?_shape=array&actor={quote(text)}")
             for text in ("%", "_", actor[1:-1], actor[:2] + "_" + actor[3:])}
    assert found["%"] == [] and found["_"] == [] and found[actor[1:-1]]
    assert found[actor[:2] + "_" + actor[3:]] == [] or actor[2] == "_"


def test_the_search_query_without_words_renders_its_form(mirror: Mirror) -> None:
    paths = [f"/{mirror.name}/search", f"/{mirror.name}/search?q=", f"/{mirror.name}/search?q=%22",
             f"/{mirror.name}/search.json?_shape=array&q=%20"]
    responses = get(mirror, *paths)
    assert [r.status_code for r in responses] == [200] * 4, [r.text[:200] for r in responses]
    assert responses[-1].json() == []
    views = get(mirror, f"/{mirror.name}/movie_search?_search=%22", f"/{mirror.name}/movie_search.json?_search=%22%20%22")
    assert [r.status_code for r in views] == [200, 200] and views[1].json()["rows"] == []


def test_canned_query_results_render_links(mirror: Mirror) -> None:
    (page,) = get(mirror, f"/{mirror.name}/best_seeded_at_quality?quality=1080p")
    magnets = re.findall(r'href="(magnet:[^"]+)"', page.text)
    assert magnets and all("urn:btih:" in m for m in magnets)
    assert re.search(rf'href="/{mirror.name}/movies/\d+"', page.text)


def test_views_for_ad_hoc_sql_answer(mirror: Mirror) -> None:
    for view in ("movie_torrents", "movie_catalog", "movie_actors", "enrich_backlog"):
        assert query(mirror, f"SELECT * FROM {view} LIMIT 1"), view
    ranked = query(mirror, "SELECT id FROM movie_search WHERE fts MATCH ? ORDER BY rank", (EVIL_WORD,))
    assert [r["id"] for r in ranked] == [mirror.evil_id]


# ---- the movie page --------------------------------------------------------------------------

def movie_with_everything(mirror: Mirror) -> int:
    """A present movie with cast, suggestions, reviews and parental guides."""
    rows = query(mirror, """
        SELECT id FROM movies m WHERE removed_at IS NULL
          AND EXISTS (SELECT 1 FROM movie_cast c WHERE c.movie_id = m.id)
          AND EXISTS (SELECT 1 FROM movie_suggestions s JOIN movies o ON o.id = s.suggested_id WHERE s.movie_id = m.id)
          AND EXISTS (SELECT 1 FROM movie_reviews r WHERE r.movie_id = m.id)
          AND EXISTS (SELECT 1 FROM movie_parental_guides g WHERE g.movie_id = m.id)
        ORDER BY id LIMIT 1""")
    assert rows, "no fully enriched movie in the mirror"
    return rows[0]["id"]


def test_movie_page_magnet_links_match_the_hashes(mirror: Mirror) -> None:
    movie_id = movie_with_everything(mirror)
    (page,) = get(mirror, f"/{mirror.name}/movies/{movie_id}")
    assert page.status_code == 200
    magnets = re.findall(r'<a class="yts-magnet" href="([^"]+)"', page.text)
    hashes = {r["hash"] for r in query(mirror, "SELECT hash FROM torrents WHERE movie_id = ?", (movie_id,))}
    assert magnets and {magnet_hash(m.replace("&amp;", "&")) for m in magnets} == hashes
    for info_hash in hashes:
        assert f"<code>{info_hash}</code>" in page.text


def test_movie_page_shows_cast_suggestions_reviews_and_guides(mirror: Mirror) -> None:
    movie_id = movie_with_everything(mirror)
    (page,) = get(mirror, f"/{mirror.name}/movies/{movie_id}")
    html = page.text
    for heading in ("Torrents", "Cast", "Suggestions", "Reviews", "Parental guides"):
        assert f"<h2>{heading}</h2>" in html
    for row in query(mirror, "SELECT name FROM movie_cast WHERE movie_id = ?", (movie_id,)):
        assert str(escape(row["name"])) in html
    for row in query(mirror, "SELECT s.suggested_id FROM movie_suggestions s JOIN movies m ON m.id = s.suggested_id "
                             "WHERE s.movie_id = ?", (movie_id,)):
        assert f'class="yts-suggestion" href="/{mirror.name}/movies/{row["suggested_id"]}"' in html
    for row in query(mirror, "SELECT review_summary FROM movie_reviews WHERE movie_id = ?", (movie_id,)):
        assert str(escape(row["review_summary"])) in html
    for row in query(mirror, "SELECT type FROM movie_parental_guides WHERE movie_id = ?", (movie_id,)):
        assert f"<th>{escape(row['type'])}</th>" in html
    size = query(mirror, "SELECT size_bytes FROM torrents WHERE movie_id = ? LIMIT 1", (movie_id,))[0][0]
    assert render.human_size(size) in html and "/ 10" in html


def test_removed_movies_are_marked(mirror: Mirror) -> None:
    (catalog, movie) = get(mirror, f"/{mirror.name}/movie_catalog?removed_at__notblank=1",
                           f"/{mirror.name}/movies/{mirror.removed_id}")
    assert 'class="yts-gone"' in catalog.text and 'class="yts-removed"' in catalog.text
    assert f'href="/{mirror.name}/movies/{mirror.removed_id}"' in catalog.text
    assert 'class="yts-removed"' in movie.text


# ---- safety ----------------------------------------------------------------------------------

def assert_inert(html: str) -> None:
    """No hostile markup from the API survives as markup."""
    assert "<script>window.__pwned" not in html
    assert "<img src=x" not in html and "onerror=\"window" not in html
    assert not re.search(r"""(href|src)\s*=\s*["']?\s*(javascript|data):""", html, re.IGNORECASE)
    assert "<b>bold</b>" not in html


def paged_keys(mirror: Mirror, path: str, key: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Follow a table page's next tokens to its end; the key of every row, in order."""

    async def fetch() -> list[tuple[Any, ...]]:
        datasette = make_datasette(str(mirror.path))
        await datasette.invoke_startup()
        keys: list[tuple[Any, ...]] = []
        url: str | None = path
        while url:
            response = await datasette.client.get(url)
            assert response.status_code == 200, response.text[:300]
            data = response.json()
            keys += [tuple(row[column] for column in key) for row in data["rows"]]
            url = f"{path}&_next={quote(data['next'])}" if data["next"] else None
        return keys

    return asyncio.run(fetch())


@pytest.mark.parametrize("table, sort, key", [
    ("movies", "_sort_desc=rating", ("id",)), ("movies", "_sort_desc=language", ("id",)),
    ("movies", "_sort=year", ("id",)), ("torrents", "_sort_desc=seeds", ("hash",)),
    ("movie_genres", "_sort_desc=genre", ("movie_id", "genre")),
])
def test_paging_a_sorted_table_gives_every_row_once(mirror: Mirror, table: str, sort: str,
                                                     key: tuple[str, ...]) -> None:
    keys = paged_keys(mirror, f"/{mirror.name}/{table}.json?{sort}&_size=7&_shape=objects", key)
    assert len(keys) == len(set(keys)) == query(mirror, f"SELECT COUNT(*) FROM {table}")[0][0]


def test_paging_a_table_by_its_default_sort_gives_every_row_once(mirror: Mirror, tmp_path: Path) -> None:
    tied = Mirror(tmp_path / "tied.db", "tied", mirror.evil_id, mirror.removed_id, mirror.catalog)
    with closing(sqlite3.connect(mirror.path)) as source, closing(sqlite3.connect(tied.path)) as copy:
        source.backup(copy)
        with copy:  # uploaded together: the metadata's default sort (date_uploaded_unix) ties
            for table in ("movies", "torrents"):
                copy.execute(f"UPDATE {table} SET date_uploaded_unix = 4102444800 WHERE rowid % 3 = 0")  # the newest
    for table, key in (("movies", ("id",)), ("torrents", ("hash",))):
        keys = paged_keys(tied, f"/tied/{table}.json?_size=7&_shape=objects", key)
        assert len(keys) == len(set(keys)) == query(tied, f"SELECT COUNT(*) FROM {table}")[0][0], table


def test_pages_refuse_writes_with_405(mirror: Mirror, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [f"/{mirror.name}/movies", f"/{mirror.name}/movie_catalog", f"/{mirror.name}/movies.json",
             f"/{mirror.name}/search?q=x", f"/{mirror.name}"]

    async def post() -> list[Any]:
        datasette = make_datasette(str(mirror.path))
        await datasette.invoke_startup()
        return [await datasette.client.post(path, data={"x": "1"}) for path in paths]

    for path, response in zip(paths, asyncio.run(post())):
        assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD", (path, response.status_code)
    assert "Traceback" not in capsys.readouterr().err


def test_plain_searches_of_bare_quotes_find_nothing(mirror: Mirror) -> None:
    for text in ('"', '""', '" "'):
        for page in ("movie_catalog", "movies", "movie_search"):
            data = get_json(mirror, f"/{mirror.name}/{page}.json?_search={quote(text)}&_sort=id&_shape=objects")
            assert data["rows"] == [], (page, text)


def test_the_api_takes_a_bad_timelimit_as_an_unknown_parameter(mirror: Mirror) -> None:
    json_page, xml_page = get(mirror, "/api/v2/list_movies.json?_timelimit=abc&limit=1",
                              "/api/v2/list_movies.xml?_timelimit=abc&limit=1")
    assert json_page.status_code == 200 and json_page.json()["status"] == "ok"
    assert xml_page.status_code == 200 and xml_page.text.lstrip().startswith("<")


def test_untrusted_text_is_never_markup(mirror: Mirror) -> None:
    name, evil = mirror.name, mirror.evil_id
    paths = [f"/{name}/movie_catalog", f"/{name}/movie_search?_search={EVIL_WORD}", f"/{name}/movies/{evil}",
             f"/{name}/movies?id={evil}&_nocol=raw", f"/{name}/torrents?movie_id={evil}",
             f"/{name}/search?q={EVIL_WORD}", f"/{name}/newest_movies", f"/{name}/movie_torrents?movie_id={evil}",
             f"/{name}/movie_genres?movie_id={evil}"]
    responses = get(mirror, *paths)
    for path, response in zip(paths, responses):
        assert response.status_code == 200, path
        assert_inert(response.text)
    movie_page = responses[2].text
    assert escape(EVIL_TITLE) in movie_page
    assert "&lt;script&gt;window.__pwned=4&lt;/script&gt;" in movie_page
    assert "javascript:alert(1)" in movie_page  # shown as text, never as a link


def test_render_helpers_only_allow_http_urls_and_real_magnets() -> None:
    assert render.http_url(" https://img.example/a.jpg ") == "https://img.example/a.jpg"
    for bad in ("javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x", "//evil.example/x",
                'https://x.example/"onerror="alert(1)', "ftp://x", None, 42):
        assert render.http_url(bad) is None, bad
    good = "magnet:?xt=urn:btih:" + "A" * 40 + "&dn=x&tr=udp%3A%2F%2Ftracker"
    assert render.magnet_url(good) == good and magnet_hash(good) == "A" * 40
    assert render.magnet_url('magnet:?xt=urn:btih:' + "A" * 40 + '"><script>') is None
    assert render.magnet_url("javascript:alert(1)//magnet:?xt=urn:btih:" + "A" * 40) is None
    html = str(render.render_value("title", "<b>x</b>", {"id": 3, "removed_at": "2026"}, "movie_catalog",
                                   lambda i: f"/m/movies/{i}"))
    assert html.startswith('<a href="/m/movies/3">&lt;b&gt;x&lt;/b&gt;</a>') and "removed" in html
    assert render.render_value("cover", "javascript:alert(1)", {"id": 3}, "movie_catalog", str) is None


def test_readable_numbers() -> None:
    assert render.human_size(1536) == "1.50 KiB" and render.human_size(3 * 2**30) == "3.00 GiB"
    assert render.human_size(512) == "512 B" and render.human_size(None) is None
    assert render.human_runtime(127) == "2 h 07 min" and render.human_runtime(45) == "45 min"
    assert render.human_runtime(0) is None and render.human_rating(7) == "7.0 / 10"
    assert render.human_date(1_500_000_000) == "2017-07-14"
    assert render.human_date(render.MAX_UNIX) == "9999-12-31"
    for implausible in (1_500_000_000_000, render.MAX_UNIX + 1, 2**63 - 1, 0, -5):
        assert render.human_date(implausible) is None


# ---- plain datasette and the command ----------------------------------------------------------

def test_plain_datasette_picks_up_the_plugin(mirror: Mirror) -> None:
    datasette = Path(sys.executable).with_name("datasette")
    result = subprocess.run([str(datasette), str(mirror.path), "--get", f"/mirror/movies/{mirror.evil_id}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '<a class="yts-magnet"' in result.stdout and "<h2>Torrents</h2>" in result.stdout
    assert_inert(result.stdout)


def test_plain_datasette_on_an_empty_file_finds_the_mirror_a_sync_then_writes(mirror: Mirror, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mirror import serve

    monkeypatch.setattr(serve, "RECHECK_SECONDS", 0.0)  # look again at once, not within a second
    path = tmp_path / "later.db"
    path.touch()

    async def fetch_twice() -> tuple[int, int, int]:
        datasette = Datasette([str(path)])
        await datasette.invoke_startup()
        before = (await datasette.client.get("/later/newest_movies.json")).status_code
        with closing(sqlite3.connect(mirror.path)) as source, closing(sqlite3.connect(path)) as target:
            source.backup(target)  # as a first sync would fill it
        after = await datasette.client.get("/later/newest_movies.json")
        catalog = await datasette.client.get("/later/movies")
        return before, after.status_code, catalog.status_code

    before, after, catalog = asyncio.run(fetch_twice())
    assert before == 404  # not a mirror yet: no canned queries
    assert after == 200 and catalog == 302  # a mirror now: its queries, and the movies table opens the catalog


def test_the_mirrors_of_a_datasette_are_one_dict_while_they_stay(mirror: Mirror) -> None:
    from mirror.serve import mirror_databases

    datasette = make_datasette(str(mirror.path))
    assert mirror_databases(datasette) is mirror_databases(datasette)  # the metadata built for it is kept


def run_serve(*args: str) -> tuple[int, str]:
    """Run `yts-mirror serve` expecting it to fail fast; return (exit code, stderr)."""
    result = CliRunner().invoke(cli, ["serve", *args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


def test_serve_reports_bad_usage_in_one_line(mirror: Mirror, tmp_path: Path) -> None:
    code, err = run_serve("--db", str(tmp_path / "missing.db"))
    assert code == 1 and err.count("\n") == 1 and "no database at" in err  # as stats, search and enrich
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    code, err = run_serve("--db", str(other))
    assert code == 2 and err.count("\n") == 1 and "is not a yts-mirror database" in err
    text = tmp_path / "text.db"
    text.write_text("not sqlite at all")
    code, err = run_serve("--db", str(text))
    assert code == 2 and err.count("\n") == 1 and "is not a yts-mirror database (not SQLite at all)" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code, err = run_serve("--db", str(mirror.path), "--port", str(busy.getsockname()[1]))
    assert code == 2 and err.count("\n") == 1 and "cannot listen on" in err
    code, err = run_serve("--db", str(mirror.path), "--host", "")  # not every interface by accident
    assert code == 2 and err.count("\n") == 1 and "must name an address" in err
    odd = tmp_path / "odd?mode=memory.db"  # Datasette reads its path as a URI
    with closing(sqlite3.connect(mirror.path)) as source, closing(sqlite3.connect(odd)) as copy:
        source.backup(copy)
    code, err = run_serve("--db", str(odd), "--port", "0")
    assert code == 2 and err.count("\n") == 1 and "whose path holds '?'" in err
    assert not (tmp_path / "odd").exists()  # what Datasette would have created, reading "?mode..." as a query


def test_serve_uses_the_database_from_the_environment_and_ctrl_c_stops_it(mirror: Mirror) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mirror", "serve", "--port", "0"], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "YTS_MIRROR_DB": str(mirror.path)})
    try:
        line = proc.stderr.readline()
        assert f"serving {mirror.path} at http://127.0.0.1:" in line and line.rstrip().endswith("(Ctrl-C stops)")
        url = line.split(" at ")[1].split()[0]
        assert urllib.request.urlopen(url, timeout=30).status == 200  # its socket listens before this line
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "error" not in rest, (proc.returncode, rest)
    finally:
        proc.kill()
        proc.wait(timeout=20)


def test_serve_open_launches_the_catalog(mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    import mirror.serve as serve

    opened: list[str] = []
    served: list[Any] = []
    monkeypatch.setattr(serve.webbrowser, "open", opened.append)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append((self.config, sockets)))
    result = CliRunner().invoke(cli, ["serve", "--db", str(mirror.path), "--port", "0", "--open"])
    assert result.exit_code == 0, result.output
    assert len(opened) == 1 and re.fullmatch(r"http://127\.0\.0\.1:\d+/mirror/movie_catalog", opened[0])
    (config, sockets), = served
    assert sockets[0].getsockname()[0] == "127.0.0.1"  # loopback by default
    sockets[0].close()
    assert result.stderr.startswith(f"serving {mirror.path} at {opened[0]}")
    quiet = CliRunner().invoke(cli, ["-q", "serve", "--db", str(mirror.path), "--port", "0"])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.output  # -q: errors only
    served[1][1][0].close()


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]])
def test_serve_stops_cleanly_on_a_signal(mirror: Mirror, signals: list[int]) -> None:
    port = free_port()
    process = cli_subprocess(["serve", "--db", str(mirror.path), "--port", str(port)])
    try:
        wait_for(lambda: server_answers(f"http://127.0.0.1:{port}/{mirror.name}/movie_catalog.json"))
        for sig in signals:
            process.send_signal(sig)
            time.sleep(0.01)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0 and stderr.count("\n") == 1 and stderr.startswith("serving "), stderr


def server_answers(url: str) -> bool:
    """True once `url` answers 200."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


# ---- reading while sync writes -----------------------------------------------------------------

def test_pages_keep_answering_while_sync_writes(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    catalog, _ = evil_catalog(100, 11)
    with FakeYTS(catalog, FaultPlan.parse("")) as sim:
        sync(path, sim.url, "--no-enrich")
        catalog.add(150)
        paths = ["/busy/movie_catalog", "/busy/movie_search?_search=detective&_genre=Drama", "/busy/movies/1",
                 "/busy/newest_movies.json", "/busy/sync_health", "/busy/movie_catalog.json?_quality=1080p"]
        statuses, counts, during = asyncio.run(read_while_syncing(path, sim.url, paths))
    assert all(status == 200 for status, _ in statuses), [s for s in statuses if s[0] != 200][:3]
    assert not any("locked" in body for _, body in statuses)
    assert during >= 10, f"only {during} page loads overlapped the sync"
    assert counts[0] == 100 and counts[-1] == 250, counts  # the same server saw the writes land


async def read_while_syncing(path: Path, url: str, paths: list[str]) -> tuple[list[tuple[int, str]], list[int], int]:
    """Load pages in a loop while a `yts-mirror sync` subprocess writes; return what came back."""
    datasette = make_datasette(str(path))
    await datasette.invoke_startup()
    counts = [(await datasette.client.get("/busy/movie_catalog.json?_size=1")).json()["filtered_table_rows_count"]]
    proc = subprocess.Popen([sys.executable, "-m", "mirror", "-q", "sync", "--db", str(path), "--base-url", url,
                             "--rate", "0", "--concurrency", "4"], stderr=subprocess.PIPE, text=True)
    statuses: list[tuple[int, str]] = []
    during = 0
    try:
        while proc.poll() is None:
            for page in paths:
                response = await datasette.client.get(page)
                statuses.append((response.status_code, response.text if response.status_code != 200 else ""))
                during += proc.poll() is None
            data = (await datasette.client.get("/busy/movie_catalog.json?_size=1")).json()
            counts.append(data["filtered_table_rows_count"])
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    data = (await datasette.client.get("/busy/movie_catalog.json?_size=1")).json()
    counts.append(data["filtered_table_rows_count"])
    return statuses, counts, during


@pytest.fixture
def read_only_copy(mirror: Mirror, tmp_path: Path) -> Iterator[Path]:
    """The mirror copied onto a read-only mount: no -shm file can be made beside it."""
    media = tmp_path / "media"
    media.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64m", "none", str(media)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a file system needs root and the permission to mount")
    copy = media / mirror.path.name
    try:
        shutil.copyfile(mirror.path, copy)  # the module's mirror is closed: its WAL is empty
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        yield copy
    finally:
        subprocess.run(["umount", str(media)], check=True)


def test_a_mirror_on_read_only_media_can_be_searched_but_not_served(read_only_copy: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.db"
    link.symlink_to(read_only_copy)  # the media are those of the file the link names
    for path in (read_only_copy, link):
        found = CliRunner().invoke(cli, ["search", "zzzevil OR movie", "--db", str(path), "--json"])
        assert found.exit_code == 0 and json.loads(found.stdout), found.output
        stats = CliRunner().invoke(cli, ["stats", "--db", str(path), "--json"])
        assert stats.exit_code == 0 and json.loads(stats.stdout)["counts"]["movies"] > 0, stats.output
        # A writer idle elsewhere (a read-only bind mount) may start while a server reads for hours.
        code, err = run_serve("--db", str(path), "--port", "0")
        assert code == 1 and err.count("\n") == 1 and "lies on a read-only file system without its -shm file" in err
    assert sorted(p.name for p in read_only_copy.parent.iterdir()) == [read_only_copy.name]


def test_serve_leaves_an_older_mirror_alone_while_an_older_writer_has_it(tmp_path: Path) -> None:
    from mirror.locks import LockedError, writer_lock

    path = tmp_path / "v4.db"
    store.open_db(path).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA user_version = 4")
    with writer_lock(str(path)), pytest.raises(LockedError, match="needs its schema updated"):
        prepare_database(str(path))
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    prepare_database(str(path))  # once that writer ends
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
